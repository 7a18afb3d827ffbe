// Several devices in one stream (issue 6 item 4), through the real command line on
// simulated devices: two and four devices saved and loaded together (files, pipes,
// live), the P2P ordering read from the simulator's call log, --map, --no-p2p,
// identity refusal before anything is touched, one device failing restores all, the
// per-device inspect report and damaged streams, live over TCP with every device's
// switchover-ack, the simulator's --yield-rate (reads at a rate, EAGAIN when
// non-blocking) with a slow device that does not hold a fast one up, and no fd leaks.

import { createHash } from "node:crypto";
import { assert, assertEquals, assertMatch, assertRejects, assertStringIncludes, fail } from "../helpers/assert.ts";
import { load, openDevice, openSink, openSource, save, type VfioDevice } from "../../mod.ts";
import { type ModelName, parseFaults, SimKernel, SimStore } from "../../src/sim/mod.ts";
import { DeviceState, isErrno, libc, uapi } from "../../src/vfio/mod.ts";
import { F, O } from "../../ffi/sys.ts";
import { BASE_ENV, CLI, DENO, MiB, ROOT, type Run, runCli, show } from "../helpers/proc.ts";

const { FEATURE, FEATURE_FLAGS, IOCTL } = uapi;

const cli = (args: string[], env: Record<string, string> = {}) => runCli(args, { env });

async function ok(args: string[], env?: Record<string, string>): Promise<Run> {
  const r = await cli(args, env);
  if (r.code !== 0) fail(`vfio-mig ${args.join(" ")} failed: ${show(r)}`);
  return r;
}

/** One line on stderr, the exit code, no stack trace. */
function assertOneLineFailure(r: Run, code: number, what: string): string {
  assertEquals(r.code, code, `${what}: exit code\n${show(r)}`);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
  assertEquals(lines.length, 1, `${what}: one line on stderr\n${show(r)}`);
  assertMatch(lines[0], /^vfio-mig: /);
  return lines[0];
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-multi-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * A simulated device, made in this process as `sim create PATH --model MODEL EXTRA…`
 * makes it (SimStore.create): the flags these tests give, --seed, --size, --rate,
 * --yield-rate (a number with M) and --flags stop-copy.
 */
function simCreate(path: string, model: string, ...extra: string[]): Promise<void> {
  const opt = (name: string) => {
    const i = extra.indexOf(`--${name}`);
    return i < 0 ? undefined : extra[i + 1];
  };
  const bytes = (s: string | undefined) =>
    s === undefined ? undefined : s.endsWith("M") ? parseFloat(s) * MiB : Number(s);
  const flags = opt("flags");
  if (flags !== undefined && flags !== "stop-copy") throw new Error(`simCreate: --flags ${flags} not known here`);
  new SimStore(libc(), path).create({
    model: model as ModelName,
    seed: bytes(opt("seed")),
    size: bytes(opt("size")),
    rate: bytes(opt("rate")),
    yieldRate: bytes(opt("yield-rate")),
    flags: flags === undefined ? undefined : uapi.MIGRATION_FLAGS.STOP_COPY,
  });
  return Promise.resolve();
}

const STATE_NAMES = ["ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"];

async function stateOf(dir: string): Promise<string> {
  const meta = JSON.parse(await Deno.readTextFile(`${dir}/device.json`));
  return STATE_NAMES[meta.state] ?? `?${meta.state}`;
}

async function sha(dir: string): Promise<string> {
  return createHash("sha256").update(await Deno.readFile(`${dir}/state.bin`)).digest("hex");
}

type Line = Record<string, unknown>;

async function logLines(path: string): Promise<Line[]> {
  try {
    return (await Deno.readTextFile(path)).split("\n").filter((l) => l).map((l) => JSON.parse(l));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
}

/** The set-state requests of a call log (each names its device: `dev`). */
async function sets(path: string): Promise<Line[]> {
  return (await logLines(path)).filter((l) => l.key === "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET" && "to" in l);
}

const resets = async (path: string) => (await logLines(path)).filter((l) => l.key === "ioctl:DEVICE_RESET");

/** Every source reached `p2p` before the first STOP_COPY request (of any device). */
function assertQuiescedFirst(log: Line[], sources: string[], p2p: "RUNNING_P2P" | "PRE_COPY_P2P", what: string) {
  const firstStop = log.findIndex((l) => l.to === "STOP_COPY");
  assert(firstStop >= 0, `${what}: a STOP_COPY request`);
  for (const s of sources) {
    const at = log.findIndex((l) => l.dev === s && l.to === p2p && !("err" in l));
    assert(
      at >= 0 && at < firstStop,
      `${what}: ${s} reached ${p2p} (#${at}) before the first STOP_COPY (#${firstStop})`,
    );
    assert(log.some((l) => l.dev === s && l.to === "STOP_COPY"), `${what}: ${s} was stopped`);
  }
}

/**
 * Destinations: each went RESUMING, then STOP, then RUNNING_P2P, and no destination was
 * asked for RUNNING before every one of them was in STOP and RUNNING_P2P.
 */
function assertLoadedTogether(log: Line[], dests: string[], what: string) {
  const firstRunning = log.findIndex((l) => l.to === "RUNNING");
  assert(firstRunning >= 0, `${what}: a RUNNING request`);
  for (const d of dests) {
    const mine = log.map((l, i) => ({ l, i })).filter((x) => x.l.dev === d);
    const seq = mine.map((x) => x.l.to);
    assertEquals(seq, ["RESUMING", "STOP", "RUNNING_P2P", "RUNNING"], `${what}: ${d}'s requests`);
    const p2p = mine.find((x) => x.l.to === "RUNNING_P2P")!.i;
    assert(p2p < firstRunning, `${what}: ${d} was RUNNING_P2P (#${p2p}) before any RUNNING (#${firstRunning})`);
  }
}

async function inspectJson(file: string): Promise<Record<string, unknown> & { records: Line[]; devices: Line[] }> {
  const r = await cli(["inspect", "--json", file]);
  assertEquals(r.code, 0, `inspect ${file}: ${show(r)}`);
  return JSON.parse(r.stdout);
}

// ---------------------------------------------------------------------------

Deno.test("two devices (mtty-2 + bulk) through a file: one stream, P2P before any stop, loaded together; inspect per device", async () => {
  await withTemp(async (t) => {
    const [a, b, c, d] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/d`];
    const file = `${t}/two.vfmig`;
    await Promise.all([
      simCreate(a, "mtty-2", "--seed", "3"),
      simCreate(b, "bulk", "--size", String(3 * MiB + 5), "--seed", "4"),
      simCreate(c, "mtty-2", "--seed", "5"),
      simCreate(d, "bulk", "--size", String(3 * MiB + 5), "--seed", "6"),
    ]);
    const [shaA, shaB] = [await sha(a), await sha(b)];
    assert(shaA !== (await sha(c)) && shaB !== (await sha(d)), "destinations start different");
    const saveLog = `${t}/save.log`;
    const s = await ok(["save", "--json", "--device", `sim:${a}`, "--device", `sim:${b}`, file], {
      VFIO_MIG_SIM_LOG: saveLog,
    });
    const sr = JSON.parse(s.stdout);
    assertEquals(sr.devices.map((x: Line) => [x.device, x.bytes, x.p2p, x.finalState]), [
      [`sim:${a}`, 96, true, "STOP"],
      [`sim:${b}`, 3 * MiB + 5 + 48, true, "STOP"],
    ]);
    assertEquals([await stateOf(a), await stateOf(b)], ["STOP", "STOP"]);
    assertQuiescedFirst(await sets(saveLog), [a, b], "RUNNING_P2P", "save");
    assert(!(await logLines(saveLog)).some((l) => "forbidden" in l), "no forbidden arc");

    const loadLog = `${t}/load.log`;
    const l = await ok(["load", "--json", "--device", `sim:${c}`, "--device", `sim:${d}`, file], {
      VFIO_MIG_SIM_LOG: loadLog,
    });
    const lr = JSON.parse(l.stdout);
    assertEquals(lr.devices.map((x: Line) => [x.source, x.device, x.finalState]), [
      [`sim:${a}`, `sim:${c}`, "RUNNING"],
      [`sim:${b}`, `sim:${d}`, "RUNNING"],
    ]);
    assertLoadedTogether(await sets(loadLog), [c, d], "load");
    assertEquals([await sha(c), await sha(d)], [shaA, shaB], "each destination holds its source's state");
    assertEquals([await stateOf(c), await stateOf(d)], ["RUNNING", "RUNNING"]);

    // inspect: the header's device list, a device on every record, per-device sections and payloads.
    const rep = await inspectJson(file);
    assertEquals(rep.ok, true);
    assertEquals(rep.devices.map((x) => [x.source, (x.payload as Line)?.format, x.dataBytes]), [
      [`sim:${a}`, "mtty", 96],
      [`sim:${b}`, "bulk", 3 * MiB + 5 + 48],
    ]);
    assert(rep.records.every((r) => r.device !== undefined || r.tag === "STREAM_END"), "every record has a device");
    const secs = (rep.sections as Line[]).map((x) => `${x.device ?? "-"}:${x.name}`);
    assertEquals(secs, ["0:setup", "1:setup", "0:stop-copy", "1:stop-copy", "0:config", "1:config", "-:trailer"]);
    const text = (await ok(["inspect", file])).stdout;
    assertStringIncludes(text, "devices   2");
    assertStringIncludes(text, `device 1    from sim:${b}`);
    assertMatch(text, /DEV {2}SECTION/);

    // A single-device stream is unchanged: no `devices` in its header, no DEVICE tag.
    const single = `${t}/single.vfmig`;
    await ok(["save", "--device", `sim:${c}`, single]);
    const one = await inspectJson(single);
    assertEquals(one.devices, null);
    assert(!("devices" in ((one.header as Line).fields as Line)), "no devices key in a single-device header");
    assert(!one.records.some((r) => r.tag === "DEVICE" || "device" in r), "no DEVICE tag");
  });
});

Deno.test("four devices (2 mtty-2, 2 bulk) live through a pipe: PRE_COPY_P2P on all before any STOP_COPY; loaded together", async () => {
  await withTemp(async (t) => {
    const models: [string, string[]][] = [
      ["mtty-2", []],
      ["bulk", ["--size", String(2 * MiB + 3)]],
      ["mtty-2", []],
      ["bulk", ["--size", String(MiB + 100)]],
    ];
    const src = models.map((_, i) => `${t}/s${i}`);
    const dst = models.map((_, i) => `${t}/d${i}`);
    await Promise.all(models.flatMap(([m, extra], i) => [
      simCreate(src[i], m, ...extra, "--seed", String(10 + i)),
      simCreate(dst[i], m, ...extra, "--seed", String(20 + i)),
    ]));
    const want = await Promise.all(src.map(sha));
    const [saveLog, loadLog] = [`${t}/save.log`, `${t}/load.log`];
    const dev = (ds: string[]) => ds.map((x) => `--device "sim:${x}"`).join(" ");
    const script = `"$DENO" run --allow-ffi "$CLI" save -q --live ${dev(src)} - | ` +
      `VFIO_MIG_SIM_LOG="$LLOG" "$DENO" run --allow-ffi "$CLI" load -q ${dev(dst)} -; ` +
      `echo "status: \${PIPESTATUS[*]}"`;
    const r = await new Deno.Command("bash", {
      args: ["-c", script],
      env: { ...BASE_ENV, DENO, CLI, VFIO_MIG_SIM_LOG: saveLog, LLOG: loadLog },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout);
    assertEquals(out.trim(), "status: 0 0", `both ends succeed; stderr: ${new TextDecoder().decode(r.stderr)}`);
    const s = await sets(saveLog);
    for (const x of src) {
      assertEquals(s.find((l) => l.dev === x)?.to, "PRE_COPY", `${x}: pre-copy first`);
    }
    assertQuiescedFirst(s, src, "PRE_COPY_P2P", "live save");
    assertLoadedTogether(await sets(loadLog), dst, "load");
    assertEquals(await Promise.all(dst.map(sha)), want, "every destination holds its source's state");
    assertEquals(await Promise.all(dst.map(stateOf)), ["RUNNING", "RUNNING", "RUNNING", "RUNNING"]);
    assertEquals(await Promise.all(src.map(stateOf)), ["STOP", "STOP", "STOP", "STOP"]);
  });
});

Deno.test("four devices through a file with --resume: sources rejoin RUNNING_P2P together, then RUNNING", async () => {
  await withTemp(async (t) => {
    const src = [0, 1, 2, 3].map((i) => `${t}/s${i}`);
    await Promise.all(
      src.map((x, i) => i % 2 ? simCreate(x, "bulk", "--size", "70000", "--seed", String(i)) : simCreate(x, "mtty-2")),
    );
    const log = `${t}/save.log`;
    // In-process, through the library: the ordering is save()'s, not the command line's.
    const k = new SimKernel(libc(), { logPath: log });
    const devs = src.map((x) => openDevice(k, `sim:${x}`));
    try {
      await save(devs, openSink(k, `${t}/f.vfmig`), { resume: true });
    } finally {
      for (const d of devs) d.close();
    }
    const s = await sets(log);
    const firstRunning = s.findIndex((l) => l.to === "RUNNING");
    for (const x of src) {
      const back = s.findIndex((l) => l.dev === x && l.to === "RUNNING_P2P" && l.from === "STOP");
      assert(back >= 0 && back < firstRunning, `${x} back in RUNNING_P2P before any RUNNING`);
    }
    assertEquals(await Promise.all(src.map(stateOf)), ["RUNNING", "RUNNING", "RUNNING", "RUNNING"]);
  });
});

Deno.test("--map SRC=DST by source name or index; unknown, missing or duplicate mappings are refused (exit 2)", async () => {
  await withTemp(async (t) => {
    const [a, b, c, d] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/d`];
    await Promise.all([
      simCreate(a, "mtty-2", "--seed", "1"),
      simCreate(b, "bulk", "--size", "9000", "--seed", "2"),
      simCreate(c, "mtty-2", "--seed", "3"),
      simCreate(d, "bulk", "--size", "9000", "--seed", "4"),
    ]);
    const file = `${t}/m.vfmig`;
    await ok(["save", "--device", `sim:${a}`, "--device", `sim:${b}`, file]);
    // In order, the destinations would not match (bulk into mtty): refused, untouched.
    const wrong = await cli(["load", "--device", `sim:${d}`, "--device", `sim:${c}`, file]);
    assertOneLineFailure(wrong, 4, "destinations in the wrong order");
    assertEquals([await stateOf(c), await stateOf(d)], ["RUNNING", "RUNNING"]);
    // By name and by index, in any order.
    await ok(["load", "--map", `1=sim:${d}`, "--map", `sim:${a}=sim:${c}`, file]);
    assertEquals([await sha(c), await sha(d)], [await sha(a), await sha(b)]);
    for (
      const [args, includes] of [
        [["--map", `7=sim:${c}`, "--map", `1=sim:${d}`], "no device 7"],
        [["--map", `0=sim:${c}`], "no destination for stream device 1"],
        [["--map", `0=sim:${c}`, "--map", `sim:${a}=sim:${d}`], "mapped twice"],
        [["--map", `0=sim:${c}`, "--device", `sim:${d}`], "not both"],
        [["--device", `sim:${c}`, "--device", `sim:${d}`, "--device", `sim:${t}/a`], "3 destinations"],
      ] as const
    ) {
      const r = await cli(["load", ...args, file]);
      assertStringIncludes(assertOneLineFailure(r, 2, includes), includes);
    }
  });
});

Deno.test("--no-p2p: devices without P2P are refused (exit 3, untouched) unless --no-p2p; then saved and loaded", async () => {
  await withTemp(async (t) => {
    const [a, b, c, d] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/d`];
    await Promise.all([
      simCreate(a, "mtty-2", "--seed", "1", "--flags", "stop-copy"),
      simCreate(b, "bulk", "--size", "50000", "--seed", "2", "--flags", "stop-copy"),
      simCreate(c, "mtty-2", "--seed", "3", "--flags", "stop-copy"),
      simCreate(d, "bulk", "--size", "50000", "--seed", "4", "--flags", "stop-copy"),
    ]);
    const file = `${t}/np.vfmig`;
    const log = `${t}/refused.log`;
    const r = await cli(["save", "--device", `sim:${a}`, "--device", `sim:${b}`, file], { VFIO_MIG_SIM_LOG: log });
    const line = assertOneLineFailure(r, 3, "no P2P");
    assertStringIncludes(line, "P2P");
    assertStringIncludes(line, "--no-p2p");
    assertStringIncludes(line, `sim:${a} (migration flags 0x1)`);
    assertEquals([...(await sets(log)), ...(await resets(log))], [], "nothing was asked of the devices");
    assertEquals([await stateOf(a), await stateOf(b)], ["RUNNING", "RUNNING"]);
    assert(!(await Deno.stat(file).then(() => true, () => false)), "no stream left");

    const saveLog = `${t}/save.log`;
    await ok(["save", "--no-p2p", "--device", `sim:${a}`, "--device", `sim:${b}`, file], { VFIO_MIG_SIM_LOG: saveLog });
    const s = await sets(saveLog);
    assert(!s.some((l) => String(l.to).endsWith("P2P")), "no P2P state requested of devices without it");
    assertEquals(s.filter((l) => l.to === "STOP_COPY").length, 2);

    const refused = await cli(["load", "--device", `sim:${c}`, "--device", `sim:${d}`, file]);
    assertStringIncludes(assertOneLineFailure(refused, 3, "load without P2P"), "--no-p2p");
    assertEquals([await stateOf(c), await stateOf(d)], ["RUNNING", "RUNNING"]);
    const loadLog = `${t}/load.log`;
    await ok(["load", "--no-p2p", "--device", `sim:${c}`, "--device", `sim:${d}`, file], { VFIO_MIG_SIM_LOG: loadLog });
    assert(!(await sets(loadLog)).some((l) => String(l.to).endsWith("P2P")), "no P2P requests on load");
    assertEquals([await sha(c), await sha(d)], [await sha(a), await sha(b)]);
    assertEquals([await stateOf(c), await stateOf(d)], ["RUNNING", "RUNNING"]);
  });
});

Deno.test("identity mismatch on one device refuses the load (exit 4) before any device is touched", async () => {
  await withTemp(async (t) => {
    const [a, b, c, d] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/d`];
    await Promise.all([
      simCreate(a, "mtty-2", "--seed", "1"),
      simCreate(b, "mtty-2", "--seed", "2"),
      simCreate(c, "mtty-2", "--seed", "3"),
      simCreate(d, "mtty-1", "--seed", "4"),
    ]);
    const file = `${t}/id.vfmig`;
    await ok(["save", "--device", `sim:${a}`, "--device", `sim:${b}`, file]);
    // States a reset would change.
    await ok(["state", "--device", `sim:${c}`, "RUNNING_P2P"]);
    await ok(["state", "--device", `sim:${d}`, "RUNNING_P2P"]);
    const before = [await sha(c), await sha(d)];
    const log = `${t}/load.log`;
    const r = await cli(["load", "--device", `sim:${c}`, "--device", `sim:${d}`, file], { VFIO_MIG_SIM_LOG: log });
    const line = assertOneLineFailure(r, 4, "one wrong destination");
    assertStringIncludes(line, `stream device 1 (sim:${b}) -> sim:${d}`);
    assertStringIncludes(line, "no device was touched");
    assertEquals([...(await sets(log)), ...(await resets(log))], [], "no SET and no reset reached any destination");
    assertEquals([await sha(c), await sha(d)], before);
    assertEquals([await stateOf(c), await stateOf(d)], ["RUNNING_P2P", "RUNNING_P2P"]);
    // One --device for a multi-device stream, several for a single-device one: refused, untouched.
    const one = await cli(["load", "--device", `sim:${c}`, file], { VFIO_MIG_SIM_LOG: log });
    assertStringIncludes(assertOneLineFailure(one, 2, "one destination"), "holds 2 devices");
    const single = `${t}/single.vfmig`;
    await ok(["save", "--resume", "--device", `sim:${a}`, single]);
    const many = await cli(["load", "--device", `sim:${c}`, "--device", `sim:${d}`, single], { VFIO_MIG_SIM_LOG: log });
    assertStringIncludes(assertOneLineFailure(many, 2, "two destinations"), "holds one device");
    assertEquals([...(await sets(log)), ...(await resets(log))], []);
  });
});

Deno.test("one device failing mid-way restores all: sources back to RUNNING, destinations reset", async () => {
  await withTemp(async (t) => {
    const src = [`${t}/a`, `${t}/b`, `${t}/m`];
    const dst = [`${t}/c`, `${t}/d`, `${t}/n`];
    await Promise.all([
      simCreate(src[0], "bulk", "--size", String(3 * MiB), "--seed", "1"),
      simCreate(src[1], "bulk", "--size", String(3 * MiB), "--seed", "2"),
      simCreate(src[2], "mtty-2", "--seed", "3"),
      simCreate(dst[0], "bulk", "--size", String(3 * MiB), "--seed", "4"),
      simCreate(dst[1], "bulk", "--size", String(3 * MiB), "--seed", "5"),
      simCreate(dst[2], "mtty-2", "--seed", "6"),
    ]);
    const srcSha = await Promise.all(src.map(sha));
    const file = `${t}/f.vfmig`;
    const devs = (ds: string[]) => ds.flatMap((x) => ["--device", `sim:${x}`]);

    // Save: the third data_fd read (of whichever device) fails.
    const log = `${t}/save.log`;
    const r = await cli(["save", ...devs(src), file], {
      VFIO_MIG_SIM_FAULTS: "read:data_fd@3=EIO",
      VFIO_MIG_SIM_LOG: log,
    });
    const line = assertOneLineFailure(r, 1, "injected EIO");
    assertStringIncludes(line, "EIO");
    for (const x of src) assertStringIncludes(line, `sim:${x} is RUNNING`);
    assertEquals(await Promise.all(src.map(stateOf)), ["RUNNING", "RUNNING", "RUNNING"]);
    assertEquals(await Promise.all(src.map(sha)), srcSha, "no source state changed");
    assert(!(await Deno.stat(file).then(() => true, () => false)), "no stream left");
    // On the way back every source rejoined RUNNING_P2P before any went RUNNING.
    const s = await sets(log);
    const stopped = s.findIndex((l) => l.to === "STOP_COPY");
    const firstRunning = s.findIndex((l, i) => i > stopped && l.to === "RUNNING");
    for (const x of src) {
      const p2p = s.findIndex((l, i) => i > stopped && l.dev === x && l.to === "RUNNING_P2P");
      assert(p2p > stopped && p2p < firstRunning, `${x}: RUNNING_P2P before any RUNNING on recovery`);
    }

    // Load: the fifth data_fd write fails: every destination is reset (RUNNING, its old state kept).
    await ok(["save", "--resume", ...devs(src), file]);
    const dstSha = await Promise.all(dst.map(sha));
    const llog = `${t}/load.log`;
    const lr = await cli(["load", ...devs(dst), file], {
      VFIO_MIG_SIM_FAULTS: "write:data_fd@5=EIO",
      VFIO_MIG_SIM_LOG: llog,
    });
    const lline = assertOneLineFailure(lr, 1, "injected write EIO");
    for (const x of dst) assertStringIncludes(lline, `sim:${x} was reset and is RUNNING`);
    assertEquals((await resets(llog)).map((l) => l.dev).sort(), [...dst].sort(), "every destination was reset");
    assertEquals(await Promise.all(dst.map(stateOf)), ["RUNNING", "RUNNING", "RUNNING"]);
    assert(!(await sets(llog)).some((l) => l.to === "RUNNING_P2P" || l.to === "STOP"), "none was loaded");
    assertEquals(await Promise.all(dst.map(sha)), dstSha, "no destination took a partial state");

    // A truncated stream: refused (exit 4), all reset; the complete one then loads.
    const bytes = await Deno.readFile(file);
    await Deno.writeFile(`${t}/cut.vfmig`, bytes.subarray(0, bytes.length - 100));
    const cut = await cli(["load", ...devs(dst), `${t}/cut.vfmig`]);
    assertOneLineFailure(cut, 4, "truncated");
    assertEquals(await Promise.all(dst.map(stateOf)), ["RUNNING", "RUNNING", "RUNNING"]);
    await ok(["load", ...devs(dst), file]);
    assertEquals(await Promise.all(dst.map(sha)), srcSha);
  });
});

Deno.test("sim --yield-rate: data_fd reads block at the rate, EAGAIN with O_NONBLOCK; the rate is kept in device.json", async () => {
  await withTemp(async (t) => {
    const dir = `${t}/slow`;
    await simCreate(dir, "bulk", "--size", String(2 * MiB), "--yield-rate", "8M");
    assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/device.json`)).yieldRate, 8 * MiB);
    const show = await ok(["sim", "show", "--json", dir]);
    assertEquals(JSON.parse(show.stdout).yieldRate, 8 * MiB);
    const sys = new SimKernel(libc());
    const d = openDevice(sys, `sim:${dir}`);
    try {
      const fd = d.migration.setState(DeviceState.STOP_COPY).dataFd!;
      const buf = new Uint8Array(MiB);
      sys.fcntl(fd, F.SETFL, sys.fcntl(fd, F.GETFL) | O.NONBLOCK);
      let eagain = false;
      try {
        sys.read(fd, buf);
      } catch (e) {
        eagain = isErrno(e, "EAGAIN");
      }
      assert(eagain, "a non-blocking read with nothing due yet fails with EAGAIN");
      const tWait = performance.now();
      await new Promise((r) => setTimeout(r, 30));
      const n = sys.read(fd, buf);
      // What is due is the rate times the time that really passed (a busy host sleeps longer than 30 ms).
      const due = 8 * MiB * (performance.now() - tWait) / 1000;
      assert(
        n >= 64 * 1024 && n <= Math.min(MiB, due + 64 * 1024),
        `a non-blocking read takes what is due: ${n} bytes, ${Math.round(due)} due`,
      );
      sys.fcntl(fd, F.SETFL, sys.fcntl(fd, F.GETFL) & ~O.NONBLOCK);
      const t0 = performance.now();
      let total = n;
      for (;;) {
        const k = sys.read(fd, buf);
        if (k === 0) break;
        total += k;
      }
      const secs = (performance.now() - t0) / 1000;
      assertEquals(total, 2 * MiB + 32 + 16);
      const paced = (total - n) / (8 * MiB); // seconds the rest takes at the rate
      assert(secs > 0.8 * paced && secs < 3 * paced + 1, `${total - n} bytes at 8 MiB/s in ${secs.toFixed(3)} s`);
      sys.close(fd);
      d.migration.setState(DeviceState.RUNNING);
    } finally {
      d.close();
    }
  });
});

Deno.test("parallel transfer: a slow device does not hold a fast one up; two slow devices are read at the same time", async () => {
  await withTemp(async (t) => {
    const [slow, slow2, fast] = [`${t}/slow`, `${t}/slow2`, `${t}/fast`];
    await Promise.all([
      simCreate(slow, "bulk", "--size", String(4 * MiB), "--seed", "1", "--yield-rate", "8M"),
      simCreate(slow2, "bulk", "--size", String(4 * MiB), "--seed", "2", "--yield-rate", "8M"),
      simCreate(fast, "bulk", "--size", String(8 * MiB), "--seed", "3"),
    ]);
    const file = `${t}/f.vfmig`;
    const r = await ok(["save", "--json", "--device", `sim:${slow}`, "--device", `sim:${fast}`, file]);
    const rep = await inspectJson(file);
    const recs = rep.records;
    const fastEnd = recs.findIndex((x) => x.device === 1 && x.section === "stop-copy" && x.tag === "END_OF_STATE");
    const slowLast = recs.findLastIndex((x) => x.device === 0 && x.tag === "DEV_DATA_STATE");
    assert(
      fastEnd >= 0 && fastEnd < slowLast,
      `the fast device finished (#${fastEnd}) before the slow one (#${slowLast})`,
    );
    const slowChunks = recs.filter((x) => x.device === 0 && x.tag === "DEV_DATA_STATE");
    assert(slowChunks.length > 4, `the slow device's data came in many chunks (${slowChunks.length})`);
    const one = JSON.parse(r.stdout);
    assert(one.stopCopyMs > 400, `4 MiB at 8 MiB/s takes ~0.5 s (${one.stopCopyMs} ms)`);
    // Two slow devices are read at the same time: their data records interleave in the
    // stream (a serial transfer writes all of one, then all of the other). Not a time:
    // on a busy 2-core host a wall-clock comparison says more about the host.
    await ok(["save", "--json", "--device", `sim:${slow}`, "--device", `sim:${slow2}`, `${t}/g.vfmig`]);
    const data = (await inspectJson(`${t}/g.vfmig`)).records.filter((x) => x.tag === "DEV_DATA_STATE");
    const switches = data.filter((x, i) => i > 0 && x.device !== data[i - 1].device).length;
    assert(switches >= 4, `the two slow devices' records interleave (${switches} switches in ${data.length} records)`);
  });
});

Deno.test("two devices live over TCP: every device's DEV_INIT_DATA_SENT acknowledged, both loaded", async () => {
  await withTemp(async (t) => {
    const [a, b, c, d] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/d`];
    await Promise.all([
      simCreate(a, "bulk", "--size", String(5 * MiB), "--seed", "1", "--rate", "1M"),
      simCreate(b, "mtty-2", "--seed", "2"),
      simCreate(c, "bulk", "--size", String(5 * MiB), "--seed", "3"),
      simCreate(d, "mtty-2", "--seed", "4"),
    ]);
    const env = { ...BASE_ENV, VFIO_MIG_TOKEN: "multi-device-token" };
    const load = new Deno.Command(DENO, {
      args: [
        "run",
        "--allow-ffi",
        "--allow-net",
        CLI,
        "load",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--device",
        `sim:${c}`,
        "--device",
        `sim:${d}`,
      ],
      cwd: ROOT,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // The listener says where it listens on its first stderr line.
    const reader = load.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let err = "";
    let port = "";
    while (!port) {
      const { value, done } = await reader.read();
      if (done) break;
      err += value;
      port = /listening on 127\.0\.0\.1:(\d+)/.exec(err)?.[1] ?? "";
    }
    assert(port, `the listener printed its port: ${err}`);
    const drain = (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        err += value;
      }
    })();
    const save = await new Deno.Command(DENO, {
      args: [
        "run",
        "--allow-ffi",
        "--allow-net",
        CLI,
        "save",
        "--live",
        "--json",
        "--device",
        `sim:${a}`,
        "--device",
        `sim:${b}`,
        `tcp://127.0.0.1:${port}`,
      ],
      cwd: ROOT,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const [status, stdout] = await Promise.all([load.status, new Response(load.stdout).text(), drain]);
    const dec = new TextDecoder();
    assertEquals(save.code, 0, `save: ${dec.decode(save.stderr)}`);
    assertEquals(status.code, 0, `load: ${err}`);
    const sr = JSON.parse(dec.decode(save.stdout));
    const lr = JSON.parse(stdout);
    assertEquals(lr.initDataLoaded, 2, "one DEV_INIT_DATA_SENT per device, each acknowledged");
    assert(sr.downtimeToRunningMs !== null, "the destination reported RUNNING back");
    assertEquals(lr.devices.map((x: Line) => x.finalState), ["RUNNING", "RUNNING"]);
    assertEquals([await sha(c), await sha(d)], [await sha(a), await sha(b)]);
  });
});

Deno.test("damaged multi-device streams: inspect and load say which device and what was expected", async () => {
  await withTemp(async (t) => {
    const [a, b, c, d] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/d`];
    await Promise.all([
      simCreate(a, "mtty-2", "--seed", "1"),
      simCreate(b, "bulk", "--size", "300000", "--seed", "2"),
      simCreate(c, "mtty-2", "--seed", "3"),
      simCreate(d, "bulk", "--size", "300000", "--seed", "4"),
    ]);
    const file = `${t}/good.vfmig`;
    await ok(["save", "--device", `sim:${a}`, "--device", `sim:${b}`, file]);
    const good = await Deno.readFile(file);
    const recs = (await inspectJson(file)).records;
    const deviceTags = recs.filter((r) => r.tag === "DEVICE").map((r) => r.offset as number);
    const cases: [string, Uint8Array, string][] = [];
    // A DEVICE tag naming device 5 (of 2).
    const bad = good.slice();
    bad[deviceTags[2] + 7] = 5;
    cases.push(["unlisted device", bad, "DEVICE 5 selects a device the header does not list"]);
    // Cut before device 1's stop-copy ends.
    const end1 = recs.find((r) => r.device === 1 && r.section === "stop-copy" && r.tag === "END_OF_STATE")!;
    cases.push(["truncated", good.subarray(0, end1.offset as number), "truncated"]);
    // Device 0's SWITCHOVER turned into device 1's: device 1 gets a second SWITCHOVER.
    const sw = recs.filter((r) => r.tag === "SWITCHOVER");
    const twice = good.slice();
    twice.set(good.subarray(deviceTags[3], deviceTags[3] + 8), sw[0].offset as number - 8);
    cases.push(["SWITCHOVER twice for device 1", twice, "for device 1"]);
    for (const [what, bytes, includes] of cases) {
      const path = `${t}/bad.vfmig`;
      await Deno.writeFile(path, bytes);
      const r = await cli(["inspect", "--json", path]);
      assertEquals(r.code, 4, `${what}: inspect says damaged\n${show(r)}`);
      const rep = JSON.parse(r.stdout);
      assertStringIncludes(JSON.stringify(rep.problems), includes, what);
      const l = await cli(["load", "--device", `sim:${c}`, "--device", `sim:${d}`, path]);
      assertOneLineFailure(l, 4, `${what}: load refuses`);
      assertEquals([await stateOf(c), await stateOf(d)], ["RUNNING", "RUNNING"], `${what}: destinations reset`);
    }
  });
});

Deno.test("no fd leaks: library save + load of several devices, and failed ones, close everything they open", async () => {
  await withTemp(async (t) => {
    const host = libc();
    const src = [`${t}/a`, `${t}/b`];
    const dst = [`${t}/c`, `${t}/d`];
    src.forEach((p, i) => new SimStore(host, p).create({ model: "bulk", size: 2 * MiB + 1, seed: 1 + i }));
    dst.forEach((p, i) => new SimStore(host, p).create({ model: "bulk", size: 2 * MiB + 1, seed: 5 + i }));
    const file = `${t}/s.vfmig`;
    const withDevices = async (k: SimKernel, paths: string[], fn: (devs: VfioDevice[]) => Promise<unknown>) => {
      const devs = paths.map((p) => openDevice(k, `sim:${p}`));
      try {
        await fn(devs);
      } finally {
        for (const d of devs) d.close();
      }
    };
    const saveOnce = (faults?: string) => {
      const k = new SimKernel(host, { faults: parseFaults(faults) });
      return withDevices(k, src, (devs) => save(devs, openSink(k, file), { resume: true }));
    };
    const loadOnce = (path: string, faults?: string) => {
      const k = new SimKernel(host, { faults: parseFaults(faults) });
      const s = openSource(k, path);
      return withDevices(k, dst, (devs) => load(devs.map((device) => ({ device })), s)).finally(() => s.close());
    };
    const fds = () => host.readdir("/proc/self/fd").length;
    await saveOnce();
    await loadOnce(file);
    const before = fds();
    for (let i = 0; i < 2; i++) {
      await saveOnce();
      await loadOnce(file);
    }
    assertEquals(fds(), before, "after saves and loads");
    await assertRejects(() => saveOnce("read:data_fd@2=EIO"), Error, "EIO");
    assertEquals(fds(), before, "after a failed save");
    await assertRejects(() => loadOnce(file, "write:data_fd@3=EIO"), Error, "EIO");
    assertEquals(fds(), before, "after a failed load");
  });
});

/**
 * A simulated kernel in which device `dir` is reset (VFIO_DEVICE_RESET, as from another
 * process) just before the tool's SET to `before` reaches it: an asynchronous reset.
 */
class ResetBefore extends SimKernel {
  #armed: { dir: string; before: DeviceState } | null;
  constructor(dir: string, before: DeviceState) {
    super(libc());
    this.#armed = { dir, before };
  }
  override ioctl(fd: number, request: number, arg: Uint8Array | number | null): number {
    const a = this.#armed;
    if (a && request === IOCTL.DEVICE_FEATURE && arg instanceof Uint8Array && arg.length >= 12) {
      const v = new DataView(arg.buffer, arg.byteOffset);
      const flags = v.getUint32(4, true);
      if (
        (flags & FEATURE_FLAGS.MASK) === FEATURE.MIG_DEVICE_STATE && (flags & FEATURE_FLAGS.SET) &&
        v.getUint32(8, true) === a.before && SimKernel.simDeviceOf(libc(), fd) === a.dir
      ) {
        this.#armed = null;
        super.ioctl(fd, IOCTL.DEVICE_RESET, null);
      }
    }
    return super.ioctl(fd, request, arg);
  }
}

Deno.test("a SET that returns an unexpected data_fd (a device reset before the quiescing SET): 'data_fd out of sync', the device named, the fd closed, all recovered", async () => {
  await withTemp(async (t) => {
    const host = libc();
    const src = [`${t}/a`, `${t}/b`];
    src.forEach((p, i) => new SimStore(host, p).create({ model: "bulk", size: 256 << 10, seed: 1 + i }));
    const fds = () => host.readdir("/proc/self/fd").length;
    const before = fds();
    // Live: b resets just before PRE_COPY -> PRE_COPY_P2P; the kernel walks RUNNING ->
    // RUNNING_P2P -> PRE_COPY_P2P, a new session, and hands out a new data_fd.
    const k = new ResetBefore(src[1], DeviceState.PRE_COPY_P2P);
    const devs = src.map((p) => openDevice(k, `sim:${p}`));
    let err: unknown = null;
    try {
      await save(devs, openSink(k, `${t}/live.vfmig`), { live: true });
    } catch (e) {
      err = e;
    } finally {
      for (const d of devs) d.close();
    }
    assert(err instanceof Error, "the save failed");
    const msg = (err as Error).message;
    assertStringIncludes(msg, `sim:${src[1]}: data_fd out of sync (the device was reset?)`);
    assertStringIncludes(msg, "PRE_COPY -> PRE_COPY_P2P");
    assertEquals((err as { exitCode?: number }).exitCode, 1, msg);
    assertEquals(fds(), before, "the unexpected data_fd was closed (no fd left open)");
    for (const x of src) assertStringIncludes(msg, `sim:${x} is RUNNING`);
    assertEquals(await Promise.all(src.map(stateOf)), ["RUNNING", "RUNNING"], "sources back where they were");
    assert(!(await Deno.stat(`${t}/live.vfmig`).then(() => true, () => false)), "no stream left");

    // Offline with several devices: a reset just before STOP_COPY (after RUNNING_P2P)
    // opens the session itself: expected, and the save is whole (the device's state now).
    const k2 = new ResetBefore(src[0], DeviceState.STOP_COPY);
    const devs2 = src.map((p) => openDevice(k2, `sim:${p}`));
    try {
      await save(devs2, openSink(k2, `${t}/off.vfmig`), { resume: true });
    } finally {
      for (const d of devs2) d.close();
    }
    assertEquals(fds(), before, "after the offline save");
  });
});

Deno.test("several devices: an error of one device's syscall names that device", async () => {
  await withTemp(async (t) => {
    const src = [`${t}/a`, `${t}/b`];
    await simCreate(src[0], "bulk", "--size", String(MiB), "--seed", "1");
    await simCreate(src[1], "bulk", "--size", String(MiB), "--seed", "2");
    const log = `${t}/save.log`;
    // The second PRECOPY_INFO of the live save (the second device's) fails.
    const r = await cli(["save", "--live", ...src.flatMap((x) => ["--device", `sim:${x}`]), `${t}/f.vfmig`], {
      VFIO_MIG_SIM_FAULTS: "ioctl:MIG_GET_PRECOPY_INFO@2=EIO",
      VFIO_MIG_SIM_LOG: log,
    });
    const line = assertOneLineFailure(r, 1, "injected EIO");
    assert((await logLines(log)).some((l) => l.fault === "EIO"), "the fault fired");
    // The devices are read in order: the second PRECOPY_INFO is the second device's.
    assertStringIncludes(line, `save of 2 devices failed: sim:${src[1]}: `);
  });
});

Deno.test("load: each device's config is restored while it is still RESUMING, before RESUMING -> STOP (docs/tools.md)", async () => {
  await withTemp(async (t) => {
    const [a, b, c, d] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/d`];
    await Promise.all([
      simCreate(a, "xe", "--size", String(MiB)),
      simCreate(b, "mtty-2"),
      simCreate(c, "xe", "--size", String(MiB)),
      simCreate(d, "mtty-2"),
    ]);
    const file = `${t}/f.vfmig`;
    await ok(["save", "--device", `sim:${a}`, "--device", `sim:${b}`, file]);
    const log = `${t}/load.log`;
    await ok(["load", "--device", `sim:${c}`, "--device", `sim:${d}`, file], { VFIO_MIG_SIM_LOG: log });
    const lines = await logLines(log);
    const writes = lines.map((l, i) => (l.call === "pwrite:device" ? i : -1)).filter((i) => i >= 0);
    const toStop = lines.findIndex((l) => l.from === "RESUMING" && l.to === "STOP");
    assert(writes.length > 0, "config writes were made");
    assert(toStop > 0, "RESUMING -> STOP");
    assert(writes.every((i) => i < toStop), "every config write before any RESUMING -> STOP");
    const resuming = lines.filter((l) => l.to === "RESUMING" && l.data_fd !== undefined);
    assert(resuming.length === 2 && lines.indexOf(resuming[1]) < writes[0], "both devices RESUMING before the writes");
  });
});

Deno.test("load: a device reset after the last write, before RESUMING -> STOP, is refused (nothing loaded), never reported loaded", async () => {
  await withTemp(async (t) => {
    const host = libc();
    const [a, b] = [`${t}/a`, `${t}/b`];
    new SimStore(host, a).create({ model: "bulk", size: 64 << 10, seed: 1 });
    new SimStore(host, b).create({ model: "bulk", size: 64 << 10, seed: 2 });
    const file = `${t}/s.vfmig`;
    {
      const k = new SimKernel(host);
      const d = openDevice(k, `sim:${a}`);
      try {
        await save(d, openSink(k, file));
      } finally {
        d.close();
      }
    }
    const before = await sha(b);
    // The reset comes just before the tool's GET that precedes RESUMING -> STOP.
    class ResetBeforeLoad extends SimKernel {
      armed = true;
      override ioctl(fd: number, request: number, arg: Uint8Array | number | null): number {
        if (this.armed && request === IOCTL.DEVICE_FEATURE && arg instanceof Uint8Array && arg.length >= 12) {
          const v = new DataView(arg.buffer, arg.byteOffset);
          const flags = v.getUint32(4, true);
          if ((flags & FEATURE_FLAGS.MASK) === FEATURE.MIG_DEVICE_STATE && (flags & FEATURE_FLAGS.GET)) {
            const probe = new Uint8Array(arg.length);
            probe.set(arg);
            super.ioctl(fd, request, probe);
            if (new DataView(probe.buffer).getUint32(8, true) === DeviceState.RESUMING) {
              this.armed = false;
              super.ioctl(fd, IOCTL.DEVICE_RESET, null);
            }
          }
        }
        return super.ioctl(fd, request, arg);
      }
    }
    const k = new ResetBeforeLoad(host);
    const d = openDevice(k, `sim:${b}`);
    const s = openSource(k, file);
    try {
      await assertRejects(
        () => load(d, s),
        Error,
        `sim:${b}: the device left RESUMING before its data was loaded: it is RUNNING (was it reset?)`,
      );
    } finally {
      s.close();
      d.close();
    }
    assert(!k.armed, "the reset was made");
    assertEquals(await sha(b), before, "nothing was loaded");
    assertEquals(await stateOf(b), "RUNNING");
  });
});
