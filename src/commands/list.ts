// `vfio-mig list`: every device bound to a vfio driver, with its IOMMU group (and
// whether the group is viable), its cdev node and, when it can be opened without
// disturbing anyone, its migration flags, MIG_DATA_SIZE, state and dirty tracking.

import { isErrno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import { decode, encode, FEATURE, GROUP_FLAGS, IOCTL, STRUCTS } from "../../ffi/vfio_uapi.ts";
import { DeviceBusyError, loadBackendsFor, openDevice, systemFor, type VfioDevice } from "../device/open.ts";
import { backendOfSpec, backendOps } from "../device/backend.ts";
import { busyError } from "../device/busy.ts";
import { type DeviceFamily, realResetBehaviour, type ResetBehaviour, survivesCloseText } from "../device/family.ts";
import { isVfioDriver, Sysfs, type SysfsDevice, UUID } from "../device/sysfs.ts";
import { VfioMigError } from "../errors.ts";
import { stateName } from "../vfio/state_machine.ts";
import { migrationFlagNames } from "../vfio/v2.ts";
import { type Command, hex, parse, printJson } from "./command.ts";

export interface GroupMember {
  name: string;
  driver: string | null;
}

export interface ListedMigration {
  migratable: boolean;
  flags: number | null;
  flagNames: string[];
  /** MIG_DATA_SIZE, or null where the kernel lacks it. */
  dataSize: number | null;
  state: string | null;
  /** "dma-logging" when PROBE of DMA_LOGGING_START succeeds, else "none". */
  dirtyTracking: "dma-logging" | "none";
}

export interface ListedDevice {
  /** PCI address, mdev UUID, or sim:PATH. */
  device: string;
  kind: "pci" | "mdev" | "sim";
  driver: string | null;
  mdevType: string | null;
  iommuGroup: string | null;
  /** The other devices in the IOMMU group. */
  groupPeers: GroupMember[];
  /** From sysfs: every group member bound to a vfio driver, pci-stub, pcieport, or unbound. */
  viable: boolean | null;
  /** The kernel's answer (GROUP_GET_STATUS), when the group could be opened. */
  kernelViable: boolean | null;
  /** Why kernelViable is null. */
  groupNote: string | null;
  /** /dev/vfio/devices/vfioN, when the kernel made one. */
  cdev: string | null;
  /** "ok": opened and queried; "busy": someone else has it open; "unavailable": see `unavailable`. */
  access: "ok" | "busy" | "unavailable";
  unavailable: string | null;
  /** The processes holding a busy device, from /proc (borrow with --device pid:PID). */
  holders: { pid: number; command: string }[];
  migration: ListedMigration | null;
  /**
   * The driver family: vfio-pci (vfio-pci-core and its variant drivers), mdev, or a
   * simulated device's (sim-pci, sim-mdev); it decides whether state survives a close.
   */
  family: DeviceFamily;
  /** false when the device is reset at its first open and last close (vfio-pci with a working reset). */
  stateSurvivesClose: boolean;
  /** Why, in a few words ("vfio-pci resets the function"). */
  resetReason: string;
}

export interface ListOptions {
  /** sysfs root (default $VFIO_MIG_SYSFS, else /sys). */
  sysfs?: string;
  /** Folders of simulated devices (each subfolder with a device.json, or the folder itself). */
  includeSim?: string[];
  /** Do not open devices (sysfs facts only). */
  noOpen?: boolean;
}

export interface ListResult {
  sysfs: string;
  devices: ListedDevice[];
}

// Drivers the kernel lets share a group with a vfio user (driver_managed_dma): the
// stub that only holds a device, and PCIe port services of bridges.
const GROUP_SAFE_DRIVERS = new Set(["pci-stub", "pcieport"]);

function memberIsSafe(m: GroupMember): boolean {
  return m.driver === null || isVfioDriver(m.driver) || GROUP_SAFE_DRIVERS.has(m.driver) || UUID.test(m.name);
}

const NOT_OPENED = "not opened (--no-open)";

/** A Sys whose VFIO_MIG_SYSFS is `root`, so that openDevice looks devices up there. */
function withSysfsRoot(sys: Sys, root: string): Sys {
  return new Proxy(sys, {
    get(target, prop) {
      if (prop === "getenv") {
        return (name: string) => (name === "VFIO_MIG_SYSFS" ? root : target.getenv(name));
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

function reasonOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function isBusy(e: unknown): boolean {
  return e instanceof DeviceBusyError || isErrno(e, "EBUSY") ||
    (e instanceof VfioMigError && /\bbusy\b/.test(e.message));
}

function setReset(out: ListedDevice, r: ResetBehaviour): void {
  out.family = r.family;
  out.stateSurvivesClose = !r.resetsOnClose;
  out.resetReason = r.reason;
}

function listDir(sys: Sys, path: string): string[] {
  try {
    return sys.readdir(path);
  } catch (e) {
    if (isErrno(e, "ENOENT") || isErrno(e, "ENOTDIR")) return [];
    throw e;
  }
}

function exists(sys: Sys, path: string): boolean {
  try {
    sys.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The kernel's view of a group: open it, GROUP_GET_STATUS, close. */
function probeGroup(sys: Sys, group: string): { viable: boolean | null; note: string | null } {
  const path = `/dev/vfio/${group}`;
  let fd: number;
  try {
    fd = sys.open(path, O.RDWR | O.CLOEXEC);
  } catch (e) {
    if (isErrno(e, "EBUSY")) return { viable: null, note: "busy (another process has the group open)" };
    if (isErrno(e, "ENOENT")) return { viable: null, note: `no ${path}` };
    if (isErrno(e, "EACCES") || isErrno(e, "EPERM")) return { viable: null, note: `permission denied on ${path}` };
    return { viable: null, note: `cannot open ${path}: ${reasonOf(e)}` };
  }
  try {
    const st = encode(STRUCTS.vfio_group_status, { argsz: 8 });
    sys.ioctl(fd, IOCTL.GROUP_GET_STATUS, st);
    return { viable: (decode(STRUCTS.vfio_group_status, st).flags & GROUP_FLAGS.VIABLE) !== 0, note: null };
  } catch (e) {
    if (e instanceof SysError) return { viable: null, note: `GROUP_GET_STATUS failed: ${e.code}` };
    throw e;
  } finally {
    sys.close(fd);
  }
}

/** Migration facts of an open device; read-only calls (GET and PROBE). */
export function migrationFacts(d: VfioDevice): ListedMigration {
  let flags: number | null = null;
  try {
    flags = d.migration.migrationFlags();
  } catch (e) {
    if (!isErrno(e, "ENOTTY")) throw e;
  }
  if (flags === null) {
    return { migratable: false, flags: null, flagNames: [], dataSize: null, state: null, dirtyTracking: "none" };
  }
  return {
    migratable: true,
    flags,
    flagNames: migrationFlagNames(flags!),
    dataSize: d.migration.dataSize(),
    state: stateName(d.migration.getState()),
    dirtyTracking: d.migration.probe(FEATURE.DMA_LOGGING_START, true) ? "dma-logging" : "none",
  };
}

/** Opens a device only to read its migration facts; busy and failures become fields. */
function query(sys: Sys, spec: string, out: ListedDevice): void {
  let d: VfioDevice;
  try {
    d = openDevice(sys, spec);
  } catch (e) {
    if (isBusy(e)) {
      out.access = "busy";
      if (e instanceof DeviceBusyError) out.holders = e.holders.map((h) => ({ pid: h.pid, command: h.command }));
    } else {
      out.access = "unavailable";
      // openDevice's messages start with the spec, which the listing already shows.
      const why = reasonOf(e);
      out.unavailable = why.startsWith(`${spec}: `) ? why.slice(spec.length + 2) : why;
    }
    return;
  }
  try {
    setReset(out, d.reset); // refined by VFIO_DEVICE_GET_INFO's RESET flag
    out.migration = migrationFacts(d);
    out.access = "ok";
  } catch (e) {
    out.access = "unavailable";
    out.unavailable = `opened, but a migration query failed: ${reasonOf(e)}`;
  } finally {
    try {
      d.close();
    } catch { /* nothing to do */ }
  }
}

function fromSysfs(sysfs: Sysfs, d: SysfsDevice): ListedDevice {
  const members = d.group ? sysfs.groupMembers(d.group) : [];
  const reset = realResetBehaviour(sysfs, d);
  return {
    device: d.name,
    kind: d.kind,
    driver: d.driver,
    mdevType: d.mdevType,
    iommuGroup: d.group,
    groupPeers: members.filter((m) => m.name !== d.name),
    viable: d.group ? members.every(memberIsSafe) : null,
    kernelViable: null,
    groupNote: d.group ? null : "no IOMMU group",
    cdev: d.cdev ? `/dev/vfio/devices/${d.cdev}` : null,
    access: "unavailable",
    unavailable: null,
    holders: [],
    migration: null,
    family: reset.family,
    stateSurvivesClose: !reset.resetsOnClose,
    resetReason: reset.reason,
  };
}

/** The simulated devices in a folder: its subfolders holding a device.json, or itself. */
function simFolders(sys: Sys, dir: string): string[] {
  const clean = dir.replace(/\/+$/, "") || "/";
  if (exists(sys, `${clean}/device.json`)) return [clean];
  return listDir(sys, clean).map((n) => `${clean}/${n}`).filter((p) => exists(sys, `${p}/device.json`));
}

/** Every vfio-bound device under the sysfs root, then the simulated ones asked for. */
export function listDevices(opts: ListOptions = {}): ListResult {
  const host = libc();
  const root = (opts.sysfs || host.getenv("VFIO_MIG_SYSFS") || "/sys").replace(/\/+$/, "") || "/";
  const sys = withSysfsRoot(host, root);
  const sysfs = new Sysfs(sys, root);
  const devices: ListedDevice[] = [];

  const found: SysfsDevice[] = [];
  for (const n of listDir(sys, `${root}/bus/pci/devices`)) {
    const d = sysfs.find(`${root}/bus/pci/devices/${n}`);
    if (d?.driver && isVfioDriver(d.driver)) found.push(d);
  }
  for (const n of listDir(sys, `${root}/bus/mdev/devices`)) {
    const d = sysfs.find(`${root}/bus/mdev/devices/${n}`);
    if (d) found.push({ ...d, kind: "mdev" });
  }
  for (const d of found) {
    const item = fromSysfs(sysfs, d);
    if (!opts.noOpen) {
      if (d.group) {
        const g = probeGroup(sys, d.group);
        item.kernelViable = g.viable;
        item.groupNote = g.note;
      }
      if (item.groupNote?.startsWith("busy")) {
        item.access = "busy";
        item.holders = busyError(sys, d.name, { group: d.group, cdev: d.cdev }).holders
          .map((h) => ({ pid: h.pid, command: h.command }));
      } else query(sys, d.name, item);
    } else item.unavailable = NOT_OPENED;
    devices.push(item);
  }

  if (opts.includeSim?.length) {
    const sim = backendOfSpec("sim:");
    if (!sim) throw new VfioMigError("--include-sim: no simulator is registered in this program", "usage");
    const simSys = systemFor(["sim:"]);
    const ops = backendOps(sim, "--include-sim");
    for (const dir of opts.includeSim) {
      const folders = simFolders(host, dir);
      if (folders.length === 0) {
        throw new VfioMigError(
          `--include-sim ${dir}: no simulated device there (no device.json in it or its subfolders)`,
          "usage",
        );
      }
      for (const path of folders) {
        const { info, reset } = ops.facts(host, path);
        const item: ListedDevice = {
          device: `sim:${path}`,
          kind: "sim",
          driver: null,
          mdevType: null,
          iommuGroup: null,
          groupPeers: [],
          viable: null,
          kernelViable: null,
          groupNote: "simulated: no IOMMU group",
          cdev: null,
          access: "unavailable",
          unavailable: null,
          holders: [],
          migration: null,
          family: reset.family,
          stateSurvivesClose: !reset.resetsOnClose,
          resetReason: reset.reason,
        };
        item.driver = info.driver;
        item.mdevType = info.mdevType ?? null;
        if (!opts.noOpen) query(simSys, item.device, item);
        else item.unavailable = NOT_OPENED;
        devices.push(item);
      }
    }
  }
  return { sysfs: root, devices };
}

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
  -h, --help             this help`,
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
