// An open VFIO device fd, however it was reached: opened here (group/container, iommufd
// cdev, simulated), borrowed from the process that holds it (pidfd_getfd), or
// inherited from the process that started us. open.ts and borrow.ts make them.

import { isErrno } from "../../ffi/errno.ts";
import type { Sys } from "../../ffi/sys.ts";
import { decode, DEVICE_FLAGS, encode, IOCTL, PCI_REGION, REGION_FLAGS, STRUCTS } from "../../ffi/vfio_uapi.ts";
import { VfioMigError } from "../errors.ts";
import { MigrationV2 } from "../migration/v2.ts";
import type { DeviceFamily, ResetBehaviour } from "./family.ts";

export interface PciIdentity {
  vendor: number;
  device: number;
  subsystemVendor: number;
  subsystemDevice: number;
  classCode: number;
  revision: number;
}

export interface DeviceIdentityInfo {
  /** How the device was reached: pci, mdev, sim. */
  kind: "pci" | "mdev" | "sim";
  /** The sysfs name (PCI address, mdev UUID), the sim folder, or the spec when unknown. */
  name: string;
  driver: string | null;
  mdevType: string | null;
  pci: PciIdentity | null;
  /**
   * Why `pci` is null on a device that says it is PCI (VFIO_DEVICE_FLAGS_PCI) but whose
   * config region cannot be described or read: a driver defect (pciConfigProblem).
   */
  pciUnknown?: string;
  /** Simulated model, for sim devices. */
  model?: string;
}

/**
 * How this process got the device fd:
 * - `group`, `cdev`, `sim`: opened here (VFIO_GROUP_GET_DEVICE_FD on a group in a new
 *   container; BIND_IOMMUFD on /dev/vfio/devices/vfioN; a simulated device);
 * - `borrowed`: duplicated from the process holding it (pidfd_getfd), `holder` says which;
 * - `inherited`: an fd this process was started with (`--device fd:N`).
 * A borrowed or inherited fd is a second reference to the same open file: closing it
 * releases nothing (the device is closed when its last reference goes).
 */
export type DeviceAccess = "group" | "cdev" | "sim" | "borrowed" | "inherited";

/** The process a borrowed fd was taken from. */
export interface DeviceHolder {
  pid: number;
  /** The fd's number in the holder. */
  fd: number;
  /** /proc/PID/comm (at most 15 characters), null when unknown. */
  command: string | null;
}

export interface VfioDeviceOptions {
  /** How the device file was opened, by us or by the holder: group path, cdev, or simulated. */
  path?: "group" | "cdev" | "sim";
  holder?: DeviceHolder | null;
  /** Whether the device keeps its state across a close (family.ts); default: unknown family. */
  reset?: ResetBehaviour;
  /** This process performed the device's first open (so vfio-pci just reset it). */
  openedFresh?: boolean;
  /**
   * The sysfs names the fd may be, when sysfs could not tell which (a borrowed or
   * inherited group-path fd among several like devices); empty when known.
   */
  candidates?: string[];
}

const UNKNOWN_RESET: ResetBehaviour = {
  family: "unknown",
  resetsOnClose: true,
  reason: "unknown driver family: assume vfio-pci, which resets the function",
};

/** An open device fd and everything needed to drive its migration. */
export class VfioDevice {
  readonly migration: MigrationV2;
  /** group, cdev or sim: the way the device file was opened (here, or by the holder). */
  readonly path: "group" | "cdev" | "sim";
  readonly holder: DeviceHolder | null;
  readonly reset: ResetBehaviour;
  /** This process performed the device's first open (false when borrowed or inherited). */
  readonly openedFresh: boolean;
  readonly candidates: string[];
  #fds: number[];
  #closed = false;

  constructor(
    readonly sys: Sys,
    readonly fd: number,
    readonly spec: string,
    readonly info: DeviceIdentityInfo,
    /** Container, group or iommufd fds to close after the device fd. */
    extraFds: number[],
    readonly access: DeviceAccess,
    opts: VfioDeviceOptions = {},
  ) {
    this.#fds = extraFds;
    this.migration = new MigrationV2(sys, fd, spec);
    this.path = opts.path ?? (access === "borrowed" || access === "inherited" ? "group" : access);
    this.holder = opts.holder ?? null;
    this.reset = opts.reset ?? UNKNOWN_RESET;
    this.openedFresh = opts.openedFresh ?? (access === "group" || access === "cdev" || access === "sim");
    this.candidates = opts.candidates ?? [];
  }

  get label(): string {
    return this.spec;
  }

  get family(): DeviceFamily {
    return this.reset.family;
  }

  /**
   * The device is reset at its last close (vfio-pci-core with a working reset, or a
   * simulated pci-family device), so its state does not survive the close. Whether
   * THIS close is the last: see `openedFresh` and `access`.
   */
  get resetsOnClose(): boolean {
    return this.reset.resetsOnClose;
  }

  /** Reads the PCI config space through the VFIO config region. */
  readConfig(): Uint8Array | null {
    const ri = encode(STRUCTS.vfio_region_info, { argsz: 32, index: PCI_REGION.CONFIG });
    try {
      this.sys.ioctl(this.fd, IOCTL.DEVICE_GET_REGION_INFO, ri);
    } catch (e) {
      // No config region (EINVAL: no such index; ENOTTY). Any other error is a failure,
      // not an absence: a save must not silently drop the identity or config space.
      if (isErrno(e, "EINVAL") || isErrno(e, "ENOTTY")) return null;
      throw e;
    }
    const r = decode(STRUCTS.vfio_region_info, ri);
    if (r.size < 0x30) return null;
    const buf = new Uint8Array(Math.min(r.size, 4096));
    const n = this.sys.pread(this.fd, buf, r.offset);
    return buf.subarray(0, n);
  }

  deviceInfo(): { flags: number; numRegions: number; numIrqs: number } {
    const b = encode(STRUCTS.vfio_device_info, { argsz: 24 });
    this.sys.ioctl(this.fd, IOCTL.DEVICE_GET_INFO, b);
    const d = decode(STRUCTS.vfio_device_info, b);
    return { flags: d.flags, numRegions: d.num_regions, numIrqs: d.num_irqs };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // Best effort: Linux releases an fd even when close() fails, there is nothing to
    // retry, and an error here must not turn a completed save or load into a failure.
    for (const fd of [this.fd, ...this.#fds]) {
      try {
        this.sys.close(fd);
      } catch { /* released anyway */ }
    }
  }
}

export function pciIdentityFromConfig(cfg: Uint8Array): PciIdentity {
  const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  return {
    vendor: v.getUint16(0, true),
    device: v.getUint16(2, true),
    revision: v.getUint8(8),
    classCode: v.getUint8(9) | (v.getUint16(10, true) << 8),
    subsystemVendor: cfg.length >= 0x30 ? v.getUint16(0x2c, true) : 0,
    subsystemDevice: cfg.length >= 0x30 ? v.getUint16(0x2e, true) : 0,
  };
}

/**
 * Why a device that reports VFIO_DEVICE_FLAGS_PCI has no readable PCI config region, or
 * null (not PCI, or the region is fine). A vfio-pci device always has one (index 7,
 * VFIO_PCI_CONFIG_REGION_INDEX): its absence is a driver defect, e.g. the xe variant
 * driver shipped without get_region_info_caps, so VFIO_DEVICE_GET_REGION_INFO answered
 * EINVAL for every region (drivers/vfio/pci/xe, fixed Dec 2025). Without it a save has
 * no PCI identity and no config section. Never throws.
 */
export function pciConfigProblem(d: VfioDevice): string | null {
  try {
    if (!(d.deviceInfo().flags & DEVICE_FLAGS.PCI)) return null;
  } catch {
    return null; // GET_INFO itself fails: not the question here
  }
  const ri = encode(STRUCTS.vfio_region_info, { argsz: 32, index: PCI_REGION.CONFIG });
  try {
    d.sys.ioctl(d.fd, IOCTL.DEVICE_GET_REGION_INFO, ri);
  } catch (e) {
    const code = e instanceof Error && "code" in e ? String((e as { code: unknown }).code) : String(e);
    return `the device reports VFIO_DEVICE_FLAGS_PCI but VFIO_DEVICE_GET_REGION_INFO of its PCI config region ` +
      `(index 7) fails with ${code}: a driver defect (the xe variant driver shipped so, without ` +
      `get_region_info_caps)`;
  }
  const r = decode(STRUCTS.vfio_region_info, ri);
  if (!(r.flags & REGION_FLAGS.READ)) {
    return `the device reports VFIO_DEVICE_FLAGS_PCI but its PCI config region (index 7) is not readable: a driver defect`;
  }
  if (r.size < 0x30) {
    return `the device reports VFIO_DEVICE_FLAGS_PCI but its PCI config region (index 7) is ${r.size} bytes, ` +
      `too small for a PCI header: a driver defect`;
  }
  return null;
}

/**
 * Reads the device's PCI identity from its config region into `d.info.pci`; when a PCI
 * device has none, `d.info.pciUnknown` says why.
 */
export function withIdentity(d: VfioDevice): VfioDevice {
  const cfg = d.readConfig();
  if (cfg) d.info.pci = pciIdentityFromConfig(cfg);
  else {
    const why = pciConfigProblem(d);
    if (why) d.info.pciUnknown = why;
  }
  return d;
}

export function deviceError(spec: string, what: string): VfioMigError {
  return new VfioMigError(`${spec}: ${what}`, "device");
}
