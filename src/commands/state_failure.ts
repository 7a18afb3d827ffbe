// What `vfio-mig state STATE` says when the kernel refuses a request: which step of
// the path failed, the state the device is in now, and the way out.

import { SysError } from "../../ffi/errno.ts";
import { ALL_STATES, DeviceState, resolvePath, stateName, supportedStates } from "../vfio/state_machine.ts";

/** The states a user may request of a device with these migration flags (ERROR never). */
export function requestableStates(flags: number): string[] {
  return supportedStates(flags).filter((s) => s !== DeviceState.ERROR).map(stateName);
}

/** "unknown device state FOO; valid states: STOP, RUNNING, …" (all the uAPI's requestable states). */
export function unknownStateMessage(name: string): string {
  const valid = ALL_STATES.filter((s) => s !== DeviceState.ERROR).map(stateName);
  return `unknown device state ${name}; valid states: ${valid.join(", ")}`;
}

/**
 * The one line for a failed MIG_DEVICE_STATE SET from `from` to `target` (uAPI v2,
 * include/uapi/linux/vfio.h; the path as drivers/vfio/vfio_main.c
 * vfio_mig_get_next_state() walks it): the arc that failed (the one leaving the state
 * the device is now in, when that state is on the path), the errno, the device's state
 * now (`now`: null when it cannot be read), and what to do: `vfio-mig reset` for
 * ERROR or RESUMING, nothing when the device is where it was.
 */
export function stateFailureMessage(opts: {
  flags: number;
  from: DeviceState | null;
  target: DeviceState;
  now: DeviceState | null;
  error: unknown;
  device: string;
}): string {
  const { flags, from, target, now, error, device } = opts;
  const errno = error instanceof SysError ? `${error.code}: ${error.message.replace(/^.*\((.*)\)$/, "$1")}` : String(
    error instanceof Error ? error.message : error,
  );
  const reset = `'vfio-mig reset --device ${device}' (the device becomes RUNNING, its state is lost)`;
  const nowText = now === null ? "its state cannot be read" : `the device is now ${stateName(now)}`;
  const head = `state: ${from === null ? "?" : stateName(from)} -> ${stateName(target)} failed`;
  const stuck = now === DeviceState.ERROR || now === DeviceState.RESUMING || now === null;
  if (target === DeviceState.ERROR) {
    return `${head}: ERROR cannot be requested (drivers enter it when an arc fails); ${nowText}` +
      (stuck ? `; the way out: ${reset}` : "");
  }
  if (!supportedStates(flags).includes(target)) {
    return `${head}: this device does not support ${stateName(target)} (it supports ` +
      `${requestableStates(flags).join(", ")}) (${errno}); ${nowText}` + (stuck ? `; the way out: ${reset}` : "");
  }
  const path = from === null ? null : resolvePath(flags, from, target);
  if (path === null && from !== null) {
    const reachable = requestableStates(flags).filter((s) =>
      s !== stateName(from) && resolvePath(flags, from, DeviceState[s as keyof typeof DeviceState]) !== null
    );
    const way = from === DeviceState.RESUMING
      ? `load a stream ('vfio-mig load') or abandon it with ${reset}`
      : `request one of those first`;
    return `${head}: the uAPI has no path from ${stateName(from)} to ${stateName(target)} on this device ` +
      `(${errno}); ${nowText}. From ${stateName(from)} it can go to ${
        reachable.join(", ") || "no other state"
      }: ${way}`;
  }
  const walk = from === null || path === null ? [] : [from, ...path];
  const at = now === null ? -1 : walk.indexOf(now);
  let step = "";
  if (at >= 0 && at < walk.length - 1) {
    const [a, b] = [walk[at], walk[at + 1]];
    step = `: the kernel refused the arc ${stateName(a)} -> ${stateName(b)}` +
      (walk.length > 2 ? ` (step ${at + 1} of ${walk.length - 1}: ${walk.map(stateName).join(" -> ")})` : "") +
      (a === DeviceState.RESUMING
        ? `, where the driver checks the data written in RESUMING (none, or an incomplete stream)`
        : "");
  }
  const way = stuck ? `; the way out: ${reset}` : now === from ? "; nothing changed" : "";
  return `${head}${step} (${errno}); ${nowText}${way}`;
}
