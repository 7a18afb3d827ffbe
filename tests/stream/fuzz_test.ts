// The CI sample of the stream fuzzer (tests/stream/fuzz.ts): a fixed seed, 20,000 cases, run
// as `deno task fuzz` runs it, in a subprocess under a watchdog so that a hang fails
// the test instead of stalling it. Any seed and count: deno task fuzz --count N --seed S.

import { assert, assertEquals, fail } from "../helpers/assert.ts";
import type { FuzzReport } from "./fuzz.ts";

const FUZZ = new URL("./fuzz.ts", import.meta.url).pathname;
const ROOT = new URL("../..", import.meta.url).pathname;
const SEED = 20_260;
const COUNT = 20_000;
// A hang of one case is caught inside (fuzz.ts, per load); this bounds the whole run on a
// slow shared host (70–100 cases/s there, 700+ on a quiet one).
const WATCHDOG_MS = 900_000;
/** Resident memory the run may use: a handful of 4 MiB read buffers awaiting GC, not a length field's claim. */
const MAX_RSS_MIB = 512;

Deno.test(`fuzz: ${COUNT} mutated streams (seed ${SEED}) into load and inspect: no uncaught error, no hang, nothing unverified reaches a device`, async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-ffi",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      FUZZ,
      "--count",
      String(COUNT),
      "--seed",
      String(SEED),
      "--json",
    ],
    cwd: ROOT,
    env: { NO_COLOR: "1", VFIO_MIG_SIM_FAULTS: "", VFIO_MIG_SIM_LOG: "", VFIO_MIG_PAUSE_AT: "" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let hung = false;
  const watchdog = setTimeout(() => {
    hung = true;
    child.kill("SIGKILL");
  }, WATCHDOG_MS);
  const out = await child.output();
  clearTimeout(watchdog);
  const stderr = new TextDecoder().decode(out.stderr);
  if (hung) fail(`the fuzzer did not finish within ${WATCHDOG_MS / 1000} s (a hang?)\n${stderr.slice(-2000)}`);
  const text = new TextDecoder().decode(out.stdout).trim();
  let r: FuzzReport;
  try {
    r = JSON.parse(text.split("\n").at(-1) ?? "");
  } catch {
    fail(
      `no report from the fuzzer (exit ${out.code})\n--- stdout\n${text.slice(-2000)}\n--- stderr\n${
        stderr.slice(-4000)
      }`,
    );
  }
  console.log(
    `fuzz: seed ${r.seed}, ${r.cases} cases in ${r.seconds.toFixed(1)} s: ${r.casesPerSecond.toFixed(0)} cases/s; ` +
      `peak RSS ${r.peakRssMiB.toFixed(0)} MiB (start ${r.startRssMiB.toFixed(0)} MiB)\n` +
      `  outcomes: ${JSON.stringify(r.outcomes)}`,
  );
  assertEquals(r.failures, [], "no case broke a rule");
  assertEquals(out.code, 0, stderr.slice(-2000));
  assert(r.cases >= COUNT, `${r.cases} cases run`);
  assertEquals(r.outcomes.uncaught ?? 0, 0, "every failure is a VfioMigError");
  assert((r.outcomes.loaded ?? 0) > 0, "the unmutated streams (and harmless mutations) load");
  assert(Object.keys(r.mutators).length >= 20, `every kind of mutation ran: ${Object.keys(r.mutators)}`);
  assert(r.peakRssMiB < MAX_RSS_MIB, `memory stayed bounded: peak RSS ${r.peakRssMiB.toFixed(0)} MiB`);
});
