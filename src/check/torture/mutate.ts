// Resume-data mutations: each case is the device's own saved state (the original)
// changed in one way, described as pieces (ranges of the original, or new bytes), so
// that a state of any size is fed without being held in memory. Where the format is
// known (the simulator's models; mtty's, samples/vfio-mdev/mtty.c: a 24-byte header
// {u64 magic, u32 major, u32 minor, u32 nr_ports, u32 flags} then per port struct
// serial_port {u8 uart_reg[8]; u8 fifo[16]; u8 head, tail, count; bool dlab, overrun;
// u16 divisor; u8 fcr, max_fifo_size, intr_trigger_level}), its fields get values at
// their boundaries first. The kernel lab's test variant driver
// (tests/kernel/ivshmem_mig/ivshmem_vfio_pci.c) has a known format too: a 16-byte header
// {u32 magic "IVMG", u32 version 1, u32 mem_bytes, u32 chunk_bytes}, then records of a
// 16-byte head {u32 type, u32 offset, u32 length, u32 0} and length bytes.

import { MTTY_MAGIC, MTTY_PORT_SIZE } from "../../sim/models.ts";
import type { Rng } from "./rng.ts";

/** A range of the original, new bytes, or one original byte XOR a mask. */
export type Piece = { orig: [number, number] } | { bytes: Uint8Array } | { flip: [number, number] };

export interface Mutation {
  /** What was changed, for the report ("nr_ports = 0xffffffff", "bit 3 of byte 17 flipped"). */
  name: string;
  pieces: Piece[];
}

export interface Field {
  name: string;
  offset: number;
  /** Bytes: 1, 2, 4 or 8 (little-endian). */
  width: number;
}

const BULK_MAGIC = 0x4b4c55424d494656n;
const XE_MAGIC = 0x46564558564d4946n;
const MAX_FIELD_PORTS = 4;
const IVMG_MAGIC = 0x474d5649;

/** The fields of a known format, from the state's first bytes; [] when unknown. */
export function knownFields(head: Uint8Array, size: number): { format: string; fields: Field[]; header: number } {
  if (head.length < 8) return { format: "unknown", fields: [], header: 0 };
  const magic = new DataView(head.buffer, head.byteOffset, head.byteLength).getBigUint64(0, true);
  if (magic === MTTY_MAGIC) {
    const fields: Field[] = [
      { name: "magic", offset: 0, width: 8 },
      { name: "major", offset: 8, width: 4 },
      { name: "minor", offset: 12, width: 4 },
      { name: "nr_ports", offset: 16, width: 4 },
      { name: "flags", offset: 20, width: 4 },
    ];
    const ports = Math.min(MAX_FIELD_PORTS, Math.floor((size - 24) / MTTY_PORT_SIZE));
    for (let p = 0; p < ports; p++) {
      const at = 24 + p * MTTY_PORT_SIZE;
      const f = (name: string, off: number, width: number) =>
        fields.push({ name: `port[${p}].${name}`, offset: at + off, width });
      f("rxtx.head", 24, 1);
      f("rxtx.tail", 25, 1);
      f("rxtx.count", 26, 1);
      f("dlab", 27, 1);
      f("divisor", 30, 2);
      f("max_fifo_size", 33, 1);
      f("intr_trigger_level", 34, 1);
    }
    return { format: "mtty", fields, header: 24 };
  }
  if (Number(magic & 0xffffffffn) === IVMG_MAGIC && magic >> 32n === 1n) {
    const rec = (name: string, at: number): Field[] => [
      { name: `${name}.type`, offset: at, width: 4 },
      { name: `${name}.offset`, offset: at + 4, width: 4 },
      { name: `${name}.length`, offset: at + 8, width: 4 },
    ];
    return {
      format: "ivshmem_vfio_pci (kernel lab)",
      header: 16,
      fields: [
        { name: "magic", offset: 0, width: 4 },
        { name: "version", offset: 4, width: 4 },
        { name: "mem_bytes", offset: 8, width: 4 },
        { name: "chunk_bytes", offset: 12, width: 4 },
        ...rec("record[0]", 16),
      ].filter((f) => f.offset + f.width <= size),
    };
  }
  if (magic === BULK_MAGIC) {
    return {
      format: "vfio-mig-sim bulk",
      header: 32,
      fields: [
        { name: "magic", offset: 0, width: 8 },
        { name: "version", offset: 8, width: 4 },
        { name: "flags", offset: 12, width: 4 },
        { name: "size", offset: 16, width: 8 },
        { name: "record.offset", offset: 32, width: 8 },
        { name: "record.length", offset: 40, width: 8 },
      ].filter((f) => f.offset + f.width <= size),
    };
  }
  if (magic === XE_MAGIC) {
    return {
      format: "xe (simulated)",
      header: 32,
      fields: [
        { name: "magic", offset: 0, width: 8 },
        { name: "version", offset: 8, width: 4 },
        { name: "seed", offset: 12, width: 4 },
        { name: "size", offset: 16, width: 8 },
      ],
    };
  }
  return { format: "unknown", fields: [], header: 0 };
}

function le(value: bigint, width: number): Uint8Array {
  const b = new Uint8Array(width);
  let v = BigInt.asUintN(width * 8, value);
  for (let i = 0; i < width; i++) {
    b[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return b;
}

function readLe(head: Uint8Array, f: Field): bigint {
  let v = 0n;
  for (let i = f.width - 1; i >= 0; i--) v = (v << 8n) | BigInt(head[f.offset + i] ?? 0);
  return v;
}

/** The original with `bytes` in place of its bytes at `at`. */
export function patch(size: number, at: number, bytes: Uint8Array): Piece[] {
  const out: Piece[] = [];
  if (at > 0) out.push({ orig: [0, Math.min(at, size)] });
  out.push({ bytes });
  const end = at + bytes.length;
  if (end < size) out.push({ orig: [end, size - end] });
  return out;
}

function hexv(v: bigint): string {
  return `0x${v.toString(16)}`;
}

/**
 * The structured cases, in order: truncations and extensions at the format's edges,
 * then each known field at its boundary values.
 */
export function structuredCases(head: Uint8Array, size: number): Mutation[] {
  const out: Mutation[] = [];
  const { fields, header } = knownFields(head, size);
  const edges = header ? [header - 1, header, header + 1] : [8, 16, 24, 32];
  const cuts = new Set([0, 1, ...edges, size >> 1, size - 1].filter((c) => c >= 0 && c < size));
  for (const c of [...cuts].sort((a, b) => a - b)) {
    out.push({ name: `truncated to ${c} bytes`, pieces: c ? [{ orig: [0, c] }] : [] });
  }
  out.push({ name: "1 byte appended", pieces: [{ orig: [0, size] }, { bytes: new Uint8Array([0x5a]) }] });
  out.push({ name: "the state twice", pieces: [{ orig: [0, size] }, { orig: [0, size] }] });
  // Another device's stream: an mtty with another number of ports (its header and ports).
  const ownPorts = Math.floor((size - 24) / MTTY_PORT_SIZE);
  if (knownFields(head, size).format === "mtty" && ownPorts >= 1) {
    for (let k = 1; k <= 4; k++) {
      if (k === ownPorts) continue;
      const h = head.slice(0, 24);
      new DataView(h.buffer).setUint32(16, k, true);
      const ports: Piece[] = Array.from({ length: k }, () => ({ orig: [24, MTTY_PORT_SIZE] as [number, number] }));
      out.push({
        name: `another device's stream: an mtty with ${k} port${k > 1 ? "s" : ""}`,
        pieces: [{ bytes: h }, ...ports],
      });
    }
  }
  for (const f of fields) {
    const max = (1n << BigInt(f.width * 8)) - 1n;
    const cur = readLe(head, f);
    const values = [0n, 1n, max, max - 1n, 1n << BigInt(f.width * 8 - 1), cur + 1n, cur - 1n];
    if (f.width >= 4) values.push(0x10000n, 0x7fffffffn);
    if (f.width === 1) values.push(15n, 16n, 17n, 0x7fn);
    const seen = new Set<bigint>([cur]);
    for (const v0 of values) {
      const v = BigInt.asUintN(f.width * 8, v0);
      if (seen.has(v)) continue;
      seen.add(v);
      out.push({ name: `${f.name} = ${hexv(v)} (was ${hexv(cur)})`, pieces: patch(size, f.offset, le(v, f.width)) });
    }
  }
  return out;
}

const RANDOM_KINDS = [
  "bitflip",
  "byte",
  "zeroed",
  "all-ones",
  "repeated",
  "reordered",
  "random",
  "truncated",
  "extended",
  "split-writes",
] as const;

/** A random case from `rng` (the same seed gives the same case). Inline bytes stay below 64 KiB. */
export function randomCase(rng: Rng, size: number): Mutation {
  const kind = rng.pick(RANDOM_KINDS);
  const at = rng.int(Math.max(1, size));
  const span = () => 1 + rng.int(Math.min(4096, Math.max(1, size - at)));
  switch (kind) {
    case "bitflip": {
      const bit = rng.int(8);
      return { name: `bit ${bit} of byte ${at} flipped`, pieces: flip(size, at, 1 << bit) };
    }
    case "byte": {
      const v = rng.int(256);
      return { name: `byte ${at} set to 0x${v.toString(16)}`, pieces: patch(size, at, new Uint8Array([v])) };
    }
    case "zeroed": {
      const n = Math.min(span(), size - at);
      return { name: `${n} bytes zeroed at ${at}`, pieces: patch(size, at, new Uint8Array(n)) };
    }
    case "all-ones": {
      const n = Math.min(span(), size - at);
      return { name: `${n} bytes set to 0xff at ${at}`, pieces: patch(size, at, new Uint8Array(n).fill(0xff)) };
    }
    case "repeated": {
      const n = Math.min(span(), size - at);
      return {
        name: `bytes ${at}..${at + n} repeated`,
        pieces: [
          { orig: [0, at + n] },
          { orig: [at, n] },
          ...(at + n < size ? [{ orig: [at + n, size - at - n] as [number, number] }] : []),
        ],
      };
    }
    case "reordered": {
      const n = Math.max(1, Math.min(span(), Math.floor((size - at) / 2)));
      if (at + 2 * n > size) return { name: "the state as saved (split at 1 byte)", pieces: splitAll(size, [1]) };
      const rest: Piece[] = at + 2 * n < size ? [{ orig: [at + 2 * n, size - at - 2 * n] }] : [];
      return {
        name: `bytes ${at}..${at + n} and ${at + n}..${at + 2 * n} swapped`,
        pieces: [
          ...(at ? [{ orig: [0, at] as [number, number] }] : []),
          { orig: [at + n, n] },
          { orig: [at, n] },
          ...rest,
        ],
      };
    }
    case "random": {
      const n = Math.min(size, 65536);
      return { name: `${n} random bytes`, pieces: [{ bytes: rng.bytes(n) }] };
    }
    case "truncated":
      return { name: `truncated to ${at} bytes`, pieces: at ? [{ orig: [0, at] }] : [] };
    case "extended": {
      const n = 1 + rng.int(4096);
      return { name: `${n} random bytes appended`, pieces: [{ orig: [0, size] }, { bytes: rng.bytes(n) }] };
    }
    case "split-writes": {
      const sizes = [1 + rng.int(7), 1 + rng.int(64), 4095, 4097];
      return { name: `the state as saved, in writes of ${sizes.join("/")} bytes`, pieces: splitAll(size, sizes) };
    }
  }
}

/** Bit `mask` of byte `at` flipped (the engine reads the original byte). */
function flip(size: number, at: number, mask: number): Piece[] {
  const out: Piece[] = [];
  if (at > 0) out.push({ orig: [0, at] });
  out.push({ flip: [at, mask] });
  if (at + 1 < size) out.push({ orig: [at + 1, size - at - 1] });
  return out;
}

/** The original in writes of the given sizes (cycled). */
function splitAll(size: number, sizes: number[]): Piece[] {
  const out: Piece[] = [];
  for (let off = 0, i = 0; off < size; i++) {
    const n = Math.min(sizes[i % sizes.length], size - off);
    out.push({ orig: [off, n] });
    off += n;
    if (out.length > 4096) {
      out.push({ orig: [off, size - off] });
      break;
    }
  }
  return out;
}
