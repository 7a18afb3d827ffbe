// The stream's CRC-32: the table that answers until node:zlib has loaded (src/stream/format.ts)
// gives zlib's value for every length, split anywhere, and crc32 gives it before and after.

import { assertEquals } from "../helpers/assert.ts";
import { crc32, tableCrc32 } from "../../src/stream/format.ts";
import zlib from "node:zlib";

Deno.test("crc32: the table and zlib agree on every length and split, and crc32 answers the same before and after zlib loads", async () => {
  const data = new Uint8Array(70_000);
  for (let i = 0; i < data.length; i += 65_536) crypto.getRandomValues(data.subarray(i, i + 65_536));
  const early = crc32(data); // may be the table's (first call) or zlib's (another test loaded it)
  for (const n of [0, 1, 2, 3, 7, 8, 255, 256, 4095, 65_537, 70_000]) {
    const part = data.subarray(0, n);
    const want = zlib.crc32(part, 0) >>> 0;
    assertEquals(tableCrc32(part, 0), want, `length ${n}`);
    const cut = n >> 1;
    assertEquals(tableCrc32(part.subarray(cut), tableCrc32(part.subarray(0, cut), 0)), want, `length ${n} split`);
    assertEquals(tableCrc32(part.subarray(cut), zlib.crc32(part.subarray(0, cut), 0) >>> 0), want, `mixed ${n}`);
  }
  assertEquals(crc32(new TextEncoder().encode("123456789")), 0xcbf43926); // the CRC-32 check value
  await new Promise((r) => setTimeout(r, 50));
  assertEquals(crc32(data), early);
  assertEquals(crc32(data), zlib.crc32(data, 0) >>> 0);
});
