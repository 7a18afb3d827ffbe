// The simulated VFIO kernel: the VFIO core. It implements the same Sys interface as the
// libc binding: opening "sim:PATH" gives a device fd, and the VFIO ioctls on it, the
// data_fd reads/writes, PRECOPY_INFO and poll answer as the kernel would, errno values
// included. The core owns what drivers/vfio/vfio_main.c owns: the fd table, ioctl
// dispatch, argsz and feature checks (vfio_check_feature), the walk over the state
// machine's table (vfio_mig_get_next_state), and the device's open and close, with the
// family's reset at the first open and the last close (vfio-pci-core); device.ts holds an
// open device and the PCI emulation (region info, config space, MSI-X). A driver
// (drivers/*.ts, one file per model) fills in the migration ops and its migration files;
// behaviours (quirks.ts) wrap them as unusual or buggy drivers did. Every other call goes
// to the real libc, and data_fds are real file descriptors, so save/load move bytes
// through real read/write syscalls.
//
// Fault injection (faults.ts): "KEY@N=ERRNO" makes the Nth call whose key starts with
// KEY fail. A call log (JSON lines) records every call for tests.
//
// A device is shared between processes through its store folder; a process that holds
// it has the lock file flock'ed. Another process may borrow the holder's fd
// (pidfd_getfd) or inherit it: adopt() registers such an fd without locking or
// resetting, and device.json is re-read whenever another process changed it.

import { Errno, errnoName, SysError } from "../../ffi/errno.ts";
import { F, type FileStat, type IoctlArg, LOCK, type Mapping, O, POLL, type PollFd, type Sys } from "../../ffi/sys.ts";
import { decode, encodeInto, FEATURE, FEATURE_FLAGS, IOCTL, ioctlName, STRUCTS } from "../../ffi/vfio_uapi.ts";
import { DeviceState, isHangingArc, nextStep, stateName } from "../vfio/state_machine.ts";
import { type MigrationFile, type PrecopyNumbers, type ReadIo, sleepMs, sysErr } from "./driver.ts";
import { CoreDevice, type CoreOps } from "./device.ts";
import { driverFor } from "./drivers/index.ts";
import { type Fault, IOCTL_NAMES, ioctlKey, parseFaults } from "./faults.ts";
import { modelInfo } from "./models.ts";
import { type SimDeviceMeta, SimStore } from "./store.ts";
import { V1_REGION_INDEX, type V1Backend, V1Device } from "./v1_device.ts";
import { getIrqInfo, setIrqs } from "./vfio_pci.ts";
// Loading the simulated kernel registers it as the device layer's "sim" backend.
import "./ops.ts";

export { type Fault, parseFaults } from "./faults.ts";

const { STOP, RUNNING, STOP_COPY, PRE_COPY } = DeviceState;

const err = sysErr;

const V1_IO: ReadIo = { v1: true, nonblock: () => false };

export interface SimKernelOptions {
  faults?: Fault[];
  /** Path of a JSON-lines call log, appended to. */
  logPath?: string;
}

export class SimKernel implements Sys {
  readonly #host: Sys;
  readonly #devices = new Map<number, CoreDevice>();
  readonly #files = new Map<number, { dev: CoreDevice; file: MigrationFile }>();
  /** Host fds opened under /proc or /sys. */
  readonly #sysinfo = new Set<number>();
  readonly faults: Fault[];
  #logFd = -1;
  #seq = 0;
  /** Arcs requested that the kernel must never be asked for (tests assert none). */
  readonly forbiddenArcs: string[] = [];
  readonly #ops: CoreOps = {
    log: (entry) => this.#log(entry),
    reset: (dev, to, why) => this.#reset(dev, to, why),
  };

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

  /**
   * The store folder of the simulated device an fd of this process refers to, or null
   * when it is not one: a simulated device fd is an open file description of the
   * device's lock file, so /proc/self/fd/N names `<folder>/lock` (a borrowed or
   * inherited fd too: it is the holder's open file).
   */
  static simDeviceOf(host: Sys, fd: number): string | null {
    let target: string;
    try {
      target = host.readlink(`/proc/self/fd/${fd}`);
    } catch {
      return null;
    }
    if (!target.endsWith("/lock")) return null;
    const dir = target.slice(0, -"/lock".length);
    return new SimStore(host, dir).exists() ? dir : null;
  }

  /**
   * Registers `fd` (obtained with pidfd_getfd from a process that holds a simulated
   * device, or inherited from a parent) as an open device of this kernel. It takes no
   * lock (the holder's lock is the same open file's) and does no first-open reset;
   * closing it resets a pci-family device only if nobody else holds the device by then
   * (the last close). The device's migration state and data are the store's (what the
   * holder persisted); a session the holder has open (its data_fd) stays the holder's.
   * Throws SysError EBADF when `fd` is not a simulated device, EBUSY when it is already
   * registered here.
   */
  adopt(fd: number): void {
    const dir = SimKernel.simDeviceOf(this.#host, fd);
    if (dir === null) throw err("adopt", "EBADF", `fd ${fd} is not a simulated VFIO device`);
    if (this.#devices.has(fd)) throw err("adopt", "EBUSY", `fd ${fd} is already open here`);
    const store = new SimStore(this.#host, dir);
    try {
      this.#attach(fd, store, true);
    } catch (e) {
      store.release();
      throw e;
    }
    this.#log({ key: "adopt", fd, dev: dir });
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

  /** Behaviours' call hooks, before a call on a device or its data_fd (a wedged device blocks). */
  #enter(dev: CoreDevice | undefined, key: string): void {
    if (dev) { for (const { behaviour } of dev.behaviours) behaviour.call?.(dev, key); }
  }

  #classOf(fd: number): string {
    if (this.#devices.has(fd)) return "device";
    if (this.#files.has(fd)) return "data_fd";
    if (this.#sysinfo.has(fd)) return "sysinfo";
    return "host";
  }

  // -------------------------------------------------------------------------
  // Sys: the intercepted calls

  open(path: string, flags: number, mode?: number): number {
    // Files under /proc and /sys are the kernel's own information (the origin header,
    // holders, modules): their faults have a class of their own, "sysinfo".
    const sysinfo = /^\/(proc|sys)\//.test(path);
    const key = path.startsWith("sim:") ? "open:device" : sysinfo ? "open:sysinfo" : "open:host";
    this.#fault(key, "open");
    if (!path.startsWith("sim:")) {
      const fd = this.#host.open(path, flags, mode);
      if (sysinfo) this.#sysinfo.add(fd);
      return fd;
    }
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
      dev.driver.close();
      dev.driver.endSessions();
      this.#devices.delete(fd);
      this.#log({ key: "close:device", fd, state: stateName(dev.meta.state) });
      this.#host.close(fd); // releases the flock (unless another fd shares the open file)
      if (dev.family === "pci") this.#lastClose(dev);
      dev.store.release();
      return;
    }
    const f = this.#files.get(fd);
    if (f) {
      for (const { behaviour } of f.dev.behaviours) behaviour.fileClosed?.(f.dev, f.file);
      // The driver holds its own reference while the session lasts (get_file in
      // mtty_step_state); only a file nobody else holds is released.
      f.file.closed = true;
      if (!f.dev.driver.holds(f.file)) f.file.disabled = true;
      this.#files.delete(fd);
      this.#log({ key: "close:data_fd", fd });
    }
    this.#sysinfo.delete(fd);
    this.#host.close(fd);
  }

  ioctl(fd: number, request: number, arg: IoctlArg): number {
    const dev = this.#devices.get(fd);
    const file = this.#files.get(fd);
    const key = dev || file ? ioctlKey(request, arg) : `ioctl:host:${IOCTL_NAMES.get(request) ?? request}`;
    this.#fault(key, "ioctl");
    this.#enter(dev ?? file?.dev, key);
    try {
      if (dev) {
        this.#resetElsewhere(dev);
        return this.#deviceIoctl(dev, request, arg, key);
      }
      if (file) {
        this.#resetElsewhere(file.dev);
        return this.#dataIoctl(file.dev, file.file, request, arg);
      }
    } catch (e) {
      // Name the ioctl, as the libc binding does (never a bare "ioctl: EINVAL").
      if (e instanceof SysError && e.message.startsWith("ioctl:")) {
        throw new SysError("ioctl", e.errno, ioctlName(request));
      }
      throw e;
    }
    return this.#host.ioctl(fd, request, arg);
  }

  read(fd: number, buf: Uint8Array): number {
    const f = this.#files.get(fd);
    const short = this.#fault(`read:${this.#classOf(fd)}`, "read");
    this.#enter(f?.dev, "read");
    const b = short ? buf.subarray(0, Math.max(1, buf.length >> 1)) : buf;
    if (!f) {
      if (this.#devices.has(fd)) throw err("read", "EINVAL");
      return this.#host.read(fd, b);
    }
    if (f.file.kind !== "save") throw err("read", "EBADF");
    this.#resetElsewhere(f.dev);
    const io: ReadIo = { v1: false, nonblock: () => (this.#host.fcntl(fd, F.GETFL) & O.NONBLOCK) !== 0 };
    const n = this.#readFile(f.dev, f.file, b, io);
    this.#log({ key: "read:data_fd", fd, len: b.length, ret: n });
    return n;
  }

  write(fd: number, buf: Uint8Array): number {
    const f = this.#files.get(fd);
    const short = this.#fault(`write:${this.#classOf(fd)}`, "write");
    this.#enter(f?.dev, "write");
    const b = short ? buf.subarray(0, Math.max(1, buf.length >> 1)) : buf;
    if (!f) {
      if (this.#devices.has(fd)) throw err("write", "EINVAL");
      return this.#host.write(fd, b);
    }
    if (f.file.kind !== "resume") throw err("write", "EBADF");
    this.#resetElsewhere(f.dev);
    try {
      const n = this.#writeFile(f.dev, f.file, b);
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
    this.#enter(dev ?? this.#files.get(fd)?.dev, "pread");
    if (dev) {
      this.#resetElsewhere(dev);
      return dev.regionAccess(buf, offset, false, () => this.#sync(dev));
    }
    if (this.#files.has(fd)) throw err("pread", "ESPIPE");
    return this.#host.pread(fd, buf, offset);
  }

  pwrite(fd: number, buf: Uint8Array, offset: number): number {
    this.#fault(`pwrite:${this.#classOf(fd)}`, "pwrite");
    const dev = this.#devices.get(fd);
    this.#enter(dev ?? this.#files.get(fd)?.dev, "pwrite");
    if (dev) {
      this.#resetElsewhere(dev);
      return dev.regionAccess(buf, offset, true, () => this.#sync(dev));
    }
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

  /**
   * poll(2) over simulated data_fds and host fds alike. A save data_fd is readable
   * (POLLIN) when a read would not block: always, unless a behaviour makes its data come
   * later (blocking-read, --yield-rate); a resume data_fd is always writable (POLLOUT).
   * Host fds are polled by the host, in slices while a simulated fd becomes ready; with
   * only simulated fds the thread sleeps until one is ready or the timeout passes.
   */
  poll(fds: readonly PollFd[], timeoutMs: number): number[] {
    const sim = fds.map((p) => this.#files.get(p.fd));
    if (!sim.some((f) => f)) return this.#host.poll(fds, timeoutMs);
    const deadline = timeoutMs < 0 ? Infinity : performance.now() + timeoutMs;
    const hostAt = fds.map((_, i) => i).filter((i) => !sim[i]);
    for (;;) {
      const out = new Array<number>(fds.length).fill(0);
      let ready = false;
      let wait = Infinity;
      fds.forEach((p, i) => {
        const f = sim[i];
        if (!f) return;
        const r = this.#pollFile(f.dev, f.file, p.events);
        out[i] = r.revents;
        if (r.revents) ready = true;
        else wait = Math.min(wait, r.readyIn);
      });
      const left = deadline - performance.now();
      const slice = ready ? 0 : Math.max(0, Math.min(left, wait));
      if (hostAt.length) {
        const r = this.#host.poll(hostAt.map((i) => fds[i]), slice === Infinity ? -1 : Math.ceil(slice));
        r.forEach((v, k) => (out[hostAt[k]] = v));
        if (r.some((v) => v)) ready = true;
      } else if (!ready && slice > 0) sleepMs(slice);
      if (ready || performance.now() >= deadline) return out;
    }
  }

  #pollFile(dev: CoreDevice, file: MigrationFile, events: number): { revents: number; readyIn: number } {
    this.#resetElsewhere(dev);
    if (file.kind === "resume") return { revents: events & POLL.OUT, readyIn: 0 };
    if (file.disabled) return { revents: (events & POLL.IN) | POLL.ERR, readyIn: 0 };
    let readyIn = 0;
    for (const { behaviour } of dev.behaviours) {
      if (behaviour.readyIn) readyIn = Math.max(readyIn, behaviour.readyIn(dev, file));
    }
    return readyIn > 0 ? { revents: 0, readyIn } : { revents: events & POLL.IN, readyIn: 0 };
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
  // Devices: open, close, the family's resets

  #openDevice(dir: string): number {
    const store = new SimStore(this.#host, dir);
    if (!store.exists()) throw err("open", "ENOENT", `sim:${dir}`);
    store.readMeta(); // a clear error when it is not a device
    const fd = this.#host.open(store.lockPath, O.RDWR | O.CREAT | O.CLOEXEC, 0o644);
    try {
      this.#host.flock(fd, LOCK.EX | LOCK.NB);
    } catch (e) {
      this.#host.close(fd);
      if (e instanceof SysError && e.errno === Errno.EAGAIN) throw err("open", "EBUSY", `sim:${dir}`);
      throw e;
    }
    try {
      this.#attach(fd, store, false);
    } catch (e) {
      store.release();
      this.#host.close(fd);
      throw e;
    }
    return fd;
  }

  /** Makes the device of an fd open here: the first open (it took the lock), or an adopted fd. */
  #attach(fd: number, store: SimStore, borrowed: boolean): CoreDevice {
    const { meta, text } = store.readMetaText();
    const dev = new CoreDevice(this.#ops, this.#host, fd, store, meta, modelInfo(meta.model), borrowed, text);
    dev.seenResets = store.resetCount() ?? 0;
    dev.loadConfig();
    dev.driver = driverFor(dev);
    if (!borrowed) {
      // vfio_pci_core_enable -> pci_try_reset_function: a PCI function starts from power-on.
      if (dev.family === "pci") this.#powerOn(dev, "first open");
      for (const { behaviour } of dev.behaviours) behaviour.open?.(dev, true);
    }
    if (meta.v1) {
      const v1meta = meta.v1;
      try {
        dev.v1 = new V1Device(this.#host, v1meta, this.#v1Backend(dev), {
          fault: (key, op) => this.#fault(key, op),
          persist: () => {
            dev.meta.state = v1Mirror(v1meta.state);
            dev.persist();
          },
          log: (entry) => this.#log(entry),
        });
      } catch (e) {
        dev.driver.close();
        throw e;
      }
    }
    this.#devices.set(fd, dev);
    return dev;
  }

  /**
   * After a pci-family device's fd was closed: if nobody holds the device any more (a
   * fresh LOCK_EX|LOCK_NB succeeds), this was the last close, and vfio_pci_core_disable
   * resets the function. A process killed with SIGKILL never gets here: its device's next
   * first open resets it instead.
   */
  #lastClose(dev: CoreDevice): void {
    let lfd: number;
    try {
      lfd = this.#host.open(dev.store.lockPath, O.RDWR | O.CLOEXEC);
    } catch {
      return;
    }
    try {
      try {
        this.#host.flock(lfd, LOCK.EX | LOCK.NB);
      } catch {
        return; // still held (a borrower or the holder): not the last close
      }
      this.#sync(dev);
      this.#powerOn(dev, "last close");
    } finally {
      this.#host.close(lfd);
    }
  }

  /** A PCI function's power-on state: RUNNING, the data's initial content, config cleared. */
  #powerOn(dev: CoreDevice, why: string): void {
    dev.driver.endSessions();
    dev.seenResets = dev.store.noteReset();
    if (dev.meta.v1) dev.meta.v1.state = 1; // RUNNING
    if (!dev.meta.pristine) dev.driver.powerOn();
    dev.meta.pristine = true;
    dev.meta.state = RUNNING;
    dev.meta.runningSince = Date.now();
    // vfio_pci_core_disable disarms every interrupt; vfio_pci_core_enable starts with none.
    delete dev.meta.irqType;
    delete dev.meta.reqTrigger;
    dev.store.remove(dev.store.configPath);
    dev.store.remove(dev.store.msixPath);
    dev.loadConfig();
    dev.persist();
    this.#log({ key: "power-on", why, dev: dev.store.dir });
  }

  /**
   * A reset: VFIO_DEVICE_RESET (`why` null; mtty: a deferred reset that forces RUNNING and
   * disables the migration files), or one the device did itself (a quirk; `to` the state
   * it leaves). Sessions end: their files answer ENODEV. A pci-family function (FLR) loses
   * its data; an mdev keeps it; a v1 device's device_state reads RUNNING. Behaviours'
   * reset hooks (reset-clears-config) follow VFIO_DEVICE_RESET.
   */
  #reset(d: CoreDevice, to: DeviceState, why: string | null): void {
    d.v1?.reset();
    d.driver.endSessions();
    d.seenResets = d.store.noteReset(); // other opens (processes) end their sessions too
    if (d.family === "pci") {
      if (!d.meta.pristine) d.driver.powerOn();
      d.meta.pristine = true;
    }
    if (why === null || !d.v1) d.meta.state = to;
    d.meta.runningSince = Date.now();
    if (why === null) { for (const { behaviour } of d.behaviours) behaviour.reset?.(d); }
    d.persist();
    if (why === null) this.#log({ key: "ioctl:DEVICE_RESET", state: "RUNNING", dev: d.store.dir });
    else this.#log({ key: "reset", by: "device", why, state: stateName(d.meta.state), dev: d.store.dir });
  }

  /**
   * Another open of the device (another process: a borrower, an inheritor, the holder)
   * reset it since this open last looked: the driver's reset disabled every migration
   * file of the device, whoever holds it (mtty_reset -> mtty_disable_files; mlx5vf,
   * hisi_acc and pds the same from their reset_done), so this open's sessions end here:
   * their data_fds answer ENODEV, an mtty file's position is back to 0, a v1 device's
   * session is over. One stat per call (the store's reset count).
   */
  #resetElsewhere(dev: CoreDevice): void {
    const n = dev.store.resetCount();
    if (n === null || n === dev.seenResets) return;
    dev.seenResets = n;
    this.#sync(dev);
    dev.v1?.dropSessions(); // releases the v1 front end's files first
    dev.driver.endSessions();
    this.#log({ key: "reset-seen", by: "another open", dev: dev.store.dir, state: stateName(dev.meta.state) });
  }

  /** Adopts device.json when another process rewrote it since this kernel last saw it. */
  #sync(dev: CoreDevice): void {
    let now: { meta: SimDeviceMeta; text: string };
    try {
      now = dev.store.readMetaText();
    } catch {
      return;
    }
    if (now.text === dev.metaText) return;
    const meta = dev.meta as unknown as Record<string, unknown>;
    const v1 = dev.meta.v1;
    for (const k of Object.keys(meta)) if (!(k in now.meta)) delete meta[k];
    Object.assign(meta, now.meta);
    if (v1 && now.meta.v1) dev.meta.v1 = Object.assign(v1, now.meta.v1); // the V1Device holds it
    dev.metaText = now.text;
  }

  /** The model's save and resume streams, for the v1 register block. */
  #v1Backend(dev: CoreDevice): V1Backend {
    const release = (file: MigrationFile | undefined) => {
      if (!file) return;
      this.#releaseFile(file);
      dev.driver.forget(file);
    };
    const endSave = () => release(dev.driver.saving);
    const endResume = () => release(dev.driver.resuming);
    return {
      startSave: (precopy) => {
        endSave();
        const state = precopy ? PRE_COPY : STOP_COPY;
        const f = dev.driver.newSaveFile(state);
        this.#files.set(f.fd, { dev, file: f });
        this.#phase(dev, f, state);
      },
      toStopCopy: () => {
        const f = dev.driver.saving;
        if (!f) return;
        dev.driver.fillStopCopy();
        this.#phase(dev, f, STOP_COPY);
      },
      pending: () => {
        const f = dev.driver.saving;
        if (!f) return 0;
        dev.driver.tick();
        return f.pending();
      },
      read: (buf) => {
        const f = dev.driver.saving;
        if (!f) return 0;
        try {
          return this.#readFile(dev, f, buf, V1_IO);
        } catch (e) {
          // Nothing now (ENOMSG), or the session ended under it (ENODEV): no data.
          if (e instanceof SysError && (e.errno === Errno.ENOMSG || e.errno === Errno.ENODEV)) return 0;
          throw e;
        }
      },
      endSave,
      startResume: () => {
        endResume();
        const f = dev.driver.newResumeFile();
        this.#files.set(f.fd, { dev, file: f });
      },
      write: (buf) => {
        let off = 0;
        while (off < buf.length) off += this.#writeFile(dev, dev.driver.resuming!, buf.subarray(off));
      },
      load: () => dev.driver.loadState(),
      endResume,
    };
  }

  // -------------------------------------------------------------------------
  // Migration files: the driver's file ops, wrapped by the device's behaviours

  #readFile(dev: CoreDevice, file: MigrationFile, buf: Uint8Array, io: ReadIo): number {
    const hooks = dev.readHooks;
    if (hooks.length === 0) return file.read(buf, io);
    const call = (i: number, b: Uint8Array): number =>
      i === hooks.length ? file.read(b, io) : hooks[i].read!(dev, file, b, io, (bb) => call(i + 1, bb));
    return call(0, buf);
  }

  #writeFile(dev: CoreDevice, file: MigrationFile, buf: Uint8Array): number {
    const hooks = dev.writeHooks;
    if (hooks.length === 0) return file.write(buf);
    const call = (i: number, b: Uint8Array): number =>
      i === hooks.length ? file.write(b) : hooks[i].write!(dev, file, b, (bb) => call(i + 1, bb));
    return call(0, buf);
  }

  #precopyNumbers(dev: CoreDevice, file: MigrationFile): PrecopyNumbers {
    const hooks = dev.precopyHooks;
    const call = (i: number): PrecopyNumbers =>
      i === hooks.length ? file.precopyInfo() : hooks[i].precopyInfo!(dev, file, () => call(i + 1));
    return call(0);
  }

  /** A save file started a phase (behaviours that produce data late start their clock). */
  #phase(dev: CoreDevice, file: MigrationFile, state: DeviceState): void {
    for (const { behaviour } of dev.behaviours) behaviour.phase?.(dev, file, state);
  }

  #releaseFile(file: MigrationFile): void {
    file.disabled = true;
    this.#files.delete(file.fd);
    this.#host.close(file.fd);
  }

  // VFIO_MIG_GET_PRECOPY_INFO, the migration file's unlocked_ioctl.
  #dataIoctl(dev: CoreDevice, f: MigrationFile, request: number, arg: IoctlArg): number {
    if (request !== IOCTL.MIG_GET_PRECOPY_INFO || f.kind !== "save") throw err("ioctl", "ENOTTY");
    if (!(arg instanceof Uint8Array) || arg.length < 24) throw err("ioctl", "EFAULT");
    const info = decode(STRUCTS.vfio_precopy_info, arg);
    if (info.argsz < 24) throw err("ioctl", "EINVAL");
    const n = this.#precopyNumbers(dev, f);
    // Before the precopy-info v2 opt-in, flags stay as given (pre-7.1 drivers copy back
    // only up to dirty_bytes); after it they are zeroed on entry and REINIT reported once.
    const flags = dev.precopyV2On ? f.takePrecopyFlags() : info.flags;
    encodeInto(STRUCTS.vfio_precopy_info, {
      argsz: info.argsz,
      flags,
      initial_bytes: n.initial,
      dirty_bytes: n.queued + n.unqueued,
    }, arg);
    f.afterPrecopyInfo();
    return 0;
  }

  // -------------------------------------------------------------------------
  // Device ioctls and regions

  #deviceIoctl(dev: CoreDevice, request: number, arg: IoctlArg, key: string): number {
    switch (request) {
      case IOCTL.DEVICE_GET_INFO:
        return dev.getInfo(arg);
      case IOCTL.DEVICE_GET_REGION_INFO:
        if (arg instanceof Uint8Array && arg.length >= 12) {
          const index = new DataView(arg.buffer, arg.byteOffset).getUint32(8, true);
          for (const { behaviour } of dev.behaviours) behaviour.regionInfo?.(dev, index);
        }
        return dev.getRegionInfo(arg);
      case IOCTL.DEVICE_RESET:
        this.#sync(dev);
        this.#reset(dev, RUNNING, null);
        return 0;
      // vfio-pci-core's interrupts (vfio_pci.ts); the mdev family's drivers have none here.
      case IOCTL.DEVICE_GET_IRQ_INFO:
        if (dev.family !== "pci") throw err("ioctl", "ENOTTY");
        return getIrqInfo(dev.info, arg);
      case IOCTL.DEVICE_SET_IRQS:
        if (dev.family !== "pci") throw err("ioctl", "ENOTTY");
        this.#sync(dev);
        if (setIrqs(this.#host, dev.info, dev.meta, arg)) dev.persist();
        this.#log({ key, irqType: dev.meta.irqType ?? null });
        return 0;
      case IOCTL.DEVICE_FEATURE:
        this.#sync(dev);
        return this.#feature(dev, arg, key);
      default:
        throw err("ioctl", "ENOTTY");
    }
  }

  // VFIO_DEVICE_FEATURE as drivers/vfio/vfio_main.c decodes it.
  #feature(dev: CoreDevice, arg: IoctlArg, key: string): number {
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
        dev.driver.tick();
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
        encodeInto(STRUCTS.vfio_device_feature_mig_data_size, { stop_copy_length: dev.driver.dataSize() }, payload);
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

  /**
   * migration_set_state: walk the kernel's steps (vfio_mig_get_next_state over the
   * shared table), one driver arc each; the device stays where a step failed.
   */
  #setState(dev: CoreDevice, target: number, key: string): number {
    const from = dev.meta.state;
    const path: string[] = [];
    let file: MigrationFile | null = null;
    let prev = from; // where the last arc started (for behaviours)
    let index = 0;
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
        let skip = false;
        for (const { behaviour } of dev.behaviours) {
          if (behaviour.arc?.(dev, { cur, next: step.next, target, index }) === "skip") skip = true;
        }
        if (skip) break;
        prev = cur;
        file = this.#stepArc(dev, cur, step.next);
        dev.meta.state = step.next;
        path.push(stateName(step.next));
        index++;
        if (file && step.next !== target) {
          // mtty WARNs: only the final arc may return a file.
          this.#releaseFile(file);
          file = null;
          throw err("ioctl", "EINVAL");
        }
      }
    } catch (e) {
      dev.persist();
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
    dev.persist();
    for (const { name, behaviour } of dev.behaviours) {
      const extra = behaviour.afterSet?.(dev, { path, prev, file });
      if (extra === undefined || extra === null) continue;
      this.#log({ key, from: stateName(from), to: stateName(target), path, data_fd: extra, quirk: name });
      return extra;
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

  /** One arc by the driver; a file it makes becomes an fd of this kernel. */
  #stepArc(dev: CoreDevice, cur: DeviceState, next: DeviceState): MigrationFile | null {
    const session = dev.driver.saving;
    const file = dev.driver.step(cur, next);
    if (file) {
      this.#files.set(file.fd, { dev, file });
      if (file.kind === "save") this.#phase(dev, file, next);
    } else if (next === STOP_COPY && session && dev.driver.saving === session) {
      this.#phase(dev, session, STOP_COPY);
    }
    return file;
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
      return DeviceState.RESUMING;
    default:
      return DeviceState.ERROR;
  }
}
