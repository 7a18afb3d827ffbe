// QEMU's DEV_CONFIG_STATE payload: what vfio_pci_save_config writes between the
// DEV_CONFIG_STATE tag and END_OF_STATE (hw/vfio/pci.c), the vmstate "VFIOPCIDevice"
// version 1 with no length framing of its own:
//   PCIDevice (hw/pci/pci.c vmstate_pci_device, version 2):
//     be32 version_id | config space: 256 bytes, or 4096 for a PCI Express device |
//     irq_state: 4 x be32 (INTx A-D)
//   MSI-X, when the device has it (hw/pci/msix.c msix_save): the table, 16 bytes an
//     entry, then the PBA, (entries + 7) / 8 bytes; the number of entries is the
//     table size in the MSI-X capability of the config space above
//   subsections (0x05 | u8 n | name | be32 version | body), e.g. VFIOPCIDevice/VFIODisplay
// Whether the config space is 256 or 4096 bytes is not in the stream (QEMU knows it from
// the device's bus): the payload's length tells, or, without it, where END_OF_STATE is.

import { StreamError } from "../errors.ts";
import { type ConfigState, type ConfigSummary, describeConfig, summarizeConfig } from "../migrate/config_state.ts";
import { TAG } from "../stream/format.ts";
import { SECTION } from "./format.ts";

export const PCI_CONFIG_SPACE_SIZE = 256;
export const PCIE_CONFIG_SPACE_SIZE = 4096;
const PCI_NUM_PINS = 4;

export interface QemuVfioConfig {
  /** PCIDevice's own version_id field (QEMU writes 2). */
  pciVersionId: number;
  /** QEMU's emulated config space, as it was saved. */
  config: Uint8Array;
  express: boolean;
  /** INTx A-D levels. */
  irqState: number[];
  msixTable: Uint8Array | null;
  pba: Uint8Array | null;
  /** Subsections after the fields: name, version and body bytes. */
  subsections: { name: string; version: number; bytes: number }[];
  summary: ConfigSummary;
}

/** MSI-X table entries of a config space (0 without the capability). */
function msixEntries(config: Uint8Array): number {
  return summarizeConfig(config.subarray(0, PCI_CONFIG_SPACE_SIZE)).msix?.entries ?? 0;
}

/** Bytes of the fields (everything before any subsection) for a config space of `configSize`. */
export function fieldsLength(first256: Uint8Array, configSize: number): number {
  const n = msixEntries(first256);
  return 4 + configSize + 4 * PCI_NUM_PINS + (n ? n * 16 + Math.ceil(n / 8) : 0);
}

function isEndOfState(b: Uint8Array, at: number): boolean {
  if (at + 8 > b.length) return false;
  return new DataView(b.buffer, b.byteOffset + at, 8).getBigUint64(0) === TAG.END_OF_STATE;
}

/**
 * The payload's length, found from its own structure in `b` (the bytes after the
 * DEV_CONFIG_STATE tag, as many as are at hand): the config-space size whose fields
 * are followed by END_OF_STATE. Null when neither fits (or a subsection follows: its
 * length needs the VM description).
 */
export function findPayloadLength(b: Uint8Array): number | null {
  if (b.length < 4 + PCI_CONFIG_SPACE_SIZE) return null;
  const first = b.subarray(4, 4 + PCI_CONFIG_SPACE_SIZE);
  for (const size of [PCIE_CONFIG_SPACE_SIZE, PCI_CONFIG_SPACE_SIZE]) {
    const len = fieldsLength(first, size);
    if (isEndOfState(b, len)) return len;
  }
  return null;
}

/**
 * Decodes a payload whose length is known (the bytes between DEV_CONFIG_STATE and
 * END_OF_STATE). Throws a StreamError (at `offset`) when it is not vfio-pci's vmstate.
 */
export function decodeVfioConfig(p: Uint8Array, offset = 0): QemuVfioConfig {
  const bad = (why: string) =>
    new StreamError(`the DEV_CONFIG_STATE payload is not vfio-pci's vmstate: ${why}`, offset);
  if (p.length < fieldsLength(new Uint8Array(0), PCI_CONFIG_SPACE_SIZE)) {
    throw bad(`${p.length} bytes is shorter than a PCI device's state`);
  }
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const first = p.subarray(4, 4 + PCI_CONFIG_SPACE_SIZE);
  // The config-space size whose fields end where the payload ends or a subsection starts.
  let express: boolean | null = null;
  for (const size of [PCIE_CONFIG_SPACE_SIZE, PCI_CONFIG_SPACE_SIZE]) {
    const len = fieldsLength(first, size);
    if (len === p.length || (len < p.length && p[len] === SECTION.SUBSECTION && express === null)) {
      express = size === PCIE_CONFIG_SPACE_SIZE;
      if (len === p.length) break;
    }
  }
  if (express === null) throw bad(`${p.length} bytes fit neither a 256- nor a 4096-byte config space`);
  const cfgSize = express ? PCIE_CONFIG_SPACE_SIZE : PCI_CONFIG_SPACE_SIZE;
  const pciVersionId = v.getInt32(0);
  const config = p.slice(4, 4 + cfgSize);
  let at = 4 + cfgSize;
  const irqState: number[] = [];
  for (let i = 0; i < PCI_NUM_PINS; i++, at += 4) irqState.push(v.getInt32(at));
  const n = msixEntries(first);
  let msixTable: Uint8Array | null = null;
  let pba: Uint8Array | null = null;
  if (n) {
    msixTable = p.slice(at, at + n * 16);
    at += n * 16;
    pba = p.slice(at, at + Math.ceil(n / 8));
    at += Math.ceil(n / 8);
  }
  const subsections: QemuVfioConfig["subsections"] = [];
  if (at < p.length) {
    // Only the first subsection's extent is unknown without its description: name it,
    // and count the rest of the payload as its body.
    if (p[at] !== SECTION.SUBSECTION || at + 2 > p.length || at + 2 + p[at + 1] + 4 > p.length) {
      throw bad(`${p.length - at} bytes after the fields are not a subsection`);
    }
    const nameLen = p[at + 1];
    const name = String.fromCharCode(...p.subarray(at + 2, at + 2 + nameLen));
    const version = v.getUint32(at + 2 + nameLen);
    subsections.push({ name, version, bytes: p.length - (at + 2 + nameLen + 4) });
  }
  return { pciVersionId, config, express, irqState, msixTable, pba, subsections, summary: summarizeConfig(config) };
}

/**
 * The same state in vfio-mig's own DEV_CONFIG_STATE encoding (src/migrate/config_state.ts),
 * so that load restores it as it restores a vfio-mig save: config space, MSI-X table, PBA.
 */
export function toConfigState(c: QemuVfioConfig): ConfigState {
  return { config: c.config.slice(), msixTable: c.msixTable?.slice() ?? null, pba: c.pba?.slice() ?? null };
}

/** Lines for inspect: the decoded config space, IRQ state, MSI-X and subsections. */
export function describeVfioConfig(c: QemuVfioConfig): string[] {
  const lines = describeConfig(c.summary);
  lines.push(
    `vmstate: PCIDevice version_id ${c.pciVersionId}, ${c.express ? "PCI Express" : "conventional"} config space ` +
      `(${c.config.length} bytes), INTx levels ${c.irqState.join(" ")}`,
  );
  if (c.msixTable) {
    const masked = countMasked(c.msixTable);
    lines.push(
      `MSI-X table ${c.msixTable.length / 16} entries (${masked} masked), PBA ${c.pba?.length ?? 0} bytes`,
    );
  }
  for (const s of c.subsections) lines.push(`subsection ${s.name} version ${s.version}, ${s.bytes} bytes`);
  return lines;
}

/** Entries whose vector control has the mask bit (bit 0 of the dword at +12). */
function countMasked(table: Uint8Array): number {
  let n = 0;
  for (let i = 0; i + 16 <= table.length; i += 16) if (table[i + 12] & 1) n++;
  return n;
}
