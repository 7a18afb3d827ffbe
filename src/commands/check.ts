import { arcMismatches, type ArcResult, expectedArc } from "../check/arcs.ts";
import { type CheckReport, CHECKS, runChecks } from "../check/conformance.ts";
import { V1_CHECKS } from "../check/v1.ts";
import { defaultDeviceSpec, loadBackendsFor, openDevice, systemFor } from "../device/open.ts";
import { EXIT, VfioMigError } from "../errors.ts";
import { DeviceState } from "../vfio/state_machine.ts";
import { deviceHelp, examplesHelp, exitCodesHelp, vfTokenHelp } from "./help.ts";
import { type Command, hex, parse, printJson } from "./command.ts";
import { VF_TOKEN_OPTION, vfTokenFor } from "./devices.ts";

function table(rows: string[][]): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ").trimEnd());
}

export function formatCheck(r: CheckReport, arcs = false): string {
  const out: string[] = [];
  const who = [r.driver ? `driver ${r.driver}` : null, r.mdevType ? `mdev type ${r.mdevType}` : null]
    .filter((x) => x).join(", ");
  out.push(`vfio-mig check ${r.device}${who ? ` (${who})` : ""}`);
  if (r.migrationFlags !== null) {
    out.push(
      `migration flags ${hex(r.migrationFlags, 1)} (${r.flagNames.join(" ")}); MIG_DATA_SIZE ` +
        `${r.dataSize ?? "not reported"}; STOP_COPY produced ${r.stopCopyBytes ?? "?"} bytes; ` +
        `state ${r.initialState ?? "?"} before, ${r.finalState ?? "?"} after; ${r.resets} reset${
          r.resets === 1 ? "" : "s"
        }`,
    );
  } else if (r.protocol === "v1") {
    out.push(
      `migration protocol v1 (the deprecated region protocol): the v2-only checks SKIP; state ${
        r.initialState ?? "?"
      } before, ${r.finalState ?? "?"} after`,
    );
  }
  out.push("");
  const width = Math.max(...Object.keys(CHECKS).map((k) => k.length));
  out.push(`${"RESULT".padEnd(6)}  ${"CHECK".padEnd(width)}  DETAIL`);
  for (const c of r.checks) {
    const [first, ...more] = c.detail.split("\n");
    out.push(`${c.status.padEnd(6)}  ${c.id.padEnd(width)}  ${first}`);
    for (const line of more) out.push(`${"".padEnd(6)}  ${"".padEnd(width)}  ${line}`);
  }
  if (arcs && r.arcs.length && r.migrationFlags !== null) {
    out.push("", ...arcTable(r.migrationFlags, r.arcs));
  }
  const s = r.summary;
  out.push("", `summary: ${s.PASS} PASS, ${s.FAIL} FAIL, ${s.WARN} WARN, ${s.SKIP} SKIP`);
  return out.join("\n");
}

function arcTable(flags: number, rows: ArcResult[]): string[] {
  const bad = new Set(arcMismatches(flags, rows).map((m) => m.row));
  const lines = [["FROM", "TO", "RESULT", "FINAL", "DATA_FD", "EXPECTED"]];
  for (const row of rows) {
    const e = expectedArc(
      flags,
      DeviceState[row.from as keyof typeof DeviceState],
      DeviceState[row.to as keyof typeof DeviceState],
    );
    lines.push([
      row.from,
      row.to,
      row.errno ?? "ok",
      row.finalState,
      row.dataFd ? "yes" : "-",
      bad.has(row) ? `MISMATCH: ${e.errno ?? "ok"} ${e.finalState}${e.dataFd ? " data_fd" : ""}` : "=",
    ]);
  }
  return table(lines);
}

const TORTURE_HELP = `
Torture (destructive):
  vfio-mig check --torture --i-accept-state-loss [--device D] [--seed N]
                 [--steps N] [--time S] [--only fuzz|stress] [--step-timeout S]
                 [--out DIR] [--events FILE] [--json]
  vfio-mig check --torture --replay FILE --device D --i-accept-state-loss

Fuzzes what the driver's resume path accepts (mutations of the device's own saved
state: bit flips, truncations, extensions, repeated and reordered chunks, zeroed and
all-ones ranges, known fields at their boundaries, random data; each accepted state is
used, saved, and the original loaded back), then stresses its sessions (a random walk
of the state machine with resets, reopens, data_fd closes mid-transfer, odd-sized reads
and writes, a second fd, PRECOPY_INFO and MIG_DATA_SIZE in every state). The calls run
in a child process; the kernel log (/dev/kmsg, root) is read between calls and each
WARN, BUG, Oops, KASAN, UBSAN, lockdep, hung-task or lockup line is pinned on the call
that caused it; a call that does not return within --step-timeout is a hang. Every
finding gets a replay file (the exact calls and bytes) in --out; --replay runs it.
It overwrites the device's state with garbage and may wedge its firmware: it runs only
with --i-accept-state-loss, on a device nobody uses.

      --torture              run the torture instead of the conformance checks
      --i-accept-state-loss  required with --torture
      --seed N               the run's seed (default: random, printed)
      --steps N              fuzz cases and stress steps, each (default 200)
      --time S               wall-clock budget in seconds for the whole run (default: none)
      --only fuzz|stress     one half only
      --step-timeout S       a call that takes longer is a hang (default 30)
      --out DIR              replay files (default ./vfio-mig-torture-SEED; removed when empty)
      --events FILE          every call, finding and kernel-log record as JSON lines
      --replay FILE          replays a finding's file on --device

Torture exit codes: 0 no finding (a replay: not reproduced), 1 findings (reproduced),
2 usage, 3 device not openable or not migratable, 130 interrupted.`;

export const checkCommand: Command = {
  name: "check",
  help: `Usage: vfio-mig check [--device D] [--json] [--arcs]

Checks a device's migration driver against the VFIO uAPI and prints a PASS / FAIL /
WARN / SKIP table with reasons:
${Object.entries(CHECKS).map(([k, v]) => `  ${k.padEnd(22)} ${v}`).join("\n")}
${Object.entries(V1_CHECKS).map(([k, v]) => `  ${k.padEnd(22)} ${v}`).join("\n")}

A v1 device (the region protocol, no VFIO_DEVICE_FEATURE_MIGRATION) gets what applies to
v1: v1-region, round-trip through the region, pci-config-region, config-after-reset,
final-state; every other check is SKIP "v2-only" with the reason.

The arc exploration requests, from every supported state, every state 0..7, except
STOP_COPY -> PRE_COPY and -> PRE_COPY_P2P, which Linux 6.2 and later spin forever on
(a soft lockup in vfio_mig_get_next_state()) until the fix "vfio: prevent infinite
loop in vfio_mig_get_next_state() on blocked arc" (2026; Linux 7.1 and stable
kernels). Any data_fd is closed at once; a RESUMING one is first fed the device's own
STOP_COPY image, so leaving RESUMING loads valid data. WARN does not fail the check
(e.g. a device producing more than its MIG_DATA_SIZE estimate).

The check drives the device through every state, resets it (reset-ends-session,
config-after-reset: the command register and MSI/MSI-X enables are set, then put
back), and closes and reopens it (reopen-*): run it only on a device nobody uses. It
ends RUNNING, with its own saved state loaded back (a device that loses it at a reset or
an open gets it back).

Options:
${deviceHelp(19)}
${vfTokenHelp(19)}
      --json       machine-readable report: every check, the findings (its FAILs and
                   WARNs) and the arc table
      --arcs       also print the arc table
  -h, --help       this help

${
    examplesHelp([
      "vfio-mig check --device 0000:3b:00.1",
      "vfio-mig check --device sim:/tmp/a --arcs",
      "vfio-mig check --device 0000:3b:00.1 --json > check.json",
    ])
  }

${
    exitCodesHelp([0, 1, 2, 3], {
      0: "no FAIL (--torture: no finding)",
      1: "at least one FAIL, or a device step failed (--torture: a finding)",
    })
  }
${TORTURE_HELP}`,
  async run(args) {
    const { values, positionals } = parse("check", args, {
      device: { type: "string", short: "d" },
      ...VF_TOKEN_OPTION,
      json: { type: "boolean" },
      arcs: { type: "boolean" },
      torture: { type: "boolean" },
      "i-accept-state-loss": { type: "boolean" },
      seed: { type: "string" },
      steps: { type: "string" },
      time: { type: "string" },
      only: { type: "string" },
      "step-timeout": { type: "string" },
      out: { type: "string" },
      events: { type: "string" },
      replay: { type: "string" },
      "torture-worker": { type: "string" },
      trace: { type: "string" },
    });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    if (positionals.length) {
      throw new VfioMigError(`check: unexpected argument ${positionals[0]} (use --device)`, "usage");
    }
    if (values["torture-worker"] !== undefined) return Promise.resolve(tortureWorker(values));
    const tortureOnly = [
      "i-accept-state-loss",
      "seed",
      "steps",
      "time",
      "only",
      "step-timeout",
      "out",
      "events",
      "replay",
    ]
      .filter((k) => values[k as keyof typeof values] !== undefined);
    if (!values.torture && tortureOnly.length) {
      throw new VfioMigError(`check: --${tortureOnly[0]} goes with --torture`, "usage");
    }
    if (values.torture) {
      if (values["vf-token"] !== undefined) {
        throw new VfioMigError("check: --vf-token goes without --torture (its workers reopen the device)", "usage");
      }
      return torture(values);
    }
    const spec = values.device ?? defaultDeviceSpec(systemFor([]));
    const vfToken = vfTokenFor("check", values["vf-token"], [spec]);
    const openOpts = vfToken !== null ? { vfToken } : {};
    await loadBackendsFor([spec]);
    const sys = systemFor([spec]);
    const dev = openDevice(sys, spec, openOpts);
    // A borrowed (pid:) or inherited (fd:) device cannot be opened again by us.
    const reopenable = !/^(pid|fd):/.test(spec);
    try {
      const r = runChecks(dev, {
        reopen: reopenable
          ? (old) => {
            old.close();
            return openDevice(sys, spec, openOpts);
          }
          : undefined,
      });
      if (values.json) printJson(r);
      else console.log(formatCheck(r, values.arcs));
      if (!r.migratable) return Promise.resolve(EXIT.DEVICE);
      return Promise.resolve(r.ok ? EXIT.OK : EXIT.FAILURE);
    } finally {
      dev.close();
    }
  },
};

type Values = Record<string, string | boolean | undefined>;

function num(values: Values, name: string, def: number, min = 0): number {
  const v = values[name];
  if (v === undefined) return def;
  const n = Number(v);
  if (typeof v !== "string" || !Number.isFinite(n) || n < min) {
    throw new VfioMigError(`check: --${name} wants a number >= ${min}, not ${v}`, "usage");
  }
  return n;
}

async function torture(values: Values): Promise<number> {
  if (!values["i-accept-state-loss"]) {
    throw new VfioMigError(
      "check --torture overwrites the device's migration state with fuzzed data and may wedge the device " +
        "until a reboot: add --i-accept-state-loss to run it (on a device nobody uses)",
      "usage",
    );
  }
  const only = values.only as string | undefined;
  if (only !== undefined && only !== "fuzz" && only !== "stress") {
    throw new VfioMigError(`check: --only wants fuzz or stress, not ${only}`, "usage");
  }
  if (values.replay && (values.seed || values.steps || values.time || values.only)) {
    throw new VfioMigError(
      "check: --replay runs the file's calls: --seed, --steps, --time and --only do not apply",
      "usage",
    );
  }
  const { libc } = await import("../../ffi/libc.ts");
  const { readReplayHeader } = await import("../check/torture/replay.ts");
  const { runTorture } = await import("../check/torture/supervisor.ts");
  const { formatTorture } = await import("../check/torture/report.ts");
  const sys = libc();
  let spec = values.device as string | undefined;
  if (values.replay) {
    try {
      readReplayHeader(sys, values.replay as string);
    } catch (e) {
      throw new VfioMigError(`check --replay: ${e instanceof Error ? e.message : e}`, "usage");
    }
    if (!spec) throw new VfioMigError("check --replay: give the device to replay on with --device", "usage");
  }
  spec ??= defaultDeviceSpec(systemFor([]));
  await loadBackendsFor([spec]);
  const seed = values.seed !== undefined ? num(values, "seed", 0) : crypto.getRandomValues(new Uint32Array(1))[0];
  const steps = num(values, "steps", 200, 1);
  const timeMs = num(values, "time", 0) * 1000;
  const stepTimeoutMs = num(values, "step-timeout", 30, 0.1) * 1000;
  const outDir = (values.out as string | undefined) ?? `vfio-mig-torture-${seed}`;
  console.error(
    `vfio-mig check --torture: DESTRUCTIVE: ${spec}'s migration state and data will be overwritten with ` +
      `fuzzed data, it will be reset and reopened, and it may be left wedged${values.replay ? "" : ` (seed ${seed})`}.`,
  );
  const r = await runTorture({
    spec,
    seed,
    steps,
    timeMs,
    only: (only as "fuzz" | "stress" | undefined) ?? null,
    stepTimeoutMs,
    outDir,
    events: values.events as string | undefined,
    replay: values.replay as string | undefined,
  }, sys);
  if (r.error) throw new VfioMigError(r.error, "device");
  if (values.json) printJson(r);
  else console.log(formatTorture(r));
  if (r.interrupted) return EXIT.INTERRUPTED;
  if (r.replay) return r.replay.reproduced ? EXIT.FAILURE : EXIT.OK;
  return r.findings.length ? EXIT.FAILURE : EXIT.OK;
}

/** The child process of --torture (hidden): --torture-worker PROGRESS_FD,ACK_FD. */
async function tortureWorker(values: Values): Promise<number> {
  const { libc } = await import("../../ffi/libc.ts");
  const { TortureWorker } = await import("../check/torture/engine.ts");
  const { runReplayWorker } = await import("../check/torture/replay.ts");
  const [progressFd, ackFd] = String(values["torture-worker"]).split(",").map(Number);
  const spec = values.device as string;
  const trace = values.trace as string;
  const host = libc();
  await loadBackendsFor([spec]);
  const sys = systemFor([spec]);
  try {
    if (values.replay) return runReplayWorker(sys, values.replay as string, spec, trace, progressFd, ackFd);
    return new TortureWorker(sys, {
      spec,
      seed: Number(values.seed ?? 0),
      steps: Number(values.steps ?? 200),
      timeMs: Number(values.time ?? 0) * 1000,
      only: (values.only as "fuzz" | "stress" | undefined) ?? null,
      tracePath: trace,
      progressFd,
      ackFd,
    }).run();
  } catch (e) {
    const text = e instanceof Error ? e.message : String(e);
    try {
      host.write(progressFd, new TextEncoder().encode(JSON.stringify({ t: "error", text }) + "\n"));
    } catch { /* the supervisor is gone */ }
    return EXIT.DEVICE;
  }
}
