// The report in a real browser: Debian's headless Chromium lays out the HTML and the
// standalone SVG that `vfio-mig report` wrote from a live save's events. --dump-dom
// of a page that measures the drawn elements (getBBox, getTotalLength) checks that
// every series has a geometry, one bar per iteration, that the switchover line spans
// the plots and that the last estimate sits under the threshold it converged on;
// --screenshot checks the pixels (the switchover's red, the iterations' blue). tests/run.sh
// installs chromium; without it the test is skipped and says so.

import { assert, assertEquals } from "../helpers/assert.ts";
import { inflateSync } from "node:zlib";
import { killAll, ok, vfioMig } from "../helpers/proc.ts";
import { validateEventLines } from "../../src/events/schema.ts";
import { LIVE_TCP, TWO_DEVICES, writeModelEvents } from "../helpers/events_fixture.ts";
import { COLORS } from "../../src/report/svg.ts";

function findChromium(): string | null {
  for (const name of ["chromium", "chromium-browser"]) {
    for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
      try {
        if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
      } catch { /* not here */ }
    }
  }
  return null;
}

const CHROMIUM = findChromium();
if (!CHROMIUM) console.warn("report_chromium_test: SKIPPED: chromium not found (apt-get install chromium)");

/** Runs headless Chromium on a file with a fresh profile, no network features; returns stdout. */
async function chromium(dir: string, args: string[], file: string): Promise<string> {
  const profile = await Deno.makeTempDir({ dir, prefix: "profile-" });
  const out = await new Deno.Command(CHROMIUM!, {
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--hide-scrollbars",
      `--user-data-dir=${profile}`,
      ...args,
      `file://${file}`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { HOME: dir },
  }).output();
  assert(
    out.success,
    `chromium ${args.join(" ")}: exit ${out.code}\n${new TextDecoder().decode(out.stderr).slice(-2000)}`,
  );
  return new TextDecoder().decode(out.stdout);
}

// ---------------------------------------------------------------------------
// A PNG reader, enough for Chromium's screenshots (8-bit RGB or RGBA, not interlaced).

interface Image {
  width: number;
  height: number;
  /** RGBA, row after row. */
  rgba: Uint8Array;
}

function readPng(png: Uint8Array): Image {
  const dv = new DataView(png.buffer, png.byteOffset, png.byteLength);
  assertEquals([...png.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], "PNG signature");
  let off = 8;
  let width = 0, height = 0, colorType = 0;
  const idat: Uint8Array[] = [];
  while (off < png.length) {
    const len = dv.getUint32(off);
    const type = new TextDecoder().decode(png.subarray(off + 4, off + 8));
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === "IHDR") {
      width = dv.getUint32(off + 8);
      height = dv.getUint32(off + 12);
      assertEquals(data[8], 8, "8 bits per channel");
      colorType = data[9];
      assert(colorType === 2 || colorType === 6, `colour type ${colorType}`);
      assertEquals(data[12], 0, "not interlaced");
    } else if (type === "IDAT") idat.push(data);
    off += 12 + len;
  }
  const raw = new Uint8Array(inflateSync(new Uint8Array(idat.flatMap((c) => [...c]))));
  const bpp = colorType === 6 ? 4 : 3;
  const stride = width * bpp;
  const pix = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? pix[y * stride + x - bpp] : 0;
      const b = y > 0 ? pix[(y - 1) * stride + x] : 0;
      const c = x >= bpp && y > 0 ? pix[(y - 1) * stride + x - bpp] : 0;
      let v = line[x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      pix[y * stride + x] = v & 0xff;
    }
  }
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    rgba.set(pix.subarray(i * bpp, i * bpp + 3), i * 4);
    rgba[i * 4 + 3] = bpp === 4 ? pix[i * bpp + 3] : 255;
  }
  return { width, height, rgba };
}

/** Pixels within `tol` of a #rrggbb colour. */
function countColor(img: Image, hex: string, tol = 6): number {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  let n = 0;
  for (let i = 0; i < img.rgba.length; i += 4) {
    if (
      Math.abs(img.rgba[i] - r) <= tol && Math.abs(img.rgba[i + 1] - g) <= tol && Math.abs(img.rgba[i + 2] - b) <= tol
    ) n++;
  }
  return n;
}

/**
 * The measuring page: each report in an iframe, and a script that measures what
 * Chromium laid out in each (run once all are loaded) and writes it into #result.
 */
function measuringPage(files: string[]): string {
  const frames = files.map((f, i) => `<iframe id="f${i}" src="${f}" width="1200" height="1400"></iframe>`).join("\n");
  return `<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>${frames}
<pre id="result"></pre>
<script>
function measure(doc) {
  const q = (s) => doc.querySelector(s);
  const box = (el) => { if (!el) return null; const b = el.getBBox(); return { x: b.x, y: b.y, w: b.width, h: b.height }; };
  const out = { series: {}, marks: {}, svgs: doc.querySelectorAll("svg.vfio-mig-report").length };
  for (const el of doc.querySelectorAll("[data-series]")) {
    const name = el.dataset.series + (el.dataset.index !== undefined ? ":" + el.dataset.index : "");
    const paths = el.tagName === "path" ? [el] : [...el.querySelectorAll("path")];
    out.series[name] = {
      box: box(el),
      length: paths.reduce((a, p) => a + p.getTotalLength(), 0),
      bars: [...el.querySelectorAll("rect")].map(box),
      dots: [...el.querySelectorAll("circle")].map((c) => ({ cx: c.cx.baseVal.value, cy: c.cy.baseVal.value })),
    };
  }
  const thr = q('[data-series="threshold"]');
  if (thr) {
    // The threshold's last step: its y where the switchover was decided.
    const segs = thr.getAttribute("d").trim().split(/ (?=M)/);
    out.lastThresholdY = Number(segs[segs.length - 1].split(",")[1].split(" ")[0]);
  }
  for (const m of ["switchover", "downtime", "stop-copy"]) out.marks[m] = box(q(".mark." + m));
  out.switchoverLine = box(q(".mark.switchover line"));
  out.lanes = doc.querySelectorAll("g.lane").length;
  return out;
}
window.addEventListener("load", () => {
  const all = {};
  ${JSON.stringify(files)}.forEach((f, i) => {
    try {
      all[f] = measure(document.getElementById("f" + i).contentDocument);
    } catch (e) {
      all[f] = { error: String(e) };
    }
  });
  document.getElementById("result").textContent = JSON.stringify(all);
});
</script></body></html>`;
}

interface Measured {
  svgs: number;
  series: Record<
    string,
    {
      box: { x: number; y: number; w: number; h: number };
      length: number;
      bars: { w: number; h: number }[];
      dots: { cx: number; cy: number }[];
    }
  >;
  marks: Record<string, { x: number; y: number; w: number; h: number } | null>;
  switchoverLine: { x: number; y: number; w: number; h: number };
  lastThresholdY: number;
  lanes: number;
}

function measured(dom: string): Record<string, Measured> {
  const m = dom.match(/<pre id="result">([^<]*)<\/pre>/);
  assert(m && m[1], `the measuring script ran: ${dom.slice(-500)}`);
  return JSON.parse(m[1].replace(/&quot;/g, '"').replace(/&amp;/g, "&").replace(/&lt;/g, "<").replace(/&gt;/g, ">"));
}

/** Measures the reports in Chromium (one launch): file name → what was laid out. */
async function measureIn(dir: string, files: string[]): Promise<Record<string, Measured>> {
  await Deno.writeTextFile(`${dir}/measure.html`, measuringPage(files));
  const dom = await chromium(
    dir,
    ["--dump-dom", "--allow-file-access-from-files", "--virtual-time-budget=5000"],
    `${dir}/measure.html`,
  );
  const all = measured(dom);
  for (const f of files) assert(all[f] && !("error" in all[f]), `${f} measured: ${JSON.stringify(all[f])}`);
  return all;
}

Deno.test({
  name: "report in Chromium: a live save's report lays out every series, the switchover and the downtime",
  ignore: CHROMIUM === null,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "vfio-mig-chromium-" });
    try {
      const events = `${dir}/live.jsonl`;
      const summary = writeModelEvents(events, LIVE_TCP);
      const iterations = summary.iterations as number;
      await ok(["report", events, "-o", `${dir}/live.html`]);
      await ok(["report", events, "-o", `${dir}/live.svg`]);

      // Measured in the browser: the page and the picture alone, as Chromium parsed and laid them out;
      // and a screenshot of the page (two browsers at once: each takes seconds to start).
      const png = `${dir}/live.png`;
      const [all] = await Promise.all([
        measureIn(dir, ["live.html", "live.svg"]),
        chromium(dir, [`--screenshot=${png}`, "--window-size=1212,1000"], `${dir}/live.html`),
      ]);
      for (const [f, m] of Object.entries(all)) {
        assertEquals(m.svgs, 1, `${f}: the report's SVG is there, as SVG`);
        for (
          const s of [
            "iteration-bytes",
            "stop-copy-bytes",
            "cumulative-bytes",
            "estimate",
            "threshold",
            "bandwidth",
            "dirty-rate",
            "transfer-rate",
          ]
        ) {
          const x = m.series[s];
          assert(
            x && x.box.w > (s === "stop-copy-bytes" ? 0 : 100),
            `${f}: ${s} is laid out: ${JSON.stringify(x?.box)}`,
          );
        }
        assertEquals(m.series["iteration-bytes"].bars.length, iterations, `${f}: a bar per iteration`);
        for (const b of m.series["iteration-bytes"].bars) {
          assert(b.w > 5 && b.h > 5, `a visible bar: ${JSON.stringify(b)}`);
        }
        assert(
          m.series["cumulative-bytes"].length > 500,
          `the cumulative line: ${m.series["cumulative-bytes"].length}`,
        );
        assertEquals(m.series["estimate"].dots.length, iterations);
        // The estimate falls: the first point is above (smaller y) the last; the last is under the threshold.
        const dots = m.series["estimate"].dots;
        assert(dots[0].cy < dots[dots.length - 1].cy, "the estimate falls");
        assert(
          dots[dots.length - 1].cy >= m.lastThresholdY,
          `converged: estimate y ${dots.at(-1)!.cy} under threshold y ${m.lastThresholdY}`,
        );
        assert(dots[dots.length - 2].cy < m.lastThresholdY, "and not before the last iteration");
        // The switchover line spans the plots, at the last estimate's x.
        const line = m.switchoverLine;
        assert(line.h > 500, `the switchover line spans the plots: ${JSON.stringify(line)}`);
        assert(Math.abs(line.x - dots[dots.length - 1].cx) < 2, `at the switchover: ${line.x} vs ${dots.at(-1)!.cx}`);
        assert(m.marks.downtime!.w >= 2 && m.marks["stop-copy"]!.w >= 1, JSON.stringify(m.marks));
        assertEquals(m.lanes, 1);
      }

      // Pixels: the page shows the switchover and the bars.
      const img = readPng(await Deno.readFile(png));
      assertEquals([img.width, img.height], [1212, 1000]);
      const red = countColor(img, COLORS.switchover);
      const blue = countColor(img, COLORS.iteration);
      assert(red > 600, `the switchover's red is on screen (${red} pixels)`);
      assert(blue > 20_000, `the iteration bars' blue is on screen (${blue} pixels)`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "report in Chromium: two devices, one lane each",
  ignore: CHROMIUM === null,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "vfio-mig-chromium-" });
    try {
      writeModelEvents(`${dir}/two.jsonl`, TWO_DEVICES);
      await ok(["report", `${dir}/two.jsonl`, "-o", `${dir}/two.svg`]);
      const m = (await measureIn(dir, ["two.svg"]))["two.svg"];
      assertEquals(m.lanes, 2);
      for (const i of [0, 1]) {
        const s = m.series[`device-iteration-bytes:${i}`];
        assert(
          s && s.bars.length > 3 && s.bars.every((b) => b.w > 3 && b.h > 0.5),
          `device ${i}: ${JSON.stringify(s?.bars)}`,
        );
      }
      assert(m.switchoverLine.h > 500);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "events of a real live save over TCP (both ends): valid, every kind there, and the report draws them",
  ignore: CHROMIUM === null,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "vfio-mig-events-e2e-" });
    try {
      const [a, b] = [`${dir}/a`, `${dir}/b`];
      await ok(["sim", "create", a, "--model", "bulk", "--size", String(16 << 20), "--rate", "4M", "--seed", "3"]);
      await ok(["sim", "create", b, "--model", "bulk", "--size", String(16 << 20), "--seed", "4"]);
      const token = "events-e2e-token";
      const dst = vfioMig([
        "load",
        "--device",
        `sim:${b}`,
        "--listen",
        "127.0.0.1:0",
        "--token",
        token,
        "--events",
        `${dir}/dst.jsonl`,
      ]);
      const port = Number((await dst.waitStderr(/listening on 127\.0\.0\.1:(\d+)/, 20_000))[1]);
      const src = await ok([
        "save",
        "--live",
        "--json",
        "--device",
        `sim:${a}`,
        `tcp://127.0.0.1:${port}`,
        "--token",
        token,
        "--events",
        `${dir}/src.jsonl`,
      ]);
      assertEquals((await dst.done()).code, 0, "the destination loaded");
      const summary = JSON.parse(src.stdout.slice(src.stdout.indexOf("{")));
      const types = (file: string) => {
        const text = Deno.readTextFileSync(file);
        assertEquals(validateEventLines(text), null, `${file}: every event valid, in order`);
        const evs = text.trim().split("\n").map((l) => JSON.parse(l));
        return { evs, set: new Set(evs.map((e) => e.type === "transport" ? `transport:${e.step}` : e.type)) };
      };
      const s = types(`${dir}/src.jsonl`);
      for (
        const t of [
          "start",
          "devices",
          "header",
          "state",
          "phase",
          "iteration",
          "switchover",
          "progress",
          "transport:connected",
          "transport:authenticated",
          "transport:init-ack",
          "transport:peer-result",
          "result",
        ]
      ) assert(s.set.has(t), `the save's events include ${t}: ${[...s.set].join(", ")}`);
      const d = types(`${dir}/dst.jsonl`);
      for (
        const t of ["start", "devices", "header", "state", "phase", "transport:listening", "transport:authenticated"]
      ) assert(d.set.has(t), `the load's events include ${t}: ${[...d.set].join(", ")}`);
      assert(d.set.has("transport:init-ack") && d.set.has("transport:peer-result") && d.set.has("result"));
      const result = s.evs.at(-1);
      assertEquals(result.summary.iterations, summary.iterations, "the result event carries the summary");
      const states = s.evs.filter((e) => e.type === "state").map((e) => `${e.from}->${e.to}`);
      assertEquals(states, ["RUNNING->PRE_COPY", "PRE_COPY->STOP_COPY", "STOP_COPY->STOP"], "the save's SETs");

      await ok(["report", `${dir}/src.jsonl`, "-o", `${dir}/live.html`]);
      const m = (await measureIn(dir, ["live.html"]))["live.html"];
      assertEquals(m.series["iteration-bytes"].bars.length, summary.iterations, "a bar per pre-copy iteration");
      // The cumulative line runs along every pre-copy iteration (as wide as the bars spread:
      // how many pixels depends on how long pre-copy took against the whole run); the
      // estimate and the threshold are drawn where the iterations reported them.
      const bars = m.series["iteration-bytes"].bars as unknown as { x: number; w: number }[];
      const span = bars.length > 1 ? bars[bars.length - 1].x - bars[0].x : 0;
      const cum = m.series["cumulative-bytes"];
      assert(
        cum && cum.length > 0 && cum.box.w >= 0.9 * span,
        `cumulative-bytes spans the ${bars.length} iterations (${span.toFixed(0)} px): ${JSON.stringify(cum?.box)}`,
      );
      for (const x of ["estimate", "threshold"]) {
        assert(
          m.series[x] && m.series[x].length > 0 && m.series[x].box.w > 0,
          `${x} is drawn: ${JSON.stringify(m.series[x]?.box)}`,
        );
      }
      assert(m.switchoverLine.h > 300, `the switchover mark spans the plots: ${JSON.stringify(m.switchoverLine)}`);
    } finally {
      await killAll();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
