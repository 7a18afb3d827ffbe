// Saving a device's migration state into a stream. One function per phase, as the
// seed's SaveVMHandlers: setup, pre-copy (live only), stop-copy, cleanup.

import { Errno, isErrno, SysError } from "../../ffi/errno.ts";
import { MIGRATION_FLAGS } from "../../ffi/vfio_uapi.ts";
import type { VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { readSome } from "../io.ts";
import { DeviceState, isSavingState, stateName } from "../migration/state_machine.ts";
import { FORMAT_VERSION, type StreamHeader, TAG } from "../stream/format.ts";
import { StreamWriter } from "../stream/writer.ts";
import type { Sink } from "../transport/transport.ts";
import { VERSION } from "../version.ts";
import { Cancellation, failure, pausePoint, Progress, recoverDevice, streamIdentity } from "./session.ts";

export interface SaveOptions {
  /** Leave the device RUNNING after a successful save (default: STOP). */
  resume?: boolean;
  /** Pre-copy while the device runs before stopping it (needs PRE_COPY). */
  live?: boolean;
  /** Upper bound of the pre-copy phase, in ms. */
  maxPrecopyMs?: number;
  progress?: boolean;
  cancel?: Cancellation;
  chunkSize?: number;
}

export interface SaveResult {
  device: string;
  bytes: number;
  streamBytes: number;
  precopyBytes: number;
  stopCopyBytes: number;
  seconds: number;
  /** Bytes per second of device data. */
  throughput: number;
  /** Time from leaving RUNNING to the last byte written, ms (live saves). */
  downtimeMs: number;
  statesVisited: string[];
  finalState: string;
  migrationFlags: number;
  sizeEstimate: number | null;
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
  const flags = probeMigration(d);
  const sizeEstimate = d.migration.dataSize();
  const live = !!opts.live;
  if (live && !(flags & MIGRATION_FLAGS.PRE_COPY)) {
    throw new VfioMigError(
      `${d.label}: --live needs PRE_COPY support; this device's migration flags are 0x${flags.toString(16)}`,
      "usage",
    );
  }
  let found = d.migration.getState();
  if (found === DeviceState.ERROR) {
    throw new VfioMigError(
      `${d.label} is in the ERROR state: recover it with 'vfio-mig reset --device ${d.label}' first`,
      "device",
    );
  }
  if (found === DeviceState.RESUMING) {
    throw new VfioMigError(`${d.label} is RESUMING (a load is in progress or was abandoned): reset it first`, "device");
  }
  // A device left in a saving state by an interrupted save: end that session first,
  // so that STOP_COPY below opens a fresh data_fd.
  if (isSavingState(found)) {
    d.migration.setState(DeviceState.STOP, found);
    found = DeviceState.RUNNING;
  }
  if (live && found !== DeviceState.RUNNING) {
    throw new VfioMigError(`${d.label} is ${stateName(found)}: a live save starts from RUNNING`, "usage");
  }
  const restoreTo = found; // the state to go back to after a failed save
  const progress = new Progress(!!opts.progress, sizeEstimate);
  const w = new StreamWriter(sink, opts.chunkSize);
  let dataFd: number | null = null;
  let precopyBytes = 0;
  let leftRunning = 0;
  const state = { cur: found };

  const readLoop = async (phase: "pre-copy" | "stop-copy", fd: number): Promise<number> => {
    let total = 0;
    for (;;) {
      await cancel.checkpoint();
      let n: number;
      try {
        n = readSome(d.sys, fd, w.payload);
      } catch (e) {
        if (phase === "pre-copy" && isErrno(e, "ENOMSG")) return total; // nothing now
        throw e;
      }
      if (n === 0) return total;
      w.data(n);
      total += n;
      progress.update(phase, w.dataBytes);
    }
  };

  try {
    // setup
    const header: StreamHeader = {
      format: "vfio-mig",
      version: FORMAT_VERSION,
      tool: `vfio-mig ${VERSION}`,
      protocol: "v2",
      created: new Date().toISOString(),
      source: d.label,
      device: streamIdentity(d),
      migrationFlags: flags,
      sizeEstimate,
      mode: live ? "live" : "offline",
    };
    w.header(header);
    w.tag(TAG.DEV_SETUP_STATE);
    w.tag(TAG.END_OF_STATE);
    progress.update("setup", 0, true);
    const getenv = (n: string) => d.sys.getenv(n);
    await pausePoint(getenv, "setup", cancel);

    // pre-copy: read the initial data while the device runs
    if (live) {
      dataFd = d.migration.setState(DeviceState.PRE_COPY, state.cur).dataFd;
      state.cur = DeviceState.PRE_COPY;
      if (dataFd === null) throw new VfioMigError(`${d.label}: RUNNING -> PRE_COPY returned no data_fd`);
      await pausePoint(getenv, "pre-copy", cancel);
      const deadline = performance.now() + (opts.maxPrecopyMs ?? 10_000);
      for (;;) {
        precopyBytes += await readLoop("pre-copy", dataFd);
        const info = d.migration.precopyInfo(dataFd);
        if (info.initialBytes === 0 || performance.now() > deadline) {
          if (info.initialBytes === 0) w.tag(TAG.DEV_INIT_DATA_SENT);
          else w.tag(TAG.END_OF_STATE);
          break;
        }
        await new Promise((r) => setTimeout(r, 1));
      }
    }

    // stop-copy
    w.tag(TAG.SWITCHOVER);
    leftRunning = performance.now();
    const r = d.migration.setState(DeviceState.STOP_COPY, state.cur);
    state.cur = DeviceState.STOP_COPY;
    if (r.dataFd !== null) {
      if (dataFd !== null) {
        d.sys.close(r.dataFd);
        throw new VfioMigError(`${d.label}: data_fd out of sync (the device was reset asynchronously?)`);
      }
      dataFd = r.dataFd;
    }
    if (dataFd === null) throw new VfioMigError(`${d.label}: STOP_COPY returned no data_fd`);
    await pausePoint(getenv, "stop-copy", cancel);
    await readLoop("stop-copy", dataFd);
    // STOP_COPY's end of stream is permanent: a second read must say 0 again.
    w.tag(TAG.END_OF_STATE);
    const downtimeMs = performance.now() - leftRunning;
    w.end();

    // cleanup: end the session, then make the output visible
    await pausePoint(getenv, "finish", cancel);
    d.sys.close(dataFd);
    dataFd = null;
    const finalState = opts.resume ? DeviceState.RUNNING : DeviceState.STOP;
    d.migration.setState(finalState, state.cur);
    state.cur = finalState;
    cancel.check();
    sink.commit();
    progress.update("done", w.dataBytes, true);
    progress.finish();
    const seconds = (performance.now() - t0) / 1000;
    return {
      device: d.label,
      bytes: w.dataBytes,
      streamBytes: w.written,
      precopyBytes,
      stopCopyBytes: w.dataBytes - precopyBytes,
      seconds,
      throughput: seconds > 0 ? w.dataBytes / seconds : 0,
      downtimeMs,
      statesVisited: d.migration.visited.map(stateName),
      finalState: stateName(finalState),
      migrationFlags: flags,
      sizeEstimate,
    };
  } catch (e) {
    progress.finish();
    sink.abort();
    if (dataFd !== null) {
      try {
        d.sys.close(dataFd);
      } catch { /* closing is best effort here */ }
    }
    const where = recoverDevice(d, restoreTo);
    const cause = e instanceof SysError && e.errno === Errno.EPIPE
      ? new VfioMigError(`${sink.label}: the reading end went away (broken pipe)`)
      : e;
    throw failure(`save from ${d.label} failed`, cause, where);
  }
}
