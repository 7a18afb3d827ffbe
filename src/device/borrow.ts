// Reaching a device another process has open, where its state lives.
//
// `--device pid:PID[:FD]` borrows it: pidfd_open(PID) + pidfd_getfd(FD) (Linux >= 5.6,
// kernel/pid.c) give this process a new fd for the SAME open file as the holder's fd
// FD. Migration ioctls, region access and data_fds work through it as through the
// holder's own fd, and closing it releases nothing: the device is closed (and a
// vfio-pci function reset) only when the last reference to the file goes, normally
// the holder's. pidfd_getfd needs ptrace rights over PID (PTRACE_MODE_ATTACH_REALCREDS:
// root, or the same user where Yama's ptrace_scope allows it).
//
// `--device fd:N` inherits it: fd N was opened by the process that started us (a
// launcher, a test, `vfio-mig load --exec`) and left open across exec.
//
// Which device an fd is: a cdev fd says (/dev/vfio/devices/vfioN -> sysfs
// class/vfio-dev/vfioN/device). A group-path device fd reads `anon_inode:[vfio-device]`
// and Linux 6.12 shows nothing more about it in fdinfo (vfio_device_fops has no
// show_fdinfo), so it is told by the groups the same process holds (/dev/vfio/N ->
// sysfs kernel/iommu_groups/N/devices) and by its PCI ids (config space through the
// fd, against sysfs vendor/device/subsystem_*). When that leaves several candidates of
// the same driver and mdev type, the identity a stream records is still exact; only
// the name stays unknown (VfioDevice.candidates lists them).

import { isErrno, SysError } from "../../ffi/errno.ts";
import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import {
  deviceError,
  type DeviceHolder,
  type DeviceIdentityInfo,
  pciIdentityFromConfig,
  VfioDevice,
  withIdentity,
} from "./device.ts";
import { realResetBehaviour, type ResetBehaviour } from "./family.ts";
import { bindIommufd } from "./iommufd.ts";
import { isDeviceFd, Procfs, type VfioFd } from "./procfs.ts";
import { backendOps, registeredBackends } from "./backend.ts";
import { isVfioDriver, Sysfs, type SysfsDevice } from "./sysfs.ts";

/** A device spec that names an fd rather than a device: pid:PID, pid:PID:FD, fd:N. */
export type FdSpec =
  | { kind: "pid"; pid: number; fd: number | null }
  | { kind: "fd"; fd: number };

/**
 * Parses `pid:PID`, `pid:PID:FD` or `fd:N`; null for any other spec. Throws VfioMigError
 * (usage) for a malformed one (`pid:abc`, `fd:`).
 */
export function parseFdSpec(spec: string): FdSpec | null {
  if (!spec.startsWith("pid:") && !spec.startsWith("fd:")) return null;
  const pid = /^pid:(\d+)(?::(\d+))?$/.exec(spec);
  if (pid && Number(pid[1]) > 0) return { kind: "pid", pid: Number(pid[1]), fd: pid[2] ? Number(pid[2]) : null };
  const fd = /^fd:(\d+)$/.exec(spec);
  if (fd) return { kind: "fd", fd: Number(fd[1]) };
  throw new VfioMigError(
    `${spec}: give pid:PID (borrow the device fd process PID holds), pid:PID:FD (its fd FD) or fd:N ` +
      `(an fd this process inherited)`,
    "usage",
  );
}

function describeFd(f: VfioFd): string {
  switch (f.kind) {
    case "group":
      return `the VFIO group ${f.target}`;
    case "container":
      return "a VFIO container (/dev/vfio/vfio)";
    case "iommufd":
      return "an iommufd (/dev/iommu)";
    default:
      return f.target;
  }
}

/**
 * The holder's fd a pid: spec designates, from its fd table (no side effects): FD when
 * given (it must be a device fd), else its only device fd. Throws VfioMigError: device
 * (no such process, no permission to read its fd table, FD not a VFIO device fd, no
 * device fd at all) or usage (several device fds and no FD).
 */
export function selectHolderFd(
  procfs: Procfs,
  spec: { pid: number; fd: number | null },
  label: string,
): { fds: VfioFd[]; chosen: VfioFd; command: string | null } {
  const fds = procfs.vfioFds(spec.pid, label || undefined);
  const command = procfs.command(spec.pid);
  const who = `pid ${spec.pid}${command ? ` (${command})` : ""}`;
  const devices = fds.filter(isDeviceFd);
  if (spec.fd !== null) {
    const f = fds.find((x) => x.fd === spec.fd);
    if (f && isDeviceFd(f)) return { fds, chosen: f, command };
    const target = f?.target ?? procfs.target(spec.pid, spec.fd);
    if (target === null) throw deviceError(label, `${who} has no fd ${spec.fd}`);
    throw deviceError(
      label,
      `fd ${spec.fd} of ${who} is ${f ? describeFd(f) : target}, not a VFIO device` +
        (devices.length ? ` (its VFIO device fds: ${devices.map((d) => d.fd).join(", ")})` : ""),
    );
  }
  if (devices.length === 1) return { fds, chosen: devices[0], command };
  if (devices.length === 0) {
    const others = fds.map(describeFd);
    throw deviceError(
      label,
      `${who} holds no VFIO device fd` +
        (others.length ? ` (only ${others.join(", ")}: it has not opened a device through it)` : ""),
    );
  }
  throw new VfioMigError(
    `${label}: ${who} holds ${devices.length} VFIO device fds (${devices.map((d) => d.fd).join(", ")}): ` +
      `choose one with pid:${spec.pid}:FD`,
    "usage",
  );
}

function yamaScope(sys: Sys): string | null {
  try {
    return new Sysfs(sys, "/").attribute("/proc/sys/kernel/yama/ptrace_scope");
  } catch {
    return null;
  }
}

/** pidfd_open + pidfd_getfd, each errno turned into one line (device errors). */
function takeFd(sys: Sys, pid: number, fd: number, label: string): number {
  const linux = "borrowing a device needs Linux >= 5.6 (pidfd_open, pidfd_getfd)";
  let pidfd: number;
  try {
    pidfd = sys.pidfdOpen(pid);
  } catch (e) {
    if (isErrno(e, "ESRCH")) throw deviceError(label, `no such process`);
    if (isErrno(e, "ENOSYS")) throw deviceError(label, linux);
    if (e instanceof SysError) throw deviceError(label, `pidfd_open(${pid}) failed: ${e.code}`);
    throw e;
  }
  try {
    return sys.pidfdGetfd(pidfd, fd);
  } catch (e) {
    if (isErrno(e, "EPERM")) {
      const scope = yamaScope(sys);
      throw deviceError(
        label,
        `not permitted to take fd ${fd} from pid ${pid} (pidfd_getfd: EPERM): borrowing needs ptrace rights ` +
          `over the holder: run as root, or as its user where Yama allows it` +
          (scope !== null && scope !== "0" ? ` (kernel.yama.ptrace_scope is ${scope} here: root only)` : ""),
      );
    }
    if (isErrno(e, "ESRCH")) throw deviceError(label, `pid ${pid} exited`);
    if (isErrno(e, "EBADF")) throw deviceError(label, `fd ${fd} of pid ${pid} was closed meanwhile`);
    if (isErrno(e, "ENOSYS")) throw deviceError(label, linux);
    if (e instanceof SysError) throw deviceError(label, `pidfd_getfd(${pid}, ${fd}) failed: ${e.code}`);
    throw e;
  } finally {
    try {
      sys.close(pidfd);
    } catch { /* nothing to do */ }
  }
}

/**
 * Borrows the device fd of process PID (`pid:PID`, or `pid:PID:FD` when it holds
 * several): a new fd for the same open file (pidfd_getfd), identified through sysfs,
 * as a VfioDevice with `access` "borrowed" and `holder` set. Nothing is done to the
 * device beyond read-only queries (VFIO_DEVICE_GET_INFO, config space reads); closing
 * the VfioDevice closes only our fd.
 *
 * `sys` must be the backend's syscall layer when the fd is a backend's device, the
 * SimKernel for a simulated one (systemFor picks it).
 * Throws VfioMigError: device (no such process, no permission, the fd is not a VFIO
 * device, Linux < 5.6) or usage (several device fds and no FD).
 */
export function borrowDevice(sys: Sys, spec: string): VfioDevice {
  const parsed = parseFdSpec(spec);
  if (parsed?.kind !== "pid") throw new VfioMigError(`${spec}: not a pid:PID spec`, "usage");
  const procfs = Procfs.fromEnv(sys);
  const { fds, chosen, command } = selectHolderFd(procfs, parsed, spec);
  const fd = takeFd(sys, parsed.pid, chosen.fd, spec);
  try {
    // The holder may have closed that fd and reused its number between our look and the
    // take: make sure we hold what we looked at.
    const now = new Procfs(sys, "/proc").target("self", fd);
    if (now !== null && now !== chosen.target) {
      throw deviceError(spec, `fd ${chosen.fd} of pid ${parsed.pid} changed while it was being taken; try again`);
    }
    const holder: DeviceHolder = { pid: parsed.pid, fd: chosen.fd, command };
    return fromFd(sys, fd, spec, chosen, { access: "borrowed", holder, peerFds: fds });
  } catch (e) {
    try {
      sys.close(fd);
    } catch { /* already failing */ }
    throw e;
  }
}

export interface OpenFdOptions {
  /** The name errors and summaries use (default `fd:N`). */
  label?: string;
  /**
   * The sysfs name of the device (PCI address or mdev UUID), when the caller knows it:
   * used only when it is one of the candidates sysfs allows (default: the
   * VFIO_MIG_DEVICE_NAME that `execWithDeviceFd` sets, when VFIO_MIG_DEVICE_FD is `fd`).
   */
  name?: string;
}

/**
 * Opens a device from an fd this process holds (inherited across exec, or opened by
 * the caller): a group-path device fd, a cdev fd (bound; or not yet bound, which is then
 * bound to a new iommufd here, as `exec 7<>/dev/vfio/devices/vfio0` leaves it), or a
 * backend's device fd (a simulated device's: then `sys` must be the SimKernel). The VfioDevice owns `fd`:
 * close() closes it (dup it first to keep a copy); `access` is "inherited", and
 * `openedFresh` is true only when the bind here was the device's first open.
 *
 * Throws VfioMigError (device): fd not open, not a VFIO device fd, the device busy.
 */
export function openDeviceFd(sys: Sys, fd: number, opts: OpenFdOptions = {}): VfioDevice {
  const label = opts.label ?? `fd:${fd}`;
  const self = new Procfs(sys, "/proc");
  const target = self.target("self", fd);
  if (target === null) {
    throw deviceError(
      label,
      `fd ${fd} is not open in this process (a shell hands one down with 'CMD ${fd}<>FILE'; a program ` +
        `must clear FD_CLOEXEC)`,
    );
  }
  const f = self.classify(fd, target);
  if (!f || !isDeviceFd(f)) {
    throw deviceError(label, `fd ${fd} is ${f ? describeFd(f) : target}, not a VFIO device`);
  }
  let name = opts.name;
  if (name === undefined && sys.getenv("VFIO_MIG_DEVICE_FD") === String(fd)) {
    name = sys.getenv("VFIO_MIG_DEVICE_NAME") || undefined;
  }
  const peers = (() => {
    try {
      return self.vfioFds(sys.getpid());
    } catch {
      return [];
    }
  })();
  return fromFd(sys, fd, label, f, { access: "inherited", holder: null, peerFds: peers, name });
}

interface FromFd {
  access: "borrowed" | "inherited";
  holder: DeviceHolder | null;
  /** The other VFIO fds of the process the fd came from (for its groups). */
  peerFds: VfioFd[];
  name?: string;
}

function fromFd(sys: Sys, fd: number, label: string, f: VfioFd, o: FromFd): VfioDevice {
  if (f.kind === "backend") {
    const backend = registeredBackends().find((b) => b.name === f.backend)!;
    const ops = backendOps(backend, label);
    if (!ops.serves(sys)) {
      throw new VfioMigError(
        `${label}: fd ${fd} is a ${backend.name} device: it needs that backend's syscall layer (use systemFor)`,
        "usage",
      );
    }
    if (o.access === "inherited" && ops.deviceOf(sys, fd) === null) {
      throw deviceError(label, `fd ${fd} (${f.target}) is not a ${backend.name} device`);
    }
    ops.adopt(sys, fd);
    const { info, reset } = ops.facts(sys, f.dir);
    const d = new VfioDevice(sys, fd, label, info, [], o.access, {
      path: backend.name,
      holder: o.holder,
      reset,
      openedFresh: false,
    });
    return withIdentity(d);
  }
  const sysfs = Sysfs.fromEnv(sys);
  const extra: number[] = [];
  let openedFresh = false;
  let flags = deviceFlags(sys, fd);
  if (flags === "unbound") {
    if (f.kind !== "cdev" || o.access === "borrowed") {
      throw deviceError(
        label,
        o.holder
          ? `fd ${o.holder.fd} of pid ${o.holder.pid} is a device cdev its holder has not bound to an iommufd: ` +
            `the device is not open there`
          : `fd ${fd} does not answer VFIO_DEVICE_GET_INFO (EINVAL)`,
      );
    }
    const dev = sysfs.findByCdev(f.node);
    extra.push(bindIommufd(sys, fd, label, f.node, dev?.group ?? null));
    openedFresh = true;
    flags = deviceFlags(sys, fd);
  }
  if (flags === "unbound") throw deviceError(label, `fd ${fd} does not answer VFIO_DEVICE_GET_INFO (EINVAL)`);
  const probe = new VfioDevice(sys, fd, label, blankInfo(label), [], o.access);
  const config = probe.readConfig();
  const found = identify(sysfs, f, o.peerFds, config, o.name);
  const reset = resetOf(sysfs, found, flags);
  const d = new VfioDevice(sys, fd, label, infoFrom(found, label), extra, o.access, {
    path: f.kind === "cdev" ? "cdev" : "group",
    holder: o.holder,
    reset,
    openedFresh,
    candidates: found.dev ? [] : found.candidates.map((c) => c.name),
  });
  if (config) d.info.pci = pciIdentityFromConfig(config);
  return d;
}

/** VFIO_DEVICE_GET_INFO flags; "unbound" for a cdev fd not bound yet (EINVAL: access not granted). */
function deviceFlags(sys: Sys, fd: number): number | "unbound" {
  const probe = new VfioDevice(sys, fd, "", blankInfo(""), [], "inherited");
  try {
    return probe.deviceInfo().flags;
  } catch (e) {
    if (isErrno(e, "EINVAL")) return "unbound";
    throw e;
  }
}

function blankInfo(name: string): DeviceIdentityInfo {
  return { kind: "pci", name, driver: null, mdevType: null, pci: null };
}

interface Identified {
  /** The device, when exactly one candidate is left. */
  dev: SysfsDevice | null;
  /** Every candidate left (one when `dev` is set). */
  candidates: SysfsDevice[];
}

/**
 * Which sysfs device an fd is: the cdev's own device; else the members of the groups the
 * same process holds (all vfio devices when it holds none), filtered by PCI ids read
 * through the fd, then by the caller's name when it is among them.
 */
export function identify(
  sysfs: Sysfs,
  f: VfioFd,
  peerFds: VfioFd[],
  config: Uint8Array | null,
  name?: string,
): Identified {
  if (f.kind === "cdev") {
    const dev = sysfs.findByCdev(f.node);
    return { dev, candidates: dev ? [dev] : [] };
  }
  const groups = [...new Set(peerFds.flatMap((p) => p.kind === "group" ? [p.group] : []))];
  let pool: SysfsDevice[] = groups.length
    ? groups.flatMap((g) => sysfs.groupMembers(g).map((m) => sysfs.find(m.name) ?? null))
      .filter((d): d is SysfsDevice => d !== null)
    : sysfs.vfioDevices();
  pool = pool.filter((d) => d.kind === "mdev" || (d.driver !== null && isVfioDriver(d.driver)));
  if (config && config.length >= 4) {
    const id = pciIdentityFromConfig(config);
    pool = pool.filter((d) => {
      const ids = sysfs.pciIds(d);
      if (!ids) return true; // an mdev: sysfs has no ids to compare
      return ids.vendor === id.vendor && ids.device === id.device &&
        (ids.subsystemVendor === null || config.length < 0x30 || ids.subsystemVendor === id.subsystemVendor) &&
        (ids.subsystemDevice === null || config.length < 0x30 || ids.subsystemDevice === id.subsystemDevice);
    });
  }
  if (name !== undefined) {
    const named = pool.filter((d) => d.name === name.toLowerCase());
    if (named.length === 1) return { dev: named[0], candidates: named };
  }
  return { dev: pool.length === 1 ? pool[0] : null, candidates: pool };
}

/** The candidates' common kind, driver and mdev type (null fields where they differ). */
function common(c: SysfsDevice[]): { kind: "pci" | "mdev"; driver: string | null; mdevType: string | null } | null {
  if (c.length === 0) return null;
  const same = <K extends keyof SysfsDevice>(k: K) => c.every((d) => d[k] === c[0][k]) ? c[0][k] : null;
  const kind = same("kind");
  return kind === null ? null : { kind, driver: same("driver"), mdevType: same("mdevType") };
}

function infoFrom(found: Identified, label: string): DeviceIdentityInfo {
  if (found.dev) {
    return {
      kind: found.dev.kind,
      name: found.dev.name,
      driver: found.dev.driver,
      mdevType: found.dev.mdevType,
      pci: null,
    };
  }
  const c = common(found.candidates);
  return { kind: c?.kind ?? "pci", name: label, driver: c?.driver ?? null, mdevType: c?.mdevType ?? null, pci: null };
}

function resetOf(sysfs: Sysfs, found: Identified, flags: number): ResetBehaviour {
  if (found.dev) return realResetBehaviour(sysfs, found.dev, flags);
  const c = common(found.candidates);
  // Like candidates share a family: judge by one of them (the flags say whether its reset works).
  return realResetBehaviour(sysfs, c ? found.candidates[0] : null, c ? flags : null);
}

/**
 * The backend whose device a pid:/fd: spec's fd is (so systemFor must give that
 * backend's syscall layer), or null: a host device, or it cannot tell (the open then
 * says why). No side effects; needs only the backends' descriptors.
 */
export function fdSpecBackend(host: Sys, spec: FdSpec): string | null {
  try {
    if (spec.kind === "pid") {
      const f = selectHolderFd(Procfs.fromEnv(host), spec, "").chosen;
      return f.kind === "backend" ? f.backend : null;
    }
    const self = new Procfs(host, "/proc");
    const target = self.target("self", spec.fd);
    const f = target === null ? null : self.classify(spec.fd, target);
    return f?.kind === "backend" ? f.backend : null;
  } catch {
    return null;
  }
}
