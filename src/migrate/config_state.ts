// The DEV_CONFIG_STATE section (QEMU's vfio_save_config / vfio_pci_load_config): the
// kernel's device blob holds neither PCI config space nor the command register nor
// the MSI/MSI-X programming (reference §2.4), so a save carries them beside it.
//
// Payload (big-endian header, then the device's own little-endian bytes):
//   0  "PCFG"   4  be16 version 1   6  be16 flags (bit0 MSI-X table, bit1 PBA)
//   8  be32 config bytes   12 be16 MSI-X entries   14 be16 0
//   16 be32 table bytes    20 be32 PBA bytes
//   24 config space as read through the VFIO config region (256 or 4096 bytes;
//      mtty's region is 255), then the MSI-X table (16 bytes an entry) and the PBA
//      ((entries + 7) / 8 bytes, as hw/pci/msix.c msix_save) read through their BARs.

import { Errno, SysError } from "../../ffi/errno.ts";
import { PCI_REGION } from "../../ffi/vfio_uapi.ts";
import type { VfioDevice } from "../device/open.ts";
import { StreamError, VfioMigError } from "../errors.ts";
import { getRegionInfo } from "../vfio/regions.ts";
import { CMD_IO, CMD_MEMORY, PCI_BASE_ADDRESS_0, PCI_COMMAND, summarizeConfig } from "../pci/config.ts";

// PCI config space decoding has its home in src/pci/config.ts; these names stay
// reachable here for the code that took them from this module.
export {
  CAP_ID,
  capabilities,
  type ConfigSummary,
  describeConfig,
  type MsiInfo,
  type MsixInfo,
  summarizeConfig,
} from "../pci/config.ts";

export const CONFIG_MAGIC = "PCFG";
export const CONFIG_VERSION = 1;
export const CONFIG_HEADER = 24;
const FLAG_TABLE = 1;
const FLAG_PBA = 2;

export interface ConfigState {
  config: Uint8Array;
  msixTable: Uint8Array | null;
  pba: Uint8Array | null;
}

/** Reads `len` bytes at `offset` of BAR `bar`, or null when the BAR cannot be read. */
function readBar(d: VfioDevice, bar: number, offset: number, len: number): Uint8Array | null {
  try {
    const r = getRegionInfo(d.sys, d.fd, bar);
    if (offset + len > r.size) return null;
    const b = new Uint8Array(len);
    let got = 0;
    while (got < len) {
      const n = d.sys.pread(d.fd, b.subarray(got), r.offset + offset + got);
      if (n === 0) return null;
      got += n;
    }
    return b;
  } catch (e) {
    // No such region or not readable (EINVAL, ENOTTY): left out. An I/O error is a failure.
    if (e instanceof SysError && (e.errno === Errno.EINVAL || e.errno === Errno.ENOTTY)) return null;
    throw e;
  }
}

/** vfio_save_config: config space, and the MSI-X table and PBA where the device has them. Null without a config region. */
export function readConfigState(d: VfioDevice): ConfigState | null {
  const config = d.readConfig();
  if (!config) return null;
  const s = summarizeConfig(config);
  let msixTable: Uint8Array | null = null;
  let pba: Uint8Array | null = null;
  if (s.msix) {
    msixTable = readBar(d, s.msix.table.bar, s.msix.table.offset, s.msix.entries * 16);
    pba = readBar(d, s.msix.pba.bar, s.msix.pba.offset, Math.ceil(s.msix.entries / 8));
  }
  return { config: config.slice(), msixTable, pba };
}

export function encodeConfigState(c: ConfigState): Uint8Array {
  const tLen = c.msixTable?.length ?? 0;
  const pLen = c.pba?.length ?? 0;
  const out = new Uint8Array(CONFIG_HEADER + c.config.length + tLen + pLen);
  const v = new DataView(out.buffer);
  out.set(new TextEncoder().encode(CONFIG_MAGIC), 0);
  v.setUint16(4, CONFIG_VERSION);
  v.setUint16(6, (c.msixTable ? FLAG_TABLE : 0) | (c.pba ? FLAG_PBA : 0));
  v.setUint32(8, c.config.length);
  v.setUint16(12, c.msixTable ? tLen / 16 : 0);
  v.setUint32(16, tLen);
  v.setUint32(20, pLen);
  out.set(c.config, CONFIG_HEADER);
  if (c.msixTable) out.set(c.msixTable, CONFIG_HEADER + c.config.length);
  if (c.pba) out.set(c.pba, CONFIG_HEADER + c.config.length + tLen);
  return out;
}

export function decodeConfigState(b: Uint8Array): ConfigState {
  const bad = (why: string) => new StreamError(`bad DEV_CONFIG_STATE section: ${why}`);
  if (b.length < CONFIG_HEADER) throw bad(`${b.length} bytes is shorter than its header`);
  if (new TextDecoder().decode(b.subarray(0, 4)) !== CONFIG_MAGIC) throw bad("no PCFG magic");
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const version = v.getUint16(4);
  if (version !== CONFIG_VERSION) throw bad(`version ${version} (this vfio-mig reads ${CONFIG_VERSION})`);
  const flags = v.getUint16(6);
  const cLen = v.getUint32(8);
  const entries = v.getUint16(12);
  const tLen = v.getUint32(16);
  const pLen = v.getUint32(20);
  if (cLen < 0x40 || cLen > 4096) throw bad(`config space of ${cLen} bytes`);
  if (tLen !== (flags & FLAG_TABLE ? entries * 16 : 0)) throw bad("MSI-X table length does not match its entries");
  if (!(flags & FLAG_PBA) && pLen !== 0) throw bad("PBA length without a PBA");
  if (CONFIG_HEADER + cLen + tLen + pLen !== b.length) throw bad("lengths do not add up to the section size");
  const at = CONFIG_HEADER;
  return {
    config: b.slice(at, at + cLen),
    msixTable: flags & FLAG_TABLE ? b.slice(at + cLen, at + cLen + tLen) : null,
    pba: flags & FLAG_PBA ? b.slice(at + cLen + tLen, at + cLen + tLen + pLen) : null,
  };
}

/** Refuses a config section from another kind of device. */
export function checkConfigIdentity(saved: ConfigState, d: VfioDevice): void {
  const dest = d.readConfig();
  if (!dest) {
    throw new VfioMigError(`${d.label} has no config region, but the stream carries config space`, "stream");
  }
  const a = summarizeConfig(saved.config);
  const b = summarizeConfig(dest);
  if (a.vendor !== b.vendor || a.device !== b.device) {
    const hex = (n: number) => `0x${n.toString(16).padStart(4, "0")}`;
    throw new VfioMigError(
      `wrong device: the stream's config space is from a ${hex(a.vendor)}:${hex(a.device)} device, ` +
        `${d.label} is ${hex(b.vendor)}:${hex(b.device)}`,
      "stream",
    );
  }
}

/** What restoreConfigState wrote, for reports and tests. */
export interface ConfigRestore {
  command: number;
  msiEnabled: boolean | null;
  msixEnabled: boolean | null;
  msixTable: boolean;
  /**
   * What the device did not take, read back after the restore, one sentence each (empty
   * when everything the section carries is there). On vfio-pci (drivers/vfio/pci/
   * vfio_pci_config.c, vfio_pci_rdwr.c): the MSI enable bit stays clear unless this fd
   * armed MSI with VFIO_DEVICE_SET_IRQS (vfio_msi_config_write), the MSI-X capability is
   * read-only (its enable follows SET_IRQS), and the MSI-X table is hidden from region
   * reads and writes (0xff bytes read, writes dropped): the VMM emulates it.
   */
  notRestored: string[];
}

const allOnes = (b: Uint8Array) => b.every((x) => x === 0xff);

/**
 * vfio_pci_load_config, standalone: the command register with I/O and memory off,
 * the BARs, MSI (address, data, control) and MSI-X (table, control), then the saved
 * command register. What vfio-pci virtualizes (enable bits) is restored in its view
 * of config space; arming interrupts (SET_IRQS with eventfds) is the consumer's.
 */
export function restoreConfigState(saved: ConfigState, d: VfioDevice): ConfigRestore {
  const ri = getRegionInfo(d.sys, d.fd, PCI_REGION.CONFIG);
  const cfg = saved.config;
  const limit = Math.min(cfg.length, ri.size);
  const put = (at: number, len: number, what: string) => {
    if (at + len > limit) return;
    try {
      const n = d.sys.pwrite(d.fd, cfg.subarray(at, at + len), ri.offset + at);
      if (n !== len) throw new SysError("pwrite", Errno.EIO, `${n} of ${len} bytes`);
    } catch (e) {
      throw new VfioMigError(
        `${d.label}: restoring ${what} in config space failed: ${(e as Error).message}`,
        "failure",
        {
          cause: e,
        },
      );
    }
  };
  const s = summarizeConfig(cfg);
  const cmdOff = new Uint8Array([cfg[PCI_COMMAND] & ~(CMD_IO | CMD_MEMORY), cfg[PCI_COMMAND + 1]]);
  try {
    d.sys.pwrite(d.fd, cmdOff, ri.offset + PCI_COMMAND);
  } catch (e) {
    throw new VfioMigError(`${d.label}: writing the command register failed: ${(e as Error).message}`, "failure", {
      cause: e,
    });
  }
  if (s.headerType === 0) {
    for (let i = 0; i < 6; i++) put(PCI_BASE_ADDRESS_0 + 4 * i, 4, `BAR${i}`);
  }
  if (s.msi) {
    const m = s.msi;
    put(m.offset + 4, 4, "the MSI address");
    if (m.is64bit) put(m.offset + 8, 4, "the MSI upper address");
    put(m.offset + (m.is64bit ? 12 : 8), 2, "the MSI data");
    put(m.offset + 2, 2, "the MSI control");
  }
  let tableRestored = false;
  if (s.msix) {
    if (saved.msixTable) {
      try {
        const r = getRegionInfo(d.sys, d.fd, s.msix.table.bar);
        d.sys.pwrite(d.fd, saved.msixTable, r.offset + s.msix.table.offset);
        tableRestored = true;
      } catch (e) {
        // No such BAR region, or not writable (EINVAL, ENOTTY): skipped. An I/O error fails.
        if (!(e instanceof SysError)) throw e;
        if (e.errno !== Errno.EINVAL && e.errno !== Errno.ENOTTY) {
          throw new VfioMigError(`${d.label}: restoring the MSI-X table failed: ${e.message}`, "failure", { cause: e });
        }
      }
    }
    put(s.msix.offset + 2, 2, "the MSI-X control");
  }
  put(PCI_COMMAND, 2, "the command register");
  // Read back: what the device took (vfio-pci drops some of it without an error).
  const now = d.readConfig();
  const t = now ? summarizeConfig(now) : null;
  const notRestored: string[] = [];
  if (s.msi?.enabled && !t?.msi?.enabled) {
    notRestored.push(
      "MSI enable: vfio-pci keeps it only for an fd that armed MSI (VFIO_DEVICE_SET_IRQS); " +
        "the fd's user arms it, as QEMU's vfio_pci_load_config does",
    );
  }
  if (s.msix?.enabled && !t?.msix?.enabled) {
    notRestored.push(
      "MSI-X enable: read-only in vfio-pci's config space; it follows VFIO_DEVICE_SET_IRQS (MSI-X) by the fd's user",
    );
  }
  if (s.msix && saved.msixTable) {
    const back = readBar(d, s.msix.table.bar, s.msix.table.offset, saved.msixTable.length);
    if (allOnes(saved.msixTable) || !back || back.some((x, i) => x !== saved.msixTable![i])) {
      tableRestored = false;
      notRestored.push(
        "MSI-X table: vfio-pci hides it from userspace (0xff bytes read, writes dropped); the VMM emulates it",
      );
    }
  }
  return {
    command: t?.command ?? s.command,
    msiEnabled: s.msi ? !!t?.msi?.enabled : null,
    msixEnabled: s.msix ? !!t?.msix?.enabled : null,
    msixTable: tableRestored,
    notRestored,
  };
}
