// One interface for a migration protocol's save and resume sessions, with uAPI v2
// (v2_session.ts) and the deprecated v1 region protocol (v1_session.ts) behind it,
// so save.ts and load.ts run the same phases for both and for any number of devices,
// as the seed's SaveVMHandlers: save_setup, save_live_iterate,
// save_live_complete_precopy, cleanup; load_setup, load_state, and the migration
// notifier on failure.

import { isErrno } from "../../ffi/errno.ts";
import type { VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { MigrationV1 } from "../vfio/v1.ts";
import type { StateObserver } from "../vfio/v2.ts";
import type { StreamWriter } from "../stream/writer.ts";

export type Protocol = "v1" | "v2";
export type ProtocolChoice = Protocol | "auto";

export function parseProtocol(s: string | undefined, cmd: string): ProtocolChoice {
  if (s === undefined) return "auto";
  if (s === "auto" || s === "v1" || s === "v2") return s;
  throw new VfioMigError(`${cmd}: --protocol takes auto, v1 or v2 (not ${s})`, "usage");
}

/** What one pre-copy iteration did and what the device says is left. */
export interface IterationResult {
  bytes: number;
  /** The device has nothing pending (v2: initial_bytes is 0; v1: pending_bytes is 0). */
  done: boolean;
  /** The device's estimate of what is left (v1 reports only pending_bytes: dirtyBytes). */
  initialBytes: number;
  dirtyBytes: number;
  /**
   * The device reported VFIO_PRECOPY_INFO_REINIT (Linux 7.1, after the precopy-info v2
   * opt-in): new initial data appeared, so the initial data must be sent (and, over a
   * two-way transport, acknowledged) again before the switchover.
   */
  reinit?: boolean;
}

export type SavePhase = "pre-copy" | "stop-copy";

/**
 * One device's save, phase by phase (the seed's SaveVMHandlers). The orchestration
 * (save.ts) calls the same methods for every device and protocol, N >= 1 devices.
 */
export interface SaveSession {
  readonly protocol: Protocol;
  /** v2 migration flags (0 for v1). */
  readonly migrationFlags: number;
  /** MIG_DATA_SIZE (v2) or pending_bytes at setup (v1, live only), or null. */
  readonly sizeEstimate: number | null;
  /** Extra header fields describing the protocol (v1: the region layout). */
  readonly headerExtra: Record<string, unknown>;
  /** True when a live save opted in to precopy-info v2 (Linux 7.1) and the device took it. */
  readonly precopyInfoV2?: boolean;
  /** The device has the P2P states (RUNNING_P2P, PRE_COPY_P2P): it can be quiesced before any device stops. */
  readonly p2p: boolean;
  /** save_setup: DEV_SETUP_STATE, enter the saving state (still running when live), END_OF_STATE. */
  setup(w: StreamWriter, live: boolean): void;
  /**
   * save_live_iterate / save_live_complete_precopy, one step: emits what the device has
   * now, at most one chunk (v2: one buffer of non-blocking data_fd reads) or one
   * transaction (v1: data_offset, data_size, the data). Returns its bytes; 0 when the
   * device has nothing more in this pre-copy iteration or the stop-copy data ended;
   * null when a read would block (try again later).
   */
  readChunk(w: StreamWriter, phase: SavePhase): number | null;
  /** A pre-copy iteration's reads are done (`bytes` read): what the device says is left. */
  precopyStatus(bytes: number): IterationResult;
  /** The stop-copy size as the device reports it now, or null (for a pre-copy policy). */
  exactSize(): number | null;
  /**
   * The initial pre-copy data has all been sent (v2: DEV_INIT_DATA_SENT, which a
   * destination acknowledges over a two-way transport: QEMU's switchover-ack).
   * Returns false where the protocol has no such marker (v1).
   */
  initDataSent(w: StreamWriter): boolean;
  /** Pre-copy ends. */
  endPrecopy(w: StreamWriter): void;
  /**
   * The VM-stop prepare step (QEMU's vfio_vmstate_change_prepare), for every device
   * before any stops: with P2P, RUNNING -> RUNNING_P2P or PRE_COPY -> PRE_COPY_P2P, so
   * none starts peer-to-peer DMA into a device already stopped. A no-op without P2P.
   */
  prepareStop(): void;
  /** save_live_complete_precopy, first half: leave RUNNING (or RUNNING_P2P) for the stop-and-copy state. */
  stop(w: StreamWriter): void;
  /** save_live_complete_precopy, end: readChunk returned 0 in stop-copy; END_OF_STATE. */
  endStopCopy(w: StreamWriter): void;
  /** save_cleanup after a complete stream: the final state (RUNNING when `resume`), its name. */
  finish(resume: boolean): string;
  /** After finish(false), for every device before any starts: STOP -> RUNNING_P2P (a no-op without P2P). */
  prepareStart(): void;
  /** After finish(false) and prepareStart(): start the device again (RUNNING). Returns the state's name. */
  start(): string;
  /**
   * After a failure, for every device before any is put back: a device found running
   * that is now stopped rejoins RUNNING_P2P (so none runs while another may still be
   * stopped). Best effort: abort() recovers what this could not. A no-op without P2P.
   */
  prepareRecovery(): void;
  /** Failure or cancel (the seed's migration notifier): release and put the device back. */
  abort(): string;
  statesVisited(): string[];
}

export interface ResumeSession {
  readonly protocol: Protocol;
  /** The device has the P2P states. */
  readonly p2p: boolean;
  /** load_setup: enter RESUMING (after the stream's setup section). */
  begin(): void;
  /** One DEV_DATA_STATE record, written to the device as one transaction (v1) or in order (v2). */
  data(bytes: Uint8Array): void;
  /** All data written: let the driver take it (v2: RESUMING -> STOP; v1: nothing yet). */
  endData(): void;
  /** For every device before any starts (unless noStart): STOP -> RUNNING_P2P (a no-op without P2P). */
  prepareStart(): void;
  /** The device's final state: RUNNING, or stopped with `noStart`. Returns its name. */
  finish(noStart: boolean): string;
  /** After a failure: abort the session (reset where needed). Returns where the device is. */
  abort(): string;
  /** True once the device was asked to change anything. */
  readonly touched: boolean;
  statesVisited(): string[];
}

/** The v1 migration region of a device, looked up once. */
export function v1Of(d: VfioDevice): MigrationV1 | null {
  const cached = v1Cache.get(d);
  if (cached !== undefined) return cached;
  let found: MigrationV1 | null = null;
  try {
    found = MigrationV1.find(d.sys, d.fd, d.label, d.deviceInfo().numRegions);
  } catch {
    found = null;
  }
  if (found) found.observer = v1Observers.get(d) ?? null;
  v1Cache.set(d, found);
  return found;
}
const v1Cache = new WeakMap<VfioDevice, MigrationV1 | null>();
const v1Observers = new WeakMap<VfioDevice, StateObserver>();

/**
 * Sets (or with null, removes) the observer of the device's v1 protocol, now if v1Of
 * found it already, else when it does: observing does not scan a v2 device's regions.
 */
export function observeV1(d: VfioDevice, observer: StateObserver | null): void {
  if (observer) v1Observers.set(d, observer);
  else v1Observers.delete(d);
  const m = v1Cache.get(d);
  if (m) m.observer = observer;
}

/**
 * The protocol to use on a device: v2 when asked or when `auto` finds it (auto
 * prefers v2), else v1 when the device has the v1 migration region.
 */
export function chooseProtocol(d: VfioDevice, want: ProtocolChoice): Protocol {
  let v2Error: unknown = null;
  if (want !== "v1") {
    try {
      d.migration.migrationFlags();
      return "v2";
    } catch (e) {
      v2Error = e;
    }
    if (want === "v2") throw notMigratable(d, v2Error, "v2");
  }
  if (v1Of(d)) return "v1";
  throw notMigratable(d, v2Error, want);
}

function notMigratable(d: VfioDevice, v2Error: unknown, want: ProtocolChoice): VfioMigError {
  const driver = d.info.driver ?? "unknown";
  if (want === "v1") {
    return new VfioMigError(
      `${d.label}: no v1 migration region (no region has CAP_TYPE type 3 / subtype 1); ` +
        `the driver (${driver}) does not speak migration protocol v1`,
      "device",
    );
  }
  if (v2Error === null || isErrno(v2Error, "ENOTTY")) {
    return new VfioMigError(
      `${d.label}: this device's driver (${driver}) does not support migration ` +
        `(VFIO_DEVICE_FEATURE MIGRATION: ENOTTY${want === "auto" ? "; and no v1 migration region" : ""}); ` +
        `a vendor variant driver (e.g. mlx5_vfio_pci) is needed`,
      "device",
    );
  }
  return new VfioMigError(
    `${d.label}: cannot query migration support: ${v2Error instanceof Error ? v2Error.message : v2Error}`,
    "device",
  );
}

function cannotMigrate(d: VfioDevice, e: unknown): VfioMigError {
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

/**
 * The device's VFIO_DEVICE_FEATURE_MIGRATION flags (uAPI v2), or a clear error when it
 * cannot migrate: VfioMigError (exit 3), ENOTTY naming the driver.
 */
export function probeMigration(d: VfioDevice): number {
  try {
    return d.migration.migrationFlags();
  } catch (e) {
    throw cannotMigrate(d, e);
  }
}
