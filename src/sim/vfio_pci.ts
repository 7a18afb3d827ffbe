// What vfio-pci-core lets userspace see and do of a PCI function's config space and
// interrupts, for the simulator's pci family (an mdev driver emulates its own config
// space: device.ts keeps the mdev family's simple model).
//
// Config space (drivers/vfio/pci/vfio_pci_config.c, Linux 6.12): vfio_config_do_rw chops
// an access into aligned chunks inside one capability; each chunk goes through the
// capability's perm_bits:
//   - the header (init_pci_cap_basic_perm): the command register is writable (INTx disable
//     virtualised); cache line size and latency timer go to the hardware; the BARs and the
//     ROM BAR are virtual, read back through vfio_bar_fixup (sizing: the address masked to
//     the BAR's size, its flags; an absent BAR reads 0); the interrupt line is virtual and
//     writable; ids, status, capability pointer and interrupt pin are read-only.
//   - MSI (init_pci_cap_msi_perm, vfio_msi_config_write): control's low byte, the address
//     and the data are virtual and writable; a write that reaches the control clears its
//     ENABLE unless MSI is armed (irq_type MSI, by VFIO_DEVICE_SET_IRQS) and clamps QSIZE to
//     msi_qmax; VFIO_DEVICE_SET_IRQS itself never writes the virtual control, so its
//     enable reads what the last such write left (even after MSI is disarmed).
//   - MSI-X (cap_perms default: vfio_direct_config_read, no writefn): read-only, read from
//     the hardware, whose enable the kernel sets while MSI-X is armed (pci_alloc_irq_vectors)
//     with the function mask clear; writes are dropped without an error.
//   - anything else (between capabilities) is the hardware's: nothing there in the models.
//   - an access past the config space's end fails EFAULT.
// The MSI-X table in its BAR (vfio_pci_bar_rw, vfio_pci_core_do_io_rw, vfio_pci_rdwr.c):
// reads of the table's range return 0xff, writes are dropped; the PBA is the hardware's
// (no interrupt ever pends here: zeros; writes to it change nothing).
//
// Interrupts (vfio_pci_core.c vfio_pci_ioctl_get_irq_info / _set_irqs, vfio_main.c
// vfio_set_irqs_validate_and_prepare, vfio_pci_intrs.c): the models have no INTx pin and
// are not PCI Express, so INTx and ERR count 0; MSI counts 1 (the capability's QMASK is 0),
// MSI-X its table size, REQ 1. The armed type (irq_type) and the REQ trigger belong to the
// device, not to an fd: they live in device.json (another process's open sees them) and
// end at the first open and the last close (vfio_pci_core_disable disarms every
// interrupt); VFIO_DEVICE_RESET keeps them (pci_try_reset_function saves and restores the
// function's MSI/MSI-X state).

import type { IoctlArg, Sys } from "../../ffi/sys.ts";
import { sysErr } from "./driver.ts";
import { CAP_MSI_AT, CAP_MSIX_AT, type ModelInfo } from "./models.ts";
import type { SimDeviceMeta } from "./store.ts";

const err = sysErr;

/** VFIO_PCI_*_IRQ_INDEX (include/uapi/linux/vfio.h). */
export const IRQ_INDEX = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4, NUM: 5 } as const;
/** VFIO_IRQ_INFO_* flags. */
export const IRQ_INFO = { EVENTFD: 1 << 0, MASKABLE: 1 << 1, AUTOMASKED: 1 << 2, NORESIZE: 1 << 3 } as const;
/** VFIO_IRQ_SET_* flags. */
export const IRQ_SET = {
  DATA_NONE: 1 << 0,
  DATA_BOOL: 1 << 1,
  DATA_EVENTFD: 1 << 2,
  ACTION_MASK: 1 << 3,
  ACTION_UNMASK: 1 << 4,
  ACTION_TRIGGER: 1 << 5,
  DATA_TYPE_MASK: 0x7,
  ACTION_TYPE_MASK: 0x38,
} as const;

const MSI_LEN = 14; // 64-bit, no per-vector masking (vfio_msi_cap_len)
const MSIX_LEN = 12; // PCI_CAP_MSIX_SIZEOF
const MSI_FLAGS_ENABLE = 0x01;
const MSI_FLAGS_QMASK = 0x0e;
const MSI_FLAGS_QSIZE = 0x70;
const MSIX_FLAGS_ENABLE = 0x8000;
const BAR0 = 0x10;
const ROM = 0x30;
const INTERRUPT_LINE = 0x3c;

/** A fake host address for BAR `i` (what the host assigned; vfio-pci's vconfig starts from it). */
export function hostBarAddress(info: ModelInfo, i: number): number {
  return info.driver === "mtty" ? 0xc000 + 0x100 * i : 0xfe000000 + 0x100000 * i;
}

/** The flags bits of BAR `i` (vfio_generate_bar_flags): I/O for mtty's, 32-bit memory otherwise. */
function barFlags(info: ModelInfo): number {
  return info.driver === "mtty" ? 0x1 : 0x0;
}

/**
 * A pci-family function's config space when an open finds it, as vfio_config_init fills
 * vconfig: the BARs at their host addresses, and the decode enable for its BARs that
 * vfio_pci_core_enable's pci_enable_device set (pci_enable_resources: memory, or I/O for
 * mtty's I/O BARs; a VF without a memory enable gets a virtual one, no_command_memory).
 */
export function powerOnConfig(info: ModelInfo, cfg: Uint8Array): Uint8Array {
  const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  if (info.bars.some((b) => b > 0)) cfg[0x04] |= info.driver === "mtty" ? 0x1 : 0x2;
  for (let i = 0; i < 6; i++) {
    if (info.bars[i] > 0) v.setUint32(BAR0 + 4 * i, hostBarAddress(info, i) | barFlags(info), true);
  }
  return cfg;
}

type Cap = "basic" | "msi" | "msix" | null;

/** vdev->pci_config_map: which capability holds byte `pos`, and where it starts. */
function capOf(info: ModelInfo, pos: number): { cap: Cap; start: number } {
  if (pos < 0x40) return { cap: "basic", start: 0 };
  if (info.msi && pos >= CAP_MSI_AT && pos < CAP_MSI_AT + MSI_LEN) return { cap: "msi", start: CAP_MSI_AT };
  if (info.msix && pos >= CAP_MSIX_AT && pos < CAP_MSIX_AT + MSIX_LEN) return { cap: "msix", start: CAP_MSIX_AT };
  return { cap: null, start: pos };
}

/** vfio_config_do_rw's chunk: inside one dword and one capability, 4, 2 or 1 bytes, aligned. */
function chunkLength(info: ModelInfo, pos: number, count: number): number {
  const { cap } = capOf(info, pos);
  let i = 1;
  while ((pos + i) % 4 && capOf(info, pos + i).cap === cap) i++;
  const n = Math.min(count, i);
  if (n >= 4 && pos % 4 === 0) return 4;
  if (n >= 2 && pos % 2 === 0) return 2;
  return 1;
}

/** Writable bits of byte `pos` of the header (init_pci_cap_basic_perm). */
function basicWritable(pos: number): number {
  if (pos === 0x04 || pos === 0x05) return 0xff; // command (INTx disable virtualised)
  if (pos === 0x0c || pos === 0x0d) return 0xff; // cache line size, latency timer (hardware)
  if (pos >= BAR0 && pos < BAR0 + 24) return 0xff; // BARs (virtual)
  if (pos >= ROM && pos < ROM + 4) return 0xff; // ROM BAR (virtual)
  if (pos === INTERRUPT_LINE) return 0xff; // virtual
  return 0;
}

/** Writable bits of byte `off` of the MSI capability (init_pci_cap_msi_perm, 64-bit). */
function msiWritable(off: number): number {
  if (off === 2) return 0xff; // control, low byte; the high byte is reserved
  return off >= 4 && off < MSI_LEN ? 0xff : 0; // address low/high, data
}

/**
 * A pread of config space on a pci-family function: `cfg` (vconfig and the hardware the
 * models have) as vfio-pci shows it. Throws EFAULT past the end (vfio_config_do_rw).
 */
export function configRead(info: ModelInfo, meta: SimDeviceMeta, cfg: Uint8Array, off: number, buf: Uint8Array): void {
  if (off < 0 || off >= info.configSize || off + buf.length > info.configSize) throw err("pread", "EFAULT");
  const view = cfg.slice();
  const v = new DataView(view.buffer);
  // vfio_bar_fixup: an absent BAR reads 0; a present one its address masked to its size, its flags.
  for (let i = 0; i < 6; i++) {
    const size = info.bars[i];
    const at = BAR0 + 4 * i;
    v.setUint32(at, size > 0 ? ((v.getUint32(at, true) & ~(size - 1)) | barFlags(info)) >>> 0 : 0, true);
  }
  v.setUint32(ROM, 0, true); // no ROM
  if (info.msi) view[CAP_MSI_AT + 2] &= ~MSI_FLAGS_QMASK; // vfio_msi_config_read: msi_qmax (0) << 1
  if (info.msix) {
    // The hardware's control: the table size, enable while MSI-X is armed, function mask clear.
    const ctl = (info.msix.entries - 1) | (meta.irqType === IRQ_INDEX.MSIX ? MSIX_FLAGS_ENABLE : 0);
    v.setUint16(CAP_MSIX_AT + 2, ctl, true);
  }
  buf.set(view.subarray(off, off + buf.length));
}

/**
 * A pwrite of config space on a pci-family function, chunk by chunk as vfio_config_do_rw
 * does; bytes nobody may write are dropped without an error. Returns whether `cfg` changed.
 */
export function configWrite(
  info: ModelInfo,
  meta: SimDeviceMeta,
  cfg: Uint8Array,
  off: number,
  buf: Uint8Array,
): boolean {
  if (off < 0 || off >= info.configSize || off + buf.length > info.configSize) throw err("pwrite", "EFAULT");
  const before = cfg.slice();
  let done = 0;
  while (done < buf.length) {
    const pos = off + done;
    const count = chunkLength(info, pos, buf.length - done);
    const { cap, start } = capOf(info, pos);
    for (let i = 0; i < count; i++) {
      const w = cap === "basic" ? basicWritable(pos + i) : cap === "msi" ? msiWritable(pos + i - start) : 0;
      cfg[pos + i] = (cfg[pos + i] & ~w) | (buf[done + i] & w);
    }
    const rel = pos - start;
    if (cap === "msi" && rel <= 2 && rel + count >= 2) {
      // vfio_msi_config_write: MSI is enabled through the ioctl; QSIZE at most msi_qmax (0).
      let flags = cfg[start + 2];
      if (meta.irqType !== IRQ_INDEX.MSI) flags &= ~MSI_FLAGS_ENABLE;
      if ((flags & MSI_FLAGS_QSIZE) >> 4 > 0) flags &= ~MSI_FLAGS_QSIZE;
      cfg[start + 2] = flags;
    }
    done += count;
  }
  return before.some((b, i) => b !== cfg[i]);
}

/**
 * A region access to the BAR holding the MSI-X table (vfio_pci_core_do_io_rw): the table's
 * range reads 0xff and drops writes; the rest (the PBA) reads the hardware's zeros.
 */
export function msixBarAccess(info: ModelInfo, off: number, buf: Uint8Array, write: boolean): number {
  const m = info.msix!;
  if (write) return buf.length;
  const tableEnd = m.tableOffset + m.entries * 16;
  for (let i = 0; i < buf.length; i++) buf[i] = off + i >= m.tableOffset && off + i < tableEnd ? 0xff : 0;
  return buf.length;
}

/** vfio_pci_get_irq_count for the models (no INTx pin, not PCI Express). */
export function irqCount(info: ModelInfo, index: number): number {
  if (index === IRQ_INDEX.MSI) return info.msi ? 1 : 0;
  if (index === IRQ_INDEX.MSIX) return info.msix ? info.msix.entries : 0;
  if (index === IRQ_INDEX.REQ) return 1;
  return 0;
}

/** VFIO_DEVICE_GET_IRQ_INFO (vfio_pci_ioctl_get_irq_info). */
export function getIrqInfo(info: ModelInfo, arg: IoctlArg): number {
  if (!(arg instanceof Uint8Array) || arg.length < 16) throw err("ioctl", "EFAULT");
  const v = new DataView(arg.buffer, arg.byteOffset, 16);
  const argsz = v.getUint32(0, true);
  const index = v.getUint32(8, true);
  if (argsz < 16 || index >= IRQ_INDEX.NUM) throw err("ioctl", "EINVAL");
  if (index === IRQ_INDEX.ERR) throw err("ioctl", "EINVAL"); // not PCI Express
  const flags = IRQ_INFO.EVENTFD |
    (index === IRQ_INDEX.INTX ? IRQ_INFO.MASKABLE | IRQ_INFO.AUTOMASKED : IRQ_INFO.NORESIZE);
  v.setUint32(4, flags, true);
  v.setUint32(12, irqCount(info, index), true);
  return 0;
}

/**
 * VFIO_DEVICE_SET_IRQS on a pci-family function: validation (vfio_set_irqs_validate_and_
 * prepare), then vfio_pci_set_irqs_ioctl for MSI/MSI-X triggers and the REQ trigger. An
 * eventfd is checked to be one (eventfd_ctx_fdget: EBADF, EINVAL); no interrupt ever
 * fires. Changes `meta` (the caller persists it); returns whether it changed.
 */
export function setIrqs(host: Sys, info: ModelInfo, meta: SimDeviceMeta, arg: IoctlArg): boolean {
  if (!(arg instanceof Uint8Array) || arg.length < 20) throw err("ioctl", "EFAULT");
  const v = new DataView(arg.buffer, arg.byteOffset, arg.byteLength);
  const [argsz, flags, index, start, count] = [0, 4, 8, 12, 16].map((o) => v.getUint32(o, true));
  const { DATA_NONE, DATA_BOOL, DATA_EVENTFD, ACTION_TRIGGER, DATA_TYPE_MASK, ACTION_TYPE_MASK } = IRQ_SET;
  const max = index < IRQ_INDEX.NUM ? irqCount(info, index) : 0;
  if (
    argsz < 20 || index >= IRQ_INDEX.NUM || count >= 0xffffffff - start ||
    (flags & ~(DATA_TYPE_MASK | ACTION_TYPE_MASK)) >>> 0
  ) throw err("ioctl", "EINVAL");
  if (start >= max || start + count > max) throw err("ioctl", "EINVAL");
  const dataType = flags & DATA_TYPE_MASK;
  const size = dataType === DATA_NONE ? 0 : dataType === DATA_BOOL ? 1 : dataType === DATA_EVENTFD ? 4 : -1;
  if (size < 0) throw err("ioctl", "EINVAL");
  if (size && argsz - 20 < count * size) throw err("ioctl", "EINVAL");
  if (size && arg.length < 20 + count * size) throw err("ioctl", "EFAULT"); // memdup_user
  const fds = dataType === DATA_EVENTFD ? Array.from({ length: count }, (_, i) => v.getInt32(20 + 4 * i, true)) : [];
  const action = flags & ACTION_TYPE_MASK;
  // INTx and ERR have no vectors here: the count check above already refused them.
  if (index === IRQ_INDEX.REQ) {
    if (action !== ACTION_TRIGGER) throw err("ioctl", "ENOTTY");
    return setReqTrigger(host, meta, start, count, dataType, fds);
  }
  if (action !== ACTION_TRIGGER) throw err("ioctl", "ENOTTY"); // MSI/MSI-X mask/unmask: none
  return setMsiTrigger(host, meta, index, count, dataType, fds);
}

/** eventfd_ctx_fdget: EBADF for no open fd, EINVAL for a file that is not an eventfd. */
function checkEventfd(host: Sys, fd: number): void {
  let target: string;
  try {
    target = host.readlink(`/proc/self/fd/${fd}`);
  } catch {
    throw err("ioctl", "EBADF");
  }
  if (target !== "anon_inode:[eventfd]") throw err("ioctl", "EINVAL");
}

/** vfio_pci_set_msi_trigger (vfio_pci_intrs.c). */
function setMsiTrigger(
  host: Sys,
  meta: SimDeviceMeta,
  index: number,
  count: number,
  dataType: number,
  fds: number[],
): boolean {
  const armed = meta.irqType === index;
  if (armed && count === 0 && dataType === IRQ_SET.DATA_NONE) {
    delete meta.irqType; // vfio_msi_disable
    return true;
  }
  if (!armed && meta.irqType !== undefined) throw err("ioctl", "EINVAL");
  if (dataType === IRQ_SET.DATA_EVENTFD) {
    // vfio_msi_set_block: every fd >= 0 must be an eventfd (on failure the block is undone,
    // and an enable made by this call with it).
    if (!armed && count === 0) throw err("ioctl", "ERANGE"); // pci_alloc_irq_vectors(1, 0)
    for (const fd of fds) if (fd >= 0) checkEventfd(host, fd);
    if (armed) return false;
    meta.irqType = index as 1 | 2; // vfio_msi_enable
    return true;
  }
  if (!armed) throw err("ioctl", "EINVAL");
  return false; // DATA_NONE / DATA_BOOL: a loopback trigger of armed vectors
}

/** vfio_pci_set_req_trigger -> vfio_pci_set_ctx_trigger_single. */
function setReqTrigger(
  host: Sys,
  meta: SimDeviceMeta,
  start: number,
  count: number,
  dataType: number,
  fds: number[],
): boolean {
  if (start !== 0 || count > 1) throw err("ioctl", "EINVAL");
  if (dataType === IRQ_SET.DATA_NONE) {
    if (!meta.reqTrigger) throw err("ioctl", "EINVAL");
    if (count) return false; // signals it
    delete meta.reqTrigger;
    return true;
  }
  if (dataType === IRQ_SET.DATA_BOOL) {
    if (!count) throw err("ioctl", "EINVAL");
    return false; // signals it when set
  }
  if (!count) throw err("ioctl", "EINVAL");
  const fd = fds[0];
  if (fd === -1) {
    const had = !!meta.reqTrigger;
    delete meta.reqTrigger;
    return had;
  }
  if (fd >= 0) {
    checkEventfd(host, fd);
    const had = !!meta.reqTrigger;
    meta.reqTrigger = true;
    return !had;
  }
  return false; // fd < -1: ignored
}
