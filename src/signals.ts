// SIGINT and SIGTERM for the whole process, dispatched to whoever claims them now.
//
// Deno runs a signal listener on a later turn of the event loop than the one the signal
// came in, and a signal caught while a listener was bound but dispatched after it was
// removed is dropped: the process neither handles it nor dies (tests/signal_dispatch_test.ts).
// With listeners added and removed per operation, a Ctrl-C at the end of one, or while
// a command is starting, could go nowhere. So the listeners stay bound while anyone may
// want a signal, and each signal goes to the newest claim, or to the fallback the
// command line sets for its whole run.

const SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

type Handler = (sig: Deno.Signal) => void;

const claims: Handler[] = [];
let fallback: Handler | null = null;
let bound: [Deno.Signal, () => void][] | null = null;

function bind(): void {
  if (bound) return;
  bound = [];
  for (const sig of SIGNALS) {
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
 * For the whole run of the command line: what a SIGINT or SIGTERM does when nothing
 * claims it (claimSignals). Binds the listeners now, for good.
 */
export function onUnclaimedSignal(fn: Handler): void {
  fallback = fn;
  bind();
}

/** Takes the fallback back: with no claim left, the process has the default action again. */
export function dropUnclaimedSignal(): void {
  fallback = null;
  unbindIfIdle();
}

/**
 * `fn` gets every SIGINT and SIGTERM until the returned release is called (the newest
 * claim wins). Without a fallback, releasing the last claim unbinds the listeners, so a
 * library caller's process gets the default action back.
 */
export function claimSignals(fn: Handler): () => void {
  claims.push(fn);
  bind();
  return () => {
    const i = claims.lastIndexOf(fn);
    if (i >= 0) claims.splice(i, 1);
    unbindIfIdle();
  };
}
