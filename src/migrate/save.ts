// Saving a device's migration state into a stream. One function per phase, as the
// seed's SaveVMHandlers: setup, pre-copy (live only), stop-copy, cleanup.

import { Errno, isErrno, SysError } from "../../ffi/errno.ts";
import type { VfioDevice } from "../device/open.ts";
import { InterruptedError, VfioMigError } from "../errors.ts";
import { FORMAT_VERSION, type StreamHeader, TAG } from "../stream/format.ts";
import { StreamWriter } from "../stream/writer.ts";
import type { Sink } from "../transport/transport.ts";
import { VERSION } from "../version.ts";
import { encodeConfigState, readConfigState } from "./config_state.ts";
import { PrecopyPolicy, type SwitchReason } from "./precopy.ts";
import { chooseProtocol, type Protocol, type ProtocolChoice, type SaveSession, v1Of } from "./protocol.ts";
import { Cancellation, failure, pausePoint, Progress, streamIdentity } from "./session.ts";
import { V1SaveSession } from "./v1_session.ts";
import { V2SaveSession } from "./v2_session.ts";

export interface SaveOptions {
  /** Leave the device RUNNING after a successful save (default: STOP). */
  resume?: boolean;
  /** Pre-copy while the device runs before stopping it (needs PRE_COPY). */
  live?: boolean;
  /** Upper bound of the pre-copy phase, in ms (default 60 s). */
  maxPrecopyMs?: number;
  /** The downtime to aim for when leaving pre-copy, in ms (default 300, as QEMU). */
  downtimeLimitMs?: number;
  progress?: boolean;
  cancel?: Cancellation;
  chunkSize?: number;
  /** Migration protocol: auto (default: v2 when the device has it, else v1), v1 or v2. */
  protocol?: ProtocolChoice;
  /** The header's creation time (default now; fixed for reproducible streams). */
  created?: Date;
}

export interface SaveResult {
  device: string;
  protocol: Protocol;
  bytes: number;
  streamBytes: number;
  precopyBytes: number;
  stopCopyBytes: number;
  seconds: number;
  /** Bytes per second of device data. */
  throughput: number;
  /** Time from leaving RUNNING to the last byte written, ms. */
  downtimeMs: number;
  /** Time from leaving RUNNING until the destination reported RUNNING (two-way transports), ms. */
  downtimeToRunningMs: number | null;
  /** Pre-copy iterations (live saves). */
  iterations: number;
  /** Why pre-copy ended: converged, max-precopy, requested (SIGUSR1); null for offline saves. */
  switchReason: SwitchReason | null;
  /** Measured pre-copy bandwidth, bytes/s, or null. */
  bandwidth: number | null;
  /** The downtime limit aimed for, ms (live saves). */
  downtimeLimitMs: number | null;
  /** Live v2 saves: whether the device took the precopy-info v2 opt-in (Linux 7.1); null otherwise. */
  precopyInfoV2: boolean | null;
  /** How many times the device reported VFIO_PRECOPY_INFO_REINIT (new initial data). */
  reinits: number;
  /** DEV_INIT_DATA_SENT markers written (one per time the initial data was all sent). */
  initDataSent: number;
  /** Over a two-way transport: how many of them the destination acknowledged; else null. */
  initAcks: number | null;
  /** What stop-copy was expected to send when pre-copy ended (bytes, transport backlog included), live saves. */
  estimateAtSwitch: number | null;
  /** Bytes the transport still held unsent when the device left RUNNING. */
  backlogAtSwitch: number;
  statesVisited: string[];
  finalState: string;
  migrationFlags: number;
  sizeEstimate: number | null;
  /** Bytes of PCI config space in the DEV_CONFIG_STATE section (0: none). */
  configBytes: number;
}

function notMigratable(d: VfioDevice, e: unknown): VfioMigError {
  if (isErrno(e, "ENOTTY")) {
    return new VfioMigError(
      `${d.label}: this device's driver (${d.info.driver ?? "unknown"}) does not support migration ` +
        `(VFIO_DEVICE_FEATURE MIGRATION: ENOTTY); a vendor variant driver (e.g. mlx5_vfio_pci) is needed`,
      "device",
    );
  }
  return new VfioMigError(
    `${d.label}: cannot query migration support: ${e instanceof Error ? e.message : e}`,
    "device",
  );
}

/** Migration flags, or a clear error when the device cannot migrate. */
export function probeMigration(d: VfioDevice): number {
  try {
    return d.migration.migrationFlags();
  } catch (e) {
    throw notMigratable(d, e);
  }
}

export async function save(d: VfioDevice, sink: Sink, opts: SaveOptions = {}): Promise<SaveResult> {
  const t0 = performance.now();
  const cancel = opts.cancel ?? new Cancellation();
  const live = !!opts.live;
  let session: SaveSession;
  try {
    session = openSaveSession(d, opts.protocol ?? "auto", live);
  } catch (e) {
    sink.abort(); // nothing was changed on the device; leave no partial output either
    throw e;
  }
  const progress = new Progress(!!opts.progress, session.sizeEstimate);
  const w = new StreamWriter(sink, opts.chunkSize);
  let precopyBytes = 0;
  let policy: PrecopyPolicy | null = null;
  let switchReason: SwitchReason | null = null;
  let reinits = 0;
  let initMarkers = 0;
  let backlogAtSwitch = 0;

  try {
    // setup
    const header: StreamHeader = {
      format: "vfio-mig",
      version: FORMAT_VERSION,
      tool: `vfio-mig ${VERSION}`,
      protocol: session.protocol,
      created: (opts.created ?? new Date()).toISOString(),
      source: d.label,
      device: streamIdentity(d),
      migrationFlags: session.migrationFlags,
      sizeEstimate: session.sizeEstimate,
      mode: live ? "live" : "offline",
      ...session.headerExtra,
    };
    w.header(header);
    session.setup(w, live);
    progress.update("setup", 0, true);
    const getenv = (n: string) => d.sys.getenv(n);
    await pausePoint(getenv, "setup", cancel);

    // pre-copy: iterations while the device runs, until the rest fits the downtime limit
    if (live) {
      await pausePoint(getenv, "pre-copy", cancel);
      policy = new PrecopyPolicy(opts.downtimeLimitMs, opts.maxPrecopyMs);
      const p = policy;
      const onUsr1 = () => p.requested = true;
      try {
        Deno.addSignalListener("SIGUSR1", onUsr1);
      } catch { /* no SIGUSR1 here */ }
      try {
        let initSent = false;
        for (;;) {
          const t = performance.now();
          const it = await session.iterate(w, cancel, progress);
          precopyBytes += it.bytes;
          if (it.bytes > 0) p.meter.add(it.bytes, performance.now() - t);
          if (it.reinit) {
            // New initial data (Linux 7.1 REINIT): send it all, mark it again and, over
            // a two-way transport, wait for the destination to acknowledge that marker.
            reinits++;
            initSent = false;
          }
          if (!initSent && it.initialBytes === 0) {
            if (session.initDataSent(w)) initMarkers++;
            initSent = true;
          }
          switchReason = p.decide({
            initialBytes: it.initialBytes,
            dirtyBytes: it.dirtyBytes,
            done: it.done,
            exact: () => session.exactSize(),
            initAcked: initAcked(sink, initMarkers),
            backlogBytes: sink.queuedBytes ?? 0,
          });
          if (switchReason) {
            session.endPrecopy(w, it.done);
            break;
          }
          progress.update("pre-copy", w.dataBytes, false, `iteration ${p.iterations}`);
          // Nothing new this round: give the device time to dirty more (or the peer to ack).
          if (it.bytes === 0) await new Promise((r) => setTimeout(r, 5));
        }
      } finally {
        try {
          Deno.removeSignalListener("SIGUSR1", onUsr1);
        } catch { /* was not added */ }
      }
    }

    // stop-copy
    backlogAtSwitch = sink.queuedBytes ?? 0;
    const leftRunning = performance.now();
    session.stop(w);
    await pausePoint(getenv, "stop-copy", cancel);
    await session.drain(w, cancel, progress);

    // config state (vfio_save_state), after the device data
    const config = readConfigState(d);
    if (config) {
      w.sized(TAG.DEV_CONFIG_STATE, encodeConfigState(config));
      w.tag(TAG.END_OF_STATE);
    }
    w.end();
    await w.flowControl();
    // The last byte is written (a file's fsync and rename in commit() come after the downtime).
    const wroteAt = performance.now();

    // cleanup: end the session, then make the output visible (over TCP: wait for
    // the destination's result)
    await pausePoint(getenv, "finish", cancel);
    const finalState = session.finish(!!opts.resume);
    cancel.check();
    await sink.commit();
    const downtimeMs = (sink.lastByteAt ?? wroteAt) - leftRunning;
    progress.update("done", w.dataBytes, true);
    progress.finish();
    const seconds = (performance.now() - t0) / 1000;
    return {
      device: d.label,
      protocol: session.protocol,
      bytes: w.dataBytes,
      streamBytes: w.written,
      precopyBytes,
      stopCopyBytes: w.dataBytes - precopyBytes,
      seconds,
      throughput: seconds > 0 ? w.dataBytes / seconds : 0,
      downtimeMs,
      downtimeToRunningMs: sink.peerDoneAt ? sink.peerDoneAt - leftRunning : null,
      iterations: policy?.iterations ?? 0,
      switchReason,
      bandwidth: policy?.lastRate ? policy.lastRate * 1000 : null, // what the switchover was judged by
      downtimeLimitMs: policy ? policy.downtimeLimitMs : null,
      precopyInfoV2: live ? session.precopyInfoV2 ?? null : null,
      reinits,
      initDataSent: initMarkers,
      initAcks: sink.initAcks ?? null,
      estimateAtSwitch: policy ? policy.lastEstimate : null,
      backlogAtSwitch,
      statesVisited: session.statesVisited(),
      finalState,
      migrationFlags: session.migrationFlags,
      sizeEstimate: session.sizeEstimate,
      configBytes: config ? config.config.length : 0,
    };
  } catch (e) {
    progress.finish();
    sink.abort();
    const where = session.abort();
    const cause = cancel.signal && !(e instanceof InterruptedError)
      ? new InterruptedError(cancel.signal) // the signal closed the connection: say so, exit 130
      : e instanceof SysError && e.errno === Errno.EPIPE
      ? new VfioMigError(`${sink.label}: the reading end went away (broken pipe)`)
      : e;
    throw failure(`save from ${d.label} failed`, cause, where);
  }
}

/**
 * Switchover-ack: true when every DEV_INIT_DATA_SENT marker written so far was
 * acknowledged. One-way sinks (files, pipes) cannot acknowledge: true. A protocol
 * without the marker (v1) needs no acknowledgement.
 */
function initAcked(sink: Sink, markers: number): boolean {
  if (markers === 0) return true; // nothing to acknowledge (the policy still waits for initial_bytes 0)
  if (sink.initAcks !== undefined) return sink.initAcks >= markers;
  return sink.initAcked ?? true;
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
