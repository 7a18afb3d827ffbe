// The fault matrix: a generator, not hand-written cases. For each scenario (save and
// load, uAPI v2 offline and live, protocol v1) it records the sequence of simulated
// calls a good run makes (the simulator's call log), then reruns the scenario once for
// every call position and every errno that kind of call can really return, plus a
// short read/write at every read/write position, with that one call failing. Every
// run must keep the promise of docs/reliability.md:
//   - a non-zero exit code, or success where the failure is retryable and retried
//     (EINTR, EAGAIN, short reads and writes of read/write) or deliberately tolerated;
//   - one clear line (a VfioMigError or SysError message, no stack trace);
//   - the source device back in RUNNING (STOP after a successful save);
//   - the destination reset (RUNNING) once a SET reached it, else untouched;
//   - no output file that looks complete, no `.partial-` leftover;
//   - no fd left open (in-process: /proc/self/fd; every data_fd handed out closed,
//     no fd closed twice);
//   - no forbidden arc (STOP_COPY -> PRE_COPY*) in the log.
// Most runs use the library API in-process (fast); a sample runs the real CLI as
// subprocesses, two at a time, checked from exit code, stderr and the call log.

import { crc32 } from "node:zlib";
import { assert, fail } from "../helpers/assert.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { openDevice } from "../../src/device/open.ts";
import { VfioMigError } from "../../src/errors.ts";
import { load } from "../../src/migrate/load.ts";
import { save } from "../../src/migrate/save.ts";
import { DeviceState } from "../../src/vfio/state_machine.ts";
import { parseFaults, SimKernel } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";
import { StreamReader } from "../../src/stream/reader.ts";
import { openSink, openSource } from "../../src/transport/transport.ts";
import { MemorySource } from "../helpers/bytes.ts";

const host = libc();
const CLI = new URL("../../cli.ts", import.meta.url).pathname;
const ROOT = new URL("../..", import.meta.url).pathname;
const DENO = Deno.execPath();
const MiB = 1 << 20;
const V2_SIZE = 2 * MiB + 5; // three data chunks
const V1_SIZE = 150_000; // three v1 chunks through a 64 KiB data section

type Line = Record<string, unknown>;

// ---------------------------------------------------------------------------
// Scenarios

interface Scenario {
  name: string;
  kind: "save" | "load";
  protocol: "v1" | "v2";
  live: boolean;
  /** Device folder names inside a bench: the source, the destination (loads). */
  src: string;
  dst?: string;
  /** The input stream (loads), shared by every bench. */
  stream?: string;
}

const SCENARIOS: Scenario[] = [
  { name: "save v2 offline", kind: "save", protocol: "v2", live: false, src: "v2a" },
  { name: "save v2 live", kind: "save", protocol: "v2", live: true, src: "v2a" },
  { name: "save v1", kind: "save", protocol: "v1", live: false, src: "v1a" },
  { name: "load v2 offline", kind: "load", protocol: "v2", live: false, src: "v2a", dst: "v2b", stream: "v2.vfmig" },
  { name: "load v2 live", kind: "load", protocol: "v2", live: true, src: "v2a", dst: "v2b", stream: "v2live.vfmig" },
  { name: "load v1", kind: "load", protocol: "v1", live: false, src: "v1a", dst: "v1b", stream: "v1.vfmig" },
];

/** The errnos a call of this kind can really return. */
function errnosFor(key: string): string[] {
  if (key === "read:data_fd") {
    return ["EIO", "ENODEV", "ENOMEM", "EFAULT", "EINVAL", "ENOMSG", "EINTR", "EAGAIN", "short"];
  }
  if (key === "read:host") return ["EIO", "EINVAL", "EFAULT", "EINTR", "EAGAIN", "short"];
  if (key === "write:data_fd") {
    return ["EIO", "EINVAL", "ENOMEM", "ENOSPC", "ENODEV", "EFAULT", "EINTR", "EAGAIN", "short"];
  }
  if (key === "write:host") return ["EIO", "ENOSPC", "EPIPE", "EFAULT", "EINTR", "EAGAIN", "short"];
  if (key.startsWith("ioctl:DEVICE_FEATURE:") && key.endsWith(":SET")) {
    return ["EINVAL", "EIO", "ENOMEM", "ENODEV", "EFAULT", "EINTR", "EAGAIN"];
  }
  if (key.startsWith("ioctl:DEVICE_FEATURE:")) return ["EINVAL", "EIO", "ENODEV", "EFAULT"];
  if (key === "ioctl:MIG_GET_PRECOPY_INFO") return ["EINVAL", "EIO", "ENODEV", "EFAULT"];
  if (key.startsWith("ioctl:")) return ["EINVAL", "EFAULT", "ENODEV"];
  if (key === "pread:device" || key === "pwrite:device") return ["EIO", "EINVAL", "EFAULT"];
  // load's whole-file check of the input (pread through the descriptor it then reads).
  if (key === "pread:host") return ["EIO", "EINVAL", "EFAULT", "EINTR"];
  if (key === "mmap:device") return ["ENOMEM", "EINVAL", "ENODEV"];
  if (key === "open:device") return ["ENODEV", "ENOMEM", "EIO"];
  if (key === "open:host") return ["EIO", "ENOSPC", "ENOMEM"];
  if (key === "open:sysinfo") return ["ENOENT", "EACCES", "ENOMEM"];
  if (key === "read:sysinfo") return ["EIO", "EINVAL", "EINTR"];
  if (key.startsWith("close:")) return ["EIO", "EINTR"];
  if (key === "fsync:host" || key === "rename") return ["EIO", "ENOSPC"];
  if (key === "v1:device_state:write") return ["EIO", "EINVAL"];
  if (key === "v1:device_state:error") return ["EIO"];
  if (key === "v1:data_size") return ["EIO", "EINVAL", "ENOMEM"];
  if (key.startsWith("v1:")) return ["EIO", "EINVAL"];
  fail(`the matrix has no errnos for call ${key}: add them to errnosFor`);
}

/** A failure the tool must absorb: EINTR, EAGAIN or a short transfer on read/write. */
function mustRetry(key: string, errno: string): boolean {
  return (key.startsWith("read:") || key.startsWith("write:")) && ["EINTR", "EAGAIN", "short"].includes(errno);
}

/**
 * Failures the tool may absorb by design (it may also fail cleanly): the v1 mmap
 * (pread/pwrite fallback), ENOMSG in pre-copy (no data now), and EINTR/EAGAIN
 * anywhere (a retry is allowed, not required, outside read/write).
 */
function mayRetry(sc: Scenario, key: string, errno: string): boolean {
  if (errno === "EINTR" || errno === "EAGAIN") return true;
  if (key === "mmap:device") return true;
  // EINVAL from GET_REGION_INFO or a region read: no such region, or not readable (the
  // MSI-X BAR of the config section is then left out or not restored, as documented).
  const region = key === "ioctl:DEVICE_GET_REGION_INFO" || key === "pread:device" || key === "pwrite:device";
  if (region && errno === "EINVAL") return true;
  // v1 discovery scans every region for the migration one and skips those it cannot query.
  if (sc.protocol === "v1" && key === "ioctl:DEVICE_GET_REGION_INFO") return true;
  if (key === "read:data_fd" && errno === "ENOMSG" && sc.live) return true;
  // MIG_DATA_SIZE is optional (kernels before 6.2): EINVAL means "no estimate".
  if (key === "ioctl:DEVICE_FEATURE:MIG_DATA_SIZE:GET" && errno === "EINVAL") return true;
  // Precopy-info v2 is optional (Linux 7.1): EINVAL means the driver lacks it.
  if (key === "ioctl:DEVICE_FEATURE:MIG_PRECOPY_INFOv2:SET" && errno === "EINVAL") return true;
  // close() releases the fd even when it fails: after a complete operation (the device
  // fd, the input) there is nothing to undo; before one (the output) it must fail.
  if (key.startsWith("close:")) return true;
  // What the kernel tells of itself (/proc, /sys: the origin header's kernel release and
  // module version) is informational: a save without it is still whole.
  if (key.endsWith(":sysinfo")) return true;
  return false;
}

interface Case {
  sc: Scenario;
  /** Position in the good run's call sequence. */
  pos: number;
  key: string;
  nth: number;
  errno: string;
}

function faultSpec(c: Case): string {
  return `${c.key}@${c.nth}=${c.errno}`;
}

function caseName(c: Case): string {
  return `${c.sc.name} #${c.pos} ${faultSpec(c)}`;
}

// ---------------------------------------------------------------------------
// Benches: one set of devices per worker, restored before every run

class Bench {
  readonly snap = new Map<string, Map<string, Uint8Array>>();
  readonly stateCrc = new Map<string, number>();
  constructor(readonly dir: string) {}

  dev(name: string): string {
    return `${this.dir}/${name}`;
  }
  get out(): string {
    return `${this.dir}/out`;
  }
  get outFile(): string {
    return `${this.out}/s.vfmig`;
  }

  create(): void {
    Deno.mkdirSync(this.dir, { recursive: true });
    Deno.mkdirSync(this.out);
    const mk = (name: string, o: Parameters<SimStore["create"]>[0]) => new SimStore(host, this.dev(name)).create(o);
    mk("v2a", { model: "bulk", size: V2_SIZE, seed: 1 });
    mk("v2b", { model: "bulk", size: V2_SIZE, seed: 2 });
    mk("v1a", { model: "bulk", size: V1_SIZE, seed: 3, protocol: "v1", dataSize: 64 * 1024, sparse: "full" });
    mk("v1b", { model: "bulk", size: V1_SIZE, seed: 4, protocol: "v1", dataSize: 64 * 1024, sparse: "full" });
    for (const name of ["v2a", "v2b", "v1a", "v1b"]) {
      const files = new Map<string, Uint8Array>();
      for (const e of Deno.readDirSync(this.dev(name))) {
        if (e.isFile && e.name !== "lock") files.set(e.name, Deno.readFileSync(`${this.dev(name)}/${e.name}`));
      }
      this.snap.set(name, files);
      this.stateCrc.set(name, crc32(files.get("state.bin")!));
    }
  }

  /** Puts every device and the output folder back as created. */
  restore(): void {
    for (const [name, files] of this.snap) {
      const dir = this.dev(name);
      for (const e of Deno.readDirSync(dir)) {
        if (e.name !== "lock" && !files.has(e.name)) Deno.removeSync(`${dir}/${e.name}`);
      }
      for (const [f, bytes] of files) {
        if (f === "state.bin" && this.crcOf(name) === this.stateCrc.get(name)) continue;
        Deno.writeFileSync(`${dir}/${f}`, bytes);
      }
    }
    for (const e of Deno.readDirSync(this.out)) Deno.removeSync(`${this.out}/${e.name}`, { recursive: true });
  }

  crcOf(name: string): number {
    return crc32(Deno.readFileSync(`${this.dev(name)}/state.bin`));
  }

  /** The device's migration state (a v1 device's is mirrored into the v2 names). */
  state(name: string): DeviceState {
    return new SimStore(host, this.dev(name)).readMeta().state;
  }
}

// ---------------------------------------------------------------------------
// One run

interface Result {
  /** 0 on success, else the exit code the CLI gives the error. */
  code: number;
  /** The error's one line ("" on success). */
  message: string;
  /** A thrown value that is neither VfioMigError nor SysError (the CLI's "internal error"). */
  internal: boolean;
  lines: Line[];
  /** In-process runs: fds opened and not closed; fds closed twice. */
  leakedFds?: number;
  doubleCloses?: number[];
  /** Subprocess runs: stderr. */
  stderr?: string;
}

/** The simulator with a check that nothing closes an fd that is not open (EBADF). */
class CheckingKernel extends SimKernel {
  readonly doubleCloses: number[] = [];
  override close(fd: number): void {
    try {
      super.close(fd);
    } catch (e) {
      if (e instanceof SysError && e.errno === Errno.EBADF) this.doubleCloses.push(fd);
      throw e;
    }
  }
}

const fdCount = () => host.readdir("/proc/self/fd").length;

function readLog(path: string): Line[] {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return text.split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

/** What the library call does, as the CLI command does it (same order of opens and closes). */
async function operate(sc: Scenario, b: Bench, k: SimKernel, root: string): Promise<void> {
  if (sc.kind === "save") {
    const dev = openDevice(k, `sim:${b.dev(sc.src)}`);
    try {
      const sink = openSink(k, b.outFile);
      await save(dev, sink, { live: sc.live, protocol: sc.protocol });
    } finally {
      dev.close();
    }
    return;
  }
  const source = openSource(k, `${root}/${sc.stream}`);
  try {
    const dev = openDevice(k, `sim:${b.dev(sc.dst!)}`);
    try {
      await load(dev, source, { protocol: sc.protocol });
    } finally {
      dev.close();
    }
  } finally {
    source.close();
  }
}

async function runInProcess(sc: Scenario, b: Bench, root: string, fault: string | null): Promise<Result> {
  b.restore();
  const log = `${b.dir}/calls.log`;
  try {
    Deno.removeSync(log);
  } catch { /* none yet */ }
  const k = new CheckingKernel(host, { faults: parseFaults(fault ?? undefined), logPath: log });
  const before = fdCount();
  let error: unknown = null;
  try {
    await operate(sc, b, k, root);
  } catch (e) {
    error = e;
  }
  const leakedFds = fdCount() - before;
  k.closeLog();
  const r: Result = {
    code: 0,
    message: "",
    internal: false,
    lines: readLog(log),
    leakedFds,
    doubleCloses: k.doubleCloses,
  };
  if (error !== null) {
    r.message = error instanceof Error ? error.message : String(error);
    if (error instanceof VfioMigError) r.code = error.exitCode;
    else if (error instanceof SysError) r.code = 1;
    else {
      r.code = 1;
      r.internal = true;
      r.message = `internal error: ${error instanceof Error ? error.stack : error}`;
    }
  }
  if (k.forbiddenArcs.length) r.lines.push({ forbidden: k.forbiddenArcs.join(",") });
  return r;
}

const BASE_ENV: Record<string, string> = {
  NO_COLOR: "1",
  DENO_NO_PROMPT: "1",
  VFIO_MIG_DEVICE: "",
  VFIO_MIG_DEBUG: "",
  VFIO_MIG_PAUSE_AT: "",
};

async function runCli(sc: Scenario, b: Bench, root: string, fault: string | null): Promise<Result> {
  b.restore();
  const log = `${b.dir}/calls.log`;
  try {
    Deno.removeSync(log);
  } catch { /* none yet */ }
  const args = sc.kind === "save"
    ? ["save", "-q", "--protocol", sc.protocol, ...(sc.live ? ["--live"] : []), "--device", `sim:${b.dev(sc.src)}`]
      .concat(b.outFile)
    : ["load", "-q", "--protocol", sc.protocol, "--device", `sim:${b.dev(sc.dst!)}`, `${root}/${sc.stream}`];
  const r = await new Deno.Command(DENO, {
    args: ["run", "--allow-ffi", CLI, ...args],
    cwd: ROOT,
    env: { ...BASE_ENV, VFIO_MIG_SIM_FAULTS: fault ?? "", VFIO_MIG_SIM_LOG: log },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(r.stderr);
  const first = stderr.split("\n").find((l) => l.trim() !== "") ?? "";
  return {
    code: r.code,
    message: first,
    internal: /internal error/.test(stderr),
    lines: readLog(log),
    stderr,
  };
}

// ---------------------------------------------------------------------------
// The promise, checked

/** What a stream carries, independent of chunking and creation time: identity, data, config. */
async function streamContent(bytes: Uint8Array): Promise<string> {
  const r = new StreamReader(new MemorySource(bytes));
  const h = await r.readHeader();
  let data = 0;
  let dataLen = 0;
  let config = 0;
  for (;;) {
    const rec = await r.next();
    if (rec.kind === "end") break;
    if (rec.kind !== "data") continue;
    if (rec.tag === "DEV_DATA_STATE") {
      data = crc32(rec.bytes, data);
      dataLen += rec.bytes.length;
    } else config = crc32(rec.bytes, config);
  }
  return JSON.stringify({ device: h.device, protocol: h.protocol, mode: h.mode, data, dataLen, config });
}

/** The good runs' output streams, by scenario. */
const goodContent = new Map<string, string>();

const SET_KEY = "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET";
const { RUNNING, STOP } = DeviceState;

/** A state change that took effect on the device (v2 SET or v1 device_state write). */
function changedState(l: Line): boolean {
  if (l.key === "v1:device_state:error" && "fault" in l) return true; // the device entered the error state
  if (l.key === SET_KEY) return "from" in l && !("err" in l);
  if (l.key === "v1:device_state") return !("err" in l) && l.from !== l.to;
  return false;
}

async function check(c: Case | null, sc: Scenario, b: Bench, r: Result): Promise<string[]> {
  const problems: string[] = [];
  const p = (s: string) => problems.push(s);
  const key = c?.key ?? "";
  const errno = c?.errno ?? "";
  const ok = r.code === 0;

  if (!c) {
    if (!ok) p(`the good run failed: ${r.message}`);
  } else if (mustRetry(key, errno)) {
    if (!ok) p(`a retryable ${errno} on ${key} was not retried: exit ${r.code}: ${r.message}`);
  } else if (ok && !mayRetry(sc, key, errno)) {
    p(`succeeded although ${key} failed with ${errno}`);
  }
  if (!ok) {
    if (r.internal) p(`not a clear error: ${r.message}`);
    if (r.message.includes("\n")) p(`the error is several lines: ${r.message}`);
    if (![1, 3, 4].includes(r.code)) p(`exit code ${r.code} (expected 1, 3 or 4): ${r.message}`);
    if (sc.kind === "save" && r.code === 4) p(`a save failed with the stream exit code 4: ${r.message}`);
  }
  if (r.stderr !== undefined) {
    const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
    if (!ok && lines.length !== 1) p(`stderr has ${lines.length} lines, not one:\n${r.stderr}`);
    if (!ok && !/^vfio-mig: /.test(lines[0] ?? "")) p(`stderr does not start with "vfio-mig: ": ${r.stderr}`);
    if (/^\s+at /m.test(r.stderr)) p(`a stack trace on stderr:\n${r.stderr}`);
  }

  // Devices.
  const srcState = b.state(sc.src);
  if (sc.kind === "save") {
    const want = ok ? STOP : RUNNING;
    if (srcState !== want) p(`source is ${DeviceState[srcState]}, expected ${DeviceState[want]}`);
    if (b.crcOf(sc.src) !== b.stateCrc.get(sc.src)) p("the save changed the source's state");
    const out = [...Deno.readDirSync(b.out)].map((e) => e.name).sort();
    if (ok && (out.length !== 1 || out[0] !== "s.vfmig")) p(`after success the output folder holds ${out}`);
    if (!ok && out.length !== 0) p(`after a failure the output folder holds ${out.join(", ")} (complete-looking?)`);
    if (ok && out.length === 1) {
      // A save that absorbed a failure wrote what a good run writes (a region that said
      // EINVAL, "not there", may legitimately be left out).
      const content = await streamContent(Deno.readFileSync(b.outFile));
      if (!c) goodContent.set(sc.name, content);
      else if (content !== goodContent.get(sc.name) && errno !== "EINVAL") {
        p(`the stream differs from a good run's: ${content} vs ${goodContent.get(sc.name)}`);
      }
    }
  } else {
    const dst = sc.dst!;
    const dstState = b.state(dst);
    const touched = r.lines.some(changedState);
    const reset = r.lines.some((l) => l.key === "ioctl:DEVICE_RESET");
    if (srcState !== RUNNING) p(`the load changed the source device (${DeviceState[srcState]})`);
    if (!touched) {
      if (!ok && reset) p("the destination was reset although no state change had reached it");
      if (dstState !== RUNNING) p(`untouched destination is ${DeviceState[dstState]}`);
      if (b.crcOf(dst) !== b.stateCrc.get(dst)) p("untouched destination's state changed");
      if (ok) p("a successful load that changed no state");
    } else {
      if (dstState !== RUNNING) p(`destination is ${DeviceState[dstState]} (expected RUNNING)`);
      if (!ok && !reset) p("the failed load did not reset the destination");
      if (ok && b.crcOf(dst) !== b.stateCrc.get(sc.src)) p("the loaded destination does not hold the source's state");
    }
  }

  // Descriptors and arcs.
  const handed: number[] = [];
  for (const l of r.lines) {
    if (l.key === SET_KEY && typeof l.data_fd === "number" && l.data_fd >= 0) handed.push(l.data_fd);
    if (l.key === "close:data_fd") {
      const i = handed.indexOf(l.fd as number);
      if (i >= 0) handed.splice(i, 1);
    }
  }
  if (handed.length) p(`data_fd ${handed.join(", ")} handed out and never closed`);
  if (r.leakedFds !== undefined && r.leakedFds !== 0) p(`${r.leakedFds} fds left open`);
  if (r.doubleCloses?.length) p(`fd ${r.doubleCloses.join(", ")} closed twice`);
  const forbidden = r.lines.filter((l) => "forbidden" in l);
  if (forbidden.length) p(`forbidden arcs requested: ${forbidden.map((l) => l.forbidden).join(", ")}`);
  return problems;
}

// ---------------------------------------------------------------------------
// The matrix

/** The calls of a good run, in order. */
function callsOf(lines: Line[]): string[] {
  return lines.filter((l) => typeof l.call === "string").map((l) => l.call as string);
}

function casesFor(sc: Scenario, calls: string[]): Case[] {
  const cases: Case[] = [];
  calls.forEach((key, pos) => {
    // The fault counts every call whose key starts with KEY: the nth such call is this one.
    const nth = calls.slice(0, pos + 1).filter((k) => k.startsWith(key)).length;
    for (const errno of errnosFor(key)) {
      if (errno === "short" && !(key.startsWith("read:") || key.startsWith("write:"))) continue;
      cases.push({ sc, pos, key, nth, errno });
    }
  });
  return cases;
}

/** A representative sample for the CLI: each kind of call once per scenario, cycling the errnos. */
function cliSample(cases: Case[]): Case[] {
  const picked: Case[] = [];
  const seen = new Map<string, number>();
  for (const c of cases) {
    const k = `${c.sc.name}|${c.key}`;
    const n = seen.get(k) ?? 0;
    seen.set(k, n + 1);
    // The first position of each kind with its first errno, and a later one with another.
    const errs = errnosFor(c.key);
    if (n === 0 || (c.pos % 7 === 3 && c.errno === errs[(c.pos >> 1) % errs.length])) picked.push(c);
  }
  return picked;
}

async function prepare(root: string, workers: number): Promise<Bench[]> {
  const benches = Array.from({ length: workers }, (_, i) => new Bench(`${root}/w${i}`));
  for (const b of benches) b.create();
  // The streams the load scenarios read, from bench 0's sources.
  const b = benches[0];
  const saveTo = async (dev: string, file: string, live: boolean, protocol: "v1" | "v2") => {
    const k = new SimKernel(host);
    const d = openDevice(k, `sim:${b.dev(dev)}`);
    try {
      await save(d, openSink(k, `${root}/${file}`), { live, protocol, resume: true });
    } finally {
      d.close();
    }
  };
  await saveTo("v2a", "v2.vfmig", false, "v2");
  await saveTo("v2a", "v2live.vfmig", true, "v2");
  await saveTo("v1a", "v1.vfmig", false, "v1");
  return benches;
}

async function pool<T>(items: T[], n: number, fn: (item: T, worker: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: n }, async (_, w) => {
    while (next < items.length) await fn(items[next++], w);
  }));
}

Deno.test("fault matrix: every call of save and load (v2 offline, v2 live, v1) failing once keeps the promise", async () => {
  const root = await Deno.makeTempDir({ prefix: "vfio-mig-matrix-" });
  const t0 = performance.now();
  try {
    const benches = await prepare(root, 2);
    const failures: string[] = [];
    const outcomes = new Map<string, number>();
    const count = (k: string) => outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
    const all: Case[] = [];
    const perScenario: string[] = [];

    for (const sc of SCENARIOS) {
      // The good run, recorded.
      const good = await runInProcess(sc, benches[0], root, null);
      const bad = await check(null, sc, benches[0], good);
      if (bad.length) {
        fail(`${sc.name}, no fault: ${bad.join("; ")}\nbefore that:\n${failures.slice(0, 60).join("\n")}`);
      }
      const calls = callsOf(good.lines);
      assert(calls.length > 20, `${sc.name}: a good run makes ${calls.length} calls`);
      const cases = casesFor(sc, calls);
      perScenario.push(`${sc.name}: ${calls.length} calls, ${cases.length} cases`);
      all.push(...cases);
      for (const c of cases) {
        const r = await runInProcess(sc, benches[0], root, faultSpec(c));
        const fired = c.errno === "short" || r.lines.some((l) => "fault" in l);
        count(
          !fired
            ? "not reached"
            : r.code === 0
            ? (mustRetry(c.key, c.errno) ? "retried" : "absorbed")
            : `exit ${r.code}`,
        );
        // A run that took another path (pre-copy timing) and never made the nth call is a
        // good run: checked as one, and counted.
        for (const why of await check(fired ? c : null, sc, benches[0], r)) failures.push(`${caseName(c)}: ${why}`);
      }
    }
    const inProcessMs = performance.now() - t0;

    // The same promise through the real command line, for a sample, two at a time.
    const sample = cliSample(all);
    const t1 = performance.now();
    const cliOutcomes = new Map<string, number>();
    await pool(sample, benches.length, async (c, w) => {
      const r = await runCli(c.sc, benches[w], root, faultSpec(c));
      const fired = c.errno === "short" || r.lines.some((l) => "fault" in l);
      const k = !fired ? "not reached" : r.code === 0 ? "exit 0" : `exit ${r.code}`;
      cliOutcomes.set(k, (cliOutcomes.get(k) ?? 0) + 1);
      for (const why of await check(fired ? c : null, c.sc, benches[w], r)) failures.push(`CLI ${caseName(c)}: ${why}`);
    });
    const cliMs = performance.now() - t1;

    const show = (m: Map<string, number>) => [...m].sort().map(([k, v]) => `${k}: ${v}`).join(", ");
    console.log(
      `fault matrix: ${all.length} cases in-process (${(inProcessMs / 1000).toFixed(1)} s)\n  ${
        perScenario.join("\n  ")
      }\n  outcomes: ${show(outcomes)}\n` +
        `  CLI sample: ${sample.length} subprocess cases (${(cliMs / 1000).toFixed(1)} s): ${show(cliOutcomes)}`,
    );
    if (failures.length) {
      fail(`${failures.length} broken promises:\n${failures.slice(0, 60).join("\n")}`);
    }
    const missed = outcomes.get("not reached") ?? 0;
    assert(missed <= all.length / 100, `${missed} injected faults never fired: the recorded sequences are stale`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
