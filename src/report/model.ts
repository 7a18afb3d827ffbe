// Reads an events file (docs/events.md) into what the report draws: iterations with
// their bytes, estimates and rates, the switchover, phases, per-device states, transport
// steps, progress (thinned to a few thousand points), and how the run ended. Every line
// is checked against the schema and the order rules as it is read; the first problem is
// one error (exit 4). The file is read a chunk at a time through the Sys.

import { O, type Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { readSome } from "../io.ts";
import { fileError } from "../transport/transport.ts";
import { SequenceChecker, validateEvent } from "../events/schema.ts";

export interface IterationDeviceData {
  index: number;
  bytes: number;
  initialBytes: number;
  dirtyBytes: number;
  reinit: boolean;
  /** Bytes/s this device dirtied during the iteration (null for the first). */
  dirtyRate: number | null;
}

export interface Iteration {
  n: number;
  t0: number;
  t1: number;
  bytes: number;
  totalBytes: number;
  estimate: number;
  threshold: number | null;
  /** Bytes/s. */
  bandwidth: number | null;
  /** What is left after it: the devices' initial + dirty bytes. */
  remaining: number;
  /** Bytes/s dirtied during it, all devices: (left now − left before + moved) / time (null for the first). */
  dirtyRate: number | null;
  devices: IterationDeviceData[];
}

export interface PhaseSpan {
  phase: string;
  /** Device index, or null for all devices. */
  device: number | null;
  t0: number;
  /** null: never ended (the run stopped in it). */
  t1: number | null;
  bytes: number | null;
}

export interface StateChange {
  t: number;
  from: string | null;
  to: string;
  ms: number;
  error: string | null;
  reset: boolean;
}

export interface LaneDevice {
  index: number;
  label: string;
  states: StateChange[];
}

export interface Marker {
  t: number;
  kind: string;
  text: string;
}

export interface ReportModel {
  source: string;
  command: string;
  /** The run's mode: save's; a load's only over TCP (where it is the live migration's). */
  mode: string | null;
  /** The mode the stream was saved in (its header), for a load. */
  streamMode: string | null;
  target: string | null;
  /** save --max-bandwidth: the rate the data was paced to, bytes/s (the start event), or null. */
  maxBandwidth: number | null;
  tool: string;
  wallClock: string;
  protocol: string | null;
  sizeEstimate: number | null;
  devices: LaneDevice[];
  iterations: Iteration[];
  switchover: {
    t: number;
    reason: string;
    estimate: number;
    threshold: number | null;
    downtimeLimitMs: number;
    bandwidth: number | null;
    precopyMs: number;
    iterations: number;
  } | null;
  phases: PhaseSpan[];
  transport: Marker[];
  notes: Marker[];
  /** (t, bytes so far) points: progress, iteration ends, phase ends. */
  bytes: { t: number; bytes: number }[];
  /** (t, bytes/s) from progress events. */
  rate: { t: number; rate: number }[];
  end: {
    t: number;
    kind: "result" | "error" | "none";
    exitCode: number | null;
    message: string | null;
    summary: Record<string, unknown> | null;
  };
  tEnd: number;
  events: number;
  /** How many of them were progress events. */
  progressEvents: number;
  /** Non-progress events, for the HTML's table (at most EVENT_ROWS). */
  log: Record<string, unknown>[];
}

const EVENT_ROWS = 2000;
const MAX_POINTS = 4000;

/** Keeps at most MAX_POINTS points of a growing series, evenly thinned. */
class Thinned<T> {
  items: T[] = [];
  #stride = 1;
  #seen = 0;
  add(x: T): void {
    if (this.#seen++ % this.#stride !== 0) return;
    this.items.push(x);
    if (this.items.length >= MAX_POINTS) {
      this.items = this.items.filter((_, i) => i % 2 === 0);
      this.#stride *= 2;
    }
  }
}

/** Builds the model event by event (the report command feeds it lines). */
export class ModelBuilder {
  #seq = new SequenceChecker();
  #line = 0;
  #m: ReportModel;
  #bytes = new Thinned<{ t: number; bytes: number }>();
  #rate = new Thinned<{ t: number; rate: number }>();
  #openIteration: number | null = null;
  #precopyBytes = 0;
  #lastRemaining: number | null = null;
  #lastDeviceRemaining: number[] = [];
  #lastIterEnd = 0;

  constructor(source: string) {
    this.#m = {
      source,
      command: "",
      mode: null,
      streamMode: null,
      target: null,
      maxBandwidth: null,
      tool: "",
      wallClock: "",
      protocol: null,
      sizeEstimate: null,
      devices: [],
      iterations: [],
      switchover: null,
      phases: [],
      transport: [],
      notes: [],
      bytes: [],
      rate: [],
      end: { t: 0, kind: "none", exitCode: null, message: null, summary: null },
      tEnd: 0,
      events: 0,
      progressEvents: 0,
      log: [],
    };
  }

  #damaged(problem: string): VfioMigError {
    return new VfioMigError(`report: ${this.#m.source} line ${this.#line}: ${problem}`, "stream");
  }

  /** One line of the file (without its newline). Throws VfioMigError (stream, exit 4) when it is not a valid event. */
  line(text: string): void {
    this.#line++;
    let x: unknown;
    try {
      x = JSON.parse(text);
    } catch (e) {
      throw this.#damaged(`not JSON (${e instanceof Error ? e.message : e})`);
    }
    const why = validateEvent(x) ?? this.#seq.next(x as Record<string, unknown>);
    if (why) throw this.#damaged(why);
    this.#event(x as Record<string, unknown>);
  }

  #event(e: Record<string, unknown>): void {
    const m = this.#m;
    const t = e.t as number;
    m.events++;
    m.tEnd = t;
    if (e.type !== "progress" && m.log.length < EVENT_ROWS) m.log.push(e);
    const dev = typeof e.index === "number" ? e.index : null;
    switch (e.type) {
      case "start":
        m.command = e.command as string;
        m.mode = (e.mode as string | undefined) ?? null;
        m.target = (e.target as string | undefined) ?? null;
        m.maxBandwidth = (e.maxBandwidth as number | undefined) ?? null;
        m.tool = e.tool as string;
        m.wallClock = e.wallClock as string;
        break;
      case "devices":
        m.devices = (e.devices as { index: number; device: string }[]).map((d) => ({
          index: d.index,
          label: d.device,
          states: [],
        }));
        break;
      case "header":
        // A load from a file or pipe of a live save's stream is not itself live.
        m.streamMode = e.mode as string;
        if (m.command !== "load" || m.target?.startsWith("tcp")) m.mode = e.mode as string;
        m.protocol = e.protocol as string;
        m.sizeEstimate = e.sizeEstimate as number | null;
        break;
      case "state":
        m.devices[dev!].states.push({
          t,
          from: e.from as string | null,
          to: e.to as string,
          ms: e.ms as number,
          error: (e.error as string | undefined) ?? null,
          reset: e.reset === true,
        });
        break;
      case "phase":
        this.#phase(e, t, dev);
        break;
      case "iteration":
        this.#iteration(e, t);
        break;
      case "switchover":
        m.switchover = {
          t,
          reason: e.reason as string,
          estimate: e.estimate as number,
          threshold: e.threshold as number | null,
          downtimeLimitMs: e.downtimeLimitMs as number,
          bandwidth: e.bandwidth as number | null,
          precopyMs: e.precopyMs as number,
          iterations: e.iterations as number,
        };
        break;
      case "transport": {
        const step = e.step as string;
        const detail = [e.peer, e.acks !== undefined ? `${e.acks} acknowledged` : undefined, e.message]
          .filter((x) => x !== undefined).join(", ");
        m.transport.push({ t, kind: step, text: detail ? `${step}: ${detail}` : step });
        break;
      }
      case "progress":
        m.progressEvents++;
        this.#bytes.add({ t, bytes: e.bytes as number });
        this.#rate.add({ t, rate: e.rate as number });
        break;
      case "note":
        m.notes.push({ t, kind: e.level as string, text: e.message as string });
        break;
      case "result": {
        const summary = e.summary as Record<string, unknown>;
        m.end = { t, kind: "result", exitCode: 0, message: null, summary };
        if (typeof summary.bytes === "number") this.#bytes.add({ t, bytes: summary.bytes });
        break;
      }
      case "error":
        m.end = { t, kind: "error", exitCode: e.exitCode as number, message: e.message as string, summary: null };
        break;
    }
  }

  #phase(e: Record<string, unknown>, t: number, dev: number | null): void {
    const phase = e.phase as string;
    if (e.edge === "start") {
      this.#m.phases.push({ phase, device: dev, t0: t, t1: null, bytes: null });
      return;
    }
    const open = this.#m.phases.findLast((p) => p.phase === phase && p.device === dev && p.t1 === null);
    const bytes = typeof e.bytes === "number" ? e.bytes : null;
    if (open) {
      open.t1 = t;
      open.bytes = bytes;
    } else {
      // An end without its start (a per-device end): the span is known from its duration.
      const ms = typeof e.ms === "number" ? e.ms : 0;
      this.#m.phases.push({ phase, device: dev, t0: t - ms, t1: t, bytes });
    }
    if (dev === null && bytes !== null) {
      if (phase === "pre-copy") {
        this.#precopyBytes = bytes;
        this.#bytes.add({ t, bytes });
      } else if (phase === "stop-copy") this.#bytes.add({ t, bytes: this.#precopyBytes + bytes });
    }
  }

  #iteration(e: Record<string, unknown>, t: number): void {
    if (e.edge === "start") {
      this.#openIteration = t;
      if (this.#m.iterations.length === 0) this.#lastIterEnd = t;
      return;
    }
    const t0 = this.#openIteration ?? t - (e.ms as number);
    this.#openIteration = null;
    const devs = e.devices as {
      index: number;
      bytes: number;
      initialBytes: number;
      dirtyBytes: number;
      reinit?: boolean;
    }[];
    const remaining = devs.reduce((a, d) => a + d.initialBytes + d.dirtyBytes, 0);
    const dt = (t - this.#lastIterEnd) / 1000;
    const rate = (left: number, before: number | null | undefined, moved: number) =>
      before === null || before === undefined || dt <= 0 ? null : Math.max(0, (left - before + moved) / dt);
    const bytes = e.bytes as number;
    this.#m.iterations.push({
      n: e.n as number,
      t0,
      t1: t,
      bytes,
      totalBytes: e.totalBytes as number,
      estimate: e.estimate as number,
      threshold: e.threshold as number | null,
      bandwidth: e.bandwidth as number | null,
      remaining,
      dirtyRate: rate(remaining, this.#lastRemaining, bytes),
      devices: devs.map((d) => ({
        index: d.index,
        bytes: d.bytes,
        initialBytes: d.initialBytes,
        dirtyBytes: d.dirtyBytes,
        reinit: d.reinit === true,
        dirtyRate: rate(d.initialBytes + d.dirtyBytes, this.#lastDeviceRemaining[d.index], d.bytes),
      })),
    });
    this.#lastRemaining = remaining;
    for (const d of devs) this.#lastDeviceRemaining[d.index] = d.initialBytes + d.dirtyBytes;
    this.#lastIterEnd = t;
    this.#bytes.add({ t, bytes: e.totalBytes as number });
  }

  /** The model; throws when the file held no event. */
  finish(): ReportModel {
    const p = this.#seq.finish();
    if (p) throw new VfioMigError(`report: ${this.#m.source}: ${p.problem}`, "stream");
    const m = this.#m;
    m.bytes = this.#bytes.items.sort((a, b) => a.t - b.t);
    m.rate = this.#rate.items;
    return m;
  }
}

/**
 * Reads an events file (or standard input for "-") through `sys`, a chunk at a time,
 * into a model. Throws VfioMigError: usage (exit 2) when it cannot be opened, stream
 * (exit 4) for the first line that is not a valid event (with its line number), or an
 * empty file.
 */
export function readEventsFile(sys: Sys, path: string): ReportModel {
  let fd = 0;
  if (path !== "-") {
    try {
      fd = sys.open(path, O.RDONLY | O.CLOEXEC);
    } catch (e) {
      throw new VfioMigError(`report: ${fileError(sys, path, e, "read").message}`, "usage");
    }
  }
  const b = new ModelBuilder(path === "-" ? "standard input" : path);
  try {
    const buf = new Uint8Array(1 << 20);
    const dec = new TextDecoder("utf-8", { fatal: true });
    let pending = "";
    for (;;) {
      let n: number;
      try {
        n = readSome(sys, fd, buf);
      } catch (e) {
        throw new VfioMigError(`report: ${path}: ${e instanceof Error ? e.message : e}`, "failure");
      }
      let text: string;
      try {
        text = dec.decode(buf.subarray(0, n), { stream: n > 0 });
      } catch {
        throw new VfioMigError(`report: ${path}: not UTF-8 text (an events file is JSON lines)`, "stream");
      }
      const lines = (pending + text).split("\n");
      pending = lines.pop()!;
      for (const l of lines) b.line(l);
      if (n === 0) break;
    }
    if (pending !== "") b.line(pending); // a last line without its newline
  } finally {
    if (path !== "-") sys.close(fd);
  }
  return b.finish();
}
