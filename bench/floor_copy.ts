// The least a Deno program does to save a device's state to a file, for the bench's `file-floor` row (issue 27):
// start, load node:zlib, then read 1 MiB at a time into one buffer, take its CRC-32 (zlib's, as the stream's every
// chunk has) and write it, until the end; no module graph, no device, no stream framing, no temporary name. What the
// tool costs beyond this is its own; what this costs beyond `dd bs=1M` no Deno tool that checksums can avoid.
//
//   deno run --allow-read=SRC --allow-write=DST bench/floor_copy.ts SRC DST [--no-crc]   (--allow-all for paths in /dev)

import zlib from "node:zlib";

const [src, dst, flag] = Deno.args;
if (!src || !dst || (flag !== undefined && flag !== "--no-crc")) {
  console.error("usage: floor_copy.ts SRC DST [--no-crc]");
  Deno.exit(2);
}
const crc = flag !== "--no-crc";
using input = Deno.openSync(src, { read: true });
using output = Deno.openSync(dst, { write: true, create: true, truncate: true });
const buf = new Uint8Array(1 << 20);
let sum = 0;
for (;;) {
  const n = input.readSync(buf);
  if (n === null) break;
  const chunk = buf.subarray(0, n);
  if (crc) sum = zlib.crc32(chunk, sum);
  for (let off = 0; off < n;) off += output.writeSync(chunk.subarray(off));
}
if (crc && sum === -1) console.log(sum); // keeps the CRC live (it never is -1: crc32 is unsigned)
