// How the command line starts: never with a way into Deno's inspector.
//
// Deno >= 2.9.2 (denoland/deno#35738) starts its inspector, unauthenticated, on
// 127.0.0.1:9229 when the process gets SIGUSR1: anyone on the machine who connects can
// evaluate code in the process, and vfio-mig runs as root with --allow-ffi. Deno installs
// that handler on an event-loop turn some 500 ms after start (here; before the first
// statement of cli.ts in a slow guest), over a program's own listener and over a SIG_IGN
// set through FFI. What keeps it shut is a SIGUSR1 blocked in the signal mask the process
// got at exec: Deno's threads inherit the mask, none unblocks it, so the signal stays
// pending and nothing runs (tests/cli/security_test.ts).
//
// So the command line makes sure it runs with SIGUSR1 blocked: bin/vfio-mig (perl) blocks
// it before it execs deno; `deno run cli.ts` started any other way re-executes itself
// once (the same /proc/self/exe, the same argv) with SIGUSR1 blocked, before it loads
// anything else. Signals are per-thread masks: pthread_sigmask on this (the main) thread
// and execve from it is what the new image inherits (signal(7), execve(2)).
//
// The same exec sets SIGUSR2 to SIG_IGN (kept across execve), so a SIGUSR2 sent while the
// new process starts is not its default kill; cli.ts's listener replaces it at once.
// Children started by Deno.Command (Rust's std) and ffi/process.ts spawn begin with an
// empty mask, so nothing the tool runs inherits the block.
//
// This module imports nothing and is cli.ts's first import: a library that imports
// mod.ts never runs it, and the host program's signals stay its own.

const SIG_BLOCK = 0;
const SIG_SETMASK = 2;
const SIGUSR1 = 10;
const SIGUSR2 = 12;
const SIGHUP = 1;
const SIGACTION_SIZE = 152; // glibc struct sigaction (x86_64, aarch64): sa_handler first
const SIGSET_SIZE = 128; // glibc sigset_t
/** Set in the environment of the re-executed process (and removed by it at once): a second re-exec is a bug. */
const MARK = "VFIO_MIG_REEXEC";

const symbols = {
  pthread_sigmask: { parameters: ["i32", "buffer", "buffer"], result: "i32" }, // int pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
  sigemptyset: { parameters: ["buffer"], result: "i32" }, // int sigemptyset(sigset_t *set)
  sigaddset: { parameters: ["buffer", "i32"], result: "i32" }, // int sigaddset(sigset_t *set, int signo)
  sigismember: { parameters: ["buffer", "i32"], result: "i32" }, // int sigismember(const sigset_t *set, int signo)
  signal: { parameters: ["i32", "pointer"], result: "pointer" }, // sighandler_t signal(int sig, sighandler_t handler)
  sigaction: { parameters: ["i32", "pointer", "buffer"], result: "i32" }, // int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
  open: { parameters: ["buffer", "i32"], result: "i32" }, // int open(const char *path, int flags)
  read: { parameters: ["i32", "buffer", "usize"], result: "i64" }, // ssize_t read(int fd, void *buf, size_t n)
  close: { parameters: ["i32"], result: "i32" }, // int close(int fd)
  getenv: { parameters: ["buffer"], result: "pointer" }, // char *getenv(const char *name)
  setenv: { parameters: ["buffer", "buffer", "i32"], result: "i32" }, // int setenv(const char *name, const char *value, int overwrite)
  unsetenv: { parameters: ["buffer"], result: "i32" }, // int unsetenv(const char *name)
  execv: { parameters: ["buffer", "buffer"], result: "i32" }, // int execv(const char *path, char *const argv[])
  __errno_location: { parameters: [], result: "pointer" }, // int *__errno_location(void)
} as const satisfies Deno.ForeignLibraryInterface;

type Libc = Deno.DynamicLibrary<typeof symbols>["symbols"];

/**
 * libc with each symbol bound on its first use: Deno compiles a call stub for every
 * symbol a dlopen names (measured here: ~10 ms for the first, then ~0.5 ms each), and a
 * start with SIGUSR1 already blocked uses 5 of these 14. Throws what Deno.dlopen throws.
 */
function lazyLibc(): Libc {
  const bound: Partial<Libc> = {};
  return new Proxy(bound as Libc, {
    get: (_, name) =>
      (bound as Record<string | symbol, unknown>)[name] ??= Deno.dlopen("libc.so.6", {
        [name]: symbols[name as keyof typeof symbols],
      }).symbols[name as keyof typeof symbols],
  });
}

const encoder = new TextEncoder();
const cstr = (s: string): Uint8Array<ArrayBuffer> => encoder.encode(s + "\0") as Uint8Array<ArrayBuffer>;

let hupIgnored: boolean | null = null;

/**
 * Whether SIGHUP was SIG_IGN when this process started (nohup), as runWithoutInspectorSignal
 * read it before anything else ran; null when it did not run or could not read it. Read
 * there because Deno, some 500 ms after start, replaces a SIG_IGN with its own handler
 * (src/signals.ts keeps the signal ignored), after which proc(5)'s SigIgn no longer shows it.
 */
export function hupIgnoredAtStart(): boolean | null {
  return hupIgnored;
}

/** How this process stands against SIGUSR1. */
export type Guard =
  /** SIGUSR1 was blocked at exec (bin/vfio-mig, or after the re-exec): the inspector cannot start. */
  | { kind: "blocked" }
  /** No --allow-ffi: nothing could be checked or changed (the commands that touch a device need it anyway). */
  | { kind: "no-ffi" }
  /** The re-exec failed (the message says why); the process runs on unprotected. */
  | { kind: "failed"; message: string };

/**
 * Makes sure this process runs with SIGUSR1 blocked in the mask it got at exec: returns
 * at once when it is (or when --allow-ffi is not granted: nothing can be done, said in the
 * result); else blocks SIGUSR1, sets SIGUSR2 to SIG_IGN and replaces the process with a
 * new run of /proc/self/exe with the same argv (read from /proc/self/cmdline) and
 * environment: it does not return then. Call it first, before any other module loads;
 * stdin is not read and every inherited descriptor stays (Deno's own are FD_CLOEXEC).
 * Returns "failed" when the exec could not be done (the mask is restored). Never throws.
 * Sources: signal(7) and execve(2) (mask and SIG_IGN survive exec), pthread_sigmask(3).
 */
export function runWithoutInspectorSignal(): Guard {
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return { kind: "no-ffi" };
  } catch {
    return { kind: "no-ffi" };
  }
  let c: Libc;
  try {
    c = lazyLibc();
    c.sigaction; // loads libc.so.6 now: a failure is reported here
  } catch (e) {
    return { kind: "failed", message: `cannot load libc.so.6: ${e instanceof Error ? e.message : e}` };
  }
  const errno = () => new Deno.UnsafePointerView(c.__errno_location()!).getInt32(0);
  const action = new Uint8Array(SIGACTION_SIZE);
  if (c.sigaction(SIGHUP, null, action) === 0) {
    hupIgnored = new DataView(action.buffer).getBigUint64(0, true) === 1n; // SIG_IGN
  }
  const old = new Uint8Array(SIGSET_SIZE);
  if (c.pthread_sigmask(SIG_BLOCK, null, old) !== 0) return { kind: "failed", message: "pthread_sigmask failed" };
  const marked = c.getenv(cstr(MARK)) !== null;
  if (marked) c.unsetenv(cstr(MARK)); // not passed on to what the tool starts
  if (c.sigismember(old, SIGUSR1) === 1) return { kind: "blocked" };
  if (marked) return { kind: "failed", message: "SIGUSR1 was unblocked again after the re-exec" };

  const argv = readCmdline(c);
  if (typeof argv === "string") return { kind: "failed", message: argv };
  const set = new Uint8Array(SIGSET_SIZE);
  c.sigemptyset(set);
  c.sigaddset(set, SIGUSR1);
  const usr2 = c.signal(SIGUSR2, Deno.UnsafePointer.create(1n)); // SIG_IGN
  c.pthread_sigmask(SIG_BLOCK, set, null);
  c.setenv(cstr(MARK), cstr("1"), 1);
  const ptrs = new BigUint64Array(argv.length + 1);
  argv.forEach((b, i) => ptrs[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b))));
  c.execv(cstr("/proc/self/exe"), new Uint8Array(ptrs.buffer));
  // Still here: the exec failed. Put back what was changed.
  const e = errno();
  c.unsetenv(cstr(MARK));
  c.pthread_sigmask(SIG_SETMASK, old, null);
  c.signal(SIGUSR2, usr2);
  return { kind: "failed", message: `execv /proc/self/exe failed (errno ${e})` };
}

/** argv of this process, from /proc/self/cmdline: each argument's bytes with its NUL (as execv takes them), or why not. */
function readCmdline(c: Libc): Uint8Array<ArrayBuffer>[] | string {
  const fd = c.open(cstr("/proc/self/cmdline"), 0x80000 /* O_RDONLY | O_CLOEXEC */);
  if (fd < 0) return "cannot open /proc/self/cmdline";
  let all = new Uint8Array(0);
  try {
    for (;;) {
      const b = new Uint8Array(65536);
      const n = Number(c.read(fd, b, BigInt(b.length)));
      if (n < 0) return "cannot read /proc/self/cmdline";
      if (n === 0) break;
      const grown = new Uint8Array(all.length + n);
      grown.set(all);
      grown.set(b.subarray(0, n), all.length);
      all = grown;
    }
  } finally {
    c.close(fd);
  }
  const argv: Uint8Array<ArrayBuffer>[] = [];
  for (let at = 0; at < all.length;) {
    const end = all.indexOf(0, at);
    const stop = end < 0 ? all.length : end;
    const arg = new Uint8Array(stop - at + 1); // zeroed: the NUL is there
    arg.set(all.subarray(at, stop));
    argv.push(arg);
    at = stop + 1;
  }
  return argv.length > 0 ? argv : "/proc/self/cmdline is empty";
}
