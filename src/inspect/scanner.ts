// Sequential bytes from a Source with a fixed-size buffer: small fields are taken
// whole, long runs are streamed through in pieces. Nothing here allocates from a
// length read out of the stream.

import type { Source } from "../transport/transport.ts";

const BUFFER = 1 << 20;

export class ByteScanner {
  readonly #src: Source;
  readonly #buf = new Uint8Array(BUFFER);
  #start = 0;
  #end = 0;
  #eof = false;
  /** Stream offset of the next unconsumed byte. */
  offset = 0;

  constructor(src: Source) {
    this.#src = src;
  }

  /** Buffers up to `n` bytes (n <= 1 MiB); returns how many are available. */
  #fill(n: number): number {
    while (this.#end - this.#start < n && !this.#eof) {
      if (this.#start > 0 && this.#buf.length - this.#start < n) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
      const got = this.#src.read(this.#buf.subarray(this.#end));
      if (got === 0) this.#eof = true;
      this.#end += got;
    }
    return Math.min(n, this.#end - this.#start);
  }

  /** True when no byte is left. */
  atEnd(): boolean {
    return this.#fill(1) === 0;
  }

  /** Bytes available right now, up to n (for "k of n bytes present" messages). */
  available(n: number): number {
    return this.#fill(Math.min(n, BUFFER));
  }

  /** The next n bytes (n <= 1 MiB), or null when the stream ends first (nothing consumed). Valid until the next call. */
  peek(n: number): Uint8Array | null {
    if (this.#fill(n) < n) return null;
    return this.#buf.subarray(this.#start, this.#start + n);
  }

  /** As peek, and consumes them. */
  take(n: number): Uint8Array | null {
    const b = this.peek(n);
    if (b) this.skip(n);
    return b;
  }

  /** Consumes up to n buffered-or-readable bytes; returns how many. */
  skip(n: number): number {
    return this.stream(n, () => {});
  }

  /** Consumes up to n bytes, handing them to fn in pieces; returns how many (short at end of stream). */
  stream(n: number, fn: (piece: Uint8Array) => void): number {
    let done = 0;
    while (done < n) {
      const want = Math.min(n - done, BUFFER);
      const have = this.#fill(Math.min(want, 1)) === 0 ? 0 : Math.min(want, this.#end - this.#start);
      if (have === 0) break;
      fn(this.#buf.subarray(this.#start, this.#start + have));
      this.#start += have;
      this.offset += have;
      done += have;
    }
    return done;
  }
}
