// Where a stream goes to and comes from: a file (written under a temporary name and
// renamed only when complete), standard output/input. All through the Sys, so
// --allow-ffi is the only permission they need.

import { isErrno } from "../../ffi/errno.ts";
import { F, O, type Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { readSome, writeAll } from "../io.ts";

export interface Sink {
  readonly label: string;
  /** Takes the bytes (a network sink queues a copy; `flowControl` applies backpressure). */
  write(bytes: Uint8Array): void;
  /** The stream is complete: make it visible (rename) and durable; for a peer, its result. */
  commit(): void | Promise<void>;
  /** The stream failed: leave nothing that looks complete. */
  abort(): void;
  /** Resolves when queued output is small enough to take more (network sinks). */
  flowControl?(): Promise<void> | void;
  /** Over a two-way transport: true once the destination loaded the initial pre-copy data. */
  readonly initAcked?: boolean;
  /**
   * Over a two-way transport: how many DEV_INIT_DATA_SENT markers the destination
   * acknowledged (one per marker: a device that reports REINIT needs a new one).
   */
  readonly initAcks?: number;
  /** Bytes taken by write() but not yet sent (network sinks, which queue). */
  readonly queuedBytes?: number;
  /** Over a two-way transport: when the destination reported RUNNING, in performance.now() ms. */
  readonly peerDoneAt?: number | null;
  /** When the last byte left (network sinks, which queue), in performance.now() ms. */
  readonly lastByteAt?: number | null;
}

/** A synchronous byte source: files, pipes, standard input. */
export interface Source {
  readonly label: string;
  /** Bytes read into buf; 0 at end of stream. */
  read(buf: Uint8Array): number;
  close(): void;
}

/** What a destination can tell its source over a two-way transport. */
export type PeerEvent =
  | { event: "init-loaded" }
  | { event: "done"; ok: boolean; message: string; finalState?: string };

/** A source that may be asynchronous (network), and may talk back to the sender. */
export interface StreamSource {
  readonly label: string;
  read(buf: Uint8Array): number | Promise<number>;
  close(): void;
  notify?(e: PeerEvent): Promise<void>;
}

const PIPE_SIZE = 1 << 20;

/** Enlarges a pipe to 1 MiB where it is one (fewer, larger transfers). */
function growPipe(sys: Sys, fd: number): void {
  try {
    if (sys.fstat(fd).isFifo) sys.fcntl(fd, F.SETPIPE_SZ, PIPE_SIZE);
  } catch { /* not permitted or not a pipe: the default size works */ }
}

export class FdSink implements Sink {
  constructor(readonly sys: Sys, public fd: number, readonly label: string, readonly owned = false) {
    growPipe(sys, fd);
  }
  write(bytes: Uint8Array): void {
    try {
      writeAll(this.sys, this.fd, bytes);
    } catch (e) {
      if (isErrno(e, "EPIPE")) {
        throw new VfioMigError(`${this.label}: the reading end went away (broken pipe)`, "failure", { cause: e });
      }
      throw e;
    }
  }
  commit(): void {
    this.#release();
  }
  abort(): void {
    this.#release();
  }
  #release(): void {
    if (this.owned && this.fd >= 0) {
      try {
        this.sys.close(this.fd);
      } catch { /* nothing more to do */ }
      this.fd = -1;
    }
  }
}

export class FileSink implements Sink {
  readonly #tmp: string;
  #fd: number;
  #done = false;

  constructor(readonly sys: Sys, readonly path: string) {
    const slash = path.lastIndexOf("/");
    const dir = slash >= 0 ? path.slice(0, slash + 1) : "";
    this.#tmp = `${dir}.${path.slice(slash + 1)}.partial-${sys.getpid()}`;
    try {
      this.#fd = sys.open(this.#tmp, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, 0o644);
    } catch (e) {
      const why = isErrno(e, "ENOENT")
        ? "its folder does not exist"
        : isErrno(e, "EACCES") || isErrno(e, "EPERM")
        ? "permission denied"
        : e instanceof Error
        ? e.message
        : String(e);
      throw new VfioMigError(`cannot create ${path}: ${why}`, "failure", { cause: e });
    }
  }
  get label(): string {
    return this.path;
  }
  write(bytes: Uint8Array): void {
    writeAll(this.sys, this.#fd, bytes);
  }
  commit(): void {
    this.sys.fsync(this.#fd);
    const fd = this.#fd;
    this.#fd = -1; // a failed close still releases the fd: abort() must not close it again
    this.sys.close(fd);
    this.sys.rename(this.#tmp, this.path);
    this.#done = true;
  }
  abort(): void {
    if (this.#done) return;
    this.#done = true;
    if (this.#fd >= 0) {
      try {
        this.sys.close(this.#fd);
      } catch { /* nothing more to do */ }
      this.#fd = -1;
    }
    try {
      this.sys.unlink(this.#tmp);
    } catch { /* already gone */ }
  }
}

export class FdSource implements Source {
  constructor(readonly sys: Sys, readonly fd: number, readonly label: string, readonly owned: boolean) {
    growPipe(sys, fd);
  }
  read(buf: Uint8Array): number {
    return readSome(this.sys, this.fd, buf);
  }
  close(): void {
    if (!this.owned) return;
    try {
      this.sys.close(this.fd);
    } catch { /* released anyway (Linux); a read-only fd has nothing left to report */ }
  }
}

export function openSink(sys: Sys, target: string): Sink {
  if (target === "-") return new FdSink(sys, 1, "standard output");
  // A FIFO or a device (/dev/null) is written in place: renaming over it would
  // replace it with a regular file.
  let special = false;
  try {
    const st = sys.stat(target);
    special = !st.isRegular && !st.isDirectory;
    if (st.isDirectory) throw new VfioMigError(`${target} is a directory: give a file name`, "usage");
  } catch (e) {
    if (!isErrno(e, "ENOENT")) throw e;
  }
  if (special) {
    try {
      return new FdSink(sys, sys.open(target, O.WRONLY | O.CLOEXEC), target, true);
    } catch (e) {
      throw new VfioMigError(`cannot open ${target}: ${e instanceof Error ? e.message : e}`, "failure", { cause: e });
    }
  }
  return new FileSink(sys, target);
}

export function openSource(sys: Sys, from: string): Source {
  if (from === "-") return new FdSource(sys, 0, "standard input", false);
  try {
    return new FdSource(sys, sys.open(from, O.RDONLY | O.CLOEXEC), from, true);
  } catch (e) {
    if (isErrno(e, "ENOENT")) throw new VfioMigError(`${from}: no such file`, "usage");
    throw new VfioMigError(`cannot open ${from}: ${e instanceof Error ? e.message : e}`, "failure", { cause: e });
  }
}
