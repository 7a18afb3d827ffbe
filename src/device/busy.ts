// Naming the process that holds a busy device. A VFIO group can be open in one
// process only (drivers/vfio/group.c vfio_group_fops_open: EBUSY), a device bound
// through its cdev in one only (BIND_IOMMUFD: EBUSY while its group is open,
// vfio_device_block_group; EINVAL while another cdev file has it open,
// vfio_df_open), and a simulated device is flock'ed by the process that has it open.
// So when an open fails that way, the holder is the process whose fd table has that
// group, cdev or sim lock file, and it can be borrowed from: --device pid:PID.

import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { isDeviceFd, Procfs, type VfioFd, type VfioProcess } from "./procfs.ts";

/** What identifies the device in a holder's fd table. */
export interface BusyTarget {
  /** IOMMU group number: a holder has /dev/vfio/GROUP open. */
  group?: string | null;
  /** vfioN: a holder has /dev/vfio/devices/vfioN open. */
  cdev?: string | null;
  /** A backend's device folder (a simulated device's): a holder has its device fd open. */
  backendDir?: string | null;
}

export interface BusyHolder {
  pid: number;
  command: string;
  /**
   * false when the process holds a group-path device fd but not the device's group: the
   * fd may be that device's (a process that was handed the device fd alone, e.g. by
   * `load --exec`), or another's.
   */
  certain: boolean;
  /** The fds to borrow: exact for a cdev or sim device; for a group, the holder's device fds. */
  deviceFds: number[];
  /** How many device fds the holder has in all (pid:PID alone picks the only one). */
  allDeviceFds: number;
}

/** The device cannot be opened because another process has it: exit 3, holders named. */
export class DeviceBusyError extends VfioMigError {
  constructor(message: string, readonly holders: BusyHolder[]) {
    super(message, "device");
    this.name = "DeviceBusyError";
  }
}

function holds(p: VfioProcess, t: BusyTarget): VfioFd[] {
  return p.fds.filter((f) =>
    (f.kind === "group" && t.group != null && f.group === t.group) ||
    (f.kind === "cdev" && t.cdev != null && f.node === t.cdev) ||
    (f.kind === "backend" && t.backendDir != null && f.dir === t.backendDir)
  );
}

/**
 * The processes holding the device (from /proc), with the fds to borrow: those with its
 * group, cdev or sim lock file open; when there are none and the device has a group,
 * those holding a group-path device fd without any group open (`certain` false), since
 * a device fd keeps its group open by itself (drivers/vfio/group.c: device fds hold a
 * group file reference) and may have been handed down alone.
 */
export function findHolders(procfs: Procfs, t: BusyTarget, self: number): BusyHolder[] {
  const out: BusyHolder[] = [];
  const procs = procfs.scan(self);
  const count = (p: VfioProcess) => p.fds.filter(isDeviceFd).length;
  for (const p of procs) {
    const matched = holds(p, t);
    if (matched.length === 0) continue;
    // A cdev or sim fd is the device fd itself; a group's devices are its anon device fds.
    const direct = matched.filter((f) => f.kind !== "group").map((f) => f.fd);
    const deviceFds = direct.length ? direct : p.fds.filter((f) => f.kind === "device").map((f) => f.fd);
    out.push({ pid: p.pid, command: p.command, certain: true, deviceFds, allDeviceFds: count(p) });
  }
  if (out.length || !t.group) return out;
  for (const p of procs) {
    if (p.fds.some((f) => f.kind === "group")) continue;
    const deviceFds = p.fds.filter((f) => f.kind === "device").map((f) => f.fd);
    if (deviceFds.length) {
      out.push({ pid: p.pid, command: p.command, certain: false, deviceFds, allDeviceFds: count(p) });
    }
  }
  return out;
}

/** `--device pid:4242`, or `pid:4242:FD` when the holder has several device fds. */
export function borrowHint(h: BusyHolder): string {
  if (h.allDeviceFds <= 1) return `--device pid:${h.pid}`;
  if (h.deviceFds.length === 1) return `--device pid:${h.pid}:${h.deviceFds[0]}`;
  return `--device pid:${h.pid}:FD (its VFIO device fds: ${h.deviceFds.join(", ")})`;
}

/**
 * The one-line error for a device another process holds:
 * `0000:3b:00.1 is held by qemu-system-x86 (pid 4242); to save its state while it is
 * paused: --device pid:4242`. When /proc shows no holder (another user's process without
 * root, another pid namespace) it says so. Exit code 3.
 */
export function busyError(sys: Sys, spec: string, t: BusyTarget): DeviceBusyError {
  let holders: BusyHolder[] = [];
  try {
    holders = findHolders(Procfs.fromEnv(sys), t, sys.getpid());
  } catch { /* naming the holder is a courtesy: the error is EBUSY either way */ }
  if (holders.length === 0) {
    return new DeviceBusyError(
      `${spec} is busy: another process has it open, and none that this user may inspect holds it ` +
        `(run as root to see every process)`,
      [],
    );
  }
  const who = holders.map((h) => `${h.command} (pid ${h.pid})`).join(holders[0].certain ? " and " : " or ");
  const held = holders[0].certain ? "is held by" : "is probably held by";
  return new DeviceBusyError(
    `${spec} ${held} ${who}; to save its state while it is paused: ${borrowHint(holders[0])}`,
    holders,
  );
}
