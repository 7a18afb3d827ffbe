// Device models of the simulated VFIO kernel: what a device's migration data looks
// like, how it is validated on resume, and its identity (PCI config space).
//
// mtty-1 / mtty-2 follow samples/vfio-mdev/mtty.c byte for byte: a 24-byte header
// (u64 magic, u32 major 1, u32 minor 0, u32 nr_ports, u32 flags 0) then 36 bytes per
// serial port, host-endian; pre-copy offers only the header, and the resume header
// is validated on the write that completes byte 24 (EFAULT, bytes still taken).
//
// bulk is N bytes of seeded state: a 32-byte header then records {u64 offset,
// u64 length, bytes}. Pre-copy offers the whole state as initial data and pages
// dirtied while running as further records, so a live save stays correct.
//
// xe stands for an Intel xe GPU VF (drivers/vfio/pci/xe): no PRE_COPY, a state of any
// size (VRAM included) that is never stored: it is generated from a seed, page by page,
// as it is read, and verified against the same generator as it is written back. A
// 32-byte header (magic "VFIMXEVF", u32 version, u32 seed, u64 size) then the data.

import { CAP_ID, PCI_CAPABILITY_LIST, PCI_COMMAND, PCI_STATUS, PCI_STATUS_CAP_LIST } from "../pci/config.ts";
import type { PciIdentity } from "../pci/identity.ts";
import { Errno, SysError } from "../../ffi/errno.ts";

export type ModelName = "mtty-1" | "mtty-2" | "bulk" | "xe";
export const MODEL_NAMES: readonly ModelName[] = ["mtty-1", "mtty-2", "bulk", "xe"];

/**
 * The family a model stands for when `sim create` is not told: "pci" for models of PCI
 * variant drivers (reset at first open and last close, as vfio-pci-core does), "mdev"
 * for mediated devices and the tests' bulk model (state kept across opens).
 */
export function defaultFamily(name: ModelName): "pci" | "mdev" {
  return name === "xe" ? "pci" : "mdev";
}

export const MTTY_MAGIC = 0x7e9d09898c3e2c4en;
export const MTTY_HEADER_SIZE = 24;
export const MTTY_PORT_SIZE = 36;
const MTTY_MAX_FIFO_SIZE = 16;

export const BULK_MAGIC = 0x4b4c55424d494656n; // "VFIMBULK" little-endian
export const BULK_HEADER_SIZE = 32;
export const BULK_RECORD_HEADER = 16;
export const BULK_PAGE = 4096;

export const XE_MAGIC = 0x46564558564d4946n; // "VFIMXEVF" little-endian
export const XE_HEADER_SIZE = 32;

export interface ModelInfo {
  name: ModelName;
  driver: string;
  /** mdev type name, for mdev-like models. */
  mdevType?: string;
  identity: PciIdentity;
  /** VFIO_DEVICE_INFO flags. */
  deviceFlags: number;
  /** Size of each BAR region (index 0..5); 0 = absent. */
  bars: number[];
  configSize: number;
  defaultMigrationFlags: number;
  /** Whether DMA logging ops exist (mtty installs no-op ones). */
  dmaLogging: boolean;
  /** An MSI capability (64-bit) in config space. */
  msi?: boolean;
  /** An MSI-X capability whose table and PBA live in BAR `bar`. */
  msix?: { bar: number; entries: number; tableOffset: number; pbaOffset: number };
}

const PCI = 1 << 1;
const RESET = 1 << 0;

export function modelInfo(name: ModelName): ModelInfo {
  switch (name) {
    case "mtty-1":
    case "mtty-2":
      return {
        name,
        driver: "mtty",
        mdevType: name,
        identity: {
          vendor: 0x4348,
          device: 0x3253,
          subsystemVendor: 0x4348,
          subsystemDevice: 0x3253,
          classCode: 0x070002,
          revision: 0x10,
        },
        deviceFlags: PCI, // mtty does not advertise RESET, yet handles it
        bars: name === "mtty-1" ? [8, 0, 0, 0, 0, 0] : [8, 8, 0, 0, 0, 0],
        configSize: 0xff,
        defaultMigrationFlags: 0x7,
        dmaLogging: true,
      };
    case "bulk":
      return {
        name,
        driver: "vfio-mig-sim",
        identity: {
          vendor: 0x1b36,
          device: 0x10f0,
          subsystemVendor: 0x1af4,
          subsystemDevice: 0x1100,
          classCode: 0xff0000,
          revision: 1,
        },
        deviceFlags: PCI | RESET,
        bars: [0, 0, 0x1000, 0, 0, 0], // BAR2: the MSI-X table and PBA
        configSize: 256,
        defaultMigrationFlags: 0x7,
        dmaLogging: false,
        msi: true,
        msix: { bar: 2, entries: 4, tableOffset: 0, pbaOffset: 0x800 },
      };
    case "xe":
      return {
        name,
        driver: "xe-vfio-pci",
        identity: {
          vendor: 0x8086,
          device: 0xe212, // a Battlemage VF id; only identity matters here
          subsystemVendor: 0x8086,
          subsystemDevice: 0x1100,
          classCode: 0x030000,
          revision: 0,
        },
        deviceFlags: PCI | RESET,
        bars: [0, 0, 0x1000, 0, 0, 0], // BAR2: the MSI-X table and PBA
        configSize: 256,
        defaultMigrationFlags: 0x3, // STOP_COPY | P2P: no PRE_COPY
        dmaLogging: false,
        msi: false,
        msix: { bar: 2, entries: 8, tableOffset: 0, pbaOffset: 0x800 },
      };
  }
}

export function mttyPorts(name: ModelName): number {
  return name === "mtty-2" ? 2 : 1;
}

/** Size of the device's internal state (bulk and xe: the --size given). */
export function stateSize(name: ModelName, bulkSize: number): number {
  return name === "bulk" || name === "xe" ? bulkSize : mttyPorts(name) * MTTY_PORT_SIZE;
}

/**
 * Bytes a STOP_COPY session of a device produces from STOP: mtty's 24-byte header and 36
 * bytes per port (60 / 96, what mtty's MIG_DATA_SIZE reports), bulk's header, one record
 * header and its state, xe's header and its state (xe's MIG_DATA_SIZE is an estimate
 * below this).
 */
export function stopCopyBytes(model: ModelName, size: number): number {
  if (model === "bulk") return BULK_HEADER_SIZE + BULK_RECORD_HEADER + size;
  if (model === "xe") return XE_HEADER_SIZE + size;
  return MTTY_HEADER_SIZE + mttyPorts(model) * MTTY_PORT_SIZE;
}

/** Fills a fresh state: mtty ports with max_fifo_size set and seeded registers. */
export function initialMttyState(name: ModelName, seed: number): Uint8Array {
  const n = mttyPorts(name);
  const b = new Uint8Array(n * MTTY_PORT_SIZE);
  const rnd = prng(seed);
  for (let i = 0; i < n; i++) {
    const p = i * MTTY_PORT_SIZE;
    if (seed !== 0) {
      b[p + 7] = rnd() & 0xff; // UART scratch register
      const count = rnd() % 8;
      for (let k = 0; k < count; k++) b[p + 8 + k] = rnd() & 0xff; // fifo
      b[p + 8 + 16] = 0; // head
      b[p + 8 + 17] = count; // tail
      b[p + 8 + 18] = count; // count
    }
    b[p + 33] = MTTY_MAX_FIFO_SIZE;
    b[p + 34] = 1; // intr_trigger_level
  }
  return b;
}

export function mttyHeader(name: ModelName): Uint8Array {
  const b = new Uint8Array(MTTY_HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, MTTY_MAGIC, true);
  v.setUint32(8, 1, true);
  v.setUint32(12, 0, true);
  v.setUint32(16, mttyPorts(name), true);
  v.setUint32(20, 0, true);
  return b;
}

/** mtty_resume_write's header check; returns the errno or 0. */
export function validateMttyHeader(name: ModelName, h: Uint8Array): number {
  const v = new DataView(h.buffer, h.byteOffset, h.byteLength);
  const ok = v.getBigUint64(0, true) === MTTY_MAGIC && v.getUint32(20, true) === 0 &&
    v.getUint32(8, true) === 1 && v.getUint32(12, true) === 0 && v.getUint32(16, true) === mttyPorts(name);
  return ok ? 0 : Errno.EFAULT;
}

export function bulkHeader(size: number): Uint8Array {
  const b = new Uint8Array(BULK_HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BULK_MAGIC, true);
  v.setUint32(8, 1, true); // version
  v.setUint32(12, 0, true); // flags
  v.setBigUint64(16, BigInt(size), true);
  return b;
}

export function validateBulkHeader(size: number, h: Uint8Array): number {
  const v = new DataView(h.buffer, h.byteOffset, h.byteLength);
  const ok = v.getBigUint64(0, true) === BULK_MAGIC && v.getUint32(8, true) === 1 &&
    v.getUint32(12, true) === 0 && Number(v.getBigUint64(16, true)) === size;
  return ok ? 0 : Errno.EINVAL;
}

export function bulkRecordHeader(offset: number, length: number): Uint8Array {
  const b = new Uint8Array(BULK_RECORD_HEADER);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(offset), true);
  v.setBigUint64(8, BigInt(length), true);
  return b;
}

/** PCI config space of a model (type 0 header). */
export function configSpace(info: ModelInfo): Uint8Array {
  const b = new Uint8Array(info.configSize);
  const v = new DataView(b.buffer);
  const id = info.identity;
  v.setUint16(0x00, id.vendor, true);
  v.setUint16(0x02, id.device, true);
  v.setUint16(PCI_COMMAND, 0x0000, true);
  v.setUint16(PCI_STATUS, 0x0200, true); // DEVSEL medium
  v.setUint8(0x08, id.revision);
  v.setUint8(0x09, id.classCode & 0xff);
  v.setUint16(0x0a, id.classCode >> 8, true);
  v.setUint8(0x0e, 0); // header type 0
  v.setUint16(0x2c, id.subsystemVendor, true);
  v.setUint16(0x2e, id.subsystemDevice, true);
  // Capabilities: MSI (64-bit) at 0x50, MSI-X at 0x70.
  const caps: [number, number][] = [];
  if (info.msi) caps.push([CAP_MSI_AT, CAP_ID.MSI]);
  if (info.msix) caps.push([CAP_MSIX_AT, CAP_ID.MSIX]);
  if (caps.length) {
    v.setUint16(PCI_STATUS, 0x0200 | PCI_STATUS_CAP_LIST, true);
    v.setUint8(PCI_CAPABILITY_LIST, caps[0][0]);
    caps.forEach(([at, id], i) => {
      v.setUint8(at, id);
      v.setUint8(at + 1, caps[i + 1]?.[0] ?? 0);
    });
  }
  if (info.msi) v.setUint16(CAP_MSI_AT + 2, 0x0080, true); // 64-bit, disabled
  if (info.msix) {
    const m = info.msix;
    v.setUint16(CAP_MSIX_AT + 2, m.entries - 1, true); // table size, disabled
    v.setUint32(CAP_MSIX_AT + 4, m.tableOffset | m.bar, true);
    v.setUint32(CAP_MSIX_AT + 8, m.pbaOffset | m.bar, true);
  }
  return b;
}

export const CAP_MSI_AT = 0x50;
export const CAP_MSIX_AT = 0x70;

/** Whether a config space byte is writable in the simulated models. */
export function configWritable(info: ModelInfo, at: number): boolean {
  if (at === PCI_COMMAND || at === PCI_COMMAND + 1) return true;
  if (info.msi && at >= CAP_MSI_AT + 2 && at < CAP_MSI_AT + 14) return true; // control, address, data
  if (info.msix && at === CAP_MSIX_AT + 3) return true; // enable, function mask (bits 15, 14)
  return false;
}

/**
 * What a PCI function's reset does to the config space that matters to a VMM: command
 * register 0, MSI and MSI-X disabled (MSI-X function mask cleared). Returns whether
 * anything changed.
 */
export function clearCommandAndEnables(info: ModelInfo, cfg: Uint8Array): boolean {
  const before = cfg.slice();
  cfg[PCI_COMMAND] = 0;
  cfg[PCI_COMMAND + 1] = 0;
  if (info.msi) cfg[CAP_MSI_AT + 2] &= ~0x01;
  if (info.msix) cfg[CAP_MSIX_AT + 3] &= 0x3f;
  return before.some((b, i) => b !== cfg[i]);
}

/** xorshift32: small, fast, seeded; enough to make states distinct and reproducible. */
export function prng(seed: number): () => number {
  let x = (seed >>> 0) || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** Fills `out` with the seeded bulk pattern for the block starting at `offset`. */
export function fillBulk(out: Uint8Array, seed: number, offset: number): void {
  const words = new Uint32Array(out.buffer, out.byteOffset, out.byteLength >>> 2);
  let x = ((seed ^ Math.imul(offset / BULK_PAGE | 0, 0x85ebca6b)) >>> 0) || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  for (let i = words.length * 4; i < out.length; i++) out[i] = i & 0xff;
}

export function xeHeader(seed: number, size: number): Uint8Array {
  const b = new Uint8Array(XE_HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, XE_MAGIC, true);
  v.setUint32(8, 1, true); // version
  v.setUint32(12, seed >>> 0, true);
  v.setBigUint64(16, BigInt(size), true);
  return b;
}

/** The seed of a valid xe header for a device of `size` bytes, or null. */
export function parseXeHeader(size: number, h: Uint8Array): number | null {
  const v = new DataView(h.buffer, h.byteOffset, h.byteLength);
  const ok = v.getBigUint64(0, true) === XE_MAGIC && v.getUint32(8, true) === 1 &&
    Number(v.getBigUint64(16, true)) === size;
  return ok ? v.getUint32(12, true) : null;
}

const XE_SCRATCH = new Uint32Array(BULK_PAGE / 4);

/** One 4 KiB page of xe data: a function of (seed, page index) only, whatever the read size. */
function xePage(words: Uint32Array, seed: number, page: number): void {
  let x = ((seed ^ Math.imul(page + 1, 0x9e3779b1)) >>> 0) || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
}

/**
 * Fills `out` with the xe data at byte `offset` of a device seeded `seed`: generated, not
 * stored, so a state of any size streams in constant memory.
 */
export function fillXe(out: Uint8Array, seed: number, offset: number): void {
  const scratch = new Uint8Array(XE_SCRATCH.buffer);
  let done = 0;
  while (done < out.length) {
    const at = offset + done;
    const page = Math.floor(at / BULK_PAGE);
    const inPage = at - page * BULK_PAGE;
    const take = Math.min(out.length - done, BULK_PAGE - inPage);
    const dst = out.subarray(done, done + take);
    if (inPage === 0 && take === BULK_PAGE && (dst.byteOffset & 3) === 0) {
      xePage(new Uint32Array(dst.buffer, dst.byteOffset, BULK_PAGE / 4), seed, page);
    } else {
      xePage(XE_SCRATCH, seed, page);
      dst.set(scratch.subarray(inPage, inPage + take));
    }
    done += take;
  }
}

export function sysErr(op: string, name: keyof typeof Errno, detail?: string): SysError {
  return new SysError(op, Errno[name], detail);
}
