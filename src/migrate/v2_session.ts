// uAPI v2 behind the protocol interface: MIG_DEVICE_STATE arcs and the data_fd.
// Stream (docs/stream-format.md): SETUP/END, pre-copy data then INIT_DATA_SENT or
// END_OF_STATE, SWITCHOVER, stop-copy data, END_OF_STATE.

import { isErrno } from "../../ffi/errno.ts";
import { MIGRATION_FLAGS, PRECOPY_INFO_REINIT } from "../../ffi/vfio_uapi.ts";
import { F, O } from "../../ffi/sys.ts";
import type { VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { readSome, writeAll } from "../io.ts";
import { DeviceState, isSavingState, stateName } from "../migration/state_machine.ts";
import { TAG } from "../stream/format.ts";
import type { StreamWriter } from "../stream/writer.ts";
import type { IterationResult, ResumeSession, SaveSession } from "./protocol.ts";
import { type Cancellation, type Progress, recoverDevice, tryGetState } from "./session.ts";

/** Longest single pre-copy iteration before the policy is asked again. */
const ITERATION_MS = 100;

export class V2SaveSession implements SaveSession {
  readonly protocol = "v2" as const;
  readonly headerExtra: Record<string, unknown> = {};
  /** Opted in to precopy-info v2 (set by a live setup). */
  precopyInfoV2 = false;
  #dataFd: number | null = null;
  #cur: DeviceState;
  readonly #restoreTo: DeviceState;

  private constructor(
    readonly d: VfioDevice,
    readonly migrationFlags: number,
    readonly sizeEstimate: number | null,
    found: DeviceState,
  ) {
    this.#cur = found;
    this.#restoreTo = found;
  }

  /** Checks the device can be saved (nothing changed when it throws). */
  static open(d: VfioDevice, live: boolean): V2SaveSession {
    const flags = d.migration.migrationFlags();
    const sizeEstimate = d.migration.dataSize();
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
      throw new VfioMigError(
        `${d.label} is RESUMING (a load is in progress or was abandoned): reset it first`,
        "device",
      );
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
    return new V2SaveSession(d, flags, sizeEstimate, found);
  }

  setup(w: StreamWriter, live: boolean): void {
    w.tag(TAG.DEV_SETUP_STATE);
    if (live) {
      // Linux 7.1: opt in to precopy-info v2 so the driver may report REINIT (initial
      // data that reappears); older kernels answer EINVAL or ENOTTY, which is fine.
      this.precopyInfoV2 = this.d.migration.enablePrecopyInfoV2();
      this.#dataFd = this.d.migration.setState(DeviceState.PRE_COPY, this.#cur).dataFd;
      this.#cur = DeviceState.PRE_COPY;
      if (this.#dataFd === null) throw new VfioMigError(`${this.d.label}: RUNNING -> PRE_COPY returned no data_fd`);
    }
    w.tag(TAG.END_OF_STATE);
  }

  /**
   * Reads the data_fd into chunks. In stop-copy, until read() returns 0. In pre-copy,
   * until there is nothing now (ENOMSG or 0) or ITERATION_MS passed: a device that
   * dirties data as fast as it is read must still come back to the pre-copy policy.
   * Short reads (a driver that hands out a dirty page at a time) are gathered into one
   * chunk until the chunk is full or the device has nothing more now: one chunk header,
   * CRC call and write per chunk, not per page.
   */
  async #readLoop(w: StreamWriter, phase: "pre-copy" | "stop-copy", cancel: Cancellation, progress: Progress) {
    let total = 0;
    let fill = 0;
    const payload = w.payload;
    const flush = async () => {
      if (fill === 0) return;
      w.data(fill);
      total += fill;
      fill = 0;
      await w.flowControl();
      progress.update(phase, w.dataBytes);
    };
    const until = phase === "pre-copy" ? performance.now() + ITERATION_MS : Infinity;
    while (performance.now() < until) {
      await cancel.checkpoint();
      let n: number;
      try {
        n = readSome(this.d.sys, this.#dataFd!, payload.subarray(fill));
      } catch (e) {
        if (phase === "pre-copy" && isErrno(e, "ENOMSG")) break; // nothing now
        throw e;
      }
      if (n === 0) break;
      fill += n;
      if (fill === payload.length) await flush();
    }
    await flush();
    return total;
  }

  async iterate(w: StreamWriter, cancel: Cancellation, progress: Progress): Promise<IterationResult> {
    const bytes = await this.#readLoop(w, "pre-copy", cancel, progress);
    const info = this.d.migration.precopyInfo(this.#dataFd!);
    // Without the opt-in, flags are reserved (old drivers echo what they were given: 0).
    const reinit = this.precopyInfoV2 && (info.flags & PRECOPY_INFO_REINIT) !== 0;
    return {
      bytes,
      done: info.initialBytes === 0,
      initialBytes: info.initialBytes,
      dirtyBytes: info.dirtyBytes,
      reinit,
    };
  }

  exactSize(): number | null {
    return this.d.migration.dataSize();
  }

  initDataSent(w: StreamWriter): boolean {
    w.tag(TAG.DEV_INIT_DATA_SENT);
    return true;
  }

  endPrecopy(w: StreamWriter, _converged: boolean): void {
    w.tag(TAG.END_OF_STATE);
  }

  stop(w: StreamWriter): void {
    w.tag(TAG.SWITCHOVER);
    const r = this.d.migration.setState(DeviceState.STOP_COPY, this.#cur);
    this.#cur = DeviceState.STOP_COPY;
    if (r.dataFd !== null) {
      if (this.#dataFd !== null) {
        this.d.sys.close(r.dataFd);
        throw new VfioMigError(`${this.d.label}: data_fd out of sync (the device was reset asynchronously?)`);
      }
      this.#dataFd = r.dataFd;
    }
    if (this.#dataFd === null) throw new VfioMigError(`${this.d.label}: STOP_COPY returned no data_fd`);
  }

  async drain(w: StreamWriter, cancel: Cancellation, progress: Progress): Promise<number> {
    const n = await this.#readLoop(w, "stop-copy", cancel, progress);
    w.tag(TAG.END_OF_STATE);
    return n;
  }

  finish(resume: boolean): string {
    const fd = this.#dataFd!;
    this.#dataFd = null; // a failed close still releases the fd: never close it twice
    this.d.sys.close(fd);
    const finalState = resume ? DeviceState.RUNNING : DeviceState.STOP;
    this.d.migration.setState(finalState, this.#cur);
    this.#cur = finalState;
    return stateName(finalState);
  }

  abort(): string {
    if (this.#dataFd !== null) {
      try {
        this.d.sys.close(this.#dataFd);
      } catch { /* closing is best effort here */ }
      this.#dataFd = null;
    }
    return recoverDevice(this.d, this.#restoreTo);
  }

  statesVisited(): string[] {
    return this.d.migration.visited.map(stateName);
  }

  #nonBlockingFd = -1;

  /**
   * Several devices in one stream (multi.ts): one read of the data_fd, made non-blocking
   * on first use so a device that yields slowly holds no other up (EAGAIN: null), emitted
   * as one chunk. 0: nothing now (pre-copy: ENOMSG or 0) or the end (stop-copy).
   */
  readChunk(w: StreamWriter, phase: "pre-copy" | "stop-copy"): number | null {
    const fd = this.#dataFd!;
    if (this.#nonBlockingFd !== fd) {
      this.d.sys.fcntl(fd, F.SETFL, this.d.sys.fcntl(fd, F.GETFL) | O.NONBLOCK);
      this.#nonBlockingFd = fd;
    }
    let n: number;
    try {
      n = this.d.sys.read(fd, w.payload);
    } catch (e) {
      if (isErrno(e, "EAGAIN") || isErrno(e, "EINTR")) return null;
      if (phase === "pre-copy" && isErrno(e, "ENOMSG")) return 0;
      throw e;
    }
    if (n > 0) w.data(n);
    return n;
  }

  /** With readChunk: the result of a pre-copy iteration whose reads are done (as iterate()'s). */
  precopyStatus(bytes: number): IterationResult {
    const info = this.d.migration.precopyInfo(this.#dataFd!);
    const reinit = this.precopyInfoV2 && (info.flags & PRECOPY_INFO_REINIT) !== 0;
    return {
      bytes,
      done: info.initialBytes === 0,
      initialBytes: info.initialBytes,
      dirtyBytes: info.dirtyBytes,
      reinit,
    };
  }
}

export class V2ResumeSession implements ResumeSession {
  readonly protocol = "v2" as const;
  #dataFd: number | null = null;
  #resuming = false;

  readonly #visitedBefore: number;

  private constructor(readonly d: VfioDevice, readonly found: DeviceState) {
    this.#visitedBefore = d.migration.visited.length;
  }

  static open(d: VfioDevice): V2ResumeSession {
    d.migration.migrationFlags();
    const found = d.migration.getState(); // a GET that fails is reported as it failed
    if (found === DeviceState.ERROR) {
      throw new VfioMigError(
        `${d.label} is in the ERROR state: recover it with 'vfio-mig reset --device ${d.label}' first`,
        "device",
      );
    }
    if (found === DeviceState.RESUMING) {
      // A load that was killed: SET RESUMING again would open no new data_fd.
      throw new VfioMigError(
        `${d.label} is RESUMING (a load is in progress or was abandoned): reset it first ` +
          `('vfio-mig reset --device ${d.label}')`,
        "device",
      );
    }
    return new V2ResumeSession(d, found);
  }

  get touched(): boolean {
    // Counted from this session's start: a VfioDevice may serve several loads.
    return this.d.migration.visited.length > this.#visitedBefore;
  }

  begin(): void {
    // The destination enters RESUMING as the stream starts (reference §2.4 load_setup).
    const r = this.d.migration.setState(DeviceState.RESUMING, this.found);
    this.#resuming = true;
    this.#dataFd = r.dataFd;
    if (this.#dataFd === null) throw new VfioMigError(`${this.d.label}: RESUMING returned no data_fd`);
  }

  data(bytes: Uint8Array): void {
    writeAll(this.d.sys, this.#dataFd!, bytes);
  }

  endData(): void {
    // Let the driver validate and load the data (RESUMING -> STOP), then end the
    // session by closing the data_fd, as QEMU's cleanup does.
    this.d.migration.setState(DeviceState.STOP, DeviceState.RESUMING);
    this.#resuming = false;
    const fd = this.#dataFd!;
    this.#dataFd = null; // a failed close still releases the fd: never close it twice
    this.d.sys.close(fd);
  }

  finish(noStart: boolean): string {
    const finalState = noStart ? DeviceState.STOP : DeviceState.RUNNING;
    if (finalState !== DeviceState.STOP) this.d.migration.setState(finalState, DeviceState.STOP);
    return stateName(finalState);
  }

  abort(): string {
    if (this.#dataFd !== null) {
      try {
        this.d.sys.close(this.#dataFd);
      } catch { /* best effort */ }
      this.#dataFd = null;
    }
    const now = tryGetState(this.d);
    if (this.#resuming || now === DeviceState.RESUMING || now === DeviceState.ERROR || now === null) {
      // The only way to abort a RESUMING session is a device reset.
      return recoverDevice(this.d, DeviceState.RUNNING, true);
    }
    if (!this.touched) return `${this.d.label} was not touched`;
    return recoverDevice(this.d, DeviceState.RUNNING, true);
  }

  statesVisited(): string[] {
    return this.d.migration.visited.map(stateName);
  }
}
