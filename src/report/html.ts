// The report as one self-contained HTML page: the SVG inline, then the events (all but
// progress) as a table. No script, no stylesheet or font from elsewhere: it opens
// offline, and from a mail attachment.

import { esc, fmtMs } from "./format.ts";
import type { ReportModel } from "./model.ts";
import { renderSvg } from "./svg.ts";

const COMMON = new Set(["v", "t", "type", "device", "index"]);

function details(e: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(e)) {
    if (COMMON.has(k)) continue;
    parts.push(`${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  }
  const s = parts.join("  ");
  return s.length > 400 ? `${s.slice(0, 400)}…` : s;
}

export function renderHtml(m: ReportModel, title?: string): string {
  const heading = title ?? `vfio-mig ${m.command} report: ${m.devices.map((d) => d.label).join(", ")}`;
  const rows = m.log.map((e) =>
    `<tr class="ev-${esc(String(e.type))}"><td class="num">${esc(fmtMs(e.t as number))}</td><td>${
      esc(String(e.type))
    }</td>` +
    `<td>${e.device !== undefined ? esc(`${e.index} ${e.device}`) : ""}</td><td>${esc(details(e))}</td></tr>`
  ).join("\n");
  const more = m.events - m.progressEvents - m.log.length;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="${esc(m.tool)}">
<title>${esc(heading)}</title>
<style>
body { margin: 16px; font: 13px "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; background: #fff; }
figure { margin: 0; overflow-x: auto; }
details { margin-top: 18px; max-width: 1180px; }
summary { cursor: pointer; font-weight: bold; }
table { border-collapse: collapse; margin-top: 8px; font-size: 12px; width: 100%; table-layout: fixed; }
col.t { width: 76px; } col.type { width: 92px; } col.device { width: 26%; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td { overflow-wrap: anywhere; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.ev-error td, tr.ev-note td { color: #b00; }
tr.ev-switchover td { font-weight: bold; }
</style>
</head>
<body>
<figure>
${renderSvg(m, title)}
</figure>
<details>
<summary>Events (${m.log.length} shown; progress events are drawn, not listed${
    more > 0 ? `; ${more} more not listed` : ""
  })</summary>
<table>
<colgroup><col class="t"><col class="type"><col class="device"><col></colgroup>
<thead><tr><th>t</th><th>type</th><th>device</th><th>details</th></tr></thead>
<tbody>
${rows}
</tbody>
</table>
</details>
</body>
</html>
`;
}
