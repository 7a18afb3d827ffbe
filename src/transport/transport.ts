// Where a stream goes to and comes from: a file (written under a temporary name and
// renamed only when complete), standard output/input, a FIFO. All through the Sys, so
// --allow-ffi is the only permission they need.
//
// Nothing here may hold the process past a signal (Deno runs signal listeners only
// between event-loop turns): whatever can wait for another process — a pipe, a FIFO,
// a socket, a character device — is made non-blocking, and its waits are polls of at
// most POLL_SLICE_MS between which the event loop runs and interrupt() is seen.
// Regular files never wait for anyone and stay on the plain synchronous path.

import { Errno, isErrno, SysError } from "../../ffi/errno.ts";
import { F, O, POLL, type Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { nextTurn, readSome, writeAll } from "../io.ts";

/** Longest synchronous poll(2) between two turns of the event loop, ms. */
const POLL_SLICE_MS = 10;

export interface Sink {
  readonly label: string;
  /**
   * Before the first write: waits until the output can be written at all (a FIFO: until
   * a reader opened it). Rejects when abort() is called meanwhile.
   */
  ready?(): Promise<void>;
  /**
   * Takes the bytes. A sink that cannot write them now keeps them: a copy, or with
   * `kept` (the caller leaves them unchanged until flowControl() resolves) a view.
   */
  write(bytes: Uint8Array, kept?: boolean): void;
  /** The stream is complete: make it visible (rename) and durable; for a peer, its result. */
  commit(): void | Promise<void>;
  /** The stream failed, or a signal came: leave nothing that looks complete; ends any wait. */
  abort(): void;
  /**
   * Resolves when what is kept is small enough to take more (pipes, FIFOs, sockets:
   * when all of it was written). Rejects when abort() is called meanwhile.
   */
  flowControl?(): Promise<void> | void;
  /**
   * Sinks that queue (network): resolves once every byte taken was handed to the kernel,
   * so a process killed afterwards loses none of them. Rejects when the sink failed.
   */
  drain?(): Promise<void>;
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
  /** Over a two-way transport, once commit() returned or failed: what the destination reported. */
  readonly result?: { ok: boolean; message: string; finalState?: string } | null;
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
  | { event: "done"; ok: boolean; message: string; finalState?: string; kind?: string };

/** A source that may be asynchronous (network, pipes), and may talk back to the sender. */
export interface StreamSource {
  readonly label: string;
  read(buf: Uint8Array): number | Promise<number>;
  close(): void;
  notify?(e: PeerEvent): Promise<void>;
  /** A signal came: a read that waits rejects now (the fd stays open until close()). */
  interrupt?(): void;
}

/**
 * Waits, interruptibly, until `fd` is ready for `events`: polls of at most
 * POLL_SLICE_MS with a turn of the event loop between them, so signal listeners run.
 * Returns the revents; throws `stopped()`'s error once it returns one.
 */
export async function waitFor(sys: Sys, fd: number, events: number, stopped: () => Error | null): Promise<number> {
  for (;;) {
    const err = stopped();
    if (err) throw err;
    let rev = 0;
    try {
      rev = sys.poll([{ fd, events }], POLL_SLICE_MS)[0];
    } catch (e) {
      if (!isErrno(e, "EINTR")) throw e;
    }
    if (rev !== 0) return rev;
    await nextTurn();
  }
}

/** Sets O_NONBLOCK on fd; returns the flags to restore when done with it. */
function nonBlocking(sys: Sys, fd: number): number {
  const flags = sys.fcntl(fd, F.GETFL);
  if (!(flags & O.NONBLOCK)) sys.fcntl(fd, F.SETFL, flags | O.NONBLOCK);
  return flags;
}

function restoreFlags(sys: Sys, fd: number, flags: number): void {
  try {
    sys.fcntl(fd, F.SETFL, flags);
  } catch { /* the fd is going away anyway */ }
}

const PIPE_SIZE = 1 << 20;

/** Enlarges a pipe to 1 MiB where it is one (fewer, larger transfers). */
function growPipe(sys: Sys, fd: number): void {
  try {
    if (sys.fstat(fd).isFifo) sys.fcntl(fd, F.SETPIPE_SZ, PIPE_SIZE);
  } catch { /* not permitted or not a pipe: the default size works */ }
}

/**
 * A pipe, FIFO, socket or character device (standard output, a FIFO, /dev/null):
 * written in place, non-blocking. What the reader has no room for yet is kept (a view
 * when the caller keeps the bytes, else a copy) and written by flowControl() as room
 * comes, in polls that let signals in. A FIFO given by path is opened by ready(),
 * which waits for a reader (O_NONBLOCK open: ENXIO until one comes). The fd's flags
 * are restored when the sink is done with it.
 */
export class FdSink implements Sink {
  #fd: number;
  #flags = -1;
  #kept: Uint8Array[] = [];
  #keptBytes = 0;
  #aborted = false;
  #done = false;

  /** `fd`: an open fd, or -1 with `path` (a FIFO opened by ready()). `owned`: close it when done. */
  constructor(
    readonly sys: Sys,
    fd: number,
    readonly label: string,
    readonly owned = false,
    readonly path: string | null = null,
  ) {
    this.#fd = fd;
    if (fd >= 0) this.#setup();
  }

  get fd(): number {
    return this.#fd;
  }

  #setup(): void {
    growPipe(this.sys, this.#fd);
    this.#flags = nonBlocking(this.sys, this.#fd);
  }

  #stopped = (): Error | null => this.#aborted ? new VfioMigError(`${this.label}: the write was abandoned`) : null;

  async ready(): Promise<void> {
    if (this.#fd >= 0 || this.path === null) return;
    for (;;) {
      const err = this.#stopped();
      if (err) throw err;
      try {
        this.#fd = this.sys.open(this.path, O.WRONLY | O.NONBLOCK | O.CLOEXEC);
        break;
      } catch (e) {
        if (!isErrno(e, "ENXIO")) throw fileError(this.sys, this.path, e, "write");
      }
      await new Promise((r) => setTimeout(r, 20)); // no reader yet
    }
    this.#setup();
  }

  /** Writes what it can now; returns the bytes written. EPIPE becomes a one-line error. */
  #writeSome(bytes: Uint8Array): number {
    let off = 0;
    while (off < bytes.length) {
      let n: number;
      try {
        n = this.sys.write(this.#fd, off === 0 ? bytes : bytes.subarray(off));
      } catch (e) {
        if (isErrno(e, "EAGAIN")) break;
        if (isErrno(e, "EINTR")) continue;
        if (isErrno(e, "EPIPE")) {
          throw new VfioMigError(`${this.label}: the reading end went away (broken pipe)`, "failure", { cause: e });
        }
        throw e;
      }
      off += n;
    }
    return off;
  }

  write(bytes: Uint8Array, kept = false): void {
    const err = this.#stopped(); // nothing more after abort(): no trailer may follow a signal
    if (err) throw err;
    if (this.#fd < 0) throw new VfioMigError(`${this.label}: written before it was opened (ready())`);
    let rest = bytes;
    if (this.#keptBytes === 0) {
      const n = this.#writeSome(bytes);
      if (n === bytes.length) return;
      rest = bytes.subarray(n);
    }
    this.#kept.push(kept ? rest : rest.slice());
    this.#keptBytes += rest.length;
  }

  flowControl(): Promise<void> | void {
    if (this.#keptBytes > 0 || this.#aborted) return this.#flush();
  }

  async #flush(): Promise<void> {
    while (this.#keptBytes > 0) {
      const err = this.#stopped();
      if (err) throw err;
      const head = this.#kept[0];
      const n = this.#writeSome(head);
      this.#keptBytes -= n;
      if (n === head.length) {
        this.#kept.shift();
        continue;
      }
      this.#kept[0] = head.subarray(n);
      await waitFor(this.sys, this.#fd, POLL.OUT, this.#stopped);
    }
    const err = this.#stopped();
    if (err) throw err;
  }

  async commit(): Promise<void> {
    await this.#flush();
    this.#release();
  }

  abort(): void {
    this.#aborted = true;
    this.#kept = [];
    this.#keptBytes = 0;
    this.#release();
  }

  #release(): void {
    if (this.#done) return;
    this.#done = true;
    if (this.#fd < 0) return;
    if (this.#flags >= 0) restoreFlags(this.sys, this.#fd, this.#flags);
    if (this.owned) {
      try {
        this.sys.close(this.#fd);
      } catch { /* nothing more to do */ }
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
      throw fileError(sys, path, e, "create");
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

/** A regular file (or any fd read synchronously, e.g. by inspect). */
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

/**
 * A pipe, FIFO, socket or character device (standard input, a FIFO): read
 * non-blocking; a read with nothing there waits in polls that let signals in, and
 * rejects once interrupt() is called. A FIFO opened here (O_NONBLOCK: the open does
 * not wait for a writer) is read only once a writer came (POLLIN or POLLHUP): before
 * that, Linux reports end of file. The fd's flags are restored on close().
 */
export class PipeSource implements StreamSource {
  readonly #flags: number;
  #interrupted = false;
  #writerSeen: boolean;
  #closed = false;

  /** `awaitWriter`: a FIFO this process opened, whose first writer may not have come yet. */
  constructor(
    readonly sys: Sys,
    readonly fd: number,
    readonly label: string,
    readonly owned: boolean,
    awaitWriter = false,
  ) {
    growPipe(sys, fd);
    this.#flags = nonBlocking(sys, fd);
    this.#writerSeen = !awaitWriter;
  }

  #stopped = (): Error | null => this.#interrupted ? new VfioMigError(`${this.label}: the read was abandoned`) : null;

  read(buf: Uint8Array): number | Promise<number> {
    if (this.#writerSeen && !this.#interrupted) {
      try {
        return readSome(this.sys, this.fd, buf, false);
      } catch (e) {
        if (!isErrno(e, "EAGAIN")) throw e;
      }
    }
    return this.#readWaiting(buf);
  }

  async #readWaiting(buf: Uint8Array): Promise<number> {
    for (;;) {
      await waitFor(this.sys, this.fd, POLL.IN, this.#stopped);
      this.#writerSeen = true;
      try {
        return readSome(this.sys, this.fd, buf, false);
      } catch (e) {
        if (!isErrno(e, "EAGAIN")) throw e;
      }
    }
  }

  interrupt(): void {
    this.#interrupted = true;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    restoreFlags(this.sys, this.fd, this.#flags);
    if (!this.owned) return;
    try {
      this.sys.close(this.fd);
    } catch { /* released anyway */ }
  }
}

/**
 * The sink for a save's output: "-" (standard output), a FIFO or character device
 * (written in place; a FIFO is opened by ready(), once a reader has it open), or a file
 * (FileSink: a temporary name, renamed when complete). Throws VfioMigError (usage:
 * a directory; failure: cannot create or open).
 */
export function openSink(sys: Sys, target: string): Sink {
  if (target === "-") return new FdSink(sys, 1, "standard output");
  // A FIFO or a device (/dev/null) is written in place: renaming over it would
  // replace it with a regular file.
  let st = null;
  try {
    st = sys.stat(target);
    if (st.isDirectory) throw new VfioMigError(`${target} is a directory: give a file name`, "usage");
  } catch (e) {
    if (!isErrno(e, "ENOENT")) throw e;
  }
  if (st?.isFifo) return new FdSink(sys, -1, target, true, target);
  if (st && !st.isRegular) {
    try {
      return new FdSink(sys, sys.open(target, O.WRONLY | O.CLOEXEC), target, true);
    } catch (e) {
      throw fileError(sys, target, e, "write");
    }
  }
  return new FileSink(sys, target);
}

/** A synchronous source (inspect): "-" (standard input) or a path. Throws VfioMigError. */
export function openSource(sys: Sys, from: string): Source {
  if (from === "-") return new FdSource(sys, 0, "standard input", false);
  let fd: number;
  try {
    fd = sys.open(from, O.RDONLY | O.CLOEXEC);
  } catch (e) {
    throw fileError(sys, from, e, "read");
  }
  if (sys.fstat(fd).isDirectory) {
    sys.close(fd);
    throw fileError(sys, from, new SysError("read", Errno.EISDIR), "read");
  }
  return new FdSource(sys, fd, from, true);
}

/**
 * The one error for a path named on the command line that cannot be opened, read or
 * created: usage (exit 2), naming the path, the reason in words and what to do
 * (missing, a missing folder, a folder that takes no new files such as /proc, a
 * directory, permission, a read-only file system). Other errnos (EIO, ENOSPC, …) are
 * an I/O failure (exit 1), the path and the errno named.
 */
export function fileError(sys: Sys, path: string, e: unknown, doing: "read" | "write" | "create"): VfioMigError {
  const slash = path.lastIndexOf("/");
  const dir = slash > 0 ? path.slice(0, slash) : slash === 0 ? "/" : ".";
  let why: string;
  if (isErrno(e, "ENOENT") && doing === "read") return new VfioMigError(`${path}: no such file`, "usage");
  if (isErrno(e, "ENOENT")) {
    let dirExists = false;
    try {
      dirExists = sys.stat(dir).isDirectory;
    } catch { /* it does not */ }
    why = dirExists ? `${dir} takes no new files` : `its folder ${dir} does not exist (create it first)`;
  } else if (isErrno(e, "ENOTDIR")) why = `a part of ${dir} is not a folder`;
  else if (isErrno(e, "EISDIR")) return new VfioMigError(`${path} is a directory: give a file`, "usage");
  else if (isErrno(e, "EACCES") || isErrno(e, "EPERM")) {
    why = `permission denied (run as a user who may ${doing === "read" ? "read it" : `write in ${dir}`})`;
  } else if (isErrno(e, "EROFS")) why = "the file system is read-only";
  else {
    // Not the path's fault (EIO, ENOSPC, ENOMEM, …): an I/O failure, exit 1.
    why = e instanceof Error ? e.message : String(e);
    return new VfioMigError(`cannot ${doing} ${path}: ${why}`, "failure", { cause: e });
  }
  return new VfioMigError(`cannot ${doing} ${path}: ${why}`, "usage", { cause: e });
}

/**
 * The source for a load: "-" (standard input) or a path. A regular file is read
 * synchronously (FdSource); a pipe, FIFO, socket or character device interruptibly
 * (PipeSource; a FIFO is opened without waiting for its writer). Throws VfioMigError.
 */
export function openStreamSource(sys: Sys, from: string): StreamSource {
  if (from === "-") {
    return sys.fstat(0).isRegular
      ? new FdSource(sys, 0, "standard input", false)
      : new PipeSource(sys, 0, "standard input", false);
  }
  let fd: number;
  try {
    fd = sys.open(from, O.RDONLY | O.NONBLOCK | O.CLOEXEC);
  } catch (e) {
    throw fileError(sys, from, e, "read");
  }
  try {
    const st = sys.fstat(fd);
    if (st.isDirectory) throw fileError(sys, from, new SysError("read", Errno.EISDIR), "read");
    if (st.isRegular) {
      sys.fcntl(fd, F.SETFL, sys.fcntl(fd, F.GETFL) & ~O.NONBLOCK);
      return new FdSource(sys, fd, from, true);
    }
    return new PipeSource(sys, fd, from, true, st.isFifo);
  } catch (e) {
    try {
      sys.close(fd);
    } catch { /* already failing */ }
    throw e;
  }
}

// ---------------------------------------------------------------------------
// The command line's positional output (save) and input (load). Operators type QEMU's
// migrate URIs (docs/devel/migration/main.rst: tcp:HOST:PORT, file:PATH[,offset=N],
// exec:CMD, unix:PATH, fd:NAME, rdma:, vsock:); a positional argument never silently
// becomes a file named like one.

/** A positional that starts like a URI: a scheme of two or more letters, then ':'. */
const SCHEME = /^([a-zA-Z][a-zA-Z0-9+.-]+):/;

function fileUri(arg: string, cmd: string): string {
  const path = arg.slice("file:".length);
  if (path === "") throw new VfioMigError(`${cmd}: file: needs a path (file:PATH)`, "usage");
  if (/,offset=/.test(path)) {
    throw new VfioMigError(`${cmd}: ${arg}: QEMU's ,offset= is not supported; give the path alone`, "usage");
  }
  return path;
}

function notAUri(arg: string, cmd: string, scheme: string): VfioMigError {
  const why = scheme === "exec"
    ? "exec: is not supported (it would run a command line as root from an argument); use a pipe: " +
      (cmd === "save" ? "save … - | CMD" : "CMD | vfio-mig load … -")
    : `${scheme}: is not a transport vfio-mig has (${
      cmd === "save"
        ? "FILE, -, tcp://HOST:PORT, tcp:HOST:PORT or file:PATH"
        : "FILE, -, file:PATH or --listen HOST:PORT"
    })`;
  return new VfioMigError(`${cmd}: ${arg}: ${why}; for a file of that name write ./${arg}`, "usage");
}

/**
 * save's positional, normalized: "-" (standard output), "tcp://HOST:PORT" (also from
 * QEMU's tcp:HOST:PORT, IPv6 as [::1]), or a path (also from QEMU's file:PATH). A path
 * that starts like a URI (`name:`) is refused: `./name:…` is the file. Throws
 * VfioMigError (usage) for every refusal.
 */
export function saveTarget(arg: string): string {
  if (arg === "-" || arg.startsWith("tcp://")) return arg;
  const scheme = SCHEME.exec(arg)?.[1];
  if (scheme === undefined) return arg;
  if (scheme === "file") return fileUri(arg, "save");
  if (scheme === "tcp") {
    const hostPort = arg.slice("tcp:".length);
    if (!/^(\[[^\]]+\]|[^:/\[\]]+):\d+$/.test(hostPort)) {
      throw new VfioMigError(`save: ${arg}: expected tcp:HOST:PORT (or tcp://HOST:PORT)`, "usage");
    }
    return `tcp://${hostPort}`;
  }
  throw notAUri(arg, "save", scheme);
}

/**
 * load's positional, normalized: "-" (standard input) or a path (also from QEMU's
 * file:PATH). A tcp: or tcp:// address is refused naming --listen: QEMU's
 * `-incoming tcp:0:PORT` listens on every interface, and vfio-mig never listens where it
 * was not told to. Any other `name:` start is refused (`./name:…` is the file). Throws
 * VfioMigError (usage).
 */
export function loadInput(arg: string): string {
  if (arg === "-") return arg;
  const scheme = SCHEME.exec(arg)?.[1];
  if (scheme === undefined) return arg;
  if (scheme === "file") return fileUri(arg, "load");
  if (scheme === "tcp") {
    const m = /^tcp:(?:\/\/)?(\[[^\]]*\]|[^:]*):(\d+)\/?$/.exec(arg);
    const host = m?.[1] ?? "";
    const listen = !m
      ? "--listen HOST:PORT"
      : host === "" || host === "0" || host === "0.0.0.0" || host === "[::]"
      ? `--listen 0.0.0.0:${m[2]} (every interface, as QEMU's tcp:0: is; --listen ${m[2]} is loopback only)`
      : `--listen ${host}:${m[2]}`;
    throw new VfioMigError(
      `load: ${arg}: load reads a FILE or -; to accept a 'vfio-mig save … tcp://' peer give ${listen}`,
      "usage",
    );
  }
  throw notAUri(arg, "load", scheme);
}
