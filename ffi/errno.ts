// Linux errno values (x86_64 / arm64 / riscv: asm-generic/errno-base.h and errno.h)
// and the one error type every failing syscall becomes.

export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENOMSG: 42,
  ENODATA: 61,
  EOVERFLOW: 75,
  EBADFD: 77,
  ENOTSUP: 95,
  EADDRINUSE: 98,
  ECONNRESET: 104,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  ECANCELED: 125,
} as const;

export type ErrnoName = keyof typeof Errno;

const NAMES = new Map<number, string>(
  Object.entries(Errno).map(([name, value]) => [value, name]),
);

// glibc's strerror texts for the values above, so messages read the same with the
// libc binding and the simulator (which never calls strerror).
const MESSAGES: Record<string, string> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  ESRCH: "No such process",
  EINTR: "Interrupted system call",
  EIO: "Input/output error",
  ENXIO: "No such device or address",
  E2BIG: "Argument list too long",
  ENOEXEC: "Exec format error",
  EBADF: "Bad file descriptor",
  ECHILD: "No child processes",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EFAULT: "Bad address",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  EXDEV: "Invalid cross-device link",
  ENODEV: "No such device",
  ENOTDIR: "Not a directory",
  EISDIR: "Is a directory",
  EINVAL: "Invalid argument",
  ENFILE: "Too many open files in system",
  EMFILE: "Too many open files",
  ENOTTY: "Inappropriate ioctl for device",
  EFBIG: "File too large",
  ENOSPC: "No space left on device",
  ESPIPE: "Illegal seek",
  EROFS: "Read-only file system",
  EPIPE: "Broken pipe",
  ERANGE: "Numerical result out of range",
  EDEADLK: "Resource deadlock avoided",
  ENAMETOOLONG: "File name too long",
  ENOSYS: "Function not implemented",
  ENOTEMPTY: "Directory not empty",
  ELOOP: "Too many levels of symbolic links",
  ENOMSG: "No message of desired type",
  ENODATA: "No data available",
  EOVERFLOW: "Value too large for defined data type",
  EBADFD: "File descriptor in bad state",
  ENOTSUP: "Operation not supported",
  EADDRINUSE: "Address already in use",
  ECONNRESET: "Connection reset by peer",
  ETIMEDOUT: "Connection timed out",
  ECONNREFUSED: "Connection refused",
  ECANCELED: "Operation canceled",
};

export function errnoName(errno: number): string {
  return NAMES.get(errno) ?? `E${errno}`;
}

export function errnoMessage(errno: number): string {
  return MESSAGES[errnoName(errno)] ?? `Unknown error ${errno}`;
}

/** A failed system call: which operation, the errno and its name. */
export class SysError extends Error {
  readonly op: string;
  readonly errno: number;
  readonly code: string;

  constructor(op: string, errno: number, detail?: string) {
    const code = errnoName(errno);
    super(`${op}${detail ? ` (${detail})` : ""}: ${code} (${errnoMessage(errno)})`);
    this.name = "SysError";
    this.op = op;
    this.errno = errno;
    this.code = code;
  }

  is(name: ErrnoName): boolean {
    return this.errno === Errno[name];
  }
}

export function isErrno(e: unknown, name: ErrnoName): boolean {
  return e instanceof SysError && e.errno === Errno[name];
}
