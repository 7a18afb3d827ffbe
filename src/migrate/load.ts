// Loading a stream into one device, or several: one road for N >= 1 devices.
//
//   refuse     the header, then every destination's identity, protocol and state, and
//              P2P on all when there are several, are checked before any device is
//              touched
//   records    each device enters RESUMING when its setup section ends; each chunk
//              reaches its device only after its checksum matched, in the record order
//              of src/stream/order.ts
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
import { InterruptedError, StreamError, VfioMigError } from "../errors.ts";
import { identityMismatch, MAX_DEVICES, type StreamDeviceEntry, type StreamHeader } from "../stream/format.ts";
import { type RecordReader, StreamReader } from "../stream/reader.ts";
import { openSource, type StreamSource } from "../transport/transport.ts";
import {
  checkConfigIdentity,
  type ConfigRestore,
  type ConfigState,
  decodeConfigState,
  restoreConfigState,
} from "./config_state.ts";
import { checkDeviceSet, operationName, requireP2p } from "./group.ts";
import { type Protocol, type ProtocolChoice, type ResumeSession, v1Of } from "./protocol.ts";
import { probeMigration } from "./save.ts";
import { Cancellation, failure, pausePoint, Progress, streamIdentity } from "./session.ts";
import { V1ResumeSession } from "./v1_session.ts";
import { V2ResumeSession } from "./v2_session.ts";
import { expectedRecords, type RecordPhase } from "../stream/order.ts";
import { MIGRATION_FLAGS } from "../../ffi/vfio_uapi.ts";

export interface LoadOptions {
  /** Leave the devices in STOP after loading (default: RUNNING). */
  noStart?: boolean;
  progress?: boolean;
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
  phase: RecordPhase;
  /** The last record was END_OF_STATE. */
  afterEnd: boolean;
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
 * The stream's devices: the header's `devices` (several), or the header itself (one).
 * Throws StreamError for a list of the wrong shape or an unknown protocol.
 */
function streamDevices(h: StreamHeader): StreamDeviceEntry[] {
  const list = h.devices;
  if (list === undefined) {
    if (h.protocol !== "v2" && h.protocol !== "v1") {
      throw new StreamError(`the stream uses migration protocol ${h.protocol}; this vfio-mig speaks v1 and v2`);
    }
    return [{
      source: h.source,
      device: h.device,
      protocol: h.protocol,
      migrationFlags: h.migrationFlags,
      sizeEstimate: h.sizeEstimate,
      ...(h.v1 ? { v1: h.v1 } : {}),
    }];
  }
  if (!Array.isArray(list) || list.length < 2 || list.length > MAX_DEVICES) {
    throw new StreamError(
      `the stream header lists ${Array.isArray(list) ? list.length : "no"} devices (2 to ${MAX_DEVICES} expected)`,
    );
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
): Promise<{ header: StreamHeader; units: Unit[] }> {
  checkDeviceSet(targets.map((t) => t.device), "load");
  const header = await reader.readHeader();
  const entries = streamDevices(header);
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
    phase: "setup",
    afterEnd: false,
    config: null,
    restored: null,
    bytes: 0,
    chunks: 0,
    finalState: "",
  }));
  return { header, units };
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
  const list = asTargets(targets);
  if (list.length === 0) throw new VfioMigError("load: give at least one device", "usage");
  if (typeof input !== "string") return await loadFrom(list, input, opts);
  const source = openSource(list[0].device.sys, input);
  try {
    return await loadFrom(list, source, opts);
  } finally {
    source.close();
  }
}

async function loadFrom(list: LoadTarget[], source: StreamSource, opts: LoadOptions): Promise<LoadResult> {
  const t0 = performance.now();
  const cancel = opts.cancel ?? new Cancellation();
  const labels = list.map((t) => t.device.label);
  const what = operationName("load into", labels);
  const reader = opts.reader ? opts.reader(source) : new StreamReader(source);
  let header: StreamHeader;
  let units: Unit[];
  try {
    ({ header, units } = await openUnits(reader, list, opts));
  } catch (e) {
    const cause = cancel.signal && !(e instanceof InterruptedError) ? new InterruptedError(cancel.signal) : e;
    const err = failure(
      `${what} refused`,
      cause,
      labels.length === 1 ? `${labels[0]} was not touched` : "no device was touched",
    );
    await source.notify?.({ event: "done", ok: false, message: err.message });
    throw err;
  }
  const estimates = units.map((u) => u.entry.sizeEstimate);
  const progress = new Progress(
    !!opts.progress,
    estimates.every((x) => typeof x === "number") ? estimates.reduce((a, b) => a! + b!, 0) : null,
  );
  // A multi-device stream names the device of each record with DEVICE tags; a
  // single-device stream has none, and all its records are its one device's.
  const tagged = units.length > 1;
  let cur: Unit | null = tagged ? null : units[0];
  let resumePaused = false;
  let initDataLoaded = 0;
  try {
    for (;;) {
      await cancel.checkpoint();
      const rec = await reader.next();
      if (rec.kind === "end") {
        for (const u of units) {
          const v1 = u.s.protocol === "v1";
          if (u.phase !== "trailer" && u.phase !== "after-data" && !(v1 && u.phase === "iterate" && u.afterEnd)) {
            const expected = expectedRecords(u.phase, v1);
            throw new StreamError(
              tagged
                ? `unexpected end of stream for device ${u.i} (${u.entry.source}): expected ${expected}`
                : `unexpected end of stream (expected ${expected})`,
              rec.offset,
            );
          }
        }
        break;
      }
      if (tagged && rec.kind === "tag" && rec.tag === "DEVICE") {
        const i = rec.device!;
        if (i >= units.length) {
          throw new StreamError(`DEVICE ${i} selects a device the header does not list (${units.length})`, rec.offset);
        }
        cur = units[i];
        continue;
      }
      if (!cur) throw new StreamError("a record before any DEVICE tag in a multi-device stream", rec.offset);
      const u: Unit = cur;
      const v1 = u.s.protocol === "v1";
      const unexpected = (what: string) => {
        const expected = `unexpected ${what} (expected ${expectedRecords(u.phase, v1)})`;
        return new StreamError(tagged ? `device ${u.i} (${u.entry.source}): ${expected}` : expected, rec.offset);
      };
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
              // end of an iteration (v1: also of the complete phase)
            } else if (u.phase === "stop-copy") u.phase = "after-data";
            else if (u.phase === "config-end") u.phase = "trailer";
            else throw unexpected("END_OF_STATE");
            break;
          case "DEV_INIT_DATA_SENT":
            if (u.phase !== "iterate" || v1) throw unexpected("DEV_INIT_DATA_SENT");
            // Everything before it reached the device: acknowledge this marker (the source
            // switches over once every device's markers are acknowledged; again after a
            // REINIT).
            initDataLoaded++;
            await source.notify?.({ event: "init-loaded" });
            break;
          case "SWITCHOVER":
            if (u.phase !== "iterate" || v1) throw unexpected("SWITCHOVER");
            u.phase = "stop-copy";
            break;
          default:
            throw unexpected(rec.tag);
        }
        continue;
      }
      if (rec.tag === "DEV_CONFIG_STATE") {
        if (!(u.phase === "after-data" || (v1 && u.phase === "iterate" && prevEnd))) {
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
    // The whole stream is verified. Config spaces are restored while the devices are
    // still RESUMING (QEMU: MSI-X table, enables, command register, in load_state);
    // then every driver takes its data (RESUMING -> STOP: it validates); then all go
    // RUNNING_P2P, and only then any RUNNING (QEMU's VM start).
    await pausePoint((n) => units[0].d.sys.getenv(n), "finish", cancel);
    for (const u of units) u.restored = u.config && !opts.noConfig ? restoreConfigState(u.config, u.d) : null;
    for (const u of units) u.s.endData();
    if (!opts.noStart && tagged) { for (const u of units) u.s.prepareStart(); }
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
    progress.finish();
    // A signal closes a network source under a pending read: report the signal (exit 130).
    const cause = cancel.signal && !(e instanceof InterruptedError) ? new InterruptedError(cancel.signal) : e;
    const err = failure(`${what} failed`, cause, units.map((u) => u.s.abort()).join(", "));
    await source.notify?.({ event: "done", ok: false, message: err.message });
    throw err;
  }
}
