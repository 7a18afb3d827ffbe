// Ctrl-C must always work (issue 12), and a hangup too (issue 21): a generator of cases,
// each a blocking point the tool can wait in for ever × a signal (SIGINT, SIGTERM,
// SIGHUP) × an operation, through the real command line on simulated devices. In each,
// the process is let run until it waits (its call log goes quiet, or shows the step it
// waits after), then gets the signal. Each case asserts: exit 130 within 1 s of the
// signal, one line on stderr, the devices where docs/reliability.md says (sources as
// found: RUNNING; a destination untouched before RESUMING, reset after), nothing
// complete-looking in the output, and every device and data_fd the process opened
// closed by it (the simulator's call log).
//
// Blocking points: standard output a pipe nobody reads; a FIFO nobody opens (save: no
// reader; load: no writer); a FIFO whose reader stops reading; standard input that never
// delivers (before the stream starts, and after RESUMING); a TCP peer that stops
// reading (load: a peer that stops sending); a data_fd whose reads would block (a
// device that yields its data slowly, as mlx5's blocking reads).

import { assert, assertEquals, assertMatch, fail } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { O } from "../../ffi/sys.ts";
import { StreamReader } from "../../src/stream/reader.ts";
import { BASE_ENV, CLI, DENO, type LogLine, logLines, MiB, ROOT, sleep, stateSets } from "../helpers/proc.ts";
import { SimStore } from "../../src/sim/store.ts";
import { stateName } from "../../src/vfio/state_machine.ts";

const host = libc();
const TOKEN = "interrupt-test-token";
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
type Sig = typeof SIGNALS[number];
type Op = "save" | "live save" | "two-device save" | "load";
const SAVES: Op[] = ["save", "live save", "two-device save"];

/** Each blocking point and the operations it applies to. */
const POINTS: Record<string, Op[]> = {
  "stdout pipe full": SAVES,
  "FIFO nobody opens": [...SAVES, "load"],
  "FIFO reader stops reading": SAVES,
  "stdin never delivers": ["load"],
  "stdin stops after RESUMING": ["load"],
  "TCP peer stops reading": [...SAVES, "load"],
  "blocking data_fd": SAVES,
};

interface Case {
  point: string;
  op: Op;
  sig: Sig;
}

const CASES: Case[] = Object.entries(POINTS).flatMap(([point, ops]) =>
  ops.flatMap((op) => SIGNALS.map((sig) => ({ point, op, sig })))
);

// ---------------------------------------------------------------------------

class Child {
  readonly child: Deno.ChildProcess;
  stderr = "";
  #pumped: Promise<void>;
  status: Promise<Deno.CommandStatus>;
  exitedAt = 0;

  constructor(args: string[], env: Record<string, string>, io: { stdin?: boolean; stdout?: boolean } = {}) {
    // As bin/vfio-mig starts it: SIGUSR1 blocked from exec, no re-exec (README "Security").
    this.child = new Deno.Command("env", {
      args: ["--block-signal=USR1", "--ignore-signal=USR2", DENO, "run", "--allow-ffi", "--allow-net", CLI, ...args],
      cwd: ROOT,
      env: { ...BASE_ENV, ...env },
      stdin: io.stdin ? "piped" : "null",
      stdout: io.stdout ? "piped" : "null",
      stderr: "piped",
    }).spawn();
    const dec = new TextDecoder();
    const err = this.child.stderr;
    this.#pumped = (async () => {
      for await (const c of err) this.stderr += dec.decode(c, { stream: true });
    })();
    this.status = this.child.status.then((s) => {
      this.exitedAt = performance.now();
      return s;
    });
  }

  kill(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch { /* gone */ }
  }

  async end(ms = 20_000): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<null>((r) => timer = setTimeout(() => r(null), ms));
    const st = await Promise.race([this.status, late]);
    clearTimeout(timer);
    if (st === null) this.kill("SIGKILL");
    const s = await this.status;
    await this.#pumped;
    return s;
  }
}

/** Waits until the log shows `re` and then stays quiet (no new line) for quietMs. */
async function waitStalled(log: string, re: RegExp, what: string, p: Child, quietMs = 300): Promise<void> {
  const end = performance.now() + 30_000;
  let lastLen = -1;
  let since = performance.now();
  let exited = false;
  p.status.then(() => exited = true);
  while (performance.now() < end) {
    if (exited) fail(`${what}: the process ended before it waited\n${p.stderr}`);
    let text = "";
    try {
      text = Deno.readTextFileSync(log);
    } catch { /* not yet */ }
    if (re.test(text)) {
      if (text.length !== lastLen) {
        lastLen = text.length;
        since = performance.now();
      } else if (performance.now() - since >= quietMs) return;
    }
    await sleep(25);
  }
  fail(`${what}: never reached the wait (${re}) within 30 s\n${p.stderr}`);
}

/** Waits until the log shows `re` (for waits that keep calling: a data_fd read that would block), then a little. */
async function waitFor(log: string, re: RegExp, what: string, p: Child, extraMs = 300): Promise<void> {
  const end = performance.now() + 30_000;
  while (performance.now() < end) {
    let text = "";
    try {
      text = Deno.readTextFileSync(log);
    } catch { /* not yet */ }
    if (re.test(text)) {
      await sleep(extraMs);
      return;
    }
    await sleep(25);
  }
  fail(`${what}: never saw ${re} within 30 s\n${p.stderr}`);
}

const stateOf = (dir: string) => stateName(new SimStore(host, dir).readMeta().state);

function create(dir: string, seed: number, size: number, extra: { rate?: number; yieldRate?: number } = {}): void {
  new SimStore(host, dir).create({ model: "bulk", size, seed, ...extra });
}

/** Every data_fd handed out and every device opened were closed by the process itself. */
function assertReleased(lines: LogLine[], what: string): void {
  const open: number[] = [];
  for (const l of lines) {
    if (l.key === "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET" && typeof l.data_fd === "number" && l.data_fd >= 0) {
      open.push(l.data_fd);
    }
    if (l.key === "close:data_fd") open.splice(open.indexOf(l.fd as number) >>> 0, 1);
  }
  assertEquals(open, [], `${what}: every data_fd handed out was closed`);
  const opened = lines.filter((l) => l.key === "open:device" && typeof l.fd === "number").length;
  const closed = lines.filter((l) => l.key === "close:device").length;
  assertEquals(closed, opened, `${what}: every device opened was closed`);
}

/** Bytes that reached a reader must not be a complete stream (it must refuse them). */
async function assertIncomplete(bytes: Uint8Array, what: string): Promise<void> {
  let off = 0;
  const r = new StreamReader({
    label: what,
    read: (b) => {
      const n = Math.min(b.length, bytes.length - off);
      b.set(bytes.subarray(off, off + n));
      off += n;
      return n;
    },
    close: () => {},
  });
  try {
    await r.readHeader();
    for (;;) if ((await r.next()).kind === "end") break;
  } catch {
    return; // refused: incomplete
  }
  fail(`${what}: the ${bytes.length} bytes that reached the reader form a complete stream`);
}

function oneLine(stderr: string, what: string, sig: Sig): void {
  const lines = stderr.split("\n").filter((l) => l.trim() !== "" && !/listening on /.test(l));
  assertEquals(lines.length, 1, `${what}: one line on stderr:\n${stderr}`);
  assertMatch(lines[0], new RegExp(`^vfio-mig: .*interrupted by ${sig}`), `${what}: says it was interrupted`);
  assert(!/^\s+at /m.test(stderr), `${what}: no stack trace`);
}

/** A case that ended, correctly, but later than 1 s after the signal. */
class Late extends Error {}

/** Sends the signal and checks the process ends with 130 within 1 s. */
async function interrupt(p: Child, c: Case, what: string): Promise<number> {
  const t0 = performance.now();
  p.kill(c.sig);
  const st = await p.end();
  const ms = p.exitedAt - t0;
  assertEquals([st.code, st.signal], [130, null], `${what}: exit 130\n${p.stderr}`);
  if (ms > 1000) throw new Late(`${what}: ended ${Math.round(ms)} ms after the signal (at most 1000)`);
  oneLine(p.stderr, what, c.sig);
  return ms;
}

function readAll(fd: number): Uint8Array {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(MiB);
  for (;;) {
    let n = 0;
    try {
      n = host.read(fd, buf);
    } catch {
      break; // EAGAIN: the writer is gone
    }
    if (n === 0) break;
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, (o += p.length) - p.length);
  return out;
}

async function stdoutBytes(p: Child): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  if (p.child.stdout) { for await (const c of p.child.stdout) parts.push(c); }
  const out = new Uint8Array(parts.reduce((a, q) => a + q.length, 0));
  let o = 0;
  for (const q of parts) out.set(q, (o += q.length) - q.length);
  return out;
}

// ---------------------------------------------------------------------------

/** One case in its own folder. */
async function runCase(c: Case, dir: string): Promise<number> {
  const what = `${c.op}, ${c.point}, ${c.sig}`;
  const srcLog = `${dir}/src.log`;
  const dstLog = `${dir}/dst.log`;
  const two = c.op === "two-device save";
  const live = c.op === "live save";
  const tcp = c.point.startsWith("TCP");
  const size = tcp ? 48 * MiB : 8 * MiB;
  const srcs = two ? [`${dir}/a`, `${dir}/a2`] : [`${dir}/a`];
  srcs.forEach((s, i) =>
    create(s, 1 + i, size, {
      ...(live ? { rate: 4 * MiB } : {}),
      ...(c.point === "blocking data_fd" ? { yieldRate: 4096 } : {}),
      // The save must still be sending when the peer stops: at 16 MiB/s 48 MiB take 3 s.
      ...(tcp ? { yieldRate: 16 * MiB } : {}),
    })
  );
  const devArgs = srcs.flatMap((s) => ["--device", `sim:${s}`]);
  const saveOpts = live ? ["--live"] : [];

  if (c.op !== "load") {
    // ---- a save that waits
    let p: Child;
    let reader = -1;
    const fifo = `${dir}/fifo`;
    switch (c.point) {
      case "stdout pipe full":
        p = new Child(["save", ...devArgs, ...saveOpts, "-"], { VFIO_MIG_SIM_LOG: srcLog }, { stdout: true });
        await waitStalled(srcLog, /read:data_fd/, what, p);
        break;
      case "FIFO nobody opens":
        await new Deno.Command("mkfifo", { args: [fifo] }).output();
        p = new Child(["save", ...devArgs, ...saveOpts, fifo], { VFIO_MIG_SIM_LOG: srcLog });
        // (it retries its open of the FIFO, which the log shows: wait for the devices' open instead)
        await waitFor(srcLog, /open:device/, what, p, 500);
        break;
      case "FIFO reader stops reading":
        await new Deno.Command("mkfifo", { args: [fifo] }).output();
        reader = host.open(fifo, O.RDONLY | O.NONBLOCK | O.CLOEXEC); // opened, never read
        p = new Child(["save", ...devArgs, ...saveOpts, fifo], { VFIO_MIG_SIM_LOG: srcLog });
        await waitStalled(srcLog, /read:data_fd/, what, p);
        break;
      case "blocking data_fd":
        p = new Child(["save", ...devArgs, ...saveOpts, `${dir}/out.vfmig`], { VFIO_MIG_SIM_LOG: srcLog });
        await waitFor(srcLog, /"to":"(STOP_COPY|PRE_COPY)"/, what, p);
        break;
      default: { // TCP peer stops reading: a real load --listen, stopped once data flows
        const dsts = srcs.map((_, i) => `${dir}/b${i}`);
        dsts.forEach((d, i) => create(d, 50 + i, size));
        const l = new Child(
          ["load", ...dsts.flatMap((d) => ["--device", `sim:${d}`]), "--listen", "127.0.0.1:0", "--token", TOKEN],
          { VFIO_MIG_SIM_LOG: dstLog },
        );
        const end = performance.now() + 20_000;
        let port = 0;
        while (!port && performance.now() < end) {
          port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(l.stderr)?.[1] ?? 0);
          await sleep(20);
        }
        assert(port, `${what}: the listener started\n${l.stderr}`);
        p = new Child(["save", ...devArgs, ...saveOpts, `tcp://127.0.0.1:${port}`, "--token", TOKEN], {
          VFIO_MIG_SIM_LOG: srcLog,
        });
        await waitFor(dstLog, /"to":"RESUMING"/, what, p, 50);
        l.kill("SIGSTOP");
        await waitStalled(srcLog, /read:data_fd/, what, p);
        const ms = await interrupt(p, c, what);
        l.kill("SIGCONT");
        const lst = await l.end();
        assert(lst.code !== 0, `${what}: the destination did not complete (exit ${lst.code})`);
        for (const d of dsts) assertEquals(stateOf(d), "RUNNING", `${what}: destination ${d} reset`);
        await checkSources(srcs, srcLog, what);
        return ms;
      }
    }
    const ms = await interrupt(p, c, what);
    if (c.point === "stdout pipe full") await assertIncomplete(await stdoutBytes(p), `${what}: standard output`);
    if (reader >= 0) {
      await assertIncomplete(readAll(reader), `${what}: the FIFO`);
      host.close(reader);
    }
    if (c.point === "FIFO nobody opens") {
      assertEquals(stateSets(await logLines(srcLog)), [], `${what}: no device was touched`);
    }
    assert(!srcs.some(() => exists(`${dir}/out.vfmig`)), `${what}: no output file`);
    await checkSources(srcs, srcLog, what);
    return ms;
  }

  // ---- a load that waits
  const b = `${dir}/b`;
  create(b, 9, size);
  const stream = `${dir}/a.vfmig`;
  const mk = await new Deno.Command(DENO, {
    args: ["run", "--allow-ffi", CLI, "save", "--resume", "--device", `sim:${srcs[0]}`, stream],
    env: BASE_ENV,
    cwd: ROOT,
  }).output();
  assertEquals(mk.code, 0, `${what}: the stream to load was saved`);
  let p: Child;
  let resuming = false;
  let writer: Deno.ChildProcess | null = null;
  switch (c.point) {
    case "FIFO nobody opens": {
      const fifo = `${dir}/fifo`;
      await new Deno.Command("mkfifo", { args: [fifo] }).output();
      p = new Child(["load", "--device", `sim:${b}`, fifo], { VFIO_MIG_SIM_LOG: dstLog });
      await waitFor(dstLog, /open:device/, what, p, 500);
      break;
    }
    case "stdin never delivers":
      p = new Child(["load", "--device", `sim:${b}`, "-"], { VFIO_MIG_SIM_LOG: dstLog }, { stdin: true });
      await waitStalled(dstLog, /open:device/, what, p, 500);
      break;
    case "stdin stops after RESUMING": {
      p = new Child(["load", "--device", `sim:${b}`, "-"], { VFIO_MIG_SIM_LOG: dstLog }, { stdin: true });
      const bytes = Deno.readFileSync(stream);
      const w = p.child.stdin.getWriter();
      await w.write(bytes.subarray(0, bytes.length >> 1)); // half, then silence (the pipe stays open)
      await waitStalled(dstLog, /"to":"RESUMING"/, what, p);
      resuming = true;
      break;
    }
    default: { // TCP: the peer (a save) stops sending
      p = new Child(["load", "--device", `sim:${b}`, "--listen", "127.0.0.1:0", "--token", TOKEN], {
        VFIO_MIG_SIM_LOG: dstLog,
      });
      const end = performance.now() + 20_000;
      let port = 0;
      while (!port && performance.now() < end) {
        port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(p.stderr)?.[1] ?? 0);
        await sleep(20);
      }
      assert(port, `${what}: the listener started\n${p.stderr}`);
      writer = new Deno.Command(DENO, {
        args: [
          "run",
          "--allow-ffi",
          "--allow-net",
          CLI,
          "save",
          "--device",
          `sim:${srcs[0]}`,
          "--token",
          TOKEN,
          `tcp://127.0.0.1:${port}`,
        ],
        env: BASE_ENV,
        cwd: ROOT,
        stdout: "null",
        stderr: "null",
      }).spawn();
      await waitFor(dstLog, /"to":"RESUMING"/, what, p, 50);
      writer.kill("SIGSTOP");
      await waitStalled(dstLog, /"to":"RESUMING"/, what, p);
      resuming = true;
    }
  }
  const ms = await interrupt(p, c, what);
  if (writer) {
    writer.kill("SIGCONT");
    const st = await writer.status;
    assert(st.code !== 0, `${what}: the stopped save failed once its destination was gone`);
    assertEquals(stateOf(srcs[0]), "RUNNING", `${what}: the source is back in RUNNING`);
  }
  const lines = await logLines(dstLog);
  assertReleased(lines, what);
  assertEquals(stateOf(b), "RUNNING", `${what}: destination RUNNING`);
  const reset = lines.some((l) => l.key === "ioctl:DEVICE_RESET");
  if (resuming) assert(reset, `${what}: the destination, RESUMING when the signal came, was reset`);
  else assertEquals([stateSets(lines).length, reset], [0, false], `${what}: the destination was not touched`);
  return ms;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function checkSources(srcs: string[], log: string, what: string): Promise<void> {
  for (const s of srcs) assertEquals(stateOf(s), "RUNNING", `${what}: source ${s} back in RUNNING`);
  const lines = await logLines(log);
  assertReleased(lines, what);
  assertEquals(lines.filter((l) => "forbidden" in l), [], `${what}: no forbidden arc`);
}

Deno.test(`interrupts: every blocking point × SIGINT/SIGTERM/SIGHUP × save, live save, two-device save, load (${CASES.length} cases)`, async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-interrupt-" });
  const errors: string[] = [];
  const times: number[] = [];
  const retried: string[] = [];
  try {
    let i = 0;
    for (const c of CASES) {
      // A case that was late is run once more: a busy 2-core host can lose a second to
      // scheduling, while a tool that blocks past a signal is late every time.
      for (let attempt = 1;; attempt++) {
        const dir = `${t}/${i++}`;
        Deno.mkdirSync(dir);
        try {
          times.push(await runCase(c, dir));
        } catch (e) {
          if (e instanceof Late && attempt === 1) {
            retried.push(e.message);
            continue;
          }
          errors.push(e instanceof Error ? e.message : String(e));
        }
        break;
      }
    }
  } finally {
    await Deno.remove(t, { recursive: true });
  }
  times.sort((a, b) => a - b);
  console.log(
    `interrupts: ${CASES.length} cases (${
      Object.keys(POINTS).length
    } blocking points × ${SIGNALS.length} signals × their operations); ` +
      `exit after the signal: median ${Math.round(times[times.length >> 1] ?? 0)} ms, ` +
      `max ${Math.round(times[times.length - 1] ?? 0)} ms` +
      (retried.length ? `; run again after a late exit: ${retried.join("; ")}` : ""),
  );
  if (errors.length) fail(`${errors.length} of ${CASES.length} cases failed:\n\n${errors.join("\n\n")}`);
});
