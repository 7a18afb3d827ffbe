// What the simulator's tests share: a device in a temp folder opened through its own
// SimKernel, and the raw VFIO calls on it (SET/GET of the migration state, PRECOPY_INFO,
// reset, config space), as a user of the uAPI makes them.

import { assertEquals, assertThrows } from "./assert.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { O } from "../../ffi/sys.ts";
import { decode, encodeInto, FEATURE, FEATURE_FLAGS, IOCTL, STRUCTS } from "../../ffi/vfio_uapi.ts";
import type { DeviceState } from "../../src/vfio/state_machine.ts";
import { SimKernel, type SimKernelOptions } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";
import { concat } from "./bytes.ts";

export const host = libc();
const { GET, SET } = FEATURE_FLAGS;
export const CONFIG = 7 * 2 ** 40;

/** A simulated device open through a SimKernel, with the calls tests make on it. */
export class Sim {
  readonly fds = new Set<number>();

  constructor(readonly k: SimKernel, public fd: number, readonly dir: string) {}

  static open(dir: string, opts?: SimKernelOptions): Sim {
    const k = new SimKernel(host, opts);
    return new Sim(k, k.open(`sim:${dir}`, O.RDWR | O.CLOEXEC), dir);
  }

  state(): DeviceState {
    const b = featureBuf(GET | FEATURE.MIG_DEVICE_STATE, 8);
    this.k.ioctl(this.fd, IOCTL.DEVICE_FEATURE, b);
    return decode(STRUCTS.vfio_device_feature_mig_state, b, 8).device_state;
  }

  /** SET MIG_DEVICE_STATE; the data_fd (registered for cleanup) or -1. */
  set(target: DeviceState): number {
    const b = featureBuf(SET | FEATURE.MIG_DEVICE_STATE, 8);
    encodeInto(STRUCTS.vfio_device_feature_mig_state, { device_state: target, data_fd: -1 }, b, 8);
    this.k.ioctl(this.fd, IOCTL.DEVICE_FEATURE, b);
    const fd = decode(STRUCTS.vfio_device_feature_mig_state, b, 8).data_fd;
    if (fd >= 0) this.fds.add(fd);
    return fd;
  }

  dataSize(): number {
    const b = featureBuf(GET | FEATURE.MIG_DATA_SIZE, 8);
    this.k.ioctl(this.fd, IOCTL.DEVICE_FEATURE, b);
    return decode(STRUCTS.vfio_device_feature_mig_data_size, b, 8).stop_copy_length;
  }

  reset(): void {
    assertEquals(this.k.ioctl(this.fd, IOCTL.DEVICE_RESET, null), 0);
  }

  precopyInfo(fd: number): { initial: number; dirty: number; flags: number } {
    const b = new Uint8Array(24);
    encodeInto(STRUCTS.vfio_precopy_info, { argsz: 24, flags: 0 }, b);
    this.k.ioctl(fd, IOCTL.MIG_GET_PRECOPY_INFO, b);
    const d = decode(STRUCTS.vfio_precopy_info, b);
    return { initial: d.initial_bytes, dirty: d.dirty_bytes, flags: d.flags };
  }

  read(fd: number, n: number): Uint8Array {
    const b = new Uint8Array(n);
    const got = this.k.read(fd, b);
    // A short read keeps only its bytes: a subarray would hold the whole buffer, and a
    // drain of a device that dirties pages while it is read (a page a read, 1 MiB
    // buffers) grew to 15 GB under load and was killed by the OOM killer.
    return got === n ? b : b.slice(0, got);
  }

  /** Reads in `size` pieces until read() returns 0 or ENOMSG. */
  drain(fd: number, size = 1 << 20): Uint8Array {
    const parts: Uint8Array[] = [];
    for (;;) {
      let got: Uint8Array;
      try {
        got = this.read(fd, size);
      } catch (e) {
        if (e instanceof SysError && e.errno === Errno.ENOMSG) break;
        throw e;
      }
      if (got.length === 0) break;
      parts.push(got);
    }
    return concat(...parts);
  }

  /** Writes all of `data` (in pieces of at most `size`). */
  writeAll(fd: number, data: Uint8Array, size = 1 << 20): void {
    for (let off = 0; off < data.length;) off += this.k.write(fd, data.subarray(off, off + size));
  }

  config(at: number, len: number): number {
    const b = new Uint8Array(len);
    this.k.pread(this.fd, b, CONFIG + at);
    return len === 1 ? b[0] : b[0] | (b[1] << 8);
  }

  setConfig(at: number, bytes: number[]): void {
    this.k.pwrite(this.fd, new Uint8Array(bytes), CONFIG + at);
  }

  /**
   * VFIO_DEVICE_SET_IRQS (struct vfio_irq_set: argsz, flags, index, start, count, then
   * `fds` as s32): with `fds`, DATA_EVENTFD | ACTION_TRIGGER (-1: a vector armed without
   * an eventfd, as tests/kernel/guest/holder.ts arms a real function); without, DATA_NONE
   * | ACTION_TRIGGER with count 0 (disarm). `flags` overrides the flags.
   */
  setIrqs(index: number, fds?: number[], opts: { flags?: number; start?: number; count?: number } = {}): number {
    const n = fds?.length ?? 0;
    const b = new Uint8Array(20 + 4 * n);
    const v = new DataView(b.buffer);
    const flags = opts.flags ?? (fds ? (1 << 2) | (1 << 5) : (1 << 0) | (1 << 5));
    [b.length, flags, index, opts.start ?? 0, opts.count ?? n].forEach((x, i) => v.setUint32(4 * i, x, true));
    fds?.forEach((fd, i) => v.setInt32(20 + 4 * i, fd, true));
    return this.k.ioctl(this.fd, IOCTL.DEVICE_SET_IRQS, b);
  }

  closeFd(fd: number): void {
    this.fds.delete(fd);
    this.k.close(fd);
  }

  /** Closes the data_fds and the device. */
  close(): void {
    for (const f of this.fds) {
      try {
        this.k.close(f);
      } catch { /* closed by the test */ }
    }
    this.fds.clear();
    this.k.close(this.fd);
  }
}

/** Creates a device in a temp folder and runs fn with its path; removes it after. */
export async function withStore<T>(
  opts: Parameters<SimStore["create"]>[0],
  fn: (dir: string) => Promise<T> | T,
): Promise<T> {
  const tmp = await Deno.makeTempDir({ prefix: "vfio-mig-simt-" });
  try {
    new SimStore(host, `${tmp}/dev`).create(opts);
    return await fn(`${tmp}/dev`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

/** withStore, with the device open (closed after fn). */
export function withSim<T>(
  opts: Parameters<SimStore["create"]>[0],
  fn: (s: Sim) => Promise<T> | T,
  kernel?: SimKernelOptions,
): Promise<T> {
  return withStore(opts, async (dir) => {
    const s = Sim.open(dir, kernel);
    try {
      return await fn(s);
    } finally {
      s.close();
    }
  });
}

export function featureBuf(flags: number, payload: number): Uint8Array {
  const b = new Uint8Array(8 + payload);
  encodeInto(STRUCTS.vfio_device_feature, { argsz: 8 + payload, flags }, b);
  return b;
}

export function expectErrno(fn: () => unknown, name: keyof typeof Errno, what: string): SysError {
  const e = assertThrows(fn, SysError, undefined, what);
  assertEquals(e.code, name, `${what}: errno`);
  return e;
}

export function stateFile(dir: string): Uint8Array {
  return Deno.readFileSync(`${dir}/state.bin`);
}

export function metaOf(dir: string) {
  return new SimStore(host, dir).readMeta();
}

export const SLEEP = new Int32Array(new SharedArrayBuffer(4));
export function sleepSync(ms: number): void {
  Atomics.wait(SLEEP, 0, 0, ms);
}
