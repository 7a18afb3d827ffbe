// Starting and waiting for a child process through libc, so that handing a device fd
// to a command (`load --exec`) needs no --allow-run: posix_spawnp(3) starts it with every
// fd that lacks FD_CLOEXEC, and waitpid(2) collects it. The wait runs on a Deno
// worker thread (a nonblocking FFI call), so timers and signal listeners keep running
// meanwhile; errno is per thread, so a failed wait is re-asked synchronously (WNOHANG)
// on this thread to learn why.

import { SysError } from "./errno.ts";
import { libc } from "./libc.ts";

const symbols = {
  posix_spawnp: { parameters: ["buffer", "buffer", "pointer", "buffer", "buffer", "buffer"], result: "i32" }, // int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
  posix_spawnattr_init: { parameters: ["buffer"], result: "i32" }, // int posix_spawnattr_init(posix_spawnattr_t *attr)
  posix_spawnattr_destroy: { parameters: ["buffer"], result: "i32" }, // int posix_spawnattr_destroy(posix_spawnattr_t *attr)
  posix_spawnattr_setflags: { parameters: ["buffer", "i16"], result: "i32" }, // int posix_spawnattr_setflags(posix_spawnattr_t *attr, short flags)
  posix_spawnattr_setsigmask: { parameters: ["buffer", "buffer"], result: "i32" }, // int posix_spawnattr_setsigmask(posix_spawnattr_t *attr, const sigset_t *mask)
  posix_spawnattr_setsigdefault: { parameters: ["buffer", "buffer"], result: "i32" }, // int posix_spawnattr_setsigdefault(posix_spawnattr_t *attr, const sigset_t *sigs)
  sigemptyset: { parameters: ["buffer"], result: "i32" }, // int sigemptyset(sigset_t *set)
  sigaddset: { parameters: ["buffer", "i32"], result: "i32" }, // int sigaddset(sigset_t *set, int signo)
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" }, // pid_t waitpid(pid_t pid, int *status, int options)
  waitpid_async: { name: "waitpid", parameters: ["i32", "buffer", "i32"], result: "i32", nonblocking: true }, // the same, on a worker thread
  kill: { parameters: ["i32", "i32"], result: "i32" }, // int kill(pid_t pid, int sig)
  __errno_location: { parameters: [], result: "pointer" }, // int *__errno_location(void)
  environ: { type: "pointer" }, // extern char **environ (the symbol's address)
} as const satisfies Deno.ForeignLibraryInterface;

type Lib = Deno.DynamicLibrary<typeof symbols>["symbols"];

let lib: Lib | undefined;
function c(): Lib {
  // The same C library as ffi/libc.ts (VFIO_MIG_LIBC); loading that one first also gives
  // its clear error when --allow-ffi is missing.
  return lib ??= Deno.dlopen(libc().getenv("VFIO_MIG_LIBC") || "libc.so.6", symbols).symbols;
}

// glibc x86_64 / aarch64 sizes: posix_spawnattr_t 336 bytes, sigset_t 128 bytes.
const SPAWNATTR_SIZE = 336;
const SIGSET_SIZE = 128;
const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const WNOHANG = 1;
/** Signals a runtime may ignore (SIGPIPE: Rust's std sets it to SIG_IGN) that a child must start with by default. */
const DEFAULT_SIGNALS = [1, /* SIGHUP */ 2, /* SIGINT */ 3, /* SIGQUIT */ 13, /* SIGPIPE */ 15 /* SIGTERM */];

const encoder = new TextEncoder();

function cstr(s: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(s + "\0") as Uint8Array<ArrayBuffer>;
}

/** A NULL-terminated char *[] over the strings (the buffers are returned to keep them alive). */
function cstrArray(items: string[]): { array: Uint8Array<ArrayBuffer>; keep: Uint8Array[] } {
  const keep = items.map(cstr);
  const ptrs = new BigUint64Array(items.length + 1);
  keep.forEach((b, i) => ptrs[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b as BufferSource))));
  return { array: new Uint8Array(ptrs.buffer), keep };
}

function errno(): number {
  return new Deno.UnsafePointerView(c().__errno_location()!).getInt32(0);
}

/** This process's environment (libc's `environ`: what getenv reads, Deno.env changes included). */
export function environment(): string[] {
  const at = c().environ as unknown as Deno.PointerObject;
  const arr = new Deno.UnsafePointerView(at).getPointer(0);
  if (arr === null) return [];
  const view = new Deno.UnsafePointerView(arr);
  const out: string[] = [];
  for (let i = 0;; i++) {
    const p = view.getPointer(i * 8);
    if (p === null) break;
    out.push(new Deno.UnsafePointerView(p).getCString());
  }
  return out;
}

/**
 * Starts `argv[0]` (looked up in PATH, posix_spawnp(3)) with `argv` and `env`
 * ("NAME=value" strings). The child inherits every fd without FD_CLOEXEC, starts with
 * no blocked signals and SIGHUP/SIGINT/SIGQUIT/SIGPIPE/SIGTERM at their default action,
 * and stays in our process group (a terminal's Ctrl-C reaches it). Returns its pid.
 * Throws SysError("posix_spawnp") with the errno (ENOENT: no such command; EACCES).
 */
export function spawn(argv: string[], env: string[]): number {
  if (argv.length === 0) throw new TypeError("spawn: empty argv");
  const attr = new Uint8Array(SPAWNATTR_SIZE);
  const mask = new Uint8Array(SIGSET_SIZE);
  const defaults = new Uint8Array(SIGSET_SIZE);
  const lib = c();
  let r = lib.posix_spawnattr_init(attr);
  if (r !== 0) throw new SysError("posix_spawnattr_init", r);
  try {
    lib.sigemptyset(mask);
    lib.sigemptyset(defaults);
    for (const s of DEFAULT_SIGNALS) lib.sigaddset(defaults, s);
    lib.posix_spawnattr_setsigmask(attr, mask);
    lib.posix_spawnattr_setsigdefault(attr, defaults);
    lib.posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    const pid = new Int32Array(1);
    const a = cstrArray(argv), e = cstrArray(env);
    r = lib.posix_spawnp(new Uint8Array(pid.buffer), cstr(argv[0]), null, attr, a.array, e.array);
    if (r !== 0) throw new SysError("posix_spawnp", r, argv[0]);
    void a.keep, e.keep; // alive until here
    return pid[0];
  } finally {
    lib.posix_spawnattr_destroy(attr);
  }
}

/** How a child ended: its exit code, or the signal that killed it. */
export interface ChildExit {
  code: number | null;
  signal: number | null;
}

function decodeStatus(status: number): ChildExit {
  const sig = status & 0x7f;
  return sig === 0 ? { code: (status >> 8) & 0xff, signal: null } : { code: null, signal: sig };
}

/**
 * Waits for child `pid` to end (waitpid(2) on a worker thread) and reaps it. Throws
 * SysError("waitpid") (ECHILD: not our child, or already reaped).
 */
export async function waitChild(pid: number): Promise<ChildExit> {
  const status = new Int32Array(1);
  const buf = new Uint8Array(status.buffer);
  for (;;) {
    const r = await c().waitpid_async(pid, buf, 0);
    if (r === pid) return decodeStatus(status[0]);
    // -1 on the worker thread (its errno is not ours to read): ask again here without blocking.
    const again = c().waitpid(pid, buf, WNOHANG);
    if (again === pid) return decodeStatus(status[0]);
    if (again < 0) {
      const e = errno();
      if (e !== 4 /* EINTR */) throw new SysError("waitpid", e, `pid ${pid}`);
    }
  }
}

/** kill(2): sends signal `sig` (a number) to `pid`. Throws SysError("kill"). */
export function sendSignal(pid: number, sig: number): void {
  if (c().kill(pid, sig) < 0) throw new SysError("kill", errno(), `pid ${pid}`);
}
