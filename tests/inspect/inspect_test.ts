// `vfio-mig inspect` on streams made by the real CLI (sim create + save): good ones
// (offline mtty, live bulk), every truncation and every single-byte corruption of a
// small one (in process: each must be found, with an offset, and never throw), and
// the CLI's exit codes, standard input, JSON and bounded --dump.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { inspectStream } from "../../src/inspect/inspect.ts";
import { CHUNK_HEADER, MAX_CHUNK } from "../../src/stream/format.ts";
import { cliText as vfioMig } from "../helpers/proc.ts";
import { MemorySource } from "../helpers/bytes.ts";

/** Streams saved once by the CLI: an offline mtty-2 save and a live save of a changing bulk device. */
const fixtures = (async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-inspect-" });
  const steps = [
    ["sim", "create", `${dir}/m`, "--model", "mtty-2", "--seed", "7"],
    ["save", "--device", `sim:${dir}/m`, "--resume", "-q", `${dir}/mtty.bin`],
    ["sim", "create", `${dir}/b`, "--model", "bulk", "--size", "64K", "--rate", "1M"],
    ["save", "--device", `sim:${dir}/b`, "--live", "--resume", "-q", `${dir}/bulk.bin`],
  ];
  for (const s of steps) {
    const r = await vfioMig(s);
    if (r.code !== 0) throw new Error(`vfio-mig ${s.join(" ")}: ${r.err}`);
  }
  return {
    dir,
    mttyPath: `${dir}/mtty.bin`,
    mtty: await Deno.readFile(`${dir}/mtty.bin`),
    bulkPath: `${dir}/bulk.bin`,
    bulk: await Deno.readFile(`${dir}/bulk.bin`),
  };
})();

Deno.test("inspect: an offline mtty-2 stream: header, sections, totals, decoded ports; exit 0", async () => {
  const f = await fixtures;
  const r = await vfioMig(["inspect", "--json", f.mttyPath]);
  assertEquals(r.code, 0, r.err);
  const rep = JSON.parse(r.out);
  assertEquals([rep.ok, rep.firstProblem, rep.problems], [true, null, []]);
  assertEquals(rep.streamBytes, f.mtty.length);
  assertEquals(rep.header.checksum, "ok");
  assertEquals(rep.header.fields.device.mdevType, "mtty-2");
  assertEquals(rep.header.fields.mode, "offline");
  assertEquals(rep.records[0].tag, "DEV_SETUP_STATE");
  assertEquals(rep.records.at(-1).tag, "STREAM_END");
  const names = rep.sections.map((s: { name: string }) => s.name);
  assertEquals([names[0], names[1], names.at(-1)], ["setup", "stop-copy", "trailer"]);
  assertEquals(rep.totals.dataBytes, 96);
  assertEquals([rep.totals.precopyBytes, rep.totals.stopCopyBytes, rep.totals.chunks], [0, 96, 1]);
  assertEquals(rep.trailer.matches, true);
  const data = rep.records.find((x: { tag: string }) => x.tag === "DEV_DATA_STATE");
  assertEquals([data.section, data.size, data.crc], ["stop-copy", 96, "ok"]);
  assertEquals(rep.payload.format, "mtty");
  assertEquals(rep.payload.problems, []);
  assertEquals([rep.payload.mtty.version, rep.payload.mtty.nrPorts, rep.payload.mtty.ports.length], ["1.0", 2, 2]);
  const port = rep.payload.mtty.ports[0];
  assertEquals([port.maxFifoSize, port.intrTriggerLevel, port.fifo.count], [16, 1, port.fifo.bytes.length]);

  const text = await vfioMig(["inspect", f.mttyPath]);
  assertEquals(text.code, 0, text.err);
  assertMatch(text.out, /^ {2}device {4}sim, driver mtty, mdev type mtty-2, PCI 0x4348:0x3253/m);
  assertMatch(text.out, /^totals {6}96 bytes of device data in 1 chunk \(pre-copy 0, stop-copy 96\)/m);
  assertMatch(
    text.out,
    /^payload {5}mtty \(samples\/vfio-mdev\/mtty\.c\): magic 0x7e9d09898c3e2c4e, version 1\.0, 2 ports/m,
  );
  assertMatch(text.out, /^result {6}OK: the stream is intact$/m);
});

Deno.test("inspect: a live bulk stream splits pre-copy and stop-copy bytes at SWITCHOVER; standard input works", async () => {
  const f = await fixtures;
  const r = await vfioMig(["inspect", "--json", "-"], f.bulk);
  assertEquals(r.code, 0, r.err);
  const rep = JSON.parse(r.out);
  assertEquals(rep.ok, true, JSON.stringify(rep.problems));
  assertEquals(rep.header.fields.mode, "live");
  const t = rep.totals;
  assert(t.precopyBytes >= 64 * 1024, `the whole state goes in pre-copy (${t.precopyBytes})`);
  assertEquals(t.precopyBytes + t.stopCopyBytes, t.dataBytes);
  const switchover = rep.records.find((x: { tag: string }) => x.tag === "SWITCHOVER");
  for (const x of rep.records.filter((x: { tag: string }) => x.tag === "DEV_DATA_STATE")) {
    assertEquals(x.section, x.offset < switchover.offset ? "pre-copy" : "stop-copy");
  }
  assertEquals(rep.payload.format, "bulk");
  assertEquals([rep.payload.bulk.stateSize, rep.payload.bulk.fullRecords], [64 * 1024, 1]);
  assertEquals(rep.payload.problems, []);
});

Deno.test("inspect: every truncation is found, with its offset, and never throws", async () => {
  const { mtty } = await fixtures;
  for (let cut = 0; cut < mtty.length; cut++) {
    const rep = inspectStream(new MemorySource(mtty.subarray(0, cut)));
    assertEquals(rep.ok, false, `cut at ${cut}`);
    const p = rep.firstProblem!;
    assertMatch(p.message, cut === 0 ? /^empty stream/ : /^truncated: /, `cut at ${cut}`);
    assert(p.offset <= cut, `cut at ${cut}: problem at ${p.offset}`);
    assertEquals(rep.streamBytes, cut);
  }
});

Deno.test("inspect: every single-byte corruption is found and never throws", async () => {
  const { mtty } = await fixtures;
  const headerEnd = inspectStream(new MemorySource(mtty)).records[0].offset;
  for (let at = 0; at < mtty.length; at++) {
    const bad = mtty.slice();
    bad[at] ^= 0xff;
    const rep = inspectStream(new MemorySource(bad));
    assertEquals(rep.ok, false, `byte ${at} flipped`);
    // Header damage shows by its checksum at the header's end; record damage at or before the byte.
    const bound = at < headerEnd ? headerEnd : at;
    assert(rep.firstProblem!.offset <= bound, `byte ${at}: reported at ${rep.firstProblem!.offset}`);
  }
});

Deno.test("inspect: a corrupted data byte: its record's checksum, then the trailer; exit 4", async () => {
  const f = await fixtures;
  const good = inspectStream(new MemorySource(f.mtty));
  const rec = good.records.find((x) => x.tag === "DEV_DATA_STATE")!;
  const bad = f.mtty.slice();
  bad[rec.offset + CHUNK_HEADER + 30] ^= 0x01;
  const rep = inspectStream(new MemorySource(bad));
  assertEquals(rep.firstProblem!.offset, rec.offset);
  assertMatch(
    rep.firstProblem!.message,
    new RegExp(`^checksum mismatch in DEV_DATA_STATE record #${rec.index} \\(96 bytes`),
  );
  assertStringIncludes(rep.problems[1].message, "trailer says 96 bytes in 1 chunks");
  assertEquals(rep.totals.badChecksums, 1);
  assert(rep.trailer !== null, "reading went on to the trailer");
  assertEquals(rep.records.length, good.records.length);

  const path = `${f.dir}/corrupt.bin`;
  await Deno.writeFile(path, bad);
  const r = await vfioMig(["inspect", path]);
  assertEquals(r.code, 4);
  assertMatch(r.out, new RegExp(`^result {6}DAMAGED: at byte ${rec.offset}: checksum mismatch`, "m"));
  const t = await vfioMig(["inspect", "--json", "-"], f.mtty.subarray(0, rec.offset + 40));
  assertEquals(t.code, 4);
  assertEquals(JSON.parse(t.out).firstProblem, {
    offset: rec.offset,
    message: "truncated: the stream ends inside a DEV_DATA_STATE record (20 of 96 data bytes present)",
  });
});

Deno.test("inspect: a huge size field is refused without allocating, and reading resumes at the next tag", async () => {
  const { mtty } = await fixtures;
  const good = inspectStream(new MemorySource(mtty));
  const rec = good.records.find((x) => x.tag === "DEV_DATA_STATE")!;
  const bad = mtty.slice();
  new DataView(bad.buffer).setBigUint64(rec.offset + 8, 0x7fff_ffff_ffff_ffffn);
  const rep = inspectStream(new MemorySource(bad), { dumpBytes: Number.MAX_SAFE_INTEGER });
  assertEquals(rep.firstProblem!.offset, rec.offset + 8);
  assertStringIncludes(rep.firstProblem!.message, `exceeds the ${MAX_CHUNK}-byte limit`);
  assert(rep.records.some((x) => x.resynced && x.tag === "STREAM_END"), "the trailer is found after resync");

  // A size within the limit but more than the stream holds: streamed through, reported as truncated.
  new DataView(bad.buffer).setBigUint64(rec.offset + 8, BigInt(MAX_CHUNK));
  const cut = inspectStream(new MemorySource(bad), { dumpBytes: 256 });
  assertMatch(
    cut.firstProblem!.message,
    /^truncated: the stream ends inside a DEV_DATA_STATE record \(\d+ of 67108864 data bytes present\)$/,
  );
});

Deno.test("inspect: not a vfio-mig stream, and a header checksum mismatch", async () => {
  const f = await fixtures;
  const junk = await vfioMig(["inspect", "-"], new TextEncoder().encode("hello, this is not a stream\n"));
  assertEquals(junk.code, 4);
  assertMatch(junk.out, /DAMAGED: at byte 0: not a vfio-mig stream: bad magic 68 65 6c 6c 6f 2c 20 74/);
  const bad = f.mtty.slice();
  bad[40] ^= 0x20; // inside the JSON header
  const rep = inspectStream(new MemorySource(bad));
  assertMatch(
    rep.firstProblem!.message,
    /^header checksum mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8} over bytes 0-\d+$/,
  );
  assertEquals(rep.header?.checksum, "bad");
  assertEquals(rep.problems.length, 1, "the records after the header are intact");
});

Deno.test("inspect: --dump shows at most 256 bytes of each record, --dump-all all of them", async () => {
  const f = await fixtures;
  const big = inspectStream(new MemorySource(f.bulk)).records.find((x) =>
    x.tag === "DEV_DATA_STATE" && x.size! > 4096
  )!;
  const dump = await vfioMig(["inspect", "--dump", f.bulkPath]);
  assertEquals(dump.code, 0, dump.err);
  assertStringIncludes(dump.out, `data at byte ${big.offset + CHUNK_HEADER}, first 256 of ${big.size} bytes:`);
  const hexLines = (s: string) => s.split("\n").filter((l) => /^ {9}[0-9a-f]{8} {2}/.test(l));
  const records = inspectStream(new MemorySource(f.bulk)).records.filter((x) => x.size !== undefined);
  const expect = (limit: number) => records.reduce((n, x) => n + Math.ceil(Math.min(x.size!, limit) / 16), 0);
  assertEquals(hexLines(dump.out).length, expect(256));
  const all = await vfioMig(["inspect", "--dump-all", f.bulkPath]);
  assertEquals(hexLines(all.out).length, expect(Infinity));
  const json = JSON.parse((await vfioMig(["inspect", "--json", "--dump", f.mttyPath])).out);
  const data = json.records.find((x: { tag: string }) => x.tag === "DEV_DATA_STATE");
  assertEquals(data.dump.slice(0, 16), "4e2c3e8c89099d7e", "mtty's magic, little-endian");
});

Deno.test({
  name: "inspect: clean up fixtures",
  async fn() {
    await Deno.remove((await fixtures).dir, { recursive: true });
  },
});
