// The bulk driver: the simulator's own model of a device with a large state (a NIC's or
// an accelerator's), `size` bytes of seeded data in state.bin. Its stream is a 32-byte
// header then records {u64 offset, u64 length, bytes}. PRE_COPY offers the whole state
// as initial data; while the device runs it dirties `rate` bytes/s in whole 4 KiB pages
// (one random 8-byte store each, as dirty tracking counts them), which pre-copy offers
// as further records and STOP_COPY queues. A read with nothing queued in PRE_COPY fails
// with ENOMSG (the uAPI's "no data now"). --reinit-after re-queues half the state as new
// initial data (Linux 7.1 REINIT, reported to users that opted in to precopy-info v2).

import { MAP, O, PROT } from "../../../ffi/sys.ts";
import type { Mapping } from "../../../ffi/sys.ts";
import { PRECOPY_INFO_REINIT } from "../../../ffi/vfio_uapi.ts";
import { DeviceState } from "../../vfio/state_machine.ts";
import { isPrecopy, isRunning, MigrationFile, type PrecopyNumbers, type SimDevice, sysErr } from "../driver.ts";
import {
  BULK_HEADER_SIZE,
  BULK_PAGE,
  BULK_RECORD_HEADER,
  bulkHeader,
  bulkRecordHeader,
  prng,
  validateBulkHeader,
} from "../models.ts";
import { SaveQueueFile, SessionDriver } from "./session.ts";

const { PRE_COPY, PRE_COPY_P2P, STOP_COPY } = DeviceState;

class BulkSaveFile extends SaveQueueFile {
  /** Pages dirtied since they were queued. */
  readonly dirty = new Set<number>();
  /** The --reinit-after event happened in this session. */
  reinitDone = false;
  /** REINIT is due on the next PRECOPY_INFO (precopy-info v2 users). */
  reinitFlag = false;

  declare readonly driver: BulkDriver;

  protected override data(dst: Uint8Array, at: number): number {
    const map = this.driver.stateMap;
    if (map && dst.length <= BULK_PAGE) {
      // A dirty page of a device that has its state mapped: a copy, not a syscall each.
      dst.set(map.bytes.subarray(at, at + dst.length));
      return dst.length;
    }
    return this.host.pread(this.fd, dst, at);
  }

  protected override empty(): void {
    const state = this.driver.dev.meta.state;
    if (state !== PRE_COPY && state !== PRE_COPY_P2P) return;
    // uAPI: no data for now in PRE_COPY is ENOMSG (mtty returns 0 instead).
    if (this.dirty.size > 0) this.driver.queueDirty(this);
    else throw sysErr("read", "ENOMSG");
  }

  override precopyInfo(): PrecopyNumbers {
    const n = super.precopyInfo();
    n.unqueued = this.dirty.size * (BULK_PAGE + BULK_RECORD_HEADER);
    return n;
  }

  override takePrecopyFlags(): number {
    const flags = this.reinitFlag ? PRECOPY_INFO_REINIT : 0;
    this.reinitFlag = false;
    return flags;
  }

  override afterPrecopyInfo(): void {
    const after = this.driver.dev.meta.reinitAfter;
    if (after !== undefined && !this.reinitDone && this.pos >= after) this.driver.reinit(this);
  }

  override pending(): number {
    return this.queued() + this.dirty.size * (BULK_PAGE + BULK_RECORD_HEADER);
  }
}

class BulkResumeFile extends MigrationFile {
  readonly kind = "resume";
  readonly header = new Uint8Array(BULK_HEADER_SIZE);
  /** The record header being gathered. */
  readonly rec = new Uint8Array(BULK_RECORD_HEADER);
  recFill = 0;
  /** Data bytes left in the current record. */
  recLeft = 0;
  /** State offset of the next data byte. */
  recOffset = 0;
  sawFull: boolean;
  broken = false;

  constructor(fd: number, readonly driver: BulkDriver) {
    super(fd);
    this.sawFull = driver.dev.meta.size === 0; // an empty state needs no record
  }

  // The bulk model: header, then records {u64 offset, u64 length, data}.
  override write(buf: Uint8Array): number {
    if (this.disabled) throw sysErr("write", "ENODEV");
    if (this.broken) throw sysErr("write", "EINVAL");
    const size = this.driver.dev.meta.size;
    let i = 0;
    while (i < buf.length) {
      if (this.pos < BULK_HEADER_SIZE) {
        const take = Math.min(buf.length - i, BULK_HEADER_SIZE - this.pos);
        this.header.set(buf.subarray(i, i + take), this.pos);
        this.pos += take;
        i += take;
        if (this.pos === BULK_HEADER_SIZE && validateBulkHeader(size, this.header)) {
          this.broken = true;
          throw sysErr("write", "EINVAL", "bulk header does not match this device");
        }
        continue;
      }
      if (this.recLeft === 0) {
        const take = Math.min(buf.length - i, BULK_RECORD_HEADER - this.recFill);
        this.rec.set(buf.subarray(i, i + take), this.recFill);
        this.recFill += take;
        this.pos += take;
        i += take;
        if (this.recFill === BULK_RECORD_HEADER) {
          const v = new DataView(this.rec.buffer);
          const off = Number(v.getBigUint64(0, true));
          const len = Number(v.getBigUint64(8, true));
          this.recFill = 0;
          if (len === 0 || off + len > size) {
            this.broken = true;
            throw sysErr("write", "EINVAL", "bulk record out of range");
          }
          if (off === 0 && len === size) this.sawFull = true;
          this.recLeft = len;
          this.recOffset = off;
        }
        continue;
      }
      const take = Math.min(buf.length - i, this.recLeft);
      const n = this.driver.host.pwrite(this.fd, buf.subarray(i, i + take), this.recOffset);
      this.recLeft -= n;
      this.recOffset += n;
      this.pos += n;
      i += n;
    }
    return buf.length;
  }
}

export class BulkDriver extends SessionDriver {
  /** state.bin mapped for the running device's writes (made on first use). */
  stateMap: Mapping | undefined;
  #view: DataView | undefined;

  constructor(dev: SimDevice) {
    super(dev);
  }

  newSaveFile(state: DeviceState): SaveQueueFile {
    const fd = this.host.open(this.dev.store.statePath, O.RDONLY | O.CLOEXEC);
    const f = new BulkSaveFile(this.host, fd, this, this.dev.sessionData());
    const size = this.dev.meta.size;
    f.push({ mem: bulkHeader(size) });
    if (f.withData && size > 0 && (state === PRE_COPY || state === PRE_COPY_P2P || state === STOP_COPY)) {
      f.push({ mem: bulkRecordHeader(0, size) });
      f.push({ dataOffset: 0, length: size });
    }
    f.initialEnd = f.filled;
    this.saving = f;
    return f;
  }

  fillStopCopy(): void {
    this.queueDirty(this.saving as BulkSaveFile);
  }

  /** Queues the dirty pages as records, in page order. */
  queueDirty(f: BulkSaveFile): void {
    // The record headers share one buffer (a fully dirty 1 GiB state is 256k pages:
    // this runs while the device is stopped, so it must be quick).
    const pages = Uint32Array.from(f.dirty).sort();
    const headers = new Uint8Array(pages.length * BULK_RECORD_HEADER);
    const v = new DataView(headers.buffer);
    const size = this.dev.meta.size;
    for (let i = 0; i < pages.length; i++) {
      const off = pages[i] * BULK_PAGE;
      const len = Math.min(BULK_PAGE, size - off);
      const at = i * BULK_RECORD_HEADER;
      v.setBigUint64(at, BigInt(off), true);
      v.setBigUint64(at + 8, BigInt(len), true);
      f.segments.push({ mem: headers.subarray(at, at + BULK_RECORD_HEADER) }, { dataOffset: off, length: len });
      f.filled += BULK_RECORD_HEADER + len;
    }
    f.dirty.clear();
  }

  /**
   * --reinit-after: new initial data appears (Linux 7.1 REINIT). What was dirty is
   * queued, then the first half of the state again; for a user that opted in to
   * precopy-info v2 all of it is initial data (dirty_bytes drops to 0) and the next
   * PRECOPY_INFO says REINIT; for others it is only more dirty data. It happens right
   * after the PRECOPY_INFO that finds --reinit-after bytes read, so that one still
   * reports the old numbers (with --reinit-after at the initial data's size, the user
   * first sees initial_bytes 0, then REINIT).
   */
  reinit(f: BulkSaveFile): void {
    f.reinitDone = true;
    this.queueDirty(f);
    const len = Math.max(1, Math.ceil(this.dev.meta.size / 2));
    f.segments.push({ mem: bulkRecordHeader(0, len) }, { dataOffset: 0, length: len });
    f.filled += BULK_RECORD_HEADER + len;
    if (this.dev.precopyV2On) {
      f.initialEnd = f.filled;
      f.reinitFlag = true;
    }
    this.dev.log({ key: "reinit", at: f.pos, bytes: BULK_RECORD_HEADER + len, reported: this.dev.precopyV2On });
  }

  newResumeFile(): MigrationFile {
    // The incoming state goes into the spare file (the state before the last load),
    // overwriting its pages in place, like device memory that is reused, not allocated.
    const fd = this.host.open(this.dev.store.incomingPath, O.WRONLY | O.CREAT | O.CLOEXEC, 0o644);
    this.host.ftruncate(fd, this.dev.meta.size);
    const f = new BulkResumeFile(fd, this);
    this.resuming = f;
    return f;
  }

  loadState(): void {
    const f = this.resuming as BulkResumeFile | undefined;
    if (!f) throw sysErr("ioctl", "EINVAL");
    if (f.broken || f.pos < BULK_HEADER_SIZE || f.recLeft > 0 || f.recFill > 0 || !f.sawFull) {
      throw sysErr("ioctl", "EINVAL");
    }
    this.#dropStateMap(); // it maps the file that becomes the spare
    this.swapIncoming();
  }

  dataSize(): number {
    const f = this.saving as BulkSaveFile | undefined;
    if (f && isPrecopy(this.dev.meta.state)) {
      // During pre-copy: what STOP_COPY would still have to send (queued, unread
      // data and the pages dirtied since), as drivers estimate for a VMM's downtime.
      this.tick();
      return Math.max(0, f.filled - f.pos) + f.dirty.size * (BULK_PAGE + BULK_RECORD_HEADER);
    }
    return BULK_HEADER_SIZE + BULK_RECORD_HEADER + this.dev.meta.size;
  }

  /** Applies the state changes a running device made since it was last looked at. */
  override tick(): void {
    const m = this.dev.meta;
    const now = Date.now();
    if (!isRunning(m.state) || m.rate <= 0 || m.size < 8) {
      m.runningSince = now;
      return;
    }
    // At most one write per page of the state per look (more only rewrites dirty pages
    // and costs time that a device dirtying memory would not take from the reader).
    const pages = Math.ceil(m.size / BULK_PAGE);
    const words = Math.min(Math.floor(((now - m.runningSince) / 1000) * m.rate / BULK_PAGE), 1 << 16, pages);
    if (words <= 0) return;
    const rnd = prng(m.seed ^ now);
    // Stores into a shared mapping of state.bin, not a pwrite each: a device dirties its
    // memory without costing the process that migrates it a system call per page.
    const view = this.#stateView();
    const f = this.saving as BulkSaveFile | undefined;
    const track = f !== undefined && f.withData;
    for (let i = 0; i < words; i++) {
      const off = (rnd() % Math.floor(m.size / 8)) * 8;
      view.setUint32(off, rnd(), true);
      view.setUint32(off + 4, rnd(), true);
      if (track) f.dirty.add(Math.floor(off / BULK_PAGE));
    }
    m.runningSince = now;
    this.dev.dataChanged();
  }

  #stateView(): DataView {
    if (!this.#view) {
      const fd = this.host.open(this.dev.store.statePath, O.RDWR | O.CLOEXEC);
      try {
        const map = this.host.mmap(fd, this.dev.meta.size, PROT.READ | PROT.WRITE, MAP.SHARED, 0);
        this.stateMap = map;
        this.#view = new DataView(map.bytes.buffer, map.bytes.byteOffset, map.length);
      } finally {
        this.host.close(fd);
      }
    }
    return this.#view;
  }

  #dropStateMap(): void {
    if (!this.stateMap) return;
    const map = this.stateMap;
    this.stateMap = undefined;
    this.#view = undefined;
    this.host.munmap(map);
  }

  powerOn(): void {
    this.#dropStateMap();
    this.dev.store.writeInitialState(this.dev.meta);
  }

  override close(): void {
    this.#dropStateMap();
  }
}
