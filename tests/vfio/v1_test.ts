// Migration protocol v1 (the deprecated region protocol) end to end against the
// simulated v1 driver: discovery, device_state changes as QEMU 7.2 makes them, save
// and load through files and pipes with mmap'd, partly mapped and trapped data
// sections, a smaller destination data section, the pread fallback when mmap fails,
// the error state and its reset, failed saves, and the exact stream bytes.

import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { F, O } from "../../ffi/sys.ts";
import { DEVICE_STATE_V1, IOCTL } from "../../ffi/vfio_uapi.ts";
import { Events } from "../../src/events/events.ts";
import { stateHash } from "../../src/commands/sim.ts";
import { openDevice, type VfioDevice } from "../../src/device/open.ts";
import { VfioMigError } from "../../src/errors.ts";
import { load, type LoadOptions, type LoadResult } from "../../src/migrate/load.ts";
import { v1Of } from "../../src/migrate/protocol.ts";
import { save, type SaveOptions, type SaveResult } from "../../src/migrate/save.ts";
import { getRegionInfo } from "../../src/vfio/regions.ts";
import { v1StateValid } from "../../src/vfio/v1.ts";
import { parseFaults, SimKernel } from "../../src/sim/kernel.ts";
import { initialMttyState, mttyHeader } from "../../src/sim/models.ts";
import { SimStore } from "../../src/sim/store.ts";
import { V1_DATA_OFFSET, V1_REGION_INDEX, v1Areas, type V1Sparse } from "../../src/sim/v1_device.ts";
import { TAG } from "../../src/stream/format.ts";
import { openSink, openSource } from "../../src/transport/transport.ts";
import { concat } from "../helpers/bytes.ts";
import { bareRecord, sizedRecord, trailerOver } from "../helpers/stream.ts";

const host = libc();
const { RUNNING, SAVING, RESUMING, MASK } = DEVICE_STATE_V1;

interface DevOpts {
  model?: "bulk" | "mtty-1" | "mtty-2";
  size?: number;
  seed?: number;
  dataSize?: number;
  sparse?: V1Sparse;
  protocol?: "v1" | "v2";
  rate?: number;
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "vfio-mig-v1-" });
}

function createDevice(dir: string, o: DevOpts): void {
  new SimStore(host, dir).create({
    model: o.model ?? "bulk",
    size: o.size,
    seed: o.seed ?? 1,
    rate: o.rate,
    protocol: o.protocol ?? "v1",
    dataSize: o.protocol === "v2" ? undefined : o.dataSize ?? 64 * 1024,
    sparse: o.protocol === "v2" ? undefined : o.sparse ?? "full",
  });
}

function kernel(faults?: string, logPath?: string): SimKernel {
  return new SimKernel(host, { faults: parseFaults(faults), logPath });
}

async function withDevice<T>(dir: string, k: SimKernel, fn: (d: VfioDevice) => Promise<T> | T): Promise<T> {
  const d = openDevice(k, `sim:${dir}`);
  try {
    return await fn(d);
  } finally {
    d.close();
  }
}

function saveTo(dir: string, file: string, opts: SaveOptions = {}, faults?: string, log?: string): Promise<SaveResult> {
  const k = kernel(faults, log);
  return withDevice(dir, k, (d) => save(d, openSink(k, file), opts));
}

function loadFrom(
  dir: string,
  file: string,
  opts: LoadOptions = {},
  faults?: string,
  log?: string,
): Promise<LoadResult> {
  const k = kernel(faults, log);
  return withDevice(dir, k, async (d) => {
    const src = openSource(k, file);
    try {
      return await load(d, src, opts);
    } finally {
      src.close();
    }
  });
}

function hashOf(dir: string): string {
  return stateHash(host, new SimStore(host, dir));
}

function v1State(dir: string): number {
  return new SimStore(host, dir).readMeta().v1!.state;
}

async function rejects(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection");
}

function logEntries(path: string): Record<string, unknown>[] {
  return Deno.readTextFileSync(path).trim().split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

async function withDirs(fn: (t: string) => Promise<void>): Promise<void> {
  const t = await tempDir();
  try {
    await fn(t);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
}

// ---------------------------------------------------------------------------
// Discovery

Deno.test("v1 discovery: the region with CAP_TYPE 3/1, its size and sparse areas, after an argsz retry", async () => {
  await withDirs(async (t) => {
    for (const sparse of ["full", "partial", "none"] as const) {
      createDevice(`${t}/${sparse}`, { dataSize: 256 * 1024, sparse });
      const k = kernel();
      await withDevice(`${t}/${sparse}`, k, (d) => {
        // The first ask (32 bytes) only learns the size the caps need.
        const r = getRegionInfo(k, d.fd, V1_REGION_INDEX);
        assertEquals(r.type, { type: 3, subtype: 1 }, sparse);
        assertEquals(r.size, V1_DATA_OFFSET + 256 * 1024, sparse);
        const want = v1Areas({ state: 1, dataSize: 256 * 1024, sparse });
        assertEquals(r.sparse, sparse === "none" ? null : want, sparse);
        const m = v1Of(d);
        assert(m, `v1 region found (${sparse})`);
        assertEquals(m.region.index, V1_REGION_INDEX);
      });
    }
    // A v2 device has no v1 region; a v1 device answers ENOTTY to v2's MIGRATION feature.
    createDevice(`${t}/v2`, { protocol: "v2" });
    await withDevice(`${t}/v2`, kernel(), (d) => assertEquals(v1Of(d), null));
    await withDevice(`${t}/full`, kernel(), (d) => {
      let e: unknown = null;
      try {
        d.migration.migrationFlags();
      } catch (x) {
        e = x;
      }
      assert(e instanceof SysError && e.errno === Errno.ENOTTY, "v2 MIGRATION on a v1 device is ENOTTY");
    });
  });
});

Deno.test("v1 --protocol: auto picks v1 on a v1-only device, v2 is refused there, v1 is refused on a v2 device", async () => {
  await withDirs(async (t) => {
    createDevice(`${t}/a`, {});
    createDevice(`${t}/b`, { protocol: "v2" });
    const r = await saveTo(`${t}/a`, `${t}/a.bin`);
    assertEquals(r.protocol, "v1");
    const e1 = await rejects(saveTo(`${t}/a`, `${t}/x.bin`, { protocol: "v2" }));
    assertStringIncludes(e1.message, "does not support migration");
    const e2 = await rejects(saveTo(`${t}/b`, `${t}/y.bin`, { protocol: "v1" }));
    assertStringIncludes(e2.message, "no v1 migration region");
    // A v1 stream cannot be loaded through v2.
    const e3 = await rejects(loadFrom(`${t}/a`, `${t}/a.bin`, { protocol: "v2" }));
    assertStringIncludes(e3.message, "--protocol v2 cannot load it");
  });
});

// ---------------------------------------------------------------------------
// Round trips

for (const sparse of ["full", "partial", "none"] as const) {
  Deno.test(`v1 round trip through a file, data section ${sparse}, several state sizes`, async () => {
    await withDirs(async (t) => {
      for (const size of [100, 64 * 1024, 300 * 1024 + 7, 3 << 20]) {
        const a = `${t}/a${size}`, b = `${t}/b${size}`;
        createDevice(a, { size, seed: 5, sparse });
        createDevice(b, { size, seed: 6, sparse });
        assert(hashOf(a) !== hashOf(b), "different to start with");
        const s = await saveTo(a, `${t}/s${size}.bin`);
        assertEquals(s.protocol, "v1");
        assertEquals(s.finalState, "stopped (000b)", `source state (${sparse}, ${size})`);
        const l = await loadFrom(b, `${t}/s${size}.bin`);
        assertEquals(l.finalState, "running (001b)");
        assertEquals(hashOf(a), hashOf(b), `state equal after the round trip (${sparse}, ${size})`);
        assertEquals(v1State(a), 0);
        assertEquals(v1State(b), RUNNING);
      }
    });
  });
}

Deno.test("v1 round trip through a pipe between two processes (save - | load -), mtty-2 and bulk", async () => {
  await withDirs(async (t) => {
    const cases: [string, DevOpts][] = [
      ["mtty", { model: "mtty-2", dataSize: 4096, sparse: "none" }],
      ["bulk", { size: 2 << 20, dataSize: 128 * 1024, sparse: "partial" }],
    ];
    for (const [name, o] of cases) {
      createDevice(`${t}/${name}A`, { ...o, seed: 3 });
      createDevice(`${t}/${name}B`, { ...o, seed: 4 });
      const cli = new URL("../../cli.ts", import.meta.url).pathname;
      const run = `deno run --allow-ffi ${cli}`;
      const cmd = new Deno.Command("bash", {
        args: [
          "-c",
          `set -o pipefail; ${run} save -q --device sim:${t}/${name}A - | ${run} load -q --device sim:${t}/${name}B -`,
        ],
        stdout: "piped",
        stderr: "piped",
      });
      const out = await cmd.output();
      assertEquals(out.code, 0, `${name}: ${new TextDecoder().decode(out.stderr)}`);
      assertEquals(hashOf(`${t}/${name}A`), hashOf(`${t}/${name}B`), name);
    }
  });
});

Deno.test("v1 live save: pre-copy iterations while running, then stop-and-copy; the state arrives", async () => {
  await withDirs(async (t) => {
    createDevice(`${t}/a`, { size: 1 << 20, seed: 8, dataSize: 64 * 1024 });
    createDevice(`${t}/b`, { size: 1 << 20, seed: 9, dataSize: 64 * 1024 });
    // A tiny downtime limit keeps pre-copy going until pending_bytes is 0 (with the
    // default 300 ms, 1 MiB fits at once and the policy switches after one iteration).
    const s = await saveTo(`${t}/a`, `${t}/s.bin`, { live: true, resume: true, downtimeLimitMs: 0.001 });
    assert(s.precopyBytes >= 1 << 20, `pre-copy moved the initial data (${s.precopyBytes})`);
    assert(s.iterations > 1, `several pre-copy iterations (${s.iterations})`);
    assertEquals(s.statesVisited.slice(0, 2), ["pre-copy (011b)", "stop-and-copy (010b)"]);
    assertEquals(s.finalState, "running (001b)");
    await loadFrom(`${t}/b`, `${t}/s.bin`);
    assertEquals(hashOf(`${t}/a`), hashOf(`${t}/b`));
  });
});

Deno.test("v1 load into a smaller data section splits each chunk, as QEMU's vfio_load_buffer", async () => {
  await withDirs(async (t) => {
    createDevice(`${t}/a`, { size: 1 << 20, seed: 1, dataSize: 256 * 1024 });
    createDevice(`${t}/b`, { size: 1 << 20, seed: 2, dataSize: 16 * 1024, sparse: "partial" });
    await saveTo(`${t}/a`, `${t}/s.bin`);
    const log = `${t}/load.log`;
    await loadFrom(`${t}/b`, `${t}/s.bin`, {}, undefined, log);
    assertEquals(hashOf(`${t}/a`), hashOf(`${t}/b`));
    const consumed = logEntries(log).filter((e) => e.key === "v1:consume").map((e) => e.bytes as number);
    assert(consumed.length > 64, `chunks were split (${consumed.length} transactions)`);
    assert(consumed.every((n) => n <= 16 * 1024), "no transaction beyond the destination's data section");
    assertEquals(consumed.reduce((a, b) => a + b, 0), 32 + 16 + (1 << 20), "every byte once");
  });
});

Deno.test("v1 mmap failure falls back to pread/pwrite with identical stream bytes", async () => {
  await withDirs(async (t) => {
    createDevice(`${t}/a1`, { size: 700 * 1024, seed: 4, sparse: "partial" });
    createDevice(`${t}/a2`, { size: 700 * 1024, seed: 4, sparse: "partial" });
    const created = new Date("2026-01-01T00:00:00Z");
    const log = `${t}/fault.log`;
    await saveTo(`${t}/a1`, `${t}/mapped.bin`, { created });
    await saveTo(`${t}/a2`, `${t}/slow.bin`, { created }, "mmap:device@1=ENOMEM", log);
    assert(logEntries(log).some((e) => e.fault === "ENOMEM"), "the mmap fault fired");
    assert(!logEntries(log).some((e) => e.key === "mmap:device" && !e.fault), "nothing was mapped");
    const body = (f: string) => {
      const b = Deno.readFileSync(f);
      const n = new DataView(b.buffer).getUint32(12);
      return b.subarray(16 + n + 4);
    };
    assertEquals(body(`${t}/mapped.bin`), body(`${t}/slow.bin`), "records identical");
    // And loading with a failing mmap (pwrite path) gives the same state.
    createDevice(`${t}/b`, { size: 700 * 1024, seed: 5, sparse: "full" });
    await loadFrom(`${t}/b`, `${t}/slow.bin`, {}, "mmap:device@1=ENOMEM");
    assertEquals(hashOf(`${t}/a1`), hashOf(`${t}/b`));
  });
});

// ---------------------------------------------------------------------------
// device_state

Deno.test("v1 device_state: invalid combinations refused before the write (VFIO_DEVICE_STATE_VALID)", async () => {
  for (let s = 0; s < 8; s++) {
    assertEquals(v1StateValid(s), s !== 0b101 && s !== 0b110 && s !== 0b111, `VALID(${s.toString(2)})`);
  }
  await withDirs(async (t) => {
    createDevice(`${t}/a`, {});
    const log = `${t}/log`;
    await withDevice(`${t}/a`, kernel(undefined, log), (d) => {
      const m = v1Of(d)!;
      // From 001: (001 & 111) | 100 = 101, (001 & ~111) | 101 = 101, (001 & ~111) | 110 = 110.
      for (const [mask, value] of [[MASK, RESUMING], [~MASK, RESUMING | RUNNING], [~MASK, SAVING | RESUMING]]) {
        let e: unknown = null;
        try {
          m.setState(mask, value, "test");
        } catch (x) {
          e = x;
        }
        assert(e instanceof VfioMigError, `refused mask ${mask} value ${value}`);
        assertStringIncludes(e.message, "VFIO_DEVICE_STATE_VALID");
      }
      assertEquals(m.readState(), RUNNING, "unchanged");
      // The driver itself refuses stop-and-copy -> pre-copy and invalid bits (EINVAL).
      m.setState(~RUNNING, SAVING, "stop-and-copy");
      const raw = new Uint8Array(4);
      new DataView(raw.buffer).setUint32(0, SAVING | RUNNING, true);
      let e: unknown = null;
      try {
        d.sys.pwrite(d.fd, raw, m.region.offset);
      } catch (x) {
        e = x;
      }
      assert(e instanceof SysError && e.errno === Errno.EINVAL, "010 -> 011 is EINVAL");
      // Registers only at native width and alignment.
      for (const [off, len] of [[0, 8], [8, 4], [4, 4], [2, 2], [16, 4]]) {
        let e2: unknown = null;
        try {
          d.sys.pread(d.fd, new Uint8Array(len), m.region.offset + off);
        } catch (x) {
          e2 = x;
        }
        assert(e2 instanceof SysError && e2.errno === Errno.EINVAL, `access at ${off} of ${len} refused`);
      }
    });
    const writes = logEntries(log).filter((e) => e.key === "v1:device_state");
    assertEquals(writes.map((w) => [w.from, w.to, w.err ?? null]), [[1, 2, null], [2, 3, "stop-and-copy -> pre-copy"]]);
  });
});

Deno.test("v1 error state (SAVING|RESUMING) during a save is reported and recovered with VFIO_DEVICE_RESET", async () => {
  await withDirs(async (t) => {
    createDevice(`${t}/a`, { size: 200 * 1024 });
    const e = await rejects(saveTo(`${t}/a`, `${t}/s.bin`, {}, "v1:device_state:error@2=EIO"));
    assertStringIncludes(e.message, "error state");
    assertStringIncludes(e.message, "was reset");
    assertStringIncludes(e.message, "running (001b)");
    assertEquals(v1State(`${t}/a`), RUNNING);
    assert(!Deno.statSync(t).isFile && ![...Deno.readDirSync(t)].some((f) => f.name.startsWith("s.bin")), "no output");
  });
});

Deno.test("v1 load the device rejects (bad data; error state on leaving RESUMING): the destination is reset", async () => {
  await withDirs(async (t) => {
    // Same model and identity, different state size: only the driver can tell.
    createDevice(`${t}/a`, { size: 64 * 1024 });
    createDevice(`${t}/b`, { size: 128 * 1024 });
    await saveTo(`${t}/a`, `${t}/s.bin`);
    const before = hashOf(`${t}/b`);
    const e = await rejects(loadFrom(`${t}/b`, `${t}/s.bin`));
    assertStringIncludes(e.message, "was reset");
    assertEquals(v1State(`${t}/b`), RUNNING);
    assertEquals(hashOf(`${t}/b`), before, "the destination kept its state");
    // The driver fails the write that leaves RESUMING and goes to the error state.
    createDevice(`${t}/c`, { size: 64 * 1024 });
    const log = `${t}/c.log`;
    const e2 = await rejects(loadFrom(`${t}/c`, `${t}/s.bin`, {}, "v1:device_state:error@2=EIO", log));
    assertStringIncludes(e2.message, "error state");
    assertStringIncludes(e2.message, "was reset");
    assert(logEntries(log).some((x) => x.key === "ioctl:DEVICE_RESET"), "VFIO_DEVICE_RESET issued");
    assertEquals(v1State(`${t}/c`), RUNNING);
  });
});

Deno.test("v1 failed save (read error mid-stream, offline and live) leaves the source RUNNING with SAVING cleared", async () => {
  await withDirs(async (t) => {
    createDevice(`${t}/a`, { size: 512 * 1024, dataSize: 64 * 1024 });
    for (const [live, fault] of [[false, "v1:data_offset@3=EIO"], [true, "v1:pending_bytes@2=EIO"]] as const) {
      const log = `${t}/log${live}`;
      const e = await rejects(saveTo(`${t}/a`, `${t}/s.bin`, { live }, fault, log));
      assertStringIncludes(e.message, "save from");
      assertEquals(v1State(`${t}/a`), RUNNING, `running again (live=${live})`);
      const last = logEntries(log).filter((x) => x.key === "v1:device_state").at(-1)!;
      assertEquals([last.to, last.err ?? null], [RUNNING, null], "the notifier's RUNNING was the last write");
    }
    // A write failure on the output side too.
    const e = await rejects(saveTo(`${t}/a`, `${t}/s.bin`, {}, "write:host@3=ENOSPC"));
    assertStringIncludes(e.message, "ENOSPC");
    assertEquals(v1State(`${t}/a`), RUNNING);
  });
});

// ---------------------------------------------------------------------------
// Golden bytes

/** The records of a stream (everything after the header). */
function records(file: string): Uint8Array {
  const b = Deno.readFileSync(file);
  const n = new DataView(b.buffer).getUint32(12);
  return b.subarray(16 + n + 4);
}

Deno.test("v1 golden bytes: mtty-1, offline and live, tags in QEMU 7.2's order", async () => {
  await withDirs(async (t) => {
    const seed = 7;
    const data = concat([mttyHeader("mtty-1"), initialMttyState("mtty-1", seed)]);
    // mtty's config space as the simulator models it (255 bytes, no capabilities).
    const cfgD = `${t}/cfg`;
    createDevice(cfgD, { model: "mtty-1", seed, dataSize: 4096 });
    const config = await withDevice(cfgD, kernel(), (d) => d.readConfig()!.slice());
    assertEquals(config.length, 255);
    const cfgSection = concat([
      new TextEncoder().encode("PCFG"),
      new Uint8Array([0, 1, 0, 0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
      config,
    ]);
    const END = bareRecord(TAG.END_OF_STATE);
    // Offline: SETUP END | DATA(60) END (complete phase) | CONFIG END | trailer
    const offline = concat([
      bareRecord(0xffffffffef100003n),
      END,
      sizedRecord(0xffffffffef100004n, data),
      END,
      sizedRecord(0xffffffffef100002n, cfgSection),
      END,
      trailerOver([data]),
    ]);
    createDevice(`${t}/off`, { model: "mtty-1", seed, dataSize: 4096 });
    const r1 = await saveTo(`${t}/off`, `${t}/off.bin`);
    assertEquals(records(`${t}/off.bin`), offline, "offline stream bytes");
    // savevm's vm_stop (RUNNING cleared, SAVING set), save_setup (|= SAVING), the complete
    // phase (~RUNNING | SAVING), then stopped: QEMU 7.2 writes 010b three times.
    assertEquals(r1.statesVisited, [
      "stop-and-copy (010b)",
      "stop-and-copy (010b)",
      "stop-and-copy (010b)",
      "stopped (000b)",
    ]);
    // Live: the pre-copy iteration carries mtty's 24-byte header, stop-and-copy the port.
    const live = concat([
      bareRecord(0xffffffffef100003n),
      END,
      sizedRecord(0xffffffffef100004n, data.subarray(0, 24)),
      END,
      sizedRecord(0xffffffffef100004n, data.subarray(24)),
      END,
      sizedRecord(0xffffffffef100002n, cfgSection),
      END,
      trailerOver([data.subarray(0, 24), data.subarray(24)]),
    ]);
    createDevice(`${t}/live`, { model: "mtty-1", seed, dataSize: 4096 });
    const r2 = await saveTo(`${t}/live`, `${t}/live.bin`, { live: true });
    assertEquals(records(`${t}/live.bin`), live, "live stream bytes");
    assertEquals(r2.statesVisited, [
      "pre-copy (011b)",
      "stop-and-copy (010b)",
      "stop-and-copy (010b)",
      "stopped (000b)",
    ]);
    const h = JSON.parse(
      new TextDecoder().decode(
        Deno.readFileSync(`${t}/live.bin`).subarray(
          16,
          16 + new DataView(Deno.readFileSync(`${t}/live.bin`).buffer).getUint32(12),
        ),
      ),
    );
    assertEquals([h.protocol, h.mode, h.v1.regionIndex, h.v1.regionSize], ["v1", "live", 9, 8192]);
  });
});

Deno.test("v1 simulated device persists its device_state across processes, like the v2 ones", async () => {
  await withDirs(async (t) => {
    createDevice(`${t}/a`, {});
    await withDevice(`${t}/a`, kernel(), (d) => v1Of(d)!.setState(~RUNNING, 0, "stop"));
    assertEquals(v1State(`${t}/a`), 0);
    const k = kernel();
    const fd = k.open(`sim:${t}/a`, O.RDWR);
    try {
      const b = new Uint8Array(4);
      k.pread(fd, b, V1_REGION_INDEX * 2 ** 40);
      assertEquals(new DataView(b.buffer).getUint32(0, true), 0, "read back in a new kernel");
    } finally {
      k.close(fd);
    }
  });
});

Deno.test("v1 live save with a reset (from another open) between the last pre-copy iteration and the stop: refused, never a stream of two sessions", async () => {
  await withDirs(async (t) => {
    for (const when of ["switchover", "iteration"] as const) {
      createDevice(`${t}/a`, { size: 256 << 10, seed: 8, dataSize: 64 * 1024 });
      const k = kernel();
      const d = openDevice(k, `sim:${t}/a`);
      // The reset comes through a second fd adopted by another simulated kernel: another process.
      const other = host.fcntl(d.fd, F.DUPFD_CLOEXEC, 0);
      const k2 = kernel();
      k2.adopt(other);
      let fired = false;
      const events = new Events().on({
        event: (e) => {
          if (fired || e.type !== when || (when === "iteration" && e.edge !== "end")) return;
          fired = true;
          k2.ioctl(other, IOCTL.DEVICE_RESET, null);
        },
      });
      events.start({ command: "save", mode: "live" });
      const file = `${t}/s-${when}.bin`;
      try {
        const err = await rejects(
          save(d, openSink(k, file), { live: true, events }).then((r) => {
            throw new Error(`saved: ${JSON.stringify(r.statesVisited)}`);
          }),
        );
        assert(fired, `the reset was made (${when})`);
        assert(err instanceof VfioMigError, String(err));
        assertStringIncludes(err.message, `sim:${t}/a: `);
        assertStringIncludes(err.message, "without _SAVING: the device left the save (was it reset?)");
        assertEquals(err.exitCode, 1);
        assert(!(await Deno.stat(file).then(() => true, () => false)), `${when}: no stream reported saved`);
        assertEquals(v1State(`${t}/a`) & MASK, RUNNING, "the device is running, SAVING cleared");
      } finally {
        k2.close(other);
        d.close();
      }
    }
  });
});
