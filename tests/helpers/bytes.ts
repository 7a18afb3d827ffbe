// Bytes for tests that build or read streams by hand: concatenation, big-endian
// integers as the stream writes them (docs/stream-format.md), and an in-memory Source
// (src/transport/transport.ts) that reads like a file or, with a step, like a pipe.

import type { Source } from "../../src/transport/transport.ts";

/** The parts one after another, as one array; takes them as arguments or as one array. */
export function concat(...parts: Uint8Array[] | [Uint8Array[]]): Uint8Array {
  const list: Uint8Array[] = parts.length === 1 && Array.isArray(parts[0]) ? parts[0] : parts as Uint8Array[];
  const out = new Uint8Array(list.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of list) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** A big-endian u64 as 8 bytes (the stream's tags and lengths). */
export function u64be(n: bigint | number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
}

/** A big-endian u32 as 4 bytes (the stream's CRCs). */
export function u32be(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

/**
 * Bytes held in memory, read as a Source reads a file, or a pipe when `step` bounds
 * what one read hands out. `pos` (= `delivered`) counts the bytes handed out, `reads`
 * the calls.
 */
export class MemorySource implements Source {
  pos = 0;
  reads = 0;
  constructor(readonly data: Uint8Array, readonly step = Infinity, readonly label = "memory") {}
  get delivered(): number {
    return this.pos;
  }
  read(buf: Uint8Array): number {
    this.reads++;
    const n = Math.min(buf.length, this.data.length - this.pos, this.step);
    buf.set(this.data.subarray(this.pos, this.pos + n));
    this.pos += n;
    return n;
  }
  close(): void {}
}
