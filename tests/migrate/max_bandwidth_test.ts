// save --max-bandwidth RATE (QEMU's max-bandwidth): the device data read at most at
// RATE bytes/s (src/migrate/rate_limit.ts, a token bucket that starts empty and holds
// at most 100 ms of the rate). Only lower bounds on time are asserted (a slow machine
// takes longer, never shorter): N bytes take at least N / RATE; in any stretch of a live
// save's pre-copy at most RATE × time + the burst go out. 0, negative and garbage rates
// are usage errors (exit 2) before any device is touched.

import { assert, assertEquals, assertMatch, assertThrows } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { openDevice } from "../../src/device/open.ts";
import { VfioMigError } from "../../src/errors.ts";
import type { MigrationEvent } from "../../src/events/events.ts";
import { Events } from "../../src/events/events.ts";
import { BURST_MS, RateLimit } from "../../src/migrate/rate_limit.ts";
import { save } from "../../src/migrate/save.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";
import { openSink } from "../../src/transport/transport.ts";
import { cli, MiB, show, sleep, stateOf, vfioMig, withTemp } from "../helpers/proc.ts";

const host = libc();

Deno.test("RateLimit: N bytes owe N / rate from an empty bucket; an idle bucket holds at most BURST_MS of the rate", () => {
  let now = 0;
  const r = new RateLimit(1000, () => now); // 1000 bytes/s, burst 100 bytes
  assertEquals(r.burstBytes, 1000 * BURST_MS / 1000);
  assertEquals(r.debit(500), 500, "500 bytes at 1000 B/s: wait 500 ms");
  now = 500;
  assertEquals(r.debit(0), 0, "paid for once the time passed");
  now = 10_000; // idle: the bucket fills to the burst only
  assertEquals(r.debit(300), 200, "300 bytes after an idle moment: 100 free, 200 waited for");
  for (const bad of [0, -1, NaN, Infinity]) assertThrows(() => new RateLimit(bad), RangeError, undefined, `${bad}`);
});

Deno.test("library save with maxBandwidth: 3 MiB at 1 MiB/s take at least 3 s; the result says the rate; 0, negative, NaN refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-bw-" });
  try {
    const k = new SimKernel(host);
    new SimStore(host, `${dir}/a`).create({ model: "bulk", size: 3 * MiB, seed: 1 });
    const d = openDevice(k, `sim:${dir}/a`);
    try {
      const t0 = performance.now();
      const r = await save(d, openSink(k, `${dir}/s.bin`), { maxBandwidth: MiB });
      const s = (performance.now() - t0) / 1000;
      assert(r.bytes >= 3 * MiB, `${r.bytes} bytes of device data`);
      assert(s >= r.bytes / MiB, `${r.bytes} bytes at 1 MiB/s took ${s.toFixed(2)} s (at least ${r.bytes / MiB} s)`);
      assertEquals(r.maxBandwidth, MiB);
      const plain = await save(d, openSink(k, `${dir}/t.bin`), {});
      assertEquals(plain.maxBandwidth, null, "no limit: null");
      for (const bad of [0, -1, NaN]) {
        let e: unknown = null;
        await save(d, openSink(k, `${dir}/u.bin`), { maxBandwidth: bad }).catch((x) => e = x);
        assert(e instanceof VfioMigError && e.kind === "usage", `maxBandwidth ${bad}: a usage error (${e})`);
      }
    } finally {
      d.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("library live save with maxBandwidth: pre-copy sends at most rate × time + the burst", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-bw-" });
  try {
    const k = new SimKernel(host);
    // 2 MiB dirtied at 4 MiB/s while running: pre-copy never converges at 1 MiB/s, so it
    // runs until --max-precopy, paced all along.
    new SimStore(host, `${dir}/a`).create({ model: "bulk", size: 2 * MiB, rate: 4 * MiB, seed: 2 });
    const d = openDevice(k, `sim:${dir}/a`);
    const seen: MigrationEvent[] = [];
    const events = new Events().on({ event: (e) => seen.push(e) });
    try {
      const rate = MiB;
      const r = await save(d, openSink(k, `${dir}/s.bin`), {
        live: true,
        maxPrecopyMs: 1500,
        maxBandwidth: rate,
        events,
        resume: true,
      });
      const end = seen.find((e) => e.type === "phase" && e.phase === "pre-copy" && e.edge === "end") as
        | { bytes: number; ms: number }
        | undefined;
      assert(end, "a pre-copy end event");
      const burst = rate * BURST_MS / 1000;
      assert(
        end.bytes <= rate * end.ms / 1000 + burst,
        `pre-copy sent ${end.bytes} bytes in ${end.ms.toFixed(0)} ms: at most ${rate} B/s × that + ${burst}`,
      );
      assert(end.bytes > 0, "pre-copy sent something");
      assertEquals(r.precopyBytes, end.bytes);
      assert(r.bandwidth === null || r.bandwidth <= rate * 1.01 + burst * 10, `judged at ${r.bandwidth} B/s`);
    } finally {
      d.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("save --max-bandwidth on the command line: the transfer takes at least size / rate; --json and --events say the rate", async () => {
  await withTemp(async (t) => {
    const a = `${t}/a`;
    new SimStore(host, a).create({ model: "bulk", size: 4 * MiB, seed: 3 });
    const r = await cli([
      "save",
      "--max-bandwidth",
      "2M/s",
      "--json",
      "--events",
      `${t}/ev.jsonl`,
      "--device",
      `sim:${a}`,
      `${t}/s.bin`,
    ]);
    assertEquals(r.code, 0, show(r));
    const j = JSON.parse(r.stdout);
    assertEquals(j.maxBandwidth, 2 * MiB);
    assert(j.seconds >= 2, `4 MiB at 2 MiB/s: ${j.seconds} s, at least 2 s`);
    assert(r.ms >= 2000, `the process took ${r.ms} ms`);
    const start = JSON.parse((await Deno.readTextFile(`${t}/ev.jsonl`)).split("\n")[0]);
    assertEquals([start.type, start.maxBandwidth], ["start", 2 * MiB]);
    // The text summary names the limit.
    const s = await cli(["save", "--max-bandwidth", "64M", "--device", `sim:${a}`, `${t}/s2.bin`]);
    assertEquals(s.code, 0, show(s));
    assertMatch(s.stderr, /at most 64\.0+ MiB\/s|at most 64 MiB\/s/);
  });
});

Deno.test("save --max-bandwidth 0, negative or garbage: a usage error (exit 2) before the device is touched", async () => {
  await withTemp(async (t) => {
    const a = `${t}/a`;
    new SimStore(host, a).create({ model: "bulk", size: MiB, seed: 4 });
    for (const bad of ["0", "0M", "-5", "-1M", "fast", "10X", "1.5", ""]) {
      const r = await cli(["save", `--max-bandwidth=${bad}`, "--device", `sim:${a}`, `${t}/s.bin`]);
      assertEquals(r.code, 2, `--max-bandwidth '${bad}': ${show(r)}`);
      const lines = r.stderr.trim().split("\n");
      assertEquals(lines.length, 1, `one line for '${bad}': ${r.stderr}`);
      assertMatch(lines[0], /--max-bandwidth/);
      assertEquals(await stateOf(a), "RUNNING", `'${bad}': the device untouched`);
      assert(!(await Deno.stat(`${t}/s.bin`).catch(() => null)), `'${bad}': no output`);
    }
  });
});

Deno.test("save --max-bandwidth: Ctrl-C while the copy waits for the rate ends it at once (exit 130, device RUNNING)", async () => {
  await withTemp(async (t) => {
    const a = `${t}/a`;
    new SimStore(host, a).create({ model: "bulk", size: MiB, seed: 5 });
    const p = vfioMig(["save", "--max-bandwidth", "1K", "--device", `sim:${a}`, `${t}/s.bin`]); // ~17 min
    const deadline = performance.now() + 30_000;
    while ((await stateOf(a)) !== "STOP_COPY") {
      assert(performance.now() < deadline, `the save never reached STOP_COPY: ${p.stderr}`);
      await sleep(50);
    }
    await sleep(300); // in the rate's wait now
    const sent = performance.now();
    p.kill("SIGINT");
    const r = await p.done(20_000);
    assertEquals(r.code, 130, show(r));
    assert(performance.now() - sent < 5000, `ended ${Math.round(performance.now() - sent)} ms after SIGINT`);
    assertEquals(await stateOf(a), "RUNNING");
    assert(!(await Deno.stat(`${t}/s.bin`).catch(() => null)), "no output");
  });
});
