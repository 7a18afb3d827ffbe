// The event emitter the save/load orchestration calls (docs/events.md): one method per
// event type, each building one object of the schema (src/events/schema.ts) and handing
// it to the subscribers (the JSON-lines writer, the progress bar). With no subscriber
// every method returns at its first line: the data path calls progress() per chunk.

import { SysError } from "../../ffi/errno.ts";
import { describeError } from "../errors.ts";
import { VERSION } from "../version.ts";
import { EVENTS_SCHEMA_VERSION } from "./schema.ts";

/** A device as events name it: its index in the stream (0 for one device) and its label. */
export interface DeviceRef {
  index: number;
  label: string;
}

/** One event: the common fields and the type's own (schema.ts lists them). */
export interface MigrationEvent {
  v: number;
  t: number;
  type: string;
  device?: string;
  index?: number;
  [field: string]: unknown;
}

/** Receives every event, in order, synchronously. A subscriber that throws is dropped. */
export interface EventSubscriber {
  event(e: MigrationEvent): void;
  /** The run is over (after result or error): flush, release. */
  close?(): void;
}

export type Phase = "setup" | "pre-copy" | "stop-copy" | "config" | "trailer" | "resume" | "finish";
export type ProgressPhase = "setup" | "pre-copy" | "stop-copy" | "resume" | "finish";
export type TransportStep =
  | "listening"
  | "connected"
  | "authenticated"
  | "refused"
  | "dropped"
  | "init-ack"
  | "peer-result";

/** What each device's PRECOPY_INFO said after an iteration (v1: initialBytes 0, dirtyBytes = pending_bytes). */
export interface IterationDevice {
  device: DeviceRef;
  /** Bytes read from this device in the iteration. */
  bytes: number;
  initialBytes: number;
  dirtyBytes: number;
  /** VFIO_PRECOPY_INFO_REINIT was reported. */
  reinit?: boolean;
}

export interface IterationEnd {
  n: number;
  /** Duration, ms. */
  ms: number;
  /** Bytes moved by the iteration, all devices. */
  bytes: number;
  /** Bytes moved since the start, all devices. */
  totalBytes: number;
  devices: IterationDevice[];
  /** What stop-copy would send (backlog + initial + dirty, or MIG_DATA_SIZE), bytes. */
  estimate: number;
  /** bandwidth x downtime limit, bytes; null (or not finite) before any bandwidth. */
  threshold: number | null;
  /** Bytes/s judged by; null before any. */
  bandwidth: number | null;
  /** Bytes the transport still held unsent. */
  backlog?: number;
  /** MIG_DATA_SIZE summed, when the policy asked for it in this iteration (null: a device could not say). */
  exact?: number | null;
}

export interface Switchover {
  reason: "converged" | "max-precopy" | "requested";
  iterations: number;
  estimate: number;
  /** MIG_DATA_SIZE summed, when the policy asked for it. */
  exact?: number | null;
  threshold: number | null;
  downtimeLimitMs: number;
  /** Bytes/s. */
  bandwidth: number | null;
  precopyMs: number;
}

export interface StartInfo {
  command: "save" | "load";
  mode?: "offline" | "live";
  /** Where the stream goes or comes from (file, -, tcp://HOST:PORT, tcp listener ADDR). */
  target?: string;
  /** save --max-bandwidth: the rate the data is paced to, bytes/s. */
  maxBandwidth?: number;
}

export interface HeaderInfo {
  mode: "offline" | "live";
  protocol: "v1" | "v2";
  devices: { index: number; source: string; protocol: "v1" | "v2"; sizeEstimate: number | null }[];
}

export interface TransportFields {
  peer?: string;
  tls?: boolean;
  acks?: number;
  ok?: boolean;
  message?: string;
  finalState?: string;
  dropped?: number;
  refused?: number;
}

export interface EventsOptions {
  /** The clock, ms (default performance.now): tests give a fake one. */
  now?: () => number;
  /** Wall-clock time of t = 0 (default: now). */
  wallClock?: Date;
  /** Where a subscriber that throws is reported (default: stderr). */
  warn?: (line: string) => void;
}

/** Finite numbers pass; NaN and ±Infinity (a threshold before any bandwidth) become null. */
function finite(x: number | null | undefined): number | null {
  return x !== null && x !== undefined && Number.isFinite(x) ? x : null;
}

/** Bytes and bytes/s: whole numbers (a bandwidth × limit product has decimals nobody needs). */
function whole(x: number | null | undefined): number | null {
  const f = finite(x);
  return f === null ? null : Math.round(f);
}

/** ms with µs precision: shorter lines, and still monotonic. */
function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** Progress samples kept for the rate (one per emitted progress event: 10 a second). */
const RATE_WINDOW_MS = 1000;
const PROGRESS_INTERVAL_MS = 100;

/**
 * The events of one save or load. Create it when the command starts (t = 0), attach
 * subscribers with on(), call start() first and result() or error() last, then close().
 * Every method is synchronous and never throws; with no subscriber it does nothing.
 */
export class Events {
  #subs: EventSubscriber[] = [];
  readonly #now: () => number;
  readonly #t0: number;
  readonly #wall: Date;
  readonly #warn: (line: string) => void;
  #lastProgress = -Infinity;
  #total: number | null = null;
  #rateT: number[] = [];
  #rateB: number[] = [];
  #ended = false;

  constructor(opts: EventsOptions = {}) {
    this.#now = opts.now ?? (() => performance.now());
    this.#t0 = this.#now();
    this.#wall = opts.wallClock ?? new Date();
    this.#warn = opts.warn ?? ((l) => console.error(l));
  }

  /** True when someone listens: callers may skip work that only events need. */
  get active(): boolean {
    return this.#subs.length > 0;
  }

  /** ms since t = 0 on this emitter's clock. */
  elapsed(): number {
    return this.#now() - this.#t0;
  }

  on(sub: EventSubscriber): this {
    this.#subs.push(sub);
    return this;
  }

  off(sub: EventSubscriber): void {
    this.#subs = this.#subs.filter((s) => s !== sub);
  }

  #emit(type: string, dev: DeviceRef | undefined, fields: Record<string, unknown>, now = this.#now()): void {
    const e: MigrationEvent = { v: EVENTS_SCHEMA_VERSION, t: round3(now - this.#t0), type };
    if (dev) {
      e.device = dev.label;
      e.index = dev.index;
    }
    for (const k in fields) if (fields[k] !== undefined) e[k] = fields[k];
    for (const s of this.#subs) {
      try {
        s.event(e);
      } catch (err) {
        this.off(s);
        this.#warn(
          `vfio-mig: warning: an events subscriber failed and was dropped: ${err instanceof Error ? err.message : err}`,
        );
      }
    }
  }

  /** The first event: the command, where the stream goes, and the wall-clock time of t = 0. */
  start(info: StartInfo): void {
    if (!this.active) return;
    this.#emit("start", undefined, {
      wallClock: this.#wall.toISOString(),
      epochMs: this.#wall.getTime(),
      command: info.command,
      tool: `vfio-mig ${VERSION}`,
      pid: Deno.pid,
      mode: info.mode,
      target: info.target,
      maxBandwidth: info.maxBandwidth,
    });
  }

  /**
   * The devices in stream order, once they are open and their order is known (a load:
   * after the header and --map), before any event that names one.
   */
  devices(devices: DeviceRef[]): void {
    if (!this.active) return;
    this.#emit("devices", undefined, { devices: devices.map((d) => ({ index: d.index, device: d.label })) });
  }

  /** The stream header written (save) or read (load). Sets the progress total to the summed estimate. */
  header(h: HeaderInfo): void {
    const ests = h.devices.map((d) => d.sizeEstimate);
    const total = ests.every((x) => typeof x === "number") ? ests.reduce((a, b) => a! + b!, 0) : null;
    this.#total = total;
    if (!this.active) return;
    this.#emit("header", undefined, { mode: h.mode, protocol: h.protocol, sizeEstimate: total, devices: h.devices });
  }

  /** The size estimate progress events carry (bytes; null: unknown). header() sets it too. */
  setTotal(total: number | null): void {
    this.#total = finite(total);
  }

  /**
   * A device state change that happened: `from` and `to` as the kernel names them
   * (DeviceState names for v2; v1StateName() text for v1, with the bits in `bits`),
   * `ms` how long the SET took. `error`: the SET failed (the errno name or message).
   */
  stateChange(
    dev: DeviceRef,
    protocol: "v1" | "v2",
    from: string | null,
    to: string,
    ms: number,
    extra: { bits?: { from: number | null; to: number }; reset?: boolean; error?: string } = {},
  ): void {
    if (!this.active) return;
    this.#emit("state", dev, {
      protocol,
      from,
      to,
      ms: round3(Math.max(ms, 0)),
      fromBits: extra.bits?.from ?? undefined,
      toBits: extra.bits?.to,
      reset: extra.reset || undefined,
      error: extra.error,
    });
  }

  /**
   * Runs one SET (`fn`) and emits its state event with its duration; a SET that throws
   * is emitted with `error` (the errno name when it is a SysError) and rethrown.
   * Without subscribers it only calls fn.
   */
  timedSet<T>(
    dev: DeviceRef,
    protocol: "v1" | "v2",
    from: string | null,
    to: string,
    fn: () => T,
    bits?: { from: number | null; to: number },
  ): T {
    if (!this.active) return fn();
    const t = this.#now();
    try {
      const r = fn();
      this.stateChange(dev, protocol, from, to, this.#now() - t, { bits });
      return r;
    } catch (e) {
      const error = e instanceof SysError ? e.code : e instanceof Error ? e.message : String(e);
      this.stateChange(dev, protocol, from, to, this.#now() - t, { bits, error });
      throw e;
    }
  }

  /** A phase starts or ends (for all devices, or `device`); at the end its bytes and duration. */
  phase(
    phase: Phase,
    edge: "start" | "end",
    more: { device?: DeviceRef; bytes?: number; ms?: number } = {},
  ): void {
    if (!this.active) return;
    this.#emit("phase", more.device, {
      phase,
      edge,
      bytes: more.bytes,
      ms: more.ms === undefined ? undefined : round3(more.ms),
    });
  }

  /** Pre-copy iteration `n` (from 1) starts. */
  iterationStart(n: number): void {
    if (!this.active) return;
    this.#emit("iteration", undefined, { edge: "start", n });
  }

  /** Pre-copy iteration `n` ended: what it moved, what PRECOPY_INFO said, what the policy judged. */
  iterationEnd(it: IterationEnd): void {
    if (!this.active) return;
    this.#emit("iteration", undefined, {
      edge: "end",
      n: it.n,
      ms: round3(it.ms),
      bytes: it.bytes,
      totalBytes: it.totalBytes,
      devices: it.devices.map((d) => ({
        index: d.device.index,
        device: d.device.label,
        bytes: d.bytes,
        initialBytes: d.initialBytes,
        dirtyBytes: d.dirtyBytes,
        reinit: d.reinit || undefined,
      })),
      estimate: whole(it.estimate) ?? 0,
      exact: it.exact === undefined ? undefined : whole(it.exact),
      threshold: whole(it.threshold),
      bandwidth: whole(it.bandwidth),
      backlog: it.backlog,
    });
  }

  /** Pre-copy ends: why, and what the decision was made on. */
  switchover(s: Switchover): void {
    if (!this.active) return;
    this.#emit("switchover", undefined, {
      reason: s.reason,
      iterations: s.iterations,
      estimate: whole(s.estimate) ?? 0,
      exact: s.exact === undefined ? undefined : whole(s.exact),
      threshold: whole(s.threshold),
      downtimeLimitMs: s.downtimeLimitMs,
      bandwidth: whole(s.bandwidth),
      precopyMs: round3(s.precopyMs),
    });
  }

  /** A step of a tcp:// transfer (docs/events.md, transport). */
  transport(step: TransportStep, fields: TransportFields = {}): void {
    if (!this.active) return;
    this.#emit("transport", undefined, { step, ...fields });
  }

  /**
   * Bytes moved so far (device data, all devices): called per chunk by the data path,
   * emitted at most every 100 ms, with the rate over the last second and the total
   * estimate. Costs a comparison when nobody listens.
   */
  progress(phase: ProgressPhase, bytes: number, device?: DeviceRef): void {
    if (this.#subs.length === 0) return;
    const now = this.#now();
    if (now - this.#lastProgress < PROGRESS_INTERVAL_MS) return;
    this.#lastProgress = now;
    const ts = this.#rateT;
    const bs = this.#rateB;
    ts.push(now);
    bs.push(bytes);
    while (ts.length > 2 && now - ts[1] >= RATE_WINDOW_MS) {
      ts.shift();
      bs.shift();
    }
    const dt = now - ts[0];
    const rate = dt > 0 ? Math.max(0, ((bytes - bs[0]) / dt) * 1000) : 0;
    this.#emit("progress", device, { phase, bytes, rate: Math.round(rate), total: this.#total }, now);
  }

  /** A note or warning that is also said on stderr. */
  note(message: string, level: "note" | "warning" = "note", device?: DeviceRef): void {
    if (!this.active) return;
    this.#emit("note", device, { level, message });
  }

  /** The run succeeded: its --json summary (the whole object). Last event. */
  result(summary: object): void {
    if (!this.active || this.#ended) return;
    this.#ended = true;
    this.#emit("result", undefined, { exitCode: 0, summary });
  }

  /** The run failed with `e`: its one line and exit code, as the CLI reports them. Last event. */
  error(e: unknown): void {
    if (!this.active || this.#ended) return;
    this.#ended = true;
    const { exitCode, kind, message } = describeError(e);
    this.#emit("error", undefined, { exitCode, kind, message });
  }

  /** Closes every subscriber (the writer's file, the bar's line). Safe to call twice. */
  close(): void {
    const subs = this.#subs;
    this.#subs = [];
    for (const s of subs) {
      try {
        s.close?.();
      } catch { /* closing is best effort */ }
    }
  }
}
