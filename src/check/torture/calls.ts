// The torture's calls: every call it makes on a device is one of these, written to the
// trace before it is made (so a call that never returns is on record) and executed by
// Executor, which turns every SysError into an errno name (a result, never a throw).
// A replay (replay.ts) runs the same list through the same Executor.
//
// Shapes: data_fds are named by slot (1, 2, ...: the order the device handed them out);
// bytes travel base64 in `data`, or as `orig: [offset, length]` of the device's own
// state captured at the start (the replay file carries that state once, as blob lines).
// VFIO calls as include/uapi/linux/vfio.h defines them: VFIO_DEVICE_FEATURE
// (MIGRATION, MIG_DEVICE_STATE GET/SET, MIG_DATA_SIZE), VFIO_DEVICE_RESET,
// VFIO_DEVICE_GET_REGION_INFO, VFIO_MIG_GET_PRECOPY_INFO, and read/write/pread/close
// on data_fds, pread/pwrite/mmap on the device fd's regions.

import { Buffer } from "node:buffer";
import { SysError } from "../../../ffi/errno.ts";
import { PROT, type Sys } from "../../../ffi/sys.ts";
import { REGION_FLAGS } from "../../../ffi/vfio_uapi.ts";
import { openDevice, type VfioDevice } from "../../device/open.ts";
import { VfioMigError } from "../../errors.ts";
import { MigrationV2 } from "../../vfio/v2.ts";
import { getRegionInfo } from "../../vfio/regions.ts";
import { SimKernel } from "../../sim/kernel.ts";

export type Call =
  | { op: "open" }
  | { op: "reopen" }
  | { op: "flags" }
  | { op: "get"; dev2?: boolean }
  | {
    op: "set";
    state: number;
    dev2?: boolean; /** The state before, as last read (for reports). */
    from?: number | null;
  }
  | { op: "reset" }
  | { op: "data-size"; dev2?: boolean }
  | { op: "read"; slot: number; len: number }
  | { op: "write"; slot: number; data?: string; orig?: [number, number] }
  | { op: "pread"; slot: number; len: number; offset: number }
  | { op: "close"; slot: number }
  | { op: "precopy-info"; slot: number }
  | { op: "region-info"; index: number }
  | { op: "region-read"; index: number; offset: number; len: number; dev2?: boolean }
  | { op: "region-write"; index: number; offset: number; data?: string; orig?: [number, number] }
  | { op: "mmap"; index: number; offset: number; len: number }
  | { op: "dup" };

export interface Result {
  /** errno name of a failed call, else null. */
  errno: string | null;
  /** read/write/pread byte count; GET/SET state; MIG_DATA_SIZE; region size; flags. */
  ret?: number;
  /** The data_fd slot a SET handed out. */
  slot?: number;
  /** PRECOPY_INFO's initial and dirty bytes. */
  info?: [number, number];
}

/** One-line description of a call, for reports. */
export function describe(c: Call): string {
  const d = c as Record<string, unknown>;
  const on = d.dev2 ? " (second fd)" : "";
  switch (c.op) {
    case "set":
      return `SET MIG_DEVICE_STATE ${c.from != null ? `${stateText(c.from)} -> ` : ""}${stateText(c.state)}${on}`;
    case "get":
      return `GET MIG_DEVICE_STATE${on}`;
    case "write":
      return `write(data_fd#${c.slot}, ${
        c.orig ? `${c.orig[1]} bytes of the saved state at ${c.orig[0]}` : `${bytesOf(c).length} bytes`
      })`;
    case "read":
      return `read(data_fd#${c.slot}, ${c.len})`;
    case "pread":
      return `pread(data_fd#${c.slot}, ${c.len}, offset ${c.offset})`;
    case "close":
      return `close(data_fd#${c.slot})`;
    case "precopy-info":
      return `VFIO_MIG_GET_PRECOPY_INFO(data_fd#${c.slot})`;
    case "region-read":
      return `pread region ${c.index} at ${c.offset}, ${c.len} bytes${on}`;
    case "region-write":
      return `pwrite region ${c.index} at ${c.offset}, ${
        c.orig ? `${c.orig[1]} bytes of the saved state at ${c.orig[0]}` : `${bytesOf(c).length} bytes`
      }`;
    case "mmap":
      return `mmap region ${c.index} at ${c.offset}, ${c.len} bytes (read it, unmap)`;
    case "region-info":
      return `VFIO_DEVICE_GET_REGION_INFO ${c.index}`;
    case "data-size":
      return `GET MIG_DATA_SIZE${on}`;
    case "reset":
      return "VFIO_DEVICE_RESET";
    case "flags":
      return "GET MIGRATION (flags)";
    case "open":
      return "open the device";
    case "reopen":
      return "close and reopen the device";
    case "dup":
      return "a second fd on the device file (pidfd_getfd)";
  }
}

const STATES = ["ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"];
export function stateText(s: number): string {
  return STATES[s] ?? `state ${s}`;
}

export function b64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");
}

export function unb64(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, "base64"));
}

function bytesOf(c: { data?: string }): Uint8Array {
  return c.data ? unb64(c.data) : new Uint8Array(0);
}

/** The device's own saved state, kept in a memfd (never whole in memory). */
export interface Original {
  fd: number;
  size: number;
}

/**
 * Runs calls on one device: its fd (opened from `spec`), a second descriptor of the
 * same file, its data_fds by slot, its regions' offsets (learned from region-info).
 */
export class Executor {
  dev: VfioDevice | null = null;
  dev2: MigrationV2 | null = null;
  #dev2fd = -1;
  readonly slots = new Map<number, number>();
  nextSlot = 1;
  readonly regions = new Map<
    number,
    { offset: number; size: number; flags: number; type: { type: number; subtype: number } | null }
  >();
  original: Original | null = null;
  /** The last read's bytes (the engine hashes and keeps what it needs). */
  lastRead: Uint8Array = new Uint8Array(0);
  /** The message of the last open that failed. */
  lastMessage = "";

  constructor(readonly sys: Sys, readonly spec: string) {}

  #mig(dev2?: boolean): MigrationV2 {
    if (dev2 && this.dev2) return this.dev2;
    if (!this.dev) throw new SysError("ioctl", 9, /* EBADF */ "device not open");
    return this.dev.migration;
  }

  #fd(slot: number): number {
    const fd = this.slots.get(slot);
    if (fd === undefined) throw new SysError("data_fd", 9, /* EBADF */ `no data_fd #${slot}`);
    return fd;
  }

  #closeDevice(): void {
    if (this.#dev2fd >= 0) {
      try {
        this.sys.close(this.#dev2fd);
      } catch { /* released anyway */ }
      this.#dev2fd = -1;
      this.dev2 = null;
    }
    this.dev?.close();
    this.dev = null;
  }

  /** Closes everything (the end of a run). */
  closeAll(): void {
    for (const fd of this.slots.values()) {
      try {
        this.sys.close(fd);
      } catch { /* released anyway */ }
    }
    this.slots.clear();
    this.#closeDevice();
  }

  /** Executes one call; SysError becomes the result's errno, other errors throw. */
  run(c: Call): Result {
    try {
      return this.#run(c);
    } catch (e) {
      if (e instanceof SysError) return { errno: e.code };
      // openDevice's one-line errors (busy, gone): the errno behind them when there is one.
      if (e instanceof VfioMigError) {
        this.lastMessage = e.message;
        return { errno: e.cause instanceof SysError ? e.cause.code : "EOPEN" };
      }
      throw e;
    }
  }

  #run(c: Call): Result {
    switch (c.op) {
      case "open":
        this.#closeDevice();
        this.dev = openDevice(this.sys, this.spec);
        return { errno: null };
      case "reopen":
        this.#closeDevice();
        this.dev = openDevice(this.sys, this.spec);
        return { errno: null };
      case "flags":
        return { errno: null, ret: this.#mig().migrationFlags() };
      case "get":
        return { errno: null, ret: this.#mig(c.dev2).getState() };
      case "set": {
        // Exactly one ioctl: the engine never asks STOP_COPY -> PRE_COPY* (it knows the
        // state from its GETs), so MigrationV2's own check, which would GET first, is skipped.
        const r = this.#mig(c.dev2).setState(c.state, c.state);
        if (r.dataFd === null) return { errno: null, ret: c.state };
        const slot = this.nextSlot++;
        this.slots.set(slot, r.dataFd);
        return { errno: null, ret: c.state, slot };
      }
      case "reset":
        this.#mig().reset();
        return { errno: null };
      case "data-size": {
        const n = this.#mig(c.dev2).dataSize();
        return n === null ? { errno: "ENOTTY" } : { errno: null, ret: n };
      }
      case "read": {
        const buf = new Uint8Array(c.len);
        const n = this.sys.read(this.#fd(c.slot), buf);
        this.lastRead = buf.subarray(0, Math.min(n, buf.length));
        return { errno: null, ret: n };
      }
      case "write":
        return { errno: null, ret: this.sys.write(this.#fd(c.slot), c.orig ? this.#orig(c.orig) : bytesOf(c)) };
      case "pread": {
        const buf = new Uint8Array(c.len);
        return { errno: null, ret: this.sys.pread(this.#fd(c.slot), buf, c.offset) };
      }
      case "close": {
        const fd = this.#fd(c.slot);
        this.slots.delete(c.slot);
        this.sys.close(fd);
        return { errno: null };
      }
      case "precopy-info": {
        const i = this.#mig().precopyInfo(this.#fd(c.slot));
        return { errno: null, info: [i.initialBytes, i.dirtyBytes] };
      }
      case "region-info": {
        if (!this.dev) throw new SysError("ioctl", 9, "device not open");
        const r = getRegionInfo(this.sys, this.dev.fd, c.index);
        this.regions.set(c.index, { offset: r.offset, size: r.size, flags: r.flags, type: r.type });
        return { errno: null, ret: r.size };
      }
      case "region-read": {
        const fd = c.dev2 && this.#dev2fd >= 0 ? this.#dev2fd : this.dev?.fd ?? -1;
        const buf = new Uint8Array(c.len);
        const n = this.sys.pread(fd, buf, this.#regionAt(c.index) + c.offset);
        this.lastRead = buf.subarray(0, Math.min(n, buf.length));
        return { errno: null, ret: n };
      }
      case "region-write":
        return {
          errno: null,
          ret: this.sys.pwrite(
            this.dev?.fd ?? -1,
            c.orig ? this.#orig(c.orig) : bytesOf(c),
            this.#regionAt(c.index) + c.offset,
          ),
        };
      case "mmap": {
        const r = this.regions.get(c.index);
        if (!r || !(r.flags & REGION_FLAGS.MMAP)) throw new SysError("mmap", 22, /* EINVAL */ "region not mmap-able");
        const map = this.sys.mmap(this.dev?.fd ?? -1, c.len, PROT.READ, 1, /* MAP_SHARED */ r.offset + c.offset);
        try {
          let sum = 0;
          for (let i = 0; i < map.bytes.length; i += 4) sum += map.bytes[i];
          return { errno: null, ret: sum };
        } finally {
          this.sys.munmap(map);
        }
      }
      case "dup": {
        if (!this.dev) throw new SysError("dup", 9, "device not open");
        if (this.#dev2fd >= 0) return { errno: null };
        const pidfd = this.sys.pidfdOpen(this.sys.getpid());
        let fd: number;
        try {
          fd = this.sys.pidfdGetfd(pidfd, this.dev.fd);
        } finally {
          this.sys.close(pidfd);
        }
        if (this.sys instanceof SimKernel) this.sys.adopt(fd);
        this.#dev2fd = fd;
        this.dev2 = new MigrationV2(this.sys, fd, `${this.spec} (second fd)`);
        return { errno: null };
      }
    }
  }

  /** Bytes of the saved state captured at the start. */
  #orig([off, len]: [number, number]): Uint8Array {
    if (!this.original) throw new Error("torture: a write of the saved state before it was captured");
    const data = new Uint8Array(len);
    return data.subarray(0, this.sys.pread(this.original.fd, data, off));
  }

  #regionAt(index: number): number {
    const r = this.regions.get(index);
    if (!r) throw new SysError("pread", 22, `region ${index} unknown (no region-info yet)`);
    return r.offset;
  }
}
