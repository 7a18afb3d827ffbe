// Migration uAPI v2 on one open device fd: the feature calls (MIGRATION,
// MIG_DEVICE_STATE, MIG_DATA_SIZE), PRECOPY_INFO on the data_fd, and reset.

import { isErrno, SysError } from "../../ffi/errno.ts";
import type { Sys } from "../../ffi/sys.ts";
import {
  decode,
  encodeInto,
  FEATURE,
  FEATURE_FLAGS,
  featureBuffer,
  IOCTL,
  MIGRATION_FLAGS,
  STRUCTS,
} from "../../ffi/vfio_uapi.ts";
import { DeviceState, isHangingArc, resolvePath, stateName } from "./state_machine.ts";
import { VfioMigError } from "../errors.ts";

/**
 * The names of the VFIO_MIGRATION_* bits set in `flags` (struct
 * vfio_device_feature_migration's migration_flags, include/uapi/linux/vfio.h), in the
 * header's order: 0x7 -> ["STOP_COPY", "P2P", "PRE_COPY"]. Unknown bits are left out.
 */
export function migrationFlagNames(flags: number): string[] {
  return Object.entries(MIGRATION_FLAGS).filter(([, v]) => flags & v).map(([k]) => k);
}

export interface PrecopyInfo {
  initialBytes: number;
  dirtyBytes: number;
  flags: number;
}

export interface SetStateResult {
  state: DeviceState;
  /** A new data_fd handed out by the final arc, or null. */
  dataFd: number | null;
}

/**
 * Told of every state change this tool makes on a device (a SET, or a reset), with how
 * long it took: the events of a migration (src/events/). `from` is null when not known.
 */
export interface StateObserver {
  stateChange(c: {
    from: string | null;
    to: string;
    ms: number;
    bits?: { from: number | null; to: number };
    reset?: boolean;
    error?: string;
  }): void;
  /** A warning for the user (the caller keeps its terminal line tidy). */
  warn?(line: string): void;
}

/** The errno name of a failed call, else its message. */
export function errorName(e: unknown): string {
  return e instanceof SysError ? e.code : e instanceof Error ? e.message : String(e);
}

export class MigrationV2 {
  /** States visited by this tool's SET calls, in order (for reports and tests). */
  readonly visited: DeviceState[] = [];
  /** Told of each SET and reset (null: nobody). */
  observer: StateObserver | null = null;
  /** The state last read or set, for the observer's `from`. */
  #last: DeviceState | null = null;

  constructor(readonly sys: Sys, readonly fd: number, readonly name: string) {}

  /** VFIO_DEVICE_FEATURE GET MIGRATION: the device's migration flags. ENOTTY: not migratable. */
  migrationFlags(): number {
    const buf = featureBuffer(FEATURE_FLAGS.GET | FEATURE.MIGRATION, 8);
    this.sys.ioctl(this.fd, IOCTL.DEVICE_FEATURE, buf);
    return decode(STRUCTS.vfio_device_feature_migration, buf, 8).flags;
  }

  /** MIG_DATA_SIZE: estimated STOP_COPY bytes, or null where the kernel lacks it. */
  dataSize(): number | null {
    const buf = featureBuffer(FEATURE_FLAGS.GET | FEATURE.MIG_DATA_SIZE, 8);
    try {
      this.sys.ioctl(this.fd, IOCTL.DEVICE_FEATURE, buf);
    } catch (e) {
      if (isErrno(e, "ENOTTY") || isErrno(e, "EINVAL")) return null;
      throw e;
    }
    return decode(STRUCTS.vfio_device_feature_mig_data_size, buf, 8).stop_copy_length;
  }

  /**
   * Opts in to precopy-info v2 (Linux 7.1: SET of MIG_PRECOPY_INFOv2, no payload):
   * PRECOPY_INFO then zeroes `flags` on entry and may report VFIO_PRECOPY_INFO_REINIT.
   * False on kernels and drivers without it (EINVAL, ENOTTY); other errors throw.
   */
  enablePrecopyInfoV2(): boolean {
    const buf = featureBuffer(FEATURE_FLAGS.SET | FEATURE.MIG_PRECOPY_INFOv2, 0);
    try {
      this.sys.ioctl(this.fd, IOCTL.DEVICE_FEATURE, buf);
      return true;
    } catch (e) {
      if (isErrno(e, "EINVAL") || isErrno(e, "ENOTTY")) return false;
      throw e;
    }
  }

  /** PROBE of a feature: true when the device supports it. */
  probe(feature: number, set: boolean): boolean {
    const buf = featureBuffer(FEATURE_FLAGS.PROBE | (set ? FEATURE_FLAGS.SET : FEATURE_FLAGS.GET) | feature, 0);
    try {
      this.sys.ioctl(this.fd, IOCTL.DEVICE_FEATURE, buf);
      return true;
    } catch (e) {
      if (e instanceof SysError) return false;
      throw e;
    }
  }

  getState(): DeviceState {
    const buf = featureBuffer(FEATURE_FLAGS.GET | FEATURE.MIG_DEVICE_STATE, 8);
    this.sys.ioctl(this.fd, IOCTL.DEVICE_FEATURE, buf);
    return this.#last = decode(STRUCTS.vfio_device_feature_mig_state, buf, 8).device_state;
  }

  /**
   * SET MIG_DEVICE_STATE. Refuses, without asking the kernel, the STOP_COPY→PRE_COPY*
   * arcs that hang unfixed kernels; for those targets the current state is read first.
   */
  setState(target: DeviceState, knownCurrent?: DeviceState): SetStateResult {
    if (target === DeviceState.PRE_COPY || target === DeviceState.PRE_COPY_P2P) {
      const cur = knownCurrent ?? this.getState();
      if (isHangingArc(cur, target)) {
        throw new VfioMigError(
          `${this.name}: refusing ${stateName(cur)} -> ${stateName(target)}: the uAPI forbids it and ` +
            `Linux 6.2 and later hang on it (soft lockup) until the 2026 fix in 7.1 and stable kernels`,
          "usage",
        );
      }
    }
    const buf = featureBuffer(FEATURE_FLAGS.SET | FEATURE.MIG_DEVICE_STATE, 8);
    encodeInto(STRUCTS.vfio_device_feature_mig_state, { device_state: target, data_fd: -1 }, buf, 8);
    const from = knownCurrent ?? this.#last;
    const t = this.observer ? performance.now() : 0;
    try {
      this.sys.ioctl(this.fd, IOCTL.DEVICE_FEATURE, buf);
    } catch (e) {
      this.#last = null; // after a failed SET the device may be anywhere on the path (uAPI)
      this.observer?.stateChange({
        from: from === null ? null : stateName(from),
        to: stateName(target),
        ms: performance.now() - t,
        error: errorName(e),
      });
      throw e;
    }
    this.#last = target;
    this.observer?.stateChange({
      from: from === null ? null : stateName(from),
      to: stateName(target),
      ms: performance.now() - t,
    });
    this.visited.push(target);
    const fd = decode(STRUCTS.vfio_device_feature_mig_state, buf, 8).data_fd;
    return { state: target, dataFd: fd >= 0 ? fd : null };
  }

  /** VFIO_MIG_GET_PRECOPY_INFO on a data_fd (valid in PRE_COPY states only). */
  precopyInfo(dataFd: number): PrecopyInfo {
    const buf = new Uint8Array(STRUCTS.vfio_precopy_info.size);
    // flags must go in as 0: old drivers echo back whatever they were given.
    encodeInto(STRUCTS.vfio_precopy_info, { argsz: buf.length, flags: 0 }, buf);
    this.sys.ioctl(dataFd, IOCTL.MIG_GET_PRECOPY_INFO, buf);
    const d = decode(STRUCTS.vfio_precopy_info, buf);
    return { initialBytes: d.initial_bytes, dirtyBytes: d.dirty_bytes, flags: d.flags };
  }

  /** VFIO_DEVICE_RESET: the migration state becomes RUNNING (uAPI), any session ends. */
  reset(): void {
    const from = this.#last;
    const t = this.observer ? performance.now() : 0;
    try {
      this.sys.ioctl(this.fd, IOCTL.DEVICE_RESET, null);
    } catch (e) {
      this.#last = null;
      this.observer?.stateChange({
        from: from === null ? null : stateName(from),
        to: stateName(DeviceState.RUNNING),
        ms: performance.now() - t,
        reset: true,
        error: errorName(e),
      });
      throw e;
    }
    this.#last = DeviceState.RUNNING;
    this.observer?.stateChange({
      from: from === null ? null : stateName(from),
      to: stateName(DeviceState.RUNNING),
      ms: performance.now() - t,
      reset: true,
    });
  }

  /** The kernel's path for a request, for messages and dry runs. */
  static pathOf(flags: number, from: DeviceState, to: DeviceState): DeviceState[] | null {
    return resolvePath(flags, from, to);
  }
}
