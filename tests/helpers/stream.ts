// A builder of vfio-mig streams byte by byte, for tests that need bytes the writer
// would never make (a length that lies, a CRC left zero) or golden bytes checked
// against the writer's. Written from docs/stream-format.md, not from
// src/stream/writer.ts, so that a test comparing the two compares two readings of the
// format: a bare record is its be64 tag; a sized record is be64 tag | be64 size |
// be32 crc32(data) | data; the trailer is be64 STREAM_END | be64 data bytes | be64
// chunks | be32 crc32 of all data | be32 crc32 of the 20 bytes before it.

import { crc32 } from "node:zlib";
import { concat, u32be, u64be } from "./bytes.ts";

/** A bare record (SETUP, END_OF_STATE, …): its tag, 8 bytes. */
export function bareRecord(tag: bigint): Uint8Array {
  return u64be(tag);
}

/**
 * A sized record (DEV_DATA_STATE, DEV_CONFIG_STATE): header and data. `claim` writes a
 * size other than the data's (a lying length), `crc` a CRC other than the data's.
 */
export function sizedRecord(tag: bigint, data: Uint8Array, lie: { claim?: number; crc?: number } = {}): Uint8Array {
  const crc = lie.crc ?? crc32(data) >>> 0;
  return concat(u64be(tag), u64be(lie.claim ?? data.length), u32be(crc), data);
}

/** The trailer of a stream whose data records carried these chunks, in order. */
export function trailerOver(chunks: Uint8Array[]): Uint8Array {
  const fields = concat(
    u64be(chunks.reduce((n, c) => n + c.length, 0)),
    u64be(chunks.length),
    u32be(chunks.reduce((c, x) => crc32(x, c), 0) >>> 0),
  );
  return concat(u64be(0xffffffffef1100ffn), fields, u32be(crc32(fields) >>> 0));
}
