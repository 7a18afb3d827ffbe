// `vfio-mig list`: the device layer's inventory (src/device/inventory.ts), printed.

import { survivesCloseText } from "../device/family.ts";
import { listDevices, type ListedDevice, type ListResult } from "../device/inventory.ts";
import { loadBackendsFor } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { examplesHelp, exitCodesHelp } from "./help.ts";
import { type Command, hex, parse, printJson } from "./command.ts";

export { listDevices, type ListedDevice, type ListOptions, type ListResult } from "../device/inventory.ts";

function describeGroup(d: ListedDevice): string {
  if (!d.iommuGroup) return d.groupNote ?? "none";
  const viable = d.viable ? "viable" : "NOT viable";
  const kernel = d.kernelViable === null
    ? d.groupNote ? `; kernel: ${d.groupNote}` : ""
    : `; kernel: ${d.kernelViable ? "viable" : "NOT viable"}`;
  const peers = d.groupPeers.length
    ? `, shared with ${d.groupPeers.map((p) => `${p.name} (${p.driver ?? "no driver"})`).join(", ")}`
    : ", alone";
  return `${d.iommuGroup} (${viable}${kernel})${peers}`;
}

function describeMigration(d: ListedDevice): string {
  if (d.access === "busy") {
    return d.holders.length
      ? `busy: held by ${d.holders.map((h) => `${h.command} (pid ${h.pid})`).join(", ")}; borrow it with ` +
        `--device pid:${d.holders[0].pid}`
      : "busy (another process has it open)";
  }
  if (d.access === "unavailable") return `unavailable: ${d.unavailable ?? "not opened"}`;
  const m = d.migration!;
  if (!m.migratable) return "not supported by this driver (ENOTTY)";
  if (m.protocol === "v1") return `protocol v1 (deprecated region protocol), device_state ${m.state}`;
  return `flags ${hex(m.flags, 1)} (${m.flagNames.join(" ")}), MIG_DATA_SIZE ${m.dataSize ?? "not reported"}, ` +
    `state ${m.state}, dirty tracking ${m.dirtyTracking === "dma-logging" ? "DMA logging" : "none"}`;
}

export function formatList(r: ListResult): string {
  if (r.devices.length === 0) {
    return `no VFIO devices under ${r.sysfs} (PCI devices bound to vfio-pci or a variant driver, mdev devices)`;
  }
  const lines: string[] = [];
  for (const d of r.devices) {
    const what = [d.kind, d.driver ? `driver ${d.driver}` : "no driver", d.mdevType ? `type ${d.mdevType}` : null]
      .filter((x) => x).join(", ");
    lines.push(`${d.device}  (${what})`);
    if (d.kind !== "sim") lines.push(`  IOMMU group  ${describeGroup(d)}`);
    if (d.cdev) lines.push(`  cdev         ${d.cdev}`);
    lines.push(`  migration    ${describeMigration(d)}`);
    lines.push(
      `  close        state survives close: ${
        survivesCloseText({ family: d.family, resetsOnClose: !d.stateSurvivesClose, reason: d.resetReason })
      }`,
    );
  }
  const migratable = r.devices.filter((d) => d.migration?.migratable).length;
  const busy = r.devices.filter((d) => d.access === "busy").length;
  lines.push(
    `${r.devices.length} device${r.devices.length === 1 ? "" : "s"}: ${migratable} migratable` +
      `${busy ? `, ${busy} busy` : ""}`,
  );
  return lines.join("\n");
}

export const listCommand: Command = {
  name: "list",
  help: `Usage: vfio-mig list [--json] [--sysfs DIR] [--include-sim DIR]... [--no-open]

Lists every PCI device bound to vfio-pci or a vfio variant driver, and every mdev
device, from sysfs: its driver, IOMMU group, the other devices in the group and
whether the group is viable (every member bound to a vfio driver, pci-stub, pcieport,
or unbound; the kernel's own answer from GROUP_GET_STATUS when the group can be
opened), and its cdev node. Devices nobody has open are opened to read, with GET and
PROBE calls only, their migration flags, MIG_DATA_SIZE, state and whether DMA
logging (device dirty tracking) is available. A device in use shows "busy" and the
process holding it (from /proc: borrow it with --device pid:PID); one that cannot be
opened shows "unavailable: <reason>".

Each device's family says whether its state survives a close: an mdev's parent
driver keeps it; vfio-pci and its variant drivers (vfio-pci-core) reset the function
at the first open and at the last close when it has a reset method, so a device
nobody holds is already in its post-reset state (opening it here resets it again).

Options:
      --json             machine-readable output
      --sysfs DIR        sysfs root (default: $VFIO_MIG_SYSFS, else /sys)
      --include-sim DIR  also list simulated devices: DIR's subfolders holding a
                         device.json (or DIR itself); repeatable
      --no-open          sysfs facts only: open no group or device
  -h, --help             this help

${
    examplesHelp([
      "vfio-mig list",
      "vfio-mig list --json --no-open",
      "vfio-mig list --include-sim /tmp/sims",
    ])
  }

${exitCodesHelp([0, 1, 2], { 1: "failure (sysfs could not be read)" })}`,
  async run(args) {
    const { values, positionals } = parse("list", args, {
      json: { type: "boolean" },
      sysfs: { type: "string" },
      "include-sim": { type: "string", multiple: true },
      "no-open": { type: "boolean" },
    });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    if (positionals.length) throw new VfioMigError(`list: unexpected argument ${positionals[0]}`, "usage");
    if (values["include-sim"]?.length) await loadBackendsFor(["sim:"]);
    const r = listDevices({ sysfs: values.sysfs, includeSim: values["include-sim"], noOpen: values["no-open"] });
    if (values.json) printJson(r);
    else console.log(formatList(r));
    return 0;
  },
};
