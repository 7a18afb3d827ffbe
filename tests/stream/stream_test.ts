// The vfio-mig stream format: header and trailer codecs, StreamWriter -> StreamReader
// round trips over memory, and the reader's refusals (checksums, truncation at every
// offset, unknown tags, oversized lengths, bytes after the trailer).

import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { StreamError } from "../../src/errors.ts";
import {
  CHUNK_HEADER,
  crc32,
  encodeHeader,
  encodeTrailer,
  FORMAT_VERSION,
  HEADER_FIXED,
  identityMismatch,
  MAX_CHUNK,
  MAX_HEADER_JSON,
  STREAM_MAGIC,
  type StreamHeader,
  type StreamIdentity,
  TAG,
  TRAILER_SIZE,
} from "../../src/stream/format.ts";
import { StreamReader, type StreamRecord } from "../../src/stream/reader.ts";
import { StreamWriter } from "../../src/stream/writer.ts";
import type { Sink, Source } from "../../src/transport/transport.ts";
import { concat, MemorySource, u32be, u64be } from "../helpers/bytes.ts";

class MemorySink implements Sink {
  readonly label = "memory";
  parts: Uint8Array[] = [];
  committed = false;
  aborted = false;
  write(bytes: Uint8Array): void {
    this.parts.push(bytes.slice()); // the writer reuses its buffer
  }
  commit(): void {
    this.committed = true;
  }
  abort(): void {
    this.aborted = true;
  }
  bytes(): Uint8Array {
    return concat(this.parts);
  }
}

/** `prefix`, then zeros for ever (a stream that never ends); counts bytes delivered. */
class EndlessSource implements Source {
  readonly label = "endless";
  delivered = 0;
  constructor(readonly prefix: Uint8Array) {}
  read(buf: Uint8Array): number {
    const off = this.delivered;
    buf.fill(0);
    if (off < this.prefix.length) buf.set(this.prefix.subarray(off, off + buf.length));
    this.delivered += buf.length;
    return buf.length;
  }
  close(): void {}
}

const IDENTITY: StreamIdentity = {
  kind: "sim",
  driver: "mtty",
  mdevType: "mtty-2",
  vendor: 0x4348,
  device: 0x3253,
  subsystemVendor: 0x4348,
  subsystemDevice: 0x3253,
  model: "mtty-2",
};

const HEADER: StreamHeader = {
  format: "vfio-mig",
  version: FORMAT_VERSION,
  tool: "vfio-mig test",
  protocol: "v2",
  created: "2026-01-01T00:00:00.000Z",
  source: "sim:/tmp/a",
  device: IDENTITY,
  migrationFlags: 7,
  sizeEstimate: 96,
  mode: "live",
};

/** Deterministic test bytes. */
function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

interface Layout {
  bytes: Uint8Array;
  chunks: Uint8Array[];
  /** Stream offsets: header end, each data record's start, trailer start. */
  headerEnd: number;
  recordAt: number[];
  trailerAt: number;
}

/** A live-save-shaped stream with the given data chunks. */
function buildStream(chunks: Uint8Array[], chunkSize = 4096): Layout {
  const sink = new MemorySink();
  const w = new StreamWriter(sink, chunkSize);
  w.header(HEADER);
  const headerEnd = w.written;
  w.tag(TAG.DEV_SETUP_STATE);
  w.tag(TAG.END_OF_STATE);
  const recordAt: number[] = [];
  chunks.forEach((c, i) => {
    if (i === 1) w.tag(TAG.SWITCHOVER);
    recordAt.push(w.written);
    w.payload.set(c);
    w.data(c.length);
  });
  w.tag(TAG.END_OF_STATE);
  const trailerAt = w.written;
  w.end();
  const bytes = sink.bytes();
  assertEquals(bytes.length, w.written, "written counts every byte");
  return { bytes, chunks, headerEnd, recordAt, trailerAt };
}

/** Reads a whole stream; returns the header and every record. */
async function readAll(
  src: Source,
  maxChunk?: number,
): Promise<{ header: StreamHeader; records: StreamRecord[]; reader: StreamReader }> {
  const reader = new StreamReader(src, maxChunk);
  const header = await reader.readHeader();
  const records: StreamRecord[] = [];
  for (;;) {
    const r = await reader.next();
    records.push(r);
    if (r.kind === "end") break;
  }
  return { header, records, reader };
}

const CHUNKS = [pattern(1, 1), pattern(4096, 2), pattern(777, 3), pattern(2048, 4)];

Deno.test("crc32 is the standard CRC-32 (IEEE)", () => {
  assertEquals(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assertEquals(crc32(new Uint8Array(0)), 0);
  const a = pattern(1000, 9);
  assertEquals(crc32(a.subarray(300), crc32(a.subarray(0, 300))), crc32(a), "incremental");
});

Deno.test("header: layout (magic, be16 version, be16 0, be32 length, JSON, be32 crc) and decode", async () => {
  const b = encodeHeader(HEADER);
  const v = new DataView(b.buffer);
  assertEquals(b.subarray(0, 8), STREAM_MAGIC);
  assertEquals(new TextDecoder().decode(b.subarray(0, 7)), "VFIOMIG");
  assertEquals(v.getUint16(8), FORMAT_VERSION);
  assertEquals(v.getUint16(10), 0);
  const len = v.getUint32(12);
  assertEquals(b.length, HEADER_FIXED + len + 4);
  assertEquals(JSON.parse(new TextDecoder().decode(b.subarray(HEADER_FIXED, HEADER_FIXED + len))), HEADER);
  assertEquals(v.getUint32(HEADER_FIXED + len), crc32(b.subarray(0, HEADER_FIXED + len)));
  const reader = new StreamReader(new MemorySource(b));
  assertEquals(await reader.readHeader(), HEADER);
  assertEquals(reader.offset, b.length);
});

Deno.test("trailer: layout (tag, be64 bytes, be64 chunks, be32 data crc, be32 crc of the 20 bytes)", () => {
  const t = encodeTrailer({ dataBytes: 2 ** 40 + 5, chunks: 3, dataCrc: 0xdeadbeef });
  const v = new DataView(t.buffer);
  assertEquals(t.length, TRAILER_SIZE);
  assertEquals(v.getBigUint64(0), TAG.STREAM_END);
  assertEquals(v.getBigUint64(8), 2n ** 40n + 5n);
  assertEquals(v.getBigUint64(16), 3n);
  assertEquals(v.getUint32(24), 0xdeadbeef);
  assertEquals(v.getUint32(28), crc32(t.subarray(8, 28)));
});

Deno.test("tags keep QEMU's values; vfio-mig's own use the 0xEF11 space", () => {
  assertEquals(TAG.END_OF_STATE, 0xffffffffef100001n);
  assertEquals(TAG.DEV_CONFIG_STATE, 0xffffffffef100002n);
  assertEquals(TAG.DEV_SETUP_STATE, 0xffffffffef100003n);
  assertEquals(TAG.DEV_DATA_STATE, 0xffffffffef100004n);
  assertEquals(TAG.DEV_INIT_DATA_SENT, 0xffffffffef100005n);
  assertEquals(TAG.SWITCHOVER >> 16n, 0xffffffffef11n);
  assertEquals(TAG.STREAM_END >> 16n, 0xffffffffef11n);
});

Deno.test("StreamWriter -> StreamReader round trip, at any read granularity", async () => {
  const s = buildStream(CHUNKS);
  for (const step of [Infinity, 1, 7, 4096, 4099]) {
    const src = new MemorySource(s.bytes, step);
    const { header, records, reader } = await readAll(src);
    assertEquals(header, HEADER, `header, step ${step}`);
    const kinds = records.map((r) => (r.kind === "tag" ? r.tag : r.kind === "data" ? `data:${r.bytes.length}` : "end"));
    assertEquals(kinds, [
      "DEV_SETUP_STATE",
      "END_OF_STATE",
      "data:1",
      "SWITCHOVER",
      "data:4096",
      "data:777",
      "data:2048",
      "END_OF_STATE",
      "end",
    ], `records, step ${step}`);
    const data = records.flatMap((r) => (r.kind === "data" ? [r.bytes.slice()] : []));
    assertEquals(concat(data), concat(CHUNKS), `data, step ${step}`);
    const dataRecords = records.filter((r) => r.kind === "data");
    assertEquals(dataRecords.map((r) => r.offset), s.recordAt, "record offsets");
    const end = records[records.length - 1];
    assert(end.kind === "end");
    assertEquals(end.offset, s.trailerAt);
    assertEquals(end.trailer, { dataBytes: 1 + 4096 + 777 + 2048, chunks: 4, dataCrc: crc32(concat(CHUNKS)) });
    assertEquals(reader.dataBytes, 1 + 4096 + 777 + 2048);
    assertEquals(reader.offset, s.bytes.length);
    assertEquals(src.pos, s.bytes.length, "the reader consumed exactly the stream");
  }
});

Deno.test("chunk framing: be64 tag | be64 size | be32 crc32(data) | data", () => {
  const s = buildStream([pattern(100, 5)]);
  const at = s.recordAt[0];
  const v = new DataView(s.bytes.buffer);
  assertEquals(v.getBigUint64(at), TAG.DEV_DATA_STATE);
  assertEquals(v.getBigUint64(at + 8), 100n);
  assertEquals(v.getUint32(at + 16), crc32(pattern(100, 5)));
  assertEquals(s.bytes.subarray(at + CHUNK_HEADER, at + CHUNK_HEADER + 100), pattern(100, 5));
});

Deno.test("DEV_CONFIG_STATE records round-trip and do not count as device data", async () => {
  const sink = new MemorySink();
  const w = new StreamWriter(sink, 256);
  w.header(HEADER);
  w.sized(TAG.DEV_CONFIG_STATE, pattern(64, 8));
  w.payload.set(pattern(10, 9));
  w.data(10);
  w.end();
  const { records } = await readAll(new MemorySource(sink.bytes()));
  assertEquals(records.length, 3);
  const [cfg, data, end] = records;
  assert(cfg.kind === "data" && cfg.tag === "DEV_CONFIG_STATE");
  assertEquals(cfg.bytes, pattern(64, 8));
  assert(data.kind === "data" && data.tag === "DEV_DATA_STATE");
  assert(end.kind === "end");
  assertEquals(end.trailer, { dataBytes: 10, chunks: 1, dataCrc: crc32(pattern(10, 9)) });
});

function expectStreamError(
  bytes: Uint8Array,
  includes: string,
  what: string,
  maxChunk?: number,
): Promise<StreamError> {
  return assertRejects(() => readAll(new MemorySource(bytes), maxChunk), StreamError, includes, what);
}

function flipped(bytes: Uint8Array, at: number): Uint8Array {
  const b = bytes.slice();
  b[at] ^= 0x01;
  return b;
}

Deno.test("checksum mismatch: a flipped bit anywhere in a chunk (header, crc or data) is refused", async () => {
  const s = buildStream(CHUNKS);
  const at = s.recordAt[2]; // the 777-byte record
  // Size (low byte: 776 bytes then no longer checksum), crc, and data bytes.
  for (
    const off of [
      at + 15,
      at + 16,
      at + 17,
      at + 19,
      at + CHUNK_HEADER,
      at + CHUNK_HEADER + 400,
      at + CHUNK_HEADER + 776,
    ]
  ) {
    const e = await expectStreamError(flipped(s.bytes, off), "checksum mismatch", `flip at ${off}`);
    assertEquals(e.offset, at, "the error names the record's offset");
  }
});

Deno.test("checksum mismatch: the bad record is never handed out", async () => {
  const s = buildStream(CHUNKS);
  const bad = flipped(s.bytes, s.recordAt[1] + CHUNK_HEADER + 5);
  const reader = new StreamReader(new MemorySource(bad));
  await reader.readHeader();
  const seen: number[] = [];
  await assertRejects(
    async () => {
      for (;;) {
        const r = await reader.next();
        if (r.kind === "data") seen.push(r.bytes.length);
      }
    },
    StreamError,
    "checksum mismatch in DEV_DATA_STATE record #2",
  );
  assertEquals(seen, [1], "only the record before the bad one came out");
});

Deno.test("checksum mismatch: header JSON and header crc", async () => {
  const s = buildStream(CHUNKS);
  await expectStreamError(flipped(s.bytes, HEADER_FIXED + 3), "header checksum mismatch", "JSON byte");
  await expectStreamError(flipped(s.bytes, s.headerEnd - 1), "header checksum mismatch", "crc byte");
  // The length field: a shorter/longer header no longer checksums.
  await expectStreamError(flipped(s.bytes, 15), "header checksum mismatch", "length byte");
});

Deno.test("trailer: a flipped bit is refused; so is a consistent trailer that disagrees with the data", async () => {
  const s = buildStream(CHUNKS);
  for (const off of [8, 15, 16, 24, 28, 31]) {
    await expectStreamError(flipped(s.bytes, s.trailerAt + off), "trailer checksum mismatch", `trailer byte ${off}`);
  }
  // Re-encode the trailer with wrong counts but a valid checksum.
  const total = 1 + 4096 + 777 + 2048;
  for (
    const t of [
      { dataBytes: total + 1, chunks: 4, dataCrc: crc32(concat(CHUNKS)) },
      { dataBytes: total, chunks: 5, dataCrc: crc32(concat(CHUNKS)) },
      { dataBytes: total, chunks: 4, dataCrc: crc32(concat(CHUNKS)) ^ 1 },
    ]
  ) {
    const b = concat([s.bytes.subarray(0, s.trailerAt), encodeTrailer(t)]);
    await expectStreamError(b, "does not match the data read", JSON.stringify(t));
  }
});

Deno.test("truncation at every offset is refused with a StreamError naming where", async () => {
  const s = buildStream([pattern(50, 1), pattern(30, 2)]);
  const total = s.bytes.length;
  for (let cut = 0; cut < total; cut++) {
    const e = await expectStreamError(s.bytes.subarray(0, cut), "truncated stream", `cut at ${cut} of ${total}`);
    let where: string;
    if (cut < s.headerEnd) where = "header";
    else if (cut >= s.trailerAt + 8) where = "trailer";
    else if (s.recordAt.some((r) => cut > r + 8 && cut < r + CHUNK_HEADER)) where = "header of a DEV_DATA_STATE record";
    else if (s.recordAt.some((r, i) => cut >= r + CHUNK_HEADER && cut < r + CHUNK_HEADER + s.chunks[i].length)) {
      where = "DEV_DATA_STATE record";
    } else where = "";
    assert(e.message.includes(where), `cut at ${cut}: ${e.message} should mention ${where}`);
  }
});

Deno.test("truncation: cut exactly between records is refused (no trailer)", async () => {
  const s = buildStream(CHUNKS);
  for (const cut of [s.headerEnd, ...s.recordAt, s.trailerAt]) {
    await expectStreamError(s.bytes.subarray(0, cut), "ends inside a record tag", `cut at ${cut}`);
  }
});

Deno.test("an unknown record tag is refused", async () => {
  const s = buildStream(CHUNKS);
  for (const tag of [0xffffffffef1000ffn, 0n, 0xffffffffef110002n, TAG.DEV_DATA_STATE + 0x100n]) {
    const b = s.bytes.slice();
    b.set(u64be(tag), s.recordAt[1]);
    const e = await expectStreamError(b, `unknown record tag 0x${tag.toString(16)}`, `tag ${tag}`);
    assertEquals(e.offset, s.recordAt[1]);
  }
});

Deno.test("an oversized chunk length is refused before any allocation or read of it", async () => {
  const head = concat([encodeHeader(HEADER), u64be(TAG.DEV_DATA_STATE)]);
  for (const size of [2n ** 62n, 2n ** 64n - 1n, BigInt(MAX_CHUNK) + 1n]) {
    // An endless source: a reader that tried to read `size` bytes would never stop.
    const src = new EndlessSource(concat([head, u64be(size), u32be(0)]));
    const e = await assertRejects(() => readAll(src), StreamError, "exceeds", `size ${size}`);
    assertMatch(e.message, new RegExp(`record of ${size} bytes exceeds the ${MAX_CHUNK}-byte limit`));
    assert(src.delivered <= 8 << 20, `only the read-ahead buffer was filled (${src.delivered} bytes)`);
  }
  // The limit is the reader's, not a constant: exactly maxChunk passes, one more fails.
  const small = buildStream([pattern(1024, 3)], 1024);
  assertEquals((await readAll(new MemorySource(small.bytes), 1024)).reader.dataBytes, 1024);
  await expectStreamError(small.bytes, "exceeds the 1023-byte limit", "maxChunk 1023", 1023);
});

Deno.test("bytes after the trailer are refused", async () => {
  const s = buildStream(CHUNKS);
  for (const extra of [new Uint8Array([0]), pattern(100, 1), encodeTrailer({ dataBytes: 0, chunks: 0, dataCrc: 0 })]) {
    const e = await expectStreamError(
      concat([s.bytes, extra]),
      "unexpected bytes after the end of the stream",
      `+${extra.length}`,
    );
    assertEquals(e.offset, s.bytes.length);
  }
  // And reading on after the end is an error, not a second trailer.
  const reader = new StreamReader(new MemorySource(s.bytes));
  await reader.readHeader();
  while ((await reader.next()).kind !== "end");
  await assertRejects(async () => await reader.next(), StreamError, "read past the end");
});

Deno.test("header refusals: magic, version, length limit, JSON, missing fields", async () => {
  const good = encodeHeader(HEADER);
  await expectStreamError(flipped(good, 0), "bad magic", "magic");
  await expectStreamError(new TextEncoder().encode("#!/bin/sh\necho not a stream\n"), "bad magic", "text");
  // (version 2 is a signed stream: docs/stream-format.md, "Signed streams")
  const v3 = good.slice();
  new DataView(v3.buffer).setUint16(8, 3);
  await expectStreamError(v3, "stream format version 3 is not supported", "version");
  // A huge length is refused from the fixed part alone.
  const big = good.slice(0, HEADER_FIXED);
  new DataView(big.buffer).setUint32(12, MAX_HEADER_JSON + 1);
  const src = new EndlessSource(big);
  await assertRejects(async () => await new StreamReader(src).readHeader(), StreamError, `exceeds ${MAX_HEADER_JSON}`);
  const withJson = (text: string) => {
    const json = new TextEncoder().encode(text);
    const b = new Uint8Array(HEADER_FIXED + json.length + 4);
    b.set(STREAM_MAGIC);
    const v = new DataView(b.buffer);
    v.setUint16(8, FORMAT_VERSION);
    v.setUint32(12, json.length);
    b.set(json, HEADER_FIXED);
    v.setUint32(HEADER_FIXED + json.length, crc32(b.subarray(0, HEADER_FIXED + json.length)));
    return b;
  };
  await expectStreamError(withJson("{not json"), "not valid JSON", "bad JSON");
  await expectStreamError(withJson("{}"), "lacks the vfio-mig fields", "empty object");
  await expectStreamError(withJson('{"format":"qemu","device":{}}'), "lacks the vfio-mig fields", "other format");
  await expectStreamError(withJson('{"format":"vfio-mig","device":null}'), "lacks the vfio-mig fields", "null device");
  await expectStreamError(withJson("null"), "lacks the vfio-mig fields", "null");
});

Deno.test("identityMismatch: equal identities pass, each differing field is named", () => {
  assertEquals(identityMismatch(IDENTITY, { ...IDENTITY }), null);
  // kind is how the device was reached, not what it is.
  assertEquals(identityMismatch(IDENTITY, { ...IDENTITY, kind: "mdev" }), null);
  // A missing model and a null one are the same (real devices have none).
  const real = { ...IDENTITY, model: undefined };
  assertEquals(identityMismatch(real, { ...IDENTITY, model: undefined }), null);
  const cases: [Partial<StreamIdentity>, string][] = [
    [{ vendor: 0x8086 }, "0x4348:0x3253 device, the destination is 0x8086:0x3253"],
    [{ device: 0x1234 }, "the destination is 0x4348:0x1234"],
    [{ vendor: null }, "the destination is ?:0x3253"],
    [{ subsystemVendor: 0x1af4 }, "subsystem ids differ: stream 0x4348:0x3253, destination 0x1af4:0x3253"],
    [{ subsystemDevice: 0x1100 }, "subsystem ids differ"],
    [{ mdevType: "mtty-1" }, "mdev type mtty-2, the destination is mtty-1"],
    [{ mdevType: null }, "the destination is none"],
    [{ driver: "vfio-pci" }, "saved by driver mtty, the destination uses vfio-pci"],
    [{ model: "bulk" }, "from a mtty-2 device, the destination is bulk"],
    [{ model: undefined }, "from a mtty-2 device, the destination is real"],
  ];
  for (const [change, msg] of cases) {
    const why = identityMismatch(IDENTITY, { ...IDENTITY, ...change });
    assert(why !== null && why.includes(msg), `${JSON.stringify(change)}: ${why}`);
  }
  // And the other way round.
  const why = identityMismatch({ ...IDENTITY, mdevType: "mtty-1", model: "mtty-1" }, IDENTITY);
  assert(why !== null && why.includes("mtty-1, the destination is mtty-2"), String(why));
});
