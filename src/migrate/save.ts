// Saving the migration state of one or several devices into one stream: one road for
// N >= 1 devices, as QEMU's migration loop (migration/savevm.c) walks every device's
// handlers in each phase. Phases, each a function below:
//
//   open       every device checked (migratable with the protocol asked for; P2P on all
//              when there are several, unless noP2p) before any is touched
//   setup      header, then each device's save_setup (DEV_SETUP_STATE ... END_OF_STATE)
//   pre-copy   (live) rounds of non-blocking reads of every device in turn, one chunk
//              at a time, until each has nothing now; one policy judges what all of
//              them report against the downtime limit (precopy.ts)
//   stop-copy  several devices: every one quiesced (RUNNING_P2P / PRE_COPY_P2P) before
//              any stops; then each enters STOP_COPY and their data is drained
//              round-robin
//   config     each device's DEV_CONFIG_STATE (vfio_save_state), then the trailer
//   finish     each session ends in STOP; with `resume`, several devices all go
//              RUNNING_P2P before any goes RUNNING
//
// A failure of any device puts every device back in the state it was found in (those
// found running rejoin RUNNING_P2P first), and leaves no complete-looking output.
// Per-protocol work is in the sessions (v2_session.ts, v1_session.ts); this file never
// branches on the protocol. One device writes a single-device stream (no DEVICE tags);
// several write the layout of docs/stream-format.md, "Several devices".

import { Errno, SysError } from "../../ffi/errno.ts";
import { MIGRATION_FLAGS } from "../../ffi/vfio_uapi.ts";
import { pciConfigProblem, type VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { FORMAT_VERSION, type StreamDeviceEntry, type StreamHeader, TAG } from "../stream/format.ts";
import { StreamWriter } from "../stream/writer.ts";
import { RateLimit } from "./rate_limit.ts";
import type { StreamKey, StreamMacInfo } from "../stream/mac.ts";
import { openSink, type Sink } from "../transport/transport.ts";
import { deviceOrigin } from "../device/origin.ts";
import { VERSION } from "../version.ts";
import { encodeConfigState, readConfigState } from "./config_state.ts";
import { checkDeviceSet, operationName, requireP2p } from "./group.ts";
import { PrecopyPolicy, type SwitchReason } from "./precopy.ts";
import {
  chooseProtocol,
  type IterationResult,
  probeMigration,
  type Protocol,
  type ProtocolChoice,
  type SavePhase,
  type SaveSession,
  v1Of,
} from "./protocol.ts";

export { probeMigration };
import { Cancellation, failure, formatBytes, pausePoint, streamIdentity } from "./session.ts";
import type { Events } from "../events/events.ts";
import { deviceList, deviceRef, interruptedOr, runOperation } from "./operation.ts";
import { V1SaveSession } from "./v1_session.ts";
import { V2SaveSession } from "./v2_session.ts";

/** Longest pre-copy round (all devices together) before the policy is asked again, ms. */
const ITERATION_MS = 100;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface SaveOptions {
  /** Leave the devices RUNNING after a successful save (default: STOP). */
  resume?: boolean;
  /** Pre-copy while the devices run before stopping them (needs PRE_COPY). */
  live?: boolean;
  /** Upper bound of the pre-copy phase, in ms (default 60 s). */
  maxPrecopyMs?: number;
  /** The downtime to aim for when leaving pre-copy, in ms (default 300, as QEMU). */
  downtimeLimitMs?: number;
  /** A progress bar on stderr when it is a terminal (without `events`; with it, subscribe a ProgressBar). */
  progress?: boolean;
  /**
   * Where the migration's events go (docs/events.md): state changes, phases, pre-copy
   * iterations, the switchover, transport steps, progress. The caller owns it (start,
   * result/error, close). Without it, save() makes its own, with only the progress bar.
   */
  events?: Events;
  cancel?: Cancellation;
  chunkSize?: number;
  /** Migration protocol: auto (default: v2 when the device has it, else v1), v1 or v2. */
  protocol?: ProtocolChoice;
  /** The header's creation time (default now; fixed for reproducible streams). */
  created?: Date;
  /** Several devices: allow devices without P2P (they must do no peer-to-peer DMA). */
  noP2p?: boolean;
  /**
   * Paces the device data read to this many bytes/s (> 0; QEMU's max-bandwidth):
   * the whole of an offline save, a live save's pre-copy; a live save's stop-copy runs
   * unlimited, as QEMU's completion does (migration_completion_precopy), since the
   * devices are stopped then. src/migrate/rate_limit.ts.
   */
  maxBandwidth?: number;
  /** --sign-key: sign the stream with this key (format version 2; src/stream/mac.ts). */
  signKey?: StreamKey | null;
}

/** What the save did with one device. */
export interface DeviceSaveResult {
  /** The device's index in the stream (DEVICE tag). */
  index: number;
  device: string;
  protocol: Protocol;
  bytes: number;
  precopyBytes: number;
  stopCopyBytes: number;
  /** DEV_DATA_STATE records of this device. */
  chunks: number;
  /** The device went through RUNNING_P2P / PRE_COPY_P2P. */
  p2p: boolean;
  statesVisited: string[];
  finalState: string;
  migrationFlags: number;
  sizeEstimate: number | null;
  /** Bytes of PCI config space in its DEV_CONFIG_STATE section (0: none). */
  configBytes: number;
}

/**
 * The result of a save. The per-device fields at the top (device, protocol,
 * statesVisited, finalState, migrationFlags, sizeEstimate, configBytes) are the first
 * device's, as in the stream header; `devices` has each device's, in stream order.
 */
export interface SaveResult {
  device: string;
  protocol: Protocol;
  mode: "offline" | "live";
  /** Device data bytes, all devices. */
  bytes: number;
  streamBytes: number;
  precopyBytes: number;
  stopCopyBytes: number;
  seconds: number;
  /** Bytes per second of device data. */
  throughput: number;
  /** Time from the first device leaving RUNNING to the last byte written, ms. */
  downtimeMs: number;
  /** Time from leaving RUNNING until the destination reported RUNNING (two-way transports), ms. */
  downtimeToRunningMs: number | null;
  /** Stop-copy: from the first STOP_COPY request until every device's data was read, ms. */
  stopCopyMs: number;
  /** Pre-copy iterations (live saves). */
  iterations: number;
  /** Why pre-copy ended: converged, max-precopy, requested (SIGUSR2 or Cancellation.requestSwitchover); null for offline saves. */
  switchReason: SwitchReason | null;
  /** Measured pre-copy bandwidth the switchover was judged by, bytes/s, or null. */
  bandwidth: number | null;
  /** The rate limit the data was paced to (SaveOptions.maxBandwidth), bytes/s, or null. */
  maxBandwidth: number | null;
  /** The downtime limit aimed for, ms (live saves). */
  downtimeLimitMs: number | null;
  /** Live v2 saves: whether the first device took the precopy-info v2 opt-in (Linux 7.1); null otherwise. */
  precopyInfoV2: boolean | null;
  /** How many times a device reported VFIO_PRECOPY_INFO_REINIT (new initial data). */
  reinits: number;
  /** DEV_INIT_DATA_SENT markers written (one per device per time its initial data was all sent). */
  initDataSent: number;
  /** Over a two-way transport: how many of them the destination acknowledged; else null. */
  initAcks: number | null;
  /** What stop-copy was expected to send when pre-copy ended (bytes, transport backlog included), live saves. */
  estimateAtSwitch: number | null;
  /** Bytes the transport still held unsent when the devices left RUNNING. */
  backlogAtSwitch: number;
  statesVisited: string[];
  finalState: string;
  migrationFlags: number;
  sizeEstimate: number | null;
  configBytes: number;
  devices: DeviceSaveResult[];
  /**
   * What looked wrong although the save completed (also printed on stderr and sent as
   * events): a device that gave far less data than its MIG_DATA_SIZE said.
   */
  warnings: string[];
  /** Signed streams only (SaveOptions.signKey): the header's `mac` field (algorithm, key id, nonce). */
  signed?: StreamMacInfo;
}

/** One device in a save: its session and what moved. */
interface Unit {
  i: number;
  d: VfioDevice;
  s: SaveSession;
  precopyBytes: number;
  stopCopyBytes: number;
  chunks: number;
  configBytes: number;
  finalState: string;
  initSent: boolean;
  reinits: number;
  /** This pre-copy round. */
  iterBytes: number;
  status: IterationResult | null;
}

/** Chooses the protocol and checks the device can be saved; nothing is changed when it throws. */
export function openSaveSession(d: VfioDevice, want: ProtocolChoice, live: boolean): SaveSession {
  const protocol = chooseProtocol(d, want);
  if (protocol === "v1") {
    return V1SaveSession.open(d, v1Of(d)!, live);
  }
  probeMigration(d);
  return V2SaveSession.open(d, live);
}

/**
 * Checks every device before any is touched, then opens the sessions (a session that
 * cannot open undoes the ones opened before it). Throws VfioMigError: usage (2) for a
 * device given twice or more than MAX_DEVICES, device (3) for one that cannot migrate
 * or lacks P2P among several.
 */
function openUnits(devs: VfioDevice[], opts: SaveOptions, live: boolean): Unit[] {
  checkDeviceSet(devs, "save");
  const want = opts.protocol ?? "auto";
  requireP2p(
    devs.map((d) => {
      const protocol = chooseProtocol(d, want);
      const flags = protocol === "v2" ? probeMigration(d) : 0;
      return { label: d.label, protocol, flags, p2p: (flags & MIGRATION_FLAGS.P2P) !== 0 };
    }),
    !!opts.noP2p,
  );
  const units: Unit[] = [];
  try {
    devs.forEach((d, i) => {
      units.push({
        i,
        d,
        s: openSaveSession(d, want, live),
        precopyBytes: 0,
        stopCopyBytes: 0,
        chunks: 0,
        configBytes: 0,
        finalState: "",
        initSent: false,
        reinits: 0,
        iterBytes: 0,
        status: null,
      });
    });
  } catch (e) {
    recover(units);
    throw e;
  }
  return units;
}

/**
 * A device that gave less than an eighth of what MIG_DATA_SIZE (read before the save)
 * said: the estimate is the driver's own, so a state that small is likely cut short
 * (a driver that loses its state when reopened does this; `check` names it reopen-state).
 */
function shortData(d: DeviceSaveResult): string | null {
  const est = d.sizeEstimate;
  if (est === null || est < 4096 || d.bytes * 8 >= est) return null;
  return `${d.device}: the device gave ${formatBytes(d.bytes)} where MIG_DATA_SIZE said ${formatBytes(est)}: ` +
    `its state may be incomplete (vfio-mig check --device ${d.device} looks for why)`;
}

/** The stream header: the first device's fields, and with several devices every one in `devices`. */
function streamHeader(units: Unit[], live: boolean, created: Date): StreamHeader {
  const entries: StreamDeviceEntry[] = units.map((u) => ({
    source: u.d.label,
    device: streamIdentity(u.d),
    protocol: u.s.protocol,
    migrationFlags: u.s.migrationFlags,
    sizeEstimate: u.s.sizeEstimate,
    ...u.s.headerExtra,
    origin: deviceOrigin(u.d.sys, u.d.info.driver),
  }));
  const first = entries[0];
  return {
    format: "vfio-mig",
    version: FORMAT_VERSION,
    tool: `vfio-mig ${VERSION}`,
    protocol: first.protocol,
    created: created.toISOString(),
    source: first.source,
    device: first.device,
    migrationFlags: first.migrationFlags,
    sizeEstimate: first.sizeEstimate,
    mode: live ? "live" : "offline",
    ...units[0].s.headerExtra,
    origin: first.origin,
    ...(units.length > 1 ? { devices: entries } : {}),
  };
}

/**
 * After a failure: every device back where it was found. Devices found running that
 * were stopped rejoin RUNNING_P2P together first, so none runs while another is still
 * stopped. Returns where each device is left, for the error line.
 */
function recover(units: Unit[]): string {
  if (units.length > 1) { for (const u of units) u.s.prepareRecovery(); }
  return units.map((u) => u.s.abort()).join(", ");
}

/**
 * Saves the migration state of one device, or of several into one stream
 * (docs/stream-format.md), to `output`: a Sink (transport.ts, tcp.ts), or a path (a
 * file written under a temporary name and renamed when complete; "-" is standard
 * output). The devices must be open; they are left in STOP (RUNNING with `resume`). Throws VfioMigError (the message names the devices' states; exit
 * code by kind), InterruptedError when `opts.cancel` caught a signal.
 */
export async function save(
  devices: VfioDevice | readonly VfioDevice[],
  output: Sink | string,
  opts: SaveOptions = {},
): Promise<SaveResult> {
  const devs = deviceList(devices, "save");
  if (opts.maxBandwidth !== undefined && !(opts.maxBandwidth > 0 && Number.isFinite(opts.maxBandwidth))) {
    throw new VfioMigError(
      `save: maxBandwidth must be a positive number of bytes/s, not ${opts.maxBandwidth}`,
      "usage",
    );
  }
  const sink = typeof output === "string" ? openSink(devs[0].sys, output) : output;
  const cancel = opts.cancel ?? new Cancellation();
  return await runOperation({
    command: "save",
    devices: devs,
    cancel,
    events: opts.events,
    progress: opts.progress,
    live: opts.live,
    interrupt: () => sink.abort(),
    observe: true,
  }, ({ events }) => saveTo(devs, sink, opts, cancel, operationName("save from", devs.map((d) => d.label)), events));
}

async function saveTo(
  devs: VfioDevice[],
  sink: Sink,
  opts: SaveOptions,
  cancel: Cancellation,
  what: string,
  events: Events,
): Promise<SaveResult> {
  const t0 = performance.now();
  const live = !!opts.live;
  let units: Unit[];
  try {
    await sink.ready?.(); // a FIFO: until a reader opened it; nothing is touched before
    units = openUnits(devs, opts, live);
  } catch (e) {
    sink.abort(); // nothing was changed on any device; leave no partial output either
    if (cancel.signal) throw failure(`${what} failed`, interruptedOr(cancel, e), "no device was changed");
    // One device: its own error says what is wrong. Several: which operation, and that none changed.
    throw devs.length === 1 ? e : failure(`${what} refused`, e, "no device was changed");
  }
  const w = new StreamWriter(sink, opts.chunkSize, units.length, opts.signKey ?? null);
  const getenv = (n: string) => devs[0].sys.getenv(n);
  // VFIO_MIG_PAUSE_AT: what was written before the phase has left the process when it pauses.
  const drain = () => sink.drain?.();
  let policy: PrecopyPolicy | null = null;
  let switchReason: SwitchReason | null = null;
  let markers = 0;
  const pace = opts.maxBandwidth ? new RateLimit(opts.maxBandwidth) : null;
  try {
    // setup
    const header = streamHeader(units, live, opts.created ?? new Date());
    w.header(header);
    events.header({
      mode: header.mode,
      protocol: header.protocol,
      devices: units.map((u) => ({
        index: u.i,
        source: u.d.label,
        protocol: u.s.protocol,
        sizeEstimate: u.s.sizeEstimate,
      })),
    });
    events.phase("setup", "start");
    for (const u of units) {
      w.selectDevice(u.i);
      u.s.setup(w, live);
    }
    events.phase("setup", "end");
    events.progress("setup", 0);
    await pausePoint(getenv, "setup", cancel, drain);

    // pre-copy: rounds while the devices run, until what is left fits the downtime limit
    if (live) {
      await pausePoint(getenv, "pre-copy", cancel, drain);
      policy = new PrecopyPolicy(opts.downtimeLimitMs, opts.maxPrecopyMs);
      const r = await precopy(units, w, sink, policy, cancel, events, pace);
      switchReason = r.reason;
      markers = r.markers;
    }

    // stop-copy: every device quiesced before any stops, then drained together
    const backlogAtSwitch = sink.queuedBytes ?? 0;
    const leftRunning = performance.now();
    // Quiescing orders devices against each other; one device is left to the kernel's own
    // path (RUNNING -> STOP_COPY walks through RUNNING_P2P by itself).
    const group = units.length > 1;
    if (group) { for (const u of units) u.s.prepareStop(); }
    const stopAt = performance.now();
    for (const u of units) {
      w.selectDevice(u.i);
      u.s.stop(w);
    }
    events.phase("stop-copy", "start");
    await pausePoint(getenv, "stop-copy", cancel, drain);
    await readRound(units, w, "stop-copy", Infinity, cancel, events, live ? null : pace);
    const stopCopyMs = performance.now() - stopAt;
    if (group) {
      for (const u of units) events.phase("stop-copy", "end", { device: deviceRef(u), bytes: u.stopCopyBytes });
    }
    events.phase("stop-copy", "end", { bytes: units.reduce((a, u) => a + u.stopCopyBytes, 0), ms: stopCopyMs });

    // config state of each device, after all device data (vfio_save_state); the trailer
    events.phase("config", "start");
    const lacking: string[] = [];
    for (const u of units) {
      const config = readConfigState(u.d);
      if (!config) {
        // A PCI device without a readable config region is a driver defect: say what the stream lacks.
        const why = u.d.info.pciUnknown ?? pciConfigProblem(u.d);
        if (why) {
          const line = `${u.d.label}: ${why}; the stream has no PCI identity and no config section (command ` +
            `register, MSI/MSI-X): a load cannot check it is for the same device, nor restore its config`;
          lacking.push(line);
          events.note(line, "warning", deviceRef(u));
          console.error(`vfio-mig: warning: ${line}`);
        }
        continue;
      }
      w.selectDevice(u.i);
      w.sized(TAG.DEV_CONFIG_STATE, encodeConfigState(config));
      w.tag(TAG.END_OF_STATE);
      u.configBytes = config.config.length;
    }
    events.phase("config", "end", { bytes: units.reduce((a, u) => a + u.configBytes, 0) });
    events.phase("trailer", "start");
    w.end();
    await w.flowControl();
    // The last byte is written (a file's fsync and rename in commit() come after the downtime).
    const wroteAt = performance.now();
    events.phase("trailer", "end", { bytes: w.written });

    // finish: every session ends in STOP; with resume, all RUNNING_P2P before any RUNNING.
    // Then the output is made visible (over TCP: the destination's result is awaited).
    events.phase("finish", "start");
    await pausePoint(getenv, "finish", cancel, drain);
    const resume = !!opts.resume;
    for (const u of units) u.finalState = u.s.finish(resume && !group);
    if (resume && group) {
      for (const u of units) u.s.prepareStart();
      for (const u of units) u.finalState = u.s.start();
    }
    cancel.check();
    try {
      await sink.commit();
    } finally {
      if (sink.result) events.transport("peer-result", sink.result);
    }
    const downtimeMs = (sink.lastByteAt ?? wroteAt) - leftRunning;
    events.phase("finish", "end");
    const seconds = (performance.now() - t0) / 1000;
    const precopyBytes = units.reduce((a, u) => a + u.precopyBytes, 0);
    const perDevice = units.map((u): DeviceSaveResult => ({
      index: u.i,
      device: u.d.label,
      protocol: u.s.protocol,
      bytes: u.precopyBytes + u.stopCopyBytes,
      precopyBytes: u.precopyBytes,
      stopCopyBytes: u.stopCopyBytes,
      chunks: u.chunks,
      p2p: u.s.p2p,
      statesVisited: u.s.statesVisited(),
      finalState: u.finalState,
      migrationFlags: u.s.migrationFlags,
      sizeEstimate: u.s.sizeEstimate,
      configBytes: u.configBytes,
    }));
    const first = perDevice[0];
    const warnings = lacking.concat(perDevice.flatMap((d) => {
      const short = shortData(d);
      if (!short) return [];
      events.note(short, "warning", { index: d.index, label: d.device });
      console.error(`vfio-mig: warning: ${short}`);
      return [short];
    }));
    return {
      device: first.device,
      protocol: first.protocol,
      mode: live ? "live" : "offline",
      bytes: w.dataBytes,
      streamBytes: w.written,
      precopyBytes,
      stopCopyBytes: w.dataBytes - precopyBytes,
      seconds,
      throughput: seconds > 0 ? w.dataBytes / seconds : 0,
      downtimeMs,
      downtimeToRunningMs: sink.peerDoneAt ? sink.peerDoneAt - leftRunning : null,
      stopCopyMs,
      iterations: policy?.iterations ?? 0,
      switchReason,
      bandwidth: policy?.lastRate ? policy.lastRate * 1000 : null, // what the switchover was judged by
      maxBandwidth: pace?.bytesPerSecond ?? null,
      downtimeLimitMs: policy ? policy.downtimeLimitMs : null,
      precopyInfoV2: live ? units[0].s.precopyInfoV2 ?? null : null,
      reinits: units.reduce((a, u) => a + u.reinits, 0),
      initDataSent: markers,
      initAcks: sink.initAcks ?? null,
      estimateAtSwitch: policy ? policy.lastJudged : null,
      backlogAtSwitch,
      statesVisited: first.statesVisited,
      finalState: first.finalState,
      migrationFlags: first.migrationFlags,
      sizeEstimate: first.sizeEstimate,
      configBytes: first.configBytes,
      devices: perDevice,
      warnings,
      ...(w.signed ? { signed: w.signed } : {}),
    };
  } catch (e) {
    sink.abort();
    const where = recover(units);
    // A signal that closed the connection is reported as the signal (exit 130).
    const cause = cancel.signal
      ? interruptedOr(cancel, e)
      : e instanceof SysError && e.errno === Errno.EPIPE
      ? new VfioMigError(`${sink.label}: the reading end went away (broken pipe)`)
      : e;
    throw failure(`${what} failed`, cause, where);
  }
}

/**
 * Switchover-ack: true when every DEV_INIT_DATA_SENT marker written so far was
 * acknowledged (QEMU waits for every device's). One-way sinks (files, pipes) cannot
 * acknowledge: true. A protocol without the marker (v1) needs no acknowledgement.
 */
function initAcked(sink: Sink, markers: number): boolean {
  if (markers === 0) return true; // nothing to acknowledge (the policy still waits for initial_bytes 0)
  if (sink.initAcks !== undefined) return sink.initAcks >= markers;
  return sink.initAcked ?? true;
}

/**
 * Pre-copy: each round reads every device in turn, one chunk at a time, until each has
 * nothing now (or ITERATION_MS passed); then one policy judges the sum of what the
 * devices report (QEMU sums every device's estimate against one threshold). A
 * switchover request (cancel.requestSwitchover: SIGUSR2 on the command line) ends it at
 * the next decision. Returns why pre-copy ended and the DEV_INIT_DATA_SENT
 * markers written.
 */
async function precopy(
  units: Unit[],
  w: StreamWriter,
  sink: Sink,
  policy: PrecopyPolicy,
  cancel: Cancellation,
  events: Events,
  pace: RateLimit | null,
): Promise<{ reason: SwitchReason; markers: number }> {
  const unswitch = cancel.onSwitchover(() => policy.requested = true);
  let markers = 0;
  let acks = sink.initAcks ?? 0;
  const start = performance.now();
  events.phase("pre-copy", "start");
  try {
    for (;;) {
      const t = performance.now();
      for (const u of units) u.iterBytes = 0;
      events.iterationStart(policy.iterations + 1);
      await readRound(units, w, "pre-copy", t + ITERATION_MS, cancel, events, pace);
      for (const u of units) u.status = u.s.precopyStatus(u.iterBytes);
      let bytes = 0;
      let initial = 0;
      let dirty = 0;
      let done = true;
      for (const u of units) {
        const st = u.status!;
        u.precopyBytes += u.iterBytes;
        bytes += u.iterBytes;
        initial += st.initialBytes;
        dirty += st.dirtyBytes;
        done &&= st.done;
        if (st.reinit) {
          // New initial data (Linux 7.1 REINIT): send it all, mark it again and, over a
          // two-way transport, wait for the destination to acknowledge that marker.
          u.reinits++;
          u.initSent = false;
        }
        if (!u.initSent && st.initialBytes === 0) {
          w.selectDevice(u.i);
          if (u.s.initDataSent(w)) markers++;
          u.initSent = true;
        }
      }
      if (bytes > 0) policy.meter.add(bytes, performance.now() - t);
      const reason = policy.decide({
        initialBytes: initial,
        dirtyBytes: dirty,
        done,
        exact: () => {
          let sum = 0;
          for (const u of units) {
            const x = u.s.exactSize();
            if (x === null) return null;
            sum += x;
          }
          return sum;
        },
        initAcked: initAcked(sink, markers),
        backlogBytes: sink.queuedBytes ?? 0,
      });
      if ((sink.initAcks ?? 0) > acks) events.transport("init-ack", { acks: acks = sink.initAcks! });
      const rate = policy.lastRate;
      const threshold = rate === null ? null : rate * policy.downtimeLimitMs;
      events.iterationEnd({
        n: policy.iterations,
        ms: performance.now() - t,
        bytes,
        totalBytes: w.dataBytes,
        devices: units.map((u) => ({
          device: deviceRef(u),
          bytes: u.iterBytes,
          initialBytes: u.status!.initialBytes,
          dirtyBytes: u.status!.dirtyBytes,
          reinit: u.status!.reinit,
        })),
        estimate: policy.lastEstimate,
        exact: policy.lastExact,
        threshold,
        bandwidth: rate === null ? null : rate * 1000,
        backlog: sink.queuedBytes,
      });
      if (reason) {
        events.switchover({
          reason,
          iterations: policy.iterations,
          estimate: policy.lastEstimate,
          exact: policy.lastExact,
          threshold,
          downtimeLimitMs: policy.downtimeLimitMs,
          bandwidth: rate === null ? null : rate * 1000,
          precopyMs: performance.now() - start,
        });
        for (const u of units) {
          w.selectDevice(u.i);
          u.s.endPrecopy(w);
        }
        events.phase("pre-copy", "end", {
          bytes: units.reduce((a, u) => a + u.precopyBytes, 0),
          ms: performance.now() - start,
        });
        return { reason, markers };
      }
      // Nothing new this round: give the devices time to dirty more (or the peer to ack).
      if (bytes === 0) await sleep(5);
    }
  } finally {
    unswitch();
  }
}

/**
 * Reads every device in turn, one chunk at a time (SaveSession.readChunk), until each
 * has nothing more in this phase or `until` (performance.now() ms) passed. A device
 * whose read would block is passed over; when none had anything we wait a moment, so
 * a device that yields its data slowly holds no other (and no signal) up. Bytes go to
 * each unit's iterBytes (pre-copy) or stopCopyBytes (stop-copy, which ends each
 * device's data with its END_OF_STATE) With `pace` (--max-bandwidth) each chunk read is paid
 * for before the next read (src/migrate/rate_limit.ts).
 */
async function readRound(
  units: Unit[],
  w: StreamWriter,
  phase: SavePhase,
  until: number,
  cancel: Cancellation,
  events: Events,
  pace: RateLimit | null,
): Promise<void> {
  const active = units.slice();
  let idle = 0; // rounds in a row in which no device had anything
  while (active.length > 0 && performance.now() < until) {
    let moved = 0;
    for (let k = 0; k < active.length;) {
      const u = active[k];
      w.selectDevice(u.i);
      const chunks = w.chunks;
      const n = u.s.readChunk(w, phase);
      u.chunks += w.chunks - chunks;
      if (n === null) {
        k++;
        continue;
      }
      if (n === 0) {
        if (phase === "stop-copy") u.s.endStopCopy(w);
        active.splice(k, 1);
        continue;
      }
      if (phase === "pre-copy") u.iterBytes += n;
      else u.stopCopyBytes += n;
      moved += n;
      k++;
      if (pace) await pace.take(n, cancel.abortSignal); // --max-bandwidth
      await w.flowControl();
      events.progress(phase, w.dataBytes);
    }
    await cancel.checkpoint();
    // Nothing from any device (their reads would block): wait, longer the longer it lasts
    // (1 to 8 ms), in turns of the event loop so a signal is seen.
    if (moved === 0 && active.length > 0) await sleep(1 << Math.min(3, idle++));
    else idle = 0;
  }
}
