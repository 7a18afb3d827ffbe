import { arcMismatches, type ArcResult, expectedArc } from "../check/arcs.ts";
import { type CheckReport, CHECKS, runChecks } from "../check/conformance.ts";
import { defaultDeviceSpec, loadBackendsFor, openDevice, systemFor } from "../device/open.ts";
import { EXIT, VfioMigError } from "../errors.ts";
import { DeviceState } from "../vfio/state_machine.ts";
import { deviceHelp, examplesHelp, exitCodesHelp } from "./help.ts";
import { type Command, hex, parse, printJson } from "./command.ts";

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

export const checkCommand: Command = {
  name: "check",
  help: `Usage: vfio-mig check [--device D] [--json] [--arcs]

Checks a device's migration driver against the VFIO uAPI and prints a PASS / FAIL /
WARN / SKIP table with reasons:
${Object.entries(CHECKS).map(([k, v]) => `  ${k.padEnd(22)} ${v}`).join("\n")}

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

${exitCodesHelp([0, 1, 2, 3], { 0: "no FAIL", 1: "at least one FAIL, or a device step failed" })}`,
  async run(args) {
    const { values, positionals } = parse("check", args, {
      device: { type: "string", short: "d" },
      json: { type: "boolean" },
      arcs: { type: "boolean" },
    });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    if (positionals.length) {
      throw new VfioMigError(`check: unexpected argument ${positionals[0]} (use --device)`, "usage");
    }
    const spec = values.device ?? defaultDeviceSpec(systemFor([]));
    await loadBackendsFor([spec]);
    const sys = systemFor([spec]);
    const dev = openDevice(sys, spec);
    // A borrowed (pid:) or inherited (fd:) device cannot be opened again by us.
    const reopenable = !/^(pid|fd):/.test(spec);
    try {
      const r = runChecks(dev, {
        reopen: reopenable
          ? (old) => {
            old.close();
            return openDevice(sys, spec);
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
