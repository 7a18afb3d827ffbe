// Migration protocol v1 behind the protocol interface, phase by phase as QEMU 7.2's
// hw/vfio/migration.c (reference §1.9, §2.3):
//   save_setup      DEV_SETUP_STATE; mmap the data section (else the slow path);
//                   device_state |= SAVING; END_OF_STATE
//   save_iterate    DEV_DATA_STATE size bytes; END_OF_STATE (per pre-copy iteration)
//   complete        SAVING without RUNNING; DEV_DATA_STATE chunks while pending_bytes
//                   > 0; END_OF_STATE; SAVING cleared (stopped)
//   load_setup      mmap; device_state = RESUMING
//   load_state      per chunk: read data_offset, write the data, write data_size;
//                   split when the destination's data section is smaller
//   notifier        failure or cancel: SAVING and RESUMING cleared, RUNNING set

import { SysError } from "../../ffi/errno.ts";
import type { VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { type MigrationV1, V1, v1StateIsError, v1StateName } from "../vfio/v1.ts";
import { MAX_CHUNK, TAG } from "../stream/format.ts";
import type { StreamWriter } from "../stream/writer.ts";
import type { IterationResult, ResumeSession, SavePhase, SaveSession } from "./protocol.ts";

const { RUNNING, SAVING, RESUMING, MASK } = V1;

/** Where a v1 device is after a failure: the notifier's RUNNING, else a reset. */
function recoverV1(m: MigrationV1, why: string, resetFirst: boolean): string {
  let st: number | null = null;
  try {
    st = m.readState();
  } catch { /* unreadable: reset */ }
  if (!resetFirst && st !== null && !v1StateIsError(st)) {
    try {
      // vfio_migration_state_notifier(): MIGRATION_STATUS_FAILED / CANCELLED.
      m.setState(~(SAVING | RESUMING), RUNNING, "back to running after the failure");
      return `${m.name} is ${v1StateName(m.readState())}`;
    } catch { /* fall through to a reset */ }
  }
  const before = st !== null && v1StateIsError(st) ? ` (it was in the error state ${v1StateName(st)})` : "";
  try {
    m.reset();
  } catch (e) {
    return `${m.name} could not be reset${before} (${e instanceof SysError ? e.code : e})`;
  }
  let now = "in an unknown state";
  try {
    now = v1StateName(m.readState());
  } catch { /* reported as unknown */ }
  return `${m.name} was reset${before}${why ? ` ${why}` : ""} and is ${now}`;
}

/** Refuses a device that is mid-resume or in the error state, before anything changes. */
function checkStart(m: MigrationV1, what: string): number {
  const st = m.readState();
  if (v1StateIsError(st)) {
    throw new VfioMigError(
      `${m.name} is in the v1 error state ${v1StateName(st)}: recover it with 'vfio-mig reset --device ${m.name}' ` +
        `first`,
      "device",
    );
  }
  if ((st & MASK) === RESUMING && what === "save") {
    throw new VfioMigError(`${m.name} is resuming (a load is in progress or was abandoned): reset it first`, "device");
  }
  return st;
}

export class V1SaveSession implements SaveSession {
  readonly protocol = "v1" as const;
  readonly migrationFlags = 0;
  readonly sizeEstimate: number | null = null;
  readonly headerExtra: Record<string, unknown>;
  readonly p2p = false;
  #live = false;
  /** This pre-copy round's iteration was made. */
  #iterated = false;
  /** pending_bytes read at the start of the current iteration, or null. */
  #pending: number | null = null;
  #scratch = new Uint8Array(0);

  private constructor(readonly m: MigrationV1) {
    this.headerExtra = {
      v1: {
        regionIndex: m.region.index,
        regionSize: m.region.size,
        mmapAreas: m.region.sparse ?? null,
      },
    };
  }

  static open(d: VfioDevice, m: MigrationV1, live: boolean): V1SaveSession {
    let st = checkStart(m, "save");
    if (st & SAVING) {
      // Left saving by an interrupted save: end that session first.
      st = m.setState(~SAVING, 0, "ending an abandoned save");
    }
    if (live && !(st & RUNNING)) {
      throw new VfioMigError(
        `${d.label} is ${v1StateName(st)}: a live save starts from running (save it without --live)`,
        "device",
      );
    }
    return new V1SaveSession(m);
  }

  setup(w: StreamWriter, live: boolean): void {
    this.#live = live;
    w.tag(TAG.DEV_SETUP_STATE);
    this.m.map(false);
    // An offline save stops the device first, as savevm's vm_stop(RUN_STATE_SAVE_VM)
    // does (vfio_vmstate_change: RUNNING cleared, SAVING set).
    if (!live) this.m.setState(~RUNNING, SAVING, "stop for save");
    this.m.setState(MASK, SAVING, "set SAVING");
    w.tag(TAG.END_OF_STATE);
  }

  /** vfio_save_buffer(): data_offset, data_size, then the bytes. Returns data_size. */
  #saveBuffer(w: StreamWriter): number {
    const m = this.m;
    let at = m.dataOffset();
    const size = m.dataSize();
    m.checkBounds(at, size, "chunk");
    if (size === 0) {
      this.#stillSaving();
      w.dataParts([]);
      return 0;
    }
    // One record per device chunk (records are bounded by MAX_CHUNK: larger chunks
    // become several records, which the loader writes as separate transactions).
    for (let left = size; left > 0;) {
      const recLen = Math.min(left, MAX_CHUNK);
      const parts: Uint8Array[] = [];
      let scratchUsed = 0;
      for (let need = recLen; need > 0;) {
        const s = m.section(at, need);
        let part = s.view;
        if (!part) {
          // Not in a mapped area (or mmap failed): the slow path, pread.
          if (this.#scratch.length < scratchUsed + s.length) {
            const bigger = new Uint8Array(Math.max(scratchUsed + s.length, this.#scratch.length * 2));
            bigger.set(this.#scratch.subarray(0, scratchUsed));
            // Views already taken of the old buffer stay valid (it is not freed).
            this.#scratch = bigger;
          }
          part = this.#scratch.subarray(scratchUsed, scratchUsed + s.length);
          preadAll(m, part, at);
          scratchUsed += s.length;
        }
        parts.push(part);
        at += s.length;
        need -= s.length;
      }
      w.dataParts(parts);
      left -= recLen;
    }
    return size;
  }

  /**
   * Pre-copy: one iteration of the documented loop per pre-copy round (save_live_pending
   * reads pending_bytes, which starts it; one buffer; END_OF_STATE; pending_bytes again).
   * Stop-copy: one buffer while pending_bytes > 0 (vfio_save_complete_precopy).
   */
  readChunk(w: StreamWriter, phase: SavePhase): number | null {
    if (phase === "pre-copy") {
      if (this.#iterated) return 0; // this round's iteration is done
      this.#iterated = true;
      if (this.#pending === null) this.#pending = this.m.pendingBytes();
      if (this.#pending === 0) {
        this.#stillSaving();
        return 0;
      }
      const n = this.#saveBuffer(w);
      w.tag(TAG.END_OF_STATE);
      // (f) of the documented loop: read pending_bytes again.
      this.#pending = this.m.pendingBytes();
      return n;
    }
    if (this.m.pendingBytes() === 0) {
      this.#stillSaving();
      return 0;
    }
    return this.#saveBuffer(w);
  }

  /**
   * pending_bytes 0 ends the data only while the device is still saving: a device that
   * reset itself (device_state back to _RUNNING) also reads 0, with its data cut short.
   */
  #stillSaving(): void {
    const st = this.m.readState();
    if ((st & (SAVING | RESUMING)) !== SAVING) {
      throw new VfioMigError(
        `${this.m.name}: the data ended but device_state is ${v1StateName(st)}, without _SAVING: ` +
          `the device left the save (did it reset?) and its data is cut short`,
      );
    }
  }

  precopyStatus(bytes: number): IterationResult {
    this.#iterated = false;
    const pending = this.#pending ?? 0;
    return { bytes, done: pending === 0, initialBytes: 0, dirtyBytes: pending };
  }

  exactSize(): number | null {
    return this.#pending;
  }

  initDataSent(): boolean {
    return false; // QEMU 7.2's v1 stream has no switchover-ack marker
  }

  endPrecopy(): void {}

  prepareStop(): void {} // v1 has no P2P states

  stop(): void {
    // The VM stops (vfio_vmstate_change: RUNNING cleared), then
    // vfio_save_complete_precopy sets SAVING without RUNNING.
    if (this.#live) this.m.setState(~RUNNING, 0, "stop the device");
    this.m.setState(~RUNNING, SAVING, "set stop-and-copy");
  }

  endStopCopy(w: StreamWriter): void {
    w.tag(TAG.END_OF_STATE);
    this.m.setState(~SAVING, 0, "set stopped");
  }

  finish(resume: boolean): string {
    this.m.unmap();
    if (resume) this.m.setState(~MASK, RUNNING, "set running");
    return v1StateName(this.m.readState());
  }

  prepareStart(): void {}

  start(): string {
    this.m.setState(~MASK, RUNNING, "set running");
    return v1StateName(this.m.readState());
  }

  prepareRecovery(): void {}

  abort(): string {
    this.m.unmap();
    return recoverV1(this.m, "", false);
  }

  statesVisited(): string[] {
    return this.m.visited.map(v1StateName);
  }
}

function preadAll(m: MigrationV1, buf: Uint8Array, at: number): void {
  let off = 0;
  while (off < buf.length) {
    const n = m.sys.pread(m.fd, buf.subarray(off), m.region.offset + at + off);
    if (n === 0) throw new VfioMigError(`${m.name}: the migration region ended inside a chunk (at ${at + off})`);
    off += n;
  }
}

function pwriteAll(m: MigrationV1, buf: Uint8Array, at: number): void {
  let off = 0;
  while (off < buf.length) {
    const n = m.sys.pwrite(m.fd, buf.subarray(off), m.region.offset + at + off);
    if (n === 0) throw new VfioMigError(`${m.name}: the migration region took no bytes (at ${at + off})`);
    off += n;
  }
}

export class V1ResumeSession implements ResumeSession {
  readonly protocol = "v1" as const;
  readonly p2p = false;
  #touched = false;
  #resuming = false;
  /** Device transactions written (pieces of split chunks count one each). */
  transactions = 0;

  private constructor(readonly m: MigrationV1, readonly found: number) {}

  static open(m: MigrationV1): V1ResumeSession {
    const st = checkStart(m, "load");
    if (st & SAVING) {
      throw new VfioMigError(`${m.name} is ${v1StateName(st)} (a save is in progress): not loading into it`, "device");
    }
    return new V1ResumeSession(m, st);
  }

  get touched(): boolean {
    return this.#touched;
  }

  begin(): void {
    this.m.map(true);
    this.#touched = true;
    this.m.setState(~MASK, RESUMING, "set RESUMING");
    this.#resuming = true;
  }

  /** vfio_load_buffer(): one chunk, in pieces no larger than the destination's data section. */
  data(bytes: Uint8Array): void {
    const m = this.m;
    let left = bytes.length;
    let src = 0;
    while (left > 0) {
      let at = m.dataOffset();
      const room = m.region.size - at;
      if (at < 32 || room <= 0) m.checkBounds(at, 1, "data section");
      const size = Math.min(left, room);
      for (let need = size; need > 0;) {
        const s = m.section(at, need);
        const piece = bytes.subarray(src, src + s.length);
        if (s.view) s.view.set(piece);
        else pwriteAll(m, piece, at);
        at += s.length;
        src += s.length;
        need -= s.length;
      }
      m.writeDataSize(size);
      this.transactions++;
      left -= size;
    }
  }

  endData(): void {}

  prepareStart(): void {}

  finish(noStart: boolean): string {
    this.m.unmap();
    // vfio_vmstate_change(running): RESUMING cleared, RUNNING set; --no-start: stopped.
    this.m.setState(~MASK, noStart ? 0 : RUNNING, noStart ? "set stopped" : "set running");
    return v1StateName(this.m.readState());
  }

  abort(): string {
    this.m.unmap();
    if (!this.#touched) return `${this.m.name} was not touched`;
    if (!this.#resuming) {
      // Setting RESUMING failed: a device still as it was found was not changed (no reset).
      try {
        if (this.m.readState() === this.found) return `${this.m.name} was not touched`;
      } catch { /* unreadable: reset */ }
    }
    // A half-loaded device holds a partial state: reset it rather than run it.
    return recoverV1(this.m, "", true);
  }

  statesVisited(): string[] {
    return this.m.visited.map(v1StateName);
  }
}
