// SVG charts of a `deno task bench` run, from its JSON results (hand-written SVG, no library):
//   throughput.svg  per path: vfio-mig vs baseline GiB/s (paired bars), the ratio, a mark at the goal
//   rss.svg         peak RSS of save against the state size (log x), the 64 MiB goal line
//
//   deno run -A bench/charts.ts bench/results/latest.json [OUT_DIR]   (OUT_DIR: the JSON's folder)

/** One side's numbers (GiB/s of device state, whole-process wall time). */
export interface SideSummary {
  medianGiBs: number;
  bestGiBs: number;
  walls: number[];
  inToolMedianGiBs?: number | null;
  peakRssMiB: Record<string, number>;
  medianForeignCpu: number;
}

/** A path of the table, for one variant. */
export interface RowResult {
  row: string;
  path: string;
  size: string;
  bytes: number;
  goal: number;
  variant: string;
  toolCommand: string;
  baselineCommand: string;
  baseline: SideSummary;
  /** Why this variant has no numbers here (it cannot run the command). */
  unsupported?: string;
  tool?: SideSummary;
  ratioMedian?: number;
  ratioBest?: number;
  ratioPairedMedian?: number;
  fixedMs?: number;
  ratioNetMedian?: number | null;
  met?: boolean;
}

export interface RssResult {
  variant: string;
  command: string;
  points: { size: string; bytes: number; peakRssMiB: number; runs: number }[];
  maxMiB: number;
  spreadMiB: number;
  goalMiB: number;
  met: boolean;
  unsupported?: string;
}

export interface StartResult {
  variant: string;
  command: string;
  unsupported?: string;
  /** A bare `deno run empty.ts`, in the same rounds. */
  bareMs?: { median: number; best: number; all: number[] };
  helpMs?: { median: number; best: number; all: number[] };
  /** `info --device` of a PCI address with no device (exit 3). */
  infoMs?: { median: number; best: number; all: number[] };
  /** Median over the bare `deno run`: what vfio-mig's own start costs. */
  overBareMs?: { help: number; info: number };
  /** Goals for overBareMs, ms. */
  goals: { help: number; info: number };
  firstFile?: string;
  firstAccessMs?: { median: number; best: number; all: number[] };
  stateWallMs?: { median: number; best: number; all: number[] };
  straceWallMs?: { median: number; all: number[] };
  met?: boolean;
}

export interface BenchJson {
  env: {
    date: string;
    deno: string;
    kernel: string;
    cpus: number;
    cpu: string;
    quick: boolean;
    rounds: number;
    warmup: number;
    variants: { name: string; dir: string; gitHead: string; gitDirty: string[] }[];
    [k: string]: unknown;
  };
  rows: RowResult[];
  rss: RssResult[];
  start: StartResult[];
  [k: string]: unknown;
}

const FONT = `font-family="DejaVu Sans, Arial, Helvetica, sans-serif"`;
const TOOL_COLORS = ["#2f6db5", "#8e44ad", "#d35400", "#16a085"];
const BASE_COLOR = "#9a9a9a";
const OK = "#1e7b34";
const BAD = "#c0392b";

export function esc(s: string): string {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");
}

function text(x: number, y: number, s: string, attrs = ""): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${esc(s)}</text>`;
}

/** The title's second line: machine, date, commit(s). */
function subtitle(j: BenchJson): string {
  const commits = j.env.variants.map((v) =>
    `${j.env.variants.length > 1 ? v.name + " " : ""}${v.gitHead || "?"}${v.gitDirty.length ? "+dirty" : ""}`
  ).join(", ");
  const cpu = j.env.cpu.replace(/\s+/g, " ").trim();
  return `${cpu}, ${j.env.cpus} CPUs · Deno ${j.env.deno} · ${j.env.date.slice(0, 10)} · commit ${commits}`;
}

function load(j: BenchJson): string {
  const la = j.env.loadAvgAtStart;
  return Array.isArray(la) ? `, load average ${la[0]} on ${j.env.cpus} CPUs` : "";
}

function smokeNote(j: BenchJson): string | null {
  return j.env.quick || j.env.rounds < 3
    ? `SMOKE RUN (${j.env.quick ? "--quick, small sizes, " : ""}${j.env.rounds} round${j.env.rounds === 1 ? "" : "s"}${
      load(j)
    }): not the final numbers`
    : null;
}

function niceStep(max: number, ticks: number): number {
  const raw = max / ticks;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

const fmt = (n: number, d = 2) => n.toFixed(d);

/** The decimals a tick step needs (0.25 → 2, 0.5 → 1, 2 → 0). */
function decimals(step: number): number {
  for (let d = 0; d < 4; d++) if (Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) < 1e-6) return d;
  return 4;
}

export function throughputSvg(j: BenchJson): string {
  const labelW = 250, plotX = labelW + 10, plotW = 440, noteX = plotX + plotW + 70;
  const W = noteX + 250; // the ratio notes: "before 0.46× (0.61) ✗ ≥ 0.95" in 13 px bold
  const groups: RowResult[][] = [];
  for (const r of j.rows) {
    const g = groups.find((g) => g[0].row === r.row && g[0].size === r.size);
    if (g) g.push(r);
    else groups.push([r]);
  }
  const barH = 18, barGap = 4, groupGap = 18;
  const smoke = smokeNote(j);
  const top = smoke ? 112 : 96;
  const groupH = (g: RowResult[]) => (g.length + 1) * (barH + barGap) - barGap;
  const plotH = groups.reduce((a, g) => a + groupH(g) + groupGap, 0);
  const H = top + plotH + 60;
  const max = Math.max(
    0.1,
    ...j.rows.flatMap((r) => [r.baseline.medianGiBs, r.tool?.medianGiBs ?? 0, r.baseline.medianGiBs * r.goal]),
  );
  const step = niceStep(max, 5);
  const xMax = Math.ceil((max * 1.04) / step) * step;
  const X = (v: number) => plotX + (v / xMax) * plotW;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ${FONT}>`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    text(
      16,
      26,
      "vfio-mig throughput vs a baseline moving the same bytes (median of rounds)",
      `font-size="17" font-weight="bold"`,
    ),
    text(16, 46, subtitle(j), `font-size="12" fill="#444"`),
  );
  if (smoke) out.push(text(16, 64, smoke, `font-size="13" font-weight="bold" fill="${BAD}"`));
  // legend
  let lx = 16;
  const ly = top - 26;
  const legend: [string, string][] = [
    ...j.env.variants.map((v, i): [string, string] => [TOOL_COLORS[i % TOOL_COLORS.length], `vfio-mig (${v.name})`]),
    [BASE_COLOR, "baseline (cat / socat)"],
  ];
  for (const [c, name] of legend) {
    out.push(
      `<rect x="${lx}" y="${ly - 11}" width="14" height="14" fill="${c}"/>`,
      text(lx + 20, ly, name, `font-size="13"`),
    );
    lx += 30 + name.length * 7.2;
  }
  out.push(
    `<line x1="${lx}" y1="${ly - 13}" x2="${lx}" y2="${ly + 4}" stroke="black" stroke-width="2.5"/>`,
    text(lx + 8, ly, "goal (goal × baseline)", `font-size="13"`),
  );
  out.push(text(noteX - 12, ly, "ratio median (best)", `font-size="13" font-weight="bold"`));
  // grid
  for (let v = 0; v <= xMax + 1e-9; v += step) {
    out.push(
      `<line x1="${X(v).toFixed(1)}" y1="${top - 8}" x2="${X(v).toFixed(1)}" y2="${top + plotH}" stroke="#e3e3e3"/>`,
      text(X(v), top + plotH + 18, fmt(v, decimals(step)), `font-size="12" text-anchor="middle"`),
    );
  }
  out.push(
    `<line x1="${plotX}" y1="${top + plotH}" x2="${plotX + plotW}" y2="${top + plotH}" stroke="#333"/>`,
    text(
      plotX + plotW / 2,
      top + plotH + 40,
      "GiB/s of device state (bytes / wall time of the whole command)",
      `font-size="13" text-anchor="middle"`,
    ),
  );
  let y = top;
  for (const g of groups) {
    const h = groupH(g);
    const first = g[0];
    out.push(
      text(labelW, y + h / 2 - 3, first.path, `font-size="13" font-weight="bold" text-anchor="end"`),
      text(labelW, y + h / 2 + 13, first.size, `font-size="12" fill="#444" text-anchor="end"`),
    );
    // the value label goes after the bar, or after the goal mark when that is close behind it
    const bar = (v: number | undefined, color: string, yy: number, label: string, mark = 0) => {
      if (v === undefined) {
        out.push(text(plotX + 4, yy + barH - 4, label, `font-size="12" fill="${BAD}"`));
        return;
      }
      out.push(
        `<rect x="${plotX}" y="${yy}" width="${
          Math.max(1, X(v) - plotX).toFixed(1)
        }" height="${barH}" fill="${color}"/>`,
        text(mark > X(v) - 2 && mark < X(v) + 40 ? mark + 5 : X(v) + 5, yy + barH - 4, label, `font-size="12"`),
      );
    };
    g.forEach((r, i) => {
      const yy = y + i * (barH + barGap);
      const color = TOOL_COLORS[j.env.variants.findIndex((v) => v.name === r.variant) % TOOL_COLORS.length];
      if (r.unsupported || !r.tool) {
        bar(undefined, color, yy, `${r.variant}: not run (${r.unsupported ?? "no data"})`.slice(0, 60));
        return;
      }
      const gx = X(r.goal * r.baseline.medianGiBs);
      bar(r.tool.medianGiBs, color, yy, fmt(r.tool.medianGiBs), gx + 2);
      out.push(
        `<line x1="${gx.toFixed(1)}" y1="${yy - 2}" x2="${gx.toFixed(1)}" y2="${
          yy + barH + 2
        }" stroke="black" stroke-width="2.5"/>`,
      );
      const met = r.met ?? false;
      out.push(
        text(
          noteX,
          yy + barH - 4,
          `${j.env.variants.length > 1 ? r.variant + " " : ""}${fmt(r.ratioMedian!)}× (${fmt(r.ratioBest!)}) ${
            met ? "✓" : "✗"
          } ≥ ${r.goal}`,
          `font-size="13" font-weight="bold" fill="${met ? OK : BAD}"`,
        ),
      );
    });
    bar(first.baseline.medianGiBs, BASE_COLOR, y + g.length * (barH + barGap), fmt(first.baseline.medianGiBs));
    y += h + groupGap;
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

export function rssSvg(j: BenchJson): string {
  const W = 900, H = 520;
  const smoke = smokeNote(j);
  const px = 90, py = smoke ? 100 : 84, pw = 740, ph = H - py - 80;
  const series = j.rss.filter((s) => !s.unsupported && s.points.length);
  const pts = series.flatMap((s) => s.points);
  const goal = j.rss[0]?.goalMiB ?? 64;
  const bytes = pts.length ? pts.map((p) => p.bytes) : [64 * 2 ** 20, 8 * 2 ** 30];
  const lo = Math.log2(Math.min(...bytes)) - 0.5, hi = Math.log2(Math.max(...bytes)) + 0.5;
  const yMaxRaw = Math.max(goal * 1.25, ...pts.map((p) => p.peakRssMiB * 1.1));
  const step = niceStep(yMaxRaw, 6);
  const yMax = Math.ceil(yMaxRaw / step) * step;
  const X = (b: number) => px + ((Math.log2(b) - lo) / (hi - lo)) * pw;
  const Y = (m: number) => py + ph - (m / yMax) * ph;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ${FONT}>`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    text(16, 26, "vfio-mig save: peak RSS against the device state size", `font-size="17" font-weight="bold"`),
    text(16, 46, subtitle(j), `font-size="12" fill="#444"`),
  ];
  if (smoke) out.push(text(16, 64, smoke, `font-size="13" font-weight="bold" fill="${BAD}"`));
  const cmd = j.rss[0]?.command;
  if (cmd) {
    out.push(text(16, py - 12, `/usr/bin/time -f %M of: ${cmd} (max over rounds)`, `font-size="12" fill="#444"`));
  }
  for (let v = 0; v <= yMax + 1e-9; v += step) {
    out.push(
      `<line x1="${px}" y1="${Y(v).toFixed(1)}" x2="${px + pw}" y2="${Y(v).toFixed(1)}" stroke="#e3e3e3"/>`,
      text(px - 8, Y(v) + 4, fmt(v, 0), `font-size="12" text-anchor="end"`),
    );
  }
  const ticks = [...new Set(bytes)].sort((a, b) => a - b);
  for (const b of ticks) {
    const label = b >= 2 ** 30 ? `${b / 2 ** 30} GiB` : `${Math.round(b / 2 ** 20)} MiB`;
    out.push(
      `<line x1="${X(b).toFixed(1)}" y1="${py}" x2="${X(b).toFixed(1)}" y2="${py + ph}" stroke="#eeeeee"/>`,
      text(X(b), py + ph + 18, label, `font-size="12" text-anchor="middle"`),
    );
  }
  out.push(
    `<rect x="${px}" y="${py}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`,
    `<line x1="${px}" y1="${Y(goal).toFixed(1)}" x2="${px + pw}" y2="${
      Y(goal).toFixed(1)
    }" stroke="${BAD}" stroke-width="2" stroke-dasharray="8 5"/>`,
    text(px + 8, Y(goal) - 6, `goal: ≤ ${goal} MiB, flat`, `font-size="13" fill="${BAD}"`), // left: clear of the big size's labels
    text(px + pw / 2, H - 22, "device state size (log scale)", `font-size="13" text-anchor="middle"`),
    text(
      22,
      py + ph / 2,
      "peak RSS of save (MiB)",
      `font-size="13" text-anchor="middle" transform="rotate(-90 22 ${py + ph / 2})"`,
    ),
  );
  // value labels right of their points; at one size, pushed apart so that they never overlap
  const labels: { x: number; y: number; s: string; c: string }[] = [];
  const multi = series.length > 1;
  series.forEach((s, i) => {
    const c = TOOL_COLORS[j.env.variants.findIndex((v) => v.name === s.variant) % TOOL_COLORS.length];
    const sorted = [...s.points].sort((a, b) => a.bytes - b.bytes);
    out.push(
      `<polyline fill="none" stroke="${c}" stroke-width="2.5" points="${
        sorted.map((p) => `${X(p.bytes).toFixed(1)},${Y(p.peakRssMiB).toFixed(1)}`).join(" ")
      }"/>`,
    );
    for (const p of sorted) {
      out.push(`<circle cx="${X(p.bytes).toFixed(1)}" cy="${Y(p.peakRssMiB).toFixed(1)}" r="4.5" fill="${c}"/>`);
      labels.push({ x: X(p.bytes), y: Y(p.peakRssMiB), s: (multi ? `${s.variant} ` : "") + fmt(p.peakRssMiB, 0), c });
    }
    // legend
    const lx = px + 12, ly = py + 20 + i * 20;
    out.push(
      `<rect x="${lx}" y="${ly - 11}" width="14" height="14" fill="${c}"/>`,
      text(
        lx + 20,
        ly,
        `${s.variant}: max ${fmt(s.maxMiB, 0)} MiB, spread ${fmt(s.spreadMiB, 1)} MiB ${s.met ? "✓" : "✗"}`,
        `font-size="13" fill="${s.met ? OK : BAD}"`,
      ),
    );
  });
  for (const x of new Set(labels.map((l) => l.x))) {
    let last = -Infinity;
    for (const l of labels.filter((l) => l.x === x).sort((a, b) => a.y - b.y)) {
      last = Math.max(l.y - 6, last + 15);
      out.push(text(l.x + 8, last, l.s, `font-size="12" fill="${l.c}"`));
    }
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

// generated: `deno fmt` (which reformats SVG) leaves the files as written
const HEADER = "<!-- deno-fmt-ignore-file -->\n";

/** Writes throughput.svg and rss.svg into dir; returns their paths. */
export function writeCharts(j: BenchJson, dir: string): string[] {
  Deno.mkdirSync(dir, { recursive: true });
  const paths = [`${dir}/throughput.svg`, `${dir}/rss.svg`];
  Deno.writeTextFileSync(paths[0], HEADER + throughputSvg(j));
  Deno.writeTextFileSync(paths[1], HEADER + rssSvg(j));
  return paths;
}

if (import.meta.main) {
  const [file, dir] = Deno.args;
  if (!file || file === "-h" || file === "--help") {
    console.log("Usage: deno run -A bench/charts.ts RESULTS.json [OUT_DIR]   (OUT_DIR: the JSON's folder)");
    Deno.exit(file ? 0 : 2);
  }
  const j = JSON.parse(Deno.readTextFileSync(file)) as BenchJson;
  if (!Array.isArray(j.rows) || !Array.isArray(j.rss)) {
    console.error(`charts: ${file} is not a 'deno task bench' result of this version (no rows/rss)`);
    Deno.exit(2);
  }
  const outDir = dir ?? (file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".");
  for (const p of writeCharts(j, outDir)) console.log(p);
}
