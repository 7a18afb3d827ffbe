// Writes a vfio-mig stream to a Sink. Data chunks are read by the caller straight
// into chunkBuffer()'s payload area, behind room for the chunk header, so each chunk
// leaves in one write with no copy. A signed stream (a StreamKey given) writes each
// record's MAC right after it (src/stream/mac.ts), in the same write for a chunk.

import type { Sink } from "../transport/transport.ts";
import {
  CHUNK_HEADER,
  crc32,
  DEFAULT_CHUNK,
  deviceTag,
  encodeHeader,
  encodeTrailer,
  FORMAT_VERSION_SIGNED,
  type StreamHeader,
  TAG,
} from "./format.ts";
import { MAC_SIZE, type MacChain, type StreamKey, type StreamMacInfo } from "./mac.ts";

export class StreamWriter {
  readonly #sink: Sink;
  readonly #buf: Uint8Array;
  readonly #view: DataView;
  #dataBytes = 0;
  #chunks = 0;
  #dataCrc = 0;
  #tag = new Uint8Array(8);
  readonly #chunkSize: number;
  /** Signed streams: the MAC chain (null: an unsigned, version 1 stream). */
  readonly #mac: MacChain | null;
  readonly #key: StreamKey | null;
  /** Bytes written to the sink so far. */
  written = 0;

  /**
   * `devices`: how many devices the stream carries; with more than one, selectDevice()
   * writes DEVICE tags (docs/stream-format.md, "Several devices"). `key`: sign the
   * stream (format version 2, docs/stream-format.md "Signed streams").
   */
  constructor(sink: Sink, chunkSize = DEFAULT_CHUNK, readonly devices = 1, key: StreamKey | null = null) {
    this.#sink = sink;
    this.#chunkSize = chunkSize;
    this.#mac = key?.chain() ?? null;
    this.#key = key;
    // Room for the MAC behind the largest payload: a signed chunk leaves in one write too.
    this.#buf = new Uint8Array(CHUNK_HEADER + chunkSize + (key ? MAC_SIZE : 0));
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
    return this.#buf.subarray(CHUNK_HEADER, CHUNK_HEADER + this.#chunkSize);
  }

  /** Waits while the sink holds too much it could not write yet (a no-op for files). */
  flowControl(): Promise<void> | void {
    return this.#sink.flowControl?.();
  }

  /** `kept`: b is left unchanged until flowControl() resolves (the sink may keep a view of it). */
  #out(b: Uint8Array, kept = false): void {
    this.#sink.write(b, kept);
    this.written += b.length;
  }

  /** A signed stream's `mac` header field, once the header is written; null: unsigned. */
  signed: StreamMacInfo | null = null;

  /** The header; a signed stream's gets version 2 and its `mac` field here (h is not changed). */
  header(h: StreamHeader): void {
    if (!this.#mac) {
      this.#out(encodeHeader(h));
      return;
    }
    this.signed = this.#key!.info();
    const b = encodeHeader({ ...h, version: FORMAT_VERSION_SIGNED, mac: this.signed }, FORMAT_VERSION_SIGNED);
    this.#out(b);
    this.#out(this.#mac.header(b), true);
  }

  /** A record of one buffer (a tag, the trailer) and, signed, its MAC. */
  #record(b: Uint8Array, kept = false): void {
    this.#out(b, kept);
    if (!this.#mac) return;
    this.#mac.begin();
    this.#mac.update(b);
    this.#out(this.#mac.finish(), true);
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
    this.#record(this.#tag);
  }

  tag(t: bigint): void {
    this.#select();
    new DataView(this.#tag.buffer).setBigUint64(0, t);
    this.#record(this.#tag);
  }

  /**
   * Emits the first n bytes of payload as a DEV_DATA_STATE chunk. The payload must not
   * be touched again before flowControl() resolves (the sink may still hold it).
   */
  data(n: number): void {
    this.#chunk(TAG.DEV_DATA_STATE, n, true);
    this.#dataBytes += n;
    this.#chunks++;
  }

  /**
   * A DEV_DATA_STATE chunk whose payload is `parts` in order, written straight from
   * them (views of an mmap'd region leave through the syscall without a copy).
   * Nothing may unmap or change a part before flowControl() resolves.
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
    const head = this.#buf.subarray(0, CHUNK_HEADER);
    this.#out(head);
    for (const p of parts) if (p.length) this.#out(p, true);
    if (this.#mac) {
      this.#mac.begin();
      this.#mac.update(head);
      for (const p of parts) this.#mac.update(p);
      this.#out(this.#mac.finish(), true);
    }
    this.#dataCrc = crc32Combine(this.#dataCrc, c, n); // c covers all parts: no second pass
    this.#dataBytes += n;
    this.#chunks++;
  }

  /** A sized record (data or config) whose bytes are given. */
  sized(tag: bigint, bytes: Uint8Array): void {
    this.payload.set(bytes);
    this.#chunk(tag, bytes.length);
  }

  #chunk(tag: bigint, n: number, kept = false): void {
    this.#select();
    const payload = this.#buf.subarray(CHUNK_HEADER, CHUNK_HEADER + n);
    const c = crc32(payload);
    this.#view.setBigUint64(0, tag);
    this.#view.setBigUint64(8, BigInt(n));
    this.#view.setUint32(16, c);
    if (tag === TAG.DEV_DATA_STATE) this.#dataCrc = crc32Combine(this.#dataCrc, c, n); // no second pass
    let len = CHUNK_HEADER + n;
    if (this.#mac) {
      // The MAC goes behind the payload, into the room the buffer keeps for it.
      this.#mac.begin();
      this.#mac.update(this.#buf.subarray(0, len));
      this.#buf.set(this.#mac.finish(), len);
      len += MAC_SIZE;
    }
    this.#out(this.#buf.subarray(0, len), kept);
  }

  end(): void {
    this.#record(encodeTrailer({ dataBytes: this.#dataBytes, chunks: this.#chunks, dataCrc: this.#dataCrc }));
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
