// What sysfs says about a device: its kind, driver, IOMMU group and cdev node.
// The sysfs root can be moved (VFIO_MIG_SYSFS) for tests with a fake tree.

import { isErrno, SysError } from "../../ffi/errno.ts";
import type { Sys } from "../../ffi/sys.ts";
import { readSmallFile } from "../io.ts";

// Domains are 4 hex digits, or 5+ behind a VMD controller (10000:00:01.0).
export const PCI_ADDR = /^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;
export const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
export const CDEV = /^\/dev\/vfio\/devices\/(vfio\d+)$/;

export interface SysfsDevice {
  kind: "pci" | "mdev";
  /** PCI address (0000:3b:00.1) or mdev UUID: the name GROUP_GET_DEVICE_FD takes. */
  name: string;
  path: string;
  driver: string | null;
  group: string | null;
  /** vfioN under vfio-dev/, when the kernel has VFIO_DEVICE_CDEV. */
  cdev: string | null;
  mdevType: string | null;
}

function basename(p: string): string {
  return p.slice(p.lastIndexOf("/") + 1);
}

/** A PCI function's ids as sysfs shows them (drivers/pci/pci-sysfs.c: vendor, device, …). */
export interface SysfsPciIds {
  vendor: number;
  device: number;
  subsystemVendor: number | null;
  subsystemDevice: number | null;
  /** 24-bit class code (class << 16 | subclass << 8 | prog-if). */
  classCode: number | null;
}

/** What sysfs says of a function's SR-IOV side (Sysfs.sriov). */
export interface SysfsSriov {
  /** For a VF: its PF's PCI address and the PF's driver (null: none bound). */
  pf: { name: string; driver: string | null } | null;
  /** For a PF (a function with the SR-IOV capability): how many VFs it can have. */
  totalVfs: number | null;
}

export class Sysfs {
  constructor(readonly sys: Sys, readonly root = "/sys") {}

  static fromEnv(sys: Sys): Sysfs {
    return new Sysfs(sys, sys.getenv("VFIO_MIG_SYSFS") || "/sys");
  }

  #link(path: string): string | null {
    try {
      return basename(this.sys.readlink(path));
    } catch (e) {
      if (isErrno(e, "ENOENT") || isErrno(e, "EINVAL") || isErrno(e, "ENOTDIR")) return null;
      throw e;
    }
  }

  #list(path: string): string[] {
    try {
      return this.sys.readdir(path);
    } catch (e) {
      if (isErrno(e, "ENOENT") || isErrno(e, "ENOTDIR")) return [];
      throw e;
    }
  }

  #exists(path: string): boolean {
    try {
      this.sys.stat(path);
      return true;
    } catch (e) {
      if (isErrno(e, "ENOENT") || isErrno(e, "ENOTDIR")) return false;
      throw e;
    }
  }

  /** Looks a PCI address, mdev UUID or sysfs path up; null when sysfs has no such device. */
  find(spec: string): SysfsDevice | null {
    let kind: "pci" | "mdev";
    let name: string;
    let path: string;
    const pci = PCI_ADDR.exec(spec);
    if (pci) {
      kind = "pci";
      name = `${(pci[1] ?? "0000").toLowerCase()}:${pci[2]}:${pci[3]}.${pci[4]}`.toLowerCase();
      path = `${this.root}/bus/pci/devices/${name}`;
    } else if (UUID.test(spec)) {
      kind = "mdev";
      name = spec.toLowerCase();
      path = `${this.root}/bus/mdev/devices/${name}`;
    } else if (spec.startsWith("/sys/") || spec.startsWith(this.root + "/")) {
      name = basename(spec.replace(/\/+$/, ""));
      kind = UUID.test(name) ? "mdev" : "pci";
      path = spec.replace(/\/+$/, "");
    } else {
      return null;
    }
    if (!this.#exists(path)) return null;
    const vfioDev = this.#list(`${path}/vfio-dev`);
    return {
      kind,
      name,
      path,
      driver: this.#link(`${path}/driver`),
      group: this.#link(`${path}/iommu_group`),
      cdev: vfioDev.find((n) => /^vfio\d+$/.test(n)) ?? null,
      mdevType: kind === "mdev" ? this.#link(`${path}/mdev_type`) : null,
    };
  }

  /** The device behind a cdev node /dev/vfio/devices/vfioN. */
  findByCdev(node: string): SysfsDevice | null {
    const link = (() => {
      try {
        return this.sys.readlink(`${this.root}/class/vfio-dev/${node}/device`);
      } catch {
        return null;
      }
    })();
    if (!link) return null;
    return this.find(basename(link));
  }

  /** A small sysfs attribute's text, trimmed; null when it does not exist or cannot be read. */
  attribute(path: string): string | null {
    try {
      return new TextDecoder().decode(readSmallFile(this.sys, path, 4096)).trim();
    } catch (e) {
      if (e instanceof SysError) return null;
      throw e;
    }
  }

  /** The PCI ids of a PCI function (null for an mdev, or when sysfs lacks them). */
  pciIds(dev: SysfsDevice): SysfsPciIds | null {
    if (dev.kind !== "pci") return null;
    const num = (name: string) => {
      const t = this.attribute(`${dev.path}/${name}`);
      return t !== null && /^0x[0-9a-fA-F]+$/.test(t) ? parseInt(t, 16) : null;
    };
    const vendor = num("vendor"), device = num("device");
    if (vendor === null || device === null) return null;
    return {
      vendor,
      device,
      subsystemVendor: num("subsystem_vendor"),
      subsystemDevice: num("subsystem_device"),
      classCode: num("class"),
    };
  }

  /**
   * Whether the PCI core has a reset method for the function: the `reset` attribute is
   * visible only then (drivers/pci/pci-sysfs.c pci_dev_reset_attr_is_visible), and
   * `reset_method` lists them (Linux >= 5.15). null when sysfs does not say (an mdev).
   */
  resetMethods(dev: SysfsDevice): string[] | null {
    if (dev.kind !== "pci") return null;
    const methods = this.attribute(`${dev.path}/reset_method`);
    if (methods !== null) return methods.split(/\s+/).filter((m) => m);
    return this.#exists(`${dev.path}/reset`) ? ["unknown"] : [];
  }

  /**
   * A PCI function's SR-IOV side (drivers/pci/iov.c, pci-sysfs.c): `pf` — for a VF, its PF
   * (the `physfn` link, which only a VF has) and the PF's driver; `totalVfs` — for a PF, its
   * `sriov_totalvfs` (visible only on a function with the SR-IOV capability: iov.c
   * sriov_pf_attrs_are_visible, i.e. the kernel's `pdev->is_physfn`). Both null for a
   * function that is neither, and for an mdev.
   */
  sriov(dev: SysfsDevice): SysfsSriov {
    if (dev.kind !== "pci") return { pf: null, totalVfs: null };
    const pfName = this.#link(`${dev.path}/physfn`);
    const total = this.attribute(`${dev.path}/sriov_totalvfs`);
    return {
      pf: pfName === null ? null : { name: pfName, driver: this.#link(`${dev.path}/physfn/driver`) },
      totalVfs: total !== null && /^\d+$/.test(total) ? Number(total) : null,
    };
  }

  /** Other devices in an IOMMU group, with their drivers. */
  groupMembers(group: string): { name: string; driver: string | null }[] {
    return this.#list(`${this.root}/kernel/iommu_groups/${group}/devices`).map((name) => ({
      name,
      driver: this.#link(`${this.root}/kernel/iommu_groups/${group}/devices/${name}/driver`),
    }));
  }

  /** Every device bound to a vfio driver (PCI with a vfio driver, and mdevs with a group). */
  vfioDevices(): SysfsDevice[] {
    const out: SysfsDevice[] = [];
    for (const n of this.#list(`${this.root}/bus/pci/devices`)) {
      const d = this.find(n);
      if (d?.driver && isVfioDriver(d.driver)) out.push(d);
    }
    for (const n of this.#list(`${this.root}/bus/mdev/devices`)) {
      const d = this.find(n);
      if (d?.group) out.push(d);
    }
    return out;
  }
}

/** vfio-pci and its variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, pds_vfio_pci, …). */
export function isVfioDriver(driver: string): boolean {
  return driver === "vfio-pci" || driver.includes("vfio");
}
