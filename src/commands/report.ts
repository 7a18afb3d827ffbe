// vfio-mig report: draws an events file (save/load --events, docs/events.md) as one
// self-contained HTML page or SVG picture of the migration's timeline.

import { libc } from "../../ffi/libc.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { writeAll } from "../io.ts";
import { renderHtml } from "../report/html.ts";
import { readEventsFile, type ReportModel } from "../report/model.ts";
import { renderSvg } from "../report/svg.ts";
import { fileError } from "../transport/transport.ts";
import { type Command, parse, printJson } from "./command.ts";
import { examplesHelp, exitCodesHelp } from "./help.ts";

export type ReportFormat = "html" | "svg";

/** The format an output name asks for (.html, .htm, .svg), or null. */
export function formatOf(path: string): ReportFormat | null {
  const p = path.toLowerCase();
  if (p.endsWith(".html") || p.endsWith(".htm")) return "html";
  if (p.endsWith(".svg")) return "svg";
  return null;
}

/** The report of a model, as text. */
export function renderReport(m: ReportModel, format: ReportFormat, title?: string): string {
  return format === "svg" ? `<?xml version="1.0" encoding="UTF-8"?>\n${renderSvg(m, title)}\n` : renderHtml(m, title);
}

/** Writes `text` to `path` under a temporary name, renamed when complete ("-": standard output). */
function writeOutput(sys: Sys, path: string, text: string): void {
  const bytes = new TextEncoder().encode(text);
  if (path === "-") {
    writeAll(sys, 1, bytes);
    return;
  }
  const tmp = `${path}.tmp-${sys.getpid()}`;
  let fd: number;
  try {
    fd = sys.open(tmp, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, 0o644);
  } catch (e) {
    throw new VfioMigError(`report: ${fileError(sys, path, e, "create").message}`, "usage");
  }
  try {
    writeAll(sys, fd, bytes);
    sys.close(fd);
    fd = -1;
    sys.rename(tmp, path);
  } catch (e) {
    if (fd >= 0) {
      try {
        sys.close(fd);
      } catch { /* reported below */ }
    }
    try {
      sys.unlink(tmp);
    } catch { /* not there */ }
    throw new VfioMigError(`report: writing ${path} failed: ${e instanceof Error ? e.message : e}`);
  }
}

export const reportCommand: Command = {
  name: "report",
  help: `Usage: vfio-mig report EVENTS.jsonl|- [-o OUT.html|OUT.svg|-] [options]

Draws the timeline of a migration from the events 'save' or 'load' wrote with
--events (docs/events.md): bytes per pre-copy iteration and cumulative bytes, what
was left to send against what fits the downtime limit, the bandwidth and the rate
the device dirtied its state, the switchover, stop-copy and the downtime, and each
device's states in a lane of its own; the run's summary beside it. The output is
one self-contained file: no script, nothing fetched from the network.

Every line is checked against the events schema first; the first line that is not
a valid event is reported with its number (exit 4). An events file without a
result (a run that was killed) is drawn as far as it goes.

Options:
  -o, --output OUT   the report: .html (a page: the picture and the events as a
                     table) or .svg (the picture alone); - for standard output.
                     Default: EVENTS with .html for .jsonl
      --format F     html or svg (default: from OUT's name)
      --title T      the heading (default: the command and its devices)
      --json         print what was drawn as JSON (on stderr when OUT is -)
  -q, --quiet        do not say where the report was written
  -h, --help         this help

Permissions: deno run --allow-ffi (files are read and written through libc).

${
    examplesHelp([
      "vfio-mig save --live --events run.jsonl --device 0000:3b:00.1 s.bin && vfio-mig report run.jsonl",
      "vfio-mig report run.jsonl -o run.svg",
      "vfio-mig load --events fd:3 -d 0000:3b:00.1 s.bin 3>&1 | vfio-mig report - -o load.html",
    ])
  }

${
    exitCodesHelp([0, 1, 2, 4], {
      1: "failure (the report could not be written)",
      2: "usage error, or EVENTS or OUT cannot be opened",
      4: "a line of EVENTS is not a valid event",
    })
  }`,
  run(args) {
    const { values, positionals } = parse("report", args, {
      output: { type: "string", short: "o" },
      format: { type: "string" },
      title: { type: "string" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    if (positionals.length !== 1) {
      throw new VfioMigError(
        "report: give one events file (or - for standard input) (see 'vfio-mig report --help')",
        "usage",
      );
    }
    const input = positionals[0];
    if (values.format !== undefined && values.format !== "html" && values.format !== "svg") {
      throw new VfioMigError(`report: --format takes html or svg (not ${values.format})`, "usage");
    }
    let output = values.output;
    if (output === undefined) {
      output = input === "-" ? "report.html" : `${input.replace(/\.(jsonl|json|ndjson|events)$/i, "")}.html`;
      if (output === input) output = `${input}.html`;
    }
    const format = (values.format as ReportFormat | undefined) ?? (output === "-" ? "html" : formatOf(output));
    if (format === null) {
      throw new VfioMigError(
        `report: ${output}: the name should end in .html or .svg (or give --format html|svg)`,
        "usage",
      );
    }
    if (output !== "-" && output === input) {
      throw new VfioMigError("report: the output would replace the events file", "usage");
    }
    const sys = libc();
    const model = readEventsFile(sys, input);
    writeOutput(sys, output, renderReport(model, format, values.title));
    if (output !== "-" && !values.quiet && !values.json) {
      console.error(`wrote ${output}: ${format === "html" ? "a page" : "an SVG picture"} of ${model.events} events`);
    }
    if (values.json) {
      printJson({
        command: "report",
        input,
        output,
        format,
        events: model.events,
        devices: model.devices.map((d) => d.label),
        iterations: model.iterations.length,
        switchover: model.switchover ? { reason: model.switchover.reason, t: model.switchover.t } : null,
        result: model.end.kind,
        exitCode: model.end.exitCode,
      }, output === "-");
    }
    return Promise.resolve(0);
  },
};
