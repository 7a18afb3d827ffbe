// `vfio-mig check`: a conformance report of a device's migration driver against the
// uAPI (reference §1.4-1.6). Each check is one function returning PASS, FAIL, WARN or
// SKIP with a reason. The checks drive the device through every state and load its
// own saved image back, so they need the device to themselves; it ends RUNNING.

import { isErrno, SysError } from "../../ffi/errno.ts";
import { MIGRATION_FLAGS, PRECOPY_INFO_REINIT } from "../../ffi/vfio_uapi.ts";
import type { VfioDevice } from "../device/open.ts";
import { readSome } from "../io.ts";
import { DeviceState, stateName, supportedStates, supportsState } from "../migration/state_machine.ts";
import { arcMismatches, type ArcResult, exploreArcs } from "./arcs.ts";
import { type CaptureResult, CheckSession, StepError } from "./session.ts";

const { STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY, PRE_COPY_P2P } = DeviceState;

export type CheckStatus = "PASS" | "FAIL" | "WARN" | "SKIP";

export interface CheckResult {
  id: string;
  status: CheckStatus;
  /** One line; FAIL details may add lines (one problem each). */
  detail: string;
}

export interface CheckReport {
  device: string;
  driver: string | null;
  mdevType: string | null;
  migratable: boolean;
  migrationFlags: number | null;
  flagNames: string[];
  supportedStates: string[];
  initialState: string | null;
  finalState: string | null;
  /** MIG_DATA_SIZE in STOP, before the first STOP_COPY. */
  dataSize: number | null;
  /** Bytes the first STOP_COPY produced. */
  stopCopyBytes: number | null;
  resets: number;
  resetReasons: string[];
  checks: CheckResult[];
  arcs: ArcResult[];
  summary: Record<CheckStatus, number>;
  /** No check FAILed. */
  ok: boolean;
}

/** What each check verifies, for --help and docs. */
export const CHECKS: Record<string, string> = {
  "migration-flags": "GET MIGRATION answers, STOP_COPY is set, no unknown flag bits",
  "stop-copy-eos": "a STOP_COPY data_fd reads to end of stream (0), and stays at 0",
  "data-size": "MIG_DATA_SIZE compared with the bytes STOP_COPY produced",
  "round-trip": "save, load, save on the same device gives identical bytes",
  "arc-states": "every request between supported states ends where the kernel's table says",
  "arc-data-fd": "a data_fd appears exactly on the arcs that open a session",
  "unsupported-targets": "ERROR and unsupported states are refused with EINVAL, the state unchanged",
  "precopy-info-states": "VFIO_MIG_GET_PRECOPY_INFO works in PRE_COPY states only (EINVAL otherwise)",
  "precopy-initial-bytes": "initial_bytes never grows while the initial data is read (unless REINIT), and reaches 0",
  "final-state": "the device is RUNNING at the end",
};

const MAX_LISTED = 8;

function pass(id: string, detail: string): CheckResult {
  return { id, status: "PASS", detail };
}
function fail(id: string, problems: string[]): CheckResult {
  const shown = problems.slice(0, MAX_LISTED);
  if (problems.length > MAX_LISTED) shown.push(`... and ${problems.length - MAX_LISTED} more`);
  return { id, status: "FAIL", detail: shown.join("\n") };
}
function skip(id: string, detail: string): CheckResult {
  return { id, status: "SKIP", detail };
}
function warn(id: string, detail: string): CheckResult {
  return { id, status: "WARN", detail };
}

function errnoOf(e: unknown): string {
  if (e instanceof SysError) return e.code;
  throw e;
}

function flagNames(flags: number): string[] {
  return Object.entries(MIGRATION_FLAGS).filter(([, v]) => flags & v).map(([k]) => k);
}

export interface CheckOptions {
  /** Largest STOP_COPY image the checks hold (in a memfd); default 4 GiB. */
  maxImageBytes?: number;
}

/** Runs every check on an open device. */
export function runChecks(dev: VfioDevice, opts: CheckOptions = {}): CheckReport {
  const report: CheckReport = {
    device: dev.label,
    driver: dev.info.driver,
    mdevType: dev.info.mdevType,
    migratable: false,
    migrationFlags: null,
    flagNames: [],
    supportedStates: [],
    initialState: null,
    finalState: null,
    dataSize: null,
    stopCopyBytes: null,
    resets: 0,
    resetReasons: [],
    checks: [],
    arcs: [],
    summary: { PASS: 0, FAIL: 0, WARN: 0, SKIP: 0 },
    ok: false,
  };
  const add = (c: CheckResult) => report.checks.push(c);
  // Runs the checks `ids`; a step they depend on failing FAILs the first, SKIPs the rest.
  const guarded = (ids: string[], fn: () => CheckResult | CheckResult[]) => {
    try {
      const r = fn();
      for (const c of Array.isArray(r) ? r : [r]) add(c);
    } catch (e) {
      if (!(e instanceof StepError || e instanceof SysError)) throw e;
      add(fail(ids[0], [e.message]));
      for (const id of ids.slice(1)) add(skip(id, `not run: see ${ids[0]}`));
    }
  };

  let flags: number;
  try {
    flags = dev.migration.migrationFlags();
  } catch (e) {
    const why = isErrno(e, "ENOTTY")
      ? `not migratable: GET MIGRATION gives ENOTTY (driver ${dev.info.driver ?? "?"} has no migration support)`
      : `GET MIGRATION failed with ${errnoOf(e)}`;
    add(fail("migration-flags", [why]));
    for (const id of Object.keys(CHECKS).slice(1)) add(skip(id, "the device is not migratable"));
    return finish(report);
  }
  report.migratable = true;
  report.migrationFlags = flags;
  report.flagNames = flagNames(flags);
  report.supportedStates = supportedStates(flags).map(stateName);
  add(checkFlags(flags));
  if (!(flags & MIGRATION_FLAGS.STOP_COPY)) {
    for (const id of Object.keys(CHECKS).slice(1)) add(skip(id, "without STOP_COPY no state is supported"));
    return finish(report);
  }

  const s = new CheckSession(dev, flags);
  try {
    const initial = s.state();
    report.initialState = initial === null ? null : stateName(initial);

    // The baseline image: STOP, MIG_DATA_SIZE, STOP_COPY read to its end.
    let baseline: CaptureResult | null = null;
    guarded(["stop-copy-eos"], () => {
      if (!s.reach(STOP)) throw new StepError(`cannot bring the device to STOP (it is ${s.stateText()})`);
      try {
        report.dataSize = dev.migration.dataSize();
      } catch (e) {
        errnoOf(e);
      }
      baseline = s.capture(opts.maxImageBytes ?? 4 * 1024 ** 3);
      s.image = baseline.image;
      report.stopCopyBytes = baseline.image.size;
      return checkEndOfStream(baseline);
    });
    add(checkDataSize(report.dataSize, report.stopCopyBytes));
    guarded(["round-trip"], () => checkRoundTrip(s, opts));
    guarded(["arc-states", "arc-data-fd", "unsupported-targets"], () => {
      report.arcs = exploreArcs(dev, { session: s });
      return checkArcs(flags, report.arcs);
    });
    guarded(["precopy-info-states", "precopy-initial-bytes"], () => checkPrecopy(s, flags, baseline));
    add(checkFinalState(s));
    const final = s.state();
    report.finalState = final === null ? null : stateName(final);
    report.resets = s.resets;
    report.resetReasons = [...s.resetReasons];
  } finally {
    s.close();
  }
  return finish(report);
}

function finish(report: CheckReport): CheckReport {
  // Report in the documented order, whatever order the checks ran in.
  const order = Object.keys(CHECKS);
  report.checks.sort((a, b) => order.indexOf(a.id) - order.indexOf(b.id));
  for (const c of report.checks) report.summary[c.status]++;
  report.ok = report.summary.FAIL === 0;
  return report;
}

function checkFlags(flags: number): CheckResult {
  const id = "migration-flags";
  const known = MIGRATION_FLAGS.STOP_COPY | MIGRATION_FLAGS.P2P | MIGRATION_FLAGS.PRE_COPY;
  const names = flagNames(flags).join(" ") || "none";
  if (!(flags & MIGRATION_FLAGS.STOP_COPY)) {
    return fail(id, [`flags 0x${flags.toString(16)} (${names}) lack STOP_COPY, which the uAPI requires`]);
  }
  const states = supportedStates(flags).map(stateName).join(" ");
  const unknown = (flags & ~known) >>> 0;
  if (unknown) {
    return warn(id, `0x${flags.toString(16)} (${names}) has bits 0x${unknown.toString(16)} this tool does not know`);
  }
  return pass(id, `0x${flags.toString(16)} (${names}): states ${states}`);
}

function checkEndOfStream(c: CaptureResult): CheckResult {
  const id = "stop-copy-eos";
  const bad = c.afterEof.filter((r) => r !== 0);
  if (bad.length) {
    return fail(id, [
      `after ${c.image.size} bytes and a read() of 0, further reads returned ${c.afterEof.join(", ")} ` +
      `(the end of a STOP_COPY stream must be permanent; ENOMSG is not allowed in STOP_COPY)`,
    ]);
  }
  return pass(id, `${c.image.size} bytes, then read() returned 0 three times`);
}

function checkDataSize(estimate: number | null, produced: number | null): CheckResult {
  const id = "data-size";
  if (produced === null) return skip(id, "no STOP_COPY data was captured");
  if (estimate === null) {
    return skip(
      id,
      `MIG_DATA_SIZE is not supported (kernels before 6.2, or the driver); STOP_COPY gave ${produced} bytes`,
    );
  }
  if (produced === estimate) return pass(id, `MIG_DATA_SIZE ${estimate} = ${produced} bytes produced`);
  if (produced < estimate) {
    return pass(id, `MIG_DATA_SIZE ${estimate} >= ${produced} bytes produced (an estimate may be an upper bound)`);
  }
  // An estimate, not a promise: only a VMM's downtime/buffer sizing suffers.
  return warn(
    id,
    `STOP_COPY produced ${produced} bytes, ${produced - estimate} more than MIG_DATA_SIZE ${estimate}: ` +
      `a VMM sizing downtime or buffers from it would under-estimate`,
  );
}

function checkRoundTrip(s: CheckSession, opts: CheckOptions): CheckResult {
  const id = "round-trip";
  if (!s.image) return skip(id, "no STOP_COPY image was captured");
  const first = s.image;
  const max = opts.maxImageBytes ?? 4 * 1024 ** 3;
  const again = s.capture(max).image;
  try {
    const d = first.firstDifference(again);
    if (d !== null) {
      return skip(
        id,
        `two saves of the stopped device differ (first at byte ${d}): its data is not deterministic, ` +
          `so a round trip cannot be compared byte for byte`,
      );
    }
  } finally {
    again.close();
  }
  // load: RESUMING (fed the first image), then RESUMING -> STOP validates and loads it.
  if (!s.reach(RESUMING)) throw new StepError(`cannot bring the device to RESUMING (it is ${s.stateText()})`);
  const r = s.request(STOP, RESUMING);
  if (r.errno) return fail(id, [`RESUMING -> STOP rejected the device's own image with ${r.errno}`]);
  const after = s.capture(max).image;
  try {
    const d = first.firstDifference(after);
    if (d !== null) {
      return fail(id, [
        `after loading its own ${first.size}-byte image the device saves ${after.size} bytes that differ ` +
        `from it at byte ${d}`,
      ]);
    }
  } finally {
    after.close();
  }
  return pass(
    id,
    `${first.size} bytes saved, loaded and saved again identically (sha256 ${first.sha256.slice(0, 16)}…)`,
  );
}

function describeRow(r: ArcResult, e: { finalState: string; dataFd: boolean; errno: string | null }): string {
  const got = r.errno === "unreachable"
    ? `could not reach ${r.from} (device is ${r.finalState})`
    : `${r.errno ? `failed with ${r.errno}` : "succeeded"}, ended in ${r.finalState}` +
      `${r.dataFd ? ", returned a data_fd" : ""}`;
  const want = `${e.errno ? `${e.errno}` : "success"}, ${e.finalState}${e.dataFd ? ", a data_fd" : ""}`;
  return `${r.from} -> ${r.to}: ${got} (expected ${want})`;
}

function checkArcs(flags: number, rows: ArcResult[]): CheckResult[] {
  const mismatches = arcMismatches(flags, rows);
  const supportedTo = (r: ArcResult) => supportsState(flags, DeviceState[r.to as keyof typeof DeviceState]);
  const states: string[] = [];
  const fds: string[] = [];
  const refused: string[] = [];
  for (const { row, expected } of mismatches) {
    const line = describeRow(row, expected);
    if (!supportedTo(row)) refused.push(line);
    else if (row.errno !== expected.errno || row.finalState !== expected.finalState) states.push(line);
    else fds.push(line);
  }
  const nSupported = rows.filter(supportedTo).length;
  const nFd = rows.filter((r) => supportedTo(r) && r.dataFd).length;
  const nRefused = rows.length - nSupported;
  return [
    states.length ? fail("arc-states", states) : pass(
      "arc-states",
      `${nSupported} requests ended in the state the kernel's table gives (STOP_COPY -> PRE_COPY* not asked)`,
    ),
    fds.length
      ? fail("arc-data-fd", fds)
      : pass("arc-data-fd", `data_fd on exactly the ${nFd} requests whose last arc opens a session`),
    refused.length ? fail("unsupported-targets", refused) : pass(
      "unsupported-targets",
      `${nRefused} requests for ERROR or unsupported states refused with EINVAL, state unchanged`,
    ),
  ];
}

function checkPrecopy(s: CheckSession, flags: number, baseline: CaptureResult | null): CheckResult[] {
  const statesId = "precopy-info-states";
  const initialId = "precopy-initial-bytes";
  const stateProblems: string[] = [];
  const hasPre = supportsState(flags, PRE_COPY);
  // On the STOP_COPY data_fd of the baseline capture.
  if (baseline) {
    const e = baseline.precopyInfoErrno;
    const okErrnos = hasPre ? ["EINVAL"] : ["EINVAL", "ENOTTY"];
    if (e === null || !okErrnos.includes(e)) {
      stateProblems.push(
        `PRECOPY_INFO on a STOP_COPY data_fd ${e === null ? "succeeded" : `gave ${e}`} (expected EINVAL)`,
      );
    }
  }
  if (!hasPre) {
    return [
      stateProblems.length
        ? fail(statesId, stateProblems)
        : baseline
        ? pass(statesId, `no PRE_COPY; PRECOPY_INFO on a STOP_COPY data_fd gave ${baseline.precopyInfoErrno}`)
        : skip(statesId, "no PRE_COPY, and no STOP_COPY data_fd was obtained"),
      skip(initialId, "the device has no PRE_COPY"),
    ];
  }

  if (!s.reach(RUNNING)) throw new StepError(`cannot bring the device to RUNNING (it is ${s.stateText()})`);
  const r = s.set(PRE_COPY, RUNNING);
  if (r.errno) throw new StepError(`RUNNING -> PRE_COPY failed with ${r.errno}`);
  if (r.fd === null) throw new StepError("RUNNING -> PRE_COPY returned no data_fd");
  const fd = r.fd;
  const initialProblems: string[] = [];
  let initialDetail = "";
  let where: DeviceState = PRE_COPY;
  try {
    let info;
    try {
      info = s.dev.migration.precopyInfo(fd);
    } catch (e) {
      stateProblems.push(`PRECOPY_INFO in PRE_COPY failed with ${errnoOf(e)}`);
    }
    if (info) {
      const start = info.initialBytes;
      let prev = start;
      let reinit = (info.flags & PRECOPY_INFO_REINIT) !== 0;
      const buf = new Uint8Array(Math.min(1 << 20, Math.max(1, Math.ceil(start / 16))));
      const limit = start * 4 + 64 * 1024 * 1024;
      let total = 0;
      let reads = 0;
      let idle = 0;
      while (prev > 0 && total <= limit && idle < 1000) {
        let n = 0;
        try {
          n = readSome(s.sys, fd, buf);
        } catch (e) {
          if (!isErrno(e, "ENOMSG")) {
            initialProblems.push(`read() in PRE_COPY failed with ${errnoOf(e)} after ${total} bytes`);
            break;
          }
        }
        reads++;
        total += n;
        idle = n === 0 ? idle + 1 : 0;
        let now;
        try {
          now = s.dev.migration.precopyInfo(fd);
        } catch (e) {
          stateProblems.push(`PRECOPY_INFO in PRE_COPY failed with ${errnoOf(e)} after ${total} bytes were read`);
          break;
        }
        if (now.flags & PRECOPY_INFO_REINIT) reinit = true;
        else if (now.initialBytes > prev && initialProblems.length === 0) {
          initialProblems.push(
            `initial_bytes grew from ${prev} to ${now.initialBytes} after ${total} bytes were read (no REINIT flag)`,
          );
        }
        prev = now.initialBytes;
      }
      if (prev > 0 && initialProblems.length === 0) {
        initialProblems.push(`initial_bytes is still ${prev} after reading ${total} bytes in ${reads} reads`);
      }
      initialDetail = `initial_bytes went from ${start} to 0 over ${total} bytes in ${reads} reads` +
        `${reinit ? " (REINIT seen)" : ", never growing"}`;
    }
    if (supportsState(flags, PRE_COPY_P2P)) {
      const p = s.set(PRE_COPY_P2P, PRE_COPY);
      if (p.fd !== null) s.closeFd(p.fd);
      if (p.errno) stateProblems.push(`PRE_COPY -> PRE_COPY_P2P failed with ${p.errno}`);
      else {
        where = PRE_COPY_P2P;
        try {
          s.dev.migration.precopyInfo(fd);
        } catch (e) {
          stateProblems.push(`PRECOPY_INFO in PRE_COPY_P2P failed with ${errnoOf(e)}`);
        }
      }
    }
    const sc = s.set(STOP_COPY, where);
    if (sc.fd !== null) s.closeFd(sc.fd);
    if (sc.errno) stateProblems.push(`${stateName(where)} -> STOP_COPY failed with ${sc.errno}`);
    else {
      let e: string | null = null;
      try {
        s.dev.migration.precopyInfo(fd);
      } catch (err) {
        e = errnoOf(err);
      }
      if (e !== "EINVAL") {
        stateProblems.push(
          `PRECOPY_INFO in STOP_COPY (after pre-copy) ${e === null ? "succeeded" : `gave ${e}`} (expected EINVAL)`,
        );
      }
    }
  } finally {
    s.closeFd(fd);
  }
  // End the session; reach() resets if the device does not let go.
  s.reach(STOP);
  return [
    stateProblems.length ? fail(statesId, stateProblems) : pass(
      statesId,
      `valid in PRE_COPY${supportsState(flags, PRE_COPY_P2P) ? " and PRE_COPY_P2P" : ""}, EINVAL in STOP_COPY`,
    ),
    initialProblems.length
      ? fail(initialId, initialProblems)
      : initialDetail
      ? pass(initialId, initialDetail)
      : skip(initialId, "PRECOPY_INFO did not answer in PRE_COPY"),
  ];
}

function checkFinalState(s: CheckSession): CheckResult {
  const id = "final-state";
  const during = s.resets
    ? `; ${s.resets} reset${s.resets === 1 ? "" : "s"} needed during the checks (${s.resetReasons[0]}${
      s.resets > 1 ? ", …" : ""
    })`
    : "";
  const before = s.resets;
  const cur = s.state();
  if (cur !== RUNNING && cur !== null && cur !== DeviceState.ERROR && cur !== RESUMING) s.request(RUNNING, cur);
  if (s.state() === RUNNING) return pass(id, `RUNNING${during}`);
  s.reset(`final: the device did not return to RUNNING (it was ${s.stateText()})`);
  const after = s.state();
  if (after === RUNNING) {
    return warn(id, `RUNNING only after a reset (it was ${cur === null ? "unknown" : stateName(cur)})${during}`);
  }
  return fail(id, [`the device is ${s.stateText()} even after ${s.resets - before} reset`]);
}
