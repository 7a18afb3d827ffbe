// A simulated vendor driver speaking migration protocol v1 (reference §1.9): region 9
// carries CAP_TYPE (3, 1) and, optionally, a sparse-mmap cap; its first 32 bytes are
// struct vfio_device_migration_info, accessed only at native width and alignment; the
// data section at DATA_OFFSET lives in a real memfd, so mmap of it is a real mapping.
//
// The register block behaves as documented: a read of pending_bytes starts an
// iteration (repeat reads have no side effect); a read of data_offset stages the next
// chunk into the data section; data_size then says how much. On resume, a write of
// data_size hands the chunk in the data section to the device.
//
// What the data is (the mtty or bulk model's save stream) comes from the kernel's
// migration-file machinery through V1Backend, so v1 and v2 devices of a model hold
// and move the same bytes.

import { Errno, SysError } from "../../ffi/errno.ts";
import { MAP, type Mapping, PROT, type Sys } from "../../ffi/sys.ts";
import {
  decode,
  DEVICE_STATE_V1,
  encodeInto,
  REGION_CAP,
  REGION_FLAGS,
  REGION_SUBTYPE_MIGRATION_DEPRECATED,
  REGION_TYPE_MIGRATION_DEPRECATED,
  STRUCTS,
} from "../../ffi/vfio_uapi.ts";

const { RUNNING, SAVING, RESUMING, MASK } = DEVICE_STATE_V1;

export const V1_REGION_INDEX = 9;
/** The data section starts one page in (page-aligned, as an mmap'd one must be). */
export const V1_DATA_OFFSET = 4096;
export const V1_DEFAULT_DATA_SIZE = 1 << 20;
export type V1Sparse = "full" | "partial" | "none";
export const V1_SPARSE: readonly V1Sparse[] = ["full", "partial", "none"];

/** What device.json keeps of a v1 device. */
export interface V1Meta {
  /** device_state bits (persisted like the v2 state). */
  state: number;
  /** Bytes in the data section (a multiple of 4096). */
  dataSize: number;
  /** full: the whole data section mmap-able; partial: two areas with holes; none: trapped only. */
  sparse: V1Sparse;
}

/** The device's save and resume streams, provided by the kernel's models. */
export interface V1Backend {
  startSave(precopy: boolean): void;
  toStopCopy(): void;
  /** Bytes still to come in this save session, dirty data included. */
  pending(): number;
  /** Next bytes of the save stream; 0 when there are none now. */
  read(buf: Uint8Array): number;
  endSave(): void;
  startResume(): void;
  /** Takes resume bytes; throws SysError when the device rejects them. */
  write(buf: Uint8Array): void;
  /** RESUMING ends: validate and load; throws SysError (EINVAL) when the data is bad. */
  load(): void;
  endResume(): void;
}

export interface V1Hooks {
  /** Fault injection: throws or returns "short"/null (the kernel's #fault). */
  fault(key: string, op: string): "short" | null;
  persist(): void;
  log(entry: Record<string, unknown>): void;
}

function einval(op: string, detail?: string): SysError {
  return new SysError(op, Errno.EINVAL, detail);
}

export function v1Valid(s: number): boolean {
  return s & RESUMING ? (s & MASK) === RESUMING : true;
}

export function v1IsError(s: number): boolean {
  return (s & MASK) === (SAVING | RESUMING);
}

/** The sparse areas (region offsets) of a layout. */
export function v1Areas(meta: V1Meta): { offset: number; size: number }[] {
  const d = meta.dataSize;
  switch (meta.sparse) {
    case "none":
      return [];
    case "full":
      return [{ offset: V1_DATA_OFFSET, size: d }];
    case "partial": {
      // Listed out of order on purpose (the kernel does not sort them): the data
      // section starts in a hole, and a hole separates the two areas.
      const q = Math.max(4096, Math.floor(d / 4 / 4096) * 4096);
      return [
        { offset: V1_DATA_OFFSET + 3 * q, size: d - 3 * q },
        { offset: V1_DATA_OFFSET + q, size: q },
      ].filter((a) => a.size > 0);
    }
  }
}

export class V1Device {
  readonly #memfd: number;
  /** The driver's own mapping of the data section (staging copies once, into it). */
  readonly #section: Mapping;
  /** An iteration is open (pending_bytes was read) and its pending count. */
  #iteration: { pending: number; staged: number | null } | null = null;
  #resumeOpen = false;
  #saveOpen = false;

  constructor(
    readonly host: Sys,
    readonly meta: V1Meta,
    readonly backend: V1Backend,
    readonly hooks: V1Hooks,
  ) {
    this.#memfd = host.memfd("vfio-mig-sim-v1-data");
    host.ftruncate(this.#memfd, meta.dataSize);
    this.#section = host.mmap(this.#memfd, meta.dataSize, PROT.READ | PROT.WRITE, MAP.SHARED, 0);
  }

  close(): void {
    this.#endSessions();
    this.host.munmap(this.#section);
    this.host.close(this.#memfd);
  }

  get regionSize(): number {
    return V1_DATA_OFFSET + this.meta.dataSize;
  }

  /** GET_REGION_INFO for the migration region: caps TYPE and SPARSE_MMAP, argsz retry. */
  regionInfo(arg: Uint8Array, regionOffset: number): void {
    const r = decode(STRUCTS.vfio_region_info, arg);
    const areas = v1Areas(this.meta);
    const hdr = STRUCTS.vfio_region_info.size;
    const typeCap = STRUCTS.vfio_region_info_cap_type.size;
    const sparseCap = this.meta.sparse === "none"
      ? 0
      : STRUCTS.vfio_region_info_cap_sparse_mmap.size + areas.length * STRUCTS.vfio_region_sparse_mmap_area.size;
    const need = hdr + typeCap + sparseCap;
    let flags = REGION_FLAGS.READ | REGION_FLAGS.WRITE | REGION_FLAGS.CAPS;
    if (this.meta.sparse !== "none") flags |= REGION_FLAGS.MMAP;
    const fits = r.argsz >= need && arg.length >= need;
    encodeInto(STRUCTS.vfio_region_info, {
      argsz: fits ? r.argsz : need,
      flags,
      index: r.index,
      cap_offset: fits ? hdr : 0,
      size: this.regionSize,
      offset: regionOffset,
    }, arg);
    if (!fits) return;
    const v = new DataView(arg.buffer, arg.byteOffset, arg.byteLength);
    // The sparse cap first, then TYPE: a chain is walked by `next`, not by position.
    const sparseAt = hdr;
    const typeAt = hdr + sparseCap;
    if (sparseCap) {
      v.setUint16(sparseAt, REGION_CAP.SPARSE_MMAP, true);
      v.setUint16(sparseAt + 2, 1, true);
      v.setUint32(sparseAt + 4, typeAt, true);
      v.setUint32(sparseAt + 8, areas.length, true);
      areas.forEach((a, i) => {
        encodeInto(STRUCTS.vfio_region_sparse_mmap_area, a, arg, sparseAt + 16 + 16 * i);
      });
    }
    v.setUint32(12, sparseCap ? sparseAt : typeAt, true); // cap_offset
    v.setUint16(typeAt, REGION_CAP.TYPE, true);
    v.setUint16(typeAt + 2, 1, true);
    v.setUint32(typeAt + 4, 0, true);
    v.setUint32(typeAt + 8, REGION_TYPE_MIGRATION_DEPRECATED, true);
    v.setUint32(typeAt + 12, REGION_SUBTYPE_MIGRATION_DEPRECATED, true);
  }

  /** pread/pwrite at `off` within the region. */
  access(buf: Uint8Array, off: number, write: boolean): number {
    const op = write ? "pwrite" : "pread";
    if (off >= V1_DATA_OFFSET) {
      const at = off - V1_DATA_OFFSET;
      if (at + buf.length > this.meta.dataSize) throw einval(op, "beyond the data section");
      return write ? this.host.pwrite(this.#memfd, buf, at) : this.host.pread(this.#memfd, buf, at);
    }
    const field = FIELD_AT.get(off);
    if (!field || field.width !== buf.length) {
      throw einval(op, `migration register access at ${off} of ${buf.length} bytes: not a field at its native width`);
    }
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (write) {
      const value = field.width === 4 ? v.getUint32(0, true) : Number(v.getBigUint64(0, true));
      this.#writeField(field.name, value);
      return buf.length;
    }
    const value = this.#readField(field.name);
    if (field.width === 4) v.setUint32(0, value, true);
    else v.setBigUint64(0, BigInt(value), true);
    return buf.length;
  }

  /** mmap of a sparse area (or part of one) of the data section: the memfd, really mapped. */
  mmap(length: number, prot: number, off: number): Mapping {
    const inside = v1Areas(this.meta).some((a) => off >= a.offset && off + length <= a.offset + a.size);
    if (!inside || off % 4096 !== 0) throw einval("mmap", "not within a sparse-mmap area");
    return this.host.mmap(this.#memfd, length, prot, MAP.SHARED, off - V1_DATA_OFFSET);
  }

  /** VFIO_DEVICE_RESET: RUNNING, sessions dropped. */
  reset(): void {
    this.#endSessions();
    this.#setState(RUNNING);
  }

  /** Another open reset the device (its device_state, RUNNING, came with device.json): the sessions end. */
  dropSessions(): void {
    this.#endSessions();
  }

  #endSessions(): void {
    if (this.#saveOpen) this.backend.endSave();
    if (this.#resumeOpen) this.backend.endResume();
    this.#saveOpen = false;
    this.#resumeOpen = false;
    this.#iteration = null;
  }

  #setState(s: number): void {
    this.meta.state = s >>> 0;
    this.hooks.persist();
  }

  #readField(name: FieldName): number {
    const s = this.meta.state;
    switch (name) {
      case "device_state":
        return s;
      case "pending_bytes": {
        if (!(s & SAVING) || v1IsError(s)) return 0;
        this.hooks.fault("v1:pending_bytes", "pread");
        this.#ensureSave();
        // The first read after data was taken starts a new iteration.
        if (!this.#iteration || this.#iteration.staged !== null) {
          this.#iteration = { pending: this.backend.pending(), staged: null };
        }
        return this.#iteration.pending;
      }
      case "data_offset": {
        if (s & RESUMING && !v1IsError(s)) return V1_DATA_OFFSET;
        if (!(s & SAVING) || v1IsError(s)) throw einval("pread", "data_offset outside a save or resume");
        this.hooks.fault("v1:data_offset", "pread");
        this.#ensureSave();
        if (!this.#iteration) this.#iteration = { pending: this.backend.pending(), staged: null };
        if (this.#iteration.staged === null) this.#iteration.staged = this.#stage();
        return V1_DATA_OFFSET;
      }
      case "data_size":
        if (s & SAVING && !v1IsError(s)) return this.#iteration?.staged ?? 0;
        return 0;
    }
  }

  /** Copies the next chunk of the save stream into the data section. */
  #stage(): number {
    const buf = this.#section.bytes;
    let n = 0;
    while (n < buf.length) {
      const got = this.backend.read(buf.subarray(n));
      if (got === 0) break;
      n += got;
    }
    this.hooks.log({ key: "v1:stage", bytes: n });
    return n;
  }

  #ensureSave(): void {
    if (!this.#saveOpen) {
      // Saving with no session (say, left SAVING by another process): start one.
      this.backend.startSave(!!(this.meta.state & RUNNING));
      this.#saveOpen = true;
    }
  }

  #writeField(name: FieldName, value: number): void {
    switch (name) {
      case "device_state":
        return this.#writeState(value);
      case "data_size": {
        const s = this.meta.state;
        if ((s & MASK) !== RESUMING) throw einval("pwrite", "data_size is written only while resuming");
        if (value > this.meta.dataSize) throw einval("pwrite", "data_size beyond the data section");
        this.hooks.fault("v1:data_size", "pwrite");
        this.backend.write(this.#section.bytes.subarray(0, value));
        this.hooks.log({ key: "v1:consume", bytes: value });
        return;
      }
      default:
        throw einval("pwrite", `${name} is read-only`);
    }
  }

  #writeState(next: number): void {
    const cur = this.meta.state;
    const fail = (detail: string, errno: number = Errno.EINVAL) => {
      this.hooks.log({ key: "v1:device_state", from: cur, to: next, err: detail });
      return new SysError("pwrite", errno, detail);
    };
    if (v1IsError(cur)) throw fail("the device is in the error state: reset it");
    if (!v1Valid(next)) throw fail("invalid device_state");
    if (next & ~MASK) throw fail("reserved device_state bits");
    this.hooks.fault("v1:device_state:write", "pwrite");
    try {
      this.hooks.fault("v1:device_state:error", "pwrite");
    } catch (e) {
      // An injected failure that leaves the device in the error state.
      this.#endSessions();
      this.#setState(SAVING | RESUMING);
      throw e;
    }
    if (next === cur) return;
    const was = { saving: !!(cur & SAVING), resuming: !!(cur & RESUMING), running: !!(cur & RUNNING) };
    const now = { saving: !!(next & SAVING), resuming: !!(next & RESUMING), running: !!(next & RUNNING) };
    if (was.resuming && now.saving) throw fail("resuming -> saving");
    if (was.saving && now.resuming) throw fail("saving -> resuming");
    if (was.saving && now.saving && !was.running && now.running) throw fail("stop-and-copy -> pre-copy");
    if (now.saving && !was.saving) {
      this.backend.startSave(now.running);
      this.#saveOpen = true;
      this.#iteration = null;
    } else if (now.saving && was.running && !now.running) {
      this.#ensureSave();
      this.backend.toStopCopy();
      this.#iteration = null;
    } else if (was.saving && !now.saving) {
      this.#endSessions();
    }
    if (now.resuming && !was.resuming) {
      this.backend.startResume();
      this.#resumeOpen = true;
    } else if (was.resuming && !now.resuming) {
      try {
        this.backend.load();
      } catch (e) {
        this.#endSessions();
        this.#setState(SAVING | RESUMING);
        this.hooks.log({ key: "v1:device_state", from: cur, to: next, err: "load failed: error state" });
        throw e;
      }
      this.#endSessions();
    }
    this.#setState(next);
    this.hooks.log({ key: "v1:device_state", from: cur, to: next });
  }
}

type FieldName = "device_state" | "pending_bytes" | "data_offset" | "data_size";
const F = STRUCTS.vfio_device_migration_info.fields;
const FIELD_AT = new Map<number, { name: FieldName; width: 4 | 8 }>([
  [F.device_state[0], { name: "device_state", width: 4 }],
  [F.pending_bytes[0], { name: "pending_bytes", width: 8 }],
  [F.data_offset[0], { name: "data_offset", width: 8 }],
  [F.data_size[0], { name: "data_size", width: 8 }],
]);
