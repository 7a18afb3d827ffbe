// Opening a VFIO device: the legacy group/container path, the iommufd cdev path,
// and simulated devices ("sim:PATH"). Every failure becomes one clear line.

import { Errno, isErrno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import {
  decode,
  encode,
  GROUP_FLAGS,
  IOCTL,
  IOMMU_TYPE,
  PCI_REGION,
  STRUCTS,
  VFIO_API_VERSION,
} from "../../ffi/vfio_uapi.ts";
import { VfioMigError } from "../errors.ts";
import { MigrationV2 } from "../migration/v2.ts";
import { SimKernel } from "../sim/kernel.ts";
import { SimStore } from "../sim/store.ts";
import { modelInfo } from "../sim/models.ts";
import { CDEV, isVfioDriver, PCI_ADDR, Sysfs, type SysfsDevice, UUID } from "./sysfs.ts";

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
  name: string;
  driver: string | null;
  mdevType: string | null;
  pci: PciIdentity | null;
  /** Simulated model, for sim devices. */
  model?: string;
}

/** An open device fd and everything needed to drive its migration. */
export class VfioDevice {
  readonly migration: MigrationV2;
  #fds: number[];
  #closed = false;

  constructor(
    readonly sys: Sys,
    readonly fd: number,
    readonly spec: string,
    readonly info: DeviceIdentityInfo,
    /** Container, group or iommufd fds to close after the device fd. */
    extraFds: number[],
    readonly access: "group" | "cdev" | "sim",
  ) {
    this.#fds = extraFds;
    this.migration = new MigrationV2(sys, fd, spec);
  }

  get label(): string {
    return this.spec;
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

/** The syscall layer for a set of device specs: the simulator when any is simulated. */
export function systemFor(specs: string[]): Sys {
  const host = libc();
  return specs.some((s) => s.startsWith("sim:")) ? SimKernel.fromEnv(host) : host;
}

function deviceError(spec: string, what: string): VfioMigError {
  return new VfioMigError(`${spec}: ${what}`, "device");
}

function openOrExplain(sys: Sys, path: string, spec: string, flags = O.RDWR | O.CLOEXEC): number {
  try {
    return sys.open(path, flags);
  } catch (e) {
    if (isErrno(e, "EACCES") || isErrno(e, "EPERM")) {
      throw deviceError(spec, `permission denied opening ${path}: run as root or give your user access to it`);
    }
    if (isErrno(e, "EBUSY")) {
      throw deviceError(spec, `${path} is busy: another process (a VM, or another vfio-mig) has it open`);
    }
    if (isErrno(e, "ENOENT")) throw deviceError(spec, `${path} does not exist (is the vfio module loaded?)`);
    throw e;
  }
}

/**
 * Opens a device from a spec: sim:PATH, PCI address, mdev UUID, sysfs path or cdev node.
 * Without `sys`, the syscall layer the spec needs is chosen (systemFor). Close it with
 * close(). Throws VfioMigError: usage (2) for a spec that names no device, device (3)
 * when it is missing, busy, not bound to vfio or not permitted.
 */
export function openDevice(spec: string): VfioDevice;
export function openDevice(sys: Sys, spec: string): VfioDevice;
export function openDevice(a: Sys | string, b?: string): VfioDevice {
  const sys = typeof a === "string" ? systemFor([a]) : a;
  const spec = typeof a === "string" ? a : b!;
  if (spec.startsWith("sim:")) return openSimDevice(sys, spec);
  const sysfs = Sysfs.fromEnv(sys);
  const cdev = CDEV.exec(spec);
  const dev = cdev ? sysfs.findByCdev(cdev[1]) : sysfs.find(spec);
  if (cdev) return openCdev(sys, spec, dev);
  if (!dev) {
    if (!PCI_ADDR.test(spec) && !UUID.test(spec) && !spec.startsWith("/sys/")) {
      throw new VfioMigError(
        `${spec}: not a device name: give a PCI address (0000:3b:00.1), an mdev UUID, a sysfs path, ` +
          `/dev/vfio/devices/vfioN or sim:PATH`,
        "usage",
      );
    }
    throw deviceError(spec, "no such device");
  }
  return openGroup(sys, spec, dev, sysfs);
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

function withIdentity(d: VfioDevice): VfioDevice {
  const cfg = d.readConfig();
  if (cfg) d.info.pci = pciIdentityFromConfig(cfg);
  return d;
}

function openGroup(sys: Sys, spec: string, dev: SysfsDevice, sysfs: Sysfs): VfioDevice {
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
  try {
    const container = openOrExplain(sys, "/dev/vfio/vfio", spec);
    fds.push(container);
    const api = sys.ioctl(container, IOCTL.GET_API_VERSION, null);
    if (api !== VFIO_API_VERSION) throw deviceError(spec, `unknown VFIO API version ${api}`);
    const groupPath = `/dev/vfio/${dev.group}`;
    const group = openOrExplain(sys, groupPath, spec);
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
    sys.ioctl(container, IOCTL.SET_IOMMU, type);
    const name = new TextEncoder().encode(dev.name + "\0");
    let fd: number;
    try {
      fd = sys.ioctl(group, IOCTL.GROUP_GET_DEVICE_FD, name);
    } catch (e) {
      if (isErrno(e, "EBUSY")) throw deviceError(spec, "is busy: another process (a VM?) has it open");
      throw e;
    }
    fds.push(fd); // closed with the others if reading the identity fails
    const d = new VfioDevice(sys, fd, spec, infoOf(dev, spec), [group, container], "group");
    return withIdentity(d);
  } catch (e) {
    cleanup();
    if (e instanceof SysError && e.errno === Errno.EBUSY) {
      throw deviceError(spec, "is busy: another process (a VM?) has its group or device open");
    }
    throw e;
  }
}

function openCdev(sys: Sys, spec: string, dev: SysfsDevice | null): VfioDevice {
  const fd = openOrExplain(sys, spec, spec);
  let iommufd = -1;
  try {
    iommufd = openOrExplain(sys, "/dev/iommu", spec);
    const bind = encode(STRUCTS.vfio_device_bind_iommufd, { argsz: 24, flags: 0, iommufd });
    try {
      sys.ioctl(fd, IOCTL.DEVICE_BIND_IOMMUFD, bind);
    } catch (e) {
      if (isErrno(e, "EBUSY")) throw deviceError(spec, "is busy: another process (a VM?) has it bound");
      throw e;
    }
    const alloc = encode(STRUCTS.iommu_ioas_alloc, { size: 12, flags: 0 });
    sys.ioctl(iommufd, IOCTL.IOMMU_IOAS_ALLOC, alloc);
    const ioas = decode(STRUCTS.iommu_ioas_alloc, alloc).out_ioas_id;
    sys.ioctl(
      fd,
      IOCTL.DEVICE_ATTACH_IOMMUFD_PT,
      encode(STRUCTS.vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: ioas }),
    );
    return withIdentity(new VfioDevice(sys, fd, spec, infoOf(dev, spec), [iommufd], "cdev"));
  } catch (e) {
    if (iommufd >= 0) sys.close(iommufd);
    sys.close(fd);
    throw e;
  }
}

function openSimDevice(sys: Sys, spec: string): VfioDevice {
  const path = spec.slice(4);
  if (!(sys instanceof SimKernel)) {
    throw new VfioMigError(`${spec}: simulated devices need the simulated kernel (use systemFor)`, "usage");
  }
  const store = new SimStore(sys, path);
  const meta = store.readMeta(); // clear error when it does not exist
  let fd: number;
  try {
    fd = sys.open(spec, O.RDWR | O.CLOEXEC);
  } catch (e) {
    if (isErrno(e, "EBUSY")) throw deviceError(spec, "is busy: another process has this simulated device open");
    throw e;
  }
  const info = modelInfo(meta.model);
  const d = new VfioDevice(
    sys,
    fd,
    spec,
    {
      kind: "sim",
      name: path,
      driver: info.driver,
      mdevType: info.mdevType ?? null,
      pci: null,
      model: meta.model,
    },
    [],
    "sim",
  );
  try {
    return withIdentity(d);
  } catch (e) {
    try {
      sys.close(fd);
    } catch { /* already failing */ }
    throw e;
  }
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
