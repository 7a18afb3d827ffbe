// The report's picture as an operator reads it (issue 26): lanes named by their device,
// TCP steps labelled, the detail axis's +0 where the lane changes, the listener's wait
// labelled, a file load of a live stream not titled "load (live)", an interrupted
// save's lane ending in the state its message gives, the events table wrapping.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { LIVE_TCP, writeLoadEvents, writeModelEvents } from "../helpers/events_fixture.ts";
import { readEventsFile, type ReportModel } from "../../src/report/model.ts";
import { renderSvg, summaryRows } from "../../src/report/svg.ts";
import { renderHtml } from "../../src/report/html.ts";

async function model(write: (path: string) => void, edit?: (text: string) => string): Promise<ReportModel> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-picture-" });
  try {
    const path = `${dir}/events.jsonl`;
    write(path);
    if (edit) await Deno.writeTextFile(path, edit(await Deno.readTextFile(path)));
    return readEventsFile(libc(), path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The x of every element of `cls` with `attr` inside the group `group` of the svg. */
function xs(svg: string, from: string, re: RegExp): number[] {
  return [...svg.slice(svg.indexOf(from)).matchAll(re)].map((m) => Number(m[1]));
}

Deno.test("picture: a live save over TCP: lanes named, TCP steps labelled, the detail's +0 on the lane's change", async () => {
  const m = await model((p) => writeModelEvents(p, LIVE_TCP));
  const svg = renderSvg(m);
  const name = m.devices[0].label;
  // Lanes: the device's name, not its index.
  assertStringIncludes(svg, `<g class="lane" data-index="0" data-device="${name}"><text x="84" y="`);
  assertMatch(svg, new RegExp(`<g class="lane"[^>]*><text[^>]*>${name}</text>`));
  const detail = svg.slice(svg.indexOf(`<g class="detail">`));
  assertMatch(detail, new RegExp(`>${name}</text>`), "the detail's lane is named too");
  assert(!/text-anchor="end"[^>]*>0<\/text>/.test(detail), "no bare index as a lane's name");
  assert(!summaryRows(m).some(([k]) => /^\s*0$/.test(k)), "no summary row named 0");
  // TCP steps: each triangle's name written beside it.
  const labels = [...svg.matchAll(/class="transport-label"[^>]*>([^<]+)</g)].map((x) => x[1]);
  assert(labels.some((l) => l.includes("connected")), `labels: ${labels}`);
  assert(labels.some((l) => l.includes("authenticated")), `labels: ${labels}`);
  // The detail: the tick labelled +0 ms is where the lane leaves PRE_COPY.
  const zero = /<text x="([\d.]+)" y="[\d.]+" font-size="10.5" text-anchor="middle"[^>]*>\+0 ms<\/text>/.exec(detail);
  assert(zero, "a +0 ms tick");
  const stopCopy = /class="state" data-state="STOP_COPY" x="([\d.]+)"/.exec(detail);
  assert(stopCopy, "STOP_COPY in the detail's lane");
  assert(Math.abs(Number(zero[1]) - Number(stopCopy[1])) < 1, `+0 at ${zero[1]}, the lane changes at ${stopCopy[1]}`);
  assertStringIncludes(detail, "time since the device left PRE_COPY");
  // The final state is named after the lane.
  assertMatch(svg, /class="final-state" data-final-state="STOP"/);
  assertEquals(xs(svg, `<g class="lane"`, /class="final-state"[^>]*><rect x="([\d.]+)"/g)[0] > 800, true);
});

Deno.test("picture: a listener's wait for its peer is a labelled band; a TCP load is live", async () => {
  const m = await model((p) => writeLoadEvents(p));
  const svg = renderSvg(m);
  assertMatch(svg, /data-phase="wait"[^>]*><title>waiting for a peer: 0(\.00)? ms – 500 ms<\/title>/);
  assertStringIncludes(svg, ">waiting for a peer</text>");
  assertStringIncludes(svg, "vfio-mig load (live): ");
});

Deno.test("picture: a file load of a live stream is not titled 'load (live)'; the stream's mode is said", async () => {
  const m = await model(
    (p) => writeLoadEvents(p),
    (t) =>
      t.split("\n").filter((l) => !/"type":"transport"/.test(l)).join("\n")
        .replace(`"target":"tcp listener 0.0.0.0:7707"`, `"target":"/srv/live.vfmig"`),
  );
  assertEquals([m.mode, m.streamMode], [null, "live"]);
  const svg = renderSvg(m);
  assert(!svg.includes("load (live)"), "not titled live");
  assertStringIncludes(svg, "vfio-mig load: ");
  assertEquals(summaryRows(m).find(([k]) => k === "command")?.[1], "load, from /srv/live.vfmig (a stream saved live)");
});

Deno.test("picture: an interrupted save's lane ends in the state its error gives", async () => {
  // A save interrupted in stop-copy, the device put back to RUNNING 1 ms before the error.
  const m = await model((p) => writeModelEvents(p, LIVE_TCP), (t) => {
    const lines = t.trim().split("\n").map((l) => JSON.parse(l));
    const cut = lines.findIndex((e) => e.type === "phase" && e.phase === "stop-copy" && e.edge === "start");
    const kept = lines.slice(0, cut + 3).filter((e) => e.type !== "result");
    const t0 = kept.at(-1).t;
    kept.push({
      v: 1,
      t: t0 + 1,
      type: "state",
      device: kept.find((e) => e.type === "state").device,
      index: 0,
      protocol: "v2",
      from: "STOP_COPY",
      to: "RUNNING",
      ms: 0.5,
    });
    kept.push({
      v: 1,
      t: t0 + 2,
      type: "error",
      exitCode: 130,
      kind: "interrupted",
      message: "save failed: interrupted by SIGINT; the device is RUNNING",
    });
    return kept.map((e) => JSON.stringify(e)).join("\n") + "\n";
  });
  const svg = renderSvg(m);
  assertMatch(svg, /class="final-state" data-final-state="RUNNING"/);
  assertEquals(summaryRows(m).find(([k]) => k === "final state")?.[1], "RUNNING (its last state event)");
});

Deno.test("picture: the events table wraps long details within the page", async () => {
  const m = await model((p) => writeModelEvents(p, LIVE_TCP));
  const html = renderHtml(m);
  assertMatch(html, /table \{[^}]*table-layout: fixed;[^}]*\}/);
  assertMatch(html, /td \{ overflow-wrap: anywhere; \}/);
  assertStringIncludes(html, `<colgroup><col class="t"><col class="type"><col class="device"><col></colgroup>`);
});
