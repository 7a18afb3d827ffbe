// `vfio-mig check`: a conformance report of a device's migration driver against the
// uAPI (reference §1.4-1.6) and against the faults real drivers shipped (hisi_acc,
// mlx5, pds fixes). Each check is one function returning PASS, FAIL, WARN or SKIP with a
// reason. The checks drive the device through every state, reset it, reopen it when
// they can, and load its own saved image back, so they need the device to themselves;
// it ends RUNNING.

import { isErrno, SysError } from "../../ffi/errno.ts";
import { MIGRATION_FLAGS, PCI_REGION, PRECOPY_INFO_REINIT } from "../../ffi/vfio_uapi.ts";
import type { VfioDevice } from "../device/open.ts";
import { capControl } from "../pci/config.ts";
import { findRegion } from "../vfio/regions.ts";
import { migrationFlagNames } from "../vfio/v2.ts";
import { readSome } from "../io.ts";
import { DeviceState, stateName, supportedStates, supportsState } from "../vfio/state_machine.ts";
import { arcMismatches, type ArcResult, exploreArcs } from "./arcs.ts";
import { type CaptureResult, CheckSession, StepError } from "./session.ts";

const { STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY, PRE_COPY_P2P } = DeviceState;
const SLEEPER = new Int32Array(new SharedArrayBuffer(4));
const sleep = (ms: number) => Atomics.wait(SLEEPER, 0, 0, ms);

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
  /** The checks that found something: every FAIL and WARN, in report order. */
  findings: CheckResult[];
  arcs: ArcResult[];
  summary: Record<CheckStatus, number>;
  /** No check FAILed. */
  ok: boolean;
}

/** What each check verifies, for --help and docs. */
export const CHECKS: Record<string, string> = {
  "migration-flags": "GET MIGRATION answers, STOP_COPY is set, no unknown flag bits",
  "stop-copy-eos": "a STOP_COPY data_fd reads to end of stream (0), and stays at 0",
  "read-size": "a session read in odd sizes gives the bytes 1 MiB reads give (hisi_acc be12ad45e15b)",
  "data-size": "MIG_DATA_SIZE compared with the bytes STOP_COPY produced",
  "round-trip": "save, load, save on the same device gives identical bytes",
  "arc-states": "every request between supported states ends where the kernel's table says",
  "arc-data-fd": "a data_fd appears exactly on the arcs that open a session",
  "unsupported-targets": "ERROR and unsupported states are refused with EINVAL, the state unchanged",
  "precopy-info-states": "VFIO_MIG_GET_PRECOPY_INFO works in PRE_COPY states only (EINVAL otherwise)",
  "precopy-initial-bytes": "initial_bytes never grows while the initial data is read (unless REINIT), and reaches 0",
  "precopy-info-accuracy": "initial_bytes + dirty_bytes against the bytes read until ENOMSG; WARN with the numbers " +
    "when more came (mlx5 4928f67bc911)",
  "reset-ends-session": "after VFIO_DEVICE_RESET the device is RUNNING and an open data_fd answers ENODEV",
  "config-after-reset": "command register and MSI/MSI-X enables across VFIO_DEVICE_RESET; WARN when cleared",
  "spontaneous-reset": "no session ends on its own: no data_fd answers ENODEV unless the device was reset (pds)",
  "reopen-session": "after closing and reopening the device, a session carries all its data (hisi_acc 8c6ac1730a97)",
  "reopen-state": "the migration state survives closing and reopening; WARN when the device comes back RUNNING",
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

export interface CheckOptions {
  /** Largest STOP_COPY image the checks hold (in a memfd); default 4 GiB. */
  maxImageBytes?: number;
  /**
   * Closes `old` and opens the same device again (a new open: what a driver does at
   * open_device shows). Without it the reopen checks SKIP. runChecks closes the device
   * it got this way before it returns.
   */
  reopen?: (old: VfioDevice) => VfioDevice;
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
    findings: [],
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
  report.flagNames = migrationFlagNames(flags);
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
    guarded(["read-size"], () => checkReadSize(s, opts, baseline));
    guarded(["round-trip"], () => checkRoundTrip(s, opts));
    guarded(["arc-states", "arc-data-fd", "unsupported-targets"], () => {
      report.arcs = exploreArcs(s.dev, { session: s });
      return checkArcs(flags, report.arcs);
    });
    guarded(["precopy-info-states", "precopy-initial-bytes"], () => checkPrecopy(s, flags, baseline));
    guarded(["precopy-info-accuracy"], () => checkPrecopyAccuracy(s, flags));
    guarded(["reset-ends-session"], () => checkResetEndsSession(s, flags));
    guarded(["config-after-reset"], () => checkConfigAfterReset(s));
    // A PCI function's reset lost its data: put the device's own image back.
    if (s.image) s.loadImage();
    guarded(["reopen-session", "reopen-state"], () => checkReopen(s, opts, baseline));
    add(checkSpontaneousReset(s));
    add(checkFinalState(s));
    const final = s.state();
    report.finalState = final === null ? null : stateName(final);
    report.resets = s.resets;
    report.resetReasons = [...s.resetReasons];
  } finally {
    s.close();
    if (s.dev !== dev) s.dev.close();
  }
  return finish(report);
}

function finish(report: CheckReport): CheckReport {
  // Report in the documented order, whatever order the checks ran in.
  const order = Object.keys(CHECKS);
  report.checks.sort((a, b) => order.indexOf(a.id) - order.indexOf(b.id));
  for (const c of report.checks) report.summary[c.status]++;
  report.findings = report.checks.filter((c) => c.status === "FAIL" || c.status === "WARN");
  report.ok = report.summary.FAIL === 0;
  return report;
}

function checkFlags(flags: number): CheckResult {
  const id = "migration-flags";
  const known = MIGRATION_FLAGS.STOP_COPY | MIGRATION_FLAGS.P2P | MIGRATION_FLAGS.PRE_COPY;
  const names = migrationFlagNames(flags).join(" ") || "none";
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
  s.sessions++;
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
            s.noteFailure(`a PRE_COPY session, after ${total} bytes`, errnoOf(e));
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
          s.noteFailure(`PRECOPY_INFO in a PRE_COPY session, after ${total} bytes`, errnoOf(e));
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

/** Odd read sizes, cycled: a driver that ignores the file position gives other bytes. */
const ODD_READS = [7, 4093, 65537, 3, 1000003, 333];

function checkReadSize(s: CheckSession, opts: CheckOptions, baseline: CaptureResult | null): CheckResult {
  const id = "read-size";
  if (!baseline) return skip(id, "no STOP_COPY image was captured");
  const max = opts.maxImageBytes ?? 4 * 1024 ** 3;
  const odd = s.capture(max, ODD_READS).image;
  try {
    const d = baseline.image.firstDifference(odd);
    if (d === null) {
      return pass(id, `${odd.size} bytes read in sizes ${ODD_READS.join(", ")}, … equal the 1 MiB reads`);
    }
    const again = s.capture(max).image;
    try {
      if (baseline.image.firstDifference(again) !== null) {
        return skip(
          id,
          "two saves of the stopped device differ: its data is not deterministic, read sizes cannot be compared",
        );
      }
    } finally {
      again.close();
    }
    return fail(id, [
      `the same data read in sizes ${ODD_READS.join(", ")}, … (${odd.size} bytes) differs from 1 MiB reads ` +
      `(${baseline.image.size} bytes) at byte ${d}: the driver ignores the file position, so any read after ` +
      `a partial one hands out the wrong bytes (hisi_acc be12ad45e15b)`,
    ]);
  } finally {
    odd.close();
  }
}

/** Reads a data_fd until ENOMSG or 0 (bounded); what a correct tool does each pre-copy round. */
function drainPrecopy(s: CheckSession, fd: number, limit: number): { bytes: number } {
  const buf = new Uint8Array(1 << 20);
  const t0 = performance.now();
  let bytes = 0;
  while (bytes < limit && performance.now() - t0 < 10_000) {
    let n: number;
    try {
      n = readSome(s.sys, fd, buf);
    } catch (e) {
      if (isErrno(e, "ENOMSG")) break;
      s.noteFailure(`a PRE_COPY session, after ${bytes} bytes`, errnoOf(e));
      throw new StepError(`read() in PRE_COPY failed with ${errnoOf(e)} after ${bytes} bytes`);
    }
    if (n === 0) break;
    bytes += n;
  }
  return { bytes };
}

/**
 * PRECOPY_INFO's initial_bytes + dirty_bytes against what a read until ENOMSG brings,
 * twice: for the initial data, and after the device ran a while and a small read made
 * the driver queue what it had dirtied. More than reported (beyond what the device
 * dirtied meanwhile, at the rate dirty_bytes grew while nobody read) is a WARN: the sizes are estimates,
 * and a tool that takes them as a budget leaves data behind.
 */
function checkPrecopyAccuracy(s: CheckSession, flags: number): CheckResult {
  const id = "precopy-info-accuracy";
  if (!supportsState(flags, PRE_COPY)) return skip(id, "the device has no PRE_COPY");
  if (!s.reach(RUNNING)) throw new StepError(`cannot bring the device to RUNNING (it is ${s.stateText()})`);
  const r = s.set(PRE_COPY, RUNNING);
  if (r.errno) throw new StepError(`RUNNING -> PRE_COPY failed with ${r.errno}`);
  if (r.fd === null) throw new StepError("RUNNING -> PRE_COPY returned no data_fd");
  const fd = r.fd;
  s.sessions++;
  const info = () => {
    try {
      return s.dev.migration.precopyInfo(fd);
    } catch (e) {
      s.noteFailure("PRECOPY_INFO in a PRE_COPY session", errnoOf(e));
      throw new StepError(`PRECOPY_INFO in PRE_COPY failed with ${errnoOf(e)}`);
    }
  };
  const rounds: { what: string; reported: number; read: number; ms: number }[] = [];
  let rate = 0; // bytes/ms the device dirties, from dirty_bytes growing while nobody reads
  try {
    let since = performance.now();
    const i0 = info();
    const r0 = drainPrecopy(s, fd, 4 * (i0.initialBytes + i0.dirtyBytes) + (64 << 20));
    const ms0 = performance.now() - since;
    rounds.push({ what: "the initial data", reported: i0.initialBytes + i0.dirtyBytes, read: r0.bytes, ms: ms0 });
    const t0 = performance.now();
    const d0 = info().dirtyBytes;
    sleep(400);
    const d1 = info().dirtyBytes;
    rate = Math.max(0, d1 - d0) / (performance.now() - t0);
    // A small read: a driver queues what the device dirtied (mlx5 fetches it).
    try {
      s.sys.read(fd, new Uint8Array(64));
    } catch (e) {
      if (!isErrno(e, "ENOMSG")) {
        s.noteFailure("a PRE_COPY session", errnoOf(e));
        throw new StepError(`read() in PRE_COPY failed with ${errnoOf(e)}`);
      }
    }
    since = performance.now();
    const i1 = info();
    const r1 = drainPrecopy(s, fd, 4 * (i1.initialBytes + i1.dirtyBytes) + (64 << 20));
    const ms1 = performance.now() - since;
    rounds.push({ what: "a later round", reported: i1.initialBytes + i1.dirtyBytes, read: r1.bytes, ms: ms1 });
  } finally {
    s.closeFd(fd);
  }
  s.reach(STOP);
  // What the device may have dirtied while the round was read, generously (timer grain,
  // page granularity): a driver that leaves queued data out is off by far more.
  const slack = 16 * (4096 + 16);
  const over = rounds.filter((x) => x.read - x.reported > rate * (1.5 * x.ms + 50) + slack);
  const numbers = (x: typeof rounds[number]) => `${x.what}: ${x.reported} reported, ${x.read} read`;
  if (over.length) {
    const x = over[0];
    return warn(
      id,
      `PRECOPY_INFO said ${x.reported} bytes were left (initial + dirty) but ${x.read} came before ENOMSG, ` +
        `${x.read - x.reported} more than reported in ${x.what} (the device dirtied about ` +
        `${Math.round(rate * 1000)} bytes/s): dirty_bytes leaves data out, so a tool that takes the sizes as a ` +
        `budget leaves data behind; read until ENOMSG or 0 (mlx5 4928f67bc911)`,
    );
  }
  return pass(id, `initial + dirty covered what was read until ENOMSG (${rounds.map(numbers).join("; ")})`);
}

/** One call's outcome: a byte count, "ok", or the errno name. */
function outcome(fn: () => number | void): string {
  try {
    const r = fn();
    return typeof r === "number" ? `${r}` : "ok";
  } catch (e) {
    return errnoOf(e);
  }
}

/**
 * VFIO_DEVICE_RESET during a save session and during a resume session: the device is
 * RUNNING and the old data_fd answers ENODEV (read, write; PRECOPY_INFO ENODEV, or
 * EINVAL as mtty checks the state first), never data or an end of stream a tool could
 * take for a finished session.
 */
function checkResetEndsSession(s: CheckSession, flags: number): CheckResult {
  const id = "reset-ends-session";
  const problems: string[] = [];
  const pre = supportsState(flags, PRE_COPY);
  const from = pre ? RUNNING : STOP;
  const to = pre ? PRE_COPY : STOP_COPY;
  if (!s.reach(from)) throw new StepError(`cannot bring the device to ${stateName(from)} (it is ${s.stateText()})`);
  const r = s.set(to, from);
  if (r.errno || r.fd === null) throw new StepError(`${stateName(from)} -> ${stateName(to)} gave no data_fd`);
  let readAfter: string, infoAfter: string;
  try {
    s.sessions++;
    const first = outcome(() => s.sys.read(r.fd!, new Uint8Array(16)));
    s.noteFailure(`a ${stateName(to)} session, at its first read`, first);
    const e = s.deliberateReset();
    if (e) throw new StepError(`VFIO_DEVICE_RESET failed with ${e}`);
    if (s.state() !== RUNNING) {
      problems.push(`after VFIO_DEVICE_RESET in ${stateName(to)} the device is ${s.stateText()}`);
    }
    readAfter = outcome(() => s.sys.read(r.fd!, new Uint8Array(16)));
    infoAfter = outcome(() => void s.dev.migration.precopyInfo(r.fd!));
  } finally {
    s.closeFd(r.fd);
  }
  if (readAfter !== "ENODEV") {
    problems.push(
      `read() of the ${stateName(to)} data_fd after VFIO_DEVICE_RESET ${
        /^\d+$/.test(readAfter) ? `returned ${readAfter}` : `failed with ${readAfter}`
      } ` +
        `(expected ENODEV: a reset session must not look like data or a finished stream)`,
    );
  }
  if (infoAfter !== "ENODEV" && infoAfter !== "EINVAL") {
    problems.push(`PRECOPY_INFO on the data_fd after VFIO_DEVICE_RESET gave ${infoAfter} (expected ENODEV or EINVAL)`);
  }
  if (!s.reach(STOP)) throw new StepError(`cannot bring the device to STOP (it is ${s.stateText()})`);
  const w = s.set(RESUMING, STOP);
  if (w.errno || w.fd === null) throw new StepError(`STOP -> RESUMING gave no data_fd`);
  let writeAfter: string;
  try {
    s.sessions++;
    s.noteFailure("a RESUMING session, at its first write", outcome(() => s.sys.write(w.fd!, new Uint8Array(8))));
    const e = s.deliberateReset();
    if (e) throw new StepError(`VFIO_DEVICE_RESET failed with ${e}`);
    if (s.state() !== RUNNING) problems.push(`after VFIO_DEVICE_RESET in RESUMING the device is ${s.stateText()}`);
    writeAfter = outcome(() => s.sys.write(w.fd!, new Uint8Array(8)));
  } finally {
    s.closeFd(w.fd);
  }
  if (writeAfter !== "ENODEV") {
    problems.push(
      `write() of the RESUMING data_fd after VFIO_DEVICE_RESET ${
        /^\d+$/.test(writeAfter) ? `took ${writeAfter} bytes` : `failed with ${writeAfter}`
      } (expected ENODEV)`,
    );
  }
  if (problems.length) return fail(id, problems);
  return pass(
    id,
    `RUNNING after each reset; the ${stateName(to)} data_fd: read ENODEV, PRECOPY_INFO ${infoAfter}; ` +
      `the RESUMING data_fd: write ENODEV`,
  );
}

/** The config region's offset on the device fd, or null without one (src/vfio/regions.ts). */
function configOffset(dev: VfioDevice): number | null {
  const r = findRegion(dev.sys, dev.fd, PCI_REGION.CONFIG);
  return r && r.size >= 0x40 ? r.offset : null;
}

/**
 * Arms the command register (memory space, bus master) and the MSI / MSI-X enables,
 * resets, and compares: a function whose reset clears them is allowed, but whoever
 * resets it must restore its config (Cloud Hypervisor PR #8528 had to). Puts the
 * original values back.
 */
function checkConfigAfterReset(s: CheckSession): CheckResult {
  const id = "config-after-reset";
  const base = configOffset(s.dev);
  const cfg = s.dev.readConfig();
  if (base === null || !cfg || cfg.length < 0x40) return skip(id, "the device has no PCI config region");
  const u16 = (b: Uint8Array, at: number) => b[at] | (b[at + 1] << 8);
  const write16 = (at: number, v: number) => {
    s.dev.sys.pwrite(s.dev.fd, new Uint8Array([v & 0xff, v >> 8]), base + at);
  };
  const fields: { name: string; at: number; bits: number }[] = [{ name: "command register", at: 0x04, bits: 0x0006 }];
  const msi = capControl(cfg, 0x05);
  if (msi !== null) fields.push({ name: "MSI enable", at: msi, bits: 0x0001 });
  const msix = capControl(cfg, 0x11);
  if (msix !== null) fields.push({ name: "MSI-X enable", at: msix, bits: 0x8000 });
  const original = fields.map((f) => u16(cfg, f.at));
  try {
    fields.forEach((f, i) => write16(f.at, original[i] | f.bits));
    const armedCfg = s.dev.readConfig()!;
    const armed = fields.map((f) => u16(armedCfg, f.at) & f.bits);
    if (armed.every((v) => v === 0)) {
      return skip(id, `nothing to compare: the device ignores writes of ${fields.map((f) => f.name).join(", ")}`);
    }
    const e = s.deliberateReset();
    if (e) throw new StepError(`VFIO_DEVICE_RESET failed with ${e}`);
    const afterCfg = s.dev.readConfig()!;
    const cleared: string[] = [];
    const kept: string[] = [];
    fields.forEach((f, i) => {
      if (!armed[i]) return;
      const now = u16(afterCfg, f.at) & f.bits;
      (now === armed[i] ? kept : cleared).push(`${f.name} (0x${armed[i].toString(16)} -> 0x${now.toString(16)})`);
    });
    if (cleared.length) {
      return warn(
        id,
        `VFIO_DEVICE_RESET cleared ${cleared.join(", ")}: what a PCI function's reset does; whoever resets ` +
          `the device must restore its config (QEMU does; Cloud Hypervisor #8528 had to)`,
      );
    }
    return pass(id, `VFIO_DEVICE_RESET kept ${kept.join(", ")}`);
  } finally {
    fields.forEach((f, i) => write16(f.at, original[i]));
  }
}

function checkSpontaneousReset(s: CheckSession): CheckResult {
  const id = "spontaneous-reset";
  if (s.spontaneous.length) {
    return fail(id, [
      ...s.spontaneous,
      "the device ended sessions on its own (the uAPI allows a state change only on a SET or VFIO_DEVICE_RESET; " +
      "pds does so when its device recovers): a tool must take ENODEV as a lost session, never as data",
    ]);
  }
  return pass(id, `${s.sessions} sessions, none ended by the device`);
}

/**
 * Closes and reopens the device (in STOP, after a complete session): the state should
 * still be STOP (a WARN when it comes back RUNNING: vfio-pci resets at first open, mlx5
 * and hisi_acc set RUNNING), and a new session must carry all the data (FAIL when it is
 * shorter, or when it differs although the state survived).
 */
function checkReopen(s: CheckSession, opts: CheckOptions, baseline: CaptureResult | null): CheckResult[] {
  const ids = ["reopen-session", "reopen-state"];
  if (!opts.reopen) return ids.map((i) => skip(i, "the device cannot be reopened here (a borrowed or inherited fd)"));
  if (!baseline || !s.image) return ids.map((i) => skip(i, "no STOP_COPY image was captured"));
  if (!s.reach(STOP)) throw new StepError(`cannot bring the device to STOP (it is ${s.stateText()})`);
  let dev: VfioDevice;
  try {
    dev = opts.reopen(s.dev);
  } catch (e) {
    throw new StepError(`reopening the device failed: ${e instanceof Error ? e.message : e}`);
  }
  s.replaceDevice(dev);
  const after = s.state();
  const state = after === STOP ? pass("reopen-state", "STOP when closed, STOP after reopening") : warn(
    "reopen-state",
    `the device was STOP when closed and is ${s.stateText()} after reopening: its migration state does not ` +
      `survive a close (vfio-pci resets the function at the first open; mlx5 and hisi_acc set RUNNING at open)`,
  );
  const max = opts.maxImageBytes ?? 4 * 1024 ** 3;
  const again = s.capture(max).image;
  let session: CheckResult;
  try {
    const first = s.image;
    const d = first.firstDifference(again);
    if (again.size < first.size) {
      session = fail("reopen-session", [
        `after reopening, a STOP_COPY session gave ${again.size} bytes where the first gave ${first.size}: ` +
        `the device's data is missing from the second migration (hisi_acc 8c6ac1730a97)`,
      ]);
    } else if (d !== null && after === STOP) {
      session = fail("reopen-session", [
        `after reopening (the state kept), a STOP_COPY session differs from the first at byte ${d}`,
      ]);
    } else {
      session = pass(
        "reopen-session",
        `a session after reopening gave all ${again.size} bytes${
          d === null ? ", identical" : " (the device was reset)"
        }`,
      );
    }
  } finally {
    again.close();
  }
  if (after !== STOP) s.loadImage(); // the open reset it: its own image back
  return [session, state];
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
