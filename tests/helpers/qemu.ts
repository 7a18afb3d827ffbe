// Test helpers for QEMU migration streams: the real fixtures (tests/fixtures/qemu/,
// made by QEMU 10 and 7.2 in the kernel guest), and a builder of synthetic streams in
// QEMU's format (src/qemu/format.ts) for cases QEMU does not make on demand: several
// VFIO devices, large RAM, no description, odd records.

import { TAG } from "../../src/stream/format.ts";

export const FIXTURES = new URL("../fixtures/qemu/", import.meta.url).pathname;

/** A gzip'd fixture, whole. */
export async function fixture(name: string): Promise<Uint8Array> {
  const gz = await Deno.readFile(`${FIXTURES}${name}.gz`);
  const ds = new Blob([gz]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(ds).arrayBuffer());
}

export function be16(n: number): number[] {
  return [(n >>> 8) & 0xff, n & 0xff];
}
export function be32(n: number): number[] {
  return [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
}
export function be64(n: bigint | number): number[] {
  const v = BigInt(n);
  return [...be32(Number(v >> 32n)), ...be32(Number(v & 0xffffffffn))];
}
function str8(s: string): number[] {
  return [s.length, ...[...s].map((c) => c.charCodeAt(0))];
}

/** vfio-pci's config vmstate: version_id 2, a config space, 4 INTx levels (no MSI-X). */
export function vfioConfigVmstate(vendor: number, device: number, size: 256 | 4096 = 4096): number[] {
  const cfg = new Array(size).fill(0);
  cfg[0] = vendor & 0xff;
  cfg[1] = vendor >> 8;
  cfg[2] = device & 0xff;
  cfg[3] = device >> 8;
  cfg[4] = 0x07; // command: io mem master
  cfg[0x2c] = vendor & 0xff;
  cfg[0x2d] = vendor >> 8;
  cfg[0x2e] = device & 0xff;
  cfg[0x2f] = device >> 8;
  return [...be32(2), ...cfg, ...be32(0), ...be32(0), ...be32(0), ...be32(0)];
}

export interface SynthDevice {
  idstr: string;
  /** Data records: in each pre-copy PART, then in the END section. */
  precopy: Uint8Array[][];
  stopCopy: Uint8Array[];
  vendor?: number;
  device?: number;
  /** Its SECTION_FULL with DEV_CONFIG_STATE (default true). */
  config?: boolean;
}

export interface SynthOptions {
  devices: SynthDevice[];
  /** RAM pages (4 KiB each) in the first PART of "ram"; their content is their index. */
  ramPages?: number;
  footers?: boolean;
  description?: boolean;
  /** Other non-iterable sections, with their body bytes. */
  others?: { idstr: string; body: Uint8Array }[];
}

/**
 * A QEMU stream as QEMU 10 writes it: header, configuration, SECTION_START of ram and
 * each device, a PART per pre-copy iteration, SWITCHOVER_START, the END sections, the
 * SECTION_FULLs (others, then each device's config), EOF and the description.
 */
export function synthQemuStream(o: SynthOptions): Uint8Array {
  const out: number[] = [];
  const push = (...b: number[]) => {
    for (const x of b) out.push(x);
  };
  const bytes = (u: Uint8Array) => {
    for (const x of u) out.push(x);
  };
  const footers = o.footers ?? true;
  const footer = (id: number) => footers && push(0x7e, ...be32(id));
  push(...be32(0x5145564d), ...be32(3));
  push(0x07, ...be32(11), ...[..."pc-q35-10.0"].map((c) => c.charCodeAt(0)));
  // ram: MEM_SIZE with one block
  const ramId = 1;
  const pages = o.ramPages ?? 2;
  push(0x01, ...be32(ramId), ...str8("ram"), ...be32(0), ...be32(4));
  push(...be64(BigInt(pages * 4096) | 4n), ...str8("pc.ram"), ...be64(pages * 4096));
  push(...be64(0x10));
  footer(ramId);
  const ids = o.devices.map((_, i) => 37 + i);
  o.devices.forEach((d, i) => {
    push(0x01, ...be32(ids[i]), ...str8(d.idstr), ...be32(0), ...be32(1));
    push(...be64(TAG.DEV_SETUP_STATE), ...be64(TAG.END_OF_STATE));
    footer(ids[i]);
  });
  // ram PART: pages (a zero page, then whole pages)
  push(0x02, ...be32(ramId));
  for (let p = 0; p < pages; p++) {
    const flags = p === 0 ? 0x02 : 0x08 | 0x20;
    push(...be64(BigInt(p * 4096) | BigInt(flags)));
    if (p === 0) push(...str8("pc.ram"), 0);
    else {
      const page = new Uint8Array(4096).fill(p & 0xff);
      bytes(page);
    }
  }
  push(...be64(0x10));
  footer(ramId);
  const iterations = Math.max(0, ...o.devices.map((d) => d.precopy.length));
  for (let it = 0; it < iterations; it++) {
    o.devices.forEach((d, i) => {
      push(0x02, ...be32(ids[i]));
      for (const rec of d.precopy[it] ?? []) {
        push(...be64(TAG.DEV_DATA_STATE), ...be64(rec.length));
        bytes(rec);
      }
      push(...be64(TAG.END_OF_STATE));
      footer(ids[i]);
    });
  }
  push(0x08, ...be16(11), ...be16(0));
  push(0x03, ...be32(ramId), ...be64(0x10));
  footer(ramId);
  o.devices.forEach((d, i) => {
    push(0x03, ...be32(ids[i]));
    for (const rec of d.stopCopy) {
      push(...be64(TAG.DEV_DATA_STATE), ...be64(rec.length));
      bytes(rec);
    }
    push(...be64(TAG.END_OF_STATE));
    footer(ids[i]);
  });
  const desc: unknown[] = [];
  let sid = 100;
  for (const x of o.others ?? []) {
    push(0x04, ...be32(sid), ...str8(x.idstr), ...be32(0), ...be32(1));
    bytes(x.body);
    footer(sid++);
    desc.push({
      name: x.idstr,
      instance_id: 0,
      vmsd_name: x.idstr,
      version: 1,
      fields: [{ name: "data", type: "buffer", size: x.body.length }],
    });
  }
  o.devices.forEach((d, i) => {
    if (d.config === false) return;
    const cfg = vfioConfigVmstate(d.vendor ?? 0x4348, d.device ?? 0x3253);
    push(0x04, ...be32(ids[i]), ...str8(d.idstr), ...be32(0), ...be32(1));
    push(...be64(TAG.DEV_CONFIG_STATE), ...cfg, ...be64(TAG.END_OF_STATE));
    footer(ids[i]);
    const size = 16 + cfg.length;
    desc.push({ name: d.idstr, instance_id: 0, size, fields: [{ name: "data", size, type: "buffer" }] });
  });
  push(0x00);
  if (o.description ?? true) {
    const json = new TextEncoder().encode(JSON.stringify({ page_size: 4096, devices: desc }));
    push(0x06, ...be32(json.length));
    bytes(json);
  }
  return new Uint8Array(out);
}

/** Bytes 0, 1, 2, … of length n, starting at `from`. */
export function counting(n: number, from = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);
}
