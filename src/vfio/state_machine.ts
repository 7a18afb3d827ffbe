// The VFIO migration v2 state machine as the kernel defines it: an 8x8 table of next
// steps (drivers/vfio/vfio_main.c, vfio_from_fsm_table) plus the migration flags each
// state needs. Both the tool and the simulated kernel use it; nothing here branches
// on states.

import { MIGRATION_FLAGS } from "../../ffi/vfio_uapi.ts";

export enum DeviceState {
  ERROR = 0,
  STOP = 1,
  RUNNING = 2,
  STOP_COPY = 3,
  RESUMING = 4,
  RUNNING_P2P = 5,
  PRE_COPY = 6,
  PRE_COPY_P2P = 7,
}

export const STATE_COUNT = 8;
export const ALL_STATES: readonly DeviceState[] = [0, 1, 2, 3, 4, 5, 6, 7];

export function stateName(s: number): string {
  return DeviceState[s] ?? `UNKNOWN(${s})`;
}

export function parseState(name: string): DeviceState {
  const s = (DeviceState as unknown as Record<string, number>)[name.toUpperCase()];
  if (s === undefined) throw new Error(`unknown device state ${name}`);
  return s;
}

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = DeviceState;
const { STOP_COPY: F_SC, P2P: F_P2P, PRE_COPY: F_PRE } = MIGRATION_FLAGS;
const ALL_FLAGS = 0xffffffff;

/** next[from][to]: the kernel's next step from `from` towards `to`. */
// deno-fmt-ignore
const NEXT: readonly (readonly DeviceState[])[] = (() => {
  const t: DeviceState[][] = [];
  const row = (from: DeviceState, m: Partial<Record<DeviceState, DeviceState>>) => {
    t[from] = ALL_STATES.map((to) => m[to] ?? ERROR);
  };
  row(STOP, { [STOP]: STOP, [RUNNING]: RUNNING_P2P, [PRE_COPY]: RUNNING_P2P, [PRE_COPY_P2P]: RUNNING_P2P,
    [STOP_COPY]: STOP_COPY, [RESUMING]: RESUMING, [RUNNING_P2P]: RUNNING_P2P });
  row(RUNNING, { [STOP]: RUNNING_P2P, [RUNNING]: RUNNING, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: RUNNING_P2P,
    [STOP_COPY]: RUNNING_P2P, [RESUMING]: RUNNING_P2P, [RUNNING_P2P]: RUNNING_P2P });
  row(PRE_COPY, { [STOP]: RUNNING, [RUNNING]: RUNNING, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: PRE_COPY_P2P,
    [STOP_COPY]: PRE_COPY_P2P, [RESUMING]: RUNNING, [RUNNING_P2P]: RUNNING });
  row(PRE_COPY_P2P, { [STOP]: RUNNING_P2P, [RUNNING]: RUNNING_P2P, [PRE_COPY]: PRE_COPY,
    [PRE_COPY_P2P]: PRE_COPY_P2P, [STOP_COPY]: STOP_COPY, [RESUMING]: RUNNING_P2P, [RUNNING_P2P]: RUNNING_P2P });
  row(STOP_COPY, { [STOP]: STOP, [RUNNING]: STOP, [PRE_COPY]: ERROR, [PRE_COPY_P2P]: ERROR,
    [STOP_COPY]: STOP_COPY, [RESUMING]: STOP, [RUNNING_P2P]: STOP });
  row(RESUMING, { [STOP]: STOP, [RUNNING]: STOP, [PRE_COPY]: STOP, [PRE_COPY_P2P]: STOP,
    [STOP_COPY]: STOP, [RESUMING]: RESUMING, [RUNNING_P2P]: STOP });
  row(RUNNING_P2P, { [STOP]: STOP, [RUNNING]: RUNNING, [PRE_COPY]: RUNNING, [PRE_COPY_P2P]: PRE_COPY_P2P,
    [STOP_COPY]: STOP, [RESUMING]: STOP, [RUNNING_P2P]: RUNNING_P2P });
  row(ERROR, {});
  return t;
})();

/** The migration flags a device needs to support a state (state_flags_table). */
const REQUIRED_FLAGS: readonly number[] = [
  ALL_FLAGS, // ERROR: never "supported", so never a step
  F_SC, // STOP
  F_SC, // RUNNING
  F_SC, // STOP_COPY
  F_SC, // RESUMING
  F_SC | F_P2P, // RUNNING_P2P
  F_SC | F_PRE, // PRE_COPY
  F_SC | F_P2P | F_PRE, // PRE_COPY_P2P
];

export function supportsState(flags: number, s: DeviceState): boolean {
  const need = REQUIRED_FLAGS[s];
  return need !== undefined && ((need & flags) >>> 0) === need >>> 0;
}

/** The states a device with these migration flags supports (ERROR excluded). */
export function supportedStates(flags: number): DeviceState[] {
  return ALL_STATES.filter((s) => supportsState(flags, s));
}

/**
 * Arcs the uAPI says are not permitted, which on kernels 6.2 until the 2026 fix spin
 * in vfio_mig_get_next_state() for ever instead of failing: never request them.
 */
export function isHangingArc(from: DeviceState, to: DeviceState): boolean {
  return from === STOP_COPY && (to === PRE_COPY || to === PRE_COPY_P2P);
}

export type NextStep = { ok: true; next: DeviceState } | { ok: false; hangs: boolean };

/**
 * One step of vfio_mig_get_next_state(): the kernel's answer for (cur, target).
 * `hangs` marks the case where the unfixed kernel loops for ever (the fixed kernel,
 * and the simulator, answer EINVAL).
 */
export function nextStep(flags: number, cur: DeviceState, target: DeviceState): NextStep {
  if (!supportsState(flags, cur) || !supportsState(flags, target)) return { ok: false, hangs: false };
  let next = NEXT[cur][target];
  const seen = new Set<DeviceState>();
  while (!supportsState(flags, next)) {
    if (next === ERROR || seen.has(next)) return { ok: false, hangs: true };
    seen.add(next);
    next = NEXT[next][target];
  }
  return { ok: true, next };
}

/**
 * The whole path the kernel walks from `from` to `to` (excluding `from`), or null
 * when it refuses (EINVAL). [] when from === to: drivers loop `while (cur != new)`, so
 * requesting the current state always succeeds.
 */
export function resolvePath(flags: number, from: DeviceState, to: DeviceState): DeviceState[] | null {
  const path: DeviceState[] = [];
  let cur = from;
  while (cur !== to) {
    const step = nextStep(flags, cur, to);
    if (!step.ok) return null;
    path.push(step.next);
    cur = step.next;
    if (path.length > STATE_COUNT) return null;
  }
  return path;
}

/** Arcs on which the kernel hands out a new data_fd (the final arc of a request only). */
export function arcOpensDataFd(from: DeviceState, to: DeviceState): "save" | "resume" | null {
  if (from === STOP && to === STOP_COPY) return "save";
  if (from === RUNNING && to === PRE_COPY) return "save";
  if (from === RUNNING_P2P && to === PRE_COPY_P2P) return "save";
  if (from === STOP && to === RESUMING) return "resume";
  return null;
}

/** Arcs that end a migration session (the data_fd stops working). */
export function arcClosesSession(from: DeviceState, to: DeviceState): boolean {
  return (from === PRE_COPY && to === RUNNING) ||
    (from === PRE_COPY_P2P && to === RUNNING_P2P) ||
    (from === STOP_COPY && to === STOP) ||
    (from === RESUMING && to === STOP);
}

export function isSavingState(s: DeviceState): boolean {
  return s === PRE_COPY || s === PRE_COPY_P2P || s === STOP_COPY;
}

export function isRunningState(s: DeviceState): boolean {
  return s === RUNNING || s === PRE_COPY;
}
