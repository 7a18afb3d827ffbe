// A simulated device lives in a folder, so that two processes (the ends of a pipe,
// or of ssh) can save from one and load into another:
//   device.json  model, migration flags, size, seed, rate, current migration state
//   state.bin    the device's internal state (what migration moves; none for xe, whose
//                state is generated from its seed)
//   lock         flock'ed while a process has the device open (EBUSY otherwise); a
//                process that borrows the device fd shares the holder's lock
//   resets       one byte per reset the device had, by any process: an open that finds
//                more than it saw ends its sessions (their data_fds answer ENODEV)
// All file I/O goes through the libc Sys, so --allow-ffi is the only permission.

import { O, SEEK, type Sys } from "../../ffi/sys.ts";
import { isErrno } from "../../ffi/errno.ts";
import { DeviceState } from "../vfio/state_machine.ts";
import {
  defaultFamily,
  fillBulk,
  initialMttyState,
  MODEL_NAMES,
  modelInfo,
  type ModelName,
  stateSize,
} from "./models.ts";
import { VfioMigError } from "../errors.ts";
import { V1_DEFAULT_DATA_SIZE, type V1Meta, type V1Sparse } from "./v1_device.ts";
import { readSmallFile, writeAll } from "../io.ts";
import { SIM_FILES } from "../backends.ts";

export interface SimDeviceMeta {
  format: 1;
  model: ModelName;
  /** Migration flags advertised; 0 = not migratable (ENOTTY). */
  flags: number;
  /** Bulk state size in bytes. */
  size: number;
  seed: number;
  /** Bytes per second the bulk state changes while running. */
  rate: number;
  state: DeviceState;
  /** Time (ms since epoch) of the last update of the running-state mutations. */
  runningSince: number;
  /** Deliberate non-conformant behaviours (quirks.ts); absent = none. */
  quirks?: string[];
  /** A migration protocol v1 device (v1_device.ts); absent = uAPI v2. */
  v1?: V1Meta;
  /**
   * Bytes per second the device yields on its data_fd (a device that produces its
   * state slower than a link carries it); absent = as fast as it is read.
   */
  yieldRate?: number;
  /**
   * Linux 7.1 precopy-info v2: the driver accepts the SET of MIG_PRECOPY_INFOv2
   * (feature 12); after it, PRECOPY_INFO zeroes flags on entry and may report REINIT.
   */
  precopyV2?: boolean;
  /**
   * Bulk model: once this many bytes of a pre-copy session were read, the device
   * re-queues the first half of its state as new initial data, right after the
   * PRECOPY_INFO that finds so (REINIT, reported once by the next PRECOPY_INFO to a user
   * that opted in; without the opt-in the bytes show as dirty_bytes).
   */
  reinitAfter?: number;
  /**
   * "pci": reset to power-on at the first open and the last close, and VFIO_DEVICE_RESET
   * loses the device's data (vfio-pci-core); "mdev": state kept (mtty). Absent: the
   * model's default (models.ts defaultFamily).
   */
  family?: "pci" | "mdev";
  /** Settings of the quirks that take any (quirks.ts). */
  quirkOptions?: QuirkOptions;
  /**
   * What a quirk keeps in device memory across opens: stale-after-reopen's flag;
   * late-writeback's writes still in the device's cache (state.bin offset and bytes).
   */
  quirkState?: { migrated?: boolean; cached?: { at: number; bytes: number[] }[] };
  /**
   * pci family: the interrupt type armed by VFIO_DEVICE_SET_IRQS (vfio-pci's irq_type: 1
   * MSI, 2 MSI-X); absent = none. The device's, whoever opened it (vfio_pci.ts).
   */
  irqType?: 1 | 2;
  /** pci family: a REQ trigger eventfd is set (VFIO_DEVICE_SET_IRQS on the REQ index). */
  reqTrigger?: boolean;
  /** pci family: the device's data is its power-on content (nothing to regenerate). */
  pristine?: boolean;
  /** mtty: the seed its power-on registers came from, when not `seed` (created without one). */
  initSeed?: number;
  /** xe: the seed of the data it holds now (a load changes it); absent = `seed`. */
  contentSeed?: number;
}

/** Settings of the quirks that take any (sim create --reset-at, --fail-leaves, --read-delay). */
export interface QuirkOptions {
  /** reset-mid-session: the phase, after how many bytes of it, and the state it leaves. */
  resetAt?: { phase: "pre-copy" | "stop-copy" | "resuming"; after: number; to: "error" | "running" };
  /** fails-mid-path: a failed SET leaves the device one arc in, or in ERROR. */
  failLeaves?: "intermediate" | "error";
  /** blocking-read: ms after a phase starts until its data is ready. */
  readDelay?: number;
}

/** A device's family: its own, or its model's default. */
export function familyOf(meta: SimDeviceMeta): "pci" | "mdev" {
  return meta.family ?? defaultFamily(meta.model);
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export function writeFileAtomic(sys: Sys, path: string, data: Uint8Array): void {
  const tmp = `${path}.tmp${sys.getpid()}`;
  const fd = sys.open(tmp, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, 0o644);
  try {
    writeAll(sys, fd, data);
  } finally {
    sys.close(fd);
  }
  sys.rename(tmp, path);
}

export class SimStore {
  constructor(readonly sys: Sys, readonly dir: string) {}

  get metaPath(): string {
    return `${this.dir}/${SIM_FILES.meta}`;
  }
  get statePath(): string {
    return `${this.dir}/state.bin`;
  }
  get incomingPath(): string {
    return `${this.dir}/incoming.bin`;
  }
  get lockPath(): string {
    return `${this.dir}/${SIM_FILES.lock}`;
  }
  /** PCI config space as last written (absent: the model's initial one). */
  get configPath(): string {
    return `${this.dir}/config.bin`;
  }
  /** The MSI-X table BAR's contents (absent: zeros). */
  get msixPath(): string {
    return `${this.dir}/msix.bin`;
  }
  /** One byte per reset the device ever had (its size is the count: one stat tells it). */
  get resetsPath(): string {
    return `${this.dir}/resets`;
  }

  /** The resets file, kept open once found (O_RDONLY): its size is read through it. */
  #resetsFd = -1;

  /**
   * How many resets the device had (VFIO_DEVICE_RESET, a PCI function's power-on at the
   * first open or last close, a reset the device did itself), by any process: an open
   * that saw fewer knows its migration files were disabled meanwhile. Called on every
   * data_fd read and write, so the file is opened once and its size read with one
   * lseek(SEEK_END) of the kept descriptor (no path lookup, no stat buffer to decode:
   * issue 27 measured the stat at 50-70 ms per GiB); every other process appends to the
   * same inode (noteReset), so the size is the same the stat saw. release() closes it.
   */
  resetCount(): number | null {
    try {
      if (this.#resetsFd < 0) this.#resetsFd = this.sys.open(this.resetsPath, O.RDONLY | O.CLOEXEC);
      return this.sys.lseek(this.#resetsFd, 0, SEEK.END);
    } catch (e) {
      if (isErrno(e, "ENOENT")) return 0; // a device made before the count existed: none yet
      return null; // unknown now (the caller keeps what it saw)
    }
  }

  /** Closes what resetCount() kept open (the device's last use in this process); the store may be used again. */
  release(): void {
    if (this.#resetsFd < 0) return;
    const fd = this.#resetsFd;
    this.#resetsFd = -1;
    try {
      this.sys.close(fd);
    } catch { /* released anyway (Linux) */ }
  }

  /** Counts one more reset; returns the new count. */
  noteReset(): number {
    const fd = this.sys.open(this.resetsPath, O.WRONLY | O.CREAT | O.APPEND | O.CLOEXEC, 0o644);
    try {
      writeAll(this.sys, fd, new Uint8Array(1));
    } finally {
      this.sys.close(fd);
    }
    return this.resetCount() ?? 0;
  }

  /** A small persisted file, or null when it does not exist. */
  readOptional(path: string): Uint8Array | null {
    try {
      return readSmallFile(this.sys, path);
    } catch (e) {
      if (isErrno(e, "ENOENT")) return null;
      throw e;
    }
  }

  exists(): boolean {
    try {
      this.sys.stat(this.metaPath);
      return true;
    } catch (e) {
      if (isErrno(e, "ENOENT") || isErrno(e, "ENOTDIR")) return false;
      throw e;
    }
  }

  readMeta(): SimDeviceMeta {
    return this.readMetaText().meta;
  }

  /** device.json, parsed and as text (to notice when another process rewrote it). */
  readMetaText(): { meta: SimDeviceMeta; text: string } {
    let raw: Uint8Array;
    try {
      raw = readSmallFile(this.sys, this.metaPath);
    } catch (e) {
      if (isErrno(e, "ENOENT") || isErrno(e, "ENOTDIR")) {
        throw new VfioMigError(
          `no simulated device at ${this.dir} (create one with: vfio-mig sim create ${this.dir})`,
          "device",
        );
      }
      throw e;
    }
    const text = dec.decode(raw);
    const m = JSON.parse(text) as SimDeviceMeta;
    if (m.format !== 1 || !MODEL_NAMES.includes(m.model)) {
      throw new VfioMigError(`${this.metaPath}: not a vfio-mig simulated device`, "device");
    }
    return { meta: m, text };
  }

  /** Writes device.json; returns the text written. */
  writeMeta(m: SimDeviceMeta): string {
    const text = JSON.stringify(m, null, 2) + "\n";
    writeFileAtomic(this.sys, this.metaPath, enc.encode(text));
    return text;
  }

  /** Creates the device folder, its metadata and its initial state. */
  create(
    opts: {
      model: ModelName;
      flags?: number;
      size?: number;
      seed?: number;
      rate?: number;
      yieldRate?: number;
      precopyV2?: boolean;
      reinitAfter?: number;
      quirks?: string[];
      quirkOptions?: QuirkOptions;
      family?: "pci" | "mdev";
      /** "v1": the deprecated region protocol, with this data section. */
      protocol?: "v1" | "v2";
      dataSize?: number;
      sparse?: V1Sparse;
    },
  ): SimDeviceMeta {
    const info = modelInfo(opts.model);
    const sized = opts.model === "bulk" || opts.model === "xe";
    const meta: SimDeviceMeta = {
      format: 1,
      model: opts.model,
      flags: opts.flags ?? info.defaultMigrationFlags,
      size: sized ? (opts.size ?? (opts.model === "xe" ? 256 << 20 : 1 << 20)) : stateSize(opts.model, 0),
      seed: opts.seed ?? 1,
      rate: opts.rate ?? 0,
      state: DeviceState.RUNNING,
      runningSince: Date.now(),
      ...(opts.quirks?.length ? { quirks: opts.quirks } : {}),
      ...(opts.yieldRate ? { yieldRate: opts.yieldRate } : {}),
      ...(opts.precopyV2 ? { precopyV2: true } : {}),
      ...(opts.reinitAfter !== undefined ? { reinitAfter: opts.reinitAfter } : {}),
      ...(opts.family ? { family: opts.family } : {}),
      ...(opts.quirkOptions && Object.keys(opts.quirkOptions).length ? { quirkOptions: opts.quirkOptions } : {}),
    };
    // mtty's registers start from seed 0 unless one is given (meta.seed says 1).
    if (opts.model === "mtty-1" || opts.model === "mtty-2") {
      if ((opts.seed ?? 0) !== meta.seed) meta.initSeed = opts.seed ?? 0;
    }
    if (familyOf(meta) === "pci") meta.pristine = true;
    if (opts.model === "xe") {
      if (meta.flags & 0x4) throw new VfioMigError("the xe model has no PRE_COPY (flags stop-copy, p2p)", "usage");
      if (opts.protocol === "v1") throw new VfioMigError("the xe model speaks uAPI v2 only", "usage");
    }
    if (opts.reinitAfter !== undefined && (opts.model !== "bulk" || opts.protocol === "v1")) {
      throw new VfioMigError("--reinit-after needs the bulk model with uAPI v2", "usage");
    }
    if (opts.protocol === "v1") {
      // A v1 driver has no v2 migration feature: VFIO_DEVICE_FEATURE MIGRATION is ENOTTY.
      meta.flags = 0;
      meta.v1 = { state: 1, dataSize: opts.dataSize ?? V1_DEFAULT_DATA_SIZE, sparse: opts.sparse ?? "full" };
      if (meta.v1.dataSize <= 0 || meta.v1.dataSize % 4096 !== 0) {
        throw new VfioMigError(`data section size ${meta.v1.dataSize} is not a positive multiple of 4096`, "usage");
      }
    }
    try {
      this.sys.mkdir(this.dir, 0o755);
    } catch (e) {
      if (!isErrno(e, "EEXIST")) throw e;
    }
    this.writeInitialState(meta);
    this.release(); // a kept resets file is the old one
    for (const stale of [this.incomingPath, this.configPath, this.msixPath, this.resetsPath]) this.remove(stale);
    writeFileAtomic(this.sys, this.resetsPath, new Uint8Array(0)); // no reset yet (a stat finds it)
    this.writeMeta(meta);
    return meta;
  }

  /** Unlinks a file; absent is fine. */
  remove(path: string): void {
    try {
      this.sys.unlink(path);
    } catch (e) {
      if (!isErrno(e, "ENOENT")) throw e;
    }
  }

  /**
   * Writes the device's power-on data (state.bin) from its seed: bulk's seeded pattern,
   * mtty's registers. xe stores nothing: its data is a function of its seed.
   */
  writeInitialState(meta: SimDeviceMeta): void {
    if (meta.model === "xe") {
      delete meta.contentSeed;
      this.remove(this.statePath);
      return;
    }
    const fd = this.sys.open(this.statePath, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, 0o644);
    try {
      if (meta.model === "bulk") {
        const block = new Uint8Array(Math.min(1 << 20, Math.max(meta.size, 1)));
        for (let off = 0; off < meta.size; off += block.length) {
          const part = block.subarray(0, Math.min(block.length, meta.size - off));
          fillBulk(part, meta.seed, off);
          writeAll(this.sys, fd, part);
        }
      } else {
        writeAll(this.sys, fd, initialMttyState(meta.model, meta.initSeed ?? meta.seed));
      }
    } finally {
      this.sys.close(fd);
    }
  }
}
