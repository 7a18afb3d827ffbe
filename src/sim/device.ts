// A simulated device as the VFIO core sees it while it is open (struct vfio_device): its
// store, metadata, driver and behaviours, and what vfio-pci-core (or an mdev driver like
// mtty) emulates of PCI for it: device and region info, config space, the MSI-X table.

import type { IoctlArg, Sys } from "../../ffi/sys.ts";
import { decode, encodeInto, PCI_REGION, REGION_FLAGS, STRUCTS } from "../../ffi/vfio_uapi.ts";
import type { DeviceState } from "../vfio/state_machine.ts";
import { type Behaviour, type SimDevice, type SimDriver, sysErr } from "./driver.ts";
import { CAP_MSIX_AT, configSpace, configWritable, type ModelInfo } from "./models.ts";
import { behavioursOf } from "./quirks.ts";
import { familyOf, type SimDeviceMeta, type SimStore, writeFileAtomic } from "./store.ts";
import { V1_REGION_INDEX, type V1Device } from "./v1_device.ts";
import { configRead, configWrite, msixBarAccess, powerOnConfig } from "./vfio_pci.ts";

const err = sysErr;

/** What a device asks of the core that holds it. */
export interface CoreOps {
  log(entry: Record<string, unknown>): void;
  reset(dev: CoreDevice, to: DeviceState, why: string): void;
}

/** The core's view of one open device (the struct vfio_device the drivers see). */
export class CoreDevice implements SimDevice {
  driver!: SimDriver;
  v1?: V1Device;
  msixBar?: Uint8Array;
  precopyV2On = false;
  readonly quirkData = new Map<string, unknown>();
  readonly behaviours: { name: string; behaviour: Behaviour }[];
  /** The behaviours with each hook, outermost first (computed once: reads are hot). */
  readonly readHooks: Behaviour[];
  readonly writeHooks: Behaviour[];
  readonly precopyHooks: Behaviour[];
  /** device.json as this kernel last wrote or read it. */
  metaText: string;
  /** The device's reset count (store.resetCount) as this open last saw it. */
  seenResets = 0;
  config: Uint8Array;

  constructor(
    readonly core: CoreOps,
    readonly host: Sys,
    readonly fd: number,
    readonly store: SimStore,
    readonly meta: SimDeviceMeta,
    readonly info: ModelInfo,
    readonly borrowed: boolean,
    text: string,
  ) {
    this.metaText = text;
    this.behaviours = behavioursOf(meta);
    const all = this.behaviours.map((b) => b.behaviour);
    this.readHooks = all.filter((b) => b.read);
    this.writeHooks = all.filter((b) => b.write);
    this.precopyHooks = all.filter((b) => b.precopyInfo);
    this.config = configSpace(info);
  }

  get family(): "pci" | "mdev" {
    return familyOf(this.meta);
  }

  persist(): void {
    this.metaText = this.store.writeMeta(this.meta);
  }

  log(entry: Record<string, unknown>): void {
    this.core.log(entry);
  }

  dataChanged(): void {
    if (!this.meta.pristine) return;
    this.meta.pristine = false;
    this.persist();
  }

  sessionData(): boolean {
    return this.behaviours.every((b) => b.behaviour.sessionData?.(this) !== false);
  }

  selfReset(to: DeviceState, why: string): void {
    this.core.reset(this, to, why);
  }

  /**
   * Config space and MSI-X table as the store has them (another process may write them).
   * A pci-family function's power-on config has its BARs at host addresses (vfio_pci.ts).
   */
  loadConfig(): void {
    const saved = this.store.readOptional(this.store.configPath);
    const fresh = () =>
      this.family === "pci" ? powerOnConfig(this.info, configSpace(this.info)) : configSpace(this.info);
    this.config = saved && saved.length === this.info.configSize ? saved : fresh();
    if (this.info.msix) {
      const size = this.info.bars[this.info.msix.bar];
      const bar = this.store.readOptional(this.store.msixPath);
      this.msixBar = bar && bar.length === size ? bar : new Uint8Array(size);
    }
  }

  /** VFIO_DEVICE_GET_INFO. */
  getInfo(arg: IoctlArg): number {
    if (!(arg instanceof Uint8Array) || arg.length < 16) throw err("ioctl", "EFAULT");
    const argsz = decode(STRUCTS.vfio_device_info, new Uint8Array(arg.buffer, arg.byteOffset, 24).slice(0, 24)).argsz;
    if (argsz < 16) throw err("ioctl", "EINVAL");
    const v = new DataView(arg.buffer, arg.byteOffset, arg.byteLength);
    v.setUint32(4, this.info.deviceFlags, true);
    v.setUint32(8, this.v1 ? V1_REGION_INDEX + 1 : PCI_REGION.NUM, true);
    v.setUint32(12, 5, true);
    if (argsz >= 24 && arg.length >= 24) v.setUint32(16, 0, true);
    return 0;
  }

  /** VFIO_DEVICE_GET_REGION_INFO: the BARs, config space, and the v1 migration region. */
  getRegionInfo(arg: IoctlArg): number {
    if (!(arg instanceof Uint8Array) || arg.length < 32) throw err("ioctl", "EFAULT");
    const r = decode(STRUCTS.vfio_region_info, arg);
    if (r.argsz >= 32 && r.index === V1_REGION_INDEX && this.v1) {
      this.v1.regionInfo(arg, V1_REGION_INDEX * 2 ** 40);
      return 0;
    }
    if (r.argsz < 32 || r.index >= PCI_REGION.NUM) throw err("ioctl", "EINVAL");
    let size = 0;
    if (r.index < 6) size = this.info.bars[r.index];
    else if (r.index === PCI_REGION.CONFIG) size = this.info.configSize;
    const flags = size > 0 ? REGION_FLAGS.READ | REGION_FLAGS.WRITE : 0;
    encodeInto(STRUCTS.vfio_region_info, {
      argsz: r.argsz,
      flags,
      index: r.index,
      cap_offset: 0,
      size,
      offset: r.index * 2 ** 40,
    }, arg);
    return 0;
  }

  /**
   * pread/pwrite on the device fd: config space, the MSI-X table, the v1 registers, the
   * driver's BARs. A pci-family function answers as vfio-pci-core does (vfio_pci.ts: the
   * MSI enable kept only while MSI is armed, MSI-X control read-only, the MSI-X table
   * hidden); an mdev's config is its driver's emulation (command register and MSI/MSI-X
   * control writable, the MSI-X table in its BAR). `sync` re-reads device.json (another
   * process may have moved the v1 device_state or armed interrupts).
   */
  regionAccess(buf: Uint8Array, offset: number, write: boolean, sync: () => void): number {
    const index = Math.floor(offset / 2 ** 40);
    const off = offset - index * 2 ** 40;
    const op = write ? "pwrite" : "pread";
    const msix = this.info.msix;
    if (this.family === "pci" && index === PCI_REGION.CONFIG) {
      this.loadConfig(); // another process may have written it
      sync(); // or armed interrupts
      if (!write) configRead(this.info, this.meta, this.config, off, buf);
      else if (configWrite(this.info, this.meta, this.config, off, buf)) {
        writeFileAtomic(this.host, this.store.configPath, this.config);
      }
      return buf.length;
    }
    if (this.family === "pci" && msix && index === msix.bar) {
      // vfio_pci_bar_rw: EINVAL from the BAR's end on, a short access across it.
      if (off >= this.info.bars[index]) throw err(op, "EINVAL");
      const n = Math.min(buf.length, this.info.bars[index] - off);
      return msixBarAccess(this.info, off, buf.subarray(0, n), write);
    }
    if (index === PCI_REGION.CONFIG) {
      if (off + buf.length > this.info.configSize) throw err(op, "EINVAL");
      this.loadConfig(); // another process may have written it
      if (write) {
        // The command register and the MSI/MSI-X control bits are writable; they persist.
        let changed = false;
        for (let i = 0; i < buf.length; i++) {
          const at = off + i;
          if (!configWritable(this.info, at)) continue;
          // MSI-X control's high byte: enable and function mask; the table size stays.
          const b = at === CAP_MSIX_AT + 3 ? (this.config[at] & 0x3f) | (buf[i] & 0xc0) : buf[i];
          if (this.config[at] !== b) changed = true;
          this.config[at] = b;
        }
        if (changed) writeFileAtomic(this.host, this.store.configPath, this.config);
      } else buf.set(this.config.subarray(off, off + buf.length));
      return buf.length;
    }
    if (index === V1_REGION_INDEX && this.v1) {
      if (off + buf.length > this.v1.regionSize) throw err(op, "EINVAL");
      if (off === 0) sync(); // device_state: another process may have moved it
      return this.v1.access(buf, off, write);
    }
    if (msix && this.msixBar && index === msix.bar) {
      if (off + buf.length > this.msixBar.length) throw err(op, "EINVAL");
      this.loadConfig();
      const bar = this.msixBar!;
      if (!write) {
        buf.set(bar.subarray(off, off + buf.length));
        return buf.length;
      }
      // The table is writable; the PBA is read-only.
      const tableEnd = msix.tableOffset + msix.entries * 16;
      for (let i = 0; i < buf.length; i++) {
        if (off + i >= msix.tableOffset && off + i < tableEnd) bar[off + i] = buf[i];
      }
      writeFileAtomic(this.host, this.store.msixPath, bar);
      return buf.length;
    }
    if (index < 6 && this.info.bars[index] > 0 && off + buf.length <= this.info.bars[index]) {
      return this.driver.barAccess(index, off, buf, write);
    }
    throw err(op, "EINVAL");
  }
}
