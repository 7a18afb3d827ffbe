// Saving a device's migration state into a stream. One function per phase, as the
// seed's SaveVMHandlers: setup, pre-copy (live only), stop-copy, cleanup.

import { Errno, isErrno, SysError } from "../../ffi/errno.ts";
import type { VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
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
  const session = openSaveSession(d, opts.protocol ?? "auto", live);
  const progress = new Progress(!!opts.progress, session.sizeEstimate);
  const w = new StreamWriter(sink, opts.chunkSize);
  let precopyBytes = 0;
  let policy: PrecopyPolicy | null = null;
  let switchReason: SwitchReason | null = null;

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
          if (!initSent && it.initialBytes === 0) initSent = session.initDataSent(w) || true;
          switchReason = p.decide({
            initialBytes: it.initialBytes,
            dirtyBytes: it.dirtyBytes,
            done: it.done,
            exact: () => session.exactSize(),
            initAcked: sink.initAcked ?? true,
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

    // cleanup: end the session, then make the output visible (over TCP: wait for
    // the destination's result)
    await pausePoint(getenv, "finish", cancel);
    const finalState = session.finish(!!opts.resume);
    cancel.check();
    await sink.commit();
    const downtimeMs = (sink.lastByteAt ?? performance.now()) - leftRunning;
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
      bandwidth: policy?.meter.rate() ? policy.meter.rate()! * 1000 : null,
      downtimeLimitMs: policy ? policy.downtimeLimitMs : null,
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
    const cause = e instanceof SysError && e.errno === Errno.EPIPE
      ? new VfioMigError(`${sink.label}: the reading end went away (broken pipe)`)
      : e;
    throw failure(`save from ${d.label} failed`, cause, where);
  }
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
