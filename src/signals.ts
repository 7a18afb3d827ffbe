// The signals of the whole process, dispatched to whoever claims them now.
//
// Interrupts: SIGINT, SIGTERM and SIGHUP (a closed terminal or ssh session) end an
// operation the same way: the devices put in their documented states, no partial output,
// exit 130 (src/errors.ts). A SIGHUP ignored when the process started (nohup) stays
// ignored: the command line binds it to a listener that does nothing. SIGQUIT is left alone: its default action
// (a core dump) stays the hard quit that abandons everything at once.
//
// Switchover: SIGUSR2 asks a live save to leave pre-copy (SIGUSR1 is never used: Deno
// opens its inspector on it; src/launch.ts). The command line binds it for its whole
// run, so that its default action (a kill) never ends a migration half-way; when no
// live save claims it, it does nothing.
//
// Deno runs a signal listener on a later turn of the event loop than the one the signal
// came in, and a signal caught while a listener was bound but dispatched after it was
// removed is dropped: the process neither handles it nor dies (tests/cli/signal_dispatch_test.ts).
// With listeners added and removed per operation, a Ctrl-C at the end of one, or while
// a command is starting, could go nowhere. So the listeners stay bound while anyone may
// want a signal, and each signal goes to the newest claim, or to the fallback the
// command line sets for its whole run.
//
// A library that imports mod.ts binds nothing by itself: only an explicit
// Cancellation.install() (src/migrate/session.ts) claims the interrupts, for the life of
// one operation, and a live save's switchover is asked for with
// Cancellation.requestSwitchover(), not by a signal.

import { libc } from "../ffi/libc.ts";
import { readSmallFile } from "./io.ts";
import { hupIgnoredAtStart } from "./launch.ts";

/** The interrupts, in the order their listeners are bound. */
export const INTERRUPT_SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP"];
/** Asks a live save for the switchover (bound for the command line's whole run). */
export const SWITCHOVER_SIGNAL: Deno.Signal = "SIGUSR2";

const NUMBER: Partial<Record<Deno.Signal, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15, SIGUSR2: 12 };

type Handler = (sig: Deno.Signal) => void;

const claims: Handler[] = [];
let fallback: Handler | null = null;
let bound: [Deno.Signal, () => void][] | null = null;
let ignoredAtStart: Set<Deno.Signal> | null = null;

/**
 * The signals this process ignored when it started (SIG_IGN is kept across execve, so
 * `nohup` shows here): for SIGHUP as cli.ts's first statement read it (src/launch.ts),
 * else SigIgn of /proc/self/status now (proc(5); a library's first claim). Read once:
 * Deno replaces a SIG_IGN with its own handler some 500 ms after start (which goes on
 * ignoring the signal while no listener is bound). Empty when nothing can be read.
 */
export function signalsIgnoredAtStart(): ReadonlySet<Deno.Signal> {
  if (ignoredAtStart) return ignoredAtStart;
  ignoredAtStart = new Set();
  const hup = hupIgnoredAtStart();
  if (hup !== null) {
    if (hup) ignoredAtStart.add("SIGHUP");
    return ignoredAtStart;
  }
  try {
    const status = new TextDecoder().decode(readSmallFile(libc(), "/proc/self/status"));
    const hex = /^SigIgn:\s*([0-9a-f]+)$/m.exec(status)?.[1];
    if (hex) {
      const mask = BigInt("0x" + hex);
      for (const [sig, n] of Object.entries(NUMBER) as [Deno.Signal, number][]) {
        if ((mask >> BigInt(n - 1)) & 1n) ignoredAtStart.add(sig);
      }
    }
  } catch { /* no /proc or no --allow-ffi: treat none as ignored */ }
  return ignoredAtStart;
}

/** The interrupts this process listens for: INTERRUPT_SIGNALS less those ignored at start. */
export function interruptSignals(): Deno.Signal[] {
  const ignored = signalsIgnoredAtStart();
  return INTERRUPT_SIGNALS.filter((s) => !ignored.has(s));
}

function bind(): void {
  if (bound) return;
  bound = [];
  for (const sig of interruptSignals()) {
    const fn = () => (claims.at(-1) ?? fallback)?.(sig);
    try {
      Deno.addSignalListener(sig, fn);
      bound.push([sig, fn]);
    } catch { /* not supported here */ }
  }
}

function unbindIfIdle(): void {
  if (!bound || claims.length > 0 || fallback) return;
  for (const [sig, fn] of bound) {
    try {
      Deno.removeSignalListener(sig, fn);
    } catch { /* already gone */ }
  }
  bound = null;
}

/**
 * For the whole run of the command line: what an interrupt (SIGINT, SIGTERM, SIGHUP)
 * does when nothing claims it (claimSignals). Binds the listeners now, for good.
 */
export function onUnclaimedSignal(fn: Handler): void {
  keepIgnored();
  fallback = fn;
  bind();
}

let keptIgnored = false;

/**
 * An interrupt ignored at start (nohup's SIGHUP) gets a listener that does nothing, for
 * the process's life: Deno replaces the inherited SIG_IGN with its own handler, which
 * (measured on Deno 2.9.6, with other listeners bound) kills the process on SIGHUP
 * unless a listener takes it.
 */
function keepIgnored(): void {
  if (keptIgnored) return;
  keptIgnored = true;
  for (const sig of signalsIgnoredAtStart()) {
    if (!INTERRUPT_SIGNALS.includes(sig)) continue;
    try {
      Deno.addSignalListener(sig, () => {});
    } catch { /* not supported here */ }
  }
}

/** Takes the fallback back: with no claim left, the process has the default action again. */
export function dropUnclaimedSignal(): void {
  fallback = null;
  unbindIfIdle();
}

/**
 * `fn` gets every interrupt (SIGINT, SIGTERM, and SIGHUP unless it was ignored at
 * start) until the returned release is called (the newest claim wins). Without a
 * fallback, releasing the last claim unbinds the listeners, so a library caller's
 * process gets the default action back.
 */
export function claimSignals(fn: Handler): () => void {
  signalsIgnoredAtStart();
  claims.push(fn);
  bind();
  return () => {
    const i = claims.lastIndexOf(fn);
    if (i >= 0) claims.splice(i, 1);
    unbindIfIdle();
  };
}

const switchoverClaims: (() => void)[] = [];
let switchoverBound = false;

/**
 * The command line's: binds SIGUSR2 for the rest of the process's life. Each one goes to
 * the newest claimSwitchover; with none, it does nothing (never its default kill).
 */
export function holdSwitchoverSignal(): void {
  if (switchoverBound) return;
  try {
    Deno.addSignalListener(SWITCHOVER_SIGNAL, () => switchoverClaims.at(-1)?.());
    switchoverBound = true;
  } catch { /* not supported here */ }
}

/**
 * `fn` runs on each SIGUSR2 while claimed (the newest claim wins), if holdSwitchoverSignal
 * bound it; a library caller's process is never bound here. Returns the release.
 */
export function claimSwitchover(fn: () => void): () => void {
  switchoverClaims.push(fn);
  return () => {
    const i = switchoverClaims.lastIndexOf(fn);
    if (i >= 0) switchoverClaims.splice(i, 1);
  };
}
