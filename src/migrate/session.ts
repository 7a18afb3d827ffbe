// What save and load share: cancellation on SIGINT/SIGTERM/SIGHUP and the switchover
// request (SIGUSR2), the devices' state changes told to the events, the stream identity
// of a device, and putting a device back in a safe state.

import { SysError } from "../../ffi/errno.ts";
import type { VfioDevice } from "../device/open.ts";
import { InterruptedError, VfioMigError } from "../errors.ts";
import { nextTurn } from "../io.ts";
import { claimSignals, claimSwitchover } from "../signals.ts";
import { DeviceState, stateName } from "../vfio/state_machine.ts";
import type { StateObserver } from "../vfio/v2.ts";
import type { Events } from "../events/events.ts";
import { observeV1 } from "./protocol.ts";
import type { StreamIdentity } from "../stream/format.ts";

/**
 * An operation's interruption and switchover requests: set by signal listeners once
 * install()ed (the command line does), or by a library caller itself (requestSwitchover()
 * asks a live save to leave pre-copy; no signal is bound then). Checked between chunks
 * (the data path is synchronous).
 */
export class Cancellation {
  signal: string | null = null;
  /** A live save should leave pre-copy at its next decision (SIGUSR2, or requestSwitchover). */
  switchoverRequested = false;
  /**
   * What the operation does once interrupted, for the line a second signal prints (the
   * operation may set a more precise phrase while it puts its devices back).
   */
  stopping = "putting the devices back in their documented states";
  #last = 0;
  #release: (() => void) | null = null;
  #releaseSwitchover: (() => void) | null = null;
  readonly #switchoverListeners = new Set<() => void>();
  readonly #abort = new AbortController();

  /** Aborted (reason: an InterruptedError) when a signal comes: for waits that are not between chunks (network). */
  get abortSignal(): AbortSignal {
    return this.#abort.signal;
  }

  /**
   * Catches the interrupts (SIGINT, SIGTERM, SIGHUP) and the switchover signal (SIGUSR2)
   * for the life of an operation (src/signals.ts). A second interrupt does not cut the
   * cleanup short: it prints one line saying what the cleanup does and what a SIGKILL
   * would leave.
   */
  install(): this {
    this.#release ??= claimSignals((sig) => {
      if (this.signal) {
        stderrLine(
          `vfio-mig: ${sig} again: still ${this.stopping} after ${this.signal}; a SIGKILL now abandons that and ` +
            "leaves each device as it is (mid-migration: STOP_COPY, PRE_COPY or RESUMING; then 'vfio-mig reset')",
        );
        return;
      }
      this.signal = sig;
      if (!this.#abort.signal.aborted) this.#abort.abort(new InterruptedError(sig));
    });
    this.#releaseSwitchover ??= claimSwitchover(() => this.requestSwitchover());
    return this;
  }

  uninstall(): void {
    this.#release?.();
    this.#release = null;
    this.#releaseSwitchover?.();
    this.#releaseSwitchover = null;
  }

  /** Asks a live save to switch over (leave pre-copy) at its next decision; does nothing elsewhere. */
  requestSwitchover(): void {
    this.switchoverRequested = true;
    for (const fn of [...this.#switchoverListeners]) fn();
  }

  /**
   * `fn` runs on each switchover request from now on, and at once if one already came
   * (before pre-copy started, say). Returns the unbinding.
   */
  onSwitchover(fn: () => void): () => void {
    this.#switchoverListeners.add(fn);
    if (this.switchoverRequested) fn();
    return () => this.#switchoverListeners.delete(fn);
  }

  /** Throws if a signal came. */
  check(): void {
    if (this.signal) throw new InterruptedError(this.signal);
  }

  /** Lets signal listeners run (a turn of the event loop at most every 20 ms), then checks. */
  async checkpoint(): Promise<void> {
    const now = performance.now();
    if (now - this.#last >= 20) {
      this.#last = now;
      await nextTurn();
    }
    this.check();
  }
}

/** One line on stderr, if it can be written (a hung-up terminal gives EIO: the line is lost, nothing else changes). */
function stderrLine(line: string): void {
  try {
    console.error(line);
  } catch { /* stderr is gone */ }
}

/**
 * Runs `fn` once when a signal is caught (or at once if one already was): what ends a
 * transport's waits (Sink.abort, StreamSource.interrupt). Returns the unbinding.
 */
export function onCancel(cancel: Cancellation, fn: () => void): () => void {
  const s = cancel.abortSignal;
  if (s.aborted) {
    fn();
    return () => {};
  }
  s.addEventListener("abort", fn, { once: true });
  return () => s.removeEventListener("abort", fn);
}

/**
 * Tells `events` of every state change the tool makes on these devices (v2 SETs, v1
 * device_state writes, resets), each with its index in the stream, and routes the
 * protocol layer's warnings through it (so a progress bar is cleared first). Returns
 * the undoing.
 */
export function observeDevices(devs: readonly VfioDevice[], events: Events): () => void {
  const hooked: { observer: StateObserver | null }[] = [];
  const v1Hooked: VfioDevice[] = [];
  devs.forEach((d, index) => {
    const dev = { index, label: d.label };
    const v2: StateObserver = {
      stateChange: (c) => events.stateChange(dev, "v2", c.from, c.to, c.ms, { reset: c.reset, error: c.error }),
      warn: (line) => {
        events.note(line.replace(/^vfio-mig: (warning: )?/, ""), "warning", dev);
        console.error(line);
      },
    };
    const v1: StateObserver = {
      stateChange: (c) =>
        events.stateChange(dev, "v1", c.from, c.to, c.ms, { bits: c.bits, reset: c.reset, error: c.error }),
      warn: v2.warn,
    };
    d.migration.observer = v2;
    hooked.push(d.migration);
    observeV1(d, v1);
    v1Hooked.push(d);
  });
  return () => {
    for (const h of hooked) h.observer = null;
    for (const d of v1Hooked) observeV1(d, null);
  };
}

/** "512 B", "14.1 MiB", "1.50 GiB": the one byte formatter (src/units.ts). */
export { fmtBytes as formatBytes } from "../units.ts";

export function streamIdentity(d: VfioDevice): StreamIdentity {
  return {
    kind: d.info.kind,
    driver: d.info.driver,
    mdevType: d.info.mdevType,
    vendor: d.info.pci?.vendor ?? null,
    device: d.info.pci?.device ?? null,
    subsystemVendor: d.info.pci?.subsystemVendor ?? null,
    subsystemDevice: d.info.pci?.subsystemDevice ?? null,
    ...(d.info.model ? { model: d.info.model } : {}),
  };
}

/** Reads the device state without failing: null when even GET fails. */
export function tryGetState(d: VfioDevice): DeviceState | null {
  try {
    return d.migration.getState();
  } catch {
    return null;
  }
}

/**
 * Brings a device to `target` after a failure: ERROR (or a GET that fails) is
 * recovered by VFIO_DEVICE_RESET, which leaves it RUNNING. Returns a phrase saying
 * where the device is left.
 */
export function recoverDevice(d: VfioDevice, target: DeviceState, resetFirst = false): string {
  let state = tryGetState(d);
  if (!resetFirst && state !== null && state !== DeviceState.ERROR) {
    if (state === target) return `${d.label} is ${stateName(state)}`;
    try {
      d.migration.setState(target, state);
      state = tryGetState(d);
      if (state === target) return `${d.label} is ${stateName(state)}`;
    } catch { /* fall through to reset */ }
  }
  try {
    d.migration.reset();
  } catch (e) {
    const st = tryGetState(d);
    return `${d.label} could not be reset (${e instanceof SysError ? e.code : e}) and is ${
      st === null ? "in an unknown state" : stateName(st)
    }`;
  }
  state = tryGetState(d);
  if (state !== null && state !== target && target !== DeviceState.RUNNING && state !== DeviceState.ERROR) {
    try {
      d.migration.setState(target, state);
      state = tryGetState(d);
    } catch { /* report what it is */ }
  }
  return `${d.label} was reset and is ${state === null ? "in an unknown state" : stateName(state)}`;
}

/** Wraps a cause into one line with the device's final state. */
export function failure(what: string, cause: unknown, where: string): VfioMigError {
  const kind = cause instanceof VfioMigError ? cause.kind : "failure";
  const msg = cause instanceof Error ? cause.message : String(cause);
  return new VfioMigError(`${what}: ${msg}; ${where}`, kind, { cause });
}

/**
 * A testing aid: with VFIO_MIG_PAUSE_AT=PHASE the operation stops at the start of
 * that phase (setup, pre-copy, stop-copy, resume, finish), says so on stderr, and
 * waits (up to 60 s) so a test can deliver a signal or kill a peer there.
 */
export async function pausePoint(
  getenv: (n: string) => string | undefined,
  phase: string,
  cancel: Cancellation,
): Promise<void> {
  if (getenv("VFIO_MIG_PAUSE_AT") !== phase) return;
  console.error(`vfio-mig: paused at ${phase} (VFIO_MIG_PAUSE_AT)`);
  const end = performance.now() + 60_000;
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 10));
    cancel.check();
  }
}
