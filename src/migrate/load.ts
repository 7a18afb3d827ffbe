// Loading a stream into one device, or several: one road for N >= 1 devices.
//
//   refuse     the header, then every destination's identity, protocol and state, and
//              P2P on all when there are several, are checked before any device is
//              touched; a vfio-mig stream in a regular file is then checked whole
//              (src/stream/verify.ts, through the same descriptor with pread)
//   records    each device enters RESUMING when its setup section ends; each chunk
//              reaches its device only after its checksum matched, in the record order
//              of src/stream/grammar.ts
//   finish     after the trailer (the whole stream verified): each device's config
//              space is restored while it is still RESUMING (QEMU's vfio_load_state
//              loads DEV_CONFIG_STATE then), then every driver takes its data
//              (RESUMING -> STOP); several devices all go RUNNING_P2P, and only then
//              any RUNNING
//
// Any failure after a device entered RESUMING resets it (the only way out of
// RESUMING); every destination of the stream is reset together. Per-protocol work is in
// the resume sessions; this file never branches on the protocol.

import { VfioDevice } from "../device/open.ts";
import { StreamError, VfioMigError } from "../errors.ts";
import { identityMismatch, type StreamDeviceEntry, type StreamHeader } from "../stream/format.ts";
import { type RecordReader, StreamReader } from "../stream/reader.ts";
import { FdSource, openStreamSource, type StreamSource } from "../transport/transport.ts";
import { SEEK } from "../../ffi/sys.ts";
import { deviceOrigin, originDifferences } from "../device/origin.ts";
import {
  checkConfigIdentity,
  type ConfigRestore,
  type ConfigState,
  decodeConfigState,
  restoreConfigState,
} from "./config_state.ts";
import { checkDeviceSet, operationName, requireP2p } from "./group.ts";
import { probeMigration, type Protocol, type ProtocolChoice, type ResumeSession, v1Of } from "./protocol.ts";
import { Cancellation, failure, pausePoint, streamIdentity } from "./session.ts";
import { checkLine, deviceList, interruptedOr, type OperationContext, runOperation } from "./operation.ts";
import type { Events } from "../events/events.ts";
import { V1ResumeSession } from "./v1_session.ts";
import { V2ResumeSession } from "./v2_session.ts";
import { checkAt, grammarFor, headerDevices, PreadSource, verifyStream } from "../stream/verify.ts";
import { StreamAuthError, type StreamKey } from "../stream/mac.ts";
import { MIGRATION_FLAGS } from "../../ffi/vfio_uapi.ts";

export interface LoadOptions {
  /** Leave the devices in STOP after loading (default: RUNNING). */
  noStart?: boolean;
  /** A progress bar on stderr when it is a terminal (without `events`; with it, subscribe a ProgressBar). */
  progress?: boolean;
  /** Where the migration's events go (docs/events.md); the caller owns it. See SaveOptions.events. */
  events?: Events;
  cancel?: Cancellation;
  /** auto (default: the stream's), v1 or v2; must match the stream's. */
  protocol?: ProtocolChoice;
  /** Do not restore the DEV_CONFIG_STATE sections (their ids are still checked). */
  noConfig?: boolean;
  /** Several devices: allow destinations without P2P (devices known to do no peer-to-peer DMA). */
  noP2p?: boolean;
  /**
   * How to read records from the source (default: a vfio-mig StreamReader). Another
   * stream format (a QEMU migration stream's VFIO section) plugs in here.
   */
  reader?: (source: StreamSource) => RecordReader;
  /**
   * A vfio-mig stream in a regular file (a FdSource, or a path) is checked whole before
   * any device is touched (default true): every chunk's CRC, the record order, the
   * trailer and its totals, read through the same descriptor with pread. false: only as
   * the records are loaded (a damaged file then costs the destination its state). A
   * pipe or socket cannot be checked first. With `progress`, a line on a terminal.
   */
  verifyFirst?: boolean;
  /**
   * --verify-key: accept only a vfio-mig stream signed with this key (src/stream/mac.ts):
   * a file's MACs are all checked before any device is touched (with verifyFirst), and
   * every record's MAC again before its bytes reach a device; a pipe or socket is refused
   * at its first bad record. An unsigned stream, a QEMU stream or another key: refused
   * (StreamAuthError, exit 4) before any device is touched.
   */
  key?: StreamKey | null;
}

/**
 * A destination. `source` (--map SRC=DST) says which device of the stream goes here:
 * its source name as the header records it, or its index. Absent on every target:
 * the stream's order.
 */
export interface LoadTarget {
  device: VfioDevice;
  source?: string;
}

/** What the load did with one device. */
export interface DeviceLoadResult {
  /** The device's index in the stream. */
  index: number;
  /** The device the state was saved from (the header's name for it). */
  source: string;
  device: string;
  protocol: Protocol;
  bytes: number;
  chunks: number;
  p2p: boolean;
  statesVisited: string[];
  finalState: string;
  /** What its config section restored; null without one or with noConfig. */
  config: ConfigRestore | null;
}

/**
 * The result of a load. The per-device fields at the top (device, protocol,
 * statesVisited, finalState, source, config) are the first device's; `devices` has
 * each device's, in stream order.
 */
export interface LoadResult {
  device: string;
  protocol: Protocol;
  /** Device data bytes, all devices. */
  bytes: number;
  streamBytes: number;
  seconds: number;
  throughput: number;
  statesVisited: string[];
  finalState: string;
  source: string;
  config: ConfigRestore | null;
  /** DEV_INIT_DATA_SENT markers loaded, all devices (each acknowledged over a two-way transport). */
  initDataLoaded: number;
  devices: DeviceLoadResult[];
}

/** One destination in a load: its session and where its records are in the stream order. */
interface Unit {
  i: number;
  entry: StreamDeviceEntry;
  d: VfioDevice;
  s: ResumeSession;
  config: ConfigState | null;
  restored: ConfigRestore | null;
  bytes: number;
  chunks: number;
  finalState: string;
}

/** The resume session for a stream device's protocol; throws (nothing touched) when the device cannot. */
export function openResumeSession(d: VfioDevice, protocol: Protocol, want: ProtocolChoice): ResumeSession {
  if (want !== "auto" && want !== protocol) {
    throw new VfioMigError(
      `the stream was saved with migration protocol ${protocol}; --protocol ${want} cannot load it`,
      "usage",
    );
  }
  if (protocol === "v1") {
    const m = v1Of(d);
    if (!m) {
      throw new VfioMigError(
        `${d.label} has no v1 migration region (CAP_TYPE 3/1): it cannot load a protocol v1 stream`,
        "device",
      );
    }
    return V1ResumeSession.open(m);
  }
  probeMigration(d);
  return V2ResumeSession.open(d);
}

/**
 * Which destination each stream device goes to (index = stream device index): in
 * order, or by `source` (--map). Throws a usage error (exit 2) naming the stream's
 * devices when the destinations do not fit.
 */
export function mapTargets(entries: StreamDeviceEntry[], targets: LoadTarget[]): VfioDevice[] {
  const names = entries.map((e, i) => `${i}=${e.source}`).join(", ");
  const mapped = targets.filter((t) => t.source !== undefined);
  if (entries.length === 1 && targets.length > 1) {
    throw new VfioMigError(
      `the stream holds one device (${entries[0].source}): load it with a single --device`,
      "usage",
    );
  }
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

function asTargets(targets: VfioDevice | LoadTarget | readonly (VfioDevice | LoadTarget)[]): LoadTarget[] {
  const list = Array.isArray(targets) ? targets : [targets];
  return list.map((t) => (t instanceof VfioDevice ? { device: t } : t));
}

/**
 * Reads the header and checks every destination against it, then opens the resume
 * sessions: nothing is changed on any device until all pass. Throws VfioMigError:
 * stream (4) for a damaged header or another device's stream, usage (2) for
 * destinations that do not fit the stream, device (3) for one that cannot load it.
 */
async function openUnits(
  reader: RecordReader,
  targets: LoadTarget[],
  opts: LoadOptions,
): Promise<{ header: StreamHeader; units: Unit[]; warnings: { u: Unit; w: string }[] }> {
  checkDeviceSet(targets.map((t) => t.device), "load");
  const header = await reader.readHeader();
  const entries = headerDevices(header);
  const devs = mapTargets(entries, targets);
  const wrong = entries.map((e, i) => {
    const why = identityMismatch(e.device, streamIdentity(devs[i]));
    if (!why) return null;
    return entries.length === 1 ? why : `stream device ${i} (${e.source}) -> ${devs[i].label}: ${why}`;
  }).filter((x) => x !== null);
  if (wrong.length) throw new VfioMigError(`wrong device: ${wrong.join("; ")}`, "stream");
  const probed = entries.map((e, i) => {
    const flags = e.protocol === "v2" ? probeMigration(devs[i]) : 0;
    return { label: devs[i].label, protocol: e.protocol, flags, p2p: (flags & MIGRATION_FLAGS.P2P) !== 0 };
  });
  requireP2p(probed, !!opts.noP2p);
  const units = entries.map((entry, i): Unit => ({
    i,
    entry,
    d: devs[i],
    s: openResumeSession(devs[i], entry.protocol, opts.protocol ?? "auto"),
    config: null,
    restored: null,
    bytes: 0,
    chunks: 0,
    finalState: "",
  }));
  // Not refusals: the driver validates the data; the user hears why it might not load.
  const warnings = units.flatMap((u) =>
    originDifferences(u.entry.origin, deviceOrigin(u.d.sys, u.d.info.driver)).map((w) => ({ u, w }))
  );
  return { header, units, warnings };
}

/**
 * Loads a stream into one device, or into one per device of a multi-device stream
 * (in order, or by LoadTarget.source), from `input`: a StreamSource (transport.ts,
 * tcp.ts) or a path ("-" is standard input). Every identity is checked before any device is
 * touched; the devices are left RUNNING (STOP with noStart). Throws VfioMigError (the
 * message names the devices' states; exit code by kind), InterruptedError when
 * `opts.cancel` caught a signal.
 */
export async function load(
  targets: VfioDevice | LoadTarget | readonly (VfioDevice | LoadTarget)[],
  input: StreamSource | string,
  opts: LoadOptions = {},
): Promise<LoadResult> {
  const list = deviceList(asTargets(targets), "load");
  const source = typeof input === "string" ? openStreamSource(list[0].device.sys, input) : input;
  const cancel = opts.cancel ?? new Cancellation();
  return await runOperation({
    command: "load",
    devices: list.map((t) => t.device),
    cancel,
    events: opts.events,
    progress: opts.progress,
    interrupt: () => source.interrupt?.(),
    finally: () => {
      if (typeof input === "string") source.close();
    },
  }, (ctx) => loadFrom(list, source, ctx, opts));
}

/**
 * Where a vfio-mig stream in a regular file starts (the descriptor's offset), when the
 * load is to check it whole first (LoadOptions.verifyFirst); else null: a pipe, socket
 * or terminal cannot be read twice, another format has its own reader.
 */
function precheckStart(source: StreamSource, opts: LoadOptions): number | null {
  if (opts.verifyFirst === false || opts.reader || !(source instanceof FdSource)) return null;
  try {
    if (!source.sys.fstat(source.fd).isRegular) return null;
    return source.sys.lseek(source.fd, 0, SEEK.CUR);
  } catch {
    return null; // not seekable after all
  }
}

/**
 * The pre-check: the whole stream in the file, from `start`, through the descriptor the
 * load reads (pread; its offset does not move): every chunk's CRC, the record order, the
 * trailer and its totals, as the load will check them. Throws StreamError (where, and
 * which record) for a damaged file, InterruptedError on a signal.
 */
async function precheck(source: FdSource, start: number, ctx: OperationContext, opts: LoadOptions): Promise<void> {
  const line = checkLine(source.label, source.sys.fstat(source.fd).size - start, !!opts.progress);
  let ok = false;
  try {
    const r = await verifyStream(new PreadSource(source.sys, source.fd, source.label, start), {
      key: opts.key,
      checkConfig: (b) => void decodeConfigState(b),
      onProgress: line.update,
      checkpoint: () => ctx.cancel.checkpoint(),
    });
    if (!r.ok) {
      const p = r.problem!;
      const E = p.authentication ? StreamAuthError : StreamError;
      throw new E(p.message, p.offset ?? undefined, p.record ?? undefined);
    }
    ok = true;
  } finally {
    line.done(ok);
  }
}

async function loadFrom(
  list: LoadTarget[],
  source: StreamSource,
  ctx: OperationContext,
  opts: LoadOptions,
): Promise<LoadResult> {
  const { cancel, events } = ctx;
  const t0 = performance.now();
  const labels = list.map((t) => t.device.label);
  const what = operationName("load into", labels);
  const start = precheckStart(source, opts);
  const reader = opts.reader ? opts.reader(source) : new StreamReader(source, undefined, opts.key ?? null);
  let header: StreamHeader;
  let units: Unit[];
  let warnings: { u: Unit; w: string }[];
  try {
    if (opts.key && opts.reader) {
      throw new StreamAuthError(
        `the stream is not signed: it is a QEMU migration stream, which carries no MAC; --verify-key ` +
          `${opts.key.path} accepts only vfio-mig streams saved with --sign-key`,
        0,
      );
    }
    ({ header, units, warnings } = await openUnits(reader, list, opts));
    // The header matched every destination: before any is touched, the whole file.
    if (start !== null) {
      await pausePoint((n) => list[0].device.sys.getenv(n), "verify", cancel);
      await precheck(source as FdSource, start, ctx, opts);
    }
  } catch (e) {
    const err = failure(
      `${what} refused`,
      interruptedOr(cancel, e),
      labels.length === 1 ? `${labels[0]} was not touched` : "no device was touched",
    );
    await source.notify?.({ event: "done", ok: false, message: err.message, kind: err.kind });
    throw err;
  }
  events.devices(units.map((u) => ({ index: u.i, label: u.d.label })));
  events.header({
    mode: header.mode === "live" ? "live" : "offline",
    protocol: header.protocol,
    devices: units.map((u) => ({
      index: u.i,
      source: u.entry.source,
      protocol: u.entry.protocol,
      sizeEstimate: typeof u.entry.sizeEstimate === "number" ? u.entry.sizeEstimate : null,
    })),
  });
  for (const { u, w } of warnings) {
    events.note(`${u.d.label}: ${w}`, "warning", { index: u.i, label: u.d.label });
    console.error(`vfio-mig: warning: ${u.d.label}: ${w}`);
  }
  ctx.observe(units.map((u) => u.d));
  return await loadRecords(reader, source, header, units, cancel, events, opts, t0, what);
}

/** The records, then the finish; on any failure every destination is reset. */
async function loadRecords(
  reader: RecordReader,
  source: StreamSource,
  header: StreamHeader,
  units: Unit[],
  cancel: Cancellation,
  events: Events,
  opts: LoadOptions,
  t0: number,
  what: string,
): Promise<LoadResult> {
  events.phase("setup", "start");
  // The record grammar (src/stream/grammar.ts) says where each record belongs; a
  // multi-device stream names the device of each record with DEVICE tags, a
  // single-device stream has none.
  const grammar = grammarFor(units.map((u) => u.entry));
  let resumePaused = false;
  let initDataLoaded = 0;
  try {
    for (;;) {
      await cancel.checkpoint();
      const rec = await reader.next();
      const step = rec.kind === "end"
        ? grammar.end()
        : rec.kind === "data"
        ? (rec.tag === "DEV_DATA_STATE" ? grammar.data() : grammar.config())
        : rec.tag === "DEVICE"
        ? grammar.selectDevice(rec.device!)
        : grammar.tag(rec.tag);
      if (step.problem) throw new StreamError(step.problem, rec.offset, step.index);
      if (rec.kind === "end") break;
      const u = units[step.device ?? 0];
      switch (step.effect) {
        case "resume":
          u.s.begin();
          if (!resumePaused) {
            resumePaused = true;
            events.phase("setup", "end");
            events.phase("resume", "start");
            await pausePoint((n) => u.d.sys.getenv(n), "resume", cancel);
          }
          break;
        case "init-data":
          // Everything before it reached the device: acknowledge this marker (the source
          // switches over once every device's markers are acknowledged; again after a
          // REINIT).
          initDataLoaded++;
          if (source.notify) {
            await source.notify({ event: "init-loaded" });
            events.transport("init-ack", { acks: initDataLoaded });
          }
          break;
        case "config":
          if (rec.kind !== "data") break;
          checkAt(() => u.config = decodeConfigState(rec.bytes), rec.offset, step.index);
          checkConfigIdentity(u.config!, u.d);
          break;
        case "data":
          if (rec.kind !== "data") break;
          u.s.data(rec.bytes);
          u.bytes += rec.bytes.length;
          u.chunks++;
          events.progress("resume", reader.dataBytes);
          break;
      }
    }
    // The whole stream is verified. Config spaces are restored while the devices are
    // still RESUMING (QEMU: MSI-X table, enables, command register, in load_state);
    // then every driver takes its data (RESUMING -> STOP: it validates); then all go
    // RUNNING_P2P, and only then any RUNNING (QEMU's VM start).
    events.phase("resume", "end", { bytes: reader.dataBytes });
    events.phase("finish", "start");
    await pausePoint((n) => units[0].d.sys.getenv(n), "finish", cancel);
    events.phase("config", "start");
    for (const u of units) u.restored = u.config && !opts.noConfig ? restoreConfigState(u.config, u.d) : null;
    events.phase("config", "end", { bytes: units.reduce((a, u) => a + (u.restored ? u.config!.config.length : 0), 0) });
    for (const u of units) u.s.endData();
    if (!opts.noStart && units.length > 1) { for (const u of units) u.s.prepareStart(); }
    for (const u of units) u.finalState = u.s.finish(!!opts.noStart);
    const done = {
      ok: true,
      message: units.map((u) => `${u.d.label} is ${u.finalState}`).join(", "),
      finalState: units[0].finalState,
    };
    if (source.notify) {
      await source.notify({ event: "done", ...done });
      events.transport("peer-result", done);
    }
    events.phase("finish", "end");
    const seconds = (performance.now() - t0) / 1000;
    const perDevice = units.map((u): DeviceLoadResult => ({
      index: u.i,
      source: u.entry.source,
      device: u.d.label,
      protocol: u.s.protocol,
      bytes: u.bytes,
      chunks: u.chunks,
      p2p: u.s.p2p,
      statesVisited: u.s.statesVisited(),
      finalState: u.finalState,
      config: u.restored,
    }));
    const first = perDevice[0];
    return {
      device: first.device,
      protocol: first.protocol,
      bytes: reader.dataBytes,
      streamBytes: reader.offset,
      seconds,
      throughput: seconds > 0 ? reader.dataBytes / seconds : 0,
      statesVisited: first.statesVisited,
      finalState: first.finalState,
      source: header.source,
      config: first.config,
      initDataLoaded,
      devices: perDevice,
    };
  } catch (e) {
    // A signal closes a network source under a pending read: report the signal (exit 130).
    const err = failure(`${what} failed`, interruptedOr(cancel, e), units.map((u) => u.s.abort()).join(", "));
    await source.notify?.({ event: "done", ok: false, message: err.message, kind: err.kind });
    throw err;
  }
}
