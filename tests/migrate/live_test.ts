// Live saves (--live) of simulated bulk devices that dirty their state while RUNNING:
// convergence under the downtime limit with the downtime measured, --max-precopy when
// the limit cannot be met, SIGUSR2, and Linux 7.1 precopy-info v2 with REINIT (the
// simulator's --precopy-v2 / --reinit-after), down to the ioctl and up to the CLI.

import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import { jsonOf, logLines, MiB, ok, sha, show, simCreate, sleep, stateOf, vfioMig, withTemp } from "../helpers/proc.ts";
import { load, openDevice, save, type SaveResult, type Sink, type StreamSource } from "../../mod.ts";
import { SimKernel, SimStore } from "../../src/sim/mod.ts";
import { streamFormat } from "../../src/stream/mod.ts";
import { DeviceState, isErrno, libc, uapi } from "../../src/vfio/mod.ts";

import { formatBytes } from "../../src/migrate/session.ts";

const { decode, encodeInto, FEATURE, FEATURE_FLAGS, featureBuffer, IOCTL, STRUCTS } = uapi;

const REINIT = 1;

// ---------------------------------------------------------------------------
// Through the CLI, to a file

Deno.test("live: a dirtying bulk device converges under the downtime limit; the downtime is measured and reported", async () => {
  await withTemp(async (t) => {
    const [a, b, file] = [`${t}/a`, `${t}/b`, `${t}/live.vfmig`];
    await simCreate(a, "--size", "64M", "--rate", "16M", "--seed", "3");
    await simCreate(b, "--size", "64M", "--seed", "4");
    const r = await ok(["save", "--live", "--json", "--device", `sim:${a}`, file]);
    const s = jsonOf(r.stdout);
    assertEquals(s.switchReason, "converged", show(r));
    assertEquals(s.downtimeLimitMs, 300);
    assert(typeof s.iterations === "number" && s.iterations >= 1, `iterations: ${s.iterations}`);
    const downtime = s.downtimeMs as number;
    assert(downtime > 0 && downtime < 300, `downtime ${downtime} ms within the 300 ms limit`);
    assertEquals(s.downtimeToRunningMs, null, "a file cannot say when the destination runs");
    assert((s.precopyBytes as number) >= 64 * MiB, "the whole state went during pre-copy");
    assert((s.stopCopyBytes as number) < 16 * MiB, `stop-copy is what was dirtied: ${s.stopCopyBytes}`);
    assert((s.bandwidth as number) > 0, "bandwidth measured");
    assertEquals([s.reinits, s.precopyInfoV2, s.initDataSent], [0, false, 1], "a pre-7.1 device: no opt-in");
    // The stream holds everything: the destination gets the source's final state.
    await ok(["load", "--device", `sim:${b}`, file]);
    assertEquals(await sha(b), await sha(a), "state after a live save");
    assertEquals([await stateOf(a), await stateOf(b)], ["STOP", "RUNNING"]);
  });
});

Deno.test("live: an impossible limit ends by --max-precopy with switchReason max-precopy and a note on stderr", async () => {
  await withTemp(async (t) => {
    const [a, b, file] = [`${t}/a`, `${t}/b`, `${t}/live.vfmig`];
    // The device dirties pages far faster than they can be read: it never converges.
    await simCreate(a, "--size", "16M", "--rate", "4G", "--seed", "5");
    await simCreate(b, "--size", "16M", "--seed", "6");
    const args = ["save", "--live", "--downtime-limit", "1", "--max-precopy", "800", "--device", `sim:${a}`, file];
    const j = await ok([...args.slice(0, 1), "--json", ...args.slice(1)]);
    const s = jsonOf(j.stdout);
    assertEquals(s.switchReason, "max-precopy", show(j));
    assert((s.seconds as number) >= 0.8, `pre-copy lasted --max-precopy: ${s.seconds}`);
    assert((s.seconds as number) < 10, `and not much longer: ${s.seconds}`);
    assertMatch(
      j.stderr,
      /note: pre-copy did not converge: after \d+ iterations .* was left at the switch.* more than the 1 ms downtime limit/,
    );
    assertStringIncludes(j.stderr, "--max-precopy forced the switch");
    // The bytes it names are what was left, measured: stop-copy's and the queue's, as the JSON says.
    const left = (s.stopCopyBytes as number) + (s.backlogAtSwitch as number);
    assertStringIncludes(j.stderr, ` ${formatBytes(left)} was left at the switch`);
    await ok(["load", "--device", `sim:${b}`, file]);
    assertEquals(await sha(b), await sha(a), "a forced switch still moves the whole state");

    // The text summary says it too.
    await ok(["sim", "create", a, "--size", "16M", "--rate", "4G", "--seed", "7", "--force"]);
    const txt = await ok(args);
    assertMatch(txt.stderr, /^saved .* device is STOP$/m);
    assertMatch(txt.stderr, /^pre-copy: \d+ iterations, .*stopped by --max-precopy; stop-copy .*; downtime \d/m);
    assertMatch(txt.stderr, /^vfio-mig: note: pre-copy did not converge/m);
    // --quiet says nothing.
    await ok(["sim", "create", a, "--size", "16M", "--rate", "4G", "--seed", "8", "--force"]);
    const q = await ok([...args, "--quiet"]);
    assertEquals(q.stderr, "");
  });
});

Deno.test("live: SIGUSR2 during pre-copy switches to stop-copy at once (switchReason requested)", async () => {
  await withTemp(async (t) => {
    const [a, b, file, log] = [`${t}/a`, `${t}/b`, `${t}/live.vfmig`, `${t}/a.log`];
    await simCreate(a, "--size", "16M", "--rate", "4G", "--seed", "9");
    await simCreate(b, "--size", "16M", "--seed", "10");
    const p = vfioMig(
      ["save", "--live", "--json", "--downtime-limit", "1", "--max-precopy", "60000", "--device", `sim:${a}`, file],
      { env: { VFIO_MIG_SIM_LOG: log } },
    );
    // Pre-copy has begun (and claims the switchover) once the data_fd is read.
    const end = performance.now() + 15_000;
    while (!(await logLines(log)).some((l) => l.key === "read:data_fd")) {
      assert(performance.now() < end, "pre-copy did not start");
      await sleep(20);
    }
    await sleep(200);
    const sent = performance.now();
    p.kill("SIGUSR2");
    const r = await p.done(20_000);
    assertEquals(r.code, 0, show(r));
    assert(performance.now() - sent < 10_000, "switched soon after the signal");
    const s = jsonOf(r.stdout);
    assertEquals(s.switchReason, "requested");
    assert((s.seconds as number) < 20, `long before --max-precopy: ${s.seconds}`);
    await ok(["load", "--device", `sim:${b}`, file]);
    assertEquals(await sha(b), await sha(a));
  });
});

// ---------------------------------------------------------------------------
// precopy-info v2 and REINIT in the simulated kernel (ioctl level)

function precopyInfo(k: SimKernel, fd: number, flagsIn: number) {
  const buf = new Uint8Array(STRUCTS.vfio_precopy_info.size);
  encodeInto(STRUCTS.vfio_precopy_info, { argsz: buf.length, flags: flagsIn }, buf);
  k.ioctl(fd, IOCTL.MIG_GET_PRECOPY_INFO, buf);
  const d = decode(STRUCTS.vfio_precopy_info, buf);
  return { flags: d.flags, initial: d.initial_bytes, dirty: d.dirty_bytes };
}

function optIn(k: SimKernel, fd: number): void {
  k.ioctl(fd, IOCTL.DEVICE_FEATURE, featureBuffer(FEATURE_FLAGS.SET | FEATURE.MIG_PRECOPY_INFOv2, 0));
}

function readBytes(k: SimKernel, fd: number, n: number): number {
  const buf = new Uint8Array(1 << 20);
  let got = 0;
  while (got < n) {
    const r = k.read(fd, buf.subarray(0, Math.min(buf.length, n - got)));
    if (r === 0) break;
    got += r;
  }
  return got;
}

Deno.test("sim: precopy-info v2 is opt-in (feature 12 SET needs --precopy-v2); before it, flags are echoed", async () => {
  await withTemp(async (t) => {
    await Deno.mkdir(`${t}/old`);
    const host = libc();
    new SimStore(host, `${t}/old`).create({ model: "bulk", size: 4 * MiB, reinitAfter: MiB });
    new SimStore(host, `${t}/new`).create({ model: "bulk", size: 4 * MiB, precopyV2: true, reinitAfter: MiB });
    const k = new SimKernel(host);

    // A pre-7.1 driver: no feature 12 (EINVAL); PRECOPY_INFO echoes flags; REINIT data is dirty data.
    const old = openDevice(k, `sim:${t}/old`);
    try {
      const e = assertThrows(() => optIn(k, old.fd));
      assert(isErrno(e, "EINVAL"), `feature 12 on a pre-7.1 driver: ${e.message}`);
      assertEquals(old.migration.enablePrecopyInfoV2(), false, "the tool's opt-in ignores EINVAL");
      const fd = old.migration.setState(DeviceState.PRE_COPY, DeviceState.RUNNING).dataFd!;
      const size = 4 * MiB + 48;
      assertEquals(precopyInfo(k, fd, 0x6), { flags: 0x6, initial: size, dirty: 0 }, "flags echoed back");
      readBytes(k, fd, MiB);
      precopyInfo(k, fd, 0); // finds 1 MiB read: the device re-queues half its state after answering
      const after = precopyInfo(k, fd, 0);
      assertEquals(after.flags, 0, "no REINIT without the opt-in");
      assertEquals(after.initial, size - MiB, "initial_bytes does not grow without the opt-in");
      assertEquals(after.dirty, 2 * MiB + 16, "the re-queued half shows as dirty data");
      old.migration.setState(DeviceState.RUNNING, DeviceState.PRE_COPY);
    } finally {
      old.close();
    }

    // A 7.1 driver: flags echoed until the opt-in, zeroed after it; REINIT reported once.
    const dev = openDevice(k, `sim:${t}/new`);
    try {
      const fd = dev.migration.setState(DeviceState.PRE_COPY, DeviceState.RUNNING).dataFd!;
      assertEquals(precopyInfo(k, fd, 0x4).flags, 0x4, "before the opt-in: echoed (bug-compatibility)");
      // PROBE says it is there; the SET takes any payload.
      k.ioctl(
        dev.fd,
        IOCTL.DEVICE_FEATURE,
        featureBuffer(FEATURE_FLAGS.PROBE | FEATURE_FLAGS.SET | FEATURE.MIG_PRECOPY_INFOv2, 0),
      );
      k.ioctl(dev.fd, IOCTL.DEVICE_FEATURE, featureBuffer(FEATURE_FLAGS.SET | FEATURE.MIG_PRECOPY_INFOv2, 8));
      assertEquals(precopyInfo(k, fd, 0x4).flags, 0, "after the opt-in: zeroed on entry");
      const size = 4 * MiB + 48;
      readBytes(k, fd, MiB);
      const before = precopyInfo(k, fd, 0);
      assertEquals(before, { flags: 0, initial: size - MiB, dirty: 0 }, "the query that finds 1 MiB read");
      const re = precopyInfo(k, fd, 0);
      assertEquals(re.flags, REINIT, "REINIT reported");
      assertEquals(re.initial, size - MiB + 2 * MiB + 16, "initial_bytes grew by the re-queued half");
      assertEquals(re.dirty, 0, "dirty_bytes reset");
      assertEquals(precopyInfo(k, fd, 0).flags, 0, "REINIT reported once");
      // All of it is real data: read it to the end of the pre-copy data.
      assertEquals(readBytes(k, fd, re.initial), re.initial);
      assertEquals(precopyInfo(k, fd, 0), { flags: 0, initial: 0, dirty: 0 });
      dev.migration.setState(DeviceState.RUNNING, DeviceState.PRE_COPY);
    } finally {
      dev.close();
    }
  });
});

// ---------------------------------------------------------------------------
// The save's pre-copy loop with REINIT, against a two-way sink that acknowledges late

const TAG_BYTES = (t: bigint) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, t);
  return b;
};
const INIT_DATA_SENT = TAG_BYTES(streamFormat.TAG.DEV_INIT_DATA_SENT);
const SWITCHOVER = TAG_BYTES(streamFormat.TAG.SWITCHOVER);
const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

/** Collects the stream in memory; acknowledges each DEV_INIT_DATA_SENT after `ackMs`, as a slow destination. */
class LateAckSink implements Sink {
  readonly label = "late-ack sink";
  parts: Uint8Array[] = [];
  markers: number[] = [];
  ackTimes: number[] = [];
  switchoverAt: number | null = null;
  acksAtSwitchover: number | null = null;
  #acks = 0;
  #timers: ReturnType<typeof setTimeout>[] = [];
  constructor(readonly ackMs: number) {}
  get initAcks(): number {
    return this.#acks;
  }
  get initAcked(): boolean {
    return this.#acks > 0;
  }
  write(bytes: Uint8Array): void {
    if (same(bytes, INIT_DATA_SENT)) {
      this.markers.push(performance.now());
      this.#timers.push(setTimeout(() => {
        this.#acks++;
        this.ackTimes.push(performance.now());
      }, this.ackMs));
    }
    if (same(bytes, SWITCHOVER)) {
      this.switchoverAt = performance.now();
      this.acksAtSwitchover = this.#acks;
    }
    this.parts.push(bytes.slice());
  }
  commit(): void {}
  abort(): void {}
  close(): void {
    for (const t of this.#timers) clearTimeout(t);
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.parts.reduce((a, p) => a + p.length, 0));
    let off = 0;
    for (const p of this.parts) {
      out.set(p, off);
      off += p.length;
    }
    return out;
  }
}

class MemSource implements StreamSource {
  readonly label = "memory";
  #pos = 0;
  constructor(readonly data: Uint8Array) {}
  read(buf: Uint8Array): number {
    const n = Math.min(buf.length, this.data.length - this.#pos);
    buf.set(this.data.subarray(this.#pos, this.#pos + n));
    this.#pos += n;
    return n;
  }
  close(): void {}
}

Deno.test("live: after a REINIT the initial data is marked again and the switchover waits for the new ack", async () => {
  await withTemp(async (t) => {
    const host = libc();
    const size = 8 * MiB;
    const [a, b] = [`${t}/a`, `${t}/b`];
    // REINIT right after the initial data was all read: the save first sees initial_bytes 0
    // (marker 1), then REINIT (more initial data, marker 2).
    new SimStore(host, a).create({
      model: "bulk",
      size,
      seed: 11,
      rate: 1 << 20,
      precopyV2: true,
      reinitAfter: size + 48,
    });
    new SimStore(host, b).create({ model: "bulk", size, seed: 12 });
    const k = new SimKernel(host, { logPath: `${t}/a.log` });
    const sink = new LateAckSink(250);
    const dev = openDevice(k, `sim:${a}`);
    let r: SaveResult;
    try {
      r = await save(dev, sink, { live: true });
    } finally {
      dev.close();
      sink.close();
    }
    assertEquals(r.precopyInfoV2, true, "opted in");
    assertEquals(r.reinits, 1, "one REINIT");
    assertEquals(r.initDataSent, 2, "the initial data was marked twice");
    assertEquals(sink.markers.length, 2, "two DEV_INIT_DATA_SENT in the stream");
    assertEquals(r.switchReason, "converged");
    assertEquals(sink.acksAtSwitchover, 2, "the switchover waited for the second acknowledgement");
    assert(sink.switchoverAt! >= sink.markers[1] + 250, "no switchover before the second marker was acked");
    const log = await logLines(`${t}/a.log`);
    assert(log.some((l) => l.key === "ioctl:DEVICE_FEATURE:MIG_PRECOPY_INFOv2:SET"), "feature 12 SET issued");
    assert(log.some((l) => l.key === "reinit" && l.reported === true), "the device re-initialised");
    // The stream is complete and loads into an equal device.
    const kb = new SimKernel(host);
    const devB = openDevice(kb, `sim:${b}`);
    try {
      const lr = await load(devB, new MemSource(sink.bytes()));
      assertEquals(lr.initDataLoaded, 2);
    } finally {
      devB.close();
    }
    assertEquals(await sha(b), await sha(a));
  });
});

Deno.test("live: REINIT through the CLI (file): precopyInfoV2 and reinits reported, the state arrives; old kernels still work", async () => {
  await withTemp(async (t) => {
    const [a, b, c, file, log] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/s.vfmig`, `${t}/a.log`];
    // The device re-initialises after the first PRECOPY_INFO that finds 4 MiB read: to a
    // file, pre-copy may already be done by then (the re-queued half then goes in
    // stop-copy), or the next PRECOPY_INFO reports REINIT. Either way the state arrives.
    await simCreate(a, "--size", "16M", "--rate", "2M", "--seed", "13", "--precopy-v2", "--reinit-after", "4M");
    await simCreate(b, "--size", "16M", "--seed", "14");
    await simCreate(c, "--size", "16M", "--rate", "2M", "--seed", "15", "--reinit-after", "4M");
    const r = await ok(["save", "--live", "--json", "--device", `sim:${a}`, file], {
      env: { VFIO_MIG_SIM_LOG: log },
    });
    const s = jsonOf(r.stdout);
    assertEquals([s.precopyInfoV2, s.switchReason], [true, "converged"], show(r));
    assert(s.reinits === 0 || s.reinits === 1, `reinits: ${s.reinits}`);
    assert((s.bytes as number) >= 24 * MiB, `the re-queued half was sent too: ${s.bytes}`);
    const lines = await logLines(log);
    const sets = lines.filter((l) => l.key === "ioctl:DEVICE_FEATURE:MIG_PRECOPY_INFOv2:SET");
    assertEquals(sets.length, 1, "one opt-in");
    assert(lines.some((l) => l.key === "reinit" && l.reported === true), "the device re-initialised");
    await ok(["load", "--device", `sim:${b}`, file]);
    assertEquals(await sha(b), await sha(a));
    // A device without precopy-info v2 (EINVAL to the opt-in): the save goes on without it.
    const r2 = await ok(["save", "--live", "--json", "--device", `sim:${c}`, file]);
    const s2 = jsonOf(r2.stdout);
    assertEquals([s2.precopyInfoV2, s2.reinits, s2.switchReason], [false, 0, "converged"], show(r2));
    await ok(["load", "--device", `sim:${b}`, file]);
    assertEquals(await sha(b), await sha(c));
    // sim show reports the options; --reinit-after needs the bulk model.
    const shown = await ok(["sim", "show", a, "--json"]);
    assertEquals([jsonOf(shown.stdout).precopyInfoV2, jsonOf(shown.stdout).reinitAfter], [true, 4 * MiB]);
    const bad = await vfioMig(["sim", "create", `${t}/m`, "--model", "mtty-1", "--reinit-after", "1M"]).done();
    assertEquals(bad.code, 2, show(bad));
  });
});

Deno.test("live: the switchover event carries `exact` (MIG_DATA_SIZE, asked once the estimate fit); `estimate` stays PRECOPY_INFO's", async () => {
  await withTemp(async (t) => {
    const [a, file, events] = [`${t}/a`, `${t}/live.vfmig`, `${t}/events.jsonl`];
    await simCreate(a, "--size", "8M", "--rate", "4M", "--seed", "3");
    const r = await ok(["save", "--live", "--json", "--events", events, "--device", `sim:${a}`, file]);
    assertEquals(jsonOf(r.stdout).switchReason, "converged", show(r));
    const lines = (await Deno.readTextFile(events)).trim().split("\n").map((l) => JSON.parse(l));
    const sw = lines.find((e) => e.type === "switchover");
    assert(sw, "a switchover event");
    assert(typeof sw.exact === "number", `switchover.exact: ${JSON.stringify(sw)}`);
    assert(sw.exact <= sw.threshold, "converged: the exact size fit the threshold");
    const ends = lines.filter((e) => e.type === "iteration" && e.edge === "end");
    const last = ends[ends.length - 1];
    assertEquals(last.exact, sw.exact, "the last iteration shows the same exact");
    assertEquals(last.estimate, sw.estimate, "and the same estimate");
    for (const it of ends) {
      const sum = it.devices.reduce(
        (n: number, d: { initialBytes: number; dirtyBytes: number }) => n + d.initialBytes + d.dirtyBytes,
        0,
      );
      assertEquals(it.estimate, sum + (it.backlog ?? 0), `iteration ${it.n}: estimate is PRECOPY_INFO's`);
    }
  });
});

Deno.test("live: a device without MIG_DATA_SIZE never converges (100 GiB counted): only --max-precopy ends it; save --help says so", async () => {
  const { PrecopyPolicy } = await import("../../src/migrate/precopy.ts");
  const p = new PrecopyPolicy(300, 50);
  p.meter.add(1 << 20, 1); // 1 MiB/ms: 300 MiB fit the 300 ms limit
  const input = { initialBytes: 0, dirtyBytes: 4096, exact: () => null, initAcked: true };
  assertEquals(p.decide(input), null, "MIG_DATA_SIZE unavailable: no convergence");
  assertEquals([p.lastExact, p.lastEstimate], [null, 4096], "exact null, estimate PRECOPY_INFO's");
  assertEquals(p.decide({ ...input, exact: () => 8192 }), "converged", "with MIG_DATA_SIZE it converges");
  assertEquals(p.lastExact, 8192);
  await sleep(60);
  assertEquals(p.decide(input), "max-precopy");
  const help = await ok(["save", "--help"]);
  assertMatch(help.stdout.replace(/\s+/g, " "), /a device without MIG_DATA_SIZE never converges/i);
});
