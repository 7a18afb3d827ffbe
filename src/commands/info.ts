// `vfio-mig info`: what the device layer says of a device (src/device/describe.ts), printed.

import { DEVICE_FLAGS } from "../../ffi/vfio_uapi.ts";
import { describeDevice, type DeviceReport } from "../device/describe.ts";
import { survivesCloseText } from "../device/family.ts";
import { parseProtocol } from "../migrate/protocol.ts";
import { describeConfig } from "../pci/config.ts";
import { type Command, hex, parse, printJson } from "./command.ts";
import { examplesHelp, exitCodesHelp } from "./help.ts";
import { DEVICE_OPTION_HELP, openNamedDevice, VF_TOKEN_OPTION, VF_TOKEN_OPTION_HELP } from "./devices.ts";

export { DEVICE_OPTION_HELP };
export type { DeviceReport };

export const infoCommand: Command = {
  name: "info",
  help: `Usage: vfio-mig info [--device D] [--vf-token UUID] [--protocol auto|v1|v2] [--json]

Opens the device and reports its identity (driver, mdev type, PCI ids), whether its
driver supports migration (uAPI v2, or the deprecated v1 region protocol), the
migration flags (STOP_COPY, P2P, PRE_COPY), MIG_DATA_SIZE, the current migration state
and DMA logging support; for v1, the migration region's size, the data section's
mmap-able areas and device_state; the decoded PCI config space header (command
register, capabilities, MSI/MSI-X state); and whether the device's state survives a
close (an mdev keeps it; vfio-pci resets the function at the first open and the last
close). Changes nothing, except that opening a vfio-pci function nobody holds resets
it (as every first open does).

Options:
  -d, --device D   ${DEVICE_OPTION_HELP}
${VF_TOKEN_OPTION_HELP}
      --protocol P describe migration through auto (v2 when present, else v1), v1 or v2
      --json       machine-readable output
  -h, --help       this help

${
    examplesHelp([
      "vfio-mig info --device 0000:3b:00.1",
      "vfio-mig info --device pid:$(pgrep -f qemu-system) --json",
      "vfio-mig info --device sim:/tmp/a --protocol v1",
    ])
  }

${exitCodesHelp([0, 1, 2, 3])}`,
  async run(args) {
    const { values } = parse("info", args, {
      device: { type: "string", short: "d" },
      ...VF_TOKEN_OPTION,
      protocol: { type: "string" },
      json: { type: "boolean" },
    });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    const dev = await openNamedDevice("info", values.device, values["vf-token"]);
    try {
      const r = describeDevice(dev, parseProtocol(values.protocol, "info"));
      if (values.json) printJson(r);
      else {
        console.log(`device:          ${describeAccess(r)}`);
        console.log(`driver:          ${r.driver ?? "?"}${r.mdevType ? `, mdev type ${r.mdevType}` : ""}`);
        console.log(
          `PCI ids:         ${hex(r.vendor)}:${hex(r.deviceId)} subsystem ${hex(r.subsystemVendor)}:${
            hex(r.subsystemDevice)
          }`,
        );
        if (r.pciIdsUnknown) console.log(`                 unknown: ${r.pciIdsUnknown}`);
        if (r.deviceFlags !== null) {
          const names = Object.entries(DEVICE_FLAGS).filter(([, v]) => r.deviceFlags! & v).map(([k]) => k);
          console.log(`device flags:    ${hex(r.deviceFlags, 1)} (${names.join(" ") || "none"})`);
        }
        if (!r.migratable) console.log(`migration:       not supported by this driver (ENOTTY)`);
        else if (r.protocol === null) console.log(`migration:       not through protocol ${values.protocol}`);
        else if (r.protocol === "v1" && r.v1) {
          console.log(`migration:       protocol v1 (deprecated region protocol), region ${r.v1.regionIndex}`);
          console.log(`region size:     ${r.v1.regionSize} bytes (registers at 0, 32 bytes)`);
          console.log(`data section:    ${describeAreas(r.v1.mmapAreas, r.v1.regionSize)}`);
          console.log(`device_state:    ${r.v1.state}`);
        } else {
          console.log(
            `migration:       uAPI v2, flags ${hex(r.migrationFlags, 1)} (${r.migrationFlagNames.join(" ")})`,
          );
          console.log(`MIG_DATA_SIZE:   ${r.dataSize ?? "not reported"}`);
          console.log(`state:           ${r.state}`);
          console.log(`states:          ${r.supportedStates.join(" ")}`);
          console.log(`DMA logging:     ${r.dmaLogging ? "yes" : "no"}`);
          if (r.v1) console.log(`v1 region:       also present (region ${r.v1.regionIndex}); --protocol v1 uses it`);
        }
        console.log(
          `family:          ${r.family}; state survives close: ${
            survivesCloseText({ family: r.family, resetsOnClose: !r.stateSurvivesClose, reason: r.resetReason })
          }`,
        );
        if (r.config) {
          const [first, ...rest] = describeConfig(r.config);
          console.log(`config space:    ${first}`);
          for (const line of rest) console.log(`                 ${line}`);
        }
      }
      return 0;
    } finally {
      dev.close();
    }
  },
};

/**
 * "0000:3b:00.1 (pci, opened via group)", or for a borrowed fd "pid:4242 = 0000:3b:00.1
 * (pci, borrowed from qemu-system-x86 (pid 4242) fd 31, opened there via group)".
 */
export function describeAccess(r: DeviceReport): string {
  const name = r.name !== r.device ? ` = ${r.name}` : r.candidates.length ? ` = one of ${r.candidates.join(", ")}` : "";
  if (r.access === "borrowed" && r.holder) {
    const who = `${r.holder.command ?? "?"} (pid ${r.holder.pid}) fd ${r.holder.fd}`;
    return `${r.device}${name} (${r.kind}, borrowed from ${who}, opened there via ${r.path})`;
  }
  if (r.access === "inherited") return `${r.device}${name} (${r.kind}, inherited fd, opened via ${r.path})`;
  return `${r.device} (${r.kind}, opened via ${r.access})`;
}

/** "mmap'd 4096+1048576" or "trapped (pread/pwrite only)". */
function describeAreas(areas: { offset: number; size: number }[], regionSize: number): string {
  if (areas.length === 0) return `trapped (pread/pwrite only), up to ${regionSize - 32} bytes`;
  const list = [...areas].sort((a, b) => a.offset - b.offset).map((a) => `[${a.offset}, ${a.offset + a.size})`);
  return `mmap-able ${list.join(" ")}; the rest of the region through pread/pwrite`;
}
