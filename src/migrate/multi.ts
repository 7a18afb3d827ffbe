// Several devices in one stream, moved together (issue 6 item 4; reference §2.5):
//
//   save  every device is checked (P2P on all of them, unless noP2p) before any is
//         touched; setup for all; live: pre-copy iterations of all devices, their
//         chunks interleaved; then all enter RUNNING_P2P (offline) or PRE_COPY_P2P
//         (live) before any is stopped (STOP_COPY); the stop-copy data of all devices
//         is read round-robin, one chunk per device in turn from non-blocking data_fds,
//         so a device that yields its data slowly never holds the others up.
//   load  every device's identity is checked against its destination before any is
//         touched; chunks go to their device as they arrive; after the trailer (the
//         whole stream verified) all go RESUMING -> STOP, then all RUNNING_P2P, and only
//         then any RUNNING.
//
// A failure of any device puts all of them back: sources to the state they were found
// in (through RUNNING_P2P first, so none runs while another may still be stopped),
// destinations reset. The per-protocol sessions (protocol.ts) do the device work; the
// stream layout (DEVICE tags, header `devices`) is in docs/stream-format.md.

import { MIGRATION_FLAGS } from "../../ffi/vfio_uapi.ts";
import type { VfioDevice } from "../device/open.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { InterruptedError, StreamError, VfioMigError } from "../errors.ts";
import { DeviceState, stateName } from "../migration/state_machine.ts";
import {
  FORMAT_VERSION,
  identityMismatch,
  MAX_DEVICES,
  type StreamDeviceEntry,
  type StreamHeader,
  TAG,
} from "../stream/format.ts";
import { StreamReader } from "../stream/reader.ts";
import { StreamWriter } from "../stream/writer.ts";
import type { Sink, StreamSource } from "../transport/transport.ts";
import { VERSION } from "../version.ts";
import {
  checkConfigIdentity,
  type ConfigRestore,
  type ConfigState,
  decodeConfigState,
  encodeConfigState,
  readConfigState,
  restoreConfigState,
} from "./config_state.ts";
import { openResumeSession } from "./load.ts";
import { PrecopyPolicy, type SwitchReason } from "./precopy.ts";
import {
  chooseProtocol,
  type IterationResult,
  type Protocol,
  type ProtocolChoice,
  type ResumeSession,
  type SaveSession,
} from "./protocol.ts";
import { openSaveSession, probeMigration, type SaveOptions } from "./save.ts";
import { Cancellation, failure, pausePoint, Progress, streamIdentity, tryGetState } from "./session.ts";
import { expectedRecords, type RecordPhase } from "../stream/order.ts";

const { STOP, RUNNING, STOP_COPY, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = DeviceState;

/** Longest pre-copy iteration (all devices together) before the policy is asked again. */
const ITERATION_MS = 100;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// P2P

function hasP2p(flags: number): boolean {
  return (flags & MIGRATION_FLAGS.P2P) !== 0;
}

/**
 * Refuses a set of devices of which some lack P2P (QEMU: "multiple VFIO devices
 * migration is allowed only if all the devices support P2P migration"), unless the
 * user says they do no peer-to-peer DMA.
 */
function requireP2p(devices: { label: string; flags: number; protocol: Protocol }[], noP2p: boolean) {
  if (noP2p) return;
  const lacking = devices.filter((x) => !hasP2p(x.flags));
  if (lacking.length === 0) return;
  const what = lacking.map((x) =>
    x.protocol === "v1"
      ? `${x.label} (migration protocol v1)`
      : `${x.label} (migration flags 0x${x.flags.toString(16)})`
  ).join(", ");
  throw new VfioMigError(
    `several devices move together only when every one supports P2P (RUNNING_P2P), so that none ` +
      `starts peer-to-peer DMA into a device already stopped; ${
        lacking.length === 1 ? "this one lacks" : "these lack"
      }` +
      ` it: ${what}. If these devices do no peer-to-peer DMA, give --no-p2p`,
    "device",
  );
}

function sameDeviceTwice(devs: VfioDevice[]): void {
  const seen = new Set<VfioDevice>();
  const labels = new Set<string>();
  for (const d of devs) {
    if (seen.has(d) || labels.has(d.label)) {
      throw new VfioMigError(`${d.label} is given twice: each device may appear once`, "usage");
    }
    seen.add(d);
    labels.add(d.label);
  }
}

/** One SET, noting where the device went. Throws as MigrationV2.setState does. */
function setState(d: VfioDevice, to: DeviceState, from?: DeviceState): void {
  d.migration.setState(to, from);
}

// ---------------------------------------------------------------------------
// save

export interface MultiSaveOptions extends SaveOptions {
  /** Allow devices without P2P (they must do no peer-to-peer DMA); P2P is still used where present. */
  noP2p?: boolean;
}

export interface MultiDeviceSaveResult {
  index: number;
  device: string;
  protocol: Protocol;
  bytes: number;
  precopyBytes: number;
  stopCopyBytes: number;
  chunks: number;
  /** The device went through RUNNING_P2P / PRE_COPY_P2P. */
  p2p: boolean;
  statesVisited: string[];
  finalState: string;
  migrationFlags: number;
  sizeEstimate: number | null;
  configBytes: number;
}

export interface MultiSaveResult {
  devices: MultiDeviceSaveResult[];
  mode: "offline" | "live";
  bytes: number;
  streamBytes: number;
  precopyBytes: number;
  stopCopyBytes: number;
  seconds: number;
  throughput: number;
  /** From the first device leaving RUNNING (its P2P step) to the last byte written, ms. */
  downtimeMs: number;
  /** From the first device leaving RUNNING until the destination reported RUNNING (two-way transports), ms. */
  downtimeToRunningMs: number | null;
  /** Stop-copy: from the first STOP_COPY request until every device's data was read, ms. */
  stopCopyMs: number;
  iterations: number;
  switchReason: SwitchReason | null;
  bandwidth: number | null;
  downtimeLimitMs: number | null;
}

interface SaveUnit {
  i: number;
  d: VfioDevice;
  s: SaveSession;
  p2p: boolean;
  found: DeviceState | null;
  precopyBytes: number;
  stopCopyBytes: number;
  chunks: number;
  configBytes: number;
  finalState: string;
  initSent: boolean;
  iterBytes: number;
  status: IterationResult | null;
}

/**
 * Checks every device before any is touched: migratable with the protocol asked for,
 * P2P on all (or noP2p); then opens the sessions. Nothing is changed when it throws.
 */
function openSaveUnits(devs: VfioDevice[], opts: MultiSaveOptions, live: boolean): SaveUnit[] {
  const want = opts.protocol ?? "auto";
  const probed = devs.map((d) => {
    const protocol = chooseProtocol(d, want);
    return { label: d.label, protocol, flags: protocol === "v2" ? probeMigration(d) : 0 };
  });
  requireP2p(probed, !!opts.noP2p);
  const units: SaveUnit[] = [];
  try {
    devs.forEach((d, i) => {
      const s = openSaveSession(d, want, live);
      units.push({
        i,
        d,
        s,
        p2p: hasP2p(s.migrationFlags),
        found: tryGetState(d),
        precopyBytes: 0,
        stopCopyBytes: 0,
        chunks: 0,
        configBytes: 0,
        finalState: "",
        initSent: false,
        iterBytes: 0,
        status: null,
      });
    });
  } catch (e) {
    restoreSources(units);
    throw e;
  }
  return units;
}

/**
 * After a failure: every source back to where it was found. Devices that were stopped
 * first rejoin RUNNING_P2P together, so none runs while another is still stopped.
 */
function restoreSources(units: SaveUnit[]): string {
  for (const u of units) {
    if (!u.p2p || (u.found !== RUNNING && u.found !== RUNNING_P2P)) continue;
    const now = tryGetState(u.d);
    if (now === STOP || now === STOP_COPY || now === PRE_COPY_P2P) {
      try {
        setState(u.d, RUNNING_P2P, now);
      } catch { /* the session's abort resets it */ }
    }
  }
  return units.map((u) => u.s.abort()).join(", ");
}

function header(units: SaveUnit[], live: boolean, created: Date): StreamHeader {
  const entries: StreamDeviceEntry[] = units.map((u) => ({
    source: u.d.label,
    device: streamIdentity(u.d),
    protocol: u.s.protocol,
    migrationFlags: u.s.migrationFlags,
    sizeEstimate: u.s.sizeEstimate,
    ...u.s.headerExtra,
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
    devices: entries,
  };
}

/**
 * Saves several devices into one stream (docs/stream-format.md, "Several devices").
 * `devs` must be open; they are left in STOP (RUNNING with `resume`).
 */
export async function saveMulti(devs: VfioDevice[], sink: Sink, opts: MultiSaveOptions = {}): Promise<MultiSaveResult> {
  if (devs.length < 2) throw new VfioMigError("saveMulti: give at least two devices (save() takes one)", "usage");
  if (devs.length > MAX_DEVICES) {
    throw new VfioMigError(`save: at most ${MAX_DEVICES} devices fit one stream (${devs.length} given)`, "usage");
  }
  sameDeviceTwice(devs);
  const t0 = performance.now();
  const cancel = opts.cancel ?? new Cancellation();
  const live = !!opts.live;
  let units: SaveUnit[];
  try {
    units = openSaveUnits(devs, opts, live);
  } catch (e) {
    sink.abort();
    throw failure(`save of ${devs.length} devices refused`, e, "no device was changed");
  }
  const estimates = units.map((u) => u.s.sizeEstimate);
  const progress = new Progress(
    !!opts.progress,
    estimates.every((x) => x !== null) ? estimates.reduce((a, b) => a! + b!, 0) : null,
  );
  const w = new StreamWriter(sink, opts.chunkSize);
  const getenv = (n: string) => devs[0].sys.getenv(n);
  let policy: PrecopyPolicy | null = null;
  let switchReason: SwitchReason | null = null;
  try {
    w.header(header(units, live, opts.created ?? new Date()));
    for (const u of units) {
      w.selectDevice(u.i);
      u.s.setup(w, live);
    }
    progress.update("setup", 0, true);
    await pausePoint(getenv, "setup", cancel);

    if (live) {
      await pausePoint(getenv, "pre-copy", cancel);
      policy = new PrecopyPolicy(opts.downtimeLimitMs, opts.maxPrecopyMs);
      switchReason = await precopy(units, w, sink, policy, cancel, progress);
    }

    // Quiesce: every device stops initiating P2P DMA before any of them stops.
    const leftRunning = performance.now();
    for (const u of units) {
      if (!u.p2p) continue;
      const now = tryGetState(u.d);
      if (now === RUNNING) setState(u.d, RUNNING_P2P, RUNNING);
      else if (now === PRE_COPY) setState(u.d, PRE_COPY_P2P, PRE_COPY);
    }
    const stopAt = performance.now();
    for (const u of units) {
      w.selectDevice(u.i);
      u.s.stop(w);
    }
    await pausePoint(getenv, "stop-copy", cancel);
    await drainAll(units, w, cancel, progress);
    const stopCopyMs = performance.now() - stopAt;

    // Config state of each device, after all device data (vfio_save_state).
    for (const u of units) {
      const config = readConfigState(u.d);
      if (!config) continue;
      w.selectDevice(u.i);
      w.sized(TAG.DEV_CONFIG_STATE, encodeConfigState(config));
      w.tag(TAG.END_OF_STATE);
      u.configBytes = config.config.length;
    }
    w.end();
    await w.flowControl();

    // Cleanup: every session ends in STOP; with resume all go through RUNNING_P2P
    // before any runs.
    await pausePoint(getenv, "finish", cancel);
    const resume = !!opts.resume;
    // (A v1 session ends once, RUNNING included: it has no P2P state to wait in.)
    for (const u of units) if (!(resume && u.s.protocol === "v1")) u.finalState = u.s.finish(false);
    if (resume) {
      for (const u of units) {
        if (u.p2p) setState(u.d, RUNNING_P2P, STOP);
      }
      for (const u of units) {
        if (u.s.protocol === "v1") u.finalState = u.s.finish(true);
        else {
          setState(u.d, RUNNING);
          u.finalState = stateName(RUNNING);
        }
      }
    }
    cancel.check();
    await sink.commit();
    const downtimeMs = (sink.lastByteAt ?? performance.now()) - leftRunning;
    progress.update("done", w.dataBytes, true);
    progress.finish();
    const seconds = (performance.now() - t0) / 1000;
    const precopyBytes = units.reduce((a, u) => a + u.precopyBytes, 0);
    return {
      devices: units.map((u) => ({
        index: u.i,
        device: u.d.label,
        protocol: u.s.protocol,
        bytes: u.precopyBytes + u.stopCopyBytes,
        precopyBytes: u.precopyBytes,
        stopCopyBytes: u.stopCopyBytes,
        chunks: u.chunks,
        p2p: u.p2p,
        statesVisited: u.s.statesVisited(),
        finalState: u.finalState,
        migrationFlags: u.s.migrationFlags,
        sizeEstimate: u.s.sizeEstimate,
        configBytes: u.configBytes,
      })),
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
      downtimeLimitMs: policy ? policy.downtimeLimitMs : null,
    };
  } catch (e) {
    progress.finish();
    sink.abort();
    const where = restoreSources(units);
    const cause = cancel.signal && !(e instanceof InterruptedError)
      ? new InterruptedError(cancel.signal) // a signal closed the connection: say so, exit 130
      : e instanceof SysError && e.errno === Errno.EPIPE
      ? new VfioMigError(`${sink.label}: the reading end went away (broken pipe)`)
      : e;
    throw failure(`save of ${units.length} devices failed`, cause, where);
  }
}

/**
 * Pre-copy of all devices: each iteration reads every device's data_fd in turn, one
 * chunk at a time, until each has nothing now (or ITERATION_MS passed); then one
 * policy judges the sum of what the devices report (QEMU sums every device's
 * estimate against one threshold). Returns why pre-copy ended.
 */
async function precopy(
  units: SaveUnit[],
  w: StreamWriter,
  sink: Sink,
  policy: PrecopyPolicy,
  cancel: Cancellation,
  progress: Progress,
): Promise<SwitchReason> {
  const onUsr1 = () => policy.requested = true;
  try {
    Deno.addSignalListener("SIGUSR1", onUsr1);
  } catch { /* no SIGUSR1 here */ }
  let markers = 0; // DEV_INIT_DATA_SENT written, all devices
  try {
    for (;;) {
      const t = performance.now();
      const until = t + ITERATION_MS;
      const pending = units.slice();
      for (const u of units) {
        u.iterBytes = 0;
        u.status = null;
      }
      while (pending.length > 0 && performance.now() < until) {
        let moved = 0;
        for (let k = 0; k < pending.length;) {
          const u = pending[k];
          w.selectDevice(u.i);
          if (!u.s.readChunk || !u.s.precopyStatus) {
            // No non-blocking reads (protocol v1): the device's whole iteration in its turn.
            const chunks = w.chunks;
            u.status = await u.s.iterate(w, cancel, progress);
            u.chunks += w.chunks - chunks;
            u.iterBytes = u.status.bytes;
            pending.splice(k, 1);
            continue;
          }
          const n = u.s.readChunk(w, "pre-copy");
          if (n === null) {
            k++;
            continue;
          }
          if (n === 0) {
            u.status = u.s.precopyStatus(u.iterBytes);
            pending.splice(k, 1);
            continue;
          }
          u.iterBytes += n;
          u.chunks++;
          moved += n;
          k++;
          await w.flowControl();
          progress.update("pre-copy", w.dataBytes, false, `iteration ${policy.iterations + 1}`);
        }
        await cancel.checkpoint();
        if (moved === 0 && pending.length > 0) await sleep(1);
      }
      for (const u of pending) u.status = u.s.precopyStatus!(u.iterBytes);
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
        if (st.reinit) u.initSent = false; // new initial data: send (and have it acknowledged) again
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
        // Switchover-ack: every marker of every device acknowledged (QEMU waits for all).
        initAcked: markers === 0 || (sink.initAcks !== undefined ? sink.initAcks >= markers : sink.initAcked ?? true),
        backlogBytes: sink.queuedBytes ?? 0,
      });
      if (reason) {
        for (const u of units) {
          w.selectDevice(u.i);
          u.s.endPrecopy(w, u.status!.done);
        }
        return reason;
      }
      progress.update("pre-copy", w.dataBytes, false, `iteration ${policy.iterations}`);
      if (bytes === 0) await sleep(5);
    }
  } finally {
    try {
      Deno.removeSignalListener("SIGUSR1", onUsr1);
    } catch { /* was not added */ }
  }
}

/**
 * Stop-copy of all devices: one chunk from each device in turn until every data_fd
 * reported its end; a device whose read would block (EAGAIN) is passed over, and when
 * none had anything we wait a moment. Each device's data ends with its END_OF_STATE.
 */
async function drainAll(units: SaveUnit[], w: StreamWriter, cancel: Cancellation, progress: Progress) {
  const active = units.slice();
  while (active.length > 0) {
    let moved = 0;
    for (let k = 0; k < active.length;) {
      const u = active[k];
      w.selectDevice(u.i);
      if (!u.s.readChunk) {
        const [before, chunks] = [w.dataBytes, w.chunks];
        u.stopCopyBytes += await u.s.drain(w, cancel, progress);
        u.chunks += w.chunks - chunks;
        moved += w.dataBytes - before;
        active.splice(k, 1);
        continue;
      }
      const n = u.s.readChunk(w, "stop-copy");
      if (n === null) {
        k++;
        continue;
      }
      if (n === 0) {
        w.tag(TAG.END_OF_STATE);
        active.splice(k, 1);
        continue;
      }
      u.stopCopyBytes += n;
      u.chunks++;
      moved += n;
      k++;
      await w.flowControl();
      progress.update("stop-copy", w.dataBytes);
    }
    await cancel.checkpoint();
    if (moved === 0 && active.length > 0) await sleep(1);
  }
}

// ---------------------------------------------------------------------------
// load

export interface MultiLoadTarget {
  device: VfioDevice;
  /**
   * Which device of the stream goes here (--map SRC=DST): its source name as recorded
   * in the header, or its index. Absent on every target: the stream's order.
   */
  source?: string;
}

export interface MultiLoadOptions {
  noStart?: boolean;
  progress?: boolean;
  cancel?: Cancellation;
  protocol?: ProtocolChoice;
  noConfig?: boolean;
  /** Allow destinations without P2P (devices known to do no peer-to-peer DMA). */
  noP2p?: boolean;
}

export interface MultiDeviceLoadResult {
  index: number;
  source: string;
  device: string;
  protocol: Protocol;
  bytes: number;
  chunks: number;
  p2p: boolean;
  statesVisited: string[];
  finalState: string;
  config: ConfigRestore | null;
}

export interface MultiLoadResult {
  devices: MultiDeviceLoadResult[];
  bytes: number;
  streamBytes: number;
  /** DEV_INIT_DATA_SENT markers loaded, all devices (each acknowledged over a two-way transport). */
  initDataLoaded: number;
  seconds: number;
  throughput: number;
}

interface LoadUnit {
  i: number;
  entry: StreamDeviceEntry;
  d: VfioDevice;
  s: ResumeSession;
  p2p: boolean;
  v1: boolean;
  phase: RecordPhase;
  afterEnd: boolean;
  config: ConfigState | null;
  restored: ConfigRestore | null;
  bytes: number;
  chunks: number;
  finalState: string;
}

/** The header's device list, checked for shape. */
function streamDevices(h: StreamHeader): StreamDeviceEntry[] {
  const list = h.devices;
  if (!Array.isArray(list)) {
    throw new VfioMigError(
      `the stream holds one device (${h.source}): load it with a single --device`,
      "usage",
    );
  }
  if (list.length < 2 || list.length > MAX_DEVICES) {
    throw new StreamError(`the stream header lists ${list.length} devices (2 to ${MAX_DEVICES} expected)`);
  }
  list.forEach((e, i) => {
    if (
      typeof e !== "object" || e === null || typeof e.source !== "string" || typeof e.device !== "object" ||
      e.device === null || (e.protocol !== "v1" && e.protocol !== "v2")
    ) {
      throw new StreamError(`the stream header's devices[${i}] lacks source, device or a known protocol`);
    }
  });
  return list;
}

/** Which destination each stream device goes to (index = stream device index). */
export function mapTargets(entries: StreamDeviceEntry[], targets: MultiLoadTarget[]): VfioDevice[] {
  const names = entries.map((e, i) => `${i}=${e.source}`).join(", ");
  const mapped = targets.filter((t) => t.source !== undefined);
  if (mapped.length === 0) {
    if (targets.length !== entries.length) {
      throw new VfioMigError(
        `the stream holds ${entries.length} devices (${names}) and ${targets.length} destination` +
          `${targets.length === 1 ? " was" : "s were"} given: give one --device for each, in order, or --map SRC=DST`,
        "usage",
      );
    }
    return targets.map((t) => t.device);
  }
  if (mapped.length !== targets.length) {
    throw new VfioMigError("give every destination with --map SRC=DST, or all in order with --device", "usage");
  }
  const out: (VfioDevice | undefined)[] = new Array(entries.length);
  for (const t of targets) {
    const src = t.source!;
    let i = entries.findIndex((e) => e.source === src);
    if (i < 0 && /^\d+$/.test(src) && Number(src) < entries.length) i = Number(src);
    if (i < 0) {
      throw new VfioMigError(
        `--map ${src}=${t.device.label}: the stream has no device ${src} (it has ${names})`,
        "usage",
      );
    }
    if (out[i]) {
      throw new VfioMigError(`--map: stream device ${i} (${entries[i].source}) is mapped twice`, "usage");
    }
    out[i] = t.device;
  }
  const missing = entries.map((e, i) => (out[i] ? null : `${i}=${e.source}`)).filter((x) => x !== null);
  if (missing.length) {
    throw new VfioMigError(
      `--map: no destination for stream device${missing.length === 1 ? "" : "s"} ${missing.join(", ")}`,
      "usage",
    );
  }
  return out as VfioDevice[];
}

/**
 * Loads a multi-device stream. Every stream device needs a destination (in order, or
 * by `source`); all identities are checked before any device is touched.
 */
export async function loadMulti(
  targets: MultiLoadTarget[],
  source: StreamSource,
  opts: MultiLoadOptions = {},
): Promise<MultiLoadResult> {
  const t0 = performance.now();
  const cancel = opts.cancel ?? new Cancellation();
  const reader = new StreamReader(source);
  let units: LoadUnit[];
  let header: StreamHeader;
  try {
    sameDeviceTwice(targets.map((t) => t.device));
    header = await reader.readHeader();
    const entries = streamDevices(header);
    const devs = mapTargets(entries, targets);
    // Every identity first, then P2P, then the sessions: nothing is touched until all pass.
    const wrong = entries.map((e, i) => {
      const why = identityMismatch(e.device, streamIdentity(devs[i]));
      return why ? `stream device ${i} (${e.source}) -> ${devs[i].label}: ${why}` : null;
    }).filter((x) => x !== null);
    if (wrong.length) throw new VfioMigError(`wrong device: ${wrong.join("; ")}`, "stream");
    const probed = entries.map((e, i) => ({
      label: devs[i].label,
      protocol: e.protocol,
      flags: e.protocol === "v2" ? probeMigration(devs[i]) : 0,
    }));
    requireP2p(probed, !!opts.noP2p);
    units = entries.map((entry, i) => ({
      i,
      entry,
      d: devs[i],
      s: openResumeSession(devs[i], { ...header, protocol: entry.protocol }, opts.protocol ?? "auto"),
      p2p: hasP2p(probed[i].flags),
      v1: entry.protocol === "v1",
      phase: "setup" as RecordPhase,
      afterEnd: false,
      config: null,
      restored: null,
      bytes: 0,
      chunks: 0,
      finalState: "",
    }));
  } catch (e) {
    const err = failure(
      `load of ${targets.length} devices refused`,
      e,
      `no device was touched`,
    );
    await source.notify?.({ event: "done", ok: false, message: err.message });
    throw err;
  }
  const estimates = units.map((u) => u.entry.sizeEstimate);
  const progress = new Progress(
    !!opts.progress,
    estimates.every((x) => typeof x === "number") ? estimates.reduce((a, b) => a! + b!, 0) : null,
  );
  let cur: LoadUnit | null = null;
  let resumePaused = false;
  let initDataLoaded = 0;
  try {
    for (;;) {
      await cancel.checkpoint();
      const rec = await reader.next();
      if (rec.kind === "end") {
        for (const u of units) {
          if (u.phase !== "trailer" && u.phase !== "after-data" && !(u.v1 && u.phase === "iterate" && u.afterEnd)) {
            throw new StreamError(
              `unexpected end of stream for device ${u.i} (${u.entry.source}): expected ${
                expectedRecords(u.phase, u.v1)
              }`,
              rec.offset,
            );
          }
        }
        break;
      }
      if (rec.kind === "tag" && rec.tag === "DEVICE") {
        const i = rec.device!;
        if (i >= units.length) {
          throw new StreamError(`DEVICE ${i} selects a device the header does not list (${units.length})`, rec.offset);
        }
        cur = units[i];
        continue;
      }
      if (!cur) throw new StreamError("a record before any DEVICE tag in a multi-device stream", rec.offset);
      const u: LoadUnit = cur;
      const unexpected = (what: string) =>
        new StreamError(
          `device ${u.i} (${u.entry.source}): unexpected ${what} (expected ${expectedRecords(u.phase, u.v1)})`,
          rec.offset,
        );
      const prevEnd = u.afterEnd;
      u.afterEnd = rec.kind === "tag" && rec.tag === "END_OF_STATE";
      if (rec.kind === "tag") {
        switch (rec.tag) {
          case "DEV_SETUP_STATE":
            if (u.phase !== "setup") throw unexpected("DEV_SETUP_STATE");
            u.phase = "setup-end";
            break;
          case "END_OF_STATE":
            if (u.phase === "setup-end") {
              u.s.begin();
              if (!resumePaused) {
                resumePaused = true;
                await pausePoint((n) => u.d.sys.getenv(n), "resume", cancel);
              }
              u.phase = "iterate";
            } else if (u.phase === "iterate") {
              // end of an iteration
            } else if (u.phase === "stop-copy") u.phase = "after-data";
            else if (u.phase === "config-end") u.phase = "trailer";
            else throw unexpected("END_OF_STATE");
            break;
          case "DEV_INIT_DATA_SENT":
            if (u.phase !== "iterate" || u.v1) throw unexpected("DEV_INIT_DATA_SENT");
            // Everything before it reached the device: acknowledge this marker (the source
            // switches over once every device's markers are acknowledged).
            initDataLoaded++;
            await source.notify?.({ event: "init-loaded" });
            break;
          case "SWITCHOVER":
            if (u.phase !== "iterate" || u.v1) throw unexpected("SWITCHOVER");
            u.phase = "stop-copy";
            break;
          default:
            throw unexpected(rec.tag);
        }
        continue;
      }
      if (rec.tag === "DEV_CONFIG_STATE") {
        if (!(u.phase === "after-data" || (u.v1 && u.phase === "iterate" && prevEnd))) {
          throw unexpected("DEV_CONFIG_STATE");
        }
        u.config = decodeConfigState(rec.bytes);
        checkConfigIdentity(u.config, u.d);
        u.phase = "config-end";
        continue;
      }
      if (u.phase !== "iterate" && u.phase !== "stop-copy") throw unexpected("device data");
      u.s.data(rec.bytes);
      u.bytes += rec.bytes.length;
      u.chunks++;
      progress.update("resume", reader.dataBytes);
    }
    // The whole stream is verified: every driver takes its data (RESUMING -> STOP),
    // config spaces are restored, then all devices go RUNNING_P2P, and only then RUNNING.
    await pausePoint((n) => units[0].d.sys.getenv(n), "finish", cancel);
    for (const u of units) u.s.endData();
    for (const u of units) u.restored = u.config && !opts.noConfig ? restoreConfigState(u.config, u.d) : null;
    if (!opts.noStart) {
      for (const u of units) {
        if (u.p2p) setState(u.d, RUNNING_P2P, STOP);
      }
    }
    for (const u of units) u.finalState = u.s.finish(!!opts.noStart);
    progress.update("done", reader.dataBytes, true);
    progress.finish();
    await source.notify?.({
      event: "done",
      ok: true,
      message: units.map((u) => `${u.d.label} is ${u.finalState}`).join(", "),
      finalState: units[0].finalState,
    });
    const seconds = (performance.now() - t0) / 1000;
    return {
      devices: units.map((u) => ({
        index: u.i,
        source: u.entry.source,
        device: u.d.label,
        protocol: u.s.protocol,
        bytes: u.bytes,
        chunks: u.chunks,
        p2p: u.p2p,
        statesVisited: u.s.statesVisited(),
        finalState: u.finalState,
        config: u.restored,
      })),
      bytes: reader.dataBytes,
      streamBytes: reader.offset,
      initDataLoaded,
      seconds,
      throughput: seconds > 0 ? reader.dataBytes / seconds : 0,
    };
  } catch (e) {
    progress.finish();
    const where = units.map((u) => u.s.abort()).join(", ");
    const cause = cancel.signal && !(e instanceof InterruptedError) ? new InterruptedError(cancel.signal) : e;
    const err = failure(`load of ${units.length} devices failed`, cause, where);
    await source.notify?.({ event: "done", ok: false, message: err.message });
    throw err;
  }
}
