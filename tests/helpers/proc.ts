// Helpers for tests that run vfio-mig as processes (live_test, tcp_cli_test, ssh_test):
// bounded runs, background processes whose stderr can be waited on, simulated devices
// in temp folders, their state and call logs. Every process is killed when a test ends.

import { createHash } from "node:crypto";
import { assert, assertEquals, fail } from "./assert.ts";
import { libc } from "../../ffi/libc.ts";
import { readSmallFile } from "../../src/io.ts";

export const CLI = new URL("../../cli.ts", import.meta.url).pathname;
export const ROOT = new URL("../..", import.meta.url).pathname;
export const DENO = Deno.execPath();
export const MiB = 1 << 20;

/** Nothing inherited that changes the tool's behaviour. */
export const BASE_ENV: Record<string, string> = {
  NO_COLOR: "1",
  DENO_NO_PROMPT: "1",
  VFIO_MIG_SIM_FAULTS: "",
  VFIO_MIG_SIM_LOG: "",
  VFIO_MIG_DEVICE: "",
  VFIO_MIG_DEBUG: "",
  VFIO_MIG_TOKEN: "",
  VFIO_MIG_PAUSE_AT: "",
};

export interface Run {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export function show(r: Run): string {
  return `exit ${r.code}${r.signal ? ` (${r.signal})` : ""} after ${Math.round(r.ms)} ms\n--- stdout\n` +
    `${r.stdout.slice(0, 3000)}\n--- stderr\n${r.stderr.slice(0, 3000)}`;
}

/** A vfio-mig process (or any command) in the background, its output collected as it comes. */
export class Proc {
  readonly child: Deno.ChildProcess;
  readonly started = performance.now();
  stdout = "";
  stderr = "";
  #pumps: Promise<void>[];
  #status: Promise<Deno.CommandStatus>;
  #done: Run | null = null;

  constructor(cmd: string, args: string[], opts: { env?: Record<string, string>; stdin?: boolean } = {}) {
    this.child = new Deno.Command(cmd, {
      args,
      cwd: ROOT,
      env: { ...BASE_ENV, ...opts.env },
      stdin: opts.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#pumps = [
      this.#pump(this.child.stdout, (s) => this.stdout += s),
      this.#pump(this.child.stderr, (s) => this.stderr += s),
    ];
    this.#status = this.child.status;
    live.add(this);
  }

  get pid(): number {
    return this.child.pid;
  }

  async #pump(stream: ReadableStream<Uint8Array>, add: (s: string) => void): Promise<void> {
    const dec = new TextDecoder();
    for await (const chunk of stream) add(dec.decode(chunk, { stream: true }));
  }

  /** Waits until stderr matches `re` (fails after ms, or when the process ends first). */
  async waitStderr(re: RegExp, ms = 10_000, what = `stderr to match ${re}`): Promise<RegExpMatchArray> {
    const end = performance.now() + ms;
    let exited = false;
    this.#status.then(() => exited = true);
    while (performance.now() < end) {
      const m = this.stderr.match(re);
      if (m) return m;
      if (exited) {
        await Promise.all(this.#pumps);
        const m2 = this.stderr.match(re);
        if (m2) return m2;
        fail(`waiting for ${what}: the process ended\n${show(await this.done())}`);
      }
      await sleep(20);
    }
    this.kill("SIGKILL");
    fail(`waiting for ${what}: nothing within ${ms} ms\n${show(await this.done())}`);
  }

  kill(sig: Deno.Signal = "SIGTERM"): void {
    try {
      this.child.kill(sig);
    } catch { /* already gone */ }
  }

  /** The exit; killed (SIGKILL) and failed when it takes longer than ms. */
  async done(ms = 60_000): Promise<Run> {
    if (this.#done) return this.#done;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), ms));
    const first = await Promise.race([this.#status, timedOut]);
    clearTimeout(timer);
    if (first === "timeout") this.kill("SIGKILL");
    const st = await this.#status;
    await Promise.all(this.#pumps);
    live.delete(this);
    this.#done = {
      code: st.code,
      signal: st.signal,
      stdout: this.stdout,
      stderr: this.stderr,
      ms: performance.now() - this.started,
    };
    if (first === "timeout") fail(`process ${this.pid} did not end within ${ms} ms\n${show(this.#done)}`);
    return this.#done;
  }
}

const live = new Set<Proc>();

/** Kills and reaps whatever a test left running (call in finally). */
export async function killAll(): Promise<void> {
  for (const p of [...live]) {
    p.kill("SIGKILL");
    try {
      await p.done(5000);
    } catch { /* reported by the test itself */ }
  }
}

/**
 * vfio-mig as bin/vfio-mig starts it: SIGUSR1 blocked from exec (README "Security"), so
 * cli.ts runs at once, without its re-exec (tests/cli/security_test.ts runs both ways).
 */
export function vfioMig(args: string[], opts: { env?: Record<string, string>; net?: boolean } = {}): Proc {
  // bin/vfio-mig's flags: each command's modules read when it runs, from this checkout only; 1 MiB semi-spaces
  const flags = [
    "--unstable-lazy-dynamic-imports",
    `--allow-read=${ROOT.replace(/\/$/, "")}`,
    "--allow-ffi",
    ...(opts.net === false ? [] : ["--allow-net"]),
    "--v8-flags=--max-semi-space-size=1",
  ];
  return new Proc("env", ["--block-signal=USR1", "--ignore-signal=USR2", DENO, "run", ...flags, CLI, ...args], opts);
}

/** Runs vfio-mig to the end (bounded by ms). */
export function cli(args: string[], opts: { env?: Record<string, string>; ms?: number } = {}): Promise<Run> {
  return vfioMig(args, opts).done(opts.ms ?? 60_000);
}

/** A finished run, with standard output's bytes too (a stream saved to "-"). */
export interface RunBytes extends Run {
  out: Uint8Array;
}

/**
 * Runs vfio-mig to the end as `deno run --allow-ffi cli.ts ARGS` (`allow`: other
 * permission flags instead), in the checkout, with BASE_ENV and `env`; standard input
 * `stdin`'s bytes (a reader that stops early is no error: its exit code tells) or none.
 */
export async function runCli(
  args: string[],
  opts: { env?: Record<string, string>; stdin?: Uint8Array; allow?: string[] } = {},
): Promise<RunBytes> {
  const t0 = performance.now();
  const child = new Deno.Command(DENO, {
    args: ["run", ...(opts.allow ?? ["--allow-ffi"]), CLI, ...args],
    cwd: ROOT,
    env: { ...BASE_ENV, ...opts.env },
    stdin: opts.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin) {
    const w = child.stdin.getWriter();
    try {
      await w.write(opts.stdin);
      await w.close();
    } catch {
      await w.abort().catch(() => {});
    }
  }
  const r = await child.output();
  const dec = new TextDecoder();
  return {
    code: r.code,
    signal: r.signal,
    stdout: dec.decode(r.stdout),
    stderr: dec.decode(r.stderr),
    out: r.stdout,
    ms: performance.now() - t0,
  };
}

/**
 * runCli with the file permissions spelled out (--allow-ffi --allow-read --allow-write
 * --allow-env, as the inspect, QEMU, check and list tests run it): exit code, stdout
 * (`out`) and stderr (`err`).
 */
export async function cliText(
  args: string[],
  stdin?: Uint8Array,
  env?: Record<string, string>,
): Promise<{ code: number; out: string; err: string }> {
  const r = await runCli(args, { stdin, env, allow: ["--allow-ffi", "--allow-read", "--allow-write", "--allow-env"] });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

export async function ok(args: string[], opts: { env?: Record<string, string>; ms?: number } = {}): Promise<Run> {
  const r = await cli(args, opts);
  if (r.code !== 0) fail(`vfio-mig ${args.join(" ")} failed: ${show(r)}`);
  return r;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-net-" });
  try {
    await fn(dir);
  } finally {
    await killAll();
    await Deno.remove(dir, { recursive: true });
  }
}

export async function simCreate(path: string, ...args: string[]): Promise<void> {
  await ok(["sim", "create", path, ...args]);
}

const STATE_NAMES = ["ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"];

/** The persisted migration state of a simulated device. */
export async function stateOf(dir: string): Promise<string> {
  const meta = JSON.parse(await Deno.readTextFile(`${dir}/device.json`));
  return STATE_NAMES[meta.state] ?? `?${meta.state}`;
}

/** SHA-256 of a simulated device's internal state. */
export async function sha(dir: string): Promise<string> {
  const h = createHash("sha256");
  using f = await Deno.open(`${dir}/state.bin`);
  const buf = new Uint8Array(4 * MiB);
  for (;;) {
    const n = await f.read(buf);
    if (n === null) break;
    h.update(buf.subarray(0, n));
  }
  return h.digest("hex");
}

export type LogLine = Record<string, unknown> & { n: number; pid: number; key?: string };

/** JSON lines of a VFIO_MIG_SIM_LOG file ([] when it does not exist). */
export async function logLines(path: string): Promise<LogLine[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return text.split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

/** Migration state changes (MIG_DEVICE_STATE SETs the simulated kernel answered) in a log. */
export function stateSets(lines: LogLine[]): LogLine[] {
  return lines.filter((l) => l.key === "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET" && "to" in l);
}

/** Asserts a device was never asked to change state (and not reset) according to its log. */
export async function assertUntouched(dir: string, log: string, shaBefore: string, what: string): Promise<void> {
  const lines = await logLines(log);
  assertEquals(stateSets(lines).map((l) => `${l.from}->${l.to}`), [], `${what}: no state change`);
  assert(!lines.some((l) => l.key === "ioctl:DEVICE_RESET"), `${what}: no reset`);
  assertEquals(await stateOf(dir), "RUNNING", `${what}: still RUNNING`);
  assertEquals(await sha(dir), shaBefore, `${what}: state unchanged`);
}

/** Parses the JSON summary a command printed (the last {...} block of the text). */
export function jsonOf(text: string): Record<string, unknown> {
  const start = text.indexOf("{\n");
  if (start < 0) fail(`no JSON in: ${text.slice(0, 2000)}`);
  return JSON.parse(text.slice(start, text.lastIndexOf("}") + 1));
}

/** Starts `load --listen 127.0.0.1:0 …` and returns it with the port it bound. */
export async function listen(
  device: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ proc: Proc; port: number; token: string | null }> {
  const proc = vfioMig(["load", "--device", `sim:${device}`, "--listen", "127.0.0.1:0", ...args], { env });
  const m = await proc.waitStderr(/listening on 127\.0\.0\.1:(\d+)(?:; token ([0-9a-f]+))?/, 15_000, "the listener");
  return { proc, port: Number(m[1]), token: m[2] ?? null };
}

/** /proc/PID/status (through libc: Deno's own file API wants --allow-all for /proc), or null. */
export function procStatus(pid: number | "self"): string | null {
  try {
    return new TextDecoder().decode(readSmallFile(libc(), `/proc/${pid}/status`));
  } catch {
    return null;
  }
}

/** VmHWM (peak resident set) of a live process, in bytes; null once it is gone. */
export function vmHwm(pid: number): number | null {
  const m = /^VmHWM:\s+(\d+) kB/m.exec(procStatus(pid) ?? "");
  return m ? Number(m[1]) * 1024 : null;
}

/** The effective uid of this process (Deno.uid() needs --allow-sys). */
export function euid(): number | null {
  const m = /^Uid:\s+\d+\s+(\d+)/m.exec(procStatus("self") ?? "");
  return m ? Number(m[1]) : null;
}
