// Reads a vfio-mig stream from a Source, one record at a time, with bounded memory:
// no length field can make it allocate more than MAX_CHUNK plus a header. A data
// record is returned only after its checksum matched, and, reading a signed stream
// with a key (src/stream/mac.ts), only after its MAC matched: a bad record is refused
// before the caller sees any of its bytes.

import { StreamError } from "../errors.ts";
import type { StreamSource } from "../transport/transport.ts";
import {
  CHUNK_HEADER,
  crc32,
  deviceIndex,
  FORMAT_VERSION,
  FORMAT_VERSION_SIGNED,
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
import { crc32Combine } from "./writer.ts";
import { MAC_SIZE, type MacChain, macInfoProblem, StreamAuthError, type StreamKey, type StreamMacInfo } from "./mac.ts";

export type StreamRecord =
  /** `device`: the index a DEVICE tag selects (multi-device streams). */
  | { kind: "tag"; tag: TagName; offset: number; device?: number }
  | { kind: "data"; tag: "DEV_DATA_STATE" | "DEV_CONFIG_STATE"; bytes: Uint8Array; offset: number }
  | { kind: "end"; trailer: Trailer; offset: number };

/**
 * What the loader reads records from: a vfio-mig stream (StreamReader), or an adapter
 * that presents another format's device records (a QEMU migration stream's VFIO
 * section) the same way. Records come only after their framing (and checksum, where
 * the format has one) was verified.
 */
export interface RecordReader {
  /** Bytes of the input consumed so far. */
  readonly offset: number;
  /** DEV_DATA_STATE payload bytes returned so far. */
  readonly dataBytes: number;
  /** The header (first call only). Throws StreamError when it is damaged. */
  readHeader(): Promise<StreamHeader>;
  /** The next record; `end` after the last. Throws StreamError when the input is damaged or truncated. */
  next(): Promise<StreamRecord>;
}

const FIRST_BUFFER = 64 << 10;
const WORKING_BUFFER = 4 << 20;
/** How far a read may go past the bytes the current record needs. */
const READ_AHEAD = 64 << 10;

export class StreamReader implements RecordReader {
  readonly #src: StreamSource;
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
  /** The number of the record being read (src/stream/grammar.ts numbering); null in the header. */
  #record: number | null = null;
  #records = 0;
  readonly #key: StreamKey | null;
  /** With a key: the chain every record's MAC is checked against. */
  #chain: MacChain | null = null;
  /** The header's `mac` (a signed stream), once read; null: unsigned. */
  #signed: StreamMacInfo | null = null;

  /**
   * `key` (--verify-key): accept only a stream signed with it, and check every MAC
   * before a record is returned. Without it a signed stream is read as an unsigned
   * one: its MACs are skipped, unchecked.
   */
  constructor(src: StreamSource, maxChunk = MAX_CHUNK, key: StreamKey | null = null) {
    this.#src = src;
    this.#maxChunk = maxChunk;
    this.#key = key;
    // Small first: most streams (an mtty's is 200 bytes) never need more. The first
    // record that does not fit grows it to the working size (growth in #fill).
    this.#buf = new Uint8Array(Math.min(FIRST_BUFFER, maxChunk + CHUNK_HEADER));
  }

  /** Bytes of the stream consumed so far. */
  get offset(): number {
    return this.#offset;
  }

  get dataBytes(): number {
    return this.#dataBytes;
  }

  /** Records read so far (each framed record counts: the next one's number). */
  get records(): number {
    return this.#records;
  }

  /** A signed stream's `mac` header field (algorithm, key id), once the header is read; null: unsigned. */
  get signed(): StreamMacInfo | null {
    return this.#signed;
  }

  #error(message: string, offset: number): StreamError {
    return new StreamError(message, offset, this.#record ?? undefined);
  }

  /** Ensures `need` bytes are buffered; false when the stream ends first. */
  async #fill(need: number): Promise<boolean> {
    while (this.#end - this.#start < need) {
      if (this.#eof) return false;
      if (this.#buf.length - this.#start < need) {
        const have = this.#end - this.#start;
        if (this.#start > 0) {
          this.#buf.copyWithin(0, this.#start, this.#end);
        } else if (this.#end === this.#buf.length) {
          // Full, and the record needs more: only now, with a buffer's worth of its bytes
          // actually here, is the record's size (at most maxChunk) allocated. A length
          // field alone allocates nothing.
          // First to the working size, and only with that much of the record here to
          // the record's own size.
          const working = Math.min(WORKING_BUFFER, this.#maxChunk + CHUNK_HEADER);
          const bigger = new Uint8Array(this.#buf.length < working ? working : need);
          bigger.set(this.#buf.subarray(0, this.#end));
          this.#buf = bigger;
        }
        this.#start = 0;
        this.#end = have;
      }
      // Read what the record needs plus a little more, not up to the end of the buffer:
      // bytes read past a record are moved to the front (copyWithin above) whenever the
      // next record does not fit behind them (a third of all bytes with 1 MiB chunks).
      const n = await this.#src.read(
        this.#buf.subarray(this.#end, Math.min(this.#buf.length, this.#start + need + READ_AHEAD)),
      );
      if (n === 0) this.#eof = true;
      this.#end += n;
    }
    return true;
  }

  /**
   * The next n bytes; a stream that ends first is refused at `at` (the start of the
   * record, or of the header part, the bytes belong to).
   */
  async #take(n: number, what: string, at = this.#offset): Promise<Uint8Array> {
    if (!(await this.#fill(n))) {
      throw new StreamError(
        `truncated stream: it ends inside ${what} (${this.#end - this.#start} of ${n} bytes present)`,
        at,
        this.#record ?? undefined,
      );
    }
    const out = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    this.#offset += n;
    return out;
  }

  async readHeader(): Promise<StreamHeader> {
    const fixed = await this.#take(HEADER_FIXED, "the stream header");
    for (let i = 0; i < STREAM_MAGIC.length; i++) {
      if (fixed[i] !== STREAM_MAGIC[i]) throw new StreamError("not a vfio-mig stream (bad magic)", 0);
    }
    const v = new DataView(fixed.buffer, fixed.byteOffset, HEADER_FIXED);
    const version = v.getUint16(8);
    if (version !== FORMAT_VERSION && version !== FORMAT_VERSION_SIGNED) {
      throw new StreamError(
        `stream format version ${version} is not supported (this vfio-mig reads ${FORMAT_VERSION} and ` +
          `${FORMAT_VERSION_SIGNED}, signed)`,
        8,
      );
    }
    if (this.#key && version !== FORMAT_VERSION_SIGNED) {
      throw new StreamAuthError(
        `the stream is not signed: --verify-key ${this.#key.path} accepts only streams saved with --sign-key`,
        8,
      );
    }
    const len = v.getUint32(12);
    if (len > MAX_HEADER_JSON) throw new StreamError(`stream header length ${len} exceeds ${MAX_HEADER_JSON}`, 12);
    const head = fixed.slice();
    const json = (await this.#take(len, "the stream header", HEADER_FIXED)).slice();
    const crcBytes = await this.#take(4, "the stream header checksum", HEADER_FIXED);
    const want = new DataView(crcBytes.buffer, crcBytes.byteOffset, 4).getUint32(0);
    const got = crc32(json, crc32(head));
    // The checksum covers the whole header: the damage is somewhere from byte 0 on.
    if (want !== got) throw new StreamError("stream header checksum mismatch (corrupted stream)", 0);
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
    if (version === FORMAT_VERSION_SIGNED) await this.#headerMac(h, head, json, crcBytes.slice());
    return h;
  }

  /** A signed stream's header: its `mac` field and the MAC that follows it. */
  async #headerMac(h: StreamHeader, ...parts: Uint8Array[]): Promise<void> {
    const problem = macInfoProblem(h);
    if (problem) throw new StreamError(problem, HEADER_FIXED);
    this.#signed = h.mac!;
    const stored = await this.#take(MAC_SIZE, "the stream header's MAC", 0);
    if (!this.#key) return;
    if (h.mac!.keyId !== this.#key.id) {
      throw new StreamAuthError(
        `the stream is signed with another key (key id ${h.mac!.keyId}; --verify-key ${this.#key.path} ` +
          `has key id ${this.#key.id})`,
        HEADER_FIXED,
      );
    }
    this.#chain = this.#key.chain();
    if (!this.#chain.matches(stored, this.#chain.header(...parts))) {
      throw new StreamAuthError(
        `authentication failed: the stream header does not carry the MAC of key ${this.#key.id} (it was changed)`,
        0,
      );
    }
  }

  /**
   * The MAC after the record just read (signed streams): checked against the chain with
   * a key, skipped without one. Nothing of the record has left the reader before.
   */
  async #recordMac(offset: number, name: string): Promise<void> {
    if (!this.#signed) return;
    const stored = await this.#take(MAC_SIZE, `the MAC of record ${this.#record} (${name})`, offset);
    if (!this.#chain) return;
    if (!this.#chain.matches(stored, this.#chain.finish())) {
      throw new StreamAuthError(
        `authentication failed: record ${this.#record} (${name}) does not carry the MAC of key ` +
          `${this.#key!.id} (changed, dropped, duplicated, reordered or taken from another stream)`,
        offset,
        this.#record ?? undefined,
      );
    }
  }

  async next(): Promise<StreamRecord> {
    if (this.#ended) throw this.#error("read past the end of the stream", this.#offset);
    const offset = this.#offset;
    this.#record = this.#records;
    const chain = this.#chain;
    chain?.begin();
    const tb = await this.#take(8, "a record tag");
    chain?.update(tb);
    const tag = new DataView(tb.buffer, tb.byteOffset, 8).getBigUint64(0);
    const name = tagName(tag);
    if (!name) throw this.#error(`unknown record tag 0x${tag.toString(16)}`, offset);
    if (tag === TAG.STREAM_END) return await this.#trailer(offset);
    if (name === "DEVICE") {
      await this.#recordMac(offset, name);
      this.#records++;
      return { kind: "tag", tag: name, offset, device: deviceIndex(tag)! };
    }
    if (!SIZED_TAGS.has(tag)) {
      await this.#recordMac(offset, name);
      this.#records++;
      return { kind: "tag", tag: name, offset };
    }
    const hb = await this.#take(12, `the header of a ${name} record`, offset);
    chain?.update(hb);
    const hv = new DataView(hb.buffer, hb.byteOffset, 12);
    const size = hv.getBigUint64(0);
    const crc = hv.getUint32(8);
    if (size > BigInt(this.#maxChunk)) {
      throw this.#error(`${name} record of ${size} bytes exceeds the ${this.#maxChunk}-byte limit`, offset + 8);
    }
    // The payload and its MAC buffered together: taking the MAC then cannot move the payload.
    if (this.#signed) await this.#fill(Number(size) + MAC_SIZE);
    const bytes = await this.#take(Number(size), `a ${name} record of ${size} bytes`, offset);
    chain?.update(bytes);
    await this.#recordMac(offset, name);
    const got = crc32(bytes);
    if (got !== crc) {
      throw this.#error(`checksum mismatch in ${name} record #${this.#chunks + 1} (corrupted stream)`, offset);
    }
    this.#records++;
    if (tag === TAG.DEV_DATA_STATE) {
      this.#dataBytes += bytes.length;
      this.#chunks++;
      this.#dataCrc = crc32Combine(this.#dataCrc, got, bytes.length); // no second pass over bytes
    }
    return { kind: "data", tag: name as "DEV_DATA_STATE" | "DEV_CONFIG_STATE", bytes, offset };
  }

  async #trailer(offset: number): Promise<StreamRecord> {
    if (this.#signed) await this.#fill(TRAILER_SIZE - 8 + MAC_SIZE);
    const b = await this.#take(TRAILER_SIZE - 8, "the stream trailer", offset);
    this.#chain?.update(b);
    await this.#recordMac(offset, "STREAM_END");
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (crc32(b.subarray(0, 20)) !== v.getUint32(20)) {
      throw this.#error("stream trailer checksum mismatch (corrupted stream)", offset);
    }
    const trailer: Trailer = {
      dataBytes: Number(v.getBigUint64(0)),
      chunks: Number(v.getBigUint64(8)),
      dataCrc: v.getUint32(16),
    };
    if (trailer.dataBytes !== this.#dataBytes || trailer.chunks !== this.#chunks || trailer.dataCrc !== this.#dataCrc) {
      throw this.#error(
        `stream trailer does not match the data read (trailer: ${trailer.dataBytes} bytes in ${trailer.chunks} ` +
          `chunks; read: ${this.#dataBytes} bytes in ${this.#chunks} chunks)`,
        offset,
      );
    }
    this.#ended = true;
    this.#record = ++this.#records;
    if (await this.#fill(1)) throw this.#error("unexpected bytes after the end of the stream", this.#offset);
    return { kind: "end", trailer, offset };
  }
}
