// The tool (the library's save/load) on each simulated driver model: a correct result,
// or a clean failure that names the device's state, never a wrong "success" or a stream
// that loads garbage where a tool could know better.

import { assert, assertEquals, assertNotEquals, fail } from "../helpers/assert.ts";
import { SysError } from "../../ffi/errno.ts";
import { openDevice } from "../../src/device/open.ts";
import { VfioMigError } from "../../src/errors.ts";
import { load } from "../../src/migrate/load.ts";
import { save, type SaveOptions, type SaveResult } from "../../src/migrate/save.ts";
import { DeviceState, stateName } from "../../src/vfio/state_machine.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";
import { stateHash } from "../../src/commands/sim.ts";
import { openSink, openSource } from "../../src/transport/transport.ts";
import { host, metaOf } from "../helpers/sim.ts";

const MiB = 1 << 20;
type Create = Parameters<SimStore["create"]>[0];

interface Bench {
  dir: string;
  make(name: string, opts: Create): string;
  /** save(); null and the error when it failed. */
  save(dev: string, file: string, opts?: SaveOptions): Promise<{ r: SaveResult | null; err: VfioMigError | null }>;
  /** load(); `open` runs while the device is still open (a pci device resets at its last close). */
  load(dev: string, file: string, open?: () => void): Promise<VfioMigError | null>;
  state(dev: string): string;
  hash(dev: string): string;
  exists(path: string): boolean;
}

async function withBench(fn: (b: Bench) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-tool-" });
  const caught = (e: unknown): VfioMigError => {
    if (e instanceof VfioMigError) return e;
    if (e instanceof SysError) return new VfioMigError(`(raw SysError, not a VfioMigError) ${e.message}`);
    throw e;
  };
  const b: Bench = {
    dir,
    make(name, opts) {
      new SimStore(host, `${dir}/${name}`).create(opts);
      return `${dir}/${name}`;
    },
    async save(dev, file, opts = {}) {
      const k = new SimKernel(host);
      const d = openDevice(k, `sim:${dev}`);
      try {
        return { r: await save(d, openSink(k, file), opts), err: null };
      } catch (e) {
        return { r: null, err: caught(e) };
      } finally {
        d.close();
      }
    },
    async load(dev, file, open) {
      const k = new SimKernel(host);
      const source = openSource(k, file);
      try {
        const d = openDevice(k, `sim:${dev}`);
        try {
          await load(d, source, {});
          open?.();
          return null;
        } catch (e) {
          return caught(e);
        } finally {
          d.close();
        }
      } finally {
        source.close();
      }
    },
    state: (dev) => {
      const m = metaOf(dev);
      return stateName(m.state);
    },
    hash: (dev) => stateHash(host, new SimStore(host, dev)),
    exists(path) {
      try {
        Deno.statSync(path);
        return true;
      } catch {
        return false;
      }
    },
  };
  try {
    await fn(b);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A failure as the README promises: exit 1, one line ending with the device's state. */
function assertCleanFailure(err: VfioMigError | null, state: string, what: string): void {
  if (!err) fail(`${what}: expected a failure`);
  assertEquals(err.exitCode, 1, `${what}: exit code (${err.message})`);
  assert(!err.message.includes("\n"), `${what}: one line`);
  // v2 names states as the uAPI (RUNNING), v1 by its device_state bits ("running (001b)").
  const named = [...err.message.matchAll(/ is ([A-Za-z_]+)/g)].map((m) => m[1].toUpperCase()).pop();
  assertEquals(named, state, `${what}: the state the message names (${err.message})`);
}

Deno.test("tool on blocking-read (mlx5, conformant): offline and live saves are whole and load equal", async () => {
  await withBench(async (b) => {
    const opts = { model: "bulk" as const, size: 2 * MiB, seed: 4, quirks: ["blocking-read"] };
    const a = b.make("a", { ...opts, quirkOptions: { readDelay: 100 } });
    const c = b.make("c", { ...opts, seed: 5 });
    for (const live of [false, true]) {
      const { r, err } = await b.save(a, `${b.dir}/s.vfmig`, { live, resume: true });
      assertEquals(err, null, `live ${live}`);
      assertEquals(r!.stopCopyBytes + r!.precopyBytes, r!.bytes);
      assertEquals(await b.load(c, `${b.dir}/s.vfmig`), null);
      assertEquals(b.hash(c), b.hash(a), `live ${live}: equal`);
    }
  });
});

Deno.test("tool on reset-clears-config (conformant): load restores the command register after the device's reset", async () => {
  await withBench(async (b) => {
    const a = b.make("a", { model: "bulk", size: 64 * 1024 });
    const c = b.make("c", { model: "bulk", size: 64 * 1024, seed: 2, quirks: ["reset-clears-config"] });
    const k = new SimKernel(host);
    const d = openDevice(k, `sim:${a}`);
    k.pwrite(d.fd, new Uint8Array([0x06, 0x00]), 7 * 2 ** 40 + 4);
    d.close();
    assertEquals((await b.save(a, `${b.dir}/s.vfmig`)).err, null);
    assertEquals(await b.load(c, `${b.dir}/s.vfmig`), null);
    assertEquals(b.hash(c), b.hash(a));
    const cfg = Deno.readFileSync(`${c}/config.bin`);
    assertEquals(cfg[4], 0x06, "the command register was restored");
  });
});

Deno.test("tool on xe: a state larger than MIG_DATA_SIZE says is saved whole and verified on load", async () => {
  await withBench(async (b) => {
    const a = b.make("a", { model: "xe", size: 24 * MiB + 4096, seed: 31 });
    const c = b.make("c", { model: "xe", size: 24 * MiB + 4096, seed: 32 });
    const { r, err } = await b.save(a, `${b.dir}/x.vfmig`);
    assertEquals(err, null);
    assert(r!.sizeEstimate! < r!.bytes, `estimate ${r!.sizeEstimate} < ${r!.bytes} bytes saved`);
    assertEquals(r!.bytes, 32 + 24 * MiB + 4096);
    let loaded = "";
    assertEquals(await b.load(c, `${b.dir}/x.vfmig`, () => (loaded = b.hash(c))), null, "the VF verified every byte");
    assertEquals(loaded, b.hash(a), "while the loader holds it, the VF has the source's state");
    assertNotEquals(b.hash(c), b.hash(a), "a pci-family device: the loader's last close reset it");
  });
});

Deno.test("tool on dirty-underreport: a live save reads until ENOMSG, not by the sizes, and loads equal", async () => {
  await withBench(async (b) => {
    const a = b.make("a", { model: "bulk", size: 4 * MiB, rate: 8 * MiB, quirks: ["dirty-underreport"] });
    const c = b.make("c", { model: "bulk", size: 4 * MiB, seed: 9 });
    const { err } = await b.save(a, `${b.dir}/l.vfmig`, { live: true, maxPrecopyMs: 1500 });
    assertEquals(err, null);
    assertEquals(b.state(a), "STOP");
    assertEquals(await b.load(c, `${b.dir}/l.vfmig`), null);
    assertEquals(b.hash(c), b.hash(a), "the destination holds the state the source stopped with");
  });
});

Deno.test("tool on reset-mid-session (v2): save and load fail cleanly, the device recovered, no output", async () => {
  await withBench(async (b) => {
    for (
      const [phase, live] of [["stop-copy", false], ["pre-copy", true]] as const
    ) {
      const a = b.make(`a-${phase}`, {
        model: "bulk",
        size: 2 * MiB,
        quirks: ["reset-mid-session"],
        quirkOptions: { resetAt: { phase, after: 64 * 1024, to: "error" } },
      });
      const out = `${b.dir}/${phase}.vfmig`;
      const { err } = await b.save(a, out, { live });
      assertCleanFailure(err, "RUNNING", `save, reset in ${phase}`);
      assertEquals(b.state(a), "RUNNING", `${phase}: source recovered`);
      assertEquals(b.exists(out), false, `${phase}: no output`);
    }
    const src = b.make("src", { model: "bulk", size: 2 * MiB, seed: 21 });
    assertEquals((await b.save(src, `${b.dir}/ok.vfmig`)).err, null);
    const c = b.make("c", {
      model: "bulk",
      size: 2 * MiB,
      seed: 22,
      quirks: ["reset-mid-session"],
      quirkOptions: { resetAt: { phase: "resuming", after: 64 * 1024, to: "error" } },
    });
    const before = b.hash(c);
    assertCleanFailure(await b.load(c, `${b.dir}/ok.vfmig`), "RUNNING", "load, reset in resuming");
    assertEquals(b.state(c), "RUNNING", "destination reset");
    assertNotEquals(b.hash(c), b.hash(src), "nothing was loaded");
    assertEquals(b.hash(c), before);
  });
});

Deno.test({
  name: "tool on reset-mid-session (v1): a device that resets itself while SAVING is never reported as saved",
  // After the reset device_state reads _RUNNING and the data ends: the save checks that
  // the device is still saving before it takes the end of the data for the end.
  fn: async () => {
    await withBench(async (b) => {
      const a = b.make("a", {
        model: "bulk",
        size: MiB,
        protocol: "v1",
        dataSize: 64 * 1024,
        quirks: ["reset-mid-session"],
        quirkOptions: { resetAt: { phase: "stop-copy", after: 256 * 1024, to: "error" } },
      });
      const out = `${b.dir}/v1.vfmig`;
      const { r, err } = await b.save(a, out, { protocol: "v1" });
      assert(r === null, `reported saved: ${JSON.stringify(r && { bytes: r.bytes, final: r.finalState })}`);
      assertCleanFailure(err, "RUNNING", "v1 save");
      assertEquals(b.exists(out), false);
    });
  },
});

Deno.test("tool on fails-mid-path: a save either succeeds whole or fails cleanly, the source RUNNING", async () => {
  await withBench(async (b) => {
    for (const failLeaves of ["intermediate", "error"] as const) {
      const a = b.make(`a-${failLeaves}`, {
        model: "mtty-2",
        seed: 3,
        quirks: ["fails-mid-path"],
        quirkOptions: { failLeaves },
      });
      const out = `${b.dir}/${failLeaves}.vfmig`;
      const { r, err } = await b.save(a, out);
      if (err) {
        assertCleanFailure(err, "RUNNING", `save (${failLeaves})`);
        assertEquals(b.state(a), "RUNNING");
        assertEquals(b.exists(out), false);
      } else assertEquals(r!.bytes, 96);
    }
  });
});

Deno.test({
  name: "tool on fails-mid-path: a load either succeeds whole or fails cleanly, the destination RUNNING",
  // Entering RESUMING fails after the first arc (RUNNING -> RUNNING_P2P): the device is
  // not where the load found it, so it is recovered to RUNNING, and the message says so.
  fn: async () => {
    await withBench(async (b) => {
      for (const failLeaves of ["intermediate", "error"] as const) {
        const c = b.make(`c-${failLeaves}`, {
          model: "mtty-2",
          seed: 4,
          quirks: ["fails-mid-path"],
          quirkOptions: { failLeaves },
        });
        const src = b.make(`s-${failLeaves}`, { model: "mtty-2", seed: 5 });
        assertEquals((await b.save(src, `${b.dir}/src.vfmig`)).err, null);
        const err = await b.load(c, `${b.dir}/src.vfmig`);
        if (err) {
          assertCleanFailure(err, "RUNNING", `load (${failLeaves})`);
          assertEquals(b.state(c), "RUNNING");
        } else assertEquals(b.hash(c), b.hash(src));
      }
    });
  },
});

Deno.test("tool on open-resets-state: save then load work; the source is found RUNNING at its next open", async () => {
  await withBench(async (b) => {
    const a = b.make("a", { model: "mtty-2", seed: 6, quirks: ["open-resets-state"] });
    const c = b.make("c", { model: "mtty-2", seed: 7, quirks: ["open-resets-state"] });
    const { r } = await b.save(a, `${b.dir}/o.vfmig`);
    assertEquals(r?.finalState, "STOP");
    assertEquals(await b.load(c, `${b.dir}/o.vfmig`), null);
    assertEquals(b.hash(c), b.hash(a));
    const k = new SimKernel(host);
    const d = openDevice(k, `sim:${a}`);
    try {
      assertEquals(d.migration.getState(), DeviceState.RUNNING, "the save left it STOP; the next open finds RUNNING");
    } finally {
      d.close();
    }
  });
});

Deno.test("tool on stale-after-reopen: the second save's stream (header only) is refused by the destination", async () => {
  await withBench(async (b) => {
    const a = b.make("a", { model: "bulk", size: MiB, seed: 8, quirks: ["stale-after-reopen"] });
    const c = b.make("c", { model: "bulk", size: MiB, seed: 9 });
    const first = await b.save(a, `${b.dir}/1.vfmig`, { resume: true });
    assertEquals(first.r?.bytes, 32 + 16 + MiB);
    const second = await b.save(a, `${b.dir}/2.vfmig`, { resume: true });
    // The tool cannot know the driver left the data out; the destination refuses it.
    const err = await b.load(c, `${b.dir}/2.vfmig`);
    assertCleanFailure(err, "RUNNING", "load of a header-only stream");
    assertNotEquals(b.hash(c), b.hash(a));
    assertEquals(second.r?.bytes, 32, "what the driver gave");
  });
});

Deno.test({
  name: "tool on stale-after-reopen: a save that gets far less than MIG_DATA_SIZE says so",
  // 32 bytes where MIG_DATA_SIZE said 1 MiB + 48: the save completes, with a warning (in
  // the result, on stderr and as an event).
  fn: async () => {
    await withBench(async (b) => {
      const a = b.make("a", { model: "bulk", size: MiB, quirks: ["stale-after-reopen"] });
      await b.save(a, `${b.dir}/1.vfmig`, { resume: true });
      const { r, err } = await b.save(a, `${b.dir}/2.vfmig`, { resume: true });
      assertEquals(err, null);
      assertEquals(r!.warnings.length, 1, "a short save is reported");
      assert(r!.warnings[0].includes("MIG_DATA_SIZE"), r!.warnings[0]);
    });
  },
});

Deno.test("tool on ignores-offset: an offline save (one read) is right; a live save loads other bytes (check's job)", async () => {
  await withBench(async (b) => {
    const a = b.make("a", { model: "mtty-2", seed: 12, quirks: ["ignores-offset"] });
    const c = b.make("c", { model: "mtty-2", seed: 13 });
    assertEquals((await b.save(a, `${b.dir}/off.vfmig`, { resume: true })).err, null);
    assertEquals(await b.load(c, `${b.dir}/off.vfmig`), null);
    assertEquals(b.hash(c), b.hash(a), "offline: the whole state in one read, from position 0");
    const { err } = await b.save(a, `${b.dir}/live.vfmig`, { live: true, resume: true });
    assertEquals(err, null);
    assertEquals(await b.load(c, `${b.dir}/live.vfmig`), null, "the header is valid, so the driver takes it");
    assertNotEquals(b.hash(c), b.hash(a), "live: the port data is the header again: nothing a tool can see");
  });
});
