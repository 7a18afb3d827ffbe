// The arc exploration: for every (from, to) pair of a device's supported states,
// every target state 0..7 (ERROR and unsupported ones included), bring the device to
// `from`, request `to`, and record where it ended, whether a data_fd came out and
// the errno. The table is deterministic for a conformant device, so the real-kernel
// suite can compare the real mtty's table with the simulator's.

import type { VfioDevice } from "../device/open.ts";
import {
  ALL_STATES,
  arcOpensDataFd,
  DeviceState,
  isHangingArc,
  resolvePath,
  stateName,
  supportedStates,
  supportsState,
} from "../vfio/state_machine.ts";
import { CheckSession } from "./session.ts";

export interface ArcResult {
  from: string;
  to: string;
  /** The state GET reports after the request ("unknown" when GET failed). */
  finalState: string;
  /** Whether the request handed out a data_fd (closed at once; a RESUMING one is fed first). */
  dataFd: boolean;
  /** errno name of a failed request; null on success; "unreachable" when `from` could not be reached. */
  errno: string | null;
}

export type ArcExpectation = Omit<ArcResult, "from" | "to">;

/** The pairs explored, in order: from each supported state to every state, minus the hanging arcs. */
export function arcPairs(flags: number): [DeviceState, DeviceState][] {
  const pairs: [DeviceState, DeviceState][] = [];
  for (const from of supportedStates(flags)) {
    for (const to of ALL_STATES) {
      if (!isHangingArc(from, to)) pairs.push([from, to]);
    }
  }
  return pairs;
}

/** What the uAPI and the kernel's table say a request from `from` to `to` does. */
export function expectedArc(flags: number, from: DeviceState, to: DeviceState): ArcExpectation {
  const refused = { finalState: stateName(from), dataFd: false, errno: "EINVAL" };
  if (!supportsState(flags, to)) return refused;
  const path = resolvePath(flags, from, to);
  if (path === null) return refused;
  if (path.length === 0) return { finalState: stateName(to), dataFd: false, errno: null };
  const last = path.length > 1 ? path[path.length - 2] : from;
  return { finalState: stateName(to), dataFd: arcOpensDataFd(last, to) !== null, errno: null };
}

export interface ExploreOptions {
  /** A session to share (its image and reset count); by default a new one, closed at the end. */
  session?: CheckSession;
  /** Largest STOP_COPY image captured for feeding RESUMING sessions (default 4 GiB). */
  maxImageBytes?: number;
}

/**
 * Explores every arc of `dev` and returns one row per pair (arcPairs order). The
 * device's own STOP_COPY image is captured first and written into every RESUMING
 * session, so that leaving RESUMING loads valid data; the device ends RUNNING.
 * Never requests STOP_COPY -> PRE_COPY / PRE_COPY_P2P.
 */
export function exploreArcs(dev: VfioDevice, opts: ExploreOptions = {}): ArcResult[] {
  const s = opts.session ?? new CheckSession(dev);
  try {
    if (!s.image) {
      try {
        s.image = s.capture(opts.maxImageBytes ?? 4 * 1024 ** 3).image;
      } catch { /* RESUMING rows will then show the device refusing empty data */ }
    }
    const rows: ArcResult[] = [];
    for (const [from, to] of arcPairs(s.flags)) {
      const row = { from: stateName(from), to: stateName(to) };
      if (!s.reach(from)) {
        rows.push({ ...row, finalState: stateText(s.state()), dataFd: false, errno: "unreachable" });
        continue;
      }
      const r = s.request(to, from);
      rows.push({ ...row, finalState: stateText(s.state()), dataFd: r.dataFd, errno: r.errno });
    }
    s.reach(DeviceState.RUNNING);
    return rows;
  } finally {
    if (!opts.session) s.close();
  }
}

function stateText(s: DeviceState | null): string {
  return s === null ? "unknown" : stateName(s);
}

/** Rows that differ from expectedArc, each with what was expected. */
export function arcMismatches(flags: number, rows: ArcResult[]): { row: ArcResult; expected: ArcExpectation }[] {
  const out: { row: ArcResult; expected: ArcExpectation }[] = [];
  for (const row of rows) {
    const from = DeviceState[row.from as keyof typeof DeviceState];
    const to = DeviceState[row.to as keyof typeof DeviceState];
    const expected = expectedArc(flags, from, to);
    if (row.finalState !== expected.finalState || row.dataFd !== expected.dataFd || row.errno !== expected.errno) {
      out.push({ row, expected });
    }
  }
  return out;
}
