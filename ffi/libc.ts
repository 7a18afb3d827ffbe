// The libc binding: one symbol table (read it like a header), and a Sys over it that
// turns -1 + errno into SysError. Calls are synchronous on purpose: errno is per
// thread, and a `nonblocking` call would run on another one.
//
// The library path can be overridden with VFIO_MIG_LIBC (read through getenv of the
// default libc, so no --allow-env is needed).

import { SysError } from "./errno.ts";
import type { FileStat, IoctlArg, Mapping, PollFd, Sys } from "./sys.ts";
import { ioctlName } from "./vfio_uapi.ts";

const symbols = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" }, // int open(const char *path, int flags, mode_t mode)
  close: { parameters: ["i32"], result: "i32" }, // int close(int fd)
  ioctl_ptr: { name: "ioctl", parameters: ["i32", "u64", "buffer"], result: "i32" }, // int ioctl(int fd, unsigned long req, void *arg)
  ioctl_val: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" }, // int ioctl(int fd, unsigned long req, unsigned long arg)
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" }, // ssize_t read(int fd, void *buf, size_t n): n < 2 GiB, so i32 holds it
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" }, // ssize_t write(int fd, const void *buf, size_t n)
  pread: { name: "pread64", parameters: ["i32", "buffer", "usize", "i64"], result: "i32" }, // ssize_t pread(int fd, void *buf, size_t n, off_t off)
  pwrite: { name: "pwrite64", parameters: ["i32", "buffer", "usize", "i64"], result: "i32" }, // ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" }, // void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
  munmap: { parameters: ["pointer", "usize"], result: "i32" }, // int munmap(void *addr, size_t len)
  fcntl: { parameters: ["i32", "i32", "i64"], result: "i32" }, // int fcntl(int fd, int cmd, long arg)
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" }, // off_t lseek(int fd, off_t off, int whence)
  ftruncate: { parameters: ["i32", "i64"], result: "i32" }, // int ftruncate(int fd, off_t len)
  fsync: { parameters: ["i32"], result: "i32" }, // int fsync(int fd)
  flock: { parameters: ["i32", "i32"], result: "i32" }, // int flock(int fd, int op)
  pipe2: { parameters: ["buffer", "i32"], result: "i32" }, // int pipe2(int fds[2], int flags)
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" }, // int memfd_create(const char *name, unsigned flags)
  fstat: { parameters: ["i32", "buffer"], result: "i32" }, // int fstat(int fd, struct stat *st)
  stat: { parameters: ["buffer", "buffer"], result: "i32" }, // int stat(const char *path, struct stat *st)
  rename: { parameters: ["buffer", "buffer"], result: "i32" }, // int rename(const char *from, const char *to)
  renameat2: { parameters: ["i32", "buffer", "i32", "buffer", "u32"], result: "i32" }, // int renameat2(int olddirfd, const char *old, int newdirfd, const char *new, unsigned flags)
  unlink: { parameters: ["buffer"], result: "i32" }, // int unlink(const char *path)
  mkdir: { parameters: ["buffer", "u32"], result: "i32" }, // int mkdir(const char *path, mode_t mode)
  rmdir: { parameters: ["buffer"], result: "i32" }, // int rmdir(const char *path)
  readlink: { parameters: ["buffer", "buffer", "usize"], result: "i64" }, // ssize_t readlink(const char *path, char *buf, size_t n)
  opendir: { parameters: ["buffer"], result: "pointer" }, // DIR *opendir(const char *path)
  readdir: { parameters: ["pointer"], result: "pointer" }, // struct dirent *readdir(DIR *dir)
  closedir: { parameters: ["pointer"], result: "i32" }, // int closedir(DIR *dir)
  getenv: { parameters: ["buffer"], result: "pointer" }, // char *getenv(const char *name)
  getpid: { parameters: [], result: "i32" }, // pid_t getpid(void)
  isatty: { parameters: ["i32"], result: "i32" }, // int isatty(int fd)
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" }, // int poll(struct pollfd *fds, nfds_t n, int timeout)
  syscall3: { name: "syscall", parameters: ["i64", "i64", "i64", "i64"], result: "i64" }, // long syscall(long nr, ...): three integer arguments
  __errno_location: { parameters: [], result: "pointer" }, // int *__errno_location(void)
} as const satisfies Deno.ForeignLibraryInterface;

type Libc = Deno.DynamicLibrary<typeof symbols>["symbols"];

const DEFAULT_LIBC = "libc.so.6";
const MAX_IO = 1 << 30; // keep every read/write result inside an i32

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function cstr(s: string): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(s.length * 3 + 1);
  const { written } = encoder.encodeInto(s, b);
  return b.subarray(0, written + 1) as Uint8Array<ArrayBuffer>;
}

function readCString(p: Deno.PointerObject): string {
  return new Deno.UnsafePointerView(p).getCString();
}

/** libc could not be loaded (no --allow-ffi, or a bad VFIO_MIG_LIBC). */
export class LibcLoadError extends Error {
  constructor(message: string, cause: unknown) {
    super(message, { cause });
    this.name = "LibcLoadError";
  }
}

/**
 * libc's symbols, each bound by Deno.dlopen on its first use: binding costs ~0.25 ms a
 * symbol here (Deno makes a call stub for each), and a command uses a third of them
 * (all 34 up front were 7-10 ms of a 70 ms start). Throws LibcLoadError.
 */
function loadLibc(): Libc {
  let path = DEFAULT_LIBC;
  const bind = <K extends keyof typeof symbols>(name: K): Libc[K] => {
    try {
      return Deno.dlopen(path, { [name]: symbols[name] } as Pick<typeof symbols, K>).symbols[name] as Libc[K];
    } catch (cause) {
      if (cause instanceof Error && (cause.name === "NotCapable" || cause.name === "PermissionDenied")) {
        throw new LibcLoadError("vfio-mig talks to the kernel through libc: run deno with --allow-ffi", cause);
      }
      throw new LibcLoadError(
        `cannot load ${String(name)} from the C library ${path} with Deno.dlopen (set VFIO_MIG_LIBC to another ` +
          `path if needed): ${cause instanceof Error ? cause.message : cause}`,
        cause,
      );
    }
  };
  const p = bind("getenv")(cstr("VFIO_MIG_LIBC"));
  if (p) path = readCString(p);
  const bound: Partial<Libc> = {};
  return new Proxy(bound as Libc, {
    get: (_, name) => (bound as Record<string | symbol, unknown>)[name] ??= bind(name as keyof typeof symbols),
  });
}

// struct stat offsets (glibc, 64-bit): x86_64 and aarch64 differ in st_mode.
const STAT_SIZE = 144;
const STAT_MODE_OFF = Deno.build.arch === "aarch64" ? 16 : 24;
const STAT_SIZE_OFF = 48;
const DIRENT_NAME_OFF = 19; // struct dirent { ino 8, off 8, reclen 2, type 1, name[] }
// struct pollfd { int fd; short events; short revents; }
const POLLFD_SIZE = 8;
// Syscall numbers (the generic table: x86_64 and aarch64 share these two).
const SYS_PIDFD_OPEN = 434n;
const SYS_PIDFD_GETFD = 438n;

function decodeStat(b: Uint8Array): FileStat {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const mode = v.getUint32(STAT_MODE_OFF, true);
  const fmt = mode & 0o170000;
  return {
    mode,
    size: Number(v.getBigInt64(STAT_SIZE_OFF, true)),
    isDirectory: fmt === 0o040000,
    isCharDevice: fmt === 0o020000,
    isFifo: fmt === 0o010000,
    isRegular: fmt === 0o100000,
    isSocket: fmt === 0o140000,
  };
}

/** The real kernel, through libc. */
export class LibcSys implements Sys {
  readonly #c: Libc;
  readonly #errno: Deno.UnsafePointerView;

  constructor() {
    this.#c = loadLibc();
    this.#errno = new Deno.UnsafePointerView(this.#c.__errno_location()!);
  }

  /** errno of the last failing call on this thread. */
  errno(): number {
    return this.#errno.getInt32(0);
  }

  #check(op: string, r: number, detail?: string): number {
    if (r < 0) throw new SysError(op, this.errno(), detail);
    return r;
  }

  open(path: string, flags: number, mode = 0o644): number {
    return this.#check("open", this.#c.open(cstr(path), flags, mode), path);
  }
  close(fd: number): void {
    this.#check("close", this.#c.close(fd));
  }
  ioctl(fd: number, request: number, arg: IoctlArg): number {
    const req = BigInt(request);
    const r = arg instanceof Uint8Array
      ? this.#c.ioctl_ptr(fd, req, arg as Uint8Array<ArrayBuffer>)
      : this.#c.ioctl_val(fd, req, BigInt(arg ?? 0));
    return this.#check("ioctl", r, ioctlName(request));
  }
  read(fd: number, buf: Uint8Array): number {
    const n = Math.min(buf.byteLength, MAX_IO);
    return this.#check("read", this.#c.read(fd, buf as Uint8Array<ArrayBuffer>, BigInt(n)));
  }
  write(fd: number, buf: Uint8Array): number {
    const n = Math.min(buf.byteLength, MAX_IO);
    return this.#check("write", this.#c.write(fd, buf as Uint8Array<ArrayBuffer>, BigInt(n)));
  }
  pread(fd: number, buf: Uint8Array, offset: number): number {
    const n = Math.min(buf.byteLength, MAX_IO);
    return this.#check("pread", this.#c.pread(fd, buf as Uint8Array<ArrayBuffer>, BigInt(n), BigInt(offset)));
  }
  pwrite(fd: number, buf: Uint8Array, offset: number): number {
    const n = Math.min(buf.byteLength, MAX_IO);
    return this.#check("pwrite", this.#c.pwrite(fd, buf as Uint8Array<ArrayBuffer>, BigInt(n), BigInt(offset)));
  }
  mmap(fd: number, length: number, prot: number, flags: number, offset: number): Mapping {
    const p = this.#c.mmap(null, BigInt(length), prot, flags, fd, BigInt(offset));
    // MAP_FAILED is (void *)-1, not NULL.
    if (p === null || Deno.UnsafePointer.value(p) === 0xffffffffffffffffn) {
      throw new SysError("mmap", this.errno());
    }
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, length));
    return new LibcMapping(p, bytes);
  }
  munmap(map: Mapping): void {
    if (!(map instanceof LibcMapping)) throw new TypeError("not a libc mapping");
    this.#check("munmap", this.#c.munmap(map.pointer, BigInt(map.length)));
  }
  fcntl(fd: number, cmd: number, arg = 0): number {
    return this.#check("fcntl", this.#c.fcntl(fd, cmd, BigInt(arg)));
  }
  lseek(fd: number, offset: number, whence: number): number {
    return this.#check("lseek", Number(this.#c.lseek(fd, BigInt(offset), whence)));
  }
  ftruncate(fd: number, length: number): void {
    this.#check("ftruncate", this.#c.ftruncate(fd, BigInt(length)));
  }
  fsync(fd: number): void {
    this.#check("fsync", this.#c.fsync(fd));
  }
  flock(fd: number, op: number): void {
    this.#check("flock", this.#c.flock(fd, op));
  }
  pipe(flags = 0): [number, number] {
    const fds = new Int32Array(2);
    this.#check("pipe2", this.#c.pipe2(new Uint8Array(fds.buffer), flags));
    return [fds[0], fds[1]];
  }
  memfd(name: string, flags = 0): number {
    return this.#check("memfd_create", this.#c.memfd_create(cstr(name), flags));
  }
  fstat(fd: number): FileStat {
    const b = new Uint8Array(STAT_SIZE);
    this.#check("fstat", this.#c.fstat(fd, b));
    return decodeStat(b);
  }
  stat(path: string): FileStat {
    const b = new Uint8Array(STAT_SIZE);
    this.#check("stat", this.#c.stat(cstr(path), b), path);
    return decodeStat(b);
  }
  rename(from: string, to: string): void {
    this.#check("rename", this.#c.rename(cstr(from), cstr(to)), `${from} -> ${to}`);
  }
  exchange(a: string, b: string): void {
    const AT_FDCWD = -100, RENAME_EXCHANGE = 2;
    this.#check("renameat2", this.#c.renameat2(AT_FDCWD, cstr(a), AT_FDCWD, cstr(b), RENAME_EXCHANGE), `${a} <-> ${b}`);
  }
  unlink(path: string): void {
    this.#check("unlink", this.#c.unlink(cstr(path)), path);
  }
  mkdir(path: string, mode = 0o755): void {
    this.#check("mkdir", this.#c.mkdir(cstr(path), mode), path);
  }
  rmdir(path: string): void {
    this.#check("rmdir", this.#c.rmdir(cstr(path)), path);
  }
  readlink(path: string): string {
    const b = new Uint8Array(4096);
    const n = this.#check("readlink", Number(this.#c.readlink(cstr(path), b, BigInt(b.length))), path);
    return decoder.decode(b.subarray(0, n));
  }
  readdir(path: string): string[] {
    const dir = this.#c.opendir(cstr(path));
    if (dir === null) throw new SysError("opendir", this.errno(), path);
    const names: string[] = [];
    try {
      for (;;) {
        const ent = this.#c.readdir(dir);
        if (ent === null) break;
        const name = new Deno.UnsafePointerView(ent).getCString(DIRENT_NAME_OFF);
        if (name !== "." && name !== "..") names.push(name);
      }
    } finally {
      this.#c.closedir(dir);
    }
    return names.sort();
  }
  getenv(name: string): string | undefined {
    const p = this.#c.getenv(cstr(name));
    return p === null ? undefined : readCString(p);
  }
  getpid(): number {
    return this.#c.getpid();
  }
  isatty(fd: number): boolean {
    return this.#c.isatty(fd) === 1;
  }
  poll(fds: readonly PollFd[], timeoutMs: number): number[] {
    const b = new Uint8Array(Math.max(1, fds.length) * POLLFD_SIZE);
    const v = new DataView(b.buffer);
    fds.forEach((p, i) => {
      v.setInt32(i * POLLFD_SIZE, p.fd, true);
      v.setInt16(i * POLLFD_SIZE + 4, p.events, true);
    });
    this.#check("poll", this.#c.poll(b, BigInt(fds.length), Math.max(-1, Math.floor(timeoutMs))));
    return fds.map((_, i) => v.getUint16(i * POLLFD_SIZE + 6, true));
  }
  pidfdOpen(pid: number): number {
    return this.#check("pidfd_open", Number(this.#c.syscall3(SYS_PIDFD_OPEN, BigInt(pid), 0n, 0n)), `pid ${pid}`);
  }
  pidfdGetfd(pidfd: number, targetFd: number): number {
    return this.#check(
      "pidfd_getfd",
      Number(this.#c.syscall3(SYS_PIDFD_GETFD, BigInt(pidfd), BigInt(targetFd), 0n)),
      `fd ${targetFd}`,
    );
  }
}

class LibcMapping implements Mapping {
  constructor(readonly pointer: Deno.PointerObject, readonly bytes: Uint8Array) {}
  get length(): number {
    return this.bytes.byteLength;
  }
}

let shared: LibcSys | undefined;

/** The process-wide libc binding (loaded on first use). */
export function libc(): LibcSys {
  return shared ??= new LibcSys();
}
