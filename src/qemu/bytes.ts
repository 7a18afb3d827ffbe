// Sequential bytes of a QEMU stream with one fixed buffer: small fields are taken
// whole, long runs (RAM pages, device data) are streamed through in pieces, and no
// length read from the stream allocates anything. Every consumed byte can be handed
// to a tap in order (qemu-splice copies the stream through it).

import { StreamError } from "../errors.ts";

/** A byte source, synchronous (files, pipes) or not (network). */
export interface ByteSource {
  /** Bytes read into buf; 0 at end of stream. */
  read(buf: Uint8Array): number | Promise<number>;
}

const BUFFER = 1 << 20;
/** The largest peek/take: the buffer. */
export const MAX_FIELD = BUFFER;

export class QemuBytes {
  readonly #src: ByteSource;
  readonly #buf = new Uint8Array(BUFFER);
  #start = 0;
  #end = 0;
  #eof = false;
  /** Stream offset of the next unconsumed byte. */
  offset = 0;
  /** Receives every consumed byte, in order, unless paused. */
  tap: ((bytes: Uint8Array) => void) | null = null;
  tapPaused = false;

  constructor(src: ByteSource) {
    this.#src = src;
  }

  /** Buffers up to n bytes (n <= 1 MiB); how many are available. */
  async #fill(n: number): Promise<number> {
    while (this.#end - this.#start < n && !this.#eof) {
      if (this.#buf.length - this.#start < n) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
      const got = await this.#src.read(this.#buf.subarray(this.#end));
      if (got === 0) this.#eof = true;
      this.#end += got;
    }
    return Math.min(n, this.#end - this.#start);
  }

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    return (await this.#fill(1)) === 0;
  }

  /** The next n bytes (n <= 1 MiB) without consuming them, or null when the stream ends first. Valid until the next call. */
  async peek(n: number): Promise<Uint8Array | null> {
    if ((await this.#fill(n)) < n) return null;
    return this.#buf.subarray(this.#start, this.#start + n);
  }

  /** Up to n bytes without consuming them (fewer at the end of the stream). */
  async peekSome(n: number): Promise<Uint8Array> {
    const have = await this.#fill(Math.min(n, BUFFER));
    return this.#buf.subarray(this.#start, this.#start + have);
  }

  /**
   * The bytes already buffered, without reading (a fast path for small records that
   * need no await); valid until the next call that reads or consumes.
   */
  buffered(): Uint8Array {
    return this.#buf.subarray(this.#start, this.#end);
  }

  /** Consumes n bytes of buffered() (through the tap, like every consumed byte). */
  consumeBuffered(n: number): void {
    if (n > this.#end - this.#start) throw new Error("QemuBytes.consumeBuffered: more than is buffered");
    this.#consume(n);
  }

  #consume(n: number): void {
    if (this.tap && !this.tapPaused && n > 0) this.tap(this.#buf.subarray(this.#start, this.#start + n));
    this.#start += n;
    this.offset += n;
  }

  /**
   * The next n bytes (n <= 1 MiB), consumed; valid until the next call. A stream that
   * ends first is a StreamError naming `what`, at the offset where `what` began.
   */
  async take(n: number, what: string, at = this.offset): Promise<Uint8Array> {
    if (n > BUFFER) throw new Error(`QemuBytes.take: ${n} bytes is more than the ${BUFFER}-byte buffer`);
    const have = await this.#fill(n);
    if (have < n) {
      throw new StreamError(`truncated: the stream ends inside ${what} (${have} of ${n} bytes present)`, at);
    }
    const out = this.#buf.subarray(this.#start, this.#start + n);
    this.#consume(n);
    return out;
  }

  async u8(what: string): Promise<number> {
    return (await this.take(1, what))[0];
  }

  async be16(what: string): Promise<number> {
    const b = await this.take(2, what);
    return (b[0] << 8) | b[1];
  }

  async be32(what: string): Promise<number> {
    const b = await this.take(4, what);
    return ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
  }

  async be64(what: string): Promise<bigint> {
    const b = await this.take(8, what);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0);
  }

  /** u8 n | n bytes of Latin-1 text (idstrs, RAM block names). */
  async shortString(what: string): Promise<string> {
    const at = this.offset;
    const n = await this.u8(`the length of ${what}`);
    const b = await this.take(n, what, at);
    return String.fromCharCode(...b);
  }

  /**
   * Consumes exactly n bytes, handing them to fn in pieces (each valid during the call);
   * a shorter stream is a StreamError naming `what`.
   */
  async stream(n: number, what: string, fn: ((piece: Uint8Array) => void) | null, at = this.offset): Promise<void> {
    let done = 0;
    while (done < n) {
      const want = Math.min(n - done, BUFFER);
      const have = (await this.#fill(1)) === 0 ? 0 : Math.min(want, this.#end - this.#start);
      if (have === 0) {
        throw new StreamError(`truncated: the stream ends inside ${what} (${done} of ${n} bytes present)`, at);
      }
      fn?.(this.#buf.subarray(this.#start, this.#start + have));
      this.#consume(have);
      done += have;
    }
  }

  /** Consumes every byte left; how many there were. */
  async drain(fn: ((piece: Uint8Array) => void) | null = null): Promise<number> {
    let n = 0;
    while ((await this.#fill(1)) > 0) {
      const have = this.#end - this.#start;
      fn?.(this.#buf.subarray(this.#start, this.#end));
      this.#consume(have);
      n += have;
    }
    return n;
  }
}
