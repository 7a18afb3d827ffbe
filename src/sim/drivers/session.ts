// What the simulated drivers share, as a real driver's migration code shares a shape
// with mtty.c: the step function (mtty_step_state), the session's two files, and a save
// file that hands out a queue of segments (bytes in memory, ranges of the device's data)
// through a file position, as mtty_save_read and mlx5vf_save_read do.

import type { Sys } from "../../../ffi/sys.ts";
import { arcClosesSession, arcOpensDataFd, DeviceState } from "../../vfio/state_machine.ts";
import { MigrationFile, type PrecopyNumbers, type ReadIo, type SimDevice, type SimDriver, sysErr } from "../driver.ts";

const { STOP_COPY, RESUMING, STOP, PRE_COPY, PRE_COPY_P2P } = DeviceState;

/** Bytes in memory, or `length` bytes of the device's data from `offset`. */
export type Segment = { mem: Uint8Array } | { dataOffset: number; length: number };

/**
 * A save file: a queue of segments read in order. segments[segHead] is the current one
 * (Array.shift is O(n): a fully dirty 1 GiB state queues 512k segments).
 */
export class SaveQueueFile extends MigrationFile {
  readonly kind = "save";
  segments: Segment[] = [];
  segHead = 0;
  /** Bytes consumed of the current segment. */
  segOffset = 0;
  /** Bytes queued so far. */
  filled = 0;
  /** End of the initial pre-copy data. */
  initialEnd = 0;

  constructor(
    readonly host: Sys,
    fd: number,
    readonly driver: SessionDriver,
    /** Whether this session carries the device's data (a stale session carries headers only). */
    readonly withData: boolean,
  ) {
    super(fd);
  }

  push(s: Segment): void {
    this.segments.push(s);
    this.filled += "mem" in s ? s.mem.length : s.length;
  }

  /** Copies device data at `at` into `dst`; returns the bytes copied (0: data missing). */
  protected data(dst: Uint8Array, at: number): number {
    return this.host.pread(this.fd, dst, at);
  }

  /** Called when a read finds nothing queued: queue more, or throw (ENOMSG). */
  protected empty(): void {}

  override read(buf: Uint8Array, _io: ReadIo): number {
    if (this.disabled) throw sysErr("read", "ENODEV");
    this.driver.tick();
    if (this.segments.length === 0) this.empty();
    let n = 0;
    while (n < buf.length && this.segments.length > 0) {
      const s = this.segments[this.segHead];
      const segLen = "mem" in s ? s.mem.length : s.length;
      const take = Math.min(buf.length - n, segLen - this.segOffset);
      let got: number;
      if ("mem" in s) {
        buf.set(s.mem.subarray(this.segOffset, this.segOffset + take), n);
        got = take;
      } else {
        got = this.data(buf.subarray(n, n + take), s.dataOffset + this.segOffset);
        if (got === 0) throw sysErr("read", "EIO", "state file shorter than expected");
      }
      n += got;
      this.segOffset += got;
      if (this.segOffset === segLen) {
        // Drop the consumed segment; empty means nothing queued (length 0).
        const head = this.segHead + 1;
        if (head === this.segments.length) [this.segments, this.segHead] = [[], 0];
        else if (head >= 4096 && head * 2 >= this.segments.length) {
          [this.segments, this.segHead] = [this.segments.slice(head), 0];
        } else this.segHead = head;
        this.segOffset = 0;
      }
      // One data copy per data segment per read at most when it comes up short; a read
      // goes on through the queued segments (dirty pages) until the buffer is full, as
      // a driver copies all it has queued.
      if (!("mem" in s) && got < take) break;
    }
    this.pos += n;
    return n;
  }

  /** mtty_precopy_ioctl: EINVAL outside PRE_COPY*, ENODEV once disabled. */
  override precopyInfo(): PrecopyNumbers {
    this.driver.tick();
    const state = this.driver.dev.meta.state;
    if (state !== PRE_COPY && state !== PRE_COPY_P2P) throw sysErr("ioctl", "EINVAL");
    if (this.disabled) throw sysErr("ioctl", "ENODEV");
    return {
      initial: Math.max(0, this.initialEnd - this.pos),
      queued: Math.max(0, this.filled - Math.max(this.pos, this.initialEnd)),
      unqueued: 0,
    };
  }

  override queued(): number {
    return this.filled - this.pos;
  }
}

/**
 * The base of the drivers: mtty_set_state's step function over four primitives each
 * driver provides (a save file in a state, the STOP_COPY data, a resume file, the load).
 */
export abstract class SessionDriver implements SimDriver {
  saving: MigrationFile | undefined;
  resuming: MigrationFile | undefined;

  constructor(readonly dev: SimDevice) {}

  get host(): Sys {
    return this.dev.host;
  }

  abstract newSaveFile(state: DeviceState): MigrationFile;
  abstract fillStopCopy(): void;
  abstract newResumeFile(): MigrationFile;
  abstract loadState(): void;
  abstract dataSize(): number;
  abstract powerOn(): void;

  /** A device that does not run on its own only notes when it was last looked at. */
  tick(): void {
    this.dev.meta.runningSince = Date.now();
  }

  /** mtty_step_state(): one arc. Returns a new migration file on the arcs that make one. */
  step(cur: DeviceState, next: DeviceState): MigrationFile | null {
    // RESUMING -> STOP loads the state first.
    if (cur === RESUMING && next === STOP) {
      this.loadState();
      this.endSessions();
      return null;
    }
    if (arcClosesSession(cur, next)) {
      this.endSessions();
      return null;
    }
    const opens = arcOpensDataFd(cur, next);
    if (opens === "resume") return this.newResumeFile();
    if (opens === "save" || (cur === PRE_COPY_P2P && next === STOP_COPY) || (cur === PRE_COPY && next === STOP_COPY)) {
      if (this.saving) {
        if (next === STOP_COPY) this.fillStopCopy();
        return null;
      }
      return this.newSaveFile(next);
    }
    // Everything else the table can produce is a no-op for these models (no DMA).
    return null;
  }

  /** mtty_disable_file(): later calls on the file answer ENODEV. */
  protected disable(f: MigrationFile): void {
    f.disabled = true;
  }

  endSessions(): void {
    if (this.saving) this.disable(this.saving);
    if (this.resuming) this.disable(this.resuming);
    this.saving = undefined;
    this.resuming = undefined;
  }

  holds(file: MigrationFile): boolean {
    return this.saving === file || this.resuming === file;
  }

  forget(file: MigrationFile): void {
    if (this.saving === file) this.saving = undefined;
    if (this.resuming === file) this.resuming = undefined;
  }

  barAccess(_index: number, _off: number, _buf: Uint8Array, write: boolean): number {
    throw sysErr(write ? "pwrite" : "pread", "EINVAL");
  }

  close(): void {}

  /** Swaps the incoming state in; the old state's pages become the next spare. */
  protected swapIncoming(): void {
    const store = this.dev.store;
    try {
      this.host.exchange(store.incomingPath, store.statePath);
    } catch {
      this.host.rename(store.incomingPath, store.statePath); // no RENAME_EXCHANGE here
    }
    this.dev.dataChanged();
  }
}
