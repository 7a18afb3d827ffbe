// The events schema (src/events/schema.ts): every event type the emitter makes conforms
// to it, the validator rejects what does not, the order rules hold, and docs/events.md
// embeds the schema as the code has it.

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { type DeviceRef, Events, type MigrationEvent } from "../../src/events/events.ts";
import {
  EVENT_TYPES,
  EVENTS_SCHEMA_VERSION,
  SCHEMA,
  schemaMarkdown,
  validateEvent,
  validateEventLines,
} from "../../src/events/schema.ts";
import { InterruptedError, VfioMigError } from "../../src/errors.ts";

const A: DeviceRef = { index: 0, label: "sim:/tmp/a" };
const B: DeviceRef = { index: 1, label: "0000:3b:00.1" };

/** An emitter on a fake clock (1 ms per reading) with a subscriber that keeps every event. */
function collect(): { ev: Events; got: MigrationEvent[]; tick: (ms: number) => void } {
  let clock = 500;
  const got: MigrationEvent[] = [];
  const ev = new Events({ now: () => clock, wallClock: new Date("2026-01-02T03:04:05.000Z") });
  ev.on({ event: (e) => got.push(structuredClone(e)) });
  return { ev, got, tick: (ms) => clock += ms };
}

function valid(e: MigrationEvent): void {
  const why = validateEvent(JSON.parse(JSON.stringify(e)));
  assertEquals(why, null, `${JSON.stringify(e)}: ${why}`);
}

Deno.test("events: every emitter method makes an event of its schema type, and each type is made", () => {
  const { ev, got, tick } = collect();
  ev.start({ command: "save", mode: "live", target: "tcp://10.0.0.2:7707" });
  ev.transport("connected", { peer: "10.0.0.2:7707", tls: true });
  ev.transport("authenticated", { peer: "10.0.0.2:7707" });
  ev.devices([A, B]);
  ev.header({
    mode: "live",
    protocol: "v2",
    devices: [
      { index: 0, source: A.label, protocol: "v2", sizeEstimate: 1 << 20 },
      { index: 1, source: B.label, protocol: "v1", sizeEstimate: null },
    ],
  });
  ev.phase("setup", "start");
  tick(1);
  ev.stateChange(A, "v2", "RUNNING", "PRE_COPY", 0.25);
  ev.stateChange(B, "v1", "running (001b)", "pre-copy (011b)", 0.5, { bits: { from: 1, to: 3 } });
  ev.phase("setup", "end", { ms: 1.5 });
  ev.phase("pre-copy", "start");
  ev.iterationStart(1);
  tick(100);
  ev.progress("pre-copy", 4 << 20);
  ev.iterationEnd({
    n: 1,
    ms: 100,
    bytes: 4 << 20,
    totalBytes: 4 << 20,
    devices: [
      { device: A, bytes: 3 << 20, initialBytes: 0, dirtyBytes: 4096, reinit: true },
      { device: B, bytes: 1 << 20, initialBytes: 0, dirtyBytes: 8192 },
    ],
    estimate: 12288,
    threshold: Infinity, // no bandwidth yet: null in the event
    bandwidth: null,
    backlog: 0,
  });
  ev.transport("init-ack", { acks: 1 });
  ev.switchover({
    reason: "converged",
    iterations: 1,
    estimate: 12288,
    exact: 12288,
    threshold: 1e6,
    downtimeLimitMs: 300,
    bandwidth: 4e7,
    precopyMs: 101,
  });
  ev.phase("pre-copy", "end", { bytes: 4 << 20, ms: 101 });
  ev.stateChange(A, "v2", "PRE_COPY", "STOP_COPY", 0.3);
  ev.phase("stop-copy", "start");
  ev.phase("stop-copy", "end", { device: A, bytes: 4096, ms: 0.2 });
  ev.phase("stop-copy", "end", { bytes: 12288, ms: 0.4 });
  ev.phase("config", "start");
  ev.phase("config", "end", { bytes: 256 });
  ev.phase("trailer", "start");
  ev.phase("trailer", "end");
  ev.note("the v1 data section cannot be mapped: slow path", "warning", B);
  ev.stateChange(B, "v1", null, "RUNNING", 2.5, { reset: true });
  ev.phase("finish", "start");
  ev.transport("peer-result", { ok: true, message: "B is RUNNING", finalState: "RUNNING" });
  ev.phase("finish", "end", { ms: 1 });
  ev.result({ command: "save", bytes: (4 << 20) + 12288 });
  ev.close();

  for (const e of got) valid(e);
  const types = new Set(got.map((e) => e.type));
  for (const t of EVENT_TYPES.filter((t) => t !== "error")) assert(types.has(t), `type ${t} was emitted`);
  // The text as a file passes the order rules too.
  assertEquals(validateEventLines(got.map((e) => JSON.stringify(e)).join("\n") + "\n"), null);

  const start = got[0];
  assertEquals([start.v, start.t, start.type, start.epochMs], [EVENTS_SCHEMA_VERSION, 0, "start", 1767323045000]);
  assertEquals(start.wallClock, "2026-01-02T03:04:05.000Z");
  assertEquals(got.find((e) => e.type === "devices")!.devices, [
    { index: 0, device: A.label },
    { index: 1, device: B.label },
  ]);
  const v1 = got.find((e) => e.type === "state" && e.protocol === "v1")!;
  assertEquals([v1.device, v1.index, v1.from, v1.to, v1.fromBits, v1.toBits], [
    B.label,
    1,
    "running (001b)",
    "pre-copy (011b)",
    1,
    3,
  ]);
  const end = got.find((e) => e.type === "iteration" && e.edge === "end")!;
  assertEquals([end.threshold, end.bandwidth], [null, null], "non-finite numbers become null");
  assertEquals((end.devices as { reinit?: boolean }[]).map((d) => d.reinit), [true, undefined]);
  assertEquals(got.find((e) => e.type === "header")!.sizeEstimate, null, "one unknown estimate: the sum is unknown");
  const reset = got.find((e) => e.reset === true)!;
  assertEquals([reset.from, reset.to], [null, "RUNNING"]);
});

Deno.test("events: the error event carries the CLI's exit code, kind and one line", () => {
  const cases: [unknown, number, string, RegExp][] = [
    [new VfioMigError("save from A failed: EIO; A is RUNNING"), 1, "failure", /^save from A failed/],
    [new VfioMigError("bad", "usage"), 2, "usage", /^bad$/],
    [new VfioMigError("no such device", "device"), 3, "device", /^no such/],
    [new VfioMigError("damaged", "stream"), 4, "stream", /^damaged$/],
    [new InterruptedError("SIGTERM"), 130, "interrupted", /^interrupted by SIGTERM$/],
    [new SysError("read", Errno.EIO), 1, "failure", /^read: EIO/],
    [new TypeError("x is undefined\nat line 2"), 1, "internal", /^internal error: x is undefined\\x0aat line 2$/],
  ];
  for (const [err, code, kind, msg] of cases) {
    const { ev, got } = collect();
    ev.start({ command: "load" });
    ev.error(err);
    ev.error(new Error("a second end is ignored"));
    ev.result({});
    assertEquals(got.length, 2, `${err}: one final event`);
    const e = got[1];
    valid(e);
    assertEquals([e.type, e.exitCode, e.kind], ["error", code, kind], String(err));
    assertMatch(e.message as string, msg);
  }
});

/** A valid event of each kind, to break in the cases below. */
const GOOD: Record<string, Record<string, unknown>> = {
  state: { v: 1, t: 5, type: "state", device: "a", index: 0, protocol: "v2", from: "RUNNING", to: "STOP", ms: 0.1 },
  iterationEnd: {
    v: 1,
    t: 9,
    type: "iteration",
    edge: "end",
    n: 2,
    ms: 100,
    bytes: 10,
    totalBytes: 20,
    devices: [{ index: 0, device: "a", bytes: 10, initialBytes: 0, dirtyBytes: 5 }],
    estimate: 5,
    threshold: null,
    bandwidth: null,
  },
  progress: { v: 1, t: 3, type: "progress", phase: "stop-copy", bytes: 5, rate: 100, total: null },
};

Deno.test("events: the validator rejects malformed events, saying what is wrong", () => {
  for (const e of Object.values(GOOD)) assertEquals(validateEvent(e), null, JSON.stringify(e));
  const bad: [string, unknown, RegExp][] = [
    ["not an object", [1, 2], /an event is an object, not array/],
    ["null", null, /not null/],
    ["no version", { ...GOOD.state, v: undefined }, /^v is missing/],
    ["an older version", { ...GOOD.state, v: 0 }, /v is 0, below 1/],
    ["a newer version", { ...GOOD.state, v: 2 }, /schema version 2 is newer than this vfio-mig reads \(1\)/],
    ["a string version", { ...GOOD.state, v: "1" }, /v should be a finite number, not string/],
    ["no time", { ...GOOD.state, t: undefined }, /^t is missing/],
    ["negative time", { ...GOOD.state, t: -1 }, /t is -1, below 0/],
    ["unknown type", { ...GOOD.state, type: "bogus" }, /unknown event type "bogus"/],
    ["unknown field", { ...GOOD.state, colour: "red" }, /state: unknown field colour/],
    ["state without device", { ...GOOD.state, device: undefined, index: undefined }, /device and index are missing/],
    ["device without index", { ...GOOD.state, index: undefined }, /device and index go together/],
    ["fractional index", { ...GOOD.state, index: 0.5 }, /index should be an integer/],
    ["missing to", { ...GOOD.state, to: undefined }, /state: to is missing/],
    ["wrong protocol", { ...GOOD.state, protocol: "v3" }, /protocol is "v3", not one of v1, v2/],
    ["negative ms", { ...GOOD.state, ms: -0.5 }, /ms is -0.5, below 0/],
    ["null to", { ...GOOD.state, to: null }, /to is null/],
    ["a device on a switchover", {
      v: 1,
      t: 1,
      type: "switchover",
      device: "a",
      index: 0,
    }, /switchover: names no device/],
    ["iteration end without devices", { ...GOOD.iterationEnd, devices: undefined }, /iteration: devices is missing/],
    ["iteration end with no device", { ...GOOD.iterationEnd, devices: [] }, /devices has 0 elements, fewer than 1/],
    ["a device entry without dirtyBytes", {
      ...GOOD.iterationEnd,
      devices: [{ index: 0, device: "a", bytes: 1, initialBytes: 0 }],
    }, /iteration: devices\[0\]\.dirtyBytes is missing/],
    ["a fractional byte count", { ...GOOD.iterationEnd, bytes: 1.5 }, /bytes should be an integer, not 1.5/],
    [
      "end fields on a start",
      { v: 1, t: 1, type: "iteration", edge: "start", n: 1, bytes: 3 },
      /bytes belongs to edge "end" only/,
    ],
    ["iteration 0", { v: 1, t: 1, type: "iteration", edge: "start", n: 0 }, /n is 0, below 1/],
    ["progress of an unknown phase", { ...GOOD.progress, phase: "warp" }, /phase is "warp"/],
    ["progress without total", { ...GOOD.progress, total: undefined }, /progress: total is missing/],
    ["a result with exit code 1", { v: 1, t: 1, type: "result", exitCode: 1, summary: {} }, /exitCode is 1, above 0/],
    [
      "a result whose summary is an array",
      { v: 1, t: 1, type: "result", exitCode: 0, summary: [] },
      /summary should be an object, not array/,
    ],
    ["an error with exit code 0", {
      v: 1,
      t: 1,
      type: "error",
      exitCode: 0,
      kind: "failure",
      message: "x",
    }, /exitCode is 0, below 1/],
  ];
  for (const [what, e, re] of bad) {
    const why = validateEvent(e);
    assert(why !== null, `${what}: accepted`);
    assertMatch(why, re, what);
  }
});

Deno.test("events: the order rules of an events file", () => {
  const start = { v: 1, t: 0, type: "start", wallClock: "x", epochMs: 1, command: "save", tool: "t", pid: 1 };
  const devs = { v: 1, t: 0, type: "devices", devices: [{ index: 0, device: "a" }] };
  const lines = (...es: unknown[]) => es.map((e) => JSON.stringify(e)).join("\n") + "\n";
  const p = (t: number) => ({ ...GOOD.progress, t });
  const ok = lines(start, devs, p(1), p(101), { ...GOOD.state, t: 101 }, {
    v: 1,
    t: 102,
    type: "result",
    exitCode: 0,
    summary: {},
  });
  assertEquals(validateEventLines(ok), null);
  // A file without a final event (a killed run) is valid as far as it goes.
  assertEquals(validateEventLines(lines(start, p(1))), null);
  const bad: [string, string, number, RegExp][] = [
    ["empty", "", 0, /no events/],
    ["not JSON", lines(start) + "{oops\n", 2, /not JSON/],
    ["a blank line", lines(start) + "\n" + lines(p(1)), 2, /not JSON/],
    ["no start", lines(p(1)), 1, /the first event is progress, not start/],
    ["two starts", lines(start, start), 2, /a second start/],
    ["time going back", lines(start, p(200), p(100)), 3, /t goes back from 200 to 100/],
    ["progress too often", lines(start, p(1), p(50)), 3, /progress 49 ms after the last \(at most 10 a second\)/],
    [
      "after the result",
      lines(start, { v: 1, t: 1, type: "result", exitCode: 0, summary: {} }, p(2)),
      3,
      /progress after the final/,
    ],
    ["a device before devices", lines(start, GOOD.state), 2, /state names a device before the devices event/],
    ["two devices events", lines(start, devs, devs), 3, /a second devices event/],
    ["an unknown device", lines(start, devs, { ...GOOD.state, index: 1 }), 3, /index 1, but the devices event lists 1/],
    [
      "another label",
      lines(start, devs, { ...GOOD.state, device: "b" }),
      3,
      /device 0 is "b", the devices event says "a"/,
    ],
    [
      "iterations out of order",
      lines(start, { v: 1, t: 1, type: "iteration", edge: "start", n: 2 }),
      2,
      /iteration 2 starts after iteration 0/,
    ],
    [
      "an end without its start",
      lines(start, { ...GOOD.iterationEnd, n: 1 }),
      2,
      /iteration 1 ends but iteration 0 ran/,
    ],
    [
      "devices out of order",
      lines(start, { ...devs, devices: [{ index: 1, device: "a" }] }),
      2,
      /devices\[0\]\.index is 1/,
    ],
    ["a schema problem", lines(start, devs, { ...GOOD.state, ms: "fast" }), 3, /ms should be a finite number/],
  ];
  for (const [what, text, line, re] of bad) {
    const r = validateEventLines(text);
    assert(r !== null, `${what}: accepted`);
    assertEquals(r.line, line, `${what}: line`);
    assertMatch(r.problem, re, what);
  }
});

/** Markdown as deno fmt may lay it out: table padding and line wrapping removed. */
function normalize(md: string): string {
  return md.replace(/\s*\|\s*/g, "|").replace(/\|:?-{3,}:?/g, "|---").replace(/\s+/g, " ").trim();
}

Deno.test("events: docs/events.md embeds the schema as src/events/schema.ts has it", async () => {
  const doc = await Deno.readTextFile(new URL("../../docs/events.md", import.meta.url));
  const generated = schemaMarkdown();
  assert(
    normalize(doc).includes(normalize(generated)),
    "docs/events.md differs from the schema: run `deno run src/events/schema.ts` and paste its output between the " +
      "generated-part markers (then deno fmt)",
  );
  for (const t of Object.keys(SCHEMA)) assert(doc.includes(`### \`${t}\``), `docs/events.md has a section for ${t}`);
  assert(doc.includes(`"v": ${EVENTS_SCHEMA_VERSION}`), "docs/events.md shows the version field in an example");
});
