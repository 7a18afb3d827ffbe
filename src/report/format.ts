// Small helpers of the report: escaping, numbers in people's units, axis ticks.

import { byteUnit, fmtBytes } from "../units.ts";

/** Text for SVG and HTML: & < > " ' escaped, control characters dropped. */
export function esc(s: string): string {
  return s
    // deno-lint-ignore no-control-regex
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, "")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

// Bytes are formatted by the one formatter (src/units.ts).
export { byteUnit, fmtBytes };

export function fmtRate(n: number): string {
  return `${fmtBytes(n)}/s`;
}

/** "0.35 ms", "23.9 ms", "523 ms", "1.52 s", "2m05s". */
export function fmtMs(ms: number): string {
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

/** A round step (1, 2, 2.5 or 5 × 10^k) that cuts `range` into about `count` parts. */
export function niceStep(range: number, count: number): number {
  if (!(range > 0)) return 1;
  const raw = range / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

/** Ticks 0, step, 2·step … up to `max` (and the round value just above it): [ticks, top]. */
export function linearTicks(max: number, count = 4): { ticks: number[]; top: number } {
  const step = niceStep(max, count);
  const top = Math.max(step, Math.ceil(max / step - 1e-9) * step);
  const ticks: number[] = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(v);
  return { ticks, top };
}

/** Byte ticks in the unit that suits `max` (so labels read "64 MiB", not "67108864"). */
export function byteTicks(max: number, count = 4): { ticks: number[]; top: number } {
  const [d] = byteUnit(Math.max(max, 1));
  const { ticks, top } = linearTicks(Math.max(max, 1) / d, count);
  return { ticks: ticks.map((v) => v * d), top: top * d };
}

/** Powers of two from below `min` to above `max`, about `count` of them: a log axis. */
export function log2Ticks(min: number, max: number, count = 5): { ticks: number[]; lo: number; hi: number } {
  const a = Math.floor(Math.log2(Math.max(min, 1)));
  const b = Math.ceil(Math.log2(Math.max(max, 2)));
  const step = Math.max(1, Math.ceil((b - a) / count));
  const lo = Math.floor(a / step) * step;
  const hi = Math.max(lo + step, Math.ceil(b / step) * step);
  const ticks: number[] = [];
  for (let e = lo; e <= hi; e += step) ticks.push(2 ** e);
  return { ticks, lo: 2 ** lo, hi: 2 ** hi };
}

/** Splits text into lines of at most `width` characters, at spaces where it can. */
export function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/)) {
    if (word === "") continue;
    let w = word;
    while (w.length > width) {
      if (line) out.push(line);
      out.push(w.slice(0, width));
      w = w.slice(width);
      line = "";
    }
    if (!line) line = w;
    else if (line.length + 1 + w.length <= width) line += ` ${w}`;
    else {
      out.push(line);
      line = w;
    }
  }
  if (line) out.push(line);
  return out;
}
