// Writes a vfio-mig stream to a Sink. Data chunks are read by the caller straight
// into chunkBuffer()'s payload area, behind room for the chunk header, so each chunk
// leaves in one write with no copy.

import type { Sink } from "../transport/transport.ts";
import {
  CHUNK_HEADER,
  crc32,
  DEFAULT_CHUNK,
  deviceTag,
  encodeHeader,
  encodeTrailer,
  type StreamHeader,
  TAG,
} from "./format.ts";

export class StreamWriter {
  readonly #sink: Sink;
  readonly #buf: Uint8Array;
  readonly #view: DataView;
  #dataBytes = 0;
  #chunks = 0;
  #dataCrc = 0;
  #tag = new Uint8Array(8);
  /** Bytes written to the sink so far. */
  written = 0;

  /**
   * `devices`: how many devices the stream carries; with more than one, selectDevice()
   * writes DEVICE tags (docs/stream-format.md, "Several devices").
   */
  constructor(sink: Sink, chunkSize = DEFAULT_CHUNK, readonly devices = 1) {
    this.#sink = sink;
    this.#buf = new Uint8Array(CHUNK_HEADER + chunkSize);
    this.#view = new DataView(this.#buf.buffer);
  }

  get dataBytes(): number {
    return this.#dataBytes;
  }

  /** DEV_DATA_STATE chunks written so far. */
  get chunks(): number {
    return this.#chunks;
  }

  /** Where the next chunk's bytes go (read into it, then call data(n)). */
  get payload(): Uint8Array {
    return this.#buf.subarray(CHUNK_HEADER);
  }

  /** Waits while a network sink has too much queued (a no-op for files and pipes). */
  flowControl(): Promise<void> | void {
    return this.#sink.flowControl?.();
  }

  #out(b: Uint8Array): void {
    this.#sink.write(b);
    this.written += b.length;
  }

  header(h: StreamHeader): void {
    this.#out(encodeHeader(h));
  }

  #device = -1;
  #deviceWritten = -1;

  /**
   * Multi-device streams: the device the following records belong to. A DEVICE tag is
   * written before the next record whenever it differs from the last one written. A
   * no-op for a single-device stream, which therefore has no DEVICE tag.
   */
  selectDevice(i: number): void {
    if (this.devices > 1) this.#device = i;
  }

  #select(): void {
    if (this.#device === this.#deviceWritten) return;
    this.#deviceWritten = this.#device;
    new DataView(this.#tag.buffer).setBigUint64(0, deviceTag(this.#device));
    this.#out(this.#tag);
  }

  tag(t: bigint): void {
    this.#select();
    new DataView(this.#tag.buffer).setBigUint64(0, t);
    this.#out(this.#tag);
  }

  /** Emits the first n bytes of payload as a DEV_DATA_STATE chunk. */
  data(n: number): void {
    this.#chunk(TAG.DEV_DATA_STATE, n);
    this.#dataBytes += n;
    this.#chunks++;
  }

  /**
   * A DEV_DATA_STATE chunk whose payload is `parts` in order, written straight from
   * them (views of an mmap'd region leave through the syscall without a copy).
   * Nothing may unmap a part before this returns.
   */
  dataParts(parts: readonly Uint8Array[]): void {
    let n = 0;
    let c = 0;
    for (const p of parts) {
      n += p.length;
      c = crc32(p, c);
    }
    this.#select();
    this.#view.setBigUint64(0, TAG.DEV_DATA_STATE);
    this.#view.setBigUint64(8, BigInt(n));
    this.#view.setUint32(16, c);
    this.#out(this.#buf.subarray(0, CHUNK_HEADER));
    for (const p of parts) if (p.length) this.#out(p);
    this.#dataCrc = crc32Combine(this.#dataCrc, c, n); // c covers all parts: no second pass
    this.#dataBytes += n;
    this.#chunks++;
  }

  /** A sized record (data or config) whose bytes are given. */
  sized(tag: bigint, bytes: Uint8Array): void {
    this.payload.set(bytes);
    this.#chunk(tag, bytes.length);
  }

  #chunk(tag: bigint, n: number): void {
    this.#select();
    const payload = this.#buf.subarray(CHUNK_HEADER, CHUNK_HEADER + n);
    const c = crc32(payload);
    this.#view.setBigUint64(0, tag);
    this.#view.setBigUint64(8, BigInt(n));
    this.#view.setUint32(16, c);
    if (tag === TAG.DEV_DATA_STATE) this.#dataCrc = crc32Combine(this.#dataCrc, c, n); // no second pass
    this.#out(this.#buf.subarray(0, CHUNK_HEADER + n));
  }

  end(): void {
    this.#out(encodeTrailer({ dataBytes: this.#dataBytes, chunks: this.#chunks, dataCrc: this.#dataCrc }));
  }
}

// crc32(A || B) from crc32(A), crc32(B) and B's length (zlib's crc32_combine, in the
// x^(2^k) mod p form of zlib 1.2.12+), so each chunk is checksummed in one pass: the
// chunk's own CRC is folded into the running CRC of all data in ~32 steps.
const CRC_POLY = 0xedb88320;

/** a(x) * b(x) mod p(x), in the reflected bit order of zlib's CRC-32. */
function multmodp(a: number, b: number): number {
  let p = 0;
  for (let m = 0x80000000; m !== 0; m >>>= 1) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    b = b & 1 ? (b >>> 1) ^ CRC_POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) mod p(x), k = 0..31. */
const X2N: number[] = (() => {
  const t: number[] = [];
  let p = 0x40000000; // x^1
  for (let k = 0; k < 32; k++) {
    t.push(p);
    p = multmodp(p, p);
  }
  return t;
})();

/** x^(8 * len) mod p(x): the operator that shifts a CRC over len zero bytes. */
function shiftOperator(len: number): number {
  let p = 0x80000000; // x^0
  let k = 3;
  for (let n = len; n > 0; n = Math.floor(n / 2), k++) {
    if (n % 2) p = multmodp(X2N[k & 31], p);
  }
  return p;
}

const shiftCache = new Map<number, number>();

/** crc32 of A followed by B, given crc32(A), crc32(B) and B's length. */
export function crc32Combine(crcA: number, crcB: number, lenB: number): number {
  let op = shiftCache.get(lenB);
  if (op === undefined) {
    op = shiftOperator(lenB);
    if (shiftCache.size < 64) shiftCache.set(lenB, op);
  }
  return (multmodp(op, crcA) ^ crcB) >>> 0;
}
