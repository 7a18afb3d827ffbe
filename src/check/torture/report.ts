// The torture's report: findings first, each with the command that replays it, then
// what was covered, in a form a driver author reads in a minute.

import type { TortureReport } from "./supervisor.ts";

const KIND_TEXT: Record<string, string> = {
  "kernel-log": "kernel log",
  hang: "hang",
  crash: "worker died",
  errno: "uAPI violation",
  "no-return": "device cannot be brought back",
  unsavable: "accepted state cannot be saved",
};

export function formatTorture(r: TortureReport): string {
  const out: string[] = [];
  const n = r.findings.length;
  if (r.mode === "replay" && r.replay) {
    out.push(
      `vfio-mig check --torture --replay ${r.replay.file} on ${r.device}: ${
        r.replay.reproduced ? "REPRODUCED" : "did not reproduce"
      } (${
        r.replay.original.kinds.map((k) => KIND_TEXT[k] ?? k).join(" + ")
      } at call ${r.replay.original.step}: ${r.replay.original.what})`,
    );
  } else {
    out.push(
      `vfio-mig check --torture ${r.device} (seed ${r.seed}): ${
        n ? `${n} finding${n === 1 ? "" : "s"}` : "no findings"
      }`,
    );
  }
  if (r.interrupted) out.push(`interrupted by ${r.interrupted}: the run is incomplete`);
  for (const f of r.findings) {
    out.push("");
    out.push(
      `FINDING ${f.id}: ${f.kinds.map((k) => KIND_TEXT[k] ?? k).join(" + ")}, at call ${f.step} (${f.phase}${
        f.case ? `, ${f.case}` : ""
      })`,
    );
    if (f.what) out.push(`  call:   ${f.what}`);
    for (const d of f.detail) out.push(`  what:   ${d}`);
    for (const k of f.kmsg) out.push(`  kmsg:   ${k}`);
    if (r.mode === "run") out.push(`  replay: ${f.replayCommand}`);
  }
  if (r.mode === "run" && r.findings.some((f) => f.kinds.includes("hang"))) {
    out.push("", "The device may be wedged: replay on a fresh device of the same kind (or after a reboot).");
  }
  if (r.replay?.diffs.length) {
    out.push("", `results that differ from the recorded run (${r.replay.diffs.length}):`);
    for (const d of r.replay.diffs.slice(0, 10)) out.push(`  ${d}`);
  }
  out.push("");
  if (r.fuzz) {
    const z = r.fuzz;
    out.push(
      `fuzz:   ${z.cases} cases (format ${z.format}): ${z.refusedWrite} refused at a write, ${z.refusedStop} ` +
        `refused when RESUMING was left, ${z.accepted} accepted (each exercised, saved, and the original loaded back)`,
    );
  }
  if (r.stress) {
    const s = r.stress;
    out.push(
      `stress: ${s.steps} steps: ${s.arcs.length} distinct requests taken, ${s.resets} resets, ${s.reopens} reopens, ` +
        `${s.midTransferCloses} data_fd closes mid-transfer, ${s.recoveries} loads of the original state`,
    );
  }
  out.push(`calls:  ${r.calls} in ${(r.durationMs / 1000).toFixed(1)} s; kernel log: ${r.kernelLog ?? "not watched"}`);
  for (const note of r.notes) out.push(`note:   ${note}`);
  return out.join("\n");
}
