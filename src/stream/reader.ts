// Reads a vfio-mig stream from a Source, one record at a time, with bounded memory:
// no length field can make it allocate more than MAX_CHUNK plus a header. A data
// record is returned only after its checksum matched.

import { StreamError } from "../errors.ts";
import type { Source } from "../transport/transport.ts";
import {
  CHUNK_HEADER,
  crc32,
  FORMAT_VERSION,
  HEADER_FIXED,
  MAX_CHUNK,
  MAX_HEADER_JSON,
  SIZED_TAGS,
  STREAM_MAGIC,
  type StreamHeader,
  TAG,
  type TagName,
  tagName,
  type Trailer,
  TRAILER_SIZE,
} from "./format.ts";

export type StreamRecord =
  | { kind: "tag"; tag: TagName; offset: number }
  | { kind: "data"; tag: "DEV_DATA_STATE" | "DEV_CONFIG_STATE"; bytes: Uint8Array; offset: number }
  | { kind: "end"; trailer: Trailer; offset: number };

const INITIAL_BUFFER = 4 << 20;

export class StreamReader {
  readonly #src: Source;
  readonly #maxChunk: number;
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  #eof = false;
  /** Stream offset of #buf[#start]. */
  #offset = 0;
  #dataBytes = 0;
  #chunks = 0;
  #dataCrc = 0;
  #ended = false;

  constructor(src: Source, maxChunk = MAX_CHUNK) {
    this.#src = src;
    this.#maxChunk = maxChunk;
    this.#buf = new Uint8Array(Math.min(INITIAL_BUFFER, maxChunk + CHUNK_HEADER));
  }

  /** Bytes of the stream consumed so far. */
  get offset(): number {
    return this.#offset;
  }

  get dataBytes(): number {
    return this.#dataBytes;
  }

  /** Ensures `need` bytes are buffered; false when the stream ends first. */
  #fill(need: number): boolean {
    while (this.#end - this.#start < need) {
      if (this.#eof) return false;
      if (this.#buf.length - this.#start < need) {
        const have = this.#end - this.#start;
        if (need > this.#buf.length) {
          const bigger = new Uint8Array(Math.max(need, Math.min(this.#buf.length * 2, this.#maxChunk + CHUNK_HEADER)));
          bigger.set(this.#buf.subarray(this.#start, this.#end));
          this.#buf = bigger;
        } else {
          this.#buf.copyWithin(0, this.#start, this.#end);
        }
        this.#start = 0;
        this.#end = have;
      }
      const n = this.#src.read(this.#buf.subarray(this.#end));
      if (n === 0) this.#eof = true;
      this.#end += n;
    }
    return true;
  }

  #take(n: number, what: string): Uint8Array {
    if (!this.#fill(n)) {
      throw new StreamError(
        `truncated stream: it ends inside ${what} (${this.#end - this.#start} of ${n} bytes present)`,
        this.#offset,
      );
    }
    const out = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    this.#offset += n;
    return out;
  }

  readHeader(): StreamHeader {
    const fixed = this.#take(HEADER_FIXED, "the stream header");
    for (let i = 0; i < STREAM_MAGIC.length; i++) {
      if (fixed[i] !== STREAM_MAGIC[i]) throw new StreamError("not a vfio-mig stream (bad magic)", 0);
    }
    const v = new DataView(fixed.buffer, fixed.byteOffset, HEADER_FIXED);
    const version = v.getUint16(8);
    if (version !== FORMAT_VERSION) {
      throw new StreamError(
        `stream format version ${version} is not supported (this vfio-mig reads ${FORMAT_VERSION})`,
        8,
      );
    }
    const len = v.getUint32(12);
    if (len > MAX_HEADER_JSON) throw new StreamError(`stream header length ${len} exceeds ${MAX_HEADER_JSON}`, 12);
    const head = fixed.slice();
    const json = this.#take(len, "the stream header").slice();
    const crcBytes = this.#take(4, "the stream header checksum");
    const want = new DataView(crcBytes.buffer, crcBytes.byteOffset, 4).getUint32(0);
    const got = crc32(json, crc32(head));
    if (want !== got) throw new StreamError("stream header checksum mismatch (corrupted stream)", HEADER_FIXED);
    let h: StreamHeader;
    try {
      h = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
    } catch {
      throw new StreamError("stream header is not valid JSON", HEADER_FIXED);
    }
    if (
      typeof h !== "object" || h === null || h.format !== "vfio-mig" || typeof h.device !== "object" ||
      h.device === null
    ) {
      throw new StreamError("stream header lacks the vfio-mig fields", HEADER_FIXED);
    }
    return h;
  }

  next(): StreamRecord {
    if (this.#ended) throw new StreamError("read past the end of the stream", this.#offset);
    const offset = this.#offset;
    const tb = this.#take(8, "a record tag");
    const tag = new DataView(tb.buffer, tb.byteOffset, 8).getBigUint64(0);
    const name = tagName(tag);
    if (!name) throw new StreamError(`unknown record tag 0x${tag.toString(16)}`, offset);
    if (tag === TAG.STREAM_END) return this.#trailer(offset);
    if (!SIZED_TAGS.has(tag)) return { kind: "tag", tag: name, offset };
    const hb = this.#take(12, `the header of a ${name} record`);
    const hv = new DataView(hb.buffer, hb.byteOffset, 12);
    const size = hv.getBigUint64(0);
    const crc = hv.getUint32(8);
    if (size > BigInt(this.#maxChunk)) {
      throw new StreamError(`${name} record of ${size} bytes exceeds the ${this.#maxChunk}-byte limit`, offset + 8);
    }
    const bytes = this.#take(Number(size), `a ${name} record of ${size} bytes`);
    if (crc32(bytes) !== crc) {
      throw new StreamError(`checksum mismatch in ${name} record #${this.#chunks + 1} (corrupted stream)`, offset);
    }
    if (tag === TAG.DEV_DATA_STATE) {
      this.#dataBytes += bytes.length;
      this.#chunks++;
      this.#dataCrc = crc32(bytes, this.#dataCrc);
    }
    return { kind: "data", tag: name as "DEV_DATA_STATE" | "DEV_CONFIG_STATE", bytes, offset };
  }

  #trailer(offset: number): StreamRecord {
    const b = this.#take(TRAILER_SIZE - 8, "the stream trailer");
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (crc32(b.subarray(0, 20)) !== v.getUint32(20)) {
      throw new StreamError("stream trailer checksum mismatch (corrupted stream)", offset);
    }
    const trailer: Trailer = {
      dataBytes: Number(v.getBigUint64(0)),
      chunks: Number(v.getBigUint64(8)),
      dataCrc: v.getUint32(16),
    };
    if (trailer.dataBytes !== this.#dataBytes || trailer.chunks !== this.#chunks || trailer.dataCrc !== this.#dataCrc) {
      throw new StreamError(
        `stream trailer does not match the data read (trailer: ${trailer.dataBytes} bytes in ${trailer.chunks} ` +
          `chunks; read: ${this.#dataBytes} bytes in ${this.#chunks} chunks)`,
        offset,
      );
    }
    this.#ended = true;
    if (this.#fill(1)) throw new StreamError("unexpected bytes after the end of the stream", this.#offset);
    return { kind: "end", trailer, offset };
  }
}
