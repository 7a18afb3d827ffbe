// The syscall layer every part of vfio-mig talks to. Two implementations:
// ffi/libc.ts (the real kernel, through Deno.dlopen) and src/sim/kernel.ts (a
// simulated VFIO kernel that forwards everything it does not simulate to libc).
// Every method throws SysError on failure; none returns -1.

export const O = {
  RDONLY: 0,
  WRONLY: 0o1,
  RDWR: 0o2,
  CREAT: 0o100,
  EXCL: 0o200,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DIRECTORY: 0o200000,
  CLOEXEC: 0o2000000,
} as const;

export const PROT = { READ: 1, WRITE: 2 } as const;
export const MAP = { SHARED: 1, PRIVATE: 2 } as const;
export const F = {
  GETFD: 1,
  SETFD: 2,
  GETFL: 3,
  SETFL: 4,
  /** F_DUPFD_CLOEXEC: a duplicate >= arg with FD_CLOEXEC set. */
  DUPFD_CLOEXEC: 1030,
  SETPIPE_SZ: 1031,
  GETPIPE_SZ: 1032,
} as const;
/** FD_CLOEXEC, the one fd flag (F_GETFD / F_SETFD). */
export const FD_CLOEXEC = 1;
export const SEEK = { SET: 0, CUR: 1, END: 2 } as const;
export const LOCK = { SH: 1, EX: 2, NB: 4, UN: 8 } as const;
/** poll(2) event bits (asm-generic/poll.h). */
export const POLL = { IN: 0x1, PRI: 0x2, OUT: 0x4, ERR: 0x8, HUP: 0x10, NVAL: 0x20, RDHUP: 0x2000 } as const;

/** One entry of a poll(2) set. */
export interface PollFd {
  fd: number;
  /** POLL.* bits to wait for. */
  events: number;
}

/** A mapping of a file or device region into our address space. */
export interface Mapping {
  /** A view over the mapped bytes; invalid after unmap. */
  readonly bytes: Uint8Array;
  readonly length: number;
}

/** The argument of ioctl: a buffer passed by pointer, or an integer passed by value. */
export type IoctlArg = Uint8Array | number | null;

export interface FileStat {
  mode: number;
  size: number;
  isDirectory: boolean;
  isCharDevice: boolean;
  isFifo: boolean;
  isRegular: boolean;
  isSocket: boolean;
}

export interface Sys {
  open(path: string, flags: number, mode?: number): number;
  close(fd: number): void;
  /** Returns the ioctl's non-negative result. */
  ioctl(fd: number, request: number, arg: IoctlArg): number;
  /** Returns bytes read; 0 is end of file. */
  read(fd: number, buf: Uint8Array): number;
  /** Returns bytes written (may be short). */
  write(fd: number, buf: Uint8Array): number;
  pread(fd: number, buf: Uint8Array, offset: number): number;
  pwrite(fd: number, buf: Uint8Array, offset: number): number;
  mmap(fd: number, length: number, prot: number, flags: number, offset: number): Mapping;
  munmap(map: Mapping): void;
  fcntl(fd: number, cmd: number, arg?: number): number;
  lseek(fd: number, offset: number, whence: number): number;
  ftruncate(fd: number, length: number): void;
  fsync(fd: number): void;
  flock(fd: number, op: number): void;
  pipe(flags?: number): [number, number];
  memfd(name: string, flags?: number): number;
  fstat(fd: number): FileStat;
  stat(path: string): FileStat;
  rename(from: string, to: string): void;
  /** Atomically swaps two paths (renameat2 RENAME_EXCHANGE). */
  exchange(a: string, b: string): void;
  unlink(path: string): void;
  mkdir(path: string, mode?: number): void;
  rmdir(path: string): void;
  readlink(path: string): string;
  readdir(path: string): string[];
  getenv(name: string): string | undefined;
  getpid(): number;
  isatty(fd: number): boolean;
  /**
   * poll(2): waits up to `timeoutMs` (0: do not wait) for the events; returns each
   * entry's revents (0: nothing), in order. EINTR is thrown like any error.
   */
  poll(fds: readonly PollFd[], timeoutMs: number): number[];
  /** pidfd_open(2) (Linux >= 5.3): a pidfd for `pid`, O_CLOEXEC. */
  pidfdOpen(pid: number): number;
  /**
   * pidfd_getfd(2) (Linux >= 5.6): a new fd (O_CLOEXEC) in this process referring to the
   * same open file as `targetFd` in the process of `pidfd`. Needs ptrace rights over it
   * (EPERM otherwise).
   */
  pidfdGetfd(pidfd: number, targetFd: number): number;
}
