// uAPI v2 behind the protocol interface: MIG_DEVICE_STATE arcs and the data_fd.
// Stream (docs/stream-format.md): SETUP/END, pre-copy data then INIT_DATA_SENT or
// END_OF_STATE, SWITCHOVER, stop-copy data, END_OF_STATE.

import { isErrno, SysError } from "../../ffi/errno.ts";
import { MIGRATION_FLAGS, PRECOPY_INFO_REINIT } from "../../ffi/vfio_uapi.ts";
import { F, O } from "../../ffi/sys.ts";
import type { VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { writeAll } from "../io.ts";
import { DeviceState, isSavingState, stateName } from "../vfio/state_machine.ts";
import { TAG } from "../stream/format.ts";
import type { StreamWriter } from "../stream/writer.ts";
import type { IterationResult, ResumeSession, SavePhase, SaveSession } from "./protocol.ts";
import { recoverDevice, tryGetState } from "./session.ts";

/**
 * The state a save or load starts from (a GET that fails is reported as it failed).
 * ERROR needs a reset first; so does RESUMING: a load that was killed left it there,
 * and SET RESUMING again would open no new data_fd. Throws VfioMigError (exit 3).
 */
function startState(d: VfioDevice): DeviceState {
  const found = d.migration.getState();
  if (found === DeviceState.ERROR) {
    throw new VfioMigError(
      `${d.label} is in the ERROR state: recover it with 'vfio-mig reset --device ${d.label}' first`,
      "device",
    );
  }
  if (found === DeviceState.RESUMING) {
    throw new VfioMigError(
      `${d.label} is RESUMING (a load is in progress or was abandoned): reset it first ` +
        `('vfio-mig reset --device ${d.label}')`,
      "device",
    );
  }
  return found;
}

export class V2SaveSession implements SaveSession {
  readonly protocol = "v2" as const;
  readonly headerExtra: Record<string, unknown> = {};
  /** Opted in to precopy-info v2 (set by a live setup). */
  precopyInfoV2 = false;
  #dataFd: number | null = null;
  #cur: DeviceState;
  readonly #restoreTo: DeviceState;
  readonly p2p: boolean;

  private constructor(
    readonly d: VfioDevice,
    readonly migrationFlags: number,
    readonly sizeEstimate: number | null,
    found: DeviceState,
  ) {
    this.#cur = found;
    this.#restoreTo = found;
    this.p2p = (migrationFlags & MIGRATION_FLAGS.P2P) !== 0;
  }

  /** Checks the device can be saved (nothing changed when it throws). */
  static open(d: VfioDevice, live: boolean): V2SaveSession {
    const flags = d.migration.migrationFlags();
    const sizeEstimate = d.migration.dataSize();
    if (live && !(flags & MIGRATION_FLAGS.PRE_COPY)) {
      throw new VfioMigError(
        `${d.label}: --live needs PRE_COPY support; this device's migration flags are 0x${flags.toString(16)} ` +
          `(save it without --live)`,
        "device",
      );
    }
    let found = startState(d);
    // A device left in a saving state by an interrupted save: end that session first,
    // so that STOP_COPY below opens a fresh data_fd.
    if (isSavingState(found)) {
      d.migration.setState(DeviceState.STOP, found);
      found = DeviceState.RUNNING;
    }
    if (live && found !== DeviceState.RUNNING) {
      throw new VfioMigError(
        `${d.label} is ${stateName(found)}: a live save starts from RUNNING (save it without --live, or ` +
          `start it first: 'vfio-mig state --device ${d.label} RUNNING')`,
        "device",
      );
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

  #nonBlockingFd = -1;

  /**
   * One buffer of the data_fd: reads, made non-blocking on first use (so a device that
   * yields slowly holds no other device, and no signal, up), gathered into one chunk
   * until it is full or the device has nothing more now: one chunk header, CRC and
   * write per chunk, not per page of a driver that hands out a page at a time.
   * Returns the chunk's bytes; 0 when there is nothing now (pre-copy: ENOMSG or 0)
   * or the end (stop-copy: 0); null when the read would block with nothing gathered.
   */
  readChunk(w: StreamWriter, phase: SavePhase): number | null {
    const fd = this.#dataFd!;
    if (this.#nonBlockingFd !== fd) {
      this.d.sys.fcntl(fd, F.SETFL, this.d.sys.fcntl(fd, F.GETFL) | O.NONBLOCK);
      this.#nonBlockingFd = fd;
    }
    const payload = w.payload;
    let fill = 0;
    while (fill < payload.length) {
      let n: number;
      try {
        n = this.d.sys.read(fd, payload.subarray(fill));
      } catch (e) {
        if (isErrno(e, "EAGAIN") || isErrno(e, "EINTR")) {
          if (fill === 0) return null;
          break;
        }
        if (phase === "pre-copy" && isErrno(e, "ENOMSG")) break; // nothing now
        throw e;
      }
      if (n === 0) break;
      fill += n;
    }
    if (fill > 0) w.data(fill);
    return fill;
  }

  precopyStatus(bytes: number): IterationResult {
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

  endPrecopy(w: StreamWriter): void {
    w.tag(TAG.END_OF_STATE);
  }

  prepareStop(): void {
    if (!this.p2p) return;
    if (this.#cur === DeviceState.RUNNING) this.#set(DeviceState.RUNNING_P2P);
    else if (this.#cur === DeviceState.PRE_COPY) this.#set(DeviceState.PRE_COPY_P2P);
  }

  #set(to: DeviceState): number | null {
    const r = this.d.migration.setState(to, this.#cur);
    this.#cur = to;
    return r.dataFd;
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

  endStopCopy(w: StreamWriter): void {
    w.tag(TAG.END_OF_STATE);
  }

  finish(resume: boolean): string {
    const fd = this.#dataFd!;
    this.#dataFd = null; // a failed close still releases the fd: never close it twice
    this.d.sys.close(fd);
    const finalState = resume ? DeviceState.RUNNING : DeviceState.STOP;
    this.#set(finalState);
    return stateName(finalState);
  }

  prepareStart(): void {
    if (this.p2p && this.#cur === DeviceState.STOP) this.#set(DeviceState.RUNNING_P2P);
  }

  start(): string {
    this.#set(DeviceState.RUNNING);
    return stateName(DeviceState.RUNNING);
  }

  prepareRecovery(): void {
    if (!this.p2p || (this.#restoreTo !== DeviceState.RUNNING && this.#restoreTo !== DeviceState.RUNNING_P2P)) return;
    const now = tryGetState(this.d);
    if (now === DeviceState.STOP || now === DeviceState.STOP_COPY || now === DeviceState.PRE_COPY_P2P) {
      try {
        this.d.migration.setState(DeviceState.RUNNING_P2P, now);
        this.#cur = DeviceState.RUNNING_P2P;
      } catch { /* abort() resets it */ }
    }
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
}

export class V2ResumeSession implements ResumeSession {
  readonly protocol = "v2" as const;
  #dataFd: number | null = null;
  #resuming = false;

  readonly #visitedBefore: number;

  private constructor(readonly d: VfioDevice, readonly found: DeviceState, readonly p2p: boolean) {
    this.#visitedBefore = d.migration.visited.length;
  }

  static open(d: VfioDevice): V2ResumeSession {
    const flags = d.migration.migrationFlags();
    const found = startState(d);
    return new V2ResumeSession(d, found, (flags & MIGRATION_FLAGS.P2P) !== 0);
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

  /** Bytes written to the data_fd so far. */
  #written = 0;

  data(bytes: Uint8Array): void {
    try {
      writeAll(this.d.sys, this.#dataFd!, bytes);
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
      // The data_fd's write is the driver's resume path: its errors are the driver's verdict.
      throw new VfioMigError(
        `${this.d.label}: the driver refused the migration data: writing ${bytes.length} bytes to the device's ` +
          `data_fd (at byte ${this.#written} of the device's data) failed: ${e.message}`,
        "failure",
        { cause: e },
      );
    }
    this.#written += bytes.length;
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

  prepareStart(): void {
    if (this.p2p) this.d.migration.setState(DeviceState.RUNNING_P2P, DeviceState.STOP);
  }

  finish(noStart: boolean): string {
    const finalState = noStart ? DeviceState.STOP : DeviceState.RUNNING;
    if (finalState !== DeviceState.STOP) this.d.migration.setState(finalState);
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
    // A failed SET may leave the device in the original state or in any state along
    // the path (vfio.h, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE): only a device still
    // where the session found it is untouched.
    if (!this.touched && now === this.found) return `${this.d.label} was not touched`;
    return recoverDevice(this.d, DeviceState.RUNNING, true);
  }

  statesVisited(): string[] {
    return this.d.migration.visited.map(stateName);
  }
}
