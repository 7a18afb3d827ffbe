// The torture group: `vfio-mig check --torture` against every real driver of the kernel
// lab, INSIDE the test guest, with a fixed seed and budget; meant for the sanitizer kernel
// (run.sh --sanitizer-kernel: KASAN, UBSAN, lockdep, hang detectors), runs on the others
// too. tests/kernel/suite.sh runs it in its own guest; alone:
//
//   bash tests/kernel/run.sh --sanitizer-kernel --timeout 1800 -- \
//       deno run -A tests/kernel/guest/torture.ts [--seed N] [--steps N] [--out DIR] [--only PART ...]
//
// --only PART (repeatable) runs only those parts: settings, mtty, mtty_v1, ivshmem,
// control, known.
//
// Targets: mtty-2 (the kernel's mtty sample, uAPI v2), mtty_v1-2 (the v1 region protocol;
// fuzzing), the first ivshmem-plain function bound to the lab's variant driver
// (tests/kernel/ivshmem_mig/ivshmem_vfio_pci.c). Then the positive control: the second
// function with the driver's planted defect trust_resume_len on (a chunk record's offset
// and length from resume data are trusted): fuzzing must report it (on the sanitizer
// kernel: in the kernel log, a KASAN report). Last, every known finding
// (tests/kernel/torture/known-findings.json) not seen in the runs is replayed from its
// file on a fresh device.
//
// What the torture finds in a driver is reported with its replay command. A finding that
// matches the known list is expected and passes; a new one fails (it is either a new bug
// to list, with its replay file, or a flake to chase); a known one that no longer
// reproduces fails too (the list is out of date). Prints PASS/FAIL lines and ends with
// "kernel: N passed, N failed", as tests/kernel/suite.ts does.

import { formatTorture } from "../../../src/check/torture/report.ts";
import type { TortureFinding, TortureReport } from "../../../src/check/torture/supervisor.ts";
import { assert, check, CLI, counts, createMtty, removeCreatedMtty, ROOT } from "../lib/guest.ts";

function arg(name: string, dflt: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && Deno.args[i + 1] !== undefined ? Deno.args[i + 1] : dflt;
}
const SEED = arg("seed", Deno.env.get("TORTURE_SEED") ?? "20261206");
const STEPS = arg("steps", Deno.env.get("TORTURE_STEPS") ?? "100");
/** A call that does not return within this bound is a hang finding (s); each hang found costs this much. */
const STEP_TIMEOUT = arg("step-timeout", Deno.env.get("TORTURE_STEP_TIMEOUT") ?? "30");
/** Replay files: in the checkout, so that they outlive the guest. */
const OUT = arg("out", Deno.env.get("TORTURE_OUT") ?? `${ROOT}tests/kernel/torture/out`);
const FLAVOUR = Deno.env.get("VFIO_MIG_KERNEL_FLAVOUR") ?? "unknown";
const SANITIZER = FLAVOUR === "sanitizer";
const PARTS = ["settings", "mtty", "mtty_v1", "ivshmem", "control", "known"];
const only = Deno.args.flatMap((a, i) => (a === "--only" && Deno.args[i + 1] ? [Deno.args[i + 1]] : []));
for (const o of only) if (!PARTS.includes(o)) throw new Error(`--only ${o}: the parts are ${PARTS.join(", ")}`);
const want = (part: string) => only.length === 0 || only.includes(part);
const CONTROL_CASES = 64;

interface Known {
  id: string;
  /** The torture target it belongs to: mtty, mtty_v1, ivshmem_vfio_pci. */
  driver: string;
  /** The device type a replay needs (mtty-2, mtty_v1-2). */
  device: string;
  summary: string;
  /** Regular expressions that all match the finding's text (call, details, kernel log). */
  match: string[];
  /** The replay file, relative to the checkout. */
  replay: string;
}
const KNOWN: Known[] = JSON.parse(
  Deno.readTextFileSync(`${ROOT}tests/kernel/torture/known-findings.json`),
).findings;

const findingText = (f: TortureFinding) => [f.what, ...f.detail, ...f.kmsg].join("\n");
function knownAs(driver: string, f: TortureFinding): Known | undefined {
  return KNOWN.find((k) => k.driver === driver && k.match.every((re) => new RegExp(re).test(findingText(f))));
}

/** Every finding of every run, for the summary at the end. */
const all: { target: string; f: TortureFinding; label: string }[] = [];
const seenKnown = new Set<string>();
const coverage: string[] = [];

/** Runs `check --torture` with --json; prints its report (prefixed) and returns it. */
async function torture(target: string, spec: string, extra: string[] = []): Promise<TortureReport> {
  const args = [
    "run",
    "-A",
    CLI,
    "check",
    "--torture",
    "--i-accept-state-loss",
    "--device",
    spec,
    "--step-timeout",
    STEP_TIMEOUT,
    "--json",
    ...extra,
  ];
  const t0 = performance.now();
  try {
    Deno.removeSync(OUT, { recursive: true }); // the replay files of an earlier run
  } catch { /* none */ }
  const out = await new Deno.Command("deno", { args, stdin: "null", stdout: "piped", stderr: "piped" }).output();
  const stdout = new TextDecoder().decode(out.stdout), stderr = new TextDecoder().decode(out.stderr);
  const secs = ((performance.now() - t0) / 1000).toFixed(0);
  let r: TortureReport;
  try {
    r = JSON.parse(stdout);
  } catch {
    throw new Error(`check --torture on ${spec} exited ${out.code} without a report: ${stderr.trim().slice(-400)}`);
  }
  if (out.code !== 0 && out.code !== 1) throw new Error(`check --torture on ${spec} exited ${out.code}: ${r.error}`);
  console.log(formatTorture(r).split("\n").map((l) => `  [${target}] ${l}`).join("\n"));
  console.log(`  [${target}] (${secs} s with the CLI's start)`);
  return r;
}

/** Records a run's findings against the known list; throws naming the new ones. */
function judge(target: string, driver: string, r: TortureReport): void {
  const fresh: TortureFinding[] = [];
  for (const f of r.findings) {
    const known = knownAs(driver, f);
    all.push({ target, f, label: known ? `known (${known.id})` : "NEW" });
    if (known) seenKnown.add(known.id);
    else fresh.push(f);
  }
  const z = r.fuzz, s = r.stress;
  coverage.push(
    `${target}: ${
      z
        ? `${z.cases} fuzz cases (${z.refusedWrite}/${z.refusedStop}/${z.accepted} refused at write/` +
          `refused leaving RESUMING/accepted, format ${z.format})`
        : "no fuzzing"
    }, ${s ? `${s.steps} stress steps (${s.arcs.length} requests)` : "no stress"}, ${r.calls} calls in ${
      (r.durationMs / 1000).toFixed(0)
    } s, ${r.findings.length} finding(s)`,
  );
  assert(
    fresh.length === 0,
    `${fresh.length} new finding(s): ${
      fresh.map((f) => `#${f.id} ${f.kinds.join("+")} at call ${f.step} (${f.what}); replay: ${f.replayCommand}`)
        .join("; ")
    } — list it in tests/kernel/torture/known-findings.json with its replay file, or chase the flake`,
  );
}

function mttyV1(): string {
  const uuid = crypto.randomUUID();
  Deno.writeTextFileSync("/sys/class/mdev_bus/mtty_v1/mdev_supported_types/mtty_v1-2/create", uuid);
  return uuid;
}
function removeMdev(uuid: string): void {
  try {
    Deno.writeTextFileSync(`/sys/bus/mdev/devices/${uuid}/remove`, "1");
  } catch { /* wedged (a finding) or gone */ }
}

// ivshmem-plain functions (1af4:1110), bound to the variant driver by driver_override.
const DRIVER = "ivshmem_vfio_pci";
const PARAMS = `/sys/module/${DRIVER}/parameters`;
function ivshmemFunctions(): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync("/sys/bus/pci/devices")) {
    const d = `/sys/bus/pci/devices/${e.name}`;
    try {
      if (
        Deno.readTextFileSync(`${d}/vendor`).trim() === "0x1af4" &&
        Deno.readTextFileSync(`${d}/device`).trim() === "0x1110"
      ) out.push(e.name);
    } catch { /* not one */ }
  }
  return out.sort();
}
function bind(bdf: string): void {
  const d = `/sys/bus/pci/devices/${bdf}`;
  let cur: string | null = null;
  try {
    cur = Deno.readLinkSync(`${d}/driver`).split("/").pop()!;
  } catch { /* unbound */ }
  if (cur === DRIVER) return;
  if (cur) Deno.writeTextFileSync(`${d}/driver/unbind`, bdf);
  Deno.writeTextFileSync(`${d}/driver_override`, DRIVER);
  Deno.writeTextFileSync("/sys/bus/pci/drivers_probe", bdf);
}
const setDefect = (on: boolean) => Deno.writeTextFileSync(`${PARAMS}/trust_resume_len`, on ? "1" : "0");

console.log(
  `torture: seed ${SEED}, ${STEPS} fuzz cases and ${STEPS} stress steps per device, step bound ${STEP_TIMEOUT} s, ` +
    `kernel ${Deno.readTextFileSync("/proc/sys/kernel/osrelease").trim()} (${FLAVOUR}); replay files in ${OUT}`,
);
const t0 = performance.now();

if (SANITIZER && want("settings")) {
  await check("sanitizer kernel: KASAN (multi-shot), lockdep, hung-task detector on; panic_on_warn off", async () => {
    const cmdline = Deno.readTextFileSync("/proc/cmdline");
    assert(/\bkasan_multi_shot\b/.test(cmdline), `no kasan_multi_shot in /proc/cmdline: ${cmdline.trim()}`);
    const dmesg = new TextDecoder().decode((await new Deno.Command("dmesg", { stdout: "piped" }).output()).stdout);
    assert(/KernelAddressSanitizer initialized/.test(dmesg), "dmesg has no 'KernelAddressSanitizer initialized'");
    assert(Deno.statSync("/proc/lockdep").isFile, "no /proc/lockdep");
    const num = (p: string) => Deno.readTextFileSync(p).trim();
    assert(num("/proc/sys/kernel/panic_on_warn") === "0", "panic_on_warn is on");
    assert(num("/proc/sys/kernel/hung_task_panic") === "0", "hung_task_panic is on");
    assert(num("/proc/sys/kernel/hung_task_timeout_secs") === "30", "hung_task_timeout_secs is not 30");
  });
}

if (want("mtty")) {
  await check(`torture mtty-2 (seed ${SEED}, ${STEPS}+${STEPS}): no new finding`, async () => {
    const u = createMtty("mtty-2");
    judge("mtty-2", "mtty", await torture("mtty-2", u, ["--seed", SEED, "--steps", STEPS, "--out", `${OUT}/mtty-2`]));
  });
  removeCreatedMtty();
}

if (want("mtty_v1")) {
  await check(`torture mtty_v1-2 (seed ${SEED}, ${STEPS} fuzz cases): no new finding`, async () => {
    const u = mttyV1();
    try {
      judge(
        "mtty_v1-2",
        "mtty_v1",
        await torture("mtty_v1-2", u, ["--seed", SEED, "--steps", STEPS, "--out", `${OUT}/mtty_v1-2`]),
      );
    } finally {
      removeMdev(u);
    }
  });
}

const fns = ivshmemFunctions();
if (want("ivshmem")) {
  await check(`torture ${DRIVER} (seed ${SEED}, ${STEPS}+${STEPS}, defects off): no new finding`, async () => {
    assert(fns.length >= 2, `two ivshmem-plain functions wanted, found ${fns.length} (VFIO_MIG_KERNEL_PCI=0?)`);
    setDefect(false);
    bind(fns[0]);
    judge(
      `${DRIVER} ${fns[0]}`,
      DRIVER,
      await torture(DRIVER, fns[0], ["--seed", SEED, "--steps", STEPS, "--out", `${OUT}/${DRIVER}`]),
    );
  });
}

// The positive control: the planted defect must be found. Before the replays of known
// findings: a wedged task of those makes the hung-task detector speak every 30 s, and
// such lines must not be what the control is found by. A fuzz run of CONTROL_CASES
// cases whatever --steps says: the structured cases put the first chunk record's offset
// and length at their boundaries in cases 50-64 (the format is known: mutate.ts).
if (want("control")) {
  await check(`positive control: ${DRIVER} with trust_resume_len=1 is reported by the fuzzing`, async () => {
    assert(fns.length >= 2, `two ivshmem-plain functions wanted, found ${fns.length}`);
    bind(fns[1]);
    setDefect(true);
    let r: TortureReport;
    try {
      r = await torture(`control ${DRIVER}`, fns[1], [
        "--seed",
        SEED,
        "--steps",
        String(CONTROL_CASES),
        "--only",
        "fuzz",
        "--out",
        `${OUT}/control`,
      ]);
    } finally {
      setDefect(false);
    }
    // On the sanitizer kernel the kernel must say it (a KASAN report, or the Oops of a
    // write that missed the buffer by gigabytes); elsewhere any finding counts (without
    // KASAN a write into vmalloc's guard page can fail quietly with EFAULT).
    const caught = r.findings.filter((f) =>
      f.phase === "fuzz" &&
      (SANITIZER
        ? f.kinds.includes("kernel-log") && f.kmsg.some((l) => /KASAN|Oops|BUG:|usercopy/.test(l))
        : f.kinds.length > 0)
    );
    assert(
      caught.length > 0,
      `not found: ${r.findings.length} finding(s), none ${SANITIZER ? "with a kernel-log report" : ""} ` +
        `during fuzzing (fuzz: ${JSON.stringify(r.fuzz)})`,
    );
    // Every finding is judged, as in the other runs. A known one met on the way counts as met
    // (lockdep reports once per boot: a replay after this run could not show it again). The
    // planted defect is the first caught one; what shows at or after its call is its
    // consequence (the kernel is tainted, the function wedged). An unknown finding before it
    // is new: the control's own run met a bug the driver's defects-off run did not.
    const f = caught[0];
    const fresh: TortureFinding[] = [];
    for (const g of r.findings) {
      const known = knownAs(DRIVER, g);
      if (known) seenKnown.add(known.id);
      else if (g.step < f.step) fresh.push(g);
      const label = known
        ? `known (${known.id})`
        : g === f
        ? "the planted defect"
        : g.step < f.step
        ? "NEW"
        : "after the planted defect";
      all.push({ target: `control ${fns[1]}`, f: g, label });
    }
    assert(
      fresh.length === 0,
      `${fresh.length} new finding(s) before the planted defect's: ${
        fresh.map((g) => `#${g.id} ${g.kinds.join("+")} at call ${g.step} (${g.what}); replay: ${g.replayCommand}`)
          .join("; ")
      } — list it in tests/kernel/torture/known-findings.json with its replay file, or chase the flake`,
    );
    console.log(
      `  control found: #${f.id} ${f.kinds.join("+")} at call ${f.step}, ${f.case ?? f.phase}: ${
        f.kmsg.find((l) => /KASAN|BUG|Oops/.test(l)) ?? f.detail[0]
      }`,
    );
  });

  // Known findings not met in the runs above: each replayed on a fresh device, last (a
  // replay may wedge that device, or a task, until the guest powers off).
}

for (const k of want("known") ? KNOWN : []) {
  await check(`known finding ${k.id} (${k.driver}) still reproduces`, async () => {
    if (seenKnown.has(k.id)) {
      console.log(`  ${k.id}: found again by the runs above`);
      return;
    }
    // An mdev of that type, or for the PCI driver the first function (the control wedged the second).
    let u: string;
    if (k.device === DRIVER) {
      assert(fns.length >= 1, "no ivshmem-plain function to replay on");
      setDefect(false);
      bind(fns[0]);
      u = fns[0];
    } else u = k.device === "mtty_v1-2" ? mttyV1() : createMtty(k.device as "mtty-2");
    const r = await torture(`replay ${k.id}`, u, ["--replay", `${ROOT}${k.replay}`]);
    for (const f of r.findings) all.push({ target: `replay ${k.id}`, f, label: `known (${k.id})` });
    assert(r.replay?.reproduced, `${k.replay} did not reproduce on ${u}: fixed? then take it off the list`);
  });
}

console.log("");
console.log(`torture summary (${((performance.now() - t0) / 1000).toFixed(0)} s):`);
for (const c of coverage) console.log(`  covered: ${c}`);
for (const { target, f, label } of all) {
  console.log(
    `  finding [${target}] #${f.id} ${f.kinds.join("+")} at call ${f.step}: ${label}; replay: ${f.replayCommand}`,
  );
}
console.log(`kernel: ${counts.passed} passed, ${counts.failed} failed`);
Deno.exit(counts.failed === 0 ? 0 : 1);
