// Signals, dying peers and a full disk, through the real command line (subprocesses,
// simulated devices). VFIO_MIG_PAUSE_AT stops a process at a phase (it says "paused at
// PHASE" on stderr) so that the signal or the kill lands exactly there. The promise
// checked (docs/reliability.md): the exit code, one clear line on stderr and no stack
// trace, the source back in RUNNING, the destination reset once RESUMING was reached
// (else untouched), no complete-looking or partial output, every data_fd closed, no
// forbidden arc in the call log.

import { crc32 } from "node:zlib";
import { assert, assertEquals, assertMatch, fail } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { openDevice } from "../../src/device/open.ts";
import { save } from "../../src/migrate/save.ts";
import { DeviceState } from "../../src/vfio/state_machine.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";
import { openSink } from "../../src/transport/transport.ts";
import { BASE_ENV, CLI, DENO, MiB, ROOT } from "../helpers/proc.ts";

const host = libc();
const TOKEN = "signals-test-token";

type Line = Record<string, unknown>;
const { RUNNING, STOP } = DeviceState;

interface Done {
  code: number;
  signal: string | null;
  stderr: string;
}

interface Proc {
  child: Deno.ChildProcess;
  stderr(): string;
  done: Promise<Done>;
}

function spawn(args: string[], env: Record<string, string>, net = false): Proc {
  // As bin/vfio-mig starts it: SIGUSR1 blocked from exec, no re-exec (README "Security").
  const child = new Deno.Command("env", {
    args: [
      "--block-signal=USR1",
      "--ignore-signal=USR2",
      DENO,
      "run",
      "--allow-ffi",
      ...(net ? ["--allow-net"] : []),
      CLI,
      ...args,
    ],
    cwd: ROOT,
    env: { ...BASE_ENV, ...env },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let err = "";
  const dec = new TextDecoder();
  const reading = (async () => {
    for await (const c of child.stderr) err += dec.decode(c, { stream: true });
  })();
  const done = (async () => {
    const st = await child.status;
    await reading;
    return { code: st.code, signal: st.signal, stderr: err };
  })();
  return { child, stderr: () => err, done };
}

async function waitFor(get: () => string, re: RegExp, what: string, ms = 30_000): Promise<RegExpMatchArray> {
  const end = Date.now() + ms;
  for (;;) {
    const m = get().match(re);
    if (m) return m;
    if (Date.now() > end) fail(`${what}: no ${re} within ${ms} ms; so far:\n${get()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function readText(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return "";
    throw e;
  }
}

function logOf(path: string): Line[] {
  return readText(path).split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

const stateOf = (dir: string): DeviceState => new SimStore(host, dir).readMeta().state;
const crcOf = (dir: string): number => crc32(Deno.readFileSync(`${dir}/state.bin`));
const ls = (dir: string): string[] => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

function createDevice(dir: string, seed: number, size = MiB + 3): void {
  new SimStore(host, dir).create({ model: "bulk", size, seed });
}

async function saveStream(dev: string, file: string): Promise<void> {
  const k = new SimKernel(host);
  const d = openDevice(k, `sim:${dev}`);
  try {
    await save(d, openSink(k, file), { resume: true });
  } finally {
    d.close();
  }
}

/** The failure contract on stderr: one line (the pause and listen notices aside), no stack trace. */
function oneLine(r: Done, what: string, codes: number[], re?: RegExp): string {
  const show = `exit ${r.code}${r.signal ? ` (${r.signal})` : ""}\n--- stderr\n${r.stderr}`;
  assert(codes.includes(r.code), `${what}: exit code ${r.code}, expected ${codes.join(" or ")}\n${show}`);
  assert(!/^\s+at /m.test(r.stderr), `${what}: no stack trace\n${show}`);
  const lines = r.stderr.split("\n").filter((l) => l.trim() !== "" && !/paused at |listening on /.test(l));
  assertEquals(lines.length, 1, `${what}: exactly one line on stderr\n${show}`);
  assertMatch(lines[0], /^vfio-mig: /, `${what}: the line says who`);
  if (re) assertMatch(lines[0], re, what);
  return lines[0];
}

const SET_KEY = "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET";
const changedState = (l: Line) => l.key === SET_KEY && "from" in l && !("err" in l);

/** What every log must show: each data_fd handed out closed, no forbidden arc. */
function checkLog(lines: Line[], what: string): void {
  const open: number[] = [];
  for (const l of lines) {
    if (l.key === SET_KEY && typeof l.data_fd === "number" && l.data_fd >= 0) open.push(l.data_fd);
    if (l.key === "close:data_fd") {
      const i = open.indexOf(l.fd as number);
      if (i >= 0) open.splice(i, 1);
    }
  }
  assertEquals(open, [], `${what}: every data_fd handed out was closed`);
  assertEquals(lines.filter((l) => "forbidden" in l), [], `${what}: no forbidden arc requested`);
}

/** The destination after a failed load: reset when a SET reached it, else untouched. */
function checkFailedDestination(dir: string, lines: Line[], initialCrc: number, what: string, mustBeTouched: boolean) {
  const touched = lines.some(changedState);
  const reset = lines.some((l) => l.key === "ioctl:DEVICE_RESET");
  assertEquals(stateOf(dir), RUNNING, `${what}: destination RUNNING`);
  if (mustBeTouched) assert(touched, `${what}: the load had entered RESUMING`);
  if (touched) assert(reset, `${what}: the destination was reset (the only way out of RESUMING)`);
  else assert(!reset, `${what}: an untouched destination is not reset`);
  assertEquals(crcOf(dir), initialCrc, `${what}: the destination's old state was not replaced`);
}

async function pool<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const errors: string[] = [];
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) {
      const item = items[next++];
      try {
        await fn(item);
      } catch (e) {
        errors.push(e instanceof Error ? e.message : String(e));
      }
    }
  }));
  if (errors.length) fail(`${errors.length} of ${items.length} cases failed:\n\n${errors.join("\n\n")}`);
}

async function withTemp(fn: (t: string) => Promise<void>): Promise<void> {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-signals-" });
  try {
    await fn(t);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
}

// ---------------------------------------------------------------------------

interface SignalCase {
  op: "save" | "load";
  live: boolean;
  phase: string;
  sig: "SIGINT" | "SIGTERM" | "SIGHUP";
}

const SIGNAL_CASES: SignalCase[] = [
  ...["setup", "stop-copy", "finish"].map((phase) => ({ op: "save" as const, live: false, phase })),
  ...["setup", "pre-copy", "stop-copy", "finish"].map((phase) => ({ op: "save" as const, live: true, phase })),
  ...["resume", "finish"].map((phase) => ({ op: "load" as const, live: false, phase })),
].flatMap((c) => (["SIGINT", "SIGTERM", "SIGHUP"] as const).map((sig) => ({ ...c, sig })));

Deno.test("SIGINT, SIGTERM and SIGHUP in every phase of save (offline, live) and load: exit 130, devices restored", async () => {
  await withTemp(async (t) => {
    await pool(SIGNAL_CASES, 2, async (c) => {
      const what = `${c.sig} at ${c.op}${c.live ? " --live" : ""} ${c.phase}`;
      const dir = `${t}/${c.op}-${c.live ? "live" : "offline"}-${c.phase}-${c.sig}`;
      const [a, b, out, log] = [`${dir}/a`, `${dir}/b`, `${dir}/out`, `${dir}/calls.log`];
      Deno.mkdirSync(out, { recursive: true });
      createDevice(a, 1);
      createDevice(b, 2);
      const [crcA, crcB] = [crcOf(a), crcOf(b)];
      const env = { VFIO_MIG_PAUSE_AT: c.phase, VFIO_MIG_SIM_LOG: log };
      let p: Proc;
      if (c.op === "save") {
        p = spawn(["save", "-q", ...(c.live ? ["--live"] : []), "--device", `sim:${a}`, `${out}/s.vfmig`], env);
      } else {
        await saveStream(a, `${dir}/in.vfmig`);
        p = spawn(["load", "-q", "--device", `sim:${b}`, `${dir}/in.vfmig`], env);
      }
      await waitFor(p.stderr, new RegExp(`paused at ${c.phase}`), what);
      p.child.kill(c.sig);
      const r = await p.done;
      oneLine(r, what, [130], new RegExp(`interrupted by ${c.sig}`));
      const lines = logOf(log);
      checkLog(lines, what);
      if (c.op === "save") {
        assertEquals(stateOf(a), RUNNING, `${what}: source back to RUNNING`);
        assertEquals(crcOf(a), crcA, `${what}: source state intact`);
        assertEquals(ls(out), [], `${what}: no output file, complete or partial`);
      } else {
        checkFailedDestination(b, lines, crcB, what, true);
      }
    });
  });
});

// ---------------------------------------------------------------------------
// The peer killed (SIGKILL) at each phase, over a pipe and over TCP

interface PeerCase {
  transport: "pipe" | "tcp";
  killed: "save" | "load";
  phase: string;
  live: boolean;
}

const PEER_CASES: PeerCase[] = (["pipe", "tcp"] as const).flatMap((transport) => [
  { transport, killed: "save" as const, phase: "setup", live: false },
  { transport, killed: "save" as const, phase: "pre-copy", live: true },
  { transport, killed: "save" as const, phase: "stop-copy", live: false },
  { transport, killed: "save" as const, phase: "finish", live: false },
  { transport, killed: "load" as const, phase: "resume", live: false },
  { transport, killed: "load" as const, phase: "finish", live: false },
]);

/** Runs `save … | load …` with the given member paused; returns both results after the kill. */
async function runPipe(
  c: PeerCase,
  dir: string,
  a: string,
  b: string,
): Promise<{ save: Done; load: Done; killedPid: number }> {
  const [la, lb, ea, eb] = [`${dir}/save.log`, `${dir}/load.log`, `${dir}/save.err`, `${dir}/load.err`];
  const pause = (who: string) => (c.killed === who ? c.phase : "");
  const script = `VFIO_MIG_SIM_LOG="$LA" VFIO_MIG_PAUSE_AT="$PA" "$DENO" run --allow-ffi "$CLI" save -q $LIVE ` +
    `--device "sim:$A" - 2>"$EA" | VFIO_MIG_SIM_LOG="$LB" VFIO_MIG_PAUSE_AT="$PB" "$DENO" run --allow-ffi "$CLI" ` +
    `load -q --device "sim:$B" - 2>"$EB"; echo "status \${PIPESTATUS[*]}"`;
  const bash = new Deno.Command("bash", {
    args: ["-c", script],
    cwd: ROOT,
    env: {
      ...BASE_ENV,
      DENO,
      CLI,
      A: a,
      B: b,
      LA: la,
      LB: lb,
      EA: ea,
      EB: eb,
      PA: pause("save"),
      PB: pause("load"),
      LIVE: c.live ? "--live" : "",
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = bash.output();
  const [errFile, logFile] = c.killed === "save" ? [ea, la] : [eb, lb];
  await waitFor(() => readText(errFile), new RegExp(`paused at ${c.phase}`), `${c.killed} pausing`);
  const pid = logOf(logFile)[0]?.pid as number;
  assert(pid > 0, "the paused process's pid (from its call log)");
  Deno.kill(pid, "SIGKILL");
  const r = await out;
  const status = new TextDecoder().decode(r.stdout).match(/status (\d+) (\d+)/);
  assert(status, `pipeline status: ${new TextDecoder().decode(r.stdout)} ${new TextDecoder().decode(r.stderr)}`);
  return {
    save: { code: Number(status[1]), signal: null, stderr: readText(ea) },
    load: { code: Number(status[2]), signal: null, stderr: readText(eb) },
    killedPid: pid,
  };
}

async function runTcp(c: PeerCase, dir: string, a: string, b: string): Promise<{ save: Done; load: Done }> {
  const [la, lb] = [`${dir}/save.log`, `${dir}/load.log`];
  const pause = (who: string) => (c.killed === who ? c.phase : "");
  const load = spawn(
    ["load", "-q", "--device", `sim:${b}`, "--listen", "127.0.0.1:0", "--token", TOKEN],
    { VFIO_MIG_SIM_LOG: lb, VFIO_MIG_PAUSE_AT: pause("load") },
    true,
  );
  const m = await waitFor(load.stderr, /listening on ([0-9.]+):(\d+)/, "load --listen");
  const save = spawn(
    ["save", "-q", ...(c.live ? ["--live"] : []), "--device", `sim:${a}`, `tcp://${m[1]}:${m[2]}`, "--token", TOKEN],
    { VFIO_MIG_SIM_LOG: la, VFIO_MIG_PAUSE_AT: pause("save") },
    true,
  );
  const killed = c.killed === "save" ? save : load;
  await waitFor(killed.stderr, new RegExp(`paused at ${c.phase}`), `${c.killed} pausing`);
  killed.child.kill("SIGKILL");
  return { save: await save.done, load: await load.done };
}

Deno.test("the peer killed at each phase, over a pipe and over TCP: the survivor fails cleanly (or completes)", async () => {
  await withTemp(async (t) => {
    await pool(PEER_CASES, 2, async (c) => {
      const what = `${c.transport}: ${c.killed} killed at ${c.phase}${c.live ? " (--live)" : ""}`;
      const dir = `${t}/${c.transport}-${c.killed}-${c.phase}`;
      Deno.mkdirSync(dir, { recursive: true });
      const [a, b] = [`${dir}/a`, `${dir}/b`];
      // 8 MiB: more than a pipe or a socket holds, so a save is still writing when its reader dies.
      createDevice(a, 1, 8 * MiB);
      createDevice(b, 2, 8 * MiB);
      const [crcA, crcB] = [crcOf(a), crcOf(b)];
      const r = c.transport === "pipe" ? await runPipe(c, dir, a, b) : await runTcp(c, dir, a, b);
      const logA = logOf(`${dir}/save.log`);
      const logB = logOf(`${dir}/load.log`);
      if (c.killed === "save") {
        // At "finish" the whole stream, trailer included, was written: into the pipe, where it
        // stays; over TCP the sink may still have queued bytes the kill throws away.
        const complete = c.phase === "finish" && (c.transport === "pipe" || r.load.code === 0);
        if (complete) {
          assertEquals(r.load.code, 0, `${what}: the load of a complete stream succeeds\n${r.load.stderr}`);
          assertEquals(stateOf(b), RUNNING, `${what}: destination RUNNING`);
          assertEquals(crcOf(b), crcA, `${what}: destination holds the source's state`);
        } else {
          // The stream ends early (EOF, or a reset connection): refused, destination reset.
          oneLine(r.load, `${what} (load)`, [4, 1], /truncated|connection|reset|closed/i);
          checkFailedDestination(b, logB, crcB, `${what} (load)`, true);
        }
        checkLog(logB, `${what} (load)`);
        // The killed save left its device where it stopped; the next save ends that and works.
        const again = spawn(["save", "-q", "--resume", "--device", `sim:${a}`, `${dir}/again.vfmig`], {});
        const ra = await again.done;
        assertEquals(ra.code, 0, `${what}: a new save after the kill works\n${ra.stderr}`);
        assertEquals(stateOf(a), RUNNING, `${what}: and leaves the source RUNNING`);
        assertEquals(crcOf(a), crcA, `${what}: the source's state was never changed`);
      } else {
        if (c.transport === "pipe" && c.phase === "finish") {
          // The load had read all of the stream, so the save had written all of it and exited.
          assertEquals(r.save.code, 0, `${what}: the save had completed\n${r.save.stderr}`);
          assertEquals(stateOf(a), STOP, `${what}: source STOP (a completed save)`);
        } else {
          // The save finds its reader gone (broken pipe, reset connection, no result).
          oneLine(r.save, `${what} (save)`, [1], /went away|broken pipe|closed|reset|result/i);
          assertEquals(stateOf(a), RUNNING, `${what}: source back to RUNNING`);
        }
        assertEquals(crcOf(a), crcA, `${what}: source state intact`);
        checkLog(logA, `${what} (save)`);
        // The killed load left its device RESUMING: loads refuse it until a reset.
        assertEquals(stateOf(b), DeviceState.RESUMING, `${what}: the killed load's device stays RESUMING`);
        await saveStream(a, `${dir}/good.vfmig`);
        const again = await spawn(["load", "-q", "--device", `sim:${b}`, `${dir}/good.vfmig`], {}).done;
        oneLine(again, `${what}: load into the abandoned RESUMING device`, [3], /RESUMING.*reset it first/);
        const reset = await spawn(["reset", "--device", `sim:${b}`], {}).done;
        assertEquals(reset.code, 0, `${what}: reset\n${reset.stderr}`);
        const after = await spawn(["load", "-q", "--device", `sim:${b}`, `${dir}/good.vfmig`], {}).done;
        assertEquals(after.code, 0, `${what}: after the reset the load works\n${after.stderr}`);
        assertEquals(crcOf(b), crcA);
      }
    });
  });
});

// ---------------------------------------------------------------------------
// Disk full

Deno.test("disk full (a 1 MiB tmpfs): save fails with ENOSPC, source RUNNING, nothing left behind", async (t) => {
  await withTemp(async (tmp) => {
    const mnt = `${tmp}/mnt`;
    Deno.mkdirSync(mnt);
    const mount = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!mount.success) {
      // Not root, or no CAP_SYS_ADMIN (a container): say why and skip.
      console.log(`skipped: cannot mount a tmpfs here (${new TextDecoder().decode(mount.stderr).trim()})`);
      return;
    }
    try {
      const a = `${tmp}/a`;
      createDevice(a, 1, 4 * MiB);
      const crcA = crcOf(a);
      for (const live of [false, true]) {
        await t.step(live ? "live" : "offline", async () => {
          const log = `${tmp}/full-${live}.log`;
          const r = await spawn(
            ["save", "-q", ...(live ? ["--live"] : []), "--device", `sim:${a}`, `${mnt}/s.vfmig`],
            { VFIO_MIG_SIM_LOG: log },
          ).done;
          oneLine(r, "save to a full disk", [1], /ENOSPC/);
          assertEquals(stateOf(a), RUNNING, "source back to RUNNING");
          assertEquals(crcOf(a), crcA, "source state intact");
          assertEquals(ls(mnt), [], "no output file, complete or partial, on the full disk");
          checkLog(logOf(log), "save to a full disk");
        });
      }
    } finally {
      await new Deno.Command("umount", { args: [mnt] }).output();
    }
  });
});

// ---------------------------------------------------------------------------
// Hangups: a terminal that closes under a save, nohup, and a second signal while the
// devices are being put back.

/** Makes this test process the reaper of orphans below it (prctl PR_SET_CHILD_SUBREAPER), so their exit can be waited for. */
function becomeSubreaper(): void {
  const lib = Deno.dlopen("libc.so.6", { prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" } });
  try {
    assertEquals(lib.symbols.prctl(36, /* PR_SET_CHILD_SUBREAPER */ 1n, 0n, 0n, 0n), 0, "prctl");
  } finally {
    lib.close();
  }
}

Deno.test("a terminal that hangs up under save at stop-copy: SIGHUP, the line lost to EIO, exit 130, source RUNNING, no output", async () => {
  if (!which("script")) {
    console.log("skipped: script (util-linux) not found");
    return;
  }
  await withTemp(async (t) => {
    const [a, out, log, ev] = [`${t}/a`, `${t}/out`, `${t}/calls.log`, `${t}/ev.jsonl`];
    Deno.mkdirSync(out);
    createDevice(a, 3, 4 * MiB);
    const crcA = crcOf(a);
    becomeSubreaper();
    // script(1) gives the save a terminal (stdout and stderr) whose session it leads; killing
    // script closes the terminal's master: the kernel hangs it up and sends SIGHUP.
    const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    const cmd = `exec ${q(DENO)} run --allow-ffi ${q(CLI)} save --device ${q(`sim:${a}`)} ${q(`${out}/s.vfmig`)} ` +
      `--events ${q(ev)}`;
    const script = new Deno.Command("script", {
      args: ["-qfec", cmd, "/dev/null"],
      cwd: ROOT,
      env: { ...BASE_ENV, VFIO_MIG_PAUSE_AT: "stop-copy", VFIO_MIG_SIM_LOG: log },
      stdin: "piped", // held open: script ends with its child, not at stdin's EOF
      stdout: "piped",
      stderr: "null",
    }).spawn();
    let tty = "";
    const dec = new TextDecoder();
    const reading = (async () => {
      for await (const c of script.stdout) tty += dec.decode(c, { stream: true });
    })();
    await waitFor(() => tty, /paused at stop-copy/, "the save pausing at stop-copy");
    const pid = logOf(log)[0]?.pid as number;
    assert(pid > 0, "the save's pid");
    assertEquals(stateOf(a), DeviceState.STOP_COPY, "the source is in STOP_COPY when the terminal goes");
    script.kill("SIGKILL");
    await script.status;
    await reading;
    const { waitChild } = await import("../../ffi/process.ts");
    const st = await Promise.race([
      waitChild(pid),
      new Promise<never>((_, rej) => setTimeout(() => rej(new Error("the save did not end within 20 s")), 20_000)),
    ]);
    assertEquals(
      st,
      { code: 130, signal: null },
      `exit 130, not a death by SIGHUP (129) nor a failure (1); the last events:\n${readText(ev).slice(-1500)}`,
    );
    assertEquals(stateOf(a), RUNNING, "source back to RUNNING");
    assertEquals(crcOf(a), crcA, "source state intact");
    assertEquals(ls(out), [], "no output file, complete or partial");
    checkLog(logOf(log), "hangup at stop-copy");
    const last = readText(ev).trim().split("\n").map((l) => JSON.parse(l)).at(-1);
    assertEquals([last.type, last.exitCode], ["error", 130]);
    assertMatch(last.message, /interrupted by SIGHUP/);
  });
});

Deno.test("nohup: a SIGHUP ignored at start stays ignored; the live save goes on and ends on SIGUSR2", async () => {
  await withTemp(async (t) => {
    const [a, b, file, log] = [`${t}/a`, `${t}/b`, `${t}/s.vfmig`, `${t}/calls.log`];
    new SimStore(host, a).create({ model: "bulk", size: 16 * MiB, seed: 5, rate: 4 * 1024 ** 3 });
    createDevice(b, 6, 16 * MiB);
    const cmd = `trap '' HUP; exec "$0" run --allow-ffi "$1" save -q --live --json --downtime-limit 1 ` +
      `--device "sim:$2" "$3"`;
    const p = new Deno.Command("sh", {
      args: ["-c", cmd, DENO, CLI, a, file],
      cwd: ROOT,
      env: { ...BASE_ENV, VFIO_MIG_SIM_LOG: log },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = p.output();
    const end = Date.now() + 30_000;
    while (!logOf(log).some((l) => l.key === "read:data_fd")) {
      assert(Date.now() < end, "pre-copy did not start");
      await new Promise((r) => setTimeout(r, 20));
    }
    p.kill("SIGHUP");
    await new Promise((r) => setTimeout(r, 1000));
    assertEquals(stateOf(a), DeviceState.PRE_COPY, "still in pre-copy after the SIGHUP");
    p.kill("SIGUSR2");
    const r = await out;
    const err = new TextDecoder().decode(r.stderr);
    assertEquals([r.code, r.signal], [0, null], err);
    assertEquals(JSON.parse(new TextDecoder().decode(r.stdout)).switchReason, "requested");
    await spawn(["load", "-q", "--device", `sim:${b}`, file], {}).done;
    assertEquals(crcOf(b), crcOf(a));
  });
});

Deno.test("a second signal while an operation stops says what it does and what a SIGKILL would leave; it does not cut it short", async () => {
  const session = new URL("../../src/migrate/session.ts", import.meta.url).href;
  const code = `
    import { Cancellation } from ${JSON.stringify(session)};
    const c = new Cancellation().install();
    Deno.kill(Deno.pid, "SIGINT");
    while (!c.signal) await new Promise((r) => setTimeout(r, 5));
    Deno.kill(Deno.pid, "SIGHUP");
    await new Promise((r) => setTimeout(r, 300));
    console.log(c.signal);
    c.uninstall();`;
  const out = await new Deno.Command(DENO, { args: ["eval", "--ext=ts", code], stdout: "piped", stderr: "piped" })
    .output();
  const err = new TextDecoder().decode(out.stderr).trim();
  assertEquals([out.code, new TextDecoder().decode(out.stdout).trim()], [0, "SIGINT"], err);
  assertEquals(err.split("\n").length, 1, err);
  assertMatch(
    err,
    /^vfio-mig: SIGHUP again: still putting the devices back .* after SIGINT; a SIGKILL now abandons that and leaves each device as it is \(mid-migration: STOP_COPY, PRE_COPY or RESUMING; then 'vfio-mig reset'\)$/,
  );
});

function which(cmd: string): boolean {
  return (Deno.env.get("PATH") ?? "").split(":").some((d) => {
    try {
      return Deno.statSync(`${d}/${cmd}`).isFile;
    } catch {
      return false;
    }
  });
}
