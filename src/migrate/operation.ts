// One migration operation's life, around the work save.ts and load.ts do (QEMU's
// migration/migration.c around the device handlers: the state, the cancel, the
// notifiers, query-migrate's answer):
//
//   begin      the devices normalised (one or several; at least one), the sink or
//              source opened from a path, cancellation bound to what ends the I/O's
//              waits, the events owned when the caller brought none, every state
//              change of the devices told to the events
//   fail       any error, after a signal, becomes the signal's InterruptedError
//              (interruptedOr); each device's state read while it is still open
//              (failureReport reads it back for --json)
//   end        result or error told to the events the operation owns; unbound; a
//              source opened here closed
//
// and the failure object `--json` prints (failureReport), built here once for both.

import type { VfioDevice } from "../device/open.ts";
import { describeError, InterruptedError, StreamError, VfioMigError } from "../errors.ts";
import { type DeviceRef, Events } from "../events/events.ts";
import { formatDuration, ProgressBar, stderrOutput } from "../events/progress_bar.ts";
import { stateName } from "../vfio/state_machine.ts";
import { type Cancellation, formatBytes, observeDevices, onCancel, tryGetState } from "./session.ts";

export type OperationKind = "save" | "load";

/** The events of a library call that brought none: the progress bar alone, when asked for and on a terminal. */
export function ownEvents(progress: boolean, command: OperationKind, live = false): Events {
  const events = new Events();
  const bar = ProgressBar.forStderr(progress);
  if (bar) {
    events.on(bar);
    events.start({ command, mode: live ? "live" : "offline" });
  }
  return events;
}

/** One device, or several, as a list; a usage error (exit 2) when there is none. */
export function deviceList<T>(devices: T | readonly T[], command: OperationKind): T[] {
  const list = Array.isArray(devices) ? [...devices] : [devices as T];
  if (list.length === 0) throw new VfioMigError(`${command}: give at least one device`, "usage");
  return list;
}

/**
 * The error to report for `e` once a signal was caught: the signal (InterruptedError,
 * exit 130) when the signal is what ended the work (it closed a connection, ended a
 * wait), else `e` itself.
 */
export function interruptedOr(cancel: Cancellation, e: unknown): unknown {
  return cancel.signal && !(e instanceof InterruptedError) ? new InterruptedError(cancel.signal) : e;
}

/** Where one device was left when an operation failed (QEMU query-migrate: per device). */
export interface DeviceFailureState {
  index: number;
  device: string;
  /** Its migration state read back after the failure (RUNNING, STOP, ...); null: it could not be read. */
  state: string | null;
}

const statesAtFailure = new WeakMap<object, DeviceFailureState[]>();

/** Each device's state now (read with VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE / v1 device_state; never throws). */
export function deviceStates(devs: readonly VfioDevice[]): DeviceFailureState[] {
  return devs.map((d, index) => {
    const st = tryGetState(d);
    return { index, device: d.label, state: st === null ? null : stateName(st) };
  });
}

/** Remembers the devices' states with the error that ended the operation (for failureReport). */
export function noteFailureStates(e: unknown, devs: readonly VfioDevice[]): void {
  if (typeof e === "object" && e !== null && !statesAtFailure.has(e)) statesAtFailure.set(e, deviceStates(devs));
}

/** The devices' states recorded with this error (noteFailureStates), or null. */
export function failureStates(e: unknown): DeviceFailureState[] | null {
  return typeof e === "object" && e !== null ? statesAtFailure.get(e) ?? null : null;
}

/** What runOperation needs to know about the operation. */
export interface OperationSpec {
  command: OperationKind;
  devices: readonly VfioDevice[];
  cancel: Cancellation;
  /** The caller's events (it owns them); without, the operation makes its own (ownEvents). */
  events?: Events;
  progress?: boolean;
  live?: boolean;
  /** Ends every wait of the sink or source when a signal is caught (Sink.abort, StreamSource.interrupt). */
  interrupt: () => void;
  /** Devices' state changes are told to the events from the start (a load: only once its header matched). */
  observe?: boolean;
  /** Run at the very end (a source opened from a path is closed). */
  finally?: () => void;
}

/** What the work gets from runOperation. */
export interface OperationContext {
  events: Events;
  cancel: Cancellation;
  /** Starts telling the events of the devices' state changes (once; undone at the end). */
  observe(devs: readonly VfioDevice[]): void;
}

/**
 * Runs `work` as one operation (the steps at the top of this file). Returns its result;
 * throws its error, with every device's state remembered (failureStates).
 */
export async function runOperation<R extends object>(
  spec: OperationSpec,
  work: (ctx: OperationContext) => Promise<R>,
): Promise<R> {
  const owned = !spec.events;
  const events = spec.events ?? ownEvents(!!spec.progress, spec.command, !!spec.live);
  // A signal ends any wait of the output or input (a full pipe, a FIFO without a peer, a silent peer).
  const unbind = onCancel(spec.cancel, spec.interrupt);
  const undo: (() => void)[] = [];
  const ctx: OperationContext = {
    events,
    cancel: spec.cancel,
    observe(devs) {
      if (undo.length === 0) undo.push(observeDevices(devs, events));
    },
  };
  if (spec.observe) {
    events.devices(spec.devices.map((d, index) => ({ index, label: d.label })));
    ctx.observe(spec.devices);
  }
  try {
    const r = await work(ctx);
    if (owned) events.result(r);
    return r;
  } catch (e) {
    noteFailureStates(e, spec.devices);
    if (owned) events.error(e);
    throw e;
  } finally {
    for (const u of undo) u();
    unbind();
    spec.finally?.();
    if (owned) events.close();
  }
}

/** A device's DeviceRef in events. */
export const deviceRef = (u: { i: number; d: VfioDevice }): DeviceRef => ({ index: u.i, label: u.d.label });

/**
 * The JSON object `--json` prints when an operation fails, where its summary would have
 * gone (QEMU's query-migrate after a failure: status "failed", error-desc): the
 * command, `status` "failed", the one-line `error` the command line prints, its
 * `exitCode` and `kind` (usage, device, stream, failure, interrupted; `signal` for an
 * interrupt), for a damaged stream where (`stream`: byte offset and record number as
 * `inspect` lists them), and each device with the state it was left in (null: not
 * opened, or it could not be read). docs/tools.md, "--json on failure".
 */
export interface FailureReport {
  command: string;
  status: "failed";
  error: string;
  exitCode: number;
  kind: string;
  signal?: string;
  /** `authentication`: true when the stream failed --verify-key (src/stream/mac.ts StreamAuthError). */
  stream?: { offset: number | null; record: number | null; authentication?: true };
  devices: { index: number; device: string; state: string | null; opened: boolean }[];
}

/**
 * Builds the failure object for `e`. `labels`: every device the command was given (in
 * order; the label or the spec); `open`: those that were opened and are still open
 * (their state is read now when the operation did not record it).
 */
export function failureReport(
  command: string,
  e: unknown,
  labels: readonly string[],
  open: readonly VfioDevice[] = [],
): FailureReport {
  const { exitCode, kind, message } = describeError(e);
  const chain = causeChain(e);
  const recorded = chain.map(failureStates).find((x) => x !== null) ?? (open.length ? deviceStates(open) : []);
  const devices = labels.map((label, index) => {
    const r = recorded[index];
    return r
      ? { index, device: r.device, state: r.state, opened: true }
      : { index, device: label, state: null, opened: false };
  });
  const stream = chain.find((x): x is StreamError => x instanceof StreamError);
  const signal = chain.find((x): x is InterruptedError => x instanceof InterruptedError);
  return {
    command,
    status: "failed",
    error: message + (kind === "internal" ? " (set VFIO_MIG_DEBUG=1 for details)" : ""),
    exitCode,
    kind,
    ...(signal ? { signal: signal.signal } : {}),
    ...(stream
      ? {
        stream: {
          offset: stream.offset ?? null,
          record: stream.record ?? null,
          ...((stream as { authentication?: boolean }).authentication ? { authentication: true as const } : {}),
        },
      }
      : {}),
    devices,
  };
}

/** `e` and its causes, outermost first. */
function causeChain(e: unknown): unknown[] {
  const out: unknown[] = [];
  for (let x = e; x !== undefined && x !== null && out.length < 16; x = (x as { cause?: unknown }).cause) {
    out.push(x);
    if (typeof x !== "object") break;
  }
  return out;
}

/**
 * The line a whole-file check draws on a terminal (stderr), redrawn at most every
 * 100 ms: how far, of how much, the rate (the label last, so a narrow terminal cuts
 * it, not the figures); at the end, when the check passed, one line saying so (it
 * stays above what follows), else the line is cleared for the error. Nothing when
 * `enabled` is false, stderr is not a terminal, or the check took under 0.2 s.
 */
export function checkLine(label: string, total: number, enabled: boolean, why = " before loading"): {
  update: (bytes: number) => void;
  done: (ok: boolean) => void;
} {
  if (!enabled || !Deno.stderr.isTerminal()) return { update: () => {}, done: () => {} };
  const out = stderrOutput();
  const t0 = performance.now();
  let shown = false;
  return {
    update(bytes) {
      const s = (performance.now() - t0) / 1000;
      if (s < 0.2) return; // a small file: no line at all
      const pct = total > 0 ? Math.min(100, Math.floor((bytes / total) * 100)) : 100;
      const rate = s > 0 ? bytes / s : 0;
      const eta = rate > 0 ? formatDuration((total - bytes) / rate) : "?";
      const text = `vfio-mig: checking ${pct}% of ${formatBytes(total)}  ${formatBytes(rate)}/s  ${eta} left  ` +
        `${label}${why}`;
      out.write(`\r\x1b[K${text.slice(0, out.columns() - 1)}`);
      shown = true;
    },
    done(ok) {
      if (!shown) return;
      const s = ((performance.now() - t0) / 1000).toFixed(1);
      out.write(ok ? `\r\x1b[Kvfio-mig: checked ${label} whole: ${formatBytes(total)} intact in ${s}s\n` : "\r\x1b[K");
    },
  };
}

/** What a command knows, as it goes, for its failure object. */
export interface FailureScope {
  /** The devices it was given (labels or specs), once known. */
  labels: string[];
  /** Those open now (their state is read if the operation did not record it). */
  devices: VfioDevice[];
  /** The failure object goes to stderr (stdout carries the stream). */
  toStderr: boolean;
}

/**
 * Runs a command's work; on any failure with `json`, prints failureReport's object
 * (one JSON object, where the success summary would have gone) before the error goes
 * on to the one line on stderr and the exit code (cli.ts).
 */
export async function withFailureReport(
  command: OperationKind,
  json: boolean,
  scope: FailureScope,
  work: () => Promise<number>,
): Promise<number> {
  try {
    return await work();
  } catch (e) {
    if (json) {
      const text = JSON.stringify(failureReport(command, e, scope.labels, scope.devices), null, 2);
      try {
        if (scope.toStderr) console.error(text);
        else console.log(text);
      } catch { /* a closed output: the exit code still says it */ }
    }
    throw e;
  }
}
