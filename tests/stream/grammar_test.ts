// One record grammar (src/stream/grammar.ts) for load, inspect and verify: for the same
// damage the three name the same record (its number, as inspect lists them) and the
// same byte. Streams from real saves (one device, live; two devices) are damaged many
// ways and each is loaded (the library, into simulated devices) and inspected.

import { assert, assertEquals } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { openDevice, type VfioDevice } from "../../src/device/open.ts";
import { StreamError, VfioMigError } from "../../src/errors.ts";
import { inspectStream } from "../../src/inspect/inspect.ts";
import { load } from "../../src/migrate/load.ts";
import { save } from "../../src/migrate/save.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";
import { CHUNK_HEADER, TAG } from "../../src/stream/format.ts";
import { verifyStream } from "../../src/stream/verify.ts";
import { openSink } from "../../src/transport/transport.ts";
import { concat, MemorySource, u64be } from "../helpers/bytes.ts";

const host = libc();

/** The StreamError at the root of a load's failure, if any. */
function streamErrorOf(e: unknown): StreamError | null {
  for (let x = e; x; x = (x as Error).cause) {
    if (x instanceof StreamError) return x;
    if (!(x instanceof Error)) break;
  }
  return null;
}

interface Fixture {
  name: string;
  bytes: Uint8Array;
  destinations: VfioDevice[];
}

async function fixture(
  dir: string,
  name: string,
  models: { model: "bulk" | "mtty-2"; size?: number }[],
  live: boolean,
): Promise<Fixture> {
  const k = new SimKernel(host);
  const src = models.map((m, i) => {
    const p = `${dir}/${name}-src${i}`;
    new SimStore(host, p).create({ ...m, seed: 1 + i });
    return openDevice(k, `sim:${p}`);
  });
  const file = `${dir}/${name}.vfmig`;
  try {
    await save(src, openSink(k, file), { live, resume: true, chunkSize: 4096 });
  } finally {
    for (const d of src) d.close();
  }
  const destinations = models.map((m, i) => {
    const p = `${dir}/${name}-dst${i}`;
    new SimStore(host, p).create({ ...m, seed: 11 + i });
    return openDevice(k, `sim:${p}`);
  });
  return { name, bytes: await Deno.readFile(file), destinations };
}

/** Damaged versions of a stream: [what, bytes]. */
function damages(good: Uint8Array): [string, Uint8Array][] {
  const rep = inspectStream(new MemorySource(good));
  assert(rep.ok, JSON.stringify(rep.firstProblem));
  const recs = rep.records;
  const out: [string, Uint8Array][] = [];
  const flip = (at: number, mask = 0x01) => {
    const b = good.slice();
    b[at] ^= mask;
    return b;
  };
  const headerEnd = recs[0].offset;
  for (const r of recs) {
    out.push([`cut at record ${r.index} (${r.tag})`, good.subarray(0, r.offset)]);
    out.push([`cut inside record ${r.index}'s tag`, good.subarray(0, r.offset + 3)]);
    out.push([`unknown tag at record ${r.index}`, flip(r.offset + 7, 0x40)]);
    if (r.size !== undefined) {
      out.push([`cut inside record ${r.index}'s size`, good.subarray(0, r.offset + 12)]);
      out.push([`cut inside record ${r.index}'s data`, good.subarray(0, r.offset + CHUNK_HEADER + (r.size >> 1))]);
      out.push([`flipped data byte in record ${r.index}`, flip(r.offset + CHUNK_HEADER + (r.size >> 1))]);
      out.push([`flipped crc of record ${r.index}`, flip(r.offset + 17)]);
      out.push([`huge size in record ${r.index}`, flip(r.offset + 8, 0x80)]);
    }
  }
  const trailer = recs.at(-1)!;
  out.push(["flipped trailer count", flip(trailer.offset + 23)]);
  out.push(["garbage after the trailer", concat(good, new Uint8Array([1, 2, 3]))]);
  // Grammar: a record moved out of its place (the first SWITCHOVER twice).
  const sw = recs.find((r) => r.tag === "SWITCHOVER")!;
  out.push([
    "SWITCHOVER repeated",
    concat(good.subarray(0, sw.offset + 8), u64be(TAG.SWITCHOVER), good.subarray(sw.offset + 8)),
  ]);
  // Grammar: the setup section's END_OF_STATE dropped.
  const setupEnd = recs.find((r) => r.tag === "END_OF_STATE")!;
  out.push([
    "setup END_OF_STATE dropped",
    concat(good.subarray(0, setupEnd.offset), good.subarray(setupEnd.offset + 8)),
  ]);
  // Grammar: the trailer right after the setup section.
  out.push(["trailer too early", concat(good.subarray(0, setupEnd.offset + 8), good.subarray(trailer.offset))]);
  // Cut at 500 bytes and in the header (no record number: the header).
  out.push(["cut at 500 bytes", good.subarray(0, 500)]);
  out.push(["cut in the header", good.subarray(0, headerEnd - 2)]);
  return out;
}

Deno.test("load, inspect and verify name the same record and byte for the same damage", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-grammar-" });
  try {
    const fixtures = [
      await fixture(dir, "live-bulk", [{ model: "bulk", size: 20000 }], true),
      await fixture(dir, "two", [{ model: "mtty-2" }, { model: "bulk", size: 9000 }], false),
    ];
    let compared = 0;
    for (const f of fixtures) {
      try {
        for (const [what, bad] of damages(f.bytes)) {
          const rep = inspectStream(new MemorySource(bad));
          assert(!rep.ok, `${f.name}, ${what}: inspect finds the damage`);
          let loadErr: unknown = null;
          try {
            await load(f.destinations.map((device) => ({ device })), new MemorySource(bad));
          } catch (e) {
            loadErr = e;
          }
          assert(loadErr instanceof VfioMigError, `${f.name}, ${what}: load refuses (${loadErr})`);
          const se = streamErrorOf(loadErr);
          assert(se, `${f.name}, ${what}: load's error is a stream error: ${loadErr}`);
          const at = `${f.name}, ${what}: load says "${se.message}", inspect "${rep.firstProblem!.message}"`;
          assertEquals(se.offset, rep.firstProblem!.offset, `${at}: the same byte`);
          assertEquals(se.record ?? null, rep.firstProblemRecord, `${at}: the same record`);
          const v = await verifyStream(new MemorySource(bad));
          assertEquals(v.ok, false, `${f.name}, ${what}: verify finds it`);
          assertEquals([v.problem!.offset, v.problem!.record], [se.offset, se.record ?? null], `${at}: verify`);
          compared++;
        }
        // The undamaged stream loads, inspects and verifies clean.
        const v = await verifyStream(new MemorySource(f.bytes));
        assertEquals([v.ok, v.problem], [true, null]);
        await load(f.destinations.map((device) => ({ device })), new MemorySource(f.bytes));
      } finally {
        for (const d of f.destinations) d.close();
      }
    }
    assert(compared > 60, `${compared} damaged streams compared`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
