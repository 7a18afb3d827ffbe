// vfio-mig report's picture (src/report/): from realistic synthetic event files
// (tests/helpers/events_fixture.ts: one device live over TCP with several iterations, two
// devices, offline, a failure, a killed run), the SVG has each series with one mark
// per iteration, the switchover, stop-copy and downtime marks, a lane per device, the
// summary; the HTML is self-contained and escapes what it shows.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import {
  LIVE_TCP,
  type ModelOptions,
  OFFLINE,
  TWO_DEVICES,
  writeLoadEvents,
  writeModelEvents,
} from "../helpers/events_fixture.ts";
import { ModelBuilder, readEventsFile, type ReportModel } from "../../src/report/model.ts";
import { renderSvg } from "../../src/report/svg.ts";
import { renderHtml } from "../../src/report/html.ts";
import { byteTicks, fmtBytes, fmtMs, log2Ticks, niceStep, wrap } from "../../src/report/format.ts";

async function modelOf(
  o: ModelOptions,
  edit?: (text: string) => string,
): Promise<{ m: ReportModel; summary: Record<string, unknown>; text: string }> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-report-" });
  try {
    const path = `${dir}/events.jsonl`;
    const summary = writeModelEvents(path, o);
    let text = await Deno.readTextFile(path);
    if (edit) {
      text = edit(text);
      await Deno.writeTextFile(path, text);
    }
    return { m: readEventsFile(libc(), path), summary, text };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The elements of `tag` inside the group/element carrying `attr`, crudely (our own output's shape). */
function series(svg: string, name: string): string {
  const at = svg.indexOf(`data-series="${name}"`);
  assert(at >= 0, `series ${name} is drawn`);
  const open = svg.lastIndexOf("<", at);
  const tag = svg.slice(open + 1, svg.indexOf(" ", open));
  if (tag === "path") return svg.slice(open, svg.indexOf(">", at) + 1);
  return svg.slice(open, svg.indexOf(`</${tag}>`, at));
}

function count(s: string, re: RegExp): number {
  return (s.match(re) ?? []).length;
}

/** Every element closed, in order: a check that the markup is well formed. */
function balanced(xml: string): string | null {
  const stack: string[] = [];
  const body = xml.replace(/<!DOCTYPE[^>]*>|<\?xml[^>]*\?>/gi, "");
  const voids = new Set(["meta", "br", "hr", "img", "link", "input", "col"]);
  for (const m of body.matchAll(/<(\/?)([a-zA-Z][a-zA-Z0-9]*)\b[^>]*?(\/?)>/g)) {
    const [, close, tag, self] = m;
    if (self || voids.has(tag.toLowerCase())) continue;
    if (!close) stack.push(tag);
    else if (stack.pop() !== tag) return `</${tag}> closes something else at ${m.index}`;
  }
  return stack.length ? `unclosed: ${stack.join(" ")}` : null;
}

Deno.test("report: one device, live over TCP: every series, one mark per iteration, the switchover and the downtime", async () => {
  const { m, summary } = await modelOf(LIVE_TCP);
  const n = m.iterations.length;
  assert(n >= 6, `several iterations: ${n}`);
  assertEquals(m.switchover?.reason, "converged");
  const svg = renderSvg(m);
  assertEquals(balanced(svg), null);
  assertEquals(count(series(svg, "iteration-bytes"), /<rect /g), n, "a bar per iteration");
  assertEquals(count(series(svg, "estimate"), /<circle /g), n, "an estimate point per iteration");
  assertMatch(series(svg, "threshold"), new RegExp(`data-points="${n}"`));
  assertEquals(count(series(svg, "dirty-rate"), /<circle /g), n - 1, "a dirty rate from the second iteration on");
  assertMatch(series(svg, "bandwidth"), new RegExp(`data-points="${n}"`));
  assertMatch(series(svg, "cumulative-bytes"), /d="M[\d.]+,[\d.]+( L[\d.]+,[\d.]+){10,}"/);
  assertMatch(series(svg, "transfer-rate"), /data-points="\d\d+"/);
  assertMatch(series(svg, "stop-copy-bytes"), new RegExp(`data-bytes="${summary.stopCopyBytes}"`));
  assertMatch(svg, /<g class="mark switchover" data-reason="converged" data-t="[\d.]+"><line /);
  const down = Math.round((summary.downtimeMs as number) * 100) / 100;
  assertMatch(svg, new RegExp(`<g class="mark downtime" data-ms="${down}">`));
  assertStringIncludes(svg, `downtime ${fmtMs(summary.downtimeMs as number)}`);
  assertMatch(svg, /<rect class="mark stop-copy" /);
  assertEquals(count(svg, /<g class="lane" /g), 1);
  assertStringIncludes(svg, `<g class="detail">`);
  assertMatch(svg, /<g class="detail-mark switchover" /);
  // Transport steps as marks; states in the lane, in order.
  for (const step of ["connected", "authenticated", "init-ack", "peer-result"]) {
    assertStringIncludes(svg, `data-step="${step}"`);
  }
  const lane = svg.slice(svg.indexOf(`<g class="lane"`), svg.indexOf(`<g class="mark`));
  assertEquals([...lane.matchAll(/data-state="(\w+)"/g)].map((x) => x[1]), [
    "RUNNING",
    "PRE_COPY",
    "STOP_COPY",
    "STOP",
  ]);
  // The summary beside it.
  for (const s of ["succeeded (exit 0)", "converged at", `${n}`, "1 sent, 1 acknowledged", "limit 30.0 ms"]) {
    assertStringIncludes(svg, s);
  }
});

Deno.test("report: the estimate, threshold and dirty rate come from the iterations' PRECOPY_INFO answers", () => {
  const b = new ModelBuilder("x");
  const ev = (e: Record<string, unknown>) => b.line(JSON.stringify({ v: 1, ...e }));
  ev({ t: 0, type: "start", wallClock: "w", epochMs: 0, command: "save", tool: "t", pid: 1, mode: "live" });
  ev({ t: 0, type: "devices", devices: [{ index: 0, device: "a" }, { index: 1, device: "b" }] });
  const end = (t: number, n: number, a: number[], bb: number[], threshold: number | null) => {
    ev({ t: t - 100, type: "iteration", edge: "start", n });
    ev({
      t,
      type: "iteration",
      edge: "end",
      n,
      ms: 100,
      bytes: a[0] + bb[0],
      totalBytes: 0,
      devices: [
        { index: 0, device: "a", bytes: a[0], initialBytes: a[1], dirtyBytes: a[2] },
        { index: 1, device: "b", bytes: bb[0], initialBytes: bb[1], dirtyBytes: bb[2] },
      ],
      estimate: a[1] + a[2] + bb[1] + bb[2],
      threshold,
      bandwidth: threshold === null ? null : threshold * 10,
    });
  };
  end(100, 1, [100, 500, 0], [50, 0, 10], null);
  // 0.2 s later: a moved 100 and is left with 400 initial + 60 dirty (dirtied 60);
  // b moved 10 and has 30 dirty (dirtied 30).
  end(300, 2, [100, 400, 60], [10, 0, 30], 400);
  const m = b.finish();
  assertEquals(m.iterations.map((i) => i.dirtyRate), [null, (460 - 510 + 110 + 30 - 0) / 0.2]);
  assertEquals(m.iterations[1].devices.map((d) => d.dirtyRate), [60 / 0.2, 30 / 0.2]);
  assertEquals(m.iterations.map((i) => [i.remaining, i.estimate, i.threshold]), [[510, 510, null], [490, 490, 400]]);
  assertEquals(m.iterations.map((i) => i.t0), [0, 200]);
});

Deno.test("report: two devices get a lane each, with their own bytes per iteration and stop-copy", async () => {
  const { m } = await modelOf(TWO_DEVICES);
  const svg = renderSvg(m);
  assertEquals(balanced(svg), null);
  assertEquals(count(svg, /<g class="lane" /g), 2);
  for (const i of [0, 1]) {
    const s = svg.slice(svg.indexOf(`data-series="device-iteration-bytes" data-index="${i}"`));
    assertEquals(
      count(s.slice(0, s.indexOf("</g>")), /<rect /g),
      m.iterations.length,
      `device ${i}: a bar per iteration`,
    );
  }
  assertEquals(count(svg, /<rect class="device-stop-copy" /g), 2);
  assertMatch(svg, /data-device="sim:\/var\/tmp\/gpu"/);
  assertMatch(svg, /data-device="sim:\/var\/tmp\/nic"/);
  assertStringIncludes(svg, `data-state="PRE_COPY_P2P"`, "the P2P step shows");
  assertMatch(svg, /<g class="mark switchover" data-reason="converged"/);
  assertStringIncludes(svg, "sim:/var/tmp/nic: ");
});

Deno.test("report: an offline save has no pre-copy series and no switchover; stop-copy carries the data", async () => {
  const { m } = await modelOf(OFFLINE);
  const svg = renderSvg(m);
  assertEquals(balanced(svg), null);
  assertEquals(count(series(svg, "iteration-bytes"), /<rect /g), 0, "no iteration");
  for (const s of ["estimate", "threshold", "dirty-rate", "bandwidth"]) {
    assert(!svg.includes(`data-series="${s}"`), `no ${s} series`);
  }
  assertMatch(series(svg, "transfer-rate"), /data-points="\d+"/);
  assert(!svg.includes(`class="mark switchover"`), "no switchover");
  assertMatch(series(svg, "stop-copy-bytes"), new RegExp(`data-bytes="${96 * 1024 * 1024}"`));
  assertStringIncludes(svg, "save (offline)");
});

Deno.test("report: a load over TCP: the listener's steps, a refused peer, RESUMING, the data as it came", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-report-" });
  try {
    writeLoadEvents(`${dir}/load.jsonl`);
    const m = readEventsFile(libc(), `${dir}/load.jsonl`);
    assertEquals([m.command, m.mode, m.iterations.length, m.switchover], ["load", "live", 0, null]);
    const svg = renderSvg(m);
    assertEquals(balanced(svg), null);
    for (const step of ["listening", "refused", "authenticated", "init-ack", "peer-result"]) {
      assertStringIncludes(svg, `data-step="${step}"`);
    }
    const lane = svg.slice(svg.indexOf(`<g class="lane"`));
    assertEquals([...lane.matchAll(/data-state="(\w+)"/g)].map((x) => x[1]), [
      "RUNNING",
      "RESUMING",
      "STOP",
      "RUNNING",
    ]);
    assertStringIncludes(svg, `data-phase="resume"`);
    assertMatch(series(svg, "cumulative-bytes"), /data-points="\d{2,}"/);
    assertMatch(series(svg, "transfer-rate"), /data-points="([5-9]|\d{2,})"/);
    assertStringIncludes(svg, "load (live), from tcp");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: a failed run shows the error and where; a killed run shows how far it went", async () => {
  const failed = await modelOf({ ...LIVE_TCP, failInStopCopy: true });
  assertEquals([failed.m.end.kind, failed.m.end.exitCode], ["error", 1]);
  const svg = renderSvg(failed.m);
  assertMatch(svg, /<g class="mark error">/);
  assertStringIncludes(svg, "failed (exit 1)");
  assertStringIncludes(svg, "read of the data_fd: EIO");
  const killed = await modelOf(LIVE_TCP, (t) => t.split("\n").slice(0, 25).join("\n") + "\n");
  assertEquals(killed.m.end.kind, "none");
  const k = renderSvg(killed.m);
  assertEquals(balanced(k), null);
  assertStringIncludes(k, ">none: the events end");
  assert(killed.m.iterations.length > 0 && killed.m.iterations.length < failed.m.iterations.length);
});

Deno.test("report: the HTML is one self-contained file and escapes every text it shows", async () => {
  const hostile = `sim:/tmp/<script>alert("x")</script>&'`;
  const { m } = await modelOf({ ...LIVE_TCP, devices: [{ ...LIVE_TCP.devices[0], label: hostile }] });
  const html = renderHtml(m);
  assertEquals(balanced(html), null);
  assert(!/<script/i.test(html), "no script (the label is escaped)");
  assertStringIncludes(html, "sim:/tmp/&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;");
  for (const re of [/\bsrc=/i, /\bhref=/i, /@import/i, /url\(/i, /https?:\/\/(?!www\.w3\.org\/2000\/svg")/]) {
    assert(!re.test(html), `nothing fetched: ${re}`);
  }
  assertMatch(html, /^<!DOCTYPE html>\n<html lang="en">/);
  assertStringIncludes(html, `<svg xmlns="http://www.w3.org/2000/svg" class="vfio-mig-report"`);
  // The events table: all but progress.
  const rows = count(html, /<tr class="ev-/g);
  assertEquals(rows, m.events - m.progressEvents);
  assertMatch(html, /<tr class="ev-switchover"><td class="num">[\d.]+ (ms|s)<\/td><td>switchover<\/td>/);
});

Deno.test("report: units and ticks read as people write them", () => {
  assertEquals(
    [fmtBytes(512), fmtBytes(1536), fmtBytes(256 << 20), fmtBytes(14.1 * 2 ** 20), fmtBytes(1.5 * 2 ** 30)],
    [
      "512 B",
      "1.50 KiB",
      "256 MiB",
      "14.1 MiB",
      "1.50 GiB",
    ],
  );
  assertEquals([fmtMs(0.35), fmtMs(23.94), fmtMs(523.4), fmtMs(1520), fmtMs(125_000)], [
    "0.35 ms",
    "23.9 ms",
    "523 ms",
    "1.52 s",
    "2m05s",
  ]);
  assertEquals([niceStep(1000, 8), niceStep(523, 8), niceStep(7, 4)], [125 * 0 + 200, 100, 2]);
  assertEquals(byteTicks(150 * 2 ** 20, 3), { ticks: [0, 50, 100, 150].map((x) => x * 2 ** 20), top: 150 * 2 ** 20 });
  assertEquals(log2Ticks(20 * 2 ** 20, 900 * 2 ** 20, 6).ticks.map(fmtBytes), [
    "16 MiB",
    "32 MiB",
    "64 MiB",
    "128 MiB",
    "256 MiB",
    "512 MiB",
    "1 GiB",
  ]);
  assertEquals(wrap("failed (exit 1): a b c averyveryverylongword", 10), [
    "failed",
    "(exit 1):",
    "a b c",
    "averyveryv",
    "erylongwor",
    "d",
  ]);
});
