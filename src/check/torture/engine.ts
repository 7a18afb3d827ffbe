// The torture worker: runs in a child process the supervisor (supervisor.ts) can
// abandon, drives one device through resume-data fuzzing and session stress, and
// reports over the progress pipe (channel.ts). Every call it makes is traced first.
//
// Fuzz: from the state the device itself saved, each case goes STOP -> RESUMING, writes
// a mutated stream (mutate.ts), and asks RESUMING -> STOP; the driver refuses it at a
// write, refuses it at RESUMING -> STOP, or accepts it. An accepted state is exercised
// (RUNNING, every region read and written back through the device fd, config space
// included, mmap where the region allows it) and saved; then the original is loaded
// back, and, for a device whose saves are deterministic (checked first), saved again
// and compared.
//
// Stress: a random walk over every state the device supports (targets 0..7; the
// kernel's own path rules pick the arcs; STOP_COPY -> PRE_COPY* is never asked, it hangs
// kernels 6.2 until the 2026 fix), interleaved with resets, reopens, data_fd closes
// mid-transfer, reads and writes of odd sizes, preads at odd offsets on data_fds,
// region reads at odd offsets, a second descriptor of the device file, and
// MIG_DATA_SIZE and PRECOPY_INFO in every state; every 100 steps, and at the end, the
// original state is loaded back (and compared) as after a fuzz case.
//
// What the worker itself calls a finding (the supervisor adds the kernel log, hangs and
// crashes): an errno or result the uAPI (include/uapi/linux/vfio.h, the reference in
// docs) does not allow, and a device that cannot be brought back.

import { createHash } from "node:crypto";
import type { Sys } from "../../../ffi/sys.ts";
import {
  DeviceState,
  isHangingArc,
  resolvePath,
  stateName,
  supportedStates,
  supportsState,
} from "../../vfio/state_machine.ts";
import { expectedArc } from "../arcs.ts";
import { b64, type Call, Executor, type Result } from "./calls.ts";
import { LineWriter, TracedExecutor } from "./channel.ts";
import { knownFields, type Mutation, type Piece, randomCase, structuredCases } from "./mutate.ts";
import { Rng } from "./rng.ts";
import { V1Torture } from "./v1.ts";

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY, PRE_COPY_P2P } = DeviceState;
const CHUNK = 1 << 20;
const INLINE_CHUNK = 1 << 16;
const MFD_CLOEXEC = 1;
/** VFIO_PCI_NUM_REGIONS: BAR0-5, ROM, config, VGA. */
const PCI_REGIONS = 9;
export const CONFIG_REGION = 7;
const ODD_SIZES = [1, 3, 7, 8, 13, 4095, 4096, 4097, 65537, CHUNK];

export interface WorkerOptions {
  spec: string;
  seed: number;
  /** Fuzz cases, and stress steps. */
  steps: number;
  /** Wall-clock budget for the whole run (ms); 0: none. */
  timeMs: number;
  only: "fuzz" | "stress" | null;
  tracePath: string;
  progressFd: number;
  ackFd: number;
}

export type FindingKind = "errno" | "no-return" | "unsavable" | "kernel-log" | "hang" | "crash";

export interface FuzzCounts {
  cases: number;
  refusedWrite: number;
  refusedStop: number;
  accepted: number;
  format: string;
  deterministic: boolean | null;
}

export interface StressCounts {
  steps: number;
  arcs: string[];
  resets: number;
  reopens: number;
  midTransferCloses: number;
  recoveries: number;
}

interface OpenFd {
  slot: number;
  kind: "save" | "resume";
  /** The session is still the device's (no reset, reopen, or arc out of it since). */
  alive: boolean;
  /** Bytes written (resume). */
  written: number;
  state: DeviceState;
}

/** Errno values the kernel uses inside itself and must never hand to user space (include/linux/errno.h). */
function kernelInternal(errno: string | null): boolean {
  const m = errno ? /^E(\d+)$/.exec(errno) : null;
  return m !== null && Number(m[1]) >= 512;
}

/** Thrown when the device cannot be brought back: the run ends there. */
export class Stop extends Error {}

export class TortureWorker {
  readonly t: TracedExecutor;
  readonly rng: Rng;
  flags = 0;
  cur: DeviceState | null = null;
  original: { fd: number; size: number; sha: string; head: Uint8Array } | null = null;
  deterministic: boolean | null = null;
  readonly regions: { index: number; size: number; flags: number }[] = [];
  readonly deadline: number;
  findings = 0;
  readonly #seen = new Set<string>();
  phase: "setup" | "fuzz" | "stress" | "end" = "setup";
  caseName = "";
  caseStart = 0;
  readonly fuzz: FuzzCounts = {
    cases: 0,
    refusedWrite: 0,
    refusedStop: 0,
    accepted: 0,
    format: "unknown",
    deterministic: null,
  };
  readonly stress: StressCounts = { steps: 0, arcs: [], resets: 0, reopens: 0, midTransferCloses: 0, recoveries: 0 };
  readonly #arcs = new Set<string>();
  readonly fds: OpenFd[] = [];
  #resets = 0;
  hasDup = false;
  /** The migration region of a v1 device (v1.ts drives it), or null for uAPI v2. */
  v1: { index: number; size: number } | null = null;

  constructor(readonly sys: Sys, readonly opts: WorkerOptions) {
    this.t = new TracedExecutor(
      new Executor(sys, opts.spec),
      new LineWriter(sys, opts.tracePath),
      opts.progressFd,
      opts.ackFd,
    );
    this.rng = new Rng(opts.seed);
    this.deadline = opts.timeMs > 0 ? Date.now() + opts.timeMs : Infinity;
  }

  /** A finding the worker saw (deduplicated by kind and text). */
  finding(kind: FindingKind, detail: string): void {
    const key = `${kind}:${detail}`;
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    this.findings++;
    this.t.send({
      t: "finding",
      n: this.t.n,
      kind,
      detail,
      phase: this.phase,
      case: this.phase === "fuzz" ? this.caseName : undefined,
      caseStart: this.caseStart,
    });
  }

  note(text: string): void {
    this.t.send({ t: "note", text });
  }

  call(c: Call): Result {
    return this.t.call(c);
  }

  // ---------------------------------------------------------------------------
  // The state machine, as the kernel walks it

  get(): DeviceState | null {
    const r = this.call({ op: "get" });
    if (r.errno) {
      this.finding(
        "errno",
        `GET MIG_DEVICE_STATE failed with ${r.errno} (it reads the driver's state and must not fail)`,
      );
      return this.cur = null;
    }
    if (r.ret! < 0 || r.ret! > 7) this.finding("errno", `GET MIG_DEVICE_STATE answered ${r.ret}, not a state`);
    return this.cur = r.ret as DeviceState;
  }

  /** One SET, checked against the kernel's table; marks sessions the arc ends. */
  set(to: DeviceState): Result {
    const from = this.cur;
    if (from !== null && isHangingArc(from, to)) {
      throw new Error(`torture: refusing ${stateName(from)} -> ${stateName(to)}`);
    }
    const r = this.call({ op: "set", state: to, from });
    const now = this.get();
    if (kernelInternal(r.errno)) {
      this.finding(
        "errno",
        `SET ${stateName(from ?? -1)} -> ${stateName(to)} failed with ${r.errno}, a kernel-internal errno`,
      );
    }
    if (from !== null) {
      const e = expectedArc(this.flags, from, to);
      const arc = `${stateName(from)} -> ${stateName(to)}`;
      if (e.errno !== null && r.errno === null) {
        this.finding("errno", `SET ${arc} succeeded; the kernel's table refuses it (EINVAL)`);
      } else if (e.errno !== null && r.errno !== "EINVAL" && r.errno !== null) {
        this.finding("errno", `SET ${arc} failed with ${r.errno}; the kernel's table refuses it with EINVAL`);
      } else if (r.errno === null && now !== null && now !== to) {
        this.finding("errno", `SET ${arc} succeeded but GET then says ${stateName(now)}`);
      } else if (r.errno === null && from === to && r.slot !== undefined) {
        this.finding("errno", `SET ${arc} (the current state) handed out a data_fd`);
      } else if (from === to && r.errno !== null) {
        this.finding("errno", `SET ${arc} (the current state) failed with ${r.errno}; it must succeed`);
      }
      if (r.errno === null) this.#arcs.add(arc);
    }
    // Sessions the path ended.
    if (r.errno === null && from !== null && from !== to) {
      const path = resolvePath(this.flags, from, to) ?? [];
      let prev = from;
      for (const s of path) {
        for (const f of this.fds) {
          if ((f.kind === "save" && !isSaving(s)) || (f.kind === "resume" && prev === RESUMING && s !== RESUMING)) {
            f.alive = false;
          }
        }
        prev = s;
      }
    } else if (r.errno !== null) {
      for (const f of this.fds) {
        if (
          now === null || now === ERROR || (f.kind === "save" && !isSaving(now)) ||
          (f.kind === "resume" && now !== RESUMING)
        ) {
          f.alive = false;
        }
      }
    }
    if (r.slot !== undefined) {
      this.fds.push({ slot: r.slot, kind: to === RESUMING ? "resume" : "save", alive: true, written: 0, state: to });
    }
    return r;
  }

  reset(): void {
    this.#resets++;
    const r = this.call({ op: "reset" });
    for (const f of this.fds) f.alive = false;
    const now = this.get();
    if (r.errno === null && now !== null && now !== RUNNING) {
      this.finding("errno", `VFIO_DEVICE_RESET succeeded but the state is ${stateName(now)}, not RUNNING`);
    }
  }

  closeSlot(slot: number): void {
    const i = this.fds.findIndex((f) => f.slot === slot);
    if (i >= 0) this.fds.splice(i, 1);
    this.call({ op: "close", slot });
  }

  closeAllFds(): void {
    while (this.fds.length) this.closeSlot(this.fds[0].slot);
  }

  /** Brings the device to `target` one arc at a time, resetting when stuck. */
  reach(target: DeviceState): boolean {
    for (let i = 0; i < 16; i++) {
      const cur = this.get();
      if (cur === target) return true;
      if (cur === null || cur === ERROR) {
        if (this.#resets > 10_000) return false;
        this.reset();
        continue;
      }
      const path = resolvePath(this.flags, cur, target) ?? resolvePath(this.flags, cur, STOP);
      if (!path?.length) return false;
      const r = this.set(path[0]);
      if (r.slot !== undefined) this.closeSlot(r.slot);
      if (r.errno !== null) this.reset();
    }
    return this.get() === target;
  }

  // ---------------------------------------------------------------------------
  // Save and load

  /** A STOP_COPY save from STOP: its size and SHA-256, or why it failed. */
  save(keep?: (data: Uint8Array, off: number) => void): { size: number; sha: string } | { error: string } {
    if (!this.reach(STOP)) return { error: `cannot bring the device to STOP (it is ${this.stateText()})` };
    const r = this.set(STOP_COPY);
    if (r.errno) return { error: `STOP -> STOP_COPY failed with ${r.errno}` };
    if (r.slot === undefined) return { error: "STOP -> STOP_COPY handed out no data_fd" };
    const hash = createHash("sha256");
    let size = 0;
    try {
      for (;;) {
        const rr = this.call({ op: "read", slot: r.slot, len: CHUNK });
        if (rr.errno === "ENOMSG") {
          this.finding("errno", "read() of a STOP_COPY data_fd failed with ENOMSG (the uAPI: not in STOP_COPY)");
        }
        if (rr.errno) return { error: `read() of the STOP_COPY data_fd failed with ${rr.errno} after ${size} bytes` };
        if (rr.ret! > CHUNK) this.finding("errno", `read() of ${CHUNK} bytes returned ${rr.ret}`);
        if (rr.ret === 0) break;
        const data = this.t.x.lastRead;
        keep?.(data, size);
        hash.update(data);
        size += data.length;
      }
    } finally {
      this.closeSlot(r.slot);
    }
    const back = this.set(STOP);
    if (back.errno) return { error: `STOP_COPY -> STOP failed with ${back.errno}` };
    return { size, sha: hash.digest("hex") };
  }

  /** Writes pieces into a resume data_fd; the errno of the write that failed, or null. */
  feed(slot: number, pieces: Piece[]): string | null {
    const fd = this.fds.find((f) => f.slot === slot);
    for (const p of pieces) {
      if ("orig" in p) {
        let [off, len] = p.orig;
        while (len > 0) {
          const n = Math.min(len, CHUNK);
          const e = this.#write(fd, { op: "write", slot, orig: [off, n] }, n);
          if (typeof e === "string") return e;
          off += e;
          len -= e;
        }
      } else {
        let bytes = "flip" in p ? this.flipped(p.flip[0], p.flip[1]) : p.bytes;
        while (bytes.length > 0) {
          const n = Math.min(bytes.length, INLINE_CHUNK);
          const e = this.#write(fd, { op: "write", slot, data: b64(bytes.subarray(0, n)) }, n);
          if (typeof e === "string") return e;
          bytes = bytes.subarray(e);
        }
      }
    }
    return null;
  }

  /** One write; the bytes taken, or the errno. */
  #write(fd: OpenFd | undefined, c: Call, len: number): number | string {
    const r = this.call(c);
    if (r.errno) {
      if (kernelInternal(r.errno)) {
        this.finding("errno", `write() of a RESUMING data_fd failed with ${r.errno}, a kernel-internal errno`);
      }
      if (r.errno === "ENODEV" && fd?.alive && this.cur === RESUMING) {
        this.finding("errno", "write() of a RESUMING data_fd answered ENODEV: the session ended with no reset or arc");
      }
      return r.errno;
    }
    if (r.ret! > len) this.finding("errno", `write() of ${len} bytes returned ${r.ret}`);
    if (r.ret === 0) return "0 bytes taken";
    if (fd) fd.written += r.ret!;
    return Math.min(r.ret!, len);
  }

  /** The original's byte `at` XOR `mask`. */
  flipped(at: number, mask: number): Uint8Array {
    const b = new Uint8Array(1);
    this.sys.pread(this.original!.fd, b, at);
    b[0] ^= mask;
    return b;
  }

  /** Loads the device's own saved state: null, or why it failed. */
  loadOriginal(): string | null {
    if (!this.reach(STOP)) return `cannot bring the device to STOP (it is ${this.stateText()})`;
    const r = this.set(RESUMING);
    if (r.errno) return `STOP -> RESUMING failed with ${r.errno}`;
    if (r.slot === undefined) return "STOP -> RESUMING handed out no data_fd";
    const e = this.feed(r.slot, [{ orig: [0, this.original!.size] }]);
    if (e) {
      this.closeSlot(r.slot);
      return `write() of its own saved state failed with ${e}`;
    }
    const back = this.set(STOP);
    this.closeSlot(r.slot);
    if (back.errno) return `RESUMING -> STOP after its own saved state failed with ${back.errno}`;
    return null;
  }

  /**
   * Brings the device back: its own saved state loads, and (deterministic devices, when
   * `compare`) saves to the same bytes. Throws Stop when it cannot be loaded.
   */
  bringBack(compare: boolean): void {
    this.closeAllFds();
    const e = this.loadOriginal();
    if (e) {
      this.finding("no-return", `the device's own saved state no longer loads: ${e}`);
      throw new Stop();
    }
    if (!compare || !this.deterministic) return;
    const s = this.save();
    if ("error" in s) {
      this.finding("no-return", `after its own state was loaded back, the device no longer saves: ${s.error}`);
      throw new Stop();
    }
    if (s.sha !== this.original!.sha) {
      this.finding(
        "no-return",
        `after its own state was loaded back, the device saves other bytes (${s.size} bytes, ` +
          `was ${this.original!.size}): something of an earlier case survived the load`,
      );
    }
  }

  stateText(): string {
    const s = this.get();
    return s === null ? "in an unknown state" : stateName(s);
  }

  // ---------------------------------------------------------------------------
  // Setup

  setup(): void {
    const o = this.call({ op: "open" });
    if (o.errno) throw new Error(this.t.x.lastMessage || `cannot open ${this.opts.spec}: ${o.errno}`);
    const f = this.call({ op: "flags" });
    if (f.errno) {
      // A v1 device (the deprecated region protocol): its migration region instead.
      for (let i = 0; i < 16; i++) {
        const r = this.call({ op: "region-info", index: i });
        const info = this.t.x.regions.get(i);
        if (r.errno || !info) continue;
        if (info.type?.type === 3 && info.type.subtype === 1) this.v1 = { index: i, size: info.size };
        else if (info.size > 0 && i < PCI_REGIONS) this.regions.push({ index: i, size: info.size, flags: info.flags });
      }
      if (this.v1) return;
      throw new Error(
        `${this.opts.spec}: GET MIGRATION failed with ${f.errno}: not a uAPI v2 migration device ` +
          `(--torture drives uAPI v2 only; v1 region devices such as mtty_v1 are not supported yet)`,
      );
    }
    this.flags = f.ret!;
    for (let i = 0; i < PCI_REGIONS; i++) {
      const r = this.call({ op: "region-info", index: i });
      const info = this.t.x.regions.get(i);
      if (!r.errno && info && info.size > 0) this.regions.push({ index: i, size: info.size, flags: info.flags });
    }
    // The device's own state, into a memfd and the trace.
    const memfd = this.sys.memfd("vfio-mig-torture-original", MFD_CLOEXEC);
    const head = new Uint8Array(64);
    const s = this.save((data, off) => {
      this.sys.pwrite(memfd, data, off);
      if (off < 64) head.set(data.subarray(0, 64 - off), off);
    });
    if ("error" in s) throw new Error(`cannot save the device's own state: ${s.error}`);
    this.original = { fd: memfd, size: s.size, sha: s.sha, head: head.subarray(0, Math.min(64, s.size)) };
    this.t.x.original = { fd: memfd, size: s.size };
    const buf = new Uint8Array(CHUNK);
    for (let off = 0; off < s.size; off += CHUNK) {
      const n = this.sys.pread(memfd, buf.subarray(0, Math.min(CHUNK, s.size - off)), off);
      this.t.blob(off, buf.subarray(0, n));
    }
    const again = this.save();
    this.deterministic = !("error" in again) && again.sha === s.sha;
    this.fuzz.deterministic = this.deterministic;
    this.fuzz.format = knownFields(this.original.head, s.size).format;
    this.note(
      `saved state: ${s.size} bytes (format ${this.fuzz.format}); saves ${
        this.deterministic
          ? "are deterministic: the device's state is compared after each load back"
          : "differ: only loads are checked"
      }`,
    );
  }

  // ---------------------------------------------------------------------------
  // Fuzz

  runFuzz(): void {
    this.phase = "fuzz";
    const structured = structuredCases(this.original!.head, this.original!.size);
    for (let k = 0; k < this.opts.steps && Date.now() < this.deadline; k++) {
      const m = k < structured.length ? structured[k] : randomCase(this.rng, this.original!.size);
      this.fuzzCase(k, m);
    }
  }

  fuzzCase(k: number, m: Mutation): void {
    this.caseName = `case ${k + 1}: ${m.name}`;
    this.caseStart = this.t.n + 1;
    this.t.send({ t: "case", phase: "fuzz", case: this.caseName });
    this.fuzz.cases++;
    this.closeAllFds();
    if (!this.reach(STOP)) {
      this.finding("no-return", `cannot bring the device to STOP before ${this.caseName} (it is ${this.stateText()})`);
      throw new Stop();
    }
    const r = this.set(RESUMING);
    if (r.errno || r.slot === undefined) {
      this.bringBack(false);
      return;
    }
    const werr = this.feed(r.slot, m.pieces);
    let accepted = false;
    if (werr) {
      this.fuzz.refusedWrite++;
      this.closeSlot(r.slot);
      this.reset(); // the way a tool abandons a load
    } else {
      const back = this.set(STOP);
      this.closeSlot(r.slot);
      if (back.errno) {
        this.fuzz.refusedStop++;
        const now = this.cur;
        if (now !== null && now !== RESUMING && now !== ERROR) {
          this.finding("errno", `RESUMING -> STOP failed with ${back.errno} but left the device ${stateName(now)}`);
        }
      } else {
        accepted = true;
        this.fuzz.accepted++;
        this.exercise();
        const s = this.save();
        if ("error" in s) {
          this.finding("unsavable", `the accepted state (${this.caseName}) cannot be saved: ${s.error}`);
        }
      }
    }
    this.bringBack(accepted || k % 8 === 0);
  }

  /** Uses the device the way its users would: RUNNING, every region read and written back, mmap. */
  exercise(): void {
    this.reach(RUNNING);
    for (const reg of this.regions) {
      const len = Math.min(reg.size, 4096);
      const rr = this.call({ op: "region-read", index: reg.index, offset: 0, len });
      if (rr.errno) continue;
      const back = this.t.x.lastRead.slice(0, reg.index === CONFIG_REGION ? len : Math.min(len, 64));
      this.call({ op: "region-write", index: reg.index, offset: 0, data: b64(back) });
      if (reg.flags & 4 /* MMAP */ && reg.size >= 4096) {
        this.call({ op: "mmap", index: reg.index, offset: 0, len: 4096 });
      }
    }
    this.get();
  }

  // ---------------------------------------------------------------------------
  // Stress

  runStress(): void {
    this.phase = "stress";
    this.caseName = "";
    this.caseStart = this.t.n + 1;
    this.t.send({ t: "case", phase: "stress" });
    const states = supportedStates(this.flags);
    for (let step = 1; step <= this.opts.steps && Date.now() < this.deadline; step++) {
      this.stress.steps++;
      this.stressStep(states);
      if (step % 100 === 0) {
        this.stress.recoveries++;
        this.bringBack(true);
      }
    }
    this.stress.recoveries++;
    this.bringBack(true);
  }

  stressStep(states: DeviceState[]): void {
    const action = this.rng.weighted(
      [
        [34, "set"],
        [14, "read"],
        [10, "write"],
        [6, "close"],
        [3, "pread"],
        [4, "reset"],
        [2, "reopen"],
        [7, "region"],
        [5, "dup"],
        [4, "data-size"],
        [6, "precopy-info"],
      ] as const,
    );
    const pickFd = (kind?: "save" | "resume") => {
      const c = this.fds.filter((f) => !kind || f.kind === kind);
      return c.length ? this.rng.pick(c) : null;
    };
    switch (action) {
      case "set": {
        let to = this.rng.int(8) as DeviceState;
        if (this.cur === null) this.get();
        // Mostly states the device supports; sometimes ERROR or an unsupported one.
        if (!supportsState(this.flags, to) && this.rng.chance(0.7)) to = this.rng.pick(states);
        // Most often a request not yet taken from here, so that every arc gets its turn.
        const from = this.cur;
        const fresh = from === null
          ? []
          : states.filter((s) => !this.#arcs.has(`${stateName(from)} -> ${stateName(s)}`));
        if (fresh.length && this.rng.chance(0.6)) to = this.rng.pick(fresh);
        if (this.cur !== null && isHangingArc(this.cur, to)) to = STOP;
        const r = this.set(to);
        if (r.slot !== undefined && this.fds.length > 4) this.closeSlot(this.fds[0].slot);
        if (r.errno === null) this.everyState();
        if (this.cur === ERROR || this.cur === null) this.reset();
        return;
      }
      case "read": {
        const f = pickFd("save");
        if (!f) return;
        const len = this.rng.pick(ODD_SIZES);
        const r = this.call({ op: "read", slot: f.slot, len });
        if (r.errno === null && r.ret! > len) this.finding("errno", `read() of ${len} bytes returned ${r.ret}`);
        if (r.errno === "ENOMSG" && this.cur === STOP_COPY && f.alive) {
          this.finding("errno", "read() of a STOP_COPY data_fd failed with ENOMSG (the uAPI: not in STOP_COPY)");
        }
        if (r.errno === "ENODEV" && f.alive) {
          this.finding(
            "errno",
            `read() of a ${stateName(this.cur ?? -1)} data_fd answered ENODEV: the session ended with no reset or arc`,
          );
        }
        if (kernelInternal(r.errno)) {
          this.finding("errno", `read() of a data_fd failed with ${r.errno}, a kernel-internal errno`);
        }
        return;
      }
      case "write": {
        const f = pickFd("resume");
        if (!f) return;
        const len = this.rng.pick(ODD_SIZES);
        const size = this.original!.size;
        const piece: Piece = this.rng.chance(0.7) && f.written < size
          ? { orig: [f.written, Math.min(len, size - f.written)] }
          : { bytes: this.rng.bytes(Math.min(len, 4096)) };
        this.feed(f.slot, [piece]);
        return;
      }
      case "close": {
        const f = pickFd();
        if (!f) return;
        if (f.alive) this.stress.midTransferCloses++;
        this.closeSlot(f.slot);
        return;
      }
      case "pread": {
        const f = pickFd();
        if (!f) return;
        const r = this.call({
          op: "pread",
          slot: f.slot,
          len: this.rng.pick(ODD_SIZES),
          offset: 1 + this.rng.int(4096),
        });
        if (r.errno === null) {
          this.finding("errno", "pread() at an offset on a data_fd succeeded (a data_fd is a stream: ESPIPE)");
        }
        return;
      }
      case "reset":
        this.stress.resets++;
        this.reset();
        return;
      case "reopen": {
        this.stress.reopens++;
        const r = this.call({ op: "reopen" });
        this.hasDup = false;
        for (const f of this.fds) f.alive = false;
        if (r.errno) {
          this.finding("no-return", `the device cannot be opened again: ${r.errno}`);
          throw new Stop();
        }
        this.get();
        return;
      }
      case "region": {
        if (!this.regions.length) return;
        const reg = this.rng.pick(this.regions);
        const offset = this.rng.int(Math.max(1, reg.size));
        this.call({
          op: "region-read",
          index: reg.index,
          offset,
          len: this.rng.pick([1, 2, 3, 4, 7, 8]),
          dev2: this.hasDup && this.rng.chance(0.5),
        });
        return;
      }
      case "dup": {
        if (!this.hasDup) {
          this.hasDup = this.call({ op: "dup" }).errno === null;
          return;
        }
        const r = this.call({ op: "get", dev2: true });
        const mine = this.get();
        if (r.errno) this.finding("errno", `GET MIG_DEVICE_STATE on a second fd failed with ${r.errno}`);
        else if (mine !== null && r.ret !== mine) {
          this.finding(
            "errno",
            `a second fd on the device file reads state ${stateName(r.ret!)} where the first reads ${stateName(mine)}`,
          );
        }
        this.call({ op: "data-size", dev2: true });
        return;
      }
      case "data-size":
        this.dataSize();
        return;
      case "precopy-info":
        this.precopyInfo();
        return;
    }
  }

  /** MIG_DATA_SIZE and PRECOPY_INFO on every open data_fd: done in every state reached. */
  everyState(): void {
    this.dataSize();
    this.precopyInfo();
  }

  dataSize(): void {
    const r = this.call({ op: "data-size" });
    if (kernelInternal(r.errno)) this.finding("errno", `MIG_DATA_SIZE failed with ${r.errno}, a kernel-internal errno`);
  }

  precopyInfo(): void {
    for (const f of [...this.fds]) {
      const r = this.call({ op: "precopy-info", slot: f.slot });
      const pre = this.cur === PRE_COPY || this.cur === PRE_COPY_P2P;
      if (r.errno === null && (!pre || f.kind === "resume")) {
        this.finding(
          "errno",
          `VFIO_MIG_GET_PRECOPY_INFO on a ${f.kind} data_fd succeeded in ${
            stateName(this.cur ?? -1)
          } (the uAPI: EINVAL outside PRE_COPY*)`,
        );
      }
      if (kernelInternal(r.errno)) {
        this.finding("errno", `PRECOPY_INFO failed with ${r.errno}, a kernel-internal errno`);
      }
      if (r.errno === "ENODEV" && f.alive && pre && f.kind === "save") {
        this.finding("errno", "PRECOPY_INFO answered ENODEV: the session ended with no reset or arc");
      }
    }
  }

  // ---------------------------------------------------------------------------

  run(): number {
    try {
      this.setup();
      if (this.v1) {
        new V1Torture(this, this.v1.index, this.v1.size).run();
        return this.end();
      }
      if (this.opts.only !== "stress") this.runFuzz();
      if (this.opts.only !== "fuzz") this.runStress();
      this.phase = "end";
      this.closeAllFds();
      this.reach(RUNNING);
    } catch (e) {
      if (!(e instanceof Stop)) throw e;
      this.note("the run stopped: the device cannot be brought back");
    }
    return this.end();
  }

  end(): number {
    this.stress.arcs = [...this.#arcs].sort();
    this.t.send({ t: "summary", fuzz: this.fuzz, stress: this.v1 ? null : this.stress, calls: this.t.n });
    this.t.x.closeAll();
    this.t.trace.close();
    return 0;
  }
}

function isSaving(s: DeviceState): boolean {
  return s === PRE_COPY || s === PRE_COPY_P2P || s === STOP_COPY;
}
