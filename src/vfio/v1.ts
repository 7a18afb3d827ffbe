// Migration protocol v1 (the deprecated region protocol) on one open device fd, as
// QEMU 7.2's hw/vfio/migration.c drives it: struct vfio_device_migration_info at
// offset 0 of the region whose CAP_TYPE is (3, 1), each field accessed only at its
// native width and alignment, and a data section at data_offset that may be mmap'd
// (sparse-mmap areas) or read and written with pread/pwrite.

import { Errno, SysError } from "../../ffi/errno.ts";
import { MAP, type Mapping, PROT, type Sys } from "../../ffi/sys.ts";
import {
  DEVICE_STATE_V1,
  IOCTL,
  REGION_SUBTYPE_MIGRATION_DEPRECATED,
  REGION_TYPE_MIGRATION_DEPRECATED,
  STRUCTS,
} from "../../ffi/vfio_uapi.ts";
import { VfioMigError } from "../errors.ts";
import { findRegionByType, mmapAreas, type RegionInfo, type SparseArea } from "./regions.ts";
import { errorName, type StateObserver } from "./v2.ts";

const { RUNNING, SAVING, RESUMING, MASK } = DEVICE_STATE_V1;
const F = STRUCTS.vfio_device_migration_info.fields;

/** VFIO_DEVICE_STATE_VALID: with RESUMING set, nothing else may be. */
export function v1StateValid(s: number): boolean {
  return s & RESUMING ? (s & MASK) === RESUMING : true;
}

/** VFIO_DEVICE_STATE_IS_ERROR: SAVING|RESUMING (110b). */
export function v1StateIsError(s: number): boolean {
  return (s & MASK) === (SAVING | RESUMING);
}

const V1_NAMES = ["stopped", "running", "stop-and-copy", "pre-copy", "resuming", "invalid", "error", "invalid"];

/** "running (001b)" and so on, as the v1 documentation names the bit patterns. */
export function v1StateName(s: number): string {
  const bits = (s & MASK).toString(2).padStart(3, "0");
  const extra = s & ~MASK ? ` +reserved 0x${((s & ~MASK) >>> 0).toString(16)}` : "";
  return `${V1_NAMES[s & MASK]} (${bits}b)${extra}`;
}

/** Finds the v1 migration region among a device's regions, or null. */
export function findMigrationRegion(sys: Sys, fd: number, numRegions: number): RegionInfo | null {
  return findRegionByType(
    sys,
    fd,
    numRegions,
    REGION_TYPE_MIGRATION_DEPRECATED,
    REGION_SUBTYPE_MIGRATION_DEPRECATED,
  );
}

/** The device went into the error state (SAVING|RESUMING). */
export class V1ErrorState extends VfioMigError {
  constructor(name: string, readonly state: number, step: string) {
    super(`${name}: ${step}: the device is in the error state ${v1StateName(state)}`, "device");
    this.name = "V1ErrorState";
  }
}

/** One mapped sparse area of the region. */
interface MappedArea extends SparseArea {
  map: Mapping;
}

export class MigrationV1 {
  /** device_state values written by this tool, in order (reports and tests). */
  readonly visited: number[] = [];
  /** Told of each device_state write and reset (null: nobody). */
  observer: StateObserver | null = null;
  #areas: MappedArea[] = [];
  /** Why mapping failed, when it did ("falling back to slow path"). */
  mmapError: string | null = null;
  readonly #u32 = new Uint8Array(4);
  readonly #u64 = new Uint8Array(8);

  constructor(readonly sys: Sys, readonly fd: number, readonly name: string, readonly region: RegionInfo) {}

  static find(sys: Sys, fd: number, name: string, numRegions: number): MigrationV1 | null {
    const r = findMigrationRegion(sys, fd, numRegions);
    return r ? new MigrationV1(sys, fd, name, r) : null;
  }

  // ---------------------------------------------------------------------------
  // Registers, each at its own width and offset.

  #readU32(field: number): number {
    const n = this.sys.pread(this.fd, this.#u32, this.region.offset + field);
    if (n !== 4) throw new SysError("pread", Errno.EIO, `short read of a migration register (${n} of 4 bytes)`);
    return new DataView(this.#u32.buffer).getUint32(0, true);
  }

  #readU64(field: number): number {
    const n = this.sys.pread(this.fd, this.#u64, this.region.offset + field);
    if (n !== 8) throw new SysError("pread", Errno.EIO, `short read of a migration register (${n} of 8 bytes)`);
    const v = new DataView(this.#u64.buffer).getBigUint64(0, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new VfioMigError(`${this.name}: the migration region reports 0x${v.toString(16)} (beyond 2^53)`);
    }
    return Number(v);
  }

  #write(field: number, width: 4 | 8, value: number): void {
    const b = width === 4 ? this.#u32 : this.#u64;
    const v = new DataView(b.buffer);
    if (width === 4) v.setUint32(0, value >>> 0, true);
    else v.setBigUint64(0, BigInt(value), true);
    const n = this.sys.pwrite(this.fd, b, this.region.offset + field);
    if (n !== width) {
      throw new SysError("pwrite", Errno.EIO, `short write of a migration register (${n} of ${width} bytes)`);
    }
  }

  readState(): number {
    return this.#readU32(F.device_state[0]);
  }
  /** Starts an iteration (the first read after data was taken); repeated reads have no side effect. */
  pendingBytes(): number {
    return this.#readU64(F.pending_bytes[0]);
  }
  /** The driver stages the next chunk before this read returns (save), or says where to put it (resume). */
  dataOffset(): number {
    return this.#readU64(F.data_offset[0]);
  }
  dataSize(): number {
    return this.#readU64(F.data_size[0]);
  }
  /** Resume: the chunk is in the data section; returns once the driver consumed it. */
  writeDataSize(n: number): void {
    this.#write(F.data_size[0], 8, n);
  }

  /**
   * vfio_migration_set_state(): read device_state, (state & mask) | value, refuse an
   * invalid combination, write; on a failed write re-read it, and report the error
   * state (QEMU 7.2 calls hw_error there; we throw V1ErrorState and the caller resets).
   * Returns the state written.
   */
  setState(mask: number, value: number, step: string): number {
    const cur = this.readState();
    const next = ((cur & mask) | value) >>> 0;
    if (!v1StateValid(next)) {
      throw new VfioMigError(
        `${this.name}: ${step}: refusing device_state ${v1StateName(next)} (from ${v1StateName(cur)}): ` +
          `VFIO_DEVICE_STATE_VALID fails`,
        "usage",
      );
    }
    const t = this.observer ? performance.now() : 0;
    const tell = (error?: string) =>
      this.observer?.stateChange({
        from: v1StateName(cur),
        to: v1StateName(next),
        ms: performance.now() - t,
        bits: { from: cur, to: next },
        error,
      });
    try {
      this.#write(F.device_state[0], 4, next);
    } catch (e) {
      tell(errorName(e));
      let now: number;
      try {
        now = this.readState();
      } catch {
        throw new VfioMigError(
          `${this.name}: ${step}: writing device_state failed and it cannot be read back`,
          "device",
          {
            cause: e,
          },
        );
      }
      if (v1StateIsError(now)) throw new V1ErrorState(this.name, now, step);
      throw new VfioMigError(
        `${this.name}: ${step}: writing device_state ${v1StateName(next)} failed (${(e as Error).message}); ` +
          `it is ${v1StateName(now)}`,
        "failure",
        { cause: e },
      );
    }
    tell();
    this.visited.push(next);
    return next;
  }

  /** VFIO_DEVICE_RESET (the device returns to running, 001b). */
  reset(): void {
    const t = this.observer ? performance.now() : 0;
    try {
      this.sys.ioctl(this.fd, IOCTL.DEVICE_RESET, null);
    } catch (e) {
      this.observer?.stateChange({
        from: null,
        to: v1StateName(V1.RUNNING),
        ms: performance.now() - t,
        reset: true,
        error: errorName(e),
      });
      throw e;
    }
    this.observer?.stateChange({ from: null, to: v1StateName(V1.RUNNING), ms: performance.now() - t, reset: true });
  }

  // ---------------------------------------------------------------------------
  // The data section.

  /** Maps every sparse area (vfio_region_mmap); on failure, none ("falling back to slow path"). */
  map(write: boolean): void {
    this.unmap();
    this.mmapError = null;
    const prot = PROT.READ | (write ? PROT.WRITE : 0);
    try {
      for (const a of mmapAreas(this.region)) {
        const map = this.sys.mmap(this.fd, a.size, prot, MAP.SHARED, this.region.offset + a.offset);
        this.#areas.push({ ...a, map });
      }
    } catch (e) {
      this.unmap();
      this.mmapError = e instanceof Error ? e.message : String(e);
      // As the seed's vfio_region_mmap failure: say so, then carry on with pread/pwrite.
      (this.observer?.warn ?? console.error)(
        `vfio-mig: warning: ${this.name}: mmap of the migration data section failed ` +
          `(${this.mmapError}): falling back to slow path (pread/pwrite)`,
      );
    }
  }

  unmap(): void {
    for (const a of this.#areas) {
      try {
        this.sys.munmap(a.map);
      } catch { /* unmapping is best effort */ }
    }
    this.#areas = [];
  }

  get mappedAreas(): readonly SparseArea[] {
    return this.#areas.map(({ offset, size }) => ({ offset, size }));
  }

  /**
   * get_data_section_size(): how much of `size` bytes at region offset `at` can be
   * taken in one piece, and a view of it when it lies in a mapped area (null: use
   * pread/pwrite). The areas need not be sorted.
   */
  section(at: number, size: number): { length: number; view: Uint8Array | null } {
    let limit = 0;
    for (const a of this.#areas) {
      if (at >= a.offset && at < a.offset + a.size) {
        const length = Math.min(size, a.offset + a.size - at);
        return { length, view: a.map.bytes.subarray(at - a.offset, at - a.offset + length) };
      }
      if (at < a.offset && (!limit || limit > a.offset)) limit = a.offset;
    }
    return { length: limit ? Math.min(size, limit - at) : size, view: null };
  }

  /** Checks that [at, at + size) lies inside the region (a driver bug otherwise). */
  checkBounds(at: number, size: number, what: string): void {
    if (at < STRUCTS.vfio_device_migration_info.size || at + size > this.region.size) {
      throw new VfioMigError(
        `${this.name}: the driver's ${what} (data_offset ${at}, ${size} bytes) does not fit the ` +
          `${this.region.size}-byte migration region`,
      );
    }
  }
}

export const V1 = { RUNNING, SAVING, RESUMING, MASK, STOP: 0 } as const;
