// The simulated VFIO kernel. It implements the same Sys interface as the libc
// binding: opening "sim:PATH" gives a device fd, and the VFIO ioctls on it, the
// data_fd reads/writes and PRECOPY_INFO answer as the kernel (and, for the mtty
// models, as samples/vfio-mdev/mtty.c) would, errno values included. Every other
// call goes to the real libc, and data_fds are real file descriptors (the device's
// state file, or the incoming file on resume), so save/load move bytes through real
// read/write syscalls.
//
// Fault injection: "KEY@N=ERRNO" makes the Nth call whose key starts with KEY fail
// (ERRNO "short" halves the length of a read or write instead). Keys look like
// "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET", "read:data_fd", "write:host".
// A call log (JSON lines) records every call for tests.

import { Errno, errnoName, SysError } from "../../ffi/errno.ts";
import { F, type FileStat, type IoctlArg, MAP, type Mapping, O, type PollFd, PROT, type Sys } from "../../ffi/sys.ts";
import {
  decode,
  encodeInto,
  FEATURE,
  FEATURE_FLAGS,
  IOCTL,
  PCI_REGION,
  PRECOPY_INFO_REINIT,
  REGION_FLAGS,
  STRUCTS,
} from "../../ffi/vfio_uapi.ts";
import {
  arcClosesSession,
  arcOpensDataFd,
  DeviceState,
  isHangingArc,
  nextStep,
  stateName,
} from "../migration/state_machine.ts";
import {
  BULK_HEADER_SIZE,
  BULK_PAGE,
  BULK_RECORD_HEADER,
  bulkHeader,
  bulkRecordHeader,
  CAP_MSIX_AT,
  configSpace,
  configWritable,
  type ModelInfo,
  modelInfo,
  MTTY_HEADER_SIZE,
  MTTY_PORT_SIZE,
  mttyHeader,
  prng,
  validateBulkHeader,
  validateMttyHeader,
} from "./models.ts";
import { type SimDeviceMeta, SimStore, writeFileAtomic } from "./store.ts";
import { hasQuirk } from "./quirks.ts";
import { V1_REGION_INDEX, type V1Backend, V1Device } from "./v1_device.ts";

const { STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = DeviceState;

/** --yield-rate: a non-blocking read waits for at least this much (EAGAIN before). */
const YIELD_QUANTUM = 64 * 1024;
const YIELD_SLEEPER = new Int32Array(new SharedArrayBuffer(4));

// ---------------------------------------------------------------------------
// Faults and the call log

export interface Fault {
  key: string;
  nth: number;
  errno: number | "short";
  seen: number;
}

export function parseFaults(spec: string | undefined): Fault[] {
  if (!spec) return [];
  return spec.split(",").filter((s) => s.trim()).map((item) => {
    const m = /^([A-Za-z0-9_:]+)@(\d+)=([A-Z0-9]+|short)$/.exec(item.trim());
    if (!m) throw new Error(`bad fault "${item}": expected KEY@N=ERRNO, e.g. write:data_fd@2=EIO`);
    const e = m[3] === "short" ? "short" : (Errno as Record<string, number>)[m[3]];
    if (e === undefined) throw new Error(`bad fault "${item}": unknown errno ${m[3]}`);
    return { key: m[1], nth: Number(m[2]), errno: e, seen: 0 };
  });
}

const IOCTL_NAMES = new Map<number, string>(Object.entries(IOCTL).map(([k, v]) => [v, k]));
const FEATURE_NAMES = new Map<number, string>(Object.entries(FEATURE).map(([k, v]) => [v, k]));

function ioctlKey(request: number, arg: IoctlArg): string {
  const name = IOCTL_NAMES.get(request) ?? `0x${request.toString(16)}`;
  if (request === IOCTL.DEVICE_FEATURE && arg instanceof Uint8Array && arg.length >= 8) {
    const flags = new DataView(arg.buffer, arg.byteOffset).getUint32(4, true);
    const id = flags & FEATURE_FLAGS.MASK;
    const op = flags & FEATURE_FLAGS.PROBE ? "PROBE" : flags & FEATURE_FLAGS.SET ? "SET" : "GET";
    return `ioctl:${name}:${FEATURE_NAMES.get(id) ?? id}:${op}`;
  }
  return `ioctl:${name}`;
}

// ---------------------------------------------------------------------------
// Migration files (what a data_fd is, inside the simulated driver)

type Segment = { mem: Uint8Array } | { fileOffset: number; length: number };

interface SaveFile {
  kind: "save";
  fd: number; // a real fd on state.bin: reads of file segments are real preads on it
  segments: Segment[]; // segments[segHead] is the current one
  segHead?: number; // consumed segments (Array.shift is O(n): a fully dirty 1 GiB state queues 512k)
  segOffset: number; // bytes consumed of the current segment
  pos: number; // bytes handed out
  filled: number; // bytes queued so far
  initialEnd: number; // end of the initial pre-copy data
  dirty: Set<number>; // bulk pages dirtied since queued
  disabled: boolean;
  closed: boolean;
  reinitDone?: boolean; // the --reinit-after event happened in this session
  reinitFlag?: boolean; // REINIT is due on the next PRECOPY_INFO (precopy-info v2 users)
}

interface ResumeFile {
  kind: "resume";
  fd: number; // a real fd on incoming.bin
  header: Uint8Array;
  pos: number;
  // bulk record parser
  rec: Uint8Array;
  recFill: number;
  recLeft: number; // data bytes left in the current record
  recOffset: number; // state offset of the next data byte
  sawFull: boolean;
  broken: boolean;
  disabled: boolean;
  closed: boolean;
}

type MigFile = SaveFile | ResumeFile;

interface OpenDevice {
  fd: number;
  store: SimStore;
  meta: SimDeviceMeta;
  info: ModelInfo;
  config: Uint8Array;
  /** The MSI-X BAR's contents, for models with MSI-X. */
  msixBar?: Uint8Array;
  /** The v1 register block and data section, for protocol v1 devices. */
  v1?: V1Device;
  saving?: SaveFile;
  resuming?: ResumeFile;
  /** This open device opted in to precopy-info v2 (SET of MIG_PRECOPY_INFOv2). */
  precopyV2On?: boolean;
  /** state.bin mapped for the running bulk model's writes (made on first use). */
  stateMap?: { map: Mapping; view: DataView };
}

function sizeOfState(d: OpenDevice): number {
  return d.meta.model === "bulk" ? d.meta.size : d.info.bars.filter((b) => b > 0).length * MTTY_PORT_SIZE;
}

function err(op: string, name: keyof typeof Errno, detail?: string): SysError {
  return new SysError(op, Errno[name], detail);
}

export interface SimKernelOptions {
  faults?: Fault[];
  /** Path of a JSON-lines call log, appended to. */
  logPath?: string;
}

export class SimKernel implements Sys {
  readonly #host: Sys;
  readonly #devices = new Map<number, OpenDevice>();
  readonly #files = new Map<number, { dev: OpenDevice; file: MigFile }>();
  readonly faults: Fault[];
  #logFd = -1;
  #seq = 0;
  /** Arcs requested that the kernel must never be asked for (tests assert none). */
  readonly forbiddenArcs: string[] = [];
  readonly #yieldBuckets = new WeakMap<SaveFile, { due: number; at: number }>();

  constructor(host: Sys, opts: SimKernelOptions = {}) {
    this.#host = host;
    this.faults = opts.faults ?? [];
    if (opts.logPath) {
      this.#logFd = host.open(opts.logPath, O.WRONLY | O.CREAT | O.APPEND | O.CLOEXEC, 0o644);
    }
  }

  /** Closes the call log (a long-lived process that makes many kernels, e.g. a test). */
  closeLog(): void {
    if (this.#logFd < 0) return;
    this.#host.close(this.#logFd);
    this.#logFd = -1;
  }

  /** Builds a SimKernel from VFIO_MIG_SIM_FAULTS and VFIO_MIG_SIM_LOG. */
  static fromEnv(host: Sys): SimKernel {
    return new SimKernel(host, {
      faults: parseFaults(host.getenv("VFIO_MIG_SIM_FAULTS")),
      logPath: host.getenv("VFIO_MIG_SIM_LOG") || undefined,
    });
  }

  #log(entry: Record<string, unknown>): void {
    if (this.#logFd < 0) return;
    const line = JSON.stringify({ n: ++this.#seq, pid: this.#host.getpid(), ...entry }) + "\n";
    this.#host.write(this.#logFd, new TextEncoder().encode(line));
  }

  /** Counts the call against the faults; throws or returns "short". */
  #fault(key: string, op: string): "short" | null {
    // Every faultable call, in order: the sequence a fault matrix enumerates.
    this.#log({ call: key });
    let short: "short" | null = null;
    let failing: Fault | null = null;
    // Count the call against every matching fault before failing it, so each
    // fault's N counts all the calls its key matches.
    for (const f of this.faults) {
      if (!key.startsWith(f.key)) continue;
      f.seen++;
      if (f.seen !== f.nth) continue;
      if (f.errno === "short") short = "short";
      else failing ??= f;
    }
    if (failing) {
      this.#log({ key, fault: errnoName(failing.errno as number) });
      throw new SysError(op, failing.errno as number, `injected at ${failing.key}@${failing.nth}`);
    }
    return short;
  }

  #classOf(fd: number): string {
    if (this.#devices.has(fd)) return "device";
    if (this.#files.has(fd)) return "data_fd";
    return "host";
  }

  // -------------------------------------------------------------------------
  // Sys: the intercepted calls

  open(path: string, flags: number, mode?: number): number {
    const key = path.startsWith("sim:") ? "open:device" : "open:host";
    this.#fault(key, "open");
    if (!path.startsWith("sim:")) return this.#host.open(path, flags, mode);
    const fd = this.#openDevice(path.slice(4));
    this.#log({ key, path, fd });
    return fd;
  }

  close(fd: number): void {
    let injected: unknown = null;
    try {
      this.#fault(`close:${this.#classOf(fd)}`, "close");
    } catch (e) {
      injected = e;
    }
    // Linux releases the descriptor even when close() reports an error (EINTR, EIO):
    // an injected failure does too, so a caller that closes again is caught (EBADF).
    this.#close(fd);
    if (injected) throw injected;
  }

  #close(fd: number): void {
    const dev = this.#devices.get(fd);
    if (dev) {
      dev.v1?.close();
      this.#dropStateMap(dev);
      this.#disableFiles(dev);
      this.#devices.delete(fd);
      this.#log({ key: "close:device", fd, state: stateName(dev.meta.state) });
      this.#host.close(fd); // releases the flock
      return;
    }
    const f = this.#files.get(fd);
    if (f) {
      // The driver holds its own reference while the session lasts (get_file in
      // mtty_step_state); only a file nobody else holds is released.
      f.file.closed = true;
      if (f.dev.saving !== f.file && f.dev.resuming !== f.file) f.file.disabled = true;
      this.#files.delete(fd);
      this.#log({ key: "close:data_fd", fd });
    }
    this.#host.close(fd);
  }

  ioctl(fd: number, request: number, arg: IoctlArg): number {
    const dev = this.#devices.get(fd);
    const file = this.#files.get(fd);
    const key = dev || file ? ioctlKey(request, arg) : `ioctl:host:${IOCTL_NAMES.get(request) ?? request}`;
    this.#fault(key, "ioctl");
    if (dev) return this.#deviceIoctl(dev, request, arg, key);
    if (file) return this.#dataIoctl(file.dev, file.file, request, arg);
    return this.#host.ioctl(fd, request, arg);
  }

  read(fd: number, buf: Uint8Array): number {
    const f = this.#files.get(fd);
    const short = this.#fault(`read:${this.#classOf(fd)}`, "read");
    const b = short ? buf.subarray(0, Math.max(1, buf.length >> 1)) : buf;
    if (!f) {
      if (this.#devices.has(fd)) throw err("read", "EINVAL");
      return this.#host.read(fd, b);
    }
    if (f.file.kind !== "save") throw err("read", "EBADF");
    const n = f.dev.meta.yieldRate ? this.#yieldRead(fd, f.dev, f.file, b) : this.#saveRead(f.dev, f.file, b);
    this.#log({ key: "read:data_fd", fd, len: b.length, ret: n });
    return n;
  }

  /**
   * A data_fd read of a device with a yield rate (sim create --yield-rate): bytes come
   * due at that rate (at most 20 ms' worth build up while nobody reads). A read blocks
   * until the buffer's worth is due, or with O_NONBLOCK takes what is due and fails with
   * EAGAIN while less than YIELD_QUANTUM is. The data itself is still read by pread.
   */
  #yieldRead(fd: number, dev: OpenDevice, f: SaveFile, buf: Uint8Array): number {
    const rate = dev.meta.yieldRate!;
    if (f.disabled || (f.segments.length === 0 && f.dirty.size === 0)) return this.#saveRead(dev, f, buf);
    let b = this.#yieldBuckets.get(f);
    if (!b) this.#yieldBuckets.set(f, b = { due: 0, at: performance.now() });
    const bucket = b;
    const cap = Math.max(YIELD_QUANTUM, rate / 50);
    const refill = () => {
      const now = performance.now();
      bucket.due = Math.min(cap, bucket.due + ((now - bucket.at) / 1000) * rate);
      bucket.at = now;
    };
    refill();
    const queued = Math.max(1, f.filled - f.pos);
    const want = Math.min(buf.length, cap, queued);
    if (bucket.due < want) {
      if (this.#host.fcntl(fd, F.GETFL) & O.NONBLOCK) {
        if (bucket.due < Math.min(want, YIELD_QUANTUM)) throw err("read", "EAGAIN");
      } else {
        while (bucket.due < want) {
          Atomics.wait(YIELD_SLEEPER, 0, 0, Math.max(1, ((want - bucket.due) / rate) * 1000));
          refill();
        }
      }
    }
    const n = this.#saveRead(dev, f, buf.subarray(0, Math.min(buf.length, Math.floor(bucket.due))));
    bucket.due -= n;
    return n;
  }

  write(fd: number, buf: Uint8Array): number {
    const f = this.#files.get(fd);
    const short = this.#fault(`write:${this.#classOf(fd)}`, "write");
    const b = short ? buf.subarray(0, Math.max(1, buf.length >> 1)) : buf;
    if (!f) {
      if (this.#devices.has(fd)) throw err("write", "EINVAL");
      return this.#host.write(fd, b);
    }
    if (f.file.kind !== "resume") throw err("write", "EBADF");
    try {
      const n = this.#resumeWrite(f.dev, f.file, b);
      this.#log({ key: "write:data_fd", fd, len: b.length, ret: n });
      return n;
    } catch (e) {
      this.#log({ key: "write:data_fd", fd, len: b.length, err: e instanceof SysError ? e.code : String(e) });
      throw e;
    }
  }

  pread(fd: number, buf: Uint8Array, offset: number): number {
    this.#fault(`pread:${this.#classOf(fd)}`, "pread");
    const dev = this.#devices.get(fd);
    if (dev) return this.#regionAccess(dev, buf, offset, false);
    if (this.#files.has(fd)) throw err("pread", "ESPIPE");
    return this.#host.pread(fd, buf, offset);
  }

  pwrite(fd: number, buf: Uint8Array, offset: number): number {
    this.#fault(`pwrite:${this.#classOf(fd)}`, "pwrite");
    const dev = this.#devices.get(fd);
    if (dev) return this.#regionAccess(dev, buf, offset, true);
    if (this.#files.has(fd)) throw err("pwrite", "ESPIPE");
    return this.#host.pwrite(fd, buf, offset);
  }

  mmap(fd: number, length: number, prot: number, flags: number, offset: number): Mapping {
    this.#fault(`mmap:${this.#classOf(fd)}`, "mmap");
    // Only the v1 data section is mmap-capable (mtty's BARs are not either).
    const dev = this.#devices.get(fd);
    const v1At = offset - V1_REGION_INDEX * 2 ** 40;
    if (dev?.v1 && v1At >= 0 && v1At < dev.v1.regionSize) {
      const map = dev.v1.mmap(length, prot, v1At);
      this.#log({ key: "mmap:device", offset: v1At, length });
      return map;
    }
    if (dev || this.#files.has(fd)) throw err("mmap", "EINVAL");
    return this.#host.mmap(fd, length, prot, flags, offset);
  }

  munmap(map: Mapping): void {
    this.#host.munmap(map);
  }
  fcntl(fd: number, cmd: number, arg?: number): number {
    return this.#host.fcntl(fd, cmd, arg);
  }
  lseek(fd: number, offset: number, whence: number): number {
    if (this.#files.has(fd)) throw err("lseek", "ESPIPE");
    return this.#host.lseek(fd, offset, whence);
  }
  ftruncate(fd: number, length: number): void {
    this.#host.ftruncate(fd, length);
  }
  fsync(fd: number): void {
    this.#fault(`fsync:${this.#classOf(fd)}`, "fsync");
    this.#host.fsync(fd);
  }
  flock(fd: number, op: number): void {
    this.#host.flock(fd, op);
  }
  pipe(flags?: number): [number, number] {
    return this.#host.pipe(flags);
  }
  memfd(name: string, flags?: number): number {
    return this.#host.memfd(name, flags);
  }
  fstat(fd: number): FileStat {
    return this.#host.fstat(fd);
  }
  stat(path: string): FileStat {
    return this.#host.stat(path);
  }
  rename(from: string, to: string): void {
    this.#fault("rename", "rename");
    this.#host.rename(from, to);
  }
  exchange(a: string, b: string): void {
    this.#host.exchange(a, b);
  }
  unlink(path: string): void {
    this.#host.unlink(path);
  }
  mkdir(path: string, mode?: number): void {
    this.#host.mkdir(path, mode);
  }
  rmdir(path: string): void {
    this.#host.rmdir(path);
  }
  readlink(path: string): string {
    return this.#host.readlink(path);
  }
  readdir(path: string): string[] {
    return this.#host.readdir(path);
  }
  getenv(name: string): string | undefined {
    return this.#host.getenv(name);
  }
  getpid(): number {
    return this.#host.getpid();
  }
  poll(fds: readonly PollFd[], timeoutMs: number): number[] {
    return this.#host.poll(fds, timeoutMs);
  }
  pidfdOpen(pid: number): number {
    return this.#host.pidfdOpen(pid);
  }
  pidfdGetfd(pidfd: number, targetFd: number): number {
    return this.#host.pidfdGetfd(pidfd, targetFd);
  }
  isatty(fd: number): boolean {
    return this.#host.isatty(fd);
  }

  /** The simulated device behind an fd (tests and `sim show`). */
  deviceMeta(fd: number): SimDeviceMeta | undefined {
    return this.#devices.get(fd)?.meta;
  }

  // -------------------------------------------------------------------------
  // Devices

  #openDevice(dir: string): number {
    const store = new SimStore(this.#host, dir);
    if (!store.exists()) throw err("open", "ENOENT", `sim:${dir}`);
    const meta = store.readMeta();
    const fd = this.#host.open(store.lockPath, O.RDWR | O.CREAT | O.CLOEXEC, 0o644);
    try {
      this.#host.flock(fd, 2 /* LOCK_EX */ | 4 /* LOCK_NB */);
    } catch (e) {
      this.#host.close(fd);
      if (e instanceof SysError && e.errno === Errno.EAGAIN) throw err("open", "EBUSY", `sim:${dir}`);
      throw e;
    }
    const info = modelInfo(meta.model);
    const saved = store.readOptional(store.configPath);
    const config = saved && saved.length === info.configSize ? saved : configSpace(info);
    const dev: OpenDevice = { fd, store, meta: store.readMeta(), info, config };
    if (info.msix) {
      const size = info.bars[info.msix.bar];
      const bar = store.readOptional(store.msixPath);
      dev.msixBar = bar && bar.length === size ? bar : new Uint8Array(size);
    }
    if (dev.meta.v1) {
      const v1meta = dev.meta.v1;
      try {
        dev.v1 = new V1Device(this.#host, v1meta, this.#v1Backend(dev), {
          fault: (key, op) => this.#fault(key, op),
          persist: () => {
            dev.meta.state = v1Mirror(v1meta.state);
            this.#persist(dev);
          },
          log: (entry) => this.#log(entry),
        });
      } catch (e) {
        this.#host.close(fd);
        throw e;
      }
    }
    this.#devices.set(fd, dev);
    return fd;
  }

  /** The model's save and resume streams, for the v1 register block. */
  #v1Backend(dev: OpenDevice): V1Backend {
    const endSave = () => {
      if (dev.saving) this.#releaseFile(dev.saving);
      dev.saving = undefined;
    };
    const endResume = () => {
      if (dev.resuming) this.#releaseFile(dev.resuming);
      dev.resuming = undefined;
    };
    return {
      startSave: (precopy) => {
        endSave();
        this.#newSaveFile(dev, precopy ? PRE_COPY : STOP_COPY);
      },
      toStopCopy: () => {
        if (dev.saving) this.#fillStopCopy(dev, dev.saving);
      },
      pending: () => {
        const f = dev.saving;
        if (!f) return 0;
        this.#tick(dev);
        let p = f.filled - f.pos;
        if (dev.meta.model === "bulk") p += f.dirty.size * (BULK_PAGE + BULK_RECORD_HEADER);
        return p;
      },
      read: (buf) => {
        if (!dev.saving) return 0;
        try {
          return this.#saveRead(dev, dev.saving, buf);
        } catch (e) {
          if (e instanceof SysError && e.errno === Errno.ENOMSG) return 0;
          throw e;
        }
      },
      endSave,
      startResume: () => {
        endResume();
        this.#newResumeFile(dev);
      },
      write: (buf) => {
        let off = 0;
        while (off < buf.length) off += this.#resumeWrite(dev, dev.resuming!, buf.subarray(off));
      },
      load: () => this.#loadState(dev),
      endResume,
    };
  }

  #persist(dev: OpenDevice): void {
    dev.store.writeMeta(dev.meta);
  }

  #disableFiles(dev: OpenDevice): void {
    if (dev.saving) dev.saving.disabled = true;
    if (dev.resuming) dev.resuming.disabled = true;
    dev.saving = undefined;
    dev.resuming = undefined;
  }

  /** Applies the state changes a running bulk device made since it was last looked at. */
  #tick(dev: OpenDevice): void {
    const m = dev.meta;
    const now = Date.now();
    const running = m.state === RUNNING || m.state === RUNNING_P2P || m.state === PRE_COPY ||
      m.state === PRE_COPY_P2P;
    if (!running || m.rate <= 0 || m.model !== "bulk" || m.size < 8) {
      m.runningSince = now;
      return;
    }
    // rate is bytes of state dirtied per second, in whole 4 KiB pages (how device
    // dirty tracking counts): each dirtied page gets one random 8-byte write.
    // At most one write per page of the state per look (more only rewrites dirty pages
    // and costs time that a device dirtying memory would not take from the reader).
    const pages = Math.ceil(m.size / BULK_PAGE);
    const words = Math.min(Math.floor(((now - m.runningSince) / 1000) * m.rate / BULK_PAGE), 1 << 16, pages);
    if (words <= 0) return;
    const rnd = prng(m.seed ^ now);
    // Stores into a shared mapping of state.bin, not a pwrite each: a device dirties its
    // memory without costing the process that migrates it a system call per page.
    const view = this.#stateView(dev);
    for (let i = 0; i < words; i++) {
      const off = (rnd() % Math.floor(m.size / 8)) * 8;
      view.setUint32(off, rnd(), true);
      view.setUint32(off + 4, rnd(), true);
      dev.saving?.dirty.add(Math.floor(off / BULK_PAGE));
    }
    m.runningSince = now;
  }

  #stateView(dev: OpenDevice): DataView {
    if (!dev.stateMap) {
      const fd = this.#host.open(dev.store.statePath, O.RDWR | O.CLOEXEC);
      try {
        const map = this.#host.mmap(fd, dev.meta.size, PROT.READ | PROT.WRITE, MAP.SHARED, 0);
        dev.stateMap = { map, view: new DataView(map.bytes.buffer, map.bytes.byteOffset, map.length) };
      } finally {
        this.#host.close(fd);
      }
    }
    return dev.stateMap.view;
  }

  #dropStateMap(dev: OpenDevice): void {
    if (!dev.stateMap) return;
    const { map } = dev.stateMap;
    dev.stateMap = undefined;
    this.#host.munmap(map);
  }

  #deviceIoctl(dev: OpenDevice, request: number, arg: IoctlArg, key: string): number {
    switch (request) {
      case IOCTL.DEVICE_GET_INFO:
        return this.#getInfo(dev, arg);
      case IOCTL.DEVICE_GET_REGION_INFO:
        return this.#getRegionInfo(dev, arg);
      case IOCTL.DEVICE_RESET:
        // mtty: a deferred reset that forces RUNNING and disables migration files.
        dev.v1?.reset();
        this.#disableFiles(dev);
        dev.meta.state = RUNNING;
        dev.meta.runningSince = Date.now();
        this.#persist(dev);
        this.#log({ key: "ioctl:DEVICE_RESET", state: "RUNNING", dev: dev.store.dir });
        return 0;
      case IOCTL.DEVICE_FEATURE:
        return this.#feature(dev, arg, key);
      default:
        throw err("ioctl", "ENOTTY");
    }
  }

  #getInfo(dev: OpenDevice, arg: IoctlArg): number {
    if (!(arg instanceof Uint8Array) || arg.length < 16) throw err("ioctl", "EFAULT");
    const argsz = decode(STRUCTS.vfio_device_info, new Uint8Array(arg.buffer, arg.byteOffset, 24).slice(0, 24)).argsz;
    if (argsz < 16) throw err("ioctl", "EINVAL");
    const v = new DataView(arg.buffer, arg.byteOffset, arg.byteLength);
    v.setUint32(4, dev.info.deviceFlags, true);
    v.setUint32(8, dev.v1 ? V1_REGION_INDEX + 1 : PCI_REGION.NUM, true);
    v.setUint32(12, 5, true);
    if (argsz >= 24 && arg.length >= 24) v.setUint32(16, 0, true);
    return 0;
  }

  #getRegionInfo(dev: OpenDevice, arg: IoctlArg): number {
    if (!(arg instanceof Uint8Array) || arg.length < 32) throw err("ioctl", "EFAULT");
    const r = decode(STRUCTS.vfio_region_info, arg);
    if (r.argsz >= 32 && r.index === V1_REGION_INDEX && dev.v1) {
      dev.v1.regionInfo(arg, V1_REGION_INDEX * 2 ** 40);
      return 0;
    }
    if (r.argsz < 32 || r.index >= PCI_REGION.NUM) throw err("ioctl", "EINVAL");
    let size = 0;
    if (r.index < 6) size = dev.info.bars[r.index];
    else if (r.index === PCI_REGION.CONFIG) size = dev.info.configSize;
    const flags = size > 0 ? REGION_FLAGS.READ | REGION_FLAGS.WRITE : 0;
    encodeInto(STRUCTS.vfio_region_info, {
      argsz: r.argsz,
      flags,
      index: r.index,
      cap_offset: 0,
      size,
      offset: r.index * 2 ** 40,
    }, arg);
    return 0;
  }

  /** pread/pwrite on the device fd: config space, and the UART scratch register of mtty BARs. */
  #regionAccess(dev: OpenDevice, buf: Uint8Array, offset: number, write: boolean): number {
    const index = Math.floor(offset / 2 ** 40);
    const off = offset - index * 2 ** 40;
    if (index === PCI_REGION.CONFIG) {
      if (off + buf.length > dev.config.length) throw err(write ? "pwrite" : "pread", "EINVAL");
      if (write) {
        // The command register and the MSI/MSI-X control bits are writable; they persist.
        let changed = false;
        for (let i = 0; i < buf.length; i++) {
          const at = off + i;
          if (!configWritable(dev.info, at)) continue;
          // MSI-X control's high byte: enable and function mask; the table size stays.
          const b = at === CAP_MSIX_AT + 3 ? (dev.config[at] & 0x3f) | (buf[i] & 0xc0) : buf[i];
          if (dev.config[at] !== b) changed = true;
          dev.config[at] = b;
        }
        if (changed) writeFileAtomic(this.#host, dev.store.configPath, dev.config);
      } else buf.set(dev.config.subarray(off, off + buf.length));
      return buf.length;
    }
    if (index === V1_REGION_INDEX && dev.v1) {
      if (off + buf.length > dev.v1.regionSize) throw err(write ? "pwrite" : "pread", "EINVAL");
      return dev.v1.access(buf, off, write);
    }
    const msix = dev.info.msix;
    if (msix && dev.msixBar && index === msix.bar) {
      if (off + buf.length > dev.msixBar.length) throw err(write ? "pwrite" : "pread", "EINVAL");
      if (!write) {
        buf.set(dev.msixBar.subarray(off, off + buf.length));
        return buf.length;
      }
      // The table is writable; the PBA is read-only.
      const tableEnd = msix.tableOffset + msix.entries * 16;
      for (let i = 0; i < buf.length; i++) {
        if (off + i >= msix.tableOffset && off + i < tableEnd) dev.msixBar[off + i] = buf[i];
      }
      writeFileAtomic(this.#host, dev.store.msixPath, dev.msixBar);
      return buf.length;
    }
    if (index < 6 && dev.info.bars[index] > 0 && off + buf.length <= dev.info.bars[index]) {
      // Each BAR is one port's 8 UART registers; only SCR (7) holds what is written.
      const fd = this.#host.open(dev.store.statePath, O.RDWR | O.CLOEXEC);
      try {
        for (let i = 0; i < buf.length; i++) {
          const reg = off + i;
          const at = index * MTTY_PORT_SIZE + reg;
          if (write) {
            if (reg === 7) this.#host.pwrite(fd, buf.subarray(i, i + 1), at);
          } else {
            const one = new Uint8Array(1);
            if (reg === 7) this.#host.pread(fd, one, at);
            buf[i] = one[0];
          }
        }
      } finally {
        this.#host.close(fd);
      }
      return buf.length;
    }
    throw err(write ? "pwrite" : "pread", "EINVAL");
  }

  // VFIO_DEVICE_FEATURE as drivers/vfio/vfio_main.c decodes it.
  #feature(dev: OpenDevice, arg: IoctlArg, key: string): number {
    if (!(arg instanceof Uint8Array) || arg.length < 8) throw err("ioctl", "EFAULT");
    const hdr = decode(STRUCTS.vfio_device_feature, arg);
    if (hdr.argsz < 8) throw err("ioctl", "EINVAL");
    const { GET, SET, PROBE, MASK } = FEATURE_FLAGS;
    const flags = hdr.flags;
    if ((flags & ~(MASK | GET | SET | PROBE)) >>> 0) throw err("ioctl", "EINVAL");
    if (!(flags & PROBE) && flags & SET && flags & GET) throw err("ioctl", "EINVAL");
    const payloadSize = hdr.argsz - 8;
    if (arg.length < hdr.argsz) throw err("ioctl", "EFAULT");
    const payload = arg.subarray(8);
    const migratable = dev.meta.flags !== 0;
    // vfio_check_feature(): 1 = go on, 0 = done (PROBE); throws EINVAL otherwise.
    const check = (supported: number, minsz: number): boolean => {
      if ((flags & (GET | SET)) & ~supported) throw err("ioctl", "EINVAL");
      if (flags & PROBE) return false;
      if (!(flags & (GET | SET))) throw err("ioctl", "EINVAL");
      if (payloadSize < minsz) throw err("ioctl", "EINVAL");
      return true;
    };
    switch (flags & MASK) {
      case FEATURE.MIGRATION:
        if (!migratable) throw err("ioctl", "ENOTTY");
        if (!check(GET, 8)) return 0;
        encodeInto(STRUCTS.vfio_device_feature_migration, { flags: dev.meta.flags }, payload);
        return 0;
      case FEATURE.MIG_DEVICE_STATE: {
        if (!migratable) throw err("ioctl", "ENOTTY");
        if (!check(GET | SET, 8)) return 0;
        this.#tick(dev);
        if (flags & GET) {
          encodeInto(STRUCTS.vfio_device_feature_mig_state, { device_state: dev.meta.state, data_fd: -1 }, payload);
          return 0;
        }
        const want = decode(STRUCTS.vfio_device_feature_mig_state, payload).device_state;
        let fd = -1;
        try {
          fd = this.#setState(dev, want, key);
        } finally {
          // The core writes the struct back with data_fd -1 when no file came out.
          encodeInto(STRUCTS.vfio_device_feature_mig_state, { device_state: want, data_fd: fd }, payload);
        }
        return 0;
      }
      case FEATURE.MIG_DATA_SIZE:
        if (!migratable) throw err("ioctl", "ENOTTY");
        if (!check(GET, 8)) return 0;
        encodeInto(STRUCTS.vfio_device_feature_mig_data_size, { stop_copy_length: this.#stopCopyLength(dev) }, payload);
        return 0;
      case FEATURE.MIG_PRECOPY_INFOv2:
        // Linux 7.1; drivers before it have no such feature (EINVAL, as below).
        if (!migratable || !dev.meta.precopyV2) throw err("ioctl", "EINVAL");
        if (!check(SET, 0)) return 0;
        dev.precopyV2On = true; // any payload is ignored
        this.#log({ key, precopyInfoV2: true });
        return 0;
      case FEATURE.DMA_LOGGING_START:
        if (!migratable || !dev.info.dmaLogging) throw err("ioctl", "ENOTTY");
        if (!check(SET, 24)) return 0;
        return 0;
      case FEATURE.DMA_LOGGING_STOP:
        if (!migratable || !dev.info.dmaLogging) throw err("ioctl", "ENOTTY");
        if (!check(SET, 0)) return 0;
        return 0;
      case FEATURE.DMA_LOGGING_REPORT:
        if (!migratable || !dev.info.dmaLogging) throw err("ioctl", "ENOTTY");
        if (!check(GET, 32)) return 0;
        return 0;
      default:
        // No device_feature op in these drivers.
        throw err("ioctl", "EINVAL");
    }
  }

  #stopCopyLength(dev: OpenDevice): number {
    const f = dev.saving;
    if (dev.meta.model === "bulk" && f && (dev.meta.state === PRE_COPY || dev.meta.state === PRE_COPY_P2P)) {
      // During pre-copy: what STOP_COPY would still have to send (queued, unread
      // data and the pages dirtied since), as drivers estimate for a VMM's downtime.
      this.#tick(dev);
      return Math.max(0, f.filled - f.pos) + f.dirty.size * (BULK_PAGE + BULK_RECORD_HEADER);
    }
    if (dev.meta.model === "bulk") return BULK_HEADER_SIZE + BULK_RECORD_HEADER + dev.meta.size;
    return MTTY_HEADER_SIZE + sizeOfState(dev);
  }

  /** mtty_set_state(): walk the kernel's steps; the device stays where a step failed. */
  #setState(dev: OpenDevice, target: number, key: string): number {
    const from = dev.meta.state;
    const path: string[] = [];
    let file: MigFile | null = null;
    let prev = from; // where the last arc started (for quirks)
    try {
      while (dev.meta.state !== target) {
        const cur = dev.meta.state;
        if (target < 0 || target > 7) throw err("ioctl", "EINVAL");
        if (isHangingArc(cur, target)) {
          // Unfixed kernels spin for ever here; the fixed kernel answers EINVAL.
          this.forbiddenArcs.push(`${stateName(cur)}->${stateName(target)}`);
          this.#log({ key, forbidden: `${stateName(cur)}->${stateName(target)}` });
        }
        const step = nextStep(dev.meta.flags, cur, target as DeviceState);
        if (!step.ok) throw err("ioctl", "EINVAL");
        // Quirk wrong-arc (quirks.ts): the last arc into RUNNING "succeeds" without happening.
        if (step.next === target && target === RUNNING && hasQuirk(dev.meta, "wrong-arc")) break;
        prev = cur;
        file = this.#step(dev, cur, step.next);
        dev.meta.state = step.next;
        path.push(stateName(step.next));
        if (file && step.next !== target) {
          // mtty WARNs: only the final arc may return a file.
          this.#releaseFile(file);
          file = null;
          throw err("ioctl", "EINVAL");
        }
      }
    } catch (e) {
      this.#persist(dev);
      this.#log({
        key,
        from: stateName(from),
        to: stateName(target),
        path,
        err: e instanceof SysError ? e.code : String(e),
        state: stateName(dev.meta.state),
        dev: dev.store.dir,
      });
      throw e;
    }
    this.#persist(dev);
    // Quirk fd-on-stop (quirks.ts): a data_fd on an arc that opens no session.
    if (
      !file && path.length > 0 && dev.meta.state === STOP && (prev === RUNNING || prev === RUNNING_P2P) &&
      hasQuirk(dev.meta, "fd-on-stop")
    ) {
      const fd = this.#host.open(dev.store.statePath, O.RDONLY | O.CLOEXEC);
      this.#log({ key, from: stateName(from), to: stateName(target), path, data_fd: fd, quirk: "fd-on-stop" });
      return fd;
    }
    this.#log({
      key,
      from: stateName(from),
      to: stateName(target),
      path,
      data_fd: file ? file.fd : -1,
      dev: dev.store.dir,
    });
    return file ? file.fd : -1;
  }

  #releaseFile(file: MigFile): void {
    file.disabled = true;
    this.#files.delete(file.fd);
    this.#host.close(file.fd);
  }

  /** mtty_step_state(): one arc. Returns a new migration file on the arcs that make one. */
  #step(dev: OpenDevice, cur: DeviceState, next: DeviceState): MigFile | null {
    // RESUMING -> STOP loads the state first.
    if (cur === RESUMING && next === STOP) {
      this.#loadState(dev);
      this.#disableFiles(dev);
      return null;
    }
    if (arcClosesSession(cur, next)) {
      this.#disableFiles(dev);
      return null;
    }
    const opens = arcOpensDataFd(cur, next);
    if (opens === "resume") return this.#newResumeFile(dev);
    if (opens === "save" || (cur === PRE_COPY_P2P && next === STOP_COPY) || (cur === PRE_COPY && next === STOP_COPY)) {
      if (dev.saving) {
        if (next === STOP_COPY) this.#fillStopCopy(dev, dev.saving);
        return null;
      }
      const f = this.#newSaveFile(dev, next);
      return f;
    }
    // Everything else the table can produce is a no-op for these models (no DMA).
    return null;
  }

  #newSaveFile(dev: OpenDevice, state: DeviceState): SaveFile {
    const fd = this.#host.open(dev.store.statePath, O.RDONLY | O.CLOEXEC);
    const f: SaveFile = {
      kind: "save",
      fd,
      segments: [],
      segOffset: 0,
      pos: 0,
      filled: 0,
      initialEnd: 0,
      dirty: new Set(),
      disabled: false,
      closed: false,
    };
    const push = (s: Segment) => {
      f.segments.push(s);
      f.filled += "mem" in s ? s.mem.length : s.length;
    };
    if (dev.meta.model === "bulk") {
      push({ mem: bulkHeader(dev.meta.size) });
      if (dev.meta.size > 0 && (state === PRE_COPY || state === PRE_COPY_P2P || state === STOP_COPY)) {
        push({ mem: bulkRecordHeader(0, dev.meta.size) });
        push({ fileOffset: 0, length: dev.meta.size });
      }
    } else {
      push({ mem: mttyHeader(dev.meta.model) });
      if (state === STOP_COPY) push({ fileOffset: 0, length: sizeOfState(dev) });
    }
    f.initialEnd = f.filled;
    dev.saving = f;
    this.#files.set(fd, { dev, file: f });
    return f;
  }

  #fillStopCopy(dev: OpenDevice, f: SaveFile): void {
    if (dev.meta.model === "bulk") this.#queueDirty(dev, f);
    else {
      f.segments.push({ fileOffset: 0, length: sizeOfState(dev) });
      f.filled += sizeOfState(dev);
    }
  }

  #queueDirty(dev: OpenDevice, f: SaveFile): void {
    // In page order; the record headers share one buffer (a fully dirty 1 GiB state is
    // 256k pages: this runs while the device is stopped, so it must be quick).
    const pages = Uint32Array.from(f.dirty).sort();
    const headers = new Uint8Array(pages.length * BULK_RECORD_HEADER);
    const v = new DataView(headers.buffer);
    for (let i = 0; i < pages.length; i++) {
      const off = pages[i] * BULK_PAGE;
      const len = Math.min(BULK_PAGE, dev.meta.size - off);
      const at = i * BULK_RECORD_HEADER;
      v.setBigUint64(at, BigInt(off), true);
      v.setBigUint64(at + 8, BigInt(len), true);
      f.segments.push({ mem: headers.subarray(at, at + BULK_RECORD_HEADER) }, { fileOffset: off, length: len });
      f.filled += BULK_RECORD_HEADER + len;
    }
    f.dirty.clear();
  }

  #saveRead(dev: OpenDevice, f: SaveFile, buf: Uint8Array): number {
    if (f.disabled) throw err("read", "ENODEV");
    this.#tick(dev);
    if (
      f.segments.length === 0 && dev.meta.model === "bulk" &&
      (dev.meta.state === PRE_COPY || dev.meta.state === PRE_COPY_P2P)
    ) {
      if (f.dirty.size > 0) this.#queueDirty(dev, f);
      // uAPI: no data for now in PRE_COPY is ENOMSG (mtty returns 0 instead).
      else throw err("read", "ENOMSG");
    }
    let n = 0;
    while (n < buf.length && f.segments.length > 0) {
      const s = f.segments[f.segHead ?? 0];
      const segLen = "mem" in s ? s.mem.length : s.length;
      const take = Math.min(buf.length - n, segLen - f.segOffset);
      let got: number;
      if ("mem" in s) {
        buf.set(s.mem.subarray(f.segOffset, f.segOffset + take), n);
        got = take;
      } else {
        const at = s.fileOffset + f.segOffset;
        if (dev.stateMap && take <= BULK_PAGE) {
          // A dirty page of a device that has its state mapped: a copy, not a syscall each.
          buf.set(dev.stateMap.map.bytes.subarray(at, at + take), n);
          got = take;
        } else got = this.#host.pread(f.fd, buf.subarray(n, n + take), at);
        if (got === 0) throw err("read", "EIO", "state file shorter than expected");
      }
      n += got;
      f.segOffset += got;
      if (f.segOffset === segLen) {
        // Drop the consumed segment; empty means nothing queued (length 0), as before.
        const head = (f.segHead ?? 0) + 1;
        if (head === f.segments.length) [f.segments, f.segHead] = [[], 0];
        else if (head >= 4096 && head * 2 >= f.segments.length) [f.segments, f.segHead] = [f.segments.slice(head), 0];
        else f.segHead = head;
        f.segOffset = 0;
      }
      // One real pread per file segment; a read goes on through the queued segments
      // (dirty pages) until the buffer is full, as a driver copies all it has queued.
      if ("fileOffset" in s && got < take) break;
    }
    f.pos += n;
    return n;
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
  #reinit(dev: OpenDevice, f: SaveFile): void {
    f.reinitDone = true;
    this.#queueDirty(dev, f);
    const len = Math.max(1, Math.ceil(dev.meta.size / 2));
    f.segments.push({ mem: bulkRecordHeader(0, len) }, { fileOffset: 0, length: len });
    f.filled += BULK_RECORD_HEADER + len;
    if (dev.precopyV2On) {
      f.initialEnd = f.filled;
      f.reinitFlag = true;
    }
    this.#log({ key: "reinit", at: f.pos, bytes: BULK_RECORD_HEADER + len, reported: !!dev.precopyV2On });
  }

  #dataIoctl(dev: OpenDevice, f: MigFile, request: number, arg: IoctlArg): number {
    if (request !== IOCTL.MIG_GET_PRECOPY_INFO || f.kind !== "save") throw err("ioctl", "ENOTTY");
    if (!(arg instanceof Uint8Array) || arg.length < 24) throw err("ioctl", "EFAULT");
    const info = decode(STRUCTS.vfio_precopy_info, arg);
    if (info.argsz < 24) throw err("ioctl", "EINVAL");
    this.#tick(dev);
    if (dev.meta.state !== PRE_COPY && dev.meta.state !== PRE_COPY_P2P) throw err("ioctl", "EINVAL");
    if (f.disabled) throw err("ioctl", "ENODEV");
    let initial = Math.max(0, f.initialEnd - f.pos);
    // Quirk initial-grows (quirks.ts): initial_bytes grows while it is being read.
    if (initial > 0 && hasQuirk(dev.meta, "initial-grows")) initial += 2 * f.pos;
    let dirty = 0;
    if (dev.meta.model === "bulk") {
      const queuedBeyondInitial = Math.max(0, f.filled - Math.max(f.pos, f.initialEnd));
      dirty = queuedBeyondInitial + f.dirty.size * (BULK_PAGE + BULK_RECORD_HEADER);
    }
    // Before the precopy-info v2 opt-in, flags stay as given (pre-7.1 drivers copy back
    // only up to dirty_bytes); after it they are zeroed on entry and REINIT reported once.
    let flags = info.flags;
    if (dev.precopyV2On) {
      flags = f.reinitFlag ? PRECOPY_INFO_REINIT : 0;
      f.reinitFlag = false;
    }
    encodeInto(STRUCTS.vfio_precopy_info, {
      argsz: info.argsz,
      flags,
      initial_bytes: initial,
      dirty_bytes: dirty,
    }, arg);
    if (dev.meta.reinitAfter !== undefined && !f.reinitDone && f.pos >= dev.meta.reinitAfter) this.#reinit(dev, f);
    return 0;
  }

  #newResumeFile(dev: OpenDevice): ResumeFile {
    // The incoming state goes into the spare file (the state before the last load),
    // overwriting its pages in place, like device memory that is reused, not allocated.
    const fd = this.#host.open(dev.store.incomingPath, O.WRONLY | O.CREAT | O.CLOEXEC, 0o644);
    this.#host.ftruncate(fd, dev.meta.model === "bulk" ? dev.meta.size : sizeOfState(dev));
    const f: ResumeFile = {
      kind: "resume",
      fd,
      header: new Uint8Array(dev.meta.model === "bulk" ? BULK_HEADER_SIZE : MTTY_HEADER_SIZE),
      pos: 0,
      rec: new Uint8Array(BULK_RECORD_HEADER),
      recFill: 0,
      recLeft: 0,
      recOffset: 0,
      sawFull: dev.meta.size === 0, // an empty state needs no record
      broken: false,
      disabled: false,
      closed: false,
    };
    dev.resuming = f;
    this.#files.set(fd, { dev, file: f });
    return f;
  }

  #resumeWrite(dev: OpenDevice, f: ResumeFile, buf: Uint8Array): number {
    return dev.meta.model === "bulk" ? this.#resumeWriteBulk(dev, f, buf) : this.#resumeWriteMtty(dev, f, buf);
  }

  // mtty_resume_write()
  #resumeWriteMtty(dev: OpenDevice, f: ResumeFile, buf: Uint8Array): number {
    const len = buf.length;
    const total = MTTY_HEADER_SIZE + sizeOfState(dev);
    if (f.pos + len > total) throw err("write", "ENOMEM");
    if (f.disabled) throw err("write", "ENODEV");
    const hdrPart = Math.max(0, Math.min(len, MTTY_HEADER_SIZE - f.pos));
    if (hdrPart > 0) f.header.set(buf.subarray(0, hdrPart), f.pos);
    if (len > hdrPart) this.#host.pwrite(f.fd, buf.subarray(hdrPart), f.pos + hdrPart - MTTY_HEADER_SIZE);
    const before = f.pos;
    f.pos += len;
    if (before < MTTY_HEADER_SIZE && f.pos >= MTTY_HEADER_SIZE) {
      const e = validateMttyHeader(dev.meta.model, f.header);
      if (e) throw new SysError("write", e, "mtty header validation failed");
    }
    return len;
  }

  // The bulk model: header, then records {u64 offset, u64 length, data}.
  #resumeWriteBulk(dev: OpenDevice, f: ResumeFile, buf: Uint8Array): number {
    if (f.disabled) throw err("write", "ENODEV");
    if (f.broken) throw err("write", "EINVAL");
    let i = 0;
    while (i < buf.length) {
      if (f.pos < BULK_HEADER_SIZE) {
        const take = Math.min(buf.length - i, BULK_HEADER_SIZE - f.pos);
        f.header.set(buf.subarray(i, i + take), f.pos);
        f.pos += take;
        i += take;
        if (f.pos === BULK_HEADER_SIZE && validateBulkHeader(dev.meta.size, f.header)) {
          f.broken = true;
          throw err("write", "EINVAL", "bulk header does not match this device");
        }
        continue;
      }
      if (f.recLeft === 0) {
        const take = Math.min(buf.length - i, BULK_RECORD_HEADER - f.recFill);
        f.rec.set(buf.subarray(i, i + take), f.recFill);
        f.recFill += take;
        f.pos += take;
        i += take;
        if (f.recFill === BULK_RECORD_HEADER) {
          const v = new DataView(f.rec.buffer);
          const off = Number(v.getBigUint64(0, true));
          const len = Number(v.getBigUint64(8, true));
          f.recFill = 0;
          if (len === 0 || off + len > dev.meta.size) {
            f.broken = true;
            throw err("write", "EINVAL", "bulk record out of range");
          }
          if (off === 0 && len === dev.meta.size) f.sawFull = true;
          f.recLeft = len;
          f.recOffset = off;
        }
        continue;
      }
      const take = Math.min(buf.length - i, f.recLeft);
      const n = this.#host.pwrite(f.fd, buf.subarray(i, i + take), f.recOffset);
      f.recLeft -= n;
      f.recOffset += n;
      f.pos += n;
      i += n;
    }
    return buf.length;
  }

  // mtty_load_state(): RESUMING -> STOP; EINVAL leaves the device in RESUMING.
  #loadState(dev: OpenDevice): void {
    const f = dev.resuming;
    if (!f) throw err("ioctl", "EINVAL");
    if (dev.meta.model === "bulk") {
      if (f.broken || f.pos < BULK_HEADER_SIZE || f.recLeft > 0 || f.recFill > 0 || !f.sawFull) {
        throw err("ioctl", "EINVAL");
      }
    } else if (f.pos < MTTY_HEADER_SIZE + sizeOfState(dev)) {
      throw err("ioctl", "EINVAL");
    }
    // Swap rather than rename, so the old state's pages become the next spare.
    this.#dropStateMap(dev); // it maps the file that becomes the spare
    try {
      this.#host.exchange(dev.store.incomingPath, dev.store.statePath);
    } catch {
      this.#host.rename(dev.store.incomingPath, dev.store.statePath); // no RENAME_EXCHANGE here
    }
  }
}

/** The v2 state a v1 device_state corresponds to (for the running-state model and `sim show`). */
function v1Mirror(s: number): DeviceState {
  switch (s & 7) {
    case 0:
      return STOP;
    case 1:
      return RUNNING;
    case 2:
      return STOP_COPY;
    case 3:
      return PRE_COPY;
    case 4:
      return RESUMING;
    default:
      return DeviceState.ERROR;
  }
}
