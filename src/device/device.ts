// An open VFIO device fd, however it was reached: opened here (group/container, iommufd
// cdev, simulated), borrowed from the process that holds it (pidfd_getfd), or
// inherited from the process that started us. open.ts and borrow.ts make them.

import type { Sys } from "../../ffi/sys.ts";
import { decode, encode, IOCTL, PCI_REGION, STRUCTS } from "../../ffi/vfio_uapi.ts";
import { VfioMigError } from "../errors.ts";
import { findRegion } from "../vfio/regions.ts";
import { MigrationV2 } from "../vfio/v2.ts";
import { type PciIdentity, pciIdentityFromConfig } from "../pci/identity.ts";
import { type DeviceFamily, type ResetBehaviour, UNKNOWN_RESET } from "./family.ts";

export { type PciIdentity, pciIdentityFromConfig };

/**
 * A device backend's name (src/device/backend.ts): "sim" for the simulator. A backend's
 * devices report it as their `kind`, `access` and `path`.
 */
export type BackendName = string;

export interface DeviceIdentityInfo {
  /** How the device was reached: pci, mdev, or a backend's name (sim). */
  kind: "pci" | "mdev" | BackendName;
  /** The sysfs name (PCI address, mdev UUID), the backend's folder, or the spec when unknown. */
  name: string;
  driver: string | null;
  mdevType: string | null;
  pci: PciIdentity | null;
  /** The backend's model, for a backend's devices (the simulator's). */
  model?: string;
}

/**
 * How this process got the device fd:
 * - `group`, `cdev`, a backend's name (`sim`): opened here (VFIO_GROUP_GET_DEVICE_FD on a
 *   group in a new container; BIND_IOMMUFD on /dev/vfio/devices/vfioN; a backend's device);
 * - `borrowed`: duplicated from the process holding it (pidfd_getfd), `holder` says which;
 * - `inherited`: an fd this process was started with (`--device fd:N`).
 * A borrowed or inherited fd is a second reference to the same open file: closing it
 * releases nothing (the device is closed when its last reference goes).
 */
export type DeviceAccess = "group" | "cdev" | "borrowed" | "inherited" | BackendName;

/** The process a borrowed fd was taken from. */
export interface DeviceHolder {
  pid: number;
  /** The fd's number in the holder. */
  fd: number;
  /** /proc/PID/comm (at most 15 characters), null when unknown. */
  command: string | null;
}

export interface VfioDeviceOptions {
  /** How the device file was opened, by us or by the holder: group path, cdev, or a backend's name. */
  path?: "group" | "cdev" | BackendName;
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

/** An open device fd and everything needed to drive its migration. */
export class VfioDevice {
  readonly migration: MigrationV2;
  /** group, cdev or a backend's name (sim): the way the device file was opened (here, or by the holder). */
  readonly path: "group" | "cdev" | BackendName;
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
    this.openedFresh = opts.openedFresh ?? (access !== "borrowed" && access !== "inherited");
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

  /**
   * Reads the PCI config space (at most 4096 bytes) through the VFIO config region
   * (VFIO_PCI_CONFIG_REGION_INDEX, region info from src/vfio/regions.ts); null when the
   * device has no config region (EINVAL, ENOTTY) or one shorter than 0x30 bytes. Other
   * errors are thrown (SysError): a save must not silently drop the identity.
   */
  readConfig(): Uint8Array | null {
    const r = findRegion(this.sys, this.fd, PCI_REGION.CONFIG);
    if (!r || r.size < 0x30) return null;
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

/** Reads the device's PCI identity from its config region into `d.info.pci`. */
export function withIdentity(d: VfioDevice): VfioDevice {
  const cfg = d.readConfig();
  if (cfg) d.info.pci = pciIdentityFromConfig(cfg);
  return d;
}

export function deviceError(spec: string, what: string): VfioMigError {
  return new VfioMigError(`${spec}: ${what}`, "device");
}
