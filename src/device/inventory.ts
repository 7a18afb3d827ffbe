// The inventory of VFIO devices: every device bound to a vfio driver under a sysfs
// root, with its IOMMU group (and whether the group is viable), its cdev node and, when
// it can be opened without disturbing anyone, its migration facts through either
// protocol; and the devices of a backend (the simulator's folders) asked for. `vfio-mig
// list` prints it; the library returns it.

import { isErrno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import { decode, encode, FEATURE, GROUP_FLAGS, IOCTL, STRUCTS } from "../../ffi/vfio_uapi.ts";
import { VfioMigError } from "../errors.ts";
import { stateName } from "../vfio/state_machine.ts";
import { migrationFlagNames } from "../vfio/v2.ts";
import { backendOfSpec, backendOps } from "./backend.ts";
import { busyError, DeviceBusyError } from "./busy.ts";
import { migrationControl } from "./control.ts";
import type { BackendName, VfioDevice } from "./device.ts";
import { type DeviceFamily, realResetBehaviour, type ResetBehaviour } from "./family.ts";
import { openDevice, systemFor } from "./open.ts";
import { isVfioDriver, Sysfs, type SysfsDevice, UUID } from "./sysfs.ts";

export interface GroupMember {
  name: string;
  driver: string | null;
}

export interface ListedMigration {
  migratable: boolean;
  /** "v1": migratable through the deprecated v1 migration region (QEMU 7.2's protocol); absent: uAPI v2, or not at all. */
  protocol?: "v1";
  /** uAPI v2's migration flags (null for v1). */
  flags: number | null;
  flagNames: string[];
  /** MIG_DATA_SIZE, or null where the kernel lacks it (and for v1). */
  dataSize: number | null;
  /** The state as its protocol names it: v2 "RUNNING", v1 "running (001b)". */
  state: string | null;
  /** "dma-logging" when PROBE of DMA_LOGGING_START succeeds, else "none". */
  dirtyTracking: "dma-logging" | "none";
}

export interface ListedDevice {
  /** PCI address, mdev UUID, or a backend's spec (sim:PATH). */
  device: string;
  /** pci, mdev, or a backend's name (sim). */
  kind: "pci" | "mdev" | BackendName;
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
  /** Folders of simulated devices (each subfolder that is one, or the folder itself: the backend says). */
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

/**
 * Migration facts of an open device, through its protocol (uAPI v2, else the v1
 * region): read-only calls (GET and PROBE, a region scan). Throws SysError for a kernel
 * error other than ENOTTY on the v2 query.
 */
export function migrationFacts(d: VfioDevice): ListedMigration {
  let flags: number | null = null;
  try {
    flags = d.migration.migrationFlags();
  } catch (e) {
    if (!isErrno(e, "ENOTTY")) throw e;
  }
  if (flags === null) {
    const v1 = migrationControl(d, "v1");
    const none = { flags: null, flagNames: [], dataSize: null, dirtyTracking: "none" as const };
    if (!v1) return { migratable: false, ...none, state: null };
    return { migratable: true, protocol: "v1", ...none, state: v1.state() };
  }
  return {
    migratable: true,
    flags,
    flagNames: migrationFlagNames(flags),
    dataSize: d.migration.dataSize(),
    state: stateName(d.migration.getState()),
    dirtyTracking: d.migration.probe(FEATURE.DMA_LOGGING_START, true) ? "dma-logging" : "none",
  };
}

/** Opens a device only to read its migration facts; busy and failures become fields. */
function query(sys: Sys, spec: string, out: ListedDevice, sysfs?: Sysfs): void {
  let d: VfioDevice;
  try {
    d = openDevice(sys, spec, { sysfs });
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

/** A listed device before any query: what sysfs (or its backend) says, with its reset family. */
function listed(
  base: Pick<ListedDevice, "device" | "kind" | "driver" | "mdevType" | "iommuGroup" | "groupNote" | "cdev">,
  reset: ResetBehaviour,
): ListedDevice {
  return {
    ...base,
    groupPeers: [],
    viable: null,
    kernelViable: null,
    access: "unavailable",
    unavailable: null,
    holders: [],
    migration: null,
    family: reset.family,
    stateSurvivesClose: !reset.resetsOnClose,
    resetReason: reset.reason,
  };
}

function fromSysfs(sysfs: Sysfs, d: SysfsDevice): ListedDevice {
  const members = d.group ? sysfs.groupMembers(d.group) : [];
  const item = listed({
    device: d.name,
    kind: d.kind,
    driver: d.driver,
    mdevType: d.mdevType,
    iommuGroup: d.group,
    groupNote: d.group ? null : "no IOMMU group",
    cdev: d.cdev ? `/dev/vfio/devices/${d.cdev}` : null,
  }, realResetBehaviour(sysfs, d));
  item.groupPeers = members.filter((m) => m.name !== d.name);
  item.viable = d.group ? members.every(memberIsSafe) : null;
  return item;
}

/** Every vfio-bound device under the sysfs root, then the simulated ones asked for. */
export function listDevices(opts: ListOptions = {}): ListResult {
  const host = libc();
  const root = (opts.sysfs || host.getenv("VFIO_MIG_SYSFS") || "/sys").replace(/\/+$/, "") || "/";
  const sys = host;
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
      } else query(sys, d.name, item, sysfs);
    } else item.unavailable = NOT_OPENED;
    devices.push(item);
  }

  if (opts.includeSim?.length) {
    const sim = backendOfSpec("sim:");
    if (!sim) throw new VfioMigError("--include-sim: no simulator is registered in this program", "usage");
    const simSys = systemFor(["sim:"]);
    const ops = backendOps(sim, "--include-sim");
    for (const dir of opts.includeSim) {
      const folders = sim.devicesIn(host, dir);
      if (folders.length === 0) {
        throw new VfioMigError(
          `--include-sim ${dir}: no simulated device there (no device.json in it or its subfolders)`,
          "usage",
        );
      }
      for (const path of folders) {
        const { info, reset } = ops.facts(host, path);
        const item = listed({
          device: `${sim.prefix}${path}`,
          kind: info.kind,
          driver: info.driver,
          mdevType: info.mdevType,
          iommuGroup: null,
          groupNote: "simulated: no IOMMU group",
          cdev: null,
        }, reset);
        if (!opts.noOpen) query(simSys, item.device, item);
        else item.unavailable = NOT_OPENED;
        devices.push(item);
      }
    }
  }
  return { sysfs: root, devices };
}
