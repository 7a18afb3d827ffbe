// PCI configuration space: the type 0 header's registers, the standard capability list,
// and their decoding for `info`, `inspect` and messages (PCI Local Bus Specification 3.0,
// 6.2 and 6.7; Linux include/uapi/linux/pci_regs.h names). The one home of this code:
// the device layer, the config section (src/migrate/config_state.ts), `check` and the
// simulator's models use it. A leaf module: it imports nothing.

/** PCI_COMMAND, PCI_STATUS, …: register offsets in the header (pci_regs.h). */
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_STATUS_CAP_LIST = 0x10;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_BASE_ADDRESS_0 = 0x10;
export const CMD_IO = 0x1;
export const CMD_MEMORY = 0x2;
export const CAP_ID = { PM: 0x01, MSI: 0x05, VNDR: 0x09, PCIE: 0x10, MSIX: 0x11 } as const;
const CAP_NAMES: Record<number, string> = { 1: "PM", 5: "MSI", 9: "vendor", 0x10: "PCIe", 0x11: "MSI-X" };

export interface MsiInfo {
  offset: number;
  control: number;
  enabled: boolean;
  is64bit: boolean;
  maskable: boolean;
}

export interface MsixInfo {
  offset: number;
  control: number;
  entries: number;
  enabled: boolean;
  functionMask: boolean;
  table: { bar: number; offset: number };
  pba: { bar: number; offset: number };
}

/** The decoded header fields of a config space (for info, inspect and messages). */
export interface ConfigSummary {
  size: number;
  vendor: number;
  device: number;
  command: number;
  status: number;
  revision: number;
  classCode: number;
  headerType: number;
  subsystemVendor: number | null;
  subsystemDevice: number | null;
  capabilities: { id: number; name: string; offset: number }[];
  msi: MsiInfo | null;
  msix: MsixInfo | null;
  pcie: boolean;
}

export function u16(b: Uint8Array, at: number): number {
  return at + 2 <= b.length ? b[at] | (b[at + 1] << 8) : 0;
}
export function u32(b: Uint8Array, at: number): number {
  return at + 4 <= b.length ? (u16(b, at) | (u16(b, at + 2) << 16)) >>> 0 : 0;
}

/** Walks the standard capability list (bounded: a loop ends it). */
export function capabilities(cfg: Uint8Array): { id: number; name: string; offset: number }[] {
  const out: { id: number; name: string; offset: number }[] = [];
  if (cfg.length < 0x40 || !(u16(cfg, PCI_STATUS) & PCI_STATUS_CAP_LIST)) return out;
  let at = cfg[PCI_CAPABILITY_LIST] & 0xfc;
  const seen = new Set<number>();
  while (at >= 0x40 && at + 2 <= cfg.length && !seen.has(at) && out.length < 48) {
    seen.add(at);
    const id = cfg[at];
    out.push({ id, name: CAP_NAMES[id] ?? `0x${id.toString(16)}`, offset: at });
    at = cfg[at + 1] & 0xfc;
  }
  return out;
}

export function summarizeConfig(cfg: Uint8Array): ConfigSummary {
  const caps = capabilities(cfg);
  const msiCap = caps.find((c) => c.id === CAP_ID.MSI);
  const msixCap = caps.find((c) => c.id === CAP_ID.MSIX);
  let msi: MsiInfo | null = null;
  if (msiCap) {
    const control = u16(cfg, msiCap.offset + 2);
    msi = {
      offset: msiCap.offset,
      control,
      enabled: !!(control & 0x1),
      is64bit: !!(control & 0x80),
      maskable: !!(control & 0x100),
    };
  }
  let msix: MsixInfo | null = null;
  if (msixCap) {
    const control = u16(cfg, msixCap.offset + 2);
    const t = u32(cfg, msixCap.offset + 4);
    const p = u32(cfg, msixCap.offset + 8);
    msix = {
      offset: msixCap.offset,
      control,
      entries: (control & 0x7ff) + 1,
      enabled: !!(control & 0x8000),
      functionMask: !!(control & 0x4000),
      table: { bar: t & 7, offset: t & ~7 },
      pba: { bar: p & 7, offset: p & ~7 },
    };
  }
  return {
    size: cfg.length,
    vendor: u16(cfg, 0),
    device: u16(cfg, 2),
    command: u16(cfg, PCI_COMMAND),
    status: u16(cfg, PCI_STATUS),
    revision: cfg[8] ?? 0,
    classCode: (cfg[9] ?? 0) | (u16(cfg, 10) << 8),
    headerType: (cfg[0x0e] ?? 0) & 0x7f,
    subsystemVendor: cfg.length >= 0x30 ? u16(cfg, 0x2c) : null,
    subsystemDevice: cfg.length >= 0x30 ? u16(cfg, 0x2e) : null,
    capabilities: caps,
    msi,
    msix,
    pcie: caps.some((c) => c.id === CAP_ID.PCIE),
  };
}

/**
 * The offset of the 16-bit Message Control register of capability `capId` (MSI 0x05 at
 * +2, MSI-X 0x11 at +2), or null when the device lists no such capability.
 */
export function capControl(cfg: Uint8Array, capId: number): number | null {
  const c = capabilities(cfg).find((x) => x.id === capId);
  return c ? c.offset + 2 : null;
}

/** One line per decoded field, for `info` and `inspect`. */
export function describeConfig(s: ConfigSummary): string[] {
  const hex = (n: number | null, w = 4) => (n === null ? "?" : `0x${n.toString(16).padStart(w, "0")}`);
  const lines = [
    `ids ${hex(s.vendor)}:${hex(s.device)} subsystem ${hex(s.subsystemVendor)}:${hex(s.subsystemDevice)} ` +
    `rev ${hex(s.revision, 2)} class ${hex(s.classCode, 6)}`,
    `command ${hex(s.command)} (${commandBits(s.command)}) status ${hex(s.status)}, ${s.size} bytes` +
    (s.pcie ? ", PCIe" : ""),
  ];
  if (s.capabilities.length) {
    lines.push(`capabilities ${s.capabilities.map((c) => `${c.name}@${hex(c.offset, 2)}`).join(" ")}`);
  }
  if (s.msi) lines.push(`MSI ${s.msi.enabled ? "enabled" : "disabled"}${s.msi.is64bit ? ", 64-bit" : ""}`);
  if (s.msix) {
    lines.push(
      `MSI-X ${s.msix.enabled ? "enabled" : "disabled"}${s.msix.functionMask ? " (masked)" : ""}, ` +
        `${s.msix.entries} entries, table BAR${s.msix.table.bar}+${hex(s.msix.table.offset, 1)}, ` +
        `PBA BAR${s.msix.pba.bar}+${hex(s.msix.pba.offset, 1)}`,
    );
  }
  return lines;
}

function commandBits(c: number): string {
  const names: [number, string][] = [[1, "io"], [2, "mem"], [4, "master"], [0x400, "intx-off"]];
  return names.filter(([b]) => c & b).map(([, n]) => n).join(" ") || "none";
}
