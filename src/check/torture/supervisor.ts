// The torture's supervisor: starts the worker (engine.ts, or replay.ts for --replay) in
// a child process, reads its progress, and gives the kernel's verdict. Between the
// worker's calls (it waits for an ack after each) it drains the kernel log (kmsg.ts), so
// every record lands on the call during which it was logged; a call that does not
// return within the step bound is a hang: the child is killed (SIGKILL) and abandoned
// if it sleeps in the kernel, and the run ends, as the device may be wedged. This
// process only ever waits in short polls, so Ctrl-C always gets through. Each finding
// gets a replay file: the run's calls up to the finding, with their bytes.

import { isErrno } from "../../../ffi/errno.ts";
import { libc } from "../../../ffi/libc.ts";
import { environment, sendSignal, spawn, waitChild } from "../../../ffi/process.ts";
import { F, FD_CLOEXEC, O, POLL, type Sys } from "../../../ffi/sys.ts";
import { nextTurn, readSmallFile, writeAll } from "../../io.ts";
import { claimSignals } from "../../signals.ts";
import type { FindingKind, FuzzCounts, StressCounts } from "./engine.ts";
import { isBugReport, kmsgFor, type KmsgSource } from "./kmsg.ts";
import { fileLines, readReplayHeader, type ReplayHeader } from "./replay.ts";

const SIGKILL = 9;
/** How long the worker may take to start (a Deno start in a TCG guest takes tens of seconds). */
const START_BOUND_MS = 300_000;
/** Kernel-log records kept per finding (a KASAN report names the driver's function about 15 lines in). */
const KMSG_KEEP = 40;

/** The hung-task detector's report line (kernel/hung_task.c: "INFO: task COMM:PID blocked for more than N seconds."). */
const HUNG_TASK = /INFO: task .*:(\d+) blocked for more than/;

/**
 * The task id of a hung-task report about a task that is not one of the worker's threads
 * (/proc/WORKER/task/TID), e.g. one an earlier run left asleep in the kernel; null for any
 * other line, or when the worker is not known yet.
 */
export function otherTask(sys: Sys, text: string, worker: number | undefined): number | null {
  const m = HUNG_TASK.exec(text);
  if (!m || worker === undefined) return null;
  try {
    sys.stat(`/proc/${worker}/task/${m[1]}`);
    return null;
  } catch {
    return Number(m[1]);
  }
}

export interface TortureOptions {
  /** Device spec, as for every command (sim:PATH, a PCI address, ...). */
  spec: string;
  seed: number;
  /** Fuzz cases and stress steps (each). */
  steps: number;
  /** Wall-clock budget (ms) of the worker's run; 0: none. */
  timeMs: number;
  only: "fuzz" | "stress" | null;
  /** A call that takes longer is a hang (ms). */
  stepTimeoutMs: number;
  /** Where replay files go (created when needed). */
  outDir: string;
  /** A JSON-lines log of every call, finding and kernel-log record. */
  events?: string;
  /** Replays this file instead of a run. */
  replay?: string;
  /** The worker's command line before its arguments (default: this program). */
  self?: string[];
}

export interface TortureFinding {
  id: number;
  kinds: FindingKind[];
  /** The call (1-based) during or after which it showed. */
  step: number;
  /** That call. */
  what: string;
  phase: string;
  case?: string;
  detail: string[];
  kmsg: string[];
  replayFile: string;
  /** The command that replays it (on a fresh device of the same kind when this one is wedged). */
  replayCommand: string;
}

export interface TortureReport {
  device: string;
  seed: number;
  mode: "run" | "replay";
  findings: TortureFinding[];
  fuzz: FuzzCounts | null;
  stress: StressCounts | null;
  calls: number;
  /** Where the kernel log was read from; null: not watched (and why, in notes). */
  kernelLog: string | null;
  notes: string[];
  durationMs: number;
  interrupted: string | null;
  /** The worker could not start the run (device not openable, not migratable): its one line. */
  error?: string;
  replay?: { file: string; reproduced: boolean; diffs: string[]; original: ReplayHeader["finding"] };
}

/** The command line that runs this program again (deno run ... cli.ts, or the compiled binary). */
export function selfArgv(): string[] {
  const exe = Deno.execPath();
  if (!/(^|\/)deno$/.test(exe)) return [exe];
  const cli = new URL("../../../cli.ts", import.meta.url).pathname;
  return [exe, "run", "--allow-ffi", "--allow-read", "--allow-write", "--allow-env", cli];
}

interface Pending {
  kinds: Set<FindingKind>;
  step: number;
  phase: string;
  case?: string;
  detail: string[];
  kmsg: string[];
}

/** Runs the torture (or a replay) on `opts.spec`; never throws for what the device does. */
export async function runTorture(opts: TortureOptions, sys: Sys = libc()): Promise<TortureReport> {
  const t0 = performance.now();
  mkdirs(sys, opts.outDir);
  const tracePath = `${opts.outDir}/trace-${sys.getpid()}.jsonl`;
  const report: TortureReport = {
    device: opts.spec,
    seed: opts.seed,
    mode: opts.replay ? "replay" : "run",
    findings: [],
    fuzz: null,
    stress: null,
    calls: 0,
    kernelLog: null,
    notes: [],
    durationMs: 0,
    interrupted: null,
  };
  const header = opts.replay ? readReplayHeader(sys, opts.replay) : null;
  let kmsg: KmsgSource | null = null;
  try {
    kmsg = kmsgFor(sys, opts.spec);
    report.kernelLog = kmsg.name;
  } catch (e) {
    report.notes.push(
      `the kernel log is not watched (${e instanceof Error ? e.message : e}): run as root to have /dev/kmsg`,
    );
  }
  const events = opts.events ? sys.open(opts.events, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, 0o644) : -1;
  const enc = new TextEncoder();
  const event = (v: unknown) => {
    if (events >= 0) writeAll(sys, events, enc.encode(JSON.stringify(v) + "\n"));
  };

  const pending = new Map<number, Pending>();
  let phase = "setup";
  let caseName: string | undefined;
  const at = (step: number): Pending => {
    let p = pending.get(step);
    if (!p) pending.set(step, p = { kinds: new Set(), step, phase, case: caseName, detail: [], kmsg: [] });
    return p;
  };
  const whatOf = new Map<number, string>();
  let current = 0; // the call in progress (0: none)
  let last = 0; // the last call that ended
  let startedAt = performance.now();
  let hung = false;
  let summary: Record<string, unknown> | null = null;
  const diffs: { n: number; text: string }[] = [];

  // The sanitizers' own limits (the issue's item 3): lockdep stops after its first
  // report; KASAN reports only its first bug unless booted with kasan_multi_shot.
  let multiShot = true;
  if (kmsg?.name === "/dev/kmsg") {
    try {
      multiShot = /\bkasan_multi_shot\b|\bkasan\.multi_shot\b/.test(
        new TextDecoder().decode(readSmallFile(sys, "/proc/cmdline")),
      );
    } catch { /* unknown: say nothing */ }
  }
  const limits = new Set<string>();
  const limit = (key: string, text: string) => {
    if (limits.has(key)) return;
    limits.add(key);
    report.notes.push(text);
  };
  const takeKmsg = (step: number) => {
    if (!kmsg) return;
    for (const r of kmsg.drain()) {
      event({ t: "kmsg", n: step, level: r.level, text: r.text });
      if (/turning off the locking correctness validator/.test(r.text)) {
        limit(
          "lockdep",
          `lockdep turned itself off at call ${step}: later locking bugs go unreported (reboot, then replay)`,
        );
      }
      if (/KASAN/.test(r.text) && !multiShot) {
        limit(
          "kasan",
          `KASAN reported at call ${step} without kasan_multi_shot on the kernel command line: later KASAN bugs go unreported`,
        );
      }
      const other = otherTask(sys, r.text, pid);
      if (other !== null) {
        limit(
          `task ${other}`,
          `the kernel reported task ${other} blocked, which is not this run's worker (a task an earlier run ` +
            `left wedged): not counted as a finding of this run`,
        );
        continue;
      }
      if (!isBugReport(r.text) && !pending.get(step)?.kinds.has("kernel-log")) continue;
      const p = at(step);
      p.kinds.add("kernel-log");
      if (p.kmsg.length < KMSG_KEEP) p.kmsg.push(r.text);
    }
  };

  // The pipes: progress (worker -> us), ack (us -> worker).
  const [pr, pw] = sys.pipe(O.CLOEXEC);
  const [ar, aw] = sys.pipe(O.CLOEXEC);
  sys.fcntl(pw, F.SETFD, 0);
  sys.fcntl(ar, F.SETFD, 0);
  const args = ["check", "--torture-worker", `${pw},${ar}`, "--device", opts.spec, "--trace", tracePath];
  if (opts.replay) args.push("--replay", opts.replay);
  else {
    args.push("--seed", String(opts.seed), "--steps", String(opts.steps), "--time", String(opts.timeMs / 1000));
    if (opts.only) args.push("--only", opts.only);
  }
  let pid: number | undefined;
  try {
    pid = spawn([...(opts.self ?? selfArgv()), ...args], environment());
  } finally {
    sys.close(pw);
    sys.close(ar);
  }
  sys.fcntl(pr, F.SETFL, sys.fcntl(pr, F.GETFL) | O.NONBLOCK);
  void FD_CLOEXEC;

  let interrupted: string | null = null;
  const release = claimSignals((sig) => interrupted = sig);
  const buf = new Uint8Array(1 << 16);
  const dec = new TextDecoder();
  let partial = "";
  let eof = false;
  const ack = new Uint8Array([1]);
  try {
    while (!eof) {
      let rev = [0];
      try {
        rev = sys.poll([{ fd: pr, events: POLL.IN }], 20);
      } catch (e) {
        if (!isErrno(e, "EINTR")) throw e; // a signal: looked at below
      }
      if (rev[0]) {
        for (;;) {
          let n: number;
          try {
            n = sys.read(pr, buf);
          } catch (e) {
            if (isErrno(e, "EAGAIN")) break;
            if (isErrno(e, "EINTR")) continue;
            throw e;
          }
          if (n === 0) {
            eof = true;
            break;
          }
          const lines = (partial + dec.decode(buf.subarray(0, n), { stream: true })).split("\n");
          partial = lines.pop() ?? "";
          for (const l of lines) {
            if (!l) continue;
            const m = JSON.parse(l);
            event(m);
            switch (m.t) {
              case "start":
                // What was logged up to the end of the last call was taken at its end
                // (the worker waited for our ack); what comes now is this call's doing.
                current = m.n;
                whatOf.set(m.n, m.what);
                startedAt = performance.now();
                break;
              case "end":
                takeKmsg(m.n);
                last = m.n;
                current = 0;
                try {
                  sys.write(aw, ack);
                } catch { /* the worker is gone: its pipe says so */ }
                break;
              case "case":
                phase = m.phase;
                caseName = m.case;
                break;
              case "finding": {
                const p = at(m.n);
                p.kinds.add(m.kind);
                p.detail.push(m.detail);
                if (m.case) p.case = m.case;
                break;
              }
              case "note":
                report.notes.push(m.text);
                break;
              case "diff":
                diffs.push({ n: m.n, text: m.text });
                break;
              case "summary":
                summary = m;
                break;
              case "error":
                report.error = m.text;
                break;
            }
          }
        }
      }
      if (eof) break;
      // A call that does not come back.
      const now = performance.now();
      const bound = current ? opts.stepTimeoutMs : last === 0 ? START_BOUND_MS : Infinity;
      if (now - startedAt > bound) {
        takeKmsg(current);
        const p = at(current);
        p.kinds.add("hang");
        p.detail.push(`${whatOf.get(current)} did not return within ${opts.stepTimeoutMs / 1000} s`);
        hung = true;
        break;
      }
      if (current === 0 && last === 0 && now - startedAt > START_BOUND_MS) break;
      if (current) takeKmsg(current);
      if (interrupted) break;
      await nextTurn();
    }
  } catch (e) {
    try {
      sendSignal(pid, SIGKILL); // never leave the worker behind
    } catch { /* gone */ }
    throw e;
  } finally {
    release();
  }

  let exit: { code: number | null; signal: number | null } | null = null;
  if (!eof) {
    try {
      sendSignal(pid, SIGKILL);
    } catch { /* gone */ }
    // A task asleep in the kernel does not die until its call returns: wait a little,
    // then abandon it.
    const until = performance.now() + 2000;
    while (performance.now() < until) {
      let r = [0];
      try {
        r = sys.poll([{ fd: pr, events: POLL.IN | POLL.HUP }], 50);
      } catch (e) {
        if (!isErrno(e, "EINTR")) throw e;
      }
      if (r[0] & POLL.HUP) {
        eof = true;
        break;
      }
      try {
        while (sys.read(pr, buf) > 0) { /* discard */ }
      } catch { /* EAGAIN */ }
      await nextTurn();
    }
    if (!eof) {
      report.notes.push(`the worker (pid ${pid}) did not die: it is asleep in the kernel; the device is wedged`);
    }
  }
  if (eof) {
    // A worker killed in the kernel (an Oops) may never finish exiting (its device fd's
    // release can wait on a lock the dead call held): wait a bounded time, then abandon it.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = new Promise<null>((r) => timer = setTimeout(() => r(null), 5000));
    exit = await Promise.race([waitChild(pid), gaveUp]);
    clearTimeout(timer);
    if (!exit) {
      report.notes.push(
        `the worker (pid ${pid}) did not finish exiting: it is stuck in the kernel; the device is wedged`,
      );
    }
  }
  sys.close(pr);
  sys.close(aw);
  takeKmsg(current || last);
  if (interrupted) report.interrupted = interrupted;
  if (!summary && !hung && !interrupted && !report.error) {
    const how = !exit
      ? "died and is stuck in the kernel"
      : exit.signal
      ? `was killed by signal ${exit.signal}`
      : `exited with code ${exit.code}`;
    const p = at(current || last);
    p.kinds.add("crash");
    p.detail.push(`the worker ${how} during ${whatOf.get(current || last) ?? "its start"}`);
  }
  if (!summary) {
    report.notes.push(`the run ended during ${phase}${caseName ? ` (${caseName})` : ""}, at call ${current || last}`);
  }
  if (summary) {
    report.fuzz = (summary.fuzz as FuzzCounts) ?? null;
    report.stress = (summary.stress as StressCounts) ?? null;
  }
  report.calls = (summary?.calls as number) ?? (current || last);
  if (report.fuzz && opts.only === "stress") report.fuzz = null;
  if (report.stress && opts.only === "fuzz") report.stress = null;

  // Findings, in call order, each with its replay file.
  let id = 0;
  for (const p of [...pending.values()].sort((a, b) => a.step - b.step)) {
    id++;
    const file = `${opts.outDir}/finding-${opts.replay ? "replay-" : ""}${id}.replay`;
    const f: TortureFinding = {
      id,
      kinds: [...p.kinds],
      step: p.step,
      what: whatOf.get(p.step) ?? "",
      phase: p.phase,
      case: p.case,
      detail: p.detail,
      kmsg: p.kmsg,
      replayFile: file,
      replayCommand: `vfio-mig check --torture --replay ${file} --device ${opts.spec} --i-accept-state-loss`,
    };
    if (!opts.replay) writeReplay(sys, tracePath, file, opts, f);
    else {
      f.replayFile = opts.replay;
      f.replayCommand = `vfio-mig check --torture --replay ${opts.replay} --device ${opts.spec} --i-accept-state-loss`;
    }
    report.findings.push(f);
  }
  if (header) {
    const want = header.finding;
    const seen = new Set(report.findings.flatMap((f) => f.kinds));
    const stepDiff = diffs.some((d) => d.n === want.step);
    const reached = report.calls >= want.step || hung;
    const reproduced = want.kinds.every((k) =>
      k === "kernel-log" || k === "hang" || k === "crash" ? seen.has(k) : reached && !stepDiff
    );
    report.replay = { file: opts.replay!, reproduced, diffs: diffs.map((d) => d.text), original: want };
  }
  try {
    sys.unlink(tracePath);
  } catch { /* not written */ }
  if (!report.findings.length) {
    try {
      sys.rmdir(opts.outDir);
    } catch { /* not empty, or not ours */ }
  }
  kmsg?.close();
  if (events >= 0) sys.close(events);
  report.durationMs = Math.round(performance.now() - t0);
  return report;
}

/** mkdir -p. */
function mkdirs(sys: Sys, dir: string): void {
  try {
    sys.mkdir(dir, 0o755);
  } catch (e) {
    if (isErrno(e, "EEXIST")) return;
    const parent = dir.replace(/\/+[^/]*\/*$/, "");
    if (!isErrno(e, "ENOENT") || !parent || parent === dir) throw e;
    mkdirs(sys, parent);
    sys.mkdir(dir, 0o755);
  }
}

/** A finding's replay file: its header, then the trace's lines up to its call. */
function writeReplay(sys: Sys, tracePath: string, file: string, opts: TortureOptions, f: TortureFinding): void {
  const fd = sys.open(file, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, 0o644);
  const enc = new TextEncoder();
  try {
    const header: ReplayHeader = {
      "vfio-mig-torture-replay": 1,
      device: opts.spec,
      seed: opts.seed,
      finding: { kinds: f.kinds, step: f.step, what: f.what, detail: f.detail, kmsg: f.kmsg },
    };
    writeAll(sys, fd, enc.encode(JSON.stringify(header) + "\n"));
    let lines: Iterable<string> = [];
    try {
      lines = fileLines(sys, tracePath);
    } catch { /* no trace */ }
    for (const l of lines) {
      const m = /^\{"(n|r)":(\d+)/.exec(l);
      if (m && Number(m[2]) > f.step) break;
      writeAll(sys, fd, enc.encode(l + "\n"));
    }
  } finally {
    sys.close(fd);
  }
}
