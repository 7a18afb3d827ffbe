// What /proc says about the VFIO files a process holds: its fd table (readlink of
// /proc/PID/fd/N) classified into device fds, groups, containers, iommufd and
// the devices of a registered backend (a simulated device), and its command name. Used to borrow a device from the process
// that holds it (borrow.ts) and to name the holder of a busy device.
//
// The /proc root can be moved (VFIO_MIG_PROCFS) for tests with a fake tree: symlinks
// whose targets are what the kernel shows (a dangling link reads the same).

import { isErrno, SysError } from "../../ffi/errno.ts";
import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { backendOfFdTarget } from "./backend.ts";

/**
 * One VFIO-related file in a process's fd table, by what readlink(/proc/PID/fd/N) shows:
 * - `device`: a device fd from VFIO_GROUP_GET_DEVICE_FD (`anon_inode:[vfio-device]`,
 *   drivers/vfio/group.c vfio_device_open_file);
 * - `cdev`: a device cdev `/dev/vfio/devices/vfioN` (bound or not, drivers/vfio/device_cdev.c);
 * - `group`: `/dev/vfio/N`; `container`: `/dev/vfio/vfio`; `iommufd`: `/dev/iommu`;
 * - `backend`: a device fd of a registered backend (src/device/backend.ts), as the backend
 *   recognises it: a simulated device's fd is the flock'ed lock file of its folder.
 */
export type VfioFd =
  | { fd: number; kind: "device"; target: string }
  | { fd: number; kind: "cdev"; target: string; node: string }
  | { fd: number; kind: "group"; target: string; group: string }
  | { fd: number; kind: "container"; target: string }
  | { fd: number; kind: "iommufd"; target: string }
  | { fd: number; kind: "backend"; target: string; backend: string; dir: string };

/** A process and the VFIO files it holds. */
export interface VfioProcess {
  pid: number;
  /** /proc/PID/comm: the command name, at most 15 characters (TASK_COMM_LEN - 1). */
  command: string;
  fds: VfioFd[];
}

const GROUP_NODE = /^\/dev\/vfio\/(\d+|noiommu-\d+)$/;
const CDEV_NODE = /^\/dev\/vfio\/devices\/(vfio\d+)$/;

/** Device fds: what can be borrowed (a group, container or iommufd fd cannot be migrated). */
export function isDeviceFd(f: VfioFd): boolean {
  return f.kind === "device" || f.kind === "cdev" || f.kind === "backend";
}

export class Procfs {
  constructor(readonly sys: Sys, readonly root = "/proc") {}

  static fromEnv(sys: Sys): Procfs {
    return new Procfs(sys, (sys.getenv("VFIO_MIG_PROCFS") || "/proc").replace(/\/+$/, "") || "/");
  }

  /** The command name of a process; null when it is gone. */
  command(pid: number): string | null {
    try {
      const fd = this.sys.open(`${this.root}/${pid}/comm`, 0 /* O_RDONLY */);
      try {
        const b = new Uint8Array(64);
        const n = this.sys.read(fd, b);
        return new TextDecoder().decode(b.subarray(0, n)).replace(/\n$/, "");
      } finally {
        this.sys.close(fd);
      }
    } catch (e) {
      if (e instanceof SysError) return null;
      throw e;
    }
  }

  /** Numeric entries of the /proc root: every process this pid namespace shows. */
  pids(): number[] {
    let names: string[];
    try {
      names = this.sys.readdir(this.root);
    } catch (e) {
      if (e instanceof SysError) return [];
      throw e;
    }
    return names.filter((n) => /^\d+$/.test(n)).map(Number).sort((a, b) => a - b);
  }

  /** What an fd target is, for the VFIO files; null for anything else. */
  classify(fd: number, target: string): VfioFd | null {
    if (target === "anon_inode:[vfio-device]") return { fd, kind: "device", target };
    const cdev = CDEV_NODE.exec(target);
    if (cdev) return { fd, kind: "cdev", target, node: cdev[1] };
    const group = GROUP_NODE.exec(target);
    if (group) return { fd, kind: "group", target, group: group[1] };
    if (target === "/dev/vfio/vfio") return { fd, kind: "container", target };
    if (target === "/dev/iommu") return { fd, kind: "iommufd", target };
    const b = backendOfFdTarget(this.sys, target);
    return b ? { fd, kind: "backend", target, backend: b.backend.name, dir: b.dir } : null;
  }

  /**
   * The VFIO files in a process's fd table, in fd order.
   *
   * Throws VfioMigError (kind "device") when the process does not exist (ENOENT, ESRCH)
   * or its fd table may not be read: /proc/PID/fd needs ptrace read access
   * (PTRACE_MODE_READ_FSCREDS, fs/proc/base.c proc_fd_access_allowed), i.e. root or the
   * same user.
   */
  vfioFds(pid: number, label = `pid:${pid}`): VfioFd[] {
    let names: string[];
    try {
      names = this.sys.readdir(`${this.root}/${pid}/fd`);
    } catch (e) {
      if (isErrno(e, "ENOENT") || isErrno(e, "ESRCH")) {
        throw new VfioMigError(`${label}: no such process`, "device");
      }
      if (isErrno(e, "EACCES") || isErrno(e, "EPERM")) {
        throw new VfioMigError(
          `${label}: permission denied reading ${this.root}/${pid}/fd: borrowing a device needs ptrace rights ` +
            `over the process that holds it (run as root, or as its user)`,
          "device",
        );
      }
      throw e;
    }
    const out: VfioFd[] = [];
    for (const n of names.filter((n) => /^\d+$/.test(n)).map(Number).sort((a, b) => a - b)) {
      const target = this.#readlink(`${this.root}/${pid}/fd/${n}`);
      if (target === null) continue; // closed meanwhile
      const f = this.classify(n, target);
      if (f) out.push(f);
    }
    return out;
  }

  /** What fd N of a process points at (readlink), or null when it is not open. */
  target(pid: number | "self", fd: number): string | null {
    return this.#readlink(`${this.root}/${pid}/fd/${fd}`);
  }

  /**
   * Every process holding a VFIO file, as far as this process may see: the fd tables of
   * other users' processes are skipped unless we have ptrace read rights over them
   * (root does). `skip` leaves out a pid (our own, usually).
   */
  scan(skip?: number): VfioProcess[] {
    const out: VfioProcess[] = [];
    for (const pid of this.pids()) {
      if (pid === skip) continue;
      let fds: VfioFd[];
      try {
        fds = this.vfioFds(pid);
      } catch (e) {
        if (e instanceof VfioMigError || e instanceof SysError) continue; // gone, or not ours to see
        throw e;
      }
      if (!fds.length) continue;
      const command = this.command(pid);
      // No name: the process ended between its fd table and its name (a short-lived child
      // that inherited the fd): no longer a holder. Still there: a name we may not read.
      if (command === null && !this.#alive(pid)) continue;
      out.push({ pid, command: command ?? "?", fds });
    }
    return out;
  }

  /** Whether /proc/PID still exists (its fd table can still be listed). */
  #alive(pid: number): boolean {
    try {
      this.sys.readdir(`${this.root}/${pid}/fd`);
      return true;
    } catch (e) {
      if (e instanceof SysError) return false;
      throw e;
    }
  }

  #readlink(path: string): string | null {
    try {
      return this.sys.readlink(path);
    } catch (e) {
      if (e instanceof SysError) return null;
      throw e;
    }
  }
}
