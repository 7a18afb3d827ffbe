// Writes a vfio-mig stream to a Sink. Data chunks are read by the caller straight
// into chunkBuffer()'s payload area, behind room for the chunk header, so each chunk
// leaves in one write with no copy.

import type { Sink } from "../transport/transport.ts";
import { CHUNK_HEADER, crc32, DEFAULT_CHUNK, encodeHeader, encodeTrailer, type StreamHeader, TAG } from "./format.ts";

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

  constructor(sink: Sink, chunkSize = DEFAULT_CHUNK) {
    this.#sink = sink;
    this.#buf = new Uint8Array(CHUNK_HEADER + chunkSize);
    this.#view = new DataView(this.#buf.buffer);
  }

  get dataBytes(): number {
    return this.#dataBytes;
  }

  /** Where the next chunk's bytes go (read into it, then call data(n)). */
  get payload(): Uint8Array {
    return this.#buf.subarray(CHUNK_HEADER);
  }

  #out(b: Uint8Array): void {
    this.#sink.write(b);
    this.written += b.length;
  }

  header(h: StreamHeader): void {
    this.#out(encodeHeader(h));
  }

  tag(t: bigint): void {
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
    this.#view.setBigUint64(0, TAG.DEV_DATA_STATE);
    this.#view.setBigUint64(8, BigInt(n));
    this.#view.setUint32(16, c);
    this.#out(this.#buf.subarray(0, CHUNK_HEADER));
    for (const p of parts) if (p.length) this.#out(p);
    this.#dataCrc = crc32Parts(parts, this.#dataCrc);
    this.#dataBytes += n;
    this.#chunks++;
  }

  /** A sized record (data or config) whose bytes are given. */
  sized(tag: bigint, bytes: Uint8Array): void {
    this.payload.set(bytes);
    this.#chunk(tag, bytes.length);
  }

  #chunk(tag: bigint, n: number): void {
    const payload = this.#buf.subarray(CHUNK_HEADER, CHUNK_HEADER + n);
    const c = crc32(payload);
    this.#view.setBigUint64(0, tag);
    this.#view.setBigUint64(8, BigInt(n));
    this.#view.setUint32(16, c);
    if (tag === TAG.DEV_DATA_STATE) this.#dataCrc = crc32(payload, this.#dataCrc);
    this.#out(this.#buf.subarray(0, CHUNK_HEADER + n));
  }

  end(): void {
    this.#out(encodeTrailer({ dataBytes: this.#dataBytes, chunks: this.#chunks, dataCrc: this.#dataCrc }));
  }
}

function crc32Parts(parts: readonly Uint8Array[], prev: number): number {
  let c = prev;
  for (const p of parts) c = crc32(p, c);
  return c;
}
