// Opening a VFIO device: the legacy group/container path, the iommufd cdev path, a
// registered backend's devices ("sim:PATH": backend.ts), and fds another process holds
// (pid:PID[:FD], borrowed) or handed down (fd:N, inherited: borrow.ts). Every failure becomes one
// clear line; a device another process has open names that process.

import { Errno, isErrno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import { decode, encode, GROUP_FLAGS, IOCTL, IOMMU_TYPE, STRUCTS, VFIO_API_VERSION } from "../../ffi/vfio_uapi.ts";
import { VfioMigError } from "../errors.ts";
import {
  backendOfSpec,
  backendOps,
  backendServing,
  type DeviceBackend,
  loadBackend,
  registeredBackends,
} from "./backend.ts";
import { borrowDevice, fdSpecBackend, openDeviceFd, parseFdSpec } from "./borrow.ts";
import { busyError } from "./busy.ts";
import { deviceError, type DeviceIdentityInfo, VfioDevice, withIdentity } from "./device.ts";
import { realResetBehaviour } from "./family.ts";
import { bindIommufd, type BindToken, explainOpen, openOrExplain } from "./iommufd.ts";
import { CDEV, isVfioDriver, PCI_ADDR, Sysfs, type SysfsDevice, UUID } from "./sysfs.ts";
import {
  bindTokenRefused,
  groupDeviceName,
  parseVfToken,
  tokenRefused,
  vfTokenBytes,
  vfTokenTarget,
} from "./vf_token.ts";

export { type BackendOps, type DeviceBackend, loadBackend, registerBackend, registeredBackends } from "./backend.ts";
export {
  type BackendName,
  type DeviceAccess,
  type DeviceHolder,
  type DeviceIdentityInfo,
  pciConfigProblem,
  type PciIdentity,
  pciIdentityFromConfig,
  VfioDevice,
  type VfioDeviceOptions,
} from "./device.ts";
export { type BusyHolder, DeviceBusyError } from "./busy.ts";
export { borrowDevice, type FdSpec, openDeviceFd, type OpenFdOptions, parseFdSpec } from "./borrow.ts";
export { DEVICE_FD_ENV, DEVICE_NAME_ENV, type ExecOptions, execWithDeviceFd } from "./exec.ts";
export {
  type DeviceFamily,
  type DeviceOperation,
  familyName,
  freshOpenWarnings,
  type ResetBehaviour,
  survivesCloseText,
} from "./family.ts";

/** The backend a spec names: by its prefix (sim:PATH), or a pid:/fd: spec whose fd is a backend's device. */
function backendOf(host: Sys, spec: string): DeviceBackend | null {
  const byPrefix = backendOfSpec(spec);
  if (byPrefix) return byPrefix;
  try {
    const fdSpec = parseFdSpec(spec);
    const name = fdSpec === null ? null : fdSpecBackend(host, fdSpec);
    return name === null ? null : registeredBackends().find((b) => b.name === name) ?? null;
  } catch {
    return null; // malformed: openDevice says so
  }
}

/**
 * Loads the backends `specs` need (src/device/backend.ts): the one a `sim:PATH` names,
 * or whose device a pid:/fd: spec's fd is. Host device specs load nothing. Call it
 * before `systemFor` where a backend was registered without its operations (cli.ts).
 */
export async function loadBackendsFor(specs: string[]): Promise<void> {
  const host = libc();
  for (const s of specs) {
    const b = backendOf(host, s);
    if (b) await loadBackend(b);
  }
}

/**
 * The syscall layer for a set of device specs: a backend's when any spec is its device
 * (sim:PATH, or a pid:/fd: spec whose fd is a simulated device's: the SimKernel), else
 * libc. Throws VfioMigError (usage) when that backend is registered but not loaded
 * (`loadBackendsFor` loads it).
 */
export function systemFor(specs: string[]): Sys {
  const host = libc();
  for (const s of specs) {
    const b = backendOf(host, s);
    if (b) return backendOps(b, s).system(host);
  }
  return host;
}

export interface OpenOptions {
  /** Where to look devices up by name (default: $VFIO_MIG_SYSFS, else /sys): the inventory's root. */
  sysfs?: Sysfs;
  /**
   * The SR-IOV VF token, a UUID (vfio-pci's trust token between a PF's user and its VFs'
   * users: drivers/vfio/pci/vfio_pci_core.c vfio_pci_core_match, and since Linux 6.17
   * vfio_pci_core_match_token_uuid). Passed only where the kernel takes one, decided from
   * sysfs (vf_token.ts vfTokenTarget): a VF whose PF is bound to a vfio driver, or a PF with
   * the SR-IOV capability bound to one (opening such a PF with a token sets its token while
   * none of its VFs is in use). Any other device gets none, as the kernel answers a token
   * there with EINVAL; so one token may be given for several devices. The group path puts
   * it in VFIO_GROUP_GET_DEVICE_FD's name ("0000:04:10.0 vf_token=UUID"); the cdev path
   * (/dev/vfio/devices/vfioN) in VFIO_DEVICE_BIND_IOMMUFD (VFIO_DEVICE_BIND_FLAG_TOKEN:
   * Linux 6.17; older kernels refuse it, exit 3 naming the group path). Refused (usage,
   * exit 2) for a malformed UUID and for sim:, pid: and fd: specs (nothing is opened by name
   * there). The token is never printed.
   */
  vfToken?: string;
}

/**
 * Opens a device from a spec: sim:PATH, a PCI address, an mdev UUID, a sysfs path, a
 * cdev node (/dev/vfio/devices/vfioN), pid:PID[:FD] (borrow the fd process PID holds:
 * borrow.ts) or fd:N (an fd this process inherited). Without `sys`, the syscall layer
 * the spec needs is chosen (systemFor). Close it with close().
 *
 * A device another process has open fails with DeviceBusyError (exit 3), which names
 * the holder and how to borrow from it. Other failures are VfioMigError with exit code
 * 2 (usage: not a device name; a malformed `opts.vfToken`, or one for a sim:/pid:/fd:
 * spec) or 3 (device: not found, not bound to vfio, group not viable, no permission; the
 * kernel refusing the open for the VF token — EACCES: required or not the PF's, naming
 * the PF; EINVAL: the kernel's reason; a cdev open with a token before Linux 6.17:
 * vf_token.ts).
 */
export function openDevice(spec: string): VfioDevice;
export function openDevice(sys: Sys, spec: string, opts?: OpenOptions): VfioDevice;
export function openDevice(a: Sys | string, b?: string, opts: OpenOptions = {}): VfioDevice {
  const sys = typeof a === "string" ? systemFor([a]) : a;
  const spec = typeof a === "string" ? a : b!;
  const backend = backendOfSpec(spec);
  const vfToken = opts.vfToken === undefined ? null : parseVfToken(opts.vfToken);
  if (vfToken !== null && !opensByName(spec)) {
    throw new VfioMigError(
      `${spec}: --vf-token applies only to a device opened by name (a PCI address, sysfs path or ` +
        `/dev/vfio/devices/vfioN), not to a ${spec.slice(0, spec.indexOf(":") + 1)} device`,
      "usage",
    );
  }
  if (backend) {
    try {
      return openBackendDevice(sys, spec, backend);
    } catch (e) {
      // A device's files we may not open: a device problem (exit 3), as for a real node.
      const path = e instanceof SysError && /\((.*)\)/.exec(e.message.split(":")[0])?.[1];
      throw path && (isErrno(e, "EACCES") || isErrno(e, "EPERM")) ? explainOpen(e, path, spec) : e;
    }
  }
  const fdSpec = parseFdSpec(spec);
  if (fdSpec?.kind === "pid") return borrowDevice(sys, spec);
  if (fdSpec?.kind === "fd") return openDeviceFd(sys, fdSpec.fd, { label: spec });
  const sysfs = opts.sysfs ?? Sysfs.fromEnv(sys);
  const cdev = CDEV.exec(spec);
  const dev = cdev ? sysfs.findByCdev(cdev[1]) : sysfs.find(spec);
  if (cdev) return openCdev(sys, spec, dev, cdev[1], sysfs, vfToken);
  if (!dev) {
    if (!PCI_ADDR.test(spec) && !UUID.test(spec) && !spec.startsWith("/sys/")) {
      throw new VfioMigError(
        `${spec}: not a device name: give a PCI address (0000:3b:00.1), an mdev UUID, a sysfs path, ` +
          `/dev/vfio/devices/vfioN, ${
            registeredBackends().map((b) => `${b.prefix}PATH, `).join("")
          }pid:PID[:FD] or fd:N`,
        "usage",
      );
    }
    throw deviceError(spec, "no such device");
  }
  return openGroup(sys, spec, dev, sysfs, vfToken);
}

/**
 * Whether `spec` names a device the kernel opens by name (group or cdev path): not a
 * backend's (sim:PATH), and not pid:/fd: (an fd already open). A --vf-token means something
 * only for those.
 */
export function opensByName(spec: string): boolean {
  if (backendOfSpec(spec)) return false;
  try {
    return parseFdSpec(spec) === null;
  } catch {
    return false; // a malformed pid:/fd: spec
  }
}

function infoOf(dev: SysfsDevice | null, spec: string): DeviceIdentityInfo {
  return {
    kind: dev?.kind ?? "pci",
    name: dev?.name ?? spec,
    driver: dev?.driver ?? null,
    mdevType: dev?.mdevType ?? null,
    pci: null,
  };
}

/** VFIO_DEVICE_GET_INFO flags (for the reset family), or null when the device does not answer. */
function flagsOf(sys: Sys, fd: number): number | null {
  try {
    const b = encode(STRUCTS.vfio_device_info, { argsz: 24 });
    sys.ioctl(fd, IOCTL.DEVICE_GET_INFO, b);
    return decode(STRUCTS.vfio_device_info, b).flags;
  } catch {
    return null;
  }
}

/**
 * VFIO_SET_IOMMU's EPERM: vfio_iommu_type1 refuses a group when the IOMMU has no
 * interrupt remapping (drivers/vfio/vfio_iommu_type1.c, vfio_iommu_type1_attach_group,
 * "No interrupt remapping support"). Exit 3.
 */
function setIommuRefused(spec: string): VfioMigError {
  return deviceError(
    spec,
    "VFIO_SET_IOMMU: EPERM: the IOMMU has no interrupt remapping, so vfio_iommu_type1 refuses the group; " +
      "enable interrupt remapping (firmware, intremap=on), or load vfio_iommu_type1 with " +
      "allow_unsafe_interrupts=1 at your own risk (a device could then forge interrupts)",
  );
}

function openGroup(sys: Sys, spec: string, dev: SysfsDevice, sysfs: Sysfs, vfToken: string | null): VfioDevice {
  if (dev.kind === "pci" && (!dev.driver || !isVfioDriver(dev.driver))) {
    throw deviceError(
      spec,
      `not bound to a vfio driver (${dev.driver ? `driver is ${dev.driver}` : "no driver"}): ` +
        `bind it to vfio-pci or its variant driver first`,
    );
  }
  if (!dev.group) throw deviceError(spec, "has no IOMMU group (is the IOMMU enabled, or noiommu mode set?)");
  const fds: number[] = [];
  const cleanup = () => {
    for (const fd of fds.reverse()) {
      try {
        sys.close(fd);
      } catch { /* already failing */ }
    }
  };
  const busy = () => busyError(sys, spec, { group: dev.group, cdev: dev.cdev });
  try {
    const container = openOrExplain(sys, "/dev/vfio/vfio", spec);
    fds.push(container);
    const api = sys.ioctl(container, IOCTL.GET_API_VERSION, null);
    if (api !== VFIO_API_VERSION) throw deviceError(spec, `unknown VFIO API version ${api}`);
    const groupPath = `/dev/vfio/${dev.group}`;
    let group: number;
    try {
      group = sys.open(groupPath, O.RDWR | O.CLOEXEC);
    } catch (e) {
      // A group is open in one process at a time (drivers/vfio/group.c vfio_group_fops_open),
      // and not at all while a device of it is bound through its cdev.
      if (isErrno(e, "EBUSY")) throw busy();
      throw explainOpen(e, groupPath, spec);
    }
    fds.push(group);
    const st = encode(STRUCTS.vfio_group_status, { argsz: 8 });
    sys.ioctl(group, IOCTL.GROUP_GET_STATUS, st);
    if (!(decode(STRUCTS.vfio_group_status, st).flags & GROUP_FLAGS.VIABLE)) {
      const others = sysfs.groupMembers(dev.group).filter((m) => m.name !== dev.name)
        .map((m) => `${m.name} (${m.driver ?? "no driver"})`);
      throw deviceError(
        spec,
        `IOMMU group ${dev.group} is not viable: every device in it must be bound to vfio-pci or have no ` +
          `driver; the others are ${others.join(", ") || "unknown"}`,
      );
    }
    const cfd = new Int32Array([container]);
    sys.ioctl(group, IOCTL.GROUP_SET_CONTAINER, new Uint8Array(cfd.buffer));
    const type = sys.ioctl(container, IOCTL.CHECK_EXTENSION, IOMMU_TYPE.TYPE1v2) > 0
      ? IOMMU_TYPE.TYPE1v2
      : IOMMU_TYPE.TYPE1;
    try {
      sys.ioctl(container, IOCTL.SET_IOMMU, type);
    } catch (e) {
      // vfio_iommu_type1_attach_group: EPERM when the IOMMU has no interrupt remapping.
      if (isErrno(e, "EPERM")) throw setIommuRefused(spec);
      throw e;
    }
    const target = vfTokenTarget(sysfs, dev);
    const name = new TextEncoder().encode(groupDeviceName(dev, vfToken, target) + "\0");
    let fd: number;
    try {
      fd = sys.ioctl(group, IOCTL.GROUP_GET_DEVICE_FD, name);
    } catch (e) {
      if (isErrno(e, "EBUSY")) throw busy();
      const passed = vfToken !== null && target.takesToken;
      throw tokenRefused(e, spec, "VFIO_GROUP_GET_DEVICE_FD", target, passed) ?? e;
    } finally {
      name.fill(0); // the token's bytes, gone once the kernel has them
    }
    fds.push(fd); // closed with the others if reading the identity fails
    const flags = flagsOf(sys, fd);
    return withIdentity(
      new VfioDevice(sys, fd, spec, infoOf(dev, spec), [group, container], "group", {
        path: "group",
        reset: realResetBehaviour(sysfs, dev, flags),
        openedFresh: true,
      }),
    );
  } catch (e) {
    cleanup();
    if (e instanceof SysError && e.errno === Errno.EBUSY) throw busy();
    throw e;
  }
}

function openCdev(
  sys: Sys,
  spec: string,
  dev: SysfsDevice | null,
  node: string,
  sysfs: Sysfs,
  vfToken: string | null,
): VfioDevice {
  const fd = openOrExplain(sys, spec, spec);
  let iommufd = -1;
  // A device sysfs does not know gets the token as given: the kernel judges.
  const target = vfTokenTarget(sysfs, dev);
  const bytes = vfToken !== null && (target.takesToken || !dev) ? vfTokenBytes(vfToken) : null;
  const token: BindToken = {
    bytes,
    refused: (e) =>
      bytes && isErrno(e, "EINVAL")
        ? bindTokenRefused(sys, spec, target, dev?.name ?? null)
        : tokenRefused(e, spec, "VFIO_DEVICE_BIND_IOMMUFD", target, bytes !== null) ?? e,
  };
  try {
    iommufd = bindIommufd(sys, fd, spec, node, dev?.group ?? null, token);
    return withIdentity(
      new VfioDevice(sys, fd, spec, infoOf(dev, spec), [iommufd], "cdev", {
        path: "cdev",
        reset: realResetBehaviour(sysfs, dev, flagsOf(sys, fd)),
        openedFresh: true,
      }),
    );
  } catch (e) {
    if (iommufd >= 0) sys.close(iommufd);
    sys.close(fd);
    throw e;
  } finally {
    bytes?.fill(0);
  }
}

function openBackendDevice(sys: Sys, spec: string, backend: DeviceBackend): VfioDevice {
  const path = spec.slice(backend.prefix.length);
  const ops = backendOps(backend, spec);
  if (backendServing(sys)?.ops !== ops) {
    throw new VfioMigError(
      `${spec}: ${backend.name} devices need the ${backend.name} backend's kernel (use systemFor)`,
      "usage",
    );
  }
  const { info, reset } = ops.facts(sys, path); // clear error when it does not exist
  let fd: number;
  try {
    fd = sys.open(spec, O.RDWR | O.CLOEXEC);
  } catch (e) {
    if (isErrno(e, "EBUSY")) throw busyError(sys, spec, { backendDir: absolutePath(sys, path) });
    throw e;
  }
  const d = new VfioDevice(sys, fd, spec, info, [], backend.name, { path: backend.name, reset, openedFresh: true });
  try {
    return withIdentity(d);
  } catch (e) {
    try {
      sys.close(fd);
    } catch { /* already failing */ }
    throw e;
  }
}

/** `p` made absolute against our working directory (/proc/self/cwd), without "." parts. */
function absolutePath(sys: Sys, p: string): string {
  let full = p;
  if (!p.startsWith("/")) {
    try {
      full = `${sys.readlink("/proc/self/cwd")}/${p}`;
    } catch {
      return p;
    }
  }
  const parts: string[] = [];
  for (const part of full.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return "/" + parts.join("/");
}

/** The device to use when none is given: $VFIO_MIG_DEVICE, else the only migratable one. */
export function defaultDeviceSpec(sys: Sys): string {
  const env = sys.getenv("VFIO_MIG_DEVICE");
  if (env) return env;
  const sysfs = Sysfs.fromEnv(sys);
  const candidates = sysfs.vfioDevices();
  if (candidates.length === 0) {
    throw new VfioMigError(
      "no VFIO device found on this host: give --device (a PCI address, mdev UUID, " +
        "/dev/vfio/devices/vfioN or sim:PATH) or set VFIO_MIG_DEVICE",
      "usage",
    );
  }
  const migratable: string[] = [];
  for (const c of candidates) {
    try {
      const d = openDevice(sys, c.name);
      try {
        d.migration.migrationFlags();
        migratable.push(c.name);
      } finally {
        d.close();
      }
    } catch { /* busy, not migratable or not openable: not a candidate */ }
  }
  if (migratable.length === 1) return migratable[0];
  const list = candidates.map((c) => `${c.name} (${c.driver ?? "no driver"})`).join(", ");
  throw new VfioMigError(
    migratable.length === 0
      ? `no migration-capable VFIO device found among: ${list}; give --device`
      : `several migration-capable devices (${migratable.join(", ")}): choose one with --device`,
    "usage",
  );
}
