// The simulated kernel's driver interface, shaped like include/linux/vfio.h: the VFIO
// core (kernel.ts) owns the fd table, ioctl dispatch, argsz checks, feature ioctls, the
// FSM walk, fault injection and the call log; a driver (drivers/*.ts, one file each)
// fills in what `struct vfio_migration_ops` and its migration file's
// `file_operations` do in a real driver:
//
//   vfio_migration_ops.migration_set_state  -> SimDriver.step (one arc; the core walks
//                                              the path, as vfio_mig_get_next_state)
//   vfio_migration_ops.migration_get_state  -> SimDevice.meta.state (the core answers)
//   vfio_migration_ops.migration_get_data_size -> SimDriver.dataSize
//   migration file read / write / unlocked_ioctl (VFIO_MIG_GET_PRECOPY_INFO) / poll
//                                           -> MigrationFile.read / write / precopyInfo,
//                                              readiness through behaviours (quirks.ts)
//
// Behaviours (quirks.ts, quirks/*.ts) wrap these calls the way a buggy or unusual driver
// differs from a tidy one; the core applies them, so neither drivers nor quirks repeat
// the core's checks.

import { Errno, SysError } from "../../ffi/errno.ts";
import type { Sys } from "../../ffi/sys.ts";
import { DeviceState } from "../vfio/state_machine.ts";
import type { ModelInfo } from "./models.ts";
import type { SimDeviceMeta, SimStore } from "./store.ts";
import type { V1Device } from "./v1_device.ts";

const { RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = DeviceState;

export function sysErr(op: string, name: keyof typeof Errno, detail?: string): SysError {
  return new SysError(op, Errno[name], detail);
}

/** What VFIO_MIG_GET_PRECOPY_INFO reports, before the core encodes it. */
export interface PrecopyNumbers {
  initial: number;
  /** Data already queued in the migration file beyond the initial data. */
  queued: number;
  /** Data the device holds but has not queued yet (dirtied since). */
  unqueued: number;
}

/** How a read is being made. */
export interface ReadIo {
  /** Whether the data_fd has O_NONBLOCK (asked lazily: it costs an fcntl). */
  nonblock(): boolean;
  /** The v1 register front end is staging data (no data_fd; never non-blocking). */
  readonly v1: boolean;
}

/**
 * A migration file: what a data_fd is inside the driver. `fd` is a real descriptor that
 * stands for the kernel's anon inode (the core hands it out and dispatches calls on it).
 */
export abstract class MigrationFile {
  abstract readonly kind: "save" | "resume";
  /** Set by the driver when the session ends or the device resets: calls answer ENODEV. */
  disabled = false;
  /** The user closed its data_fd. */
  closed = false;
  /** Bytes handed out (save) or taken (resume) so far: the file position. */
  pos = 0;

  constructor(readonly fd: number) {}

  /** read(2) of a save file. */
  read(_buf: Uint8Array, _io: ReadIo): number {
    throw sysErr("read", "EBADF");
  }
  /** write(2) of a resume file. */
  write(_buf: Uint8Array): number {
    throw sysErr("write", "EBADF");
  }
  /** VFIO_MIG_GET_PRECOPY_INFO, after the core's argsz checks. */
  precopyInfo(): PrecopyNumbers {
    throw sysErr("ioctl", "ENOTTY");
  }
  /** Called after the core encoded a PRECOPY_INFO answer (REINIT bookkeeping). */
  afterPrecopyInfo(): void {}
  /** Flags PRECOPY_INFO returns after the precopy-info v2 opt-in (REINIT once). */
  takePrecopyFlags(): number {
    return 0;
  }
  /** Bytes queued now, ready to be read. */
  queued(): number {
    return 0;
  }
  /** Bytes still to come in this session, what the device has not queued yet included. */
  pending(): number {
    return this.queued();
  }
}

/** One open of a simulated device: the struct vfio_device of the simulator. */
export interface SimDevice {
  readonly fd: number;
  readonly store: SimStore;
  readonly meta: SimDeviceMeta;
  readonly info: ModelInfo;
  readonly host: Sys;
  /** "pci" (reset at first open and last close, FLR on reset) or "mdev" (state kept). */
  readonly family: "pci" | "mdev";
  /** PCI config space, as last written. */
  config: Uint8Array;
  /** The MSI-X BAR's contents, for models with MSI-X. */
  msixBar?: Uint8Array;
  /** The v1 register block, for protocol v1 devices. */
  v1?: V1Device;
  driver: SimDriver;
  /** This open opted in to precopy-info v2 (SET of MIG_PRECOPY_INFOv2). */
  precopyV2On: boolean;
  /** The fd was adopted (borrowed or inherited): no lock of its own. */
  readonly borrowed: boolean;
  /** Per-open state of behaviours (quirks), by name. */
  readonly quirkData: Map<string, unknown>;
  /** Writes device.json. */
  persist(): void;
  /** Appends to the call log. */
  log(entry: Record<string, unknown>): void;
  /** The device's data changed (load, running mutations, register writes). */
  dataChanged(): void;
  /** Whether a new save session carries the device's data (a quirk may say no). */
  sessionData(): boolean;
  /**
   * The device resets itself (a hardware event, not VFIO_DEVICE_RESET): sessions end, their
   * files answer ENODEV; the migration state becomes `to`.
   */
  selfReset(to: DeviceState, why: string): void;
}

/**
 * A driver model: one per open device. `step` is the driver's half of
 * migration_set_state (mtty_step_state); the rest are the hooks the core needs.
 */
export interface SimDriver {
  /** One arc of the FSM; returns a new migration file on the arcs that make one. */
  step(cur: DeviceState, next: DeviceState): MigrationFile | null;
  /** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: bytes STOP_COPY would produce (an estimate). */
  dataSize(): number;
  /** Lets a running device advance (dirty its state) before it is looked at. */
  tick(): void;
  /** Disables the session's files (reset, close, session left). */
  endSessions(): void;
  /** Whether the driver still holds `file` (the session it belongs to is open). */
  holds(file: MigrationFile): boolean;
  /** The device's data back to its power-on content (a PCI function's reset). */
  powerOn(): void;
  /** pread/pwrite of BAR `index` (not the MSI-X BAR): EINVAL unless the model has registers. */
  barAccess(index: number, off: number, buf: Uint8Array, write: boolean): number;
  /** Releases what the open holds (mappings). */
  close(): void;

  // The primitives the v1 register front end (v1_device.ts) drives directly.
  readonly saving: MigrationFile | undefined;
  readonly resuming: MigrationFile | undefined;
  /** A new save session in `state` (PRE_COPY or STOP_COPY); replaces none. */
  newSaveFile(state: DeviceState): MigrationFile;
  /** The session enters STOP_COPY: queue the final data. */
  fillStopCopy(): void;
  newResumeFile(): MigrationFile;
  /** RESUMING -> STOP: validate and load; throws SysError (EINVAL) when the data is bad. */
  loadState(): void;
  /** Forgets a file the core released. */
  forget(file: MigrationFile): void;
}

/** Whether a state lets the device run (and change its data). */
export function isRunning(s: DeviceState): boolean {
  return s === RUNNING || s === RUNNING_P2P || s === PRE_COPY || s === PRE_COPY_P2P;
}

export function isPrecopy(s: DeviceState): boolean {
  return s === PRE_COPY || s === PRE_COPY_P2P;
}

/**
 * A behaviour: how a particular driver differs from the tidy models, as hooks the core
 * calls around the driver's own ops (quirks.ts lists them; quirks/*.ts, one file each).
 * Every hook is optional; `next` runs the rest of the chain and then the driver.
 */
export interface Behaviour {
  /** Each open of the device; `first` is the open that took the lock. */
  open?(dev: SimDevice, first: boolean): void;
  /**
   * Before arc number `index` (0 = the first) of a SET's path, after the core's table
   * found it: "skip" stops the walk there as if done; a throw fails the SET.
   */
  arc?(dev: SimDevice, a: { cur: DeviceState; next: DeviceState; target: DeviceState; index: number }): "skip" | void;
  /** After a successful SET: an extra fd to hand out (a non-conformant data_fd), or null. */
  afterSet?(dev: SimDevice, s: { path: string[]; prev: DeviceState; file: MigrationFile | null }): number | null;
  /** A save file started a phase: created in PRE_COPY or STOP_COPY, or moved to STOP_COPY. */
  phase?(dev: SimDevice, file: MigrationFile, state: DeviceState): void;
  read?(dev: SimDevice, file: MigrationFile, buf: Uint8Array, io: ReadIo, next: (buf: Uint8Array) => number): number;
  write?(dev: SimDevice, file: MigrationFile, buf: Uint8Array, next: (buf: Uint8Array) => number): number;
  precopyInfo?(dev: SimDevice, file: MigrationFile, next: () => PrecopyNumbers): PrecopyNumbers;
  /** Milliseconds until a read of `file` would not block (0: it would not now). */
  readyIn?(dev: SimDevice, file: MigrationFile): number;
  /** After VFIO_DEVICE_RESET did its work. */
  reset?(dev: SimDevice): void;
  /** false: new save sessions carry no device data. */
  sessionData?(dev: SimDevice): boolean;
}

const SLEEPER = new Int32Array(new SharedArrayBuffer(4));

/** Blocks the thread for `ms` milliseconds: a driver's wait_event, in-process. */
export function sleepMs(ms: number): void {
  Atomics.wait(SLEEPER, 0, 0, ms);
}
