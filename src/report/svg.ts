// The report's picture: one SVG, drawn by our code (no charting library, no script),
// on one time axis:
//   phases      setup / pre-copy / stop-copy / … as a strip, transport steps as ticks
//   data moved  bytes per pre-copy iteration (bars; stop-copy in red), cumulative bytes
//   left/fits   the remaining estimate per iteration against bandwidth × downtime limit
//               (log scale): the switchover comes when the first falls under the second
//   rates       bandwidth per iteration, the rate the device dirtied its state, transfer rate
//   lanes       one per device: its state changes (and, for several, its bytes per iteration)
// with the switchover line, stop-copy and the downtime across all of them, and the run's
// summary in a column beside. Elements carry class and data-* names so tests (and
// people's scripts) can find each series.

import { byteTicks, esc, fmtBytes, fmtMs, fmtRate, log2Ticks, niceStep, wrap } from "./format.ts";
import type { ReportModel } from "./model.ts";

const W = 1180;
const X0 = 84;
const X1 = 800;
const SUM_X = 884;
const SUM_W = W - SUM_X - 14;
const FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"';

export const COLORS = {
  iteration: "#4e79a7",
  stopCopy: "#e15759",
  cumulative: "#59a14f",
  estimate: "#f28e2b",
  threshold: "#2f7f7a",
  dirtyRate: "#b07aa1",
  bandwidth: "#4e79a7",
  transferRate: "#9d9d9d",
  switchover: "#d40000",
  grid: "#e6e6e6",
  axis: "#555555",
  text: "#222222",
  muted: "#6b6b6b",
};

const STATE_COLORS: Record<string, string> = {
  RUNNING: "#59a14f",
  RUNNING_P2P: "#8cd17d",
  PRE_COPY: "#edc948",
  PRE_COPY_P2P: "#f1a73b",
  STOP_COPY: "#e15759",
  STOP: "#bab0ac",
  RESUMING: "#4e79a7",
  ERROR: "#222222",
};

const PHASE_COLORS: Record<string, string> = {
  setup: "#d9d9d9",
  "pre-copy": "#f6e3a1",
  "stop-copy": "#f4b4b5",
  config: "#d4c4e0",
  trailer: "#d4c4e0",
  resume: "#b9cde5",
  finish: "#d9d9d9",
  wait: "#eef1f4",
};

/** A v2 state name, or the v2 name nearest a v1 one ("pre-copy (011b)" → PRE_COPY), for colours. */
export function stateKey(s: string | null): string {
  if (s === null) return "UNKNOWN";
  if (s in STATE_COLORS) return s;
  const v1: [RegExp, string][] = [
    [/^running/, "RUNNING"],
    [/^pre-copy/, "PRE_COPY"],
    [/^stop-and-copy/, "STOP_COPY"],
    [/^stopped/, "STOP"],
    [/^resuming/, "RESUMING"],
    [/^error/, "ERROR"],
  ];
  for (const [re, k] of v1) if (re.test(s)) return k;
  return "UNKNOWN";
}

const num = (x: number) => (Math.round(x * 100) / 100).toString();

/** The largest of `floor` and the values (no spread: a long run has many iterations). */
function maxOf(floor: number, ...lists: number[][]): number {
  let m = floor;
  for (const l of lists) for (const v of l) if (v > m) m = v;
  return m;
}

class Svg {
  parts: string[] = [];
  add(s: string): void {
    this.parts.push(s);
  }
  text(x: number, y: number, s: string, more = ""): void {
    this.add(`<text x="${num(x)}" y="${num(y)}" ${more}>${esc(s)}</text>`);
  }
}

/** A time axis over [t0, t1] ms: t → x (clamped to the plot), and its ticks. */
class TimeAxis {
  readonly ticks: number[] = [];
  readonly t1: number;
  /** origin: labels read "+N ms" from it (a detail axis); null: time since the start. */
  constructor(readonly t0: number, tEnd: number, readonly origin: number | null = null) {
    this.t1 = t0 + Math.max(tEnd - t0, 1e-3) * 1.01;
    const from = origin ?? 0;
    const step = niceStep(this.t1 - t0, 8);
    for (let t = Math.ceil((t0 - from) / step) * step; from + t <= this.t1; t += step) this.ticks.push(from + t);
  }
  x(t: number): number {
    return X0 + ((Math.min(Math.max(t, this.t0), this.t1) - this.t0) / (this.t1 - this.t0)) * (X1 - X0);
  }
  /** Whether [a, b] shows on this axis. */
  shows(a: number, b: number): boolean {
    return b >= this.t0 && a <= this.t1;
  }
  label(t: number): string {
    if (this.origin !== null) {
      const d = t - this.origin;
      return `${d >= 0 ? "+" : "−"}${num(Math.abs(d))} ms`;
    }
    return this.t1 >= 2000 ? `${num(t / 1000)} s` : `${num(t)} ms`;
  }
}

interface Panel {
  y: number;
  h: number;
}

function panelFrame(s: Svg, ax: TimeAxis, p: Panel, title: string, legend: [string, string, string][]): void {
  s.add(`<rect x="${X0}" y="${p.y}" width="${X1 - X0}" height="${p.h}" fill="#ffffff" stroke="${COLORS.grid}"/>`);
  for (const t of ax.ticks) {
    const x = num(ax.x(t));
    s.add(`<line x1="${x}" y1="${p.y}" x2="${x}" y2="${p.y + p.h}" stroke="${COLORS.grid}"/>`);
  }
  s.text(X0, p.y - 7, title, `font-size="12.5" font-weight="bold" fill="${COLORS.text}"`);
  // Legend entries right-aligned on the title row: [colour, label, style].
  let x = X1;
  for (const [color, label, style] of [...legend].reverse()) {
    x -= label.length * 6.2 + 8;
    s.text(x, p.y - 7, label, `font-size="11" fill="${COLORS.muted}"`);
    x -= 18;
    if (style === "bar") s.add(`<rect x="${num(x)}" y="${p.y - 15}" width="12" height="9" fill="${color}"/>`);
    else if (style === "dot") s.add(`<circle cx="${num(x + 6)}" cy="${p.y - 11}" r="3.5" fill="${color}"/>`);
    else {
      s.add(
        `<line x1="${num(x)}" y1="${p.y - 11}" x2="${num(x + 14)}" y2="${p.y - 11}" stroke="${color}" ` +
          `stroke-width="2"${style === "dash" ? ' stroke-dasharray="5 3"' : ""}/>`,
      );
    }
    x -= 10;
  }
}

/** Left (or right) axis labels of a panel. */
function yLabels(
  s: Svg,
  p: Panel,
  ticks: number[],
  y: (v: number) => number,
  fmt: (v: number) => string,
  right = false,
) {
  for (const v of ticks) {
    const yy = y(v);
    if (!right) s.add(`<line x1="${X0}" y1="${num(yy)}" x2="${X1}" y2="${num(yy)}" stroke="${COLORS.grid}"/>`);
    s.text(
      right ? X1 + 5 : X0 - 5,
      yy + 3.5,
      fmt(v),
      `font-size="10.5" fill="${COLORS.muted}"${right ? "" : ' text-anchor="end"'}`,
    );
  }
  void p;
}

function polyline(points: [number, number][]): string {
  return points.map(([x, y], i) => `${i === 0 ? "M" : "L"}${num(x)},${num(y)}`).join(" ");
}

/** Where the devices left RUNNING: the first SET from a running state to a stopped or quiesced one (its start). */
function leftRunningAt(m: ReportModel): number | null {
  return leftRunning(m)?.t ?? null;
}

/**
 * When the devices stopped running (the first SET leaving RUNNING or PRE_COPY, from the
 * moment it was requested: the downtime's start) and the state they left.
 */
function leftRunning(m: ReportModel): { t: number; from: string } | null {
  let first: { t: number; from: string } | null = null;
  for (const d of m.devices) {
    for (const c of d.states) {
      const from = stateKey(c.from);
      const to = stateKey(c.to);
      if ((from === "RUNNING" || from === "PRE_COPY") && to !== "RUNNING" && to !== "PRE_COPY" && !c.error) {
        const t = c.t - c.ms;
        if (first === null || t < first.t) first = { t, from: c.from ?? from };
        break;
      }
    }
  }
  return first;
}

function summaryNumber(m: ReportModel, key: string): number | null {
  const v = m.end.summary?.[key];
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** The summary beside the chart: [label, value] rows. */
export function summaryRows(m: ReportModel): [string, string][] {
  const rows: [string, string][] = [];
  const s = m.end.summary;
  if (m.end.kind === "result") rows.push(["result", "succeeded (exit 0)"]);
  else if (m.end.kind === "error") rows.push(["result", `failed (exit ${m.end.exitCode}): ${m.end.message}`]);
  else rows.push(["result", "none: the events end without a result (the run was killed?)"]);
  rows.push([
    "command",
    `${m.command}${m.mode ? ` (${m.mode})` : ""}${
      m.target ? `, ${m.command === "load" ? "from" : "to"} ${m.target}` : ""
    }${m.command === "load" && !m.mode && m.streamMode ? ` (a stream saved ${m.streamMode})` : ""}`,
  ]);
  rows.push([m.devices.length === 1 ? "device" : "devices", m.devices.map((d) => d.label).join(", ")]);
  if (m.protocol) rows.push(["protocol", m.protocol]);
  if (m.maxBandwidth) rows.push(["max bandwidth", `${fmtRate(m.maxBandwidth)} (--max-bandwidth)`]);
  const bytes = summaryNumber(m, "bytes");
  const pre = summaryNumber(m, "precopyBytes");
  const stop = summaryNumber(m, "stopCopyBytes");
  if (bytes !== null) {
    rows.push([
      "data",
      fmtBytes(bytes) +
      (pre !== null && stop !== null && pre > 0 ? ` (pre-copy ${fmtBytes(pre)}, stop-copy ${fmtBytes(stop)})` : ""),
    ]);
  }
  const secs = summaryNumber(m, "seconds");
  rows.push(["duration", fmtMs(secs !== null ? secs * 1000 : m.tEnd)]);
  const thr = summaryNumber(m, "throughput");
  if (thr !== null) rows.push(["throughput", fmtRate(thr)]);
  if (m.sizeEstimate !== null) rows.push(["size estimate", fmtBytes(m.sizeEstimate)]);
  if (m.iterations.length > 0 || m.switchover) {
    rows.push(["iterations", String(m.switchover?.iterations ?? m.iterations.length)]);
  }
  if (m.switchover) {
    const sw = m.switchover;
    rows.push(["switchover", `${sw.reason} at ${fmtMs(sw.t)}`]);
    rows.push([
      "left at switch",
      `${fmtBytes(sw.estimate)}${sw.threshold !== null ? ` (fits: ${fmtBytes(sw.threshold)})` : ""}`,
    ]);
    if (sw.bandwidth !== null) rows.push(["bandwidth", fmtRate(sw.bandwidth)]);
  }
  const down = summaryNumber(m, "downtimeMs");
  const limit = summaryNumber(m, "downtimeLimitMs") ?? m.switchover?.downtimeLimitMs ?? null;
  if (down !== null) {
    rows.push(["downtime", `${fmtMs(down)}${limit !== null ? ` (limit ${fmtMs(limit)})` : ""}`]);
  }
  const toRunning = summaryNumber(m, "downtimeToRunningMs");
  if (toRunning !== null) rows.push(["until dest. ran", fmtMs(toRunning)]);
  const sent = summaryNumber(m, "initDataSent");
  const acks = summaryNumber(m, "initAcks");
  if (sent !== null && sent > 0) {
    rows.push(["init data", `${sent} sent${acks !== null ? `, ${acks} acknowledged` : ""}`]);
  }
  const reinits = summaryNumber(m, "reinits");
  if (reinits) rows.push(["REINIT", String(reinits)]);
  const final = s?.finalState;
  if (typeof final === "string") rows.push(["final state", final]);
  else if (m.devices.length === 1 && m.devices[0].states.length) {
    // No result (an error, a kill): the state the last state event left the device in.
    rows.push(["final state", `${m.devices[0].states.at(-1)!.to} (its last state event)`]);
  }
  if (Array.isArray(s?.devices) && s.devices.length > 1) {
    for (const d of s.devices as Record<string, unknown>[]) {
      const b = typeof d.bytes === "number" ? fmtBytes(d.bytes) : "?";
      rows.push([`device ${d.index}`, `${d.device}: ${b}, ${d.finalState ?? "?"}`]);
    }
  }
  for (const n of m.notes) rows.push([n.kind, n.text]);
  return rows;
}

/** The phases of the whole run (not per device) as a strip of `h` pixels at `y`. */
function phaseStrip(s: Svg, ax: TimeAxis, m: ReportModel, y: number, h: number): void {
  s.add(`<g class="phases">`);
  // A listener's wait for its peer: from listening to the peer's authentication.
  const listening = m.transport.find((tr) => tr.kind === "listening");
  if (listening) {
    const authed = m.transport.find((tr) => tr.kind === "authenticated" && tr.t >= listening.t);
    const end = authed?.t ?? m.phases.find((p) => p.device === null)?.t0 ?? m.tEnd;
    if (ax.shows(listening.t, end)) {
      const x0 = ax.x(listening.t);
      const x1 = Math.max(ax.x(end), x0 + 1);
      const label = "waiting for a peer";
      s.add(
        `<rect class="phase" data-phase="wait" x="${num(x0)}" y="${y}" width="${num(x1 - x0)}" height="${h}" ` +
          `fill="${PHASE_COLORS.wait}"><title>${
            esc(`waiting for a peer: ${fmtMs(listening.t)} – ${authed ? fmtMs(end) : "(none came)"}`)
          }</title></rect>`,
      );
      if (x1 - x0 > label.length * 6 + 6) {
        s.text((x0 + x1) / 2, y + h - 4, label, `font-size="10.5" text-anchor="middle" fill="${COLORS.text}"`);
      }
    }
  }
  for (const p of m.phases.filter((p) => p.device === null)) {
    const end = p.t1 ?? m.tEnd;
    if (!ax.shows(p.t0, end)) continue;
    const x0 = ax.x(p.t0);
    const x1 = Math.max(ax.x(end), x0 + 1);
    s.add(
      `<rect class="phase" data-phase="${esc(p.phase)}" x="${num(x0)}" y="${y}" width="${num(x1 - x0)}" ` +
        `height="${h}" fill="${PHASE_COLORS[p.phase] ?? "#ddd"}"><title>${
          esc(
            `${p.phase}: ${fmtMs(p.t0)} – ${p.t1 === null ? "(did not end)" : fmtMs(p.t1)}` +
              (p.bytes !== null ? `, ${fmtBytes(p.bytes)}` : ""),
          )
        }</title></rect>`,
    );
    // No name where a phase inside this one (a load's config in its finish) covers it.
    const covered = m.phases.some((q) => q !== p && q.device === null && q.t0 > p.t0 && q.t0 < end);
    if (!covered && x1 - x0 > p.phase.length * 6 + 6) {
      s.text((x0 + x1) / 2, y + h - 4, p.phase, `font-size="10.5" text-anchor="middle" fill="${COLORS.text}"`);
    }
  }
  s.add(`</g>`);
  s.text(X0 - 6, y + h - 4, "phases", `font-size="10.5" text-anchor="end" fill="${COLORS.muted}"`);
}

/** Transport steps as small triangles under a strip whose bottom is `y`. */
function transportTicks(s: Svg, ax: TimeAxis, m: ReportModel, y: number): void {
  const shown = m.transport.filter((tr) => ax.shows(tr.t, tr.t));
  if (!shown.length) return;
  s.add(`<g class="transport">`);
  for (const tr of shown) {
    s.add(
      `<path class="transport-step" data-step="${esc(tr.kind)}" d="M${num(ax.x(tr.t))},${y + 1} l-4,7 h8 z" ` +
        `fill="${tr.kind === "refused" ? COLORS.stopCopy : COLORS.axis}"><title>${esc(`${fmtMs(tr.t)}: ${tr.text}`)}` +
        `</title></path>`,
    );
  }
  // Their names beside them: steps closer than a label's width share one ("connected, authenticated").
  const groups: { x: number; kinds: string[] }[] = [];
  for (const tr of [...shown].sort((a, b) => a.t - b.t)) {
    const x = ax.x(tr.t);
    const g = groups.at(-1);
    const kind = tr.kind === "init-ack" ? "ack" : tr.kind;
    if (g && x - g.x < g.kinds.join(", ").length * 5.4 + 14) {
      if (!g.kinds.includes(kind)) g.kinds.push(kind);
    } else groups.push({ x, kinds: [kind] });
  }
  for (const [i, g] of groups.entries()) {
    const text = g.kinds.join(", ");
    const room = (groups[i + 1]?.x ?? X1 + 76) - g.x - 8;
    const shown = text.length * 5.4 <= room ? text : text.slice(0, Math.max(Math.floor(room / 5.4) - 1, 0)) + "…";
    if (shown.length > 1) {
      s.text(g.x + 6, y + 8, shown, `class="transport-label" font-size="9.5" fill="${COLORS.muted}"`);
    }
  }
  s.add(`</g>`);
}

/** A device's states from t = 0 (or the axis start) to the end, as a strip of 18 pixels at `y`. */
function stateStrip(s: Svg, ax: TimeAxis, m: ReportModel, d: ReportModel["devices"][number], y: number): void {
  const segs: { t0: number; t1: number; state: string }[] = [];
  let cur = d.states[0]?.from ?? null;
  let since = 0;
  // A change is drawn from the moment it was requested (t - ms): where the downtime and
  // the detail axis's +0 start.
  for (const c of d.states) {
    if (c.error) continue;
    if (cur !== null) segs.push({ t0: since, t1: c.t - c.ms, state: cur });
    cur = c.to;
    since = c.t - c.ms;
  }
  if (cur !== null) segs.push({ t0: since, t1: m.tEnd, state: cur });
  s.add(`<rect x="${X0}" y="${y}" width="${X1 - X0}" height="18" fill="#f4f4f4"/>`);
  for (const g of segs) {
    if (!ax.shows(g.t0, g.t1)) continue;
    const x0 = ax.x(g.t0);
    const w = Math.max(ax.x(g.t1) - x0, 1);
    s.add(
      `<rect class="state" data-state="${esc(g.state)}" x="${num(x0)}" y="${y}" width="${num(w)}" height="18" ` +
        `fill="${STATE_COLORS[stateKey(g.state)] ?? "#cccccc"}"><title>${
          esc(`${g.state}: ${fmtMs(g.t0)} – ${fmtMs(g.t1)}`)
        }</title></rect>`,
    );
    if (w > g.state.length * 6.3 + 6) {
      s.text(
        x0 + 4,
        y + 13,
        g.state,
        `font-size="10.5" fill="${stateKey(g.state) === "ERROR" ? "#fff" : COLORS.text}"`,
      );
    }
  }
  // The state the device was left in, named after the lane's end (a last change a few ms
  // before the end, as an interrupted save's recovery, is too thin to see).
  if (cur !== null) {
    const key = stateKey(cur);
    s.add(
      `<g class="final-state" data-final-state="${esc(cur)}"><rect x="${X1 + 6}" y="${y + 4}" width="10" height="10" ` +
        `fill="${STATE_COLORS[key] ?? "#cccccc"}"/>`,
    );
    s.text(X1 + 19, y + 13, cur, `font-size="10" fill="${COLORS.text}"`);
    s.add(`</g>`);
  }
  for (const c of d.states) {
    const tc = c.error ? c.t : c.t - c.ms;
    if (!ax.shows(tc, tc)) continue;
    const x = num(ax.x(tc));
    const what = `${c.from ?? "?"} → ${c.to}${c.reset ? " (reset)" : ""} at ${fmtMs(c.t)}, took ${fmtMs(c.ms)}` +
      (c.error ? `; failed: ${c.error}` : "");
    s.add(
      c.error
        ? `<path class="state-error" d="M${num(ax.x(tc) - 4)},${
          y + 5
        } l8,8 m0,-8 l-8,8" stroke="${COLORS.switchover}" ` +
          `stroke-width="2"><title>${esc(what)}</title></path>`
        : `<line class="state-change" x1="${x}" y1="${y}" x2="${x}" y2="${y + 18}" stroke="#ffffff" stroke-width="1">` +
          `<title>${esc(what)}</title></line>`,
    );
  }
}

/** Tick labels under a plot whose bottom is `y`, and a caption. */
function timeLabels(s: Svg, ax: TimeAxis, y: number, caption: string): void {
  for (const t of ax.ticks) {
    s.text(ax.x(t), y + 16, ax.label(t), `font-size="10.5" text-anchor="middle" fill="${COLORS.muted}"`);
  }
  s.add(`<line x1="${X0}" y1="${y}" x2="${X1}" y2="${y}" stroke="${COLORS.axis}"/>`);
  s.text((X0 + X1) / 2, y + 32, caption, `font-size="11" text-anchor="middle" fill="${COLORS.muted}"`);
}

/**
 * The marks across a stack of plots from `top` to `bottom`: stop-copy (a band), the
 * downtime (a band from leaving RUNNING, as long as the summary's downtimeMs, with its
 * label), the switchover line (with its reason), an error line. `cls` classes them.
 */
function marks(s: Svg, ax: TimeAxis, m: ReportModel, top: number, bottom: number, cls: string): void {
  const stop = m.phases.find((p) => p.phase === "stop-copy" && p.device === null);
  if (stop) {
    const x0 = ax.x(stop.t0);
    s.add(
      `<rect class="${cls} stop-copy" x="${num(x0)}" y="${top}" width="${
        num(Math.max(ax.x(stop.t1 ?? m.tEnd) - x0, 1))
      }" height="${bottom - top}" fill="${COLORS.stopCopy}" opacity="0.08"/>`,
    );
  }
  const left = leftRunningAt(m);
  const downMs = summaryNumber(m, "downtimeMs");
  if (left !== null && downMs !== null) {
    const x0 = ax.x(left);
    const w = Math.max(ax.x(left + downMs) - x0, 2);
    const label = `downtime ${fmtMs(downMs)}`;
    // Right of the band where it fits; else on the row above, ending at the band.
    const fits = x0 + w + 4 + label.length * 6.3 <= X1 + 40;
    s.add(
      `<g class="${cls} downtime" data-ms="${num(downMs)}"><rect x="${num(x0)}" y="${top}" width="${num(w)}" ` +
        `height="${bottom - top}" fill="${COLORS.switchover}" opacity="0.13"><title>${
          esc(`downtime ${fmtMs(downMs)}: from leaving RUNNING to the last byte`)
        }</title></rect>` +
        `<text x="${num(fits ? x0 + w + 4 : x0 + w)}" y="${top - (fits ? 8 : 22)}" font-size="11" ` +
        `fill="${COLORS.switchover}"${fits ? "" : ' text-anchor="end"'}>${esc(label)}</text></g>`,
    );
  }
  if (m.switchover && ax.shows(m.switchover.t, m.switchover.t)) {
    const sw = m.switchover;
    const x = num(ax.x(sw.t));
    const label = `switchover: ${sw.reason}`;
    // Left of the line where it fits; else right of it.
    const left = ax.x(sw.t) - 4 - label.length * 6.8 >= X0 - 10;
    s.add(
      `<g class="${cls} switchover" data-reason="${esc(sw.reason)}" data-t="${sw.t}">` +
        `<line x1="${x}" y1="${top - 18}" x2="${x}" y2="${bottom}" stroke="${COLORS.switchover}" stroke-width="2" ` +
        `stroke-dasharray="7 3"/><text x="${num(ax.x(sw.t) + (left ? -4 : 4))}" y="${top - 8}" font-size="11" ` +
        `font-weight="bold"${left ? ' text-anchor="end"' : ""} fill="${COLORS.switchover}">${esc(label)}</text><title>${
          esc(
            `switchover (${sw.reason}) at ${fmtMs(sw.t)}: ${fmtBytes(sw.estimate)} left` +
              (sw.threshold !== null ? `, ${fmtBytes(sw.threshold)} fit` : ""),
          )
        }</title></g>`,
    );
  }
  if (m.end.kind === "error") {
    const x = num(ax.x(m.end.t));
    s.add(
      `<g class="${cls} error"><line x1="${x}" y1="${top}" x2="${x}" y2="${bottom}" stroke="#000" ` +
        `stroke-width="2"/><title>${esc(`error (exit ${m.end.exitCode}): ${m.end.message}`)}</title></g>`,
    );
  }
}

/** The whole picture as an SVG document (standalone: xmlns, fonts, a white background). */
export function renderSvg(m: ReportModel, title?: string): string {
  const s = new Svg();
  const ax = new TimeAxis(0, m.tEnd);
  const live = m.iterations.length > 0;
  const multi = m.devices.length > 1;

  // Title
  const heading = title ??
    `vfio-mig ${m.command}${m.mode ? ` (${m.mode})` : ""}: ${m.devices.map((d) => d.label).join(", ")}`;
  // (A load's mode is only set over TCP: a file of a live save's stream is loaded offline.)
  s.text(X0, 26, heading, `font-size="17" font-weight="bold" fill="${COLORS.text}"`);
  s.text(
    X0,
    44,
    `${m.wallClock}  ·  ${m.tool}  ·  ${m.events} events from ${m.source}`,
    `font-size="11" fill="${COLORS.muted}"`,
  );

  // Phase strip and transport ticks
  let y = 84;
  const stripH = 16;
  phaseStrip(s, ax, m, y, stripH);
  transportTicks(s, ax, m, y + stripH);
  const overlayTop = y;
  y += stripH + 34;

  // Panel 1: data moved
  const p1: Panel = { y, h: 170 };
  const stop = m.phases.find((p) => p.phase === "stop-copy" && p.device === null);
  const barMax = maxOf(1, m.iterations.map((i) => i.bytes), [stop?.bytes ?? 0]);
  const cumMax = maxOf(1, m.bytes.map((b) => b.bytes));
  const bt = byteTicks(barMax);
  const ct = byteTicks(cumMax);
  const legend1: [string, string, string][] = [];
  if (live) legend1.push([COLORS.iteration, "per iteration", "bar"]);
  if (stop?.bytes) legend1.push([COLORS.stopCopy, "stop-copy", "bar"]);
  legend1.push([COLORS.cumulative, "cumulative (right axis)", "line"]);
  panelFrame(s, ax, p1, "Data moved", legend1);
  const yBar = (v: number) => p1.y + p1.h - (v / bt.top) * p1.h;
  const yCum = (v: number) => p1.y + p1.h - (v / ct.top) * p1.h;
  if (live || stop?.bytes) yLabels(s, p1, bt.ticks, yBar, fmtBytes);
  yLabels(s, p1, ct.ticks, yCum, fmtBytes, true);
  s.add(`<g class="series" data-series="iteration-bytes">`);
  for (const it of m.iterations) {
    const x0 = ax.x(it.t0);
    const w = Math.max(ax.x(it.t1) - x0 - 1, 1.5);
    const top = yBar(it.bytes);
    s.add(
      `<rect x="${num(x0)}" y="${num(top)}" width="${num(w)}" height="${num(p1.y + p1.h - top)}" ` +
        `fill="${COLORS.iteration}" data-n="${it.n}" data-bytes="${it.bytes}"><title>${
          esc(`iteration ${it.n}: ${fmtBytes(it.bytes)} in ${fmtMs(it.t1 - it.t0)}`)
        }</title></rect>`,
    );
  }
  s.add(`</g>`);
  if (stop && stop.bytes !== null) {
    const x0 = ax.x(stop.t0);
    const w = Math.max(ax.x(stop.t1 ?? m.tEnd) - x0, 2);
    const top = yBar(stop.bytes);
    s.add(
      `<g class="series" data-series="stop-copy-bytes"><rect x="${num(x0)}" y="${num(top)}" width="${num(w)}" ` +
        `height="${num(p1.y + p1.h - top)}" fill="${COLORS.stopCopy}" data-bytes="${stop.bytes}"><title>${
          esc(`stop-copy: ${fmtBytes(stop.bytes)} in ${fmtMs((stop.t1 ?? m.tEnd) - stop.t0)}`)
        }</title></rect></g>`,
    );
  }
  const cum: [number, number][] = [
    [ax.x(0), yCum(0)],
    ...m.bytes.map((b): [number, number] => [ax.x(b.t), yCum(b.bytes)]),
  ];
  s.add(
    `<path class="series" data-series="cumulative-bytes" data-points="${cum.length}" d="${polyline(cum)}" ` +
      `fill="none" stroke="${COLORS.cumulative}" stroke-width="2"/>`,
  );
  y += p1.h + 40;

  // Panel 2: what is left against what fits the downtime limit (log scale)
  let p2: Panel | null = null;
  if (live) {
    p2 = { y, h: 150 };
    const vals = m.iterations.flatMap((i) => [i.estimate, i.threshold ?? 0]).filter((v) => v > 0);
    const hi = maxOf(1024, vals);
    const lo = -maxOf(-hi, vals.map((v) => -v)); // the smallest
    const lt = log2Ticks(lo / 1.5, hi * 1.2, 6);
    const limit = m.switchover?.downtimeLimitMs;
    panelFrame(s, ax, p2, "Left to send vs what fits the downtime limit", [
      [COLORS.estimate, "left (estimate)", "line"],
      [COLORS.threshold, `fits: bandwidth × ${limit !== undefined ? fmtMs(limit) : "limit"}`, "dash"],
    ]);
    const yl = (v: number) => {
      const c = Math.min(Math.max(v, lt.lo), lt.hi);
      return p2!.y + p2!.h - ((Math.log2(c) - Math.log2(lt.lo)) / (Math.log2(lt.hi) - Math.log2(lt.lo))) * p2!.h;
    };
    yLabels(s, p2, lt.ticks, yl, fmtBytes);
    // The threshold holds for the iteration it was judged in: a step line.
    const thr: string[] = [];
    for (const it of m.iterations) {
      if (it.threshold === null || it.threshold <= 0) continue;
      thr.push(`M${num(ax.x(it.t0))},${num(yl(it.threshold))} H${num(ax.x(it.t1))}`);
    }
    s.add(
      `<path class="series" data-series="threshold" data-points="${thr.length}" d="${thr.join(" ")}" fill="none" ` +
        `stroke="${COLORS.threshold}" stroke-width="2" stroke-dasharray="6 3"/>`,
    );
    const est = m.iterations.map((it): [number, number] => [ax.x(it.t1), yl(it.estimate)]);
    s.add(
      `<g class="series" data-series="estimate" data-points="${est.length}">` +
        `<path d="${polyline(est)}" fill="none" stroke="${COLORS.estimate}" stroke-width="2"/>` +
        m.iterations.map((it, i) =>
          `<circle cx="${num(est[i][0])}" cy="${num(est[i][1])}" r="3.2" fill="${COLORS.estimate}"><title>${
            esc(
              `after iteration ${it.n}: ${fmtBytes(it.estimate)} left` +
                (it.threshold !== null ? `; fits ${fmtBytes(it.threshold)}` : "; no bandwidth yet"),
            )
          }</title></circle>`
        ).join("") + `</g>`,
    );
    y += p2.h + 40;
  }

  // Panel 3: rates
  let p3: Panel | null = null;
  const dirty = m.iterations.filter((i) => i.dirtyRate !== null);
  if (live || m.rate.length > 1) {
    p3 = { y, h: 120 };
    const rmax = maxOf(
      1,
      m.iterations.map((i) => i.bandwidth ?? 0),
      dirty.map((i) => i.dirtyRate!),
      m.rate.map((r) => r.rate),
    );
    const rt = byteTicks(rmax);
    const legend3: [string, string, string][] = [[COLORS.transferRate, "transfer rate", "line"]];
    if (live) {
      legend3.push([COLORS.bandwidth, "bandwidth judged by", "line"]);
      legend3.push([COLORS.dirtyRate, "dirty rate", "dot"]);
    }
    panelFrame(s, ax, p3, "Rates", legend3);
    const yr = (v: number) => p3!.y + p3!.h - (v / rt.top) * p3!.h;
    yLabels(s, p3, rt.ticks, yr, (v) => fmtRate(v));
    const tr = m.rate.map((r): [number, number] => [ax.x(r.t), yr(r.rate)]);
    if (tr.length > 1) {
      s.add(
        `<path class="series" data-series="transfer-rate" data-points="${tr.length}" d="${polyline(tr)}" ` +
          `fill="none" stroke="${COLORS.transferRate}" stroke-width="1.2"/>`,
      );
    }
    if (live) {
      const bw: string[] = [];
      for (const it of m.iterations) {
        if (it.bandwidth !== null) bw.push(`M${num(ax.x(it.t0))},${num(yr(it.bandwidth))} H${num(ax.x(it.t1))}`);
      }
      s.add(
        `<path class="series" data-series="bandwidth" data-points="${bw.length}" d="${bw.join(" ")}" ` +
          `fill="none" stroke="${COLORS.bandwidth}" stroke-width="2"/>`,
      );
      const dp = dirty.map((i): [number, number] => [ax.x(i.t1), yr(i.dirtyRate!)]);
      s.add(
        `<g class="series" data-series="dirty-rate" data-points="${dp.length}">` +
          (dp.length > 1
            ? `<path d="${polyline(dp)}" fill="none" stroke="${COLORS.dirtyRate}" stroke-width="1.5"/>`
            : "") +
          dirty.map((it, i) =>
            `<circle cx="${num(dp[i][0])}" cy="${num(dp[i][1])}" r="3" fill="${COLORS.dirtyRate}"><title>${
              esc(`iteration ${it.n}: dirtied ${fmtRate(it.dirtyRate!)}`)
            }</title></circle>`
          ).join("") + `</g>`,
      );
    }
    y += p3.h + 40;
  }

  // Lanes: one per device
  s.text(X0, y - 7, multi ? "Devices" : "Device", `font-size="12.5" font-weight="bold" fill="${COLORS.text}"`);
  for (const d of m.devices) {
    s.add(`<g class="lane" data-index="${d.index}" data-device="${esc(d.label)}">`);
    s.text(X0, y + 11, multi ? `${d.index}  ${d.label}` : d.label, `font-size="11" fill="${COLORS.text}"`);
    y += 16;
    stateStrip(s, ax, m, d, y);
    y += 18;
    if (multi && live) {
      // This device's bytes per iteration and its stop-copy bytes.
      const h = 46;
      const ds = m.phases.find((p) => p.phase === "stop-copy" && p.device === d.index);
      const dmax = maxOf(
        1,
        [ds?.bytes ?? 0],
        m.iterations.map((it) => it.devices.find((x) => x.index === d.index)?.bytes ?? 0),
      );
      const dt = byteTicks(dmax, 2);
      const yd = (v: number) => y + 4 + h - (v / dt.top) * h;
      s.add(`<rect x="${X0}" y="${y + 4}" width="${X1 - X0}" height="${h}" fill="none" stroke="${COLORS.grid}"/>`);
      yLabels(s, { y: y + 4, h }, dt.ticks.slice(1), yd, fmtBytes);
      s.add(`<g class="series" data-series="device-iteration-bytes" data-index="${d.index}">`);
      for (const it of m.iterations) {
        const dv = it.devices.find((x) => x.index === d.index);
        if (!dv || dv.bytes === 0) continue;
        const x0 = ax.x(it.t0);
        s.add(
          `<rect x="${num(x0)}" y="${num(yd(dv.bytes))}" width="${num(Math.max(ax.x(it.t1) - x0 - 1, 1.5))}" ` +
            `height="${num(y + 4 + h - yd(dv.bytes))}" fill="${COLORS.iteration}" data-n="${it.n}"><title>${
              esc(
                `${d.label}, iteration ${it.n}: ${fmtBytes(dv.bytes)}; then initial ${fmtBytes(dv.initialBytes)}, ` +
                  `dirty ${fmtBytes(dv.dirtyBytes)}${dv.reinit ? ", REINIT" : ""}`,
              )
            }</title></rect>`,
        );
      }
      s.add(`</g>`);
      if (ds && ds.bytes !== null) {
        const x0 = ax.x(ds.t0);
        s.add(
          `<rect class="device-stop-copy" x="${num(x0)}" y="${num(yd(ds.bytes))}" width="${
            num(Math.max(ax.x(ds.t1 ?? m.tEnd) - x0, 2))
          }" height="${num(y + 4 + h - yd(ds.bytes))}" fill="${COLORS.stopCopy}"><title>${
            esc(`${d.label} stop-copy: ${fmtBytes(ds.bytes)}`)
          }</title></rect>`,
        );
      }
      y += h + 6;
    }
    s.add(`</g>`);
    y += 12;
  }
  const bottom = y - 8;

  timeLabels(s, ax, bottom, "time since the start");

  // Overlays across every panel: stop-copy, the downtime, the switchover.
  marks(s, ax, m, overlayTop, bottom, "mark");
  y = bottom + 60;

  // The switchover in detail: from just before the devices left RUNNING to the end,
  // where stop-copy and the downtime (a few ms of a run of seconds) can be seen.
  const left = leftRunningAt(m);
  if (left !== null && m.tEnd - left < 0.4 * m.tEnd) {
    const span = m.tEnd - left;
    const dx = new TimeAxis(Math.max(0, left - 0.12 * span), m.tEnd, left);
    s.text(X0, y - 7, "The switchover in detail", `font-size="12.5" font-weight="bold" fill="${COLORS.text}"`);
    s.add(`<g class="detail">`);
    const top = y + 12;
    phaseStrip(s, dx, m, top, stripH);
    transportTicks(s, dx, m, top + stripH);
    let yy = top + stripH + 14;
    for (const d of m.devices) {
      s.text(X0, yy + 11, multi ? `${d.index}  ${d.label}` : d.label, `font-size="11" fill="${COLORS.text}"`);
      yy += 16;
      stateStrip(s, dx, m, d, yy);
      yy += 22;
    }
    marks(s, dx, m, top, yy, "detail-mark");
    s.add(`</g>`);
    const from = leftRunning(m)?.from ?? "RUNNING";
    timeLabels(s, dx, yy, `time since the device${multi ? "s" : ""} left ${from} (+0: when that was requested)`);
    y = yy + 46;
  }

  // Summary column
  let sy = 84;
  s.add(`<g class="summary">`);
  s.text(SUM_X, sy - 8, "Summary", `font-size="12.5" font-weight="bold" fill="${COLORS.text}"`);
  sy += 8;
  const chars = Math.floor((SUM_W - 100) / 6.1);
  for (const [k, v] of summaryRows(m)) {
    const lines = wrap(v, chars);
    s.text(SUM_X, sy, k, `font-size="11" fill="${COLORS.muted}"`);
    for (const l of lines) {
      s.text(
        SUM_X + 100,
        sy,
        l,
        `font-size="11" fill="${k === "result" && m.end.kind !== "result" ? COLORS.switchover : COLORS.text}"`,
      );
      sy += 14;
    }
    sy += 3;
  }
  s.add(`</g>`);
  sy += 14;
  // State colours
  s.text(SUM_X, sy, "Device states", `font-size="12.5" font-weight="bold" fill="${COLORS.text}"`);
  sy += 10;
  const seen = new Set(m.devices.flatMap((d) => d.states.flatMap((c) => [stateKey(c.from), stateKey(c.to)])));
  let col = 0;
  for (const [k, c] of Object.entries(STATE_COLORS)) {
    if (!seen.has(k)) continue;
    const x = SUM_X + (col % 2) * 150;
    s.add(`<rect x="${x}" y="${sy}" width="12" height="10" fill="${c}"/>`);
    s.text(x + 17, sy + 9, k, `font-size="11" fill="${COLORS.text}"`);
    if (col % 2 === 1) sy += 16;
    col++;
  }

  const height = Math.max(y, sy + 30);
  return `<svg xmlns="http://www.w3.org/2000/svg" class="vfio-mig-report" width="${W}" height="${num(height)}" ` +
    `viewBox="0 0 ${W} ${num(height)}" ${FONT}>` +
    `<rect width="100%" height="100%" fill="#ffffff"/>${s.parts.join("")}</svg>`;
}
