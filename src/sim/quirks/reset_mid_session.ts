// reset-mid-session (not conformant: the uAPI lets the state change only on a SET or
// VFIO_DEVICE_RESET; what pds does when its device recovers, 8512ed256334 and
// 457f73082547): the device resets itself during a phase (pre-copy, stop-copy or
// resuming) once BYTES of it moved. Its session ends: the old data_fd answers ENODEV to
// read, write and PRECOPY_INFO (pds checks the disabled file first); the device is left
// in ERROR (a device-initiated pds reset) or RUNNING (--reset-to running); a v1 device's
// device_state reads RUNNING again (libvfio-user 4f4fce4). The reset happens at the
// phase's next read or write, or at the SET that leaves the phase (which then fails with
// EIO). A tool must never report such a session as saved or loaded.

import { DeviceState } from "../../vfio/state_machine.ts";
import { type MigrationFile, type SimDevice, sysErr } from "../driver.ts";
import type { QuirkDef } from "../quirks.ts";
import type { QuirkOptions } from "../store.ts";

const { PRE_COPY, PRE_COPY_P2P, STOP_COPY, RESUMING, RUNNING, ERROR } = DeviceState;
type Phase = "pre-copy" | "stop-copy" | "resuming";
export const RESET_PHASES: readonly Phase[] = ["pre-copy", "stop-copy", "resuming"];

function phaseOf(s: DeviceState): Phase | null {
  if (s === PRE_COPY || s === PRE_COPY_P2P) return "pre-copy";
  if (s === STOP_COPY) return "stop-copy";
  if (s === RESUMING) return "resuming";
  return null;
}

/** The settings, with their defaults: at stop-copy's first read, leaving ERROR. */
export function resetAt(dev: { meta: { quirkOptions?: QuirkOptions } }) {
  return dev.meta.quirkOptions?.resetAt ?? { phase: "stop-copy" as Phase, after: 0, to: "error" as const };
}

/** Bytes each file moved in its current phase. */
const moved = new WeakMap<MigrationFile, { phase: Phase | null; bytes: number }>();

function due(dev: SimDevice, file: MigrationFile): boolean {
  const o = resetAt(dev);
  const phase = phaseOf(dev.meta.state);
  if (phase !== o.phase || file.disabled) return false;
  const c = moved.get(file);
  return (c && c.phase === phase ? c.bytes : 0) >= o.after;
}

function count(dev: SimDevice, file: MigrationFile, n: number): void {
  const phase = phaseOf(dev.meta.state);
  let c = moved.get(file);
  if (!c || c.phase !== phase) moved.set(file, c = { phase, bytes: 0 });
  c.bytes += n;
}

function fire(dev: SimDevice): void {
  const o = resetAt(dev);
  dev.selfReset(o.to === "running" ? RUNNING : ERROR, `reset-mid-session: during ${o.phase}, after ${o.after} bytes`);
}

export const resetMidSession: QuirkDef = {
  summary: "the device resets itself during a phase (--reset-at pre-copy|stop-copy|resuming[:BYTES], " +
    "--reset-to error|running): the old data_fd answers ENODEV",
  conformant: false,
  source: "pds 8512ed256334, 457f73082547; libvfio-user 4f4fce4",
  behaviour: {
    read(dev, file, buf, _io, next) {
      if (due(dev, file)) fire(dev);
      const n = next(buf);
      count(dev, file, n);
      return n;
    },
    write(dev, file, buf, next) {
      if (due(dev, file)) fire(dev);
      const n = next(buf);
      count(dev, file, n);
      return n;
    },
    precopyInfo(dev, file, next) {
      if (due(dev, file)) fire(dev);
      if (file.disabled) throw sysErr("ioctl", "ENODEV");
      return next();
    },
    arc(dev, a) {
      const o = resetAt(dev);
      const from = phaseOf(a.cur);
      if (from !== o.phase || phaseOf(a.next) === from) return;
      const file = from === "resuming" ? dev.driver.resuming : dev.driver.saving;
      if (!file || !due(dev, file)) return;
      fire(dev);
      throw sysErr("ioctl", "EIO", `the device reset itself during ${o.phase}`);
    },
  },
};
