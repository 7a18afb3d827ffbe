// What the conformance checks share: one device, the states it is driven through,
// data_fds closed (or, for RESUMING, fed the device's own image) as soon as they
// appear, and VFIO_DEVICE_RESET when the device is stuck. Never requests the
// STOP_COPY -> PRE_COPY* arcs that hang unfixed kernels (state_machine.ts).

import { createHash } from "node:crypto";
import { SysError } from "../../ffi/errno.ts";
import { SEEK, type Sys } from "../../ffi/sys.ts";
import type { VfioDevice } from "../device/open.ts";
import { readFull, readSome, writeAll } from "../io.ts";
import { DeviceState, isHangingArc, resolvePath, stateName } from "../vfio/state_machine.ts";

const { ERROR, STOP, STOP_COPY, RESUMING } = DeviceState;
const MFD_CLOEXEC = 1;
const IO_CHUNK = 1 << 20;

/** The outcome of one MIG_DEVICE_STATE SET. */
export interface SetOutcome {
  /** errno name when the SET failed, else null. */
  errno: string | null;
  /** The data_fd the kernel handed out, or null. */
  fd: number | null;
}

/** A failure of a step the checks depend on (not of the device's conformance itself). */
export class StepError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StepError";
  }
}

function sysErrno(e: unknown): string {
  if (e instanceof SysError) return e.code;
  throw e;
}

/**
 * A device's STOP_COPY data, kept in a memfd so that a large device does not need
 * its whole image in memory; hashed while captured.
 */
export class MigrationImage {
  constructor(readonly sys: Sys, readonly fd: number, readonly size: number, readonly sha256: string) {}

  /** Copies the image into a RESUMING data_fd. */
  writeTo(dataFd: number): void {
    this.sys.lseek(this.fd, 0, SEEK.SET);
    const buf = new Uint8Array(Math.min(IO_CHUNK, Math.max(this.size, 1)));
    for (;;) {
      const n = readSome(this.sys, this.fd, buf);
      if (n === 0) return;
      writeAll(this.sys, dataFd, buf.subarray(0, n));
    }
  }

  /** Offset of the first byte where two images differ, or null when they are equal. */
  firstDifference(other: MigrationImage): number | null {
    if (this.sha256 === other.sha256 && this.size === other.size) return null;
    this.sys.lseek(this.fd, 0, SEEK.SET);
    other.sys.lseek(other.fd, 0, SEEK.SET);
    const a = new Uint8Array(IO_CHUNK);
    const b = new Uint8Array(IO_CHUNK);
    let off = 0;
    for (;;) {
      const na = readFull(this.sys, this.fd, a);
      const nb = readFull(other.sys, other.fd, b);
      const n = Math.min(na, nb);
      for (let i = 0; i < n; i++) if (a[i] !== b[i]) return off + i;
      if (na !== nb) return off + n;
      if (na === 0) return null;
      off += n;
    }
  }

  close(): void {
    try {
      this.sys.close(this.fd);
    } catch { /* already closed */ }
  }
}

/** What reading a STOP_COPY data_fd showed, besides the image. */
export interface CaptureResult {
  image: MigrationImage;
  /** Results of the reads after the first end of stream: 0, a byte count, or an errno name. */
  afterEof: (number | string)[];
  /** errno of PRECOPY_INFO on the STOP_COPY data_fd (null: it succeeded, which it must not). */
  precopyInfoErrno: string | null;
}

export class CheckSession {
  sys: Sys;
  readonly flags: number;
  /** The device's own STOP_COPY image, fed into every RESUMING session the checks open. */
  image: MigrationImage | null = null;
  resets = 0;
  /** Why each reset was needed, in order. */
  readonly resetReasons: string[] = [];
  /** The device is RESUMING and its data_fd received the whole image. */
  #resumeFed = false;
  /** Sessions the device ended on its own (a data_fd answering ENODEV with no reset asked). */
  readonly spontaneous: string[] = [];
  /** Sessions the checks opened (for the spontaneous-reset report). */
  sessions = 0;

  constructor(public dev: VfioDevice, flags?: number) {
    this.sys = dev.sys;
    this.flags = flags ?? dev.migration.migrationFlags();
  }

  /** Goes on with a reopened device (the same device, a new open of it). */
  replaceDevice(dev: VfioDevice): void {
    this.dev = dev;
    this.sys = dev.sys;
    this.#resumeFed = false;
  }

  /**
   * Notes a data_fd that answered `errno` where the checks asked for no reset: ENODEV is
   * a session the device ended itself (uAPI: the state changes only on a SET or a reset).
   */
  noteFailure(where: string, errno: string): void {
    if (errno !== "ENODEV") return;
    const line = `${where}: the data_fd answered ENODEV and the device is ${this.stateText()}`;
    if (!this.spontaneous.includes(line)) this.spontaneous.push(line);
  }

  /** VFIO_DEVICE_RESET the checks make on purpose (not counted as a recovery). */
  deliberateReset(): string | null {
    this.#resumeFed = false;
    try {
      this.dev.migration.reset();
      return null;
    } catch (e) {
      return sysErrno(e);
    }
  }

  /**
   * Loads the device's own image back: RESUMING, the image, RESUMING -> STOP. Returns
   * the errno of the step that failed, or null (the device is then STOP).
   */
  loadImage(): string | null {
    if (!this.image) return "no image";
    if (!this.reach(RESUMING)) return `cannot reach RESUMING (the device is ${this.stateText()})`;
    const r = this.request(STOP, RESUMING);
    return r.errno;
  }

  /** GET MIG_DEVICE_STATE; null when even that fails. */
  state(): DeviceState | null {
    try {
      return this.dev.migration.getState();
    } catch (e) {
      sysErrno(e);
      return null;
    }
  }

  /** VFIO_DEVICE_RESET: the state becomes RUNNING and every data_fd dies. */
  reset(why: string): DeviceState | null {
    this.resets++;
    this.resetReasons.push(why);
    this.#resumeFed = false;
    try {
      this.dev.migration.reset();
    } catch (e) {
      sysErrno(e);
    }
    return this.state();
  }

  closeFd(fd: number): void {
    try {
      this.sys.close(fd);
    } catch { /* the check goes on */ }
  }

  /**
   * One SET MIG_DEVICE_STATE, handing back any data_fd. `known` is the current state
   * when the caller knows it. Hanging arcs are refused here, before the kernel.
   */
  set(to: DeviceState, known?: DeviceState): SetOutcome {
    const cur = known ?? this.state() ?? undefined;
    if (cur !== undefined && isHangingArc(cur, to)) {
      throw new StepError(`internal: refusing to request ${stateName(cur)} -> ${stateName(to)} (hangs kernels 6.2+)`);
    }
    try {
      const r = this.dev.migration.setState(to, cur);
      // Entering RESUMING starts a new session that has no data yet.
      if (to === RESUMING && cur !== RESUMING) this.#resumeFed = false;
      return { errno: null, fd: r.dataFd };
    } catch (e) {
      return { errno: sysErrno(e), fd: null };
    }
  }

  /**
   * A SET whose data_fd is not needed: a RESUMING fd is fed the device's image (so
   * that leaving RESUMING later loads valid data), any fd is closed at once.
   */
  request(to: DeviceState, known?: DeviceState): { errno: string | null; dataFd: boolean } {
    const r = this.set(to, known);
    if (r.fd !== null) this.#settle(r.fd, to);
    return { errno: r.errno, dataFd: r.fd !== null };
  }

  #settle(fd: number, to: DeviceState): void {
    try {
      if (to === RESUMING && this.image) {
        this.sessions++;
        this.image.writeTo(fd);
        this.#resumeFed = true;
      }
    } catch (e) {
      // Leaving RESUMING will then fail, and show it.
      if (e instanceof SysError) this.noteFailure("writing the image into a RESUMING data_fd", e.code);
    }
    this.closeFd(fd);
  }

  /**
   * Brings the device to `target` along the kernel's own paths, one arc per request,
   * going via STOP instead of the forbidden arcs, resetting when stuck. False when it
   * cannot.
   */
  reach(target: DeviceState): boolean {
    for (let step = 0; step < 12; step++) {
      const cur = this.state();
      if (cur === null || cur === ERROR) {
        if (this.resets > 64) return false;
        this.reset(`device ${cur === null ? "did not answer GET" : "was in ERROR"} on the way to ${stateName(target)}`);
        continue;
      }
      // A RESUMING session the checks did not feed cannot be left without a reset.
      if (cur === RESUMING && !this.#resumeFed) {
        this.reset(`device was RESUMING without data on the way to ${stateName(target)}`);
        continue;
      }
      if (cur === target) return true;
      // One arc at a time, so that a driver failing multi-arc requests is still driven;
      // where the kernel's table has no path (STOP_COPY -> PRE_COPY*), go through STOP.
      const path = resolvePath(this.flags, cur, target) ?? resolvePath(this.flags, cur, STOP);
      if (!path?.length) return false;
      const via = path[0];
      const r = this.request(via, cur);
      const now = r.errno === null ? this.state() : null;
      if (r.errno !== null) {
        this.reset(`${stateName(cur)} -> ${stateName(via)} failed with ${r.errno} on the way to ${stateName(target)}`);
      } else if (now !== via) {
        this.reset(
          `${stateName(cur)} -> ${stateName(via)} succeeded but left the device ` +
            `${now === null ? "in an unknown state" : stateName(now)}`,
        );
      }
    }
    return this.state() === target;
  }

  /**
   * From STOP: STOP -> STOP_COPY, reads the data_fd to its end (and a little beyond,
   * to see that the end is permanent), then back to STOP. `readSizes` (cycled) gives the
   * size of each read; by default every read asks for 1 MiB.
   */
  capture(maxBytes: number, readSizes: readonly number[] = [IO_CHUNK]): CaptureResult {
    if (!this.reach(STOP)) throw new StepError(`cannot bring the device to STOP (it is ${this.stateText()})`);
    const r = this.set(STOP_COPY, STOP);
    if (r.errno) throw new StepError(`STOP -> STOP_COPY failed with ${r.errno}`);
    if (r.fd === null) throw new StepError("STOP -> STOP_COPY returned no data_fd");
    this.sessions++;
    let dataFd: number | null = r.fd;
    const memfd = this.sys.memfd("vfio-mig-check", MFD_CLOEXEC);
    let ok = false;
    try {
      const hash = createHash("sha256");
      const buf = new Uint8Array(Math.max(IO_CHUNK, ...readSizes));
      let size = 0;
      for (let i = 0;; i++) {
        let n: number;
        try {
          n = readSome(this.sys, dataFd, buf.subarray(0, readSizes[i % readSizes.length]));
        } catch (e) {
          const errno = sysErrno(e);
          this.noteFailure(`a STOP_COPY session, after ${size} bytes`, errno);
          throw new StepError(`read() of the STOP_COPY data_fd failed with ${errno} after ${size} bytes`);
        }
        if (n === 0) break;
        writeAll(this.sys, memfd, buf.subarray(0, n));
        hash.update(buf.subarray(0, n));
        size += n;
        if (size > maxBytes) throw new StepError(`STOP_COPY produced more than ${maxBytes} bytes without an end`);
      }
      const afterEof: (number | string)[] = [];
      for (let i = 0; i < 2; i++) {
        try {
          afterEof.push(this.sys.read(dataFd, buf));
        } catch (e) {
          afterEof.push(sysErrno(e));
        }
      }
      let precopyInfoErrno: string | null = null;
      try {
        this.dev.migration.precopyInfo(dataFd);
      } catch (e) {
        precopyInfoErrno = sysErrno(e);
      }
      this.closeFd(dataFd);
      dataFd = null;
      const back = this.set(STOP, STOP_COPY);
      if (back.fd !== null) this.closeFd(back.fd);
      if (back.errno) throw new StepError(`STOP_COPY -> STOP failed with ${back.errno}`);
      ok = true;
      return { image: new MigrationImage(this.sys, memfd, size, hash.digest("hex")), afterEof, precopyInfoErrno };
    } finally {
      if (!ok) {
        if (dataFd !== null) this.closeFd(dataFd);
        this.closeFd(memfd);
      }
    }
  }

  stateText(): string {
    const s = this.state();
    return s === null ? "in an unknown state (GET failed)" : stateName(s);
  }

  close(): void {
    this.image?.close();
    this.image = null;
  }
}
