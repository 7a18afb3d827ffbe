// Realistic synthetic event files for the events, report and progress tests: a small
// model of a live migration (devices with initial data that dirty pages while running,
// a link of a given bandwidth, QEMU's switchover rule) driven through the real emitter
// (src/events/events.ts) and JSON-lines writer on a fake clock, calling it as the
// orchestration does (docs/events.md, "Calling the emitter"). Deterministic: a seeded
// jitter on the bandwidth.

import { libc } from "../../ffi/libc.ts";
import { type DeviceRef, Events, type IterationDevice } from "../../src/events/events.ts";
import { JsonLinesWriter } from "../../src/events/jsonl.ts";
import { VfioMigError } from "../../src/errors.ts";

export const MiB = 1 << 20;

export interface ModelDevice {
  label: string;
  /** Device state size (its initial pre-copy data), bytes. */
  size: number;
  /** Bytes dirtied per second while running (page writes; some hit pages already dirty). */
  dirtyRate: number;
  /** The part of the state the device writes to (default: all of it): dirty bytes approach it. */
  workingSet?: number;
  protocol?: "v1" | "v2";
}

export interface ModelOptions {
  command?: "save";
  devices: ModelDevice[];
  /** Link bandwidth, bytes/s (each iteration gets it with a ±10% jitter). */
  bandwidth: number;
  downtimeLimitMs: number;
  /** false: an offline save (stop-copy of the whole state). */
  live: boolean;
  /** tcp://: transport events and switchover-ack; else a file. */
  tcp: boolean;
  maxPrecopyMs?: number;
  seed?: number;
  /** End in an error instead of the result (a failure during stop-copy). */
  failInStopCopy?: boolean;
}

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface DevState {
  ref: DeviceRef;
  m: ModelDevice;
  initial: number;
  dirty: number;
  sentPre: number;
  sentStop: number;
  initSent: boolean;
}

/**
 * Runs the model and writes its events to `path` through JsonLinesWriter. Returns the
 * summary the result event carries.
 */
export function writeModelEvents(path: string, o: ModelOptions): Record<string, unknown> {
  let clock = 1000; // performance.now() of a process that started a second ago
  const events = new Events({ now: () => clock, wallClock: new Date("2026-03-14T09:26:53.000Z") });
  const writer = JsonLinesWriter.open(libc(), path);
  events.on(writer);
  const random = rng(o.seed ?? 7);
  const advance = (ms: number) => clock += ms;
  const multi = o.devices.length > 1;
  const devs: DevState[] = o.devices.map((m, index) => ({
    ref: { index, label: m.label },
    m,
    initial: m.size,
    dirty: 0,
    sentPre: 0,
    sentStop: 0,
    initSent: false,
  }));
  const target = o.tcp ? "tcp://127.0.0.1:7707" : "/var/tmp/state.vfmig";
  let total = 0;
  const progress = (phase: "setup" | "pre-copy" | "stop-copy" | "finish") => events.progress(phase, total);
  /** Moves `bytes` of data in chunks of 1 MiB as the data path does, calling progress per chunk. */
  const move = (bytes: number, rate: number, phase: "pre-copy" | "stop-copy") => {
    let left = bytes;
    while (left > 0) {
      const n = Math.min(MiB, left);
      advance((n / rate) * 1000);
      total += n;
      left -= n;
      progress(phase);
    }
  };
  const jitter = () => o.bandwidth * (0.9 + 0.2 * random());
  const state = (d: DevState, from: string, to: string, ms: number) => {
    advance(ms);
    events.stateChange(d.ref, d.m.protocol ?? "v2", from, to, ms);
  };

  events.start({ command: "save", mode: o.live ? "live" : "offline", target });
  if (o.tcp) {
    advance(3.2);
    events.transport("connected", { peer: "127.0.0.1:7707", tls: false });
    advance(1.9);
    events.transport("authenticated", { peer: "127.0.0.1:7707" });
  }
  advance(0.6);
  events.devices(devs.map((d) => d.ref));
  events.header({
    mode: o.live ? "live" : "offline",
    protocol: devs[0].m.protocol ?? "v2",
    devices: devs.map((d) => ({
      index: d.ref.index,
      source: d.ref.label,
      protocol: d.m.protocol ?? "v2",
      sizeEstimate: d.m.size,
    })),
  });
  const t0 = clock;
  events.phase("setup", "start");
  for (const d of devs) if (o.live) state(d, "RUNNING", "PRE_COPY", 0.21 + 0.05 * random());
  advance(0.4);
  events.phase("setup", "end", { ms: clock - t0 });
  progress("setup");

  let iterations = 0;
  let reason: "converged" | "max-precopy" | "requested" | null = null;
  let estimate = 0;
  let threshold: number | null = null;
  let bandwidth: number | null = null;
  let markers = 0;
  let acks = 0;
  let ackDueAt = Infinity;
  const precopyStart = clock;
  if (o.live) {
    events.phase("pre-copy", "start");
    for (;;) {
      iterations++;
      const itStart = clock;
      events.iterationStart(iterations);
      const bw = jitter();
      // Up to 100 ms of reading: initial data first, then what was dirtied; the devices
      // keep dirtying while it goes.
      const budget = bw * 0.1;
      const want = devs.reduce((a, d) => a + d.initial + d.dirty, 0);
      const moved = Math.min(budget, want);
      const per: IterationDevice[] = [];
      for (const d of devs) {
        const share = want > 0 ? Math.round((moved * (d.initial + d.dirty)) / want) : 0;
        const fromInitial = Math.min(share, d.initial);
        d.initial -= fromInitial;
        d.dirty = Math.max(0, d.dirty - (share - fromInitial));
        d.sentPre += share;
        per.push({ device: d.ref, bytes: share, initialBytes: 0, dirtyBytes: 0 });
      }
      const bytes = per.reduce((a, x) => a + x.bytes, 0);
      move(bytes, bw, "pre-copy");
      if (bytes === 0) advance(5);
      const ms = clock - itStart;
      for (const d of devs) {
        // Writes land at random in the working set: the dirty part approaches it.
        const ws = d.m.workingSet ?? d.m.size;
        const clean = Math.max(ws - d.dirty, 0) * Math.exp(-(d.m.dirtyRate * ms) / 1000 / ws);
        d.dirty = Math.round((ws - clean) / 4096) * 4096;
      }
      devs.forEach((d, i) => {
        per[i].initialBytes = d.initial;
        per[i].dirtyBytes = d.dirty;
        if (!d.initSent && d.initial === 0) {
          d.initSent = true;
          markers++;
          ackDueAt = clock + 2.5; // the destination loads it and acknowledges
        }
      });
      if (o.tcp && acks < markers && clock >= ackDueAt) {
        acks = markers;
        events.transport("init-ack", { acks });
      }
      bandwidth = bytes > 0 ? (bytes / ms) * 1000 : bandwidth;
      estimate = devs.reduce((a, d) => a + d.initial + d.dirty, 0);
      threshold = bandwidth === null ? null : (bandwidth * o.downtimeLimitMs) / 1000;
      events.iterationEnd({
        n: iterations,
        ms,
        bytes,
        totalBytes: total,
        devices: per,
        estimate,
        threshold,
        bandwidth,
      });
      const acked = !o.tcp || acks >= markers;
      const initialLeft = devs.some((d) => d.initial > 0);
      if (clock - precopyStart >= (o.maxPrecopyMs ?? 60_000)) reason = "max-precopy";
      else if (!initialLeft && acked && threshold !== null && estimate <= threshold) reason = "converged";
      if (reason) break;
      if (o.tcp && acks < markers) {
        advance(3);
        acks = markers;
        events.transport("init-ack", { acks });
      }
    }
    const exact = devs.reduce((a, d) => a + d.dirty, 0);
    events.switchover({
      reason,
      iterations,
      estimate,
      exact,
      threshold,
      downtimeLimitMs: o.downtimeLimitMs,
      bandwidth,
      precopyMs: clock - precopyStart,
    });
    events.phase("pre-copy", "end", { bytes: total, ms: clock - precopyStart });
  }

  // Stop: through PRE_COPY_P2P / RUNNING_P2P when several devices move together.
  const leftRunning = clock;
  if (multi) {
    for (const d of devs) state(d, o.live ? "PRE_COPY" : "RUNNING", o.live ? "PRE_COPY_P2P" : "RUNNING_P2P", 0.12);
  }
  for (const d of devs) {
    state(d, multi ? (o.live ? "PRE_COPY_P2P" : "RUNNING_P2P") : (o.live ? "PRE_COPY" : "RUNNING"), "STOP_COPY", 0.35);
  }
  const stopStart = clock;
  events.phase("stop-copy", "start");
  const bw = jitter();
  for (const d of devs) {
    const rest = o.live ? d.dirty : d.m.size;
    if (o.failInStopCopy) {
      move(Math.min(rest, 3 * MiB), bw, "stop-copy");
      state(d, "STOP_COPY", "RUNNING", 0.3);
      events.error(
        new VfioMigError(
          `save from ${d.ref.label} failed: read of the data_fd: EIO (Input/output error); ${d.ref.label} is RUNNING`,
        ),
      );
      events.close();
      return {};
    }
    move(rest, bw, "stop-copy");
    d.sentStop = rest;
    d.dirty = 0;
    if (multi) events.phase("stop-copy", "end", { device: d.ref, bytes: rest, ms: clock - stopStart });
  }
  const stopBytes = devs.reduce((a, d) => a + d.sentStop, 0);
  events.phase("stop-copy", "end", { bytes: stopBytes, ms: clock - stopStart });
  events.phase("config", "start");
  advance(0.08);
  events.phase("config", "end", { bytes: 256 * devs.length });
  events.phase("trailer", "start");
  advance(0.02);
  events.phase("trailer", "end");
  const lastByte = clock + (o.tcp ? 0.4 : 0);
  advance(o.tcp ? 0.4 : 0);
  events.phase("finish", "start");
  for (const d of devs) state(d, "STOP_COPY", "STOP", 0.05);
  const finishStart = clock;
  if (o.tcp) {
    advance(1.1);
    events.transport("peer-result", {
      ok: true,
      message: devs.map((d) => `${d.ref.label} is RUNNING`).join(", "),
      finalState: "RUNNING",
    });
  }
  const peerDone = clock;
  events.phase("finish", "end", { ms: clock - finishStart });
  progress("finish");
  const seconds = (clock - 1000) / 1000;
  // The --json summary of save (SaveResult / MultiSaveResult), as far as the model knows it.
  const common = {
    command: "save",
    output: target,
    bytes: total,
    precopyBytes: total - stopBytes,
    stopCopyBytes: stopBytes,
    seconds,
    throughput: total / seconds,
    downtimeMs: lastByte - leftRunning,
    downtimeToRunningMs: o.tcp ? peerDone - leftRunning : null,
    iterations,
    switchReason: reason,
    bandwidth,
    downtimeLimitMs: o.live ? o.downtimeLimitMs : null,
  };
  const summary: Record<string, unknown> = multi
    ? {
      ...common,
      mode: o.live ? "live" : "offline",
      devices: devs.map((d) => ({
        index: d.ref.index,
        device: d.ref.label,
        protocol: "v2",
        bytes: d.sentPre + d.sentStop,
        precopyBytes: d.sentPre,
        stopCopyBytes: d.sentStop,
        finalState: "STOP",
      })),
    }
    : {
      ...common,
      device: devs[0].ref.label,
      protocol: "v2",
      reinits: 0,
      initDataSent: markers,
      initAcks: o.tcp ? acks : null,
      estimateAtSwitch: o.live ? estimate : null,
      finalState: "STOP",
      sizeEstimate: devs[0].m.size,
    };
  events.result(summary);
  events.close();
  return summary;
}

/**
 * The destination's side of a live migration over TCP: a load that listens, takes the
 * stream as it comes (pre-copy data while the source still runs, then stop-copy),
 * acknowledges the initial data and reports its result. Returns the summary.
 */
export function writeLoadEvents(path: string): Record<string, unknown> {
  let clock = 0;
  const events = new Events({ now: () => clock, wallClock: new Date("2026-03-14T09:26:52.500Z") });
  events.on(JsonLinesWriter.open(libc(), path));
  const dev: DeviceRef = { index: 0, label: "sim:/var/tmp/vf1" };
  const size = 256 * MiB;
  events.start({ command: "load", target: "tcp listener 0.0.0.0:7707" });
  events.transport("listening", { peer: "0.0.0.0:7707" });
  clock += 480;
  events.transport("refused", { message: "refused 10.0.0.9:51234: wrong token" });
  clock += 20;
  events.transport("authenticated", { peer: "10.0.0.1:40112", tls: true });
  events.devices([dev]);
  clock += 1;
  events.header({
    mode: "live",
    protocol: "v2",
    devices: [{ index: 0, source: "sim:/var/tmp/vf0", protocol: "v2", sizeEstimate: size }],
  });
  events.phase("setup", "start");
  events.phase("setup", "end", { ms: 0.1 });
  clock += 0.3;
  events.stateChange(dev, "v2", "RUNNING", "RESUMING", 0.3);
  events.phase("resume", "start");
  let bytes = 0;
  // The source's pre-copy: the initial data at 600 MiB/s, then dirty pages, slower.
  for (const [amount, rate] of [[size, 600], [40 * MiB, 200], [9 * MiB, 200], [2 * MiB, 300]] as const) {
    for (let left = amount; left > 0; left -= MiB) {
      clock += 1000 / rate;
      bytes += MiB;
      events.progress("resume", bytes);
    }
    if (amount === size) events.transport("init-ack", { acks: 1 });
    clock += 30;
  }
  events.phase("resume", "end", { bytes, ms: clock - 481.3 });
  events.phase("config", "start");
  events.phase("config", "end", { bytes: 256 });
  events.phase("trailer", "start");
  events.phase("trailer", "end");
  events.phase("finish", "start");
  clock += 1.2;
  events.stateChange(dev, "v2", "RESUMING", "STOP", 1.2);
  clock += 0.1;
  events.stateChange(dev, "v2", "STOP", "RUNNING", 0.1);
  events.transport("peer-result", { ok: true, message: `${dev.label} is RUNNING`, finalState: "RUNNING" });
  events.phase("finish", "end", { ms: 1.4 });
  const summary = {
    command: "load",
    input: "tcp listener 0.0.0.0:7707",
    device: dev.label,
    protocol: "v2",
    bytes,
    seconds: clock / 1000,
    throughput: bytes / (clock / 1000),
    finalState: "RUNNING",
    source: "sim:/var/tmp/vf0",
    initDataLoaded: 1,
  };
  events.result(summary);
  events.close();
  return summary;
}

/** One device, live over TCP, converging after several iterations (the README's picture). */
export const LIVE_TCP: ModelOptions = {
  devices: [{ label: "sim:/var/tmp/vf0", size: 1024 * MiB, dirtyRate: 400 * MiB, workingSet: 320 * MiB }],
  bandwidth: 1100 * MiB,
  downtimeLimitMs: 30,
  live: true,
  tcp: true,
  seed: 11,
};

/** Two devices, live, to a file: one lane each. */
export const TWO_DEVICES: ModelOptions = {
  devices: [
    { label: "sim:/var/tmp/gpu", size: 192 * MiB, dirtyRate: 120 * MiB },
    { label: "sim:/var/tmp/nic", size: 48 * MiB, dirtyRate: 24 * MiB },
  ],
  bandwidth: 512 * MiB,
  downtimeLimitMs: 40,
  live: true,
  tcp: false,
  seed: 5,
};

/** One device, offline, to a file. */
export const OFFLINE: ModelOptions = {
  devices: [{ label: "0000:3b:00.1", size: 96 * MiB, dirtyRate: 0 }],
  bandwidth: 900 * MiB,
  downtimeLimitMs: 300,
  live: false,
  tcp: false,
};

/**
 * Writes one of the model runs as an events file (the README's picture is made from
 * `live`):
 *   deno run --allow-ffi tests/helpers/events_fixture.ts live|two|offline|load OUT.jsonl
 */
if (import.meta.main) {
  const runs: Record<string, ModelOptions> = { live: LIVE_TCP, two: TWO_DEVICES, offline: OFFLINE };
  const [name, out] = Deno.args;
  if (!(runs[name] || name === "load") || !out) {
    console.error("usage: deno run --allow-ffi tests/helpers/events_fixture.ts live|two|offline|load OUT.jsonl");
    Deno.exit(2);
  }
  if (name === "load") writeLoadEvents(out);
  else writeModelEvents(out, runs[name]);
}
