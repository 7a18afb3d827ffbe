// vfio-mig through its real command line, as subprocesses (`deno run --allow-ffi
// cli.ts ...`), on simulated devices created with `sim create` in temp dirs: round
// trips, pipes, live saves, refusals, recovery after failures, exit codes, help.
// Plus, in-process through the library API: no fd leaks, and the version.

import { assert, assertEquals, assertMatch, assertRejects, assertStringIncludes, fail } from "../helpers/assert.ts";
import { load, openDevice, openSink, openSource, save, VERSION } from "../../mod.ts";
import { parseFaults, SimKernel, SimStore } from "../../src/sim/mod.ts";
import { libc } from "../../src/vfio/mod.ts";
import { StreamReader } from "../../src/stream/mod.ts";
import {
  BASE_ENV,
  CLI,
  DENO,
  MiB,
  ROOT,
  type RunBytes as Run,
  runCli as cli,
  sha,
  show,
  stateOf,
} from "../helpers/proc.ts";
import { MemorySource } from "../helpers/bytes.ts";

async function ok(args: string[], opts?: { env?: Record<string, string>; stdin?: Uint8Array }): Promise<Run> {
  const r = await cli(args, opts);
  if (r.code !== 0) fail(`vfio-mig ${args.join(" ")} failed: ${show(r)}`);
  return r;
}

/** The failure contract: the expected exit code, and one line on stderr with no stack trace. */
function assertOneLineFailure(r: Run, code: number, what: string, includes?: string): string {
  assertEquals(r.code, code, `${what}: exit code\n${show(r)}`);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
  assertEquals(lines.length, 1, `${what}: exactly one line on stderr\n${show(r)}`);
  assert(!/^\s+at /m.test(r.stderr), `${what}: no stack trace\n${show(r)}`);
  assertMatch(lines[0], /^vfio-mig: /, `${what}: the line says who`);
  if (includes) assertStringIncludes(lines[0], includes, what);
  return lines[0];
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-cli-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function simCreate(path: string, model: string, ...extra: string[]): Promise<void> {
  const r = await ok(["sim", "create", path, "--model", model, ...extra]);
  assertStringIncludes(r.stdout, `created sim:${path}`);
}

/** Changes a simulated device's internal state in place (its first 4 KiB, inverted). */
async function scramble(dir: string): Promise<void> {
  using f = await Deno.open(`${dir}/state.bin`, { read: true, write: true });
  const buf = new Uint8Array(4096);
  const n = (await f.read(buf)) ?? 0;
  for (let i = 0; i < n; i++) buf[i] ^= 0xff;
  await f.seek(0, Deno.SeekMode.Start);
  await f.write(buf.subarray(0, n));
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function ls(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

/** JSON lines of a VFIO_MIG_SIM_LOG file ([] when it does not exist). */
async function logLines(path: string): Promise<Record<string, unknown>[]> {
  if (!(await exists(path))) return [];
  const text = await Deno.readTextFile(path);
  return text.split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

const isSet = (l: Record<string, unknown>) =>
  typeof l.key === "string" && l.key.startsWith("ioctl:DEVICE_FEATURE:") && l.key.endsWith(":SET");
const isReset = (l: Record<string, unknown>) => l.key === "ioctl:DEVICE_RESET";

/** Offsets of a stream's parts: header end, each record, the trailer. */
async function streamLayout(
  bytes: Uint8Array,
): Promise<{ headerEnd: number; data: number[]; tags: number[]; trailer: number }> {
  const r = new StreamReader(new MemorySource(bytes));
  await r.readHeader();
  const headerEnd = r.offset;
  const data: number[] = [];
  const tags: number[] = [];
  for (;;) {
    const rec = await r.next();
    if (rec.kind === "end") return { headerEnd, data, tags, trailer: rec.offset };
    (rec.kind === "data" ? data : tags).push(rec.offset);
  }
}

// ---------------------------------------------------------------------------

Deno.test("round trips through a file: 0, 1, 4095, 4096, 1 MiB+1 and 256 MiB of state", async () => {
  for (const size of [0, 1, 4095, 4096, MiB + 1, 256 * MiB]) {
    await withTemp(async (t) => {
      const [a, b, file] = [`${t}/a`, `${t}/b`, `${t}/state.vfmig`];
      await Promise.all([
        simCreate(a, "bulk", "--size", String(size), "--seed", "101"),
        simCreate(b, "bulk", "--size", String(size), "--seed", "202"),
      ]);
      if (size > 0) await scramble(b); // tiny seeded states can coincide
      const shaA = await sha(a);
      if (size > 0) assert(shaA !== (await sha(b)), "the two devices start different");
      await ok(["save", "--device", `sim:${a}`, file]);
      assertEquals(await stateOf(a), "STOP", "save leaves the source in STOP by default");
      assertEquals(await ls(t), ["a", "b", "state.vfmig"], "no temporary file left");
      const st = await Deno.stat(file);
      assert(st.size >= size, `stream of ${st.size} bytes holds ${size}`);
      // Hash here while the other process works (2 cores).
      const [, shaAAfter] = await Promise.all([ok(["load", "--device", `sim:${b}`, file]), sha(a)]);
      assertEquals(shaAAfter, shaA, "saving does not change the source");
      assertEquals(await stateOf(b), "RUNNING", "load leaves the destination RUNNING by default");
      const [cmp, shaB] = await Promise.all([cli(["sim", "compare", a, b]), sha(b)]);
      assertEquals(shaB, shaA, `size ${size}: destination holds the source's state`);
      assertEquals(cmp.code, 0, `sim compare after ${size}: ${show(cmp)}`);
      assertStringIncludes(cmp.stdout, "equal");
    });
  }
});

Deno.test("sim compare tells different devices apart (exit 1)", async () => {
  await withTemp(async (t) => {
    await simCreate(`${t}/a`, "bulk", "--size", "4096", "--seed", "1");
    await simCreate(`${t}/b`, "bulk", "--size", "4096", "--seed", "2");
    const r = await cli(["sim", "compare", `${t}/a`, `${t}/b`]);
    assertEquals(r.code, 1, show(r));
    assertStringIncludes(r.stdout, "different");
  });
});

Deno.test("save - | load - through a real OS pipe between two processes", async () => {
  await withTemp(async (t) => {
    for (const [model, extra] of [["bulk", ["--size", String(3 * MiB + 5)]], ["mtty-2", []]] as const) {
      const [a, b] = [`${t}/${model}-a`, `${t}/${model}-b`];
      await simCreate(a, model, ...extra, "--seed", "7");
      await simCreate(b, model, ...extra, "--seed", "8");
      // The shell connects save's stdout to load's stdin with pipe(2): no copy through us.
      const script = `"$DENO" run --allow-ffi "$CLI" save -q --device "sim:$A" - | ` +
        `"$DENO" run --allow-ffi "$CLI" load -q --device "sim:$B" -; echo "status: \${PIPESTATUS[*]}"`;
      const r = await new Deno.Command("bash", {
        args: ["-c", script],
        env: { ...BASE_ENV, DENO, CLI, A: a, B: b },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const out = new TextDecoder().decode(r.stdout);
      const err = new TextDecoder().decode(r.stderr);
      assertEquals(out.trim(), "status: 0 0", `${model}: both ends succeed; stderr: ${err}`);
      assertEquals(await sha(b), await sha(a), `${model}: state moved through the pipe`);
      assertEquals([await stateOf(a), await stateOf(b)], ["STOP", "RUNNING"]);
    }
  });
});

Deno.test("mtty-2 -> mtty-2 live save (--live): 24 bytes of pre-copy, then the ports; loads equal", async () => {
  await withTemp(async (t) => {
    const [a, b, file, log] = [`${t}/a`, `${t}/b`, `${t}/live.vfmig`, `${t}/save.log`];
    await simCreate(a, "mtty-2", "--seed", "5");
    await simCreate(b, "mtty-2", "--seed", "6");
    assert((await sha(a)) !== (await sha(b)));
    const r = await ok(["save", "--live", "--json", "--device", `sim:${a}`, file], { env: { VFIO_MIG_SIM_LOG: log } });
    const summary = JSON.parse(r.stdout);
    assertEquals([summary.bytes, summary.precopyBytes, summary.stopCopyBytes], [96, 24, 72], "24 + 72 bytes");
    assertEquals(summary.finalState, "STOP");
    const bytes = await Deno.readFile(file);
    const header = await new StreamReader(new MemorySource(bytes)).readHeader();
    assertEquals(header.mode, "live");
    assertEquals(header.device.mdevType, "mtty-2");
    // The kernel was asked RUNNING -> PRE_COPY (new fd), then PRE_COPY -> STOP_COPY (no new fd), never a forbidden arc.
    const sets = (await logLines(log)).filter(isSet);
    assertEquals(sets[0].from, "RUNNING");
    assertEquals(sets[0].to, "PRE_COPY");
    assert((sets[0].data_fd as number) >= 0, "PRE_COPY opened a data_fd");
    const toSc = sets.find((l) => l.to === "STOP_COPY");
    assert(toSc && toSc.from === "PRE_COPY" && toSc.data_fd === -1, `PRE_COPY -> STOP_COPY: ${JSON.stringify(toSc)}`);
    assert(!(await logLines(log)).some((l) => "forbidden" in l), "no forbidden arc requested");
    await ok(["load", "--device", `sim:${b}`, file]);
    assertEquals(await sha(b), await sha(a));
    assertEquals(await stateOf(b), "RUNNING");
  });
});

Deno.test("an mtty-2 stream into an mtty-1 is refused (exit 4) before the device is touched", async () => {
  await withTemp(async (t) => {
    const [src, dst, ok2, file] = [`${t}/src`, `${t}/dst`, `${t}/ok2`, `${t}/m2.vfmig`];
    await simCreate(src, "mtty-2", "--seed", "3");
    await simCreate(dst, "mtty-1", "--seed", "4");
    await simCreate(ok2, "mtty-2", "--seed", "9");
    await ok(["save", "--device", `sim:${src}`, file]);
    await ok(["state", "--device", `sim:${dst}`, "RUNNING_P2P"]); // a state a reset would change
    const [before, stateBefore] = [await sha(dst), await stateOf(dst)];
    const log = `${t}/dst.log`;
    const r = await cli(["load", "--device", `sim:${dst}`, file], { env: { VFIO_MIG_SIM_LOG: log } });
    const line = assertOneLineFailure(r, 4, "wrong device");
    assertStringIncludes(line, "mtty-2");
    assertStringIncludes(line, "mtty-1");
    assertEquals(await sha(dst), before, "destination state unchanged");
    assertEquals(await stateOf(dst), stateBefore, "destination migration state unchanged");
    const calls = await logLines(log);
    assertEquals(calls.filter((l) => isSet(l) || isReset(l)), [], "no SET and no reset reached the destination");
    // The log does record SETs when they happen: the same stream into a matching device.
    const log2 = `${t}/ok2.log`;
    await ok(["load", "--device", `sim:${ok2}`, file], { env: { VFIO_MIG_SIM_LOG: log2 } });
    assert((await logLines(log2)).filter(isSet).length >= 2, "a good load's SETs are logged");
    assertEquals(await sha(ok2), await sha(src));
  });
});

Deno.test("truncated and corrupted streams are refused (exit 4, one line); the destination is reset and still usable", async () => {
  await withTemp(async (t) => {
    const [a, b, file] = [`${t}/a`, `${t}/b`, `${t}/good.vfmig`];
    await simCreate(a, "bulk", "--size", String(3 * MiB + 7), "--seed", "31");
    await simCreate(b, "bulk", "--size", String(3 * MiB + 7), "--seed", "32");
    await ok(["save", "--device", `sim:${a}`, file]);
    const good = await Deno.readFile(file);
    const L = await streamLayout(good);
    assert(L.data.length >= 4, `a multi-chunk stream (${L.data.length} data records)`);
    const firstData = L.data[0];
    const cuts = [
      0,
      5,
      16,
      L.headerEnd - 1,
      L.headerEnd,
      L.headerEnd + 4,
      firstData + 10,
      firstData + 20 + 1000,
      L.data[2] + 30,
      L.trailer - 1,
      L.trailer + 10,
      good.length - 1,
    ];
    const cases: [string, Uint8Array, boolean][] = cuts.map((c) => [`cut at ${c}`, good.subarray(0, c), c > firstData]);
    const flip = (at: number) => {
      const b2 = good.slice();
      b2[at] ^= 0x40;
      return b2;
    };
    cases.push(["flipped byte in the 3rd data chunk", flip(L.data[2] + 20 + 12345), true]);
    cases.push(["flipped byte in the header", flip(L.headerEnd - 30), false]);
    for (const [what, bytes, reachesDevice] of cases) {
      const cut = `${t}/bad.vfmig`;
      await Deno.writeFile(cut, bytes);
      const log = `${t}/${what.replaceAll(" ", "_")}.log`;
      // --no-verify-first: the damage is found as the records are loaded (a file is
      // otherwise checked whole before the device is touched: verify_test.ts).
      const r = await cli(["load", "--no-verify-first", "--device", `sim:${b}`, cut], {
        env: { VFIO_MIG_SIM_LOG: log },
      });
      const line = assertOneLineFailure(r, 4, what);
      if (what.startsWith("flipped")) assertStringIncludes(line, "checksum", what);
      assertEquals(await stateOf(b), "RUNNING", `${what}: destination RUNNING afterwards`);
      const calls = await logLines(log);
      if (reachesDevice) {
        assert(calls.some((l) => isSet(l) && l.to === "RESUMING"), `${what}: the load had started`);
        assert(calls.some(isReset), `${what}: the destination was reset (the only way out of RESUMING)`);
      } else {
        assertEquals(calls.filter(isSet), [], `${what}: refused before touching the device`);
      }
    }
    // Still usable: a good load afterwards works and the state is the source's.
    await ok(["load", "--device", `sim:${b}`, file]);
    assertEquals(await sha(b), await sha(a));
    assertEquals(await stateOf(b), "RUNNING");
  });
});

Deno.test("injected failures during save leave the source RUNNING and no output file; short writes are retried", async () => {
  await withTemp(async (t) => {
    const [a, b, out] = [`${t}/a`, `${t}/b`, `${t}/out`];
    await simCreate(a, "bulk", "--size", String(MiB + 1), "--seed", "41");
    await simCreate(b, "bulk", "--size", String(MiB + 1), "--seed", "42");
    await Deno.mkdir(out);
    const shaA = await sha(a);
    for (
      const fault of [
        "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET@1=EIO",
        "read:data_fd@2=EIO",
        "write:host@2=ENOSPC",
      ]
    ) {
      const r = await cli(["save", "--device", `sim:${a}`, `${out}/s.vfmig`], { env: { VFIO_MIG_SIM_FAULTS: fault } });
      const line = assertOneLineFailure(r, 1, fault);
      const errno = fault.split("=")[1];
      assertStringIncludes(line, errno, fault);
      assertEquals(await stateOf(a), "RUNNING", `${fault}: source back to RUNNING`);
      assertEquals(await sha(a), shaA, `${fault}: source state intact`);
      assertEquals(await ls(out), [], `${fault}: no output file, complete or partial`);
    }
    // A short write is not an error: writeAll goes on with the rest.
    const r = await ok(["save", "--device", `sim:${a}`, `${out}/s.vfmig`], {
      env: { VFIO_MIG_SIM_FAULTS: "write:host@1=short,write:host@3=short" },
    });
    assertEquals(r.code, 0);
    assertEquals(await ls(out), ["s.vfmig"]);
    await ok(["load", "--device", `sim:${b}`, `${out}/s.vfmig`]);
    assertEquals(await sha(b), shaA, "the stream written in short pieces is whole");
  });
});

Deno.test("final states: save leaves STOP (--resume: RUNNING); load leaves RUNNING (--no-start: STOP)", async () => {
  await withTemp(async (t) => {
    const [a, b, file] = [`${t}/a`, `${t}/b`, `${t}/s.vfmig`];
    await simCreate(a, "mtty-1", "--seed", "1");
    await simCreate(b, "mtty-1", "--seed", "2");
    await ok(["save", "--resume", "--device", `sim:${a}`, file]);
    assertEquals(await stateOf(a), "RUNNING", "--resume");
    await ok(["save", "--device", `sim:${a}`, file]);
    assertEquals(await stateOf(a), "STOP", "default save");
    // Saving again from STOP works and leaves STOP.
    await ok(["save", "--device", `sim:${a}`, file]);
    assertEquals(await stateOf(a), "STOP");
    await ok(["load", "--no-start", "--device", `sim:${b}`, file]);
    assertEquals(await stateOf(b), "STOP", "--no-start");
    assertEquals((await ok(["state", "--device", `sim:${b}`])).stdout.trim(), "STOP", "the state command agrees");
    await ok(["load", "--device", `sim:${b}`, file]);
    assertEquals(await stateOf(b), "RUNNING", "default load");
    assertEquals(await sha(b), await sha(a));
  });
});

/** The commands listed by `vfio-mig --help`. */
async function commandNames(): Promise<string[]> {
  const r = await ok(["--help"]);
  const section = r.stdout.split(/^Commands:$/m)[1]?.split(/^\S/m)[0] ?? "";
  const names = [...section.matchAll(/^ {2}(\S+)\s{2,}\S/gm)].map((m) => m[1]);
  assert(names.length >= 6, `commands found in --help: ${names.join(", ")}\n${r.stdout}`);
  return names;
}

Deno.test("--help works for every command (exit 0), and `help CMD` says the same", async () => {
  const names = await commandNames();
  for (const core of ["save", "load", "info", "state", "reset", "sim"]) assert(names.includes(core), `${core} listed`);
  await Promise.all(names.map(async (name) => {
    const r = await cli([name, "--help"]);
    assertEquals(r.code, 0, `${name} --help\n${show(r)}`);
    assertMatch(r.stdout, /usage/i, `${name} --help prints a usage`);
    assertEquals(r.stderr, "", `${name} --help: nothing on stderr`);
    const h = await cli(["help", name]);
    assertEquals(h.code, 0, `help ${name}`);
    assertEquals(h.stdout, r.stdout, `help ${name} is ${name} --help`);
    const short = await cli([name, "-h"]);
    assertEquals(short.code, 0, `${name} -h`);
  }));
});

Deno.test("top-level usage: --help exits 0, no command exits 2, unknown command exits 2 with one line", async () => {
  const help = await cli(["--help"]);
  assertEquals(help.code, 0);
  assertStringIncludes(help.stdout, "Usage: vfio-mig COMMAND");
  const none = await cli([]);
  assertEquals(none.code, 2, show(none));
  assertEquals(none.stdout, "", "a usage error prints nothing on stdout");
  assertStringIncludes(none.stderr, "Usage: vfio-mig COMMAND");
  const unknown = await cli(["frobnicate"]);
  assertOneLineFailure(unknown, 2, "unknown command", "unknown command 'frobnicate'");
  const version = await cli(["--version"]);
  assertEquals([version.code, version.stdout.trim()], [0, `vfio-mig ${VERSION}`]);
});

Deno.test("exit codes documented in --help are the ones produced (0, 1, 2, 3, 4, 130)", async () => {
  const help = (await ok(["--help"])).stdout.replace(/\s+/g, " ");
  const doc = help.split("Exit codes:")[1];
  assert(doc, "--help documents exit codes");
  const codes = new Map([...doc.matchAll(/(\d+) ([a-z][^,(]*)/g)].map((m) => [Number(m[1]), m[2].trim()]));
  assertEquals([...codes.keys()], [0, 1, 2, 3, 4, 130], `documented: ${doc}`);
  await withTemp(async (t) => {
    const [a, m1, none] = [`${t}/a`, `${t}/m1`, `${t}/none`];
    await simCreate(a, "mtty-2", "--seed", "1");
    await simCreate(m1, "mtty-1");
    await simCreate(none, "mtty-1", "--flags", "none");
    const file = `${t}/a.vfmig`;
    // 0 success
    assertEquals((await cli(["save", "--resume", "--device", `sim:${a}`, file])).code, 0, codes.get(0));
    // 1 failure: a device step failed
    assertOneLineFailure(
      await cli(["save", "--device", `sim:${a}`, `${t}/x`], {
        env: { VFIO_MIG_SIM_FAULTS: "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET@1=EIO" },
      }),
      1,
      codes.get(1)!,
    );
    // 2 usage
    assertOneLineFailure(await cli(["save", "--bogus", "--device", `sim:${a}`, file]), 2, "unknown option");
    assertOneLineFailure(await cli(["save", "--device", `sim:${a}`]), 2, "no output given");
    assertOneLineFailure(await cli(["state", "--device", `sim:${a}`, "PAUSED"]), 2, "unknown state");
    // 3 device: not found, not migratable, busy
    assertOneLineFailure(await cli(["info", "--device", `sim:${t}/missing`]), 3, "no such device");
    assertOneLineFailure(await cli(["save", "--device", `sim:${none}`, file]), 3, "not migratable", "ENOTTY");
    // 4 stream: not a stream, or for another device
    await Deno.writeTextFile(`${t}/junk`, "this is not a vfio-mig stream\n");
    assertOneLineFailure(await cli(["load", "--device", `sim:${a}`, `${t}/junk`]), 4, "not a stream", "bad magic");
    assertOneLineFailure(await cli(["load", "--device", `sim:${m1}`, file]), 4, "for another device");
    // 130 interrupted: SIGINT while a load waits for its stream.
    await interruptedLoad(t, a);
  });
});

/** Starts `load -` with an open stdin, interrupts it with SIGINT mid-stream: exit 130, device reset. */
async function interruptedLoad(t: string, bystander: string): Promise<void> {
  const [big, dst, log] = [`${t}/big`, `${t}/big-dst`, `${t}/int.log`];
  await simCreate(big, "bulk", "--size", String(8 * MiB), "--seed", "5");
  await simCreate(dst, "bulk", "--size", String(8 * MiB), "--seed", "6");
  const stream = (await ok(["save", "--resume", "--device", `sim:${big}`, "-"])).out;
  assert(stream.length > 8 * MiB, `a whole stream on stdout (${stream.length} bytes)`);
  const child = new Deno.Command(DENO, {
    args: ["run", "--allow-ffi", CLI, "load", "--device", `sim:${dst}`, "-"],
    cwd: ROOT,
    env: { ...BASE_ENV, VFIO_MIG_SIM_LOG: log },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  const w = child.stdin.getWriter();
  try {
    // The device is opened after the signal handlers are installed: wait for that.
    const deadline = Date.now() + 20_000;
    while (!(await logLines(log)).some((l) => l.key === "open:device")) {
      if (Date.now() > deadline) fail("load never opened the device");
      await new Promise((r) => setTimeout(r, 20));
    }
    // Half the stream, then the signal while the load waits for the rest, which never
    // comes: it must end on the signal alone. (The rest sent after the signal made this
    // a race under load: a load that had read everything before its listener ran
    // completed, rightly, with exit 0.)
    const half = Math.floor(stream.length / 2);
    await w.write(stream.subarray(0, half));
    await new Promise((r) => setTimeout(r, 100));
    child.kill("SIGINT");
  } catch {
    await w.abort().catch(() => {}); // the load may stop reading once interrupted
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const r = await Promise.race([
    output,
    new Promise<null>((res) => timer = setTimeout(() => res(null), 20_000)),
  ]);
  clearTimeout(timer);
  if (r === null) {
    child.kill("SIGKILL");
    await output.catch(() => {});
    fail("SIGINT during load: still running 20 s after the signal, waiting for its stream");
  }
  await w.abort().catch(() => {});
  const dec = new TextDecoder();
  const run: Run = {
    code: r.code,
    signal: r.signal,
    stdout: dec.decode(r.stdout),
    stderr: dec.decode(r.stderr),
    out: r.stdout,
    ms: 0,
  };
  assertOneLineFailure(run, 130, "SIGINT during load", "interrupted by SIGINT");
  assertEquals(await stateOf(dst), "RUNNING", "the interrupted destination was reset");
  assert((await logLines(log)).some(isReset), "reset issued");
  assertEquals(await stateOf(bystander), "RUNNING", "an unrelated device is untouched");
}

Deno.test("no fd leaks: library save + load, failed load and failed save close everything they open", async () => {
  await withTemp(async (t) => {
    const host = libc();
    const [a, b] = [`${t}/a`, `${t}/b`];
    new SimStore(host, a).create({ model: "bulk", size: 3 * MiB + 3, seed: 1 });
    new SimStore(host, b).create({ model: "bulk", size: 3 * MiB + 3, seed: 2 });
    new SimStore(host, `${t}/m`).create({ model: "mtty-1" });
    const file = `${t}/s.vfmig`;

    const saveOnce = async (faults?: string) => {
      const k = new SimKernel(host, { faults: parseFaults(faults) });
      const dev = openDevice(k, `sim:${a}`);
      try {
        await save(dev, openSink(k, file), { resume: true });
      } finally {
        dev.close();
      }
    };
    const loadOnce = async (path: string, into = b) => {
      const k = new SimKernel(host);
      const src = openSource(k, path);
      try {
        const dev = openDevice(k, `sim:${into}`);
        try {
          await load(dev, src);
        } finally {
          dev.close();
        }
      } finally {
        src.close();
      }
    };
    // Through libc: Deno's own readDir of /proc/self needs --allow-all.
    const fds = () => host.readdir("/proc/self/fd").length;

    // Warm up (libc, lazily opened runtime files), then measure.
    await saveOnce();
    await loadOnce(file);
    const before = fds();
    for (let i = 0; i < 3; i++) {
      await saveOnce();
      await loadOnce(file);
    }
    assertEquals(fds(), before, "after save + load");
    const good = await Deno.readFile(file);
    await Deno.writeFile(`${t}/cut.vfmig`, good.subarray(0, good.length - 100));
    await assertRejects(() => loadOnce(`${t}/cut.vfmig`), Error, "truncated");
    assertEquals(fds(), before, "after a load that failed mid-stream");
    await assertRejects(() => loadOnce(file, `${t}/m`), Error, "wrong device");
    assertEquals(fds(), before, "after a load refused up front");
    await assertRejects(() => saveOnce("read:data_fd@2=EIO"), Error, "EIO");
    assertEquals(fds(), before, "after a failed save");
    await assertRejects(() => saveOnce("write:host@3=ENOSPC"), Error, "ENOSPC");
    assertEquals(fds(), before, "after a failed save (sink)");
    assertEquals(await ls(t), ["a", "b", "cut.vfmig", "m", "s.vfmig"], "failed saves left no partial file");
    // The good load still works after all that.
    await loadOnce(file);
    assertEquals(await sha(b), await sha(a));
  });
});

Deno.test("the version in src/version.ts is deno.json's", async () => {
  const json = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  assertEquals(VERSION, json.version);
  assertMatch(VERSION, /^\d+\.\d+\.\d+/);
});
