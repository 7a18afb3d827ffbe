// The JSON Schema files of docs/schemas/ are the one description of every machine
// interface: Ajv (a well-kept JSON Schema validator from npm, mapped in deno.json; tests
// only — the tool itself carries no npm code, a guest without network runs it) compiles each and validates real outputs of every command and
// real events files against them; vfio-mig's own run-time events validator (read from
// the same file) agrees with Ajv; the docs tables are generated from them and current.

import { Ajv2020 } from "ajv/dist/2020.js";
import formats from "ajv-formats";
import { assert, assertEquals } from "../helpers/assert.ts";
import { EVENTS_SCHEMA, schemaMarkdown, validateEvent } from "../../src/events/schema.ts";
import { COMMANDS, schemaDocs } from "../../scripts/schema_docs.ts";
import { cli, ok, simCreate, withTemp } from "../helpers/proc.ts";

const DIR = new URL("../../docs/schemas/", import.meta.url);

function ajv() {
  // strict: unknown keywords and loose types are errors (x-version is declared); required
  // fields named in if/then/else (an iteration's end-only fields) need not repeat their properties.
  const a = new Ajv2020({ strict: true, strictRequired: false, allErrors: true, allowUnionTypes: true });
  formats.default(a); // (a CommonJS module: its default export is under .default)
  a.addKeyword("x-version");
  return a;
}

const A = ajv();
const schemas = Object.fromEntries(
  [...COMMANDS, "events"].map((c) => [c, JSON.parse(Deno.readTextFileSync(new URL(`${c}.schema.json`, DIR)))]),
);
for (const s of Object.values(schemas)) A.addSchema(s);
const validators = Object.fromEntries(Object.entries(schemas).map(([c, s]) => [c, A.getSchema(s.$id)!]));

function conforms(kind: string, value: unknown, what: string): void {
  const v = validators[kind];
  const good = v(value);
  assert(good, `${what} against ${kind}.schema.json: ${JSON.stringify(v.errors?.slice(0, 3), null, 1)}`);
}

Deno.test("schemas: every file compiles (strict) and the events validator reads the published one", () => {
  assertEquals(Object.keys(validators).sort(), [
    "check",
    "events",
    "failure",
    "info",
    "inspect",
    "list",
    "load",
    "save",
    "verify",
  ]);
  assertEquals(EVENTS_SCHEMA, schemas.events, "src/events/schema.ts reads docs/schemas/events.schema.json");
});

Deno.test("schemas: docs/json-output.md and docs/events.md are generated from the files and current", async () => {
  const norm = (s: string) => s.replace(/[ \t]+/g, " ").replace(/\| ?-+ ?/g, "|-").trim();
  const cells = (s: string) => norm(s).split("\n").map((l) => l.trim()).filter((l) => l);
  const doc = await Deno.readTextFile(new URL("../../docs/json-output.md", import.meta.url));
  assertEquals(
    cells(doc).filter((l) => l.startsWith("|")),
    cells(schemaDocs()).filter((l) => l.startsWith("|")),
    "docs/json-output.md is current (deno run --allow-read --allow-write scripts/schema_docs.ts; deno fmt)",
  );
  const events = await Deno.readTextFile(new URL("../../docs/events.md", import.meta.url));
  for (const row of cells(schemaMarkdown()).filter((l) => l.startsWith("|"))) {
    assert(cells(events).includes(row), `docs/events.md has ${row}`);
  }
});

Deno.test("schemas: real outputs of save, load, info, list, check, inspect, verify, a failure and real events conform", async () => {
  await withTemp(async (t) => {
    await simCreate(`${t}/a`, "--model", "mtty-2");
    await simCreate(`${t}/b`, "--model", "mtty-2");
    await simCreate(`${t}/c`, "--model", "bulk", "--size", "2M", "--rate", "1M");
    await simCreate(`${t}/d`, "--model", "bulk", "--size", "2M");
    await simCreate(`${t}/v1`, "--model", "mtty-2", "--protocol", "v1");
    const json = async (args: string[], stream: "stdout" | "stderr" = "stdout") => {
      const r = await ok(args);
      return JSON.parse(r[stream]);
    };
    const out: [string, unknown, string][] = [];
    out.push([
      "save",
      await json(["save", "--json", "--events", `${t}/s.jsonl`, "-d", `sim:${t}/a`, `${t}/s.bin`]),
      "save",
    ]);
    out.push([
      "save",
      await json(["save", "--json", "--live", "--events", `${t}/l.jsonl`, "-d", `sim:${t}/c`, `${t}/l.bin`]),
      "save --live",
    ]);
    await ok(["state", "-d", `sim:${t}/a`, "RUNNING"]);
    await ok(["state", "-d", `sim:${t}/c`, "RUNNING"]);
    out.push(["save", await json(["save", "--json", "-d", `sim:${t}/a`, "-d", `sim:${t}/c`, `${t}/m.bin`]), "save 2"]);
    out.push(["save", await json(["save", "--json", "-d", `sim:${t}/v1`, "--resume", "-"], "stderr"), "save v1 -"]);
    out.push([
      "load",
      await json(["load", "--json", "--events", `${t}/r.jsonl`, "-d", `sim:${t}/b`, `${t}/s.bin`]),
      "load",
    ]);
    out.push(["load", await json(["load", "--json", "-d", `sim:${t}/b`, "-d", `sim:${t}/d`, `${t}/m.bin`]), "load 2"]);
    out.push(["info", await json(["info", "--json", "-d", `sim:${t}/a`]), "info"]);
    out.push(["info", await json(["info", "--json", "-d", `sim:${t}/v1`]), "info v1"]);
    out.push(["list", await json(["list", "--json", "--include-sim", t]), "list"]);
    out.push(["list", await json(["list", "--json", "--no-open", "--include-sim", t]), "list --no-open"]);
    out.push(["check", await json(["check", "--json", "-d", `sim:${t}/b`]), "check"]);
    out.push(["inspect", await json(["inspect", "--json", `${t}/s.bin`]), "inspect"]);
    out.push(["inspect", await json(["inspect", "--json", "--dump", `${t}/m.bin`]), "inspect 2 devices"]);
    const bytes = await Deno.readFile(`${t}/s.bin`);
    await Deno.writeFile(`${t}/cut.bin`, bytes.subarray(0, 300));
    const bad = await cli(["inspect", "--json", `${t}/cut.bin`]);
    assertEquals(bad.code, 4);
    out.push(["inspect", JSON.parse(bad.stdout), "inspect of a damaged stream"]);
    out.push(["verify", await json(["verify", "--json", `${t}/m.bin`]), "verify"]);
    const damaged = await cli(["verify", "--json", `${t}/cut.bin`]);
    assertEquals(damaged.code, 4);
    const dv = JSON.parse(damaged.stdout);
    assertEquals(dv.ok, false);
    out.push(["verify", dv, "verify of a damaged stream"]);
    // --json on failure: one failure object where the summary would have gone.
    const refused = await cli(["load", "--json", "-d", `sim:${t}/b`, `${t}/cut.bin`]);
    assertEquals(refused.code, 4);
    const fl = JSON.parse(refused.stdout);
    assertEquals([fl.status, fl.kind, fl.devices.length], ["failed", "stream", 1]);
    out.push(["failure", fl, "load of a damaged stream"]);
    const usage = await cli(["save", "--json", "-d", `sim:${t}/a`, "--downtime-limit", "1s", "-"]);
    assertEquals(usage.code, 2);
    // On stderr (stdout carries the stream): the object, then the error line.
    const obj = usage.stderr.slice(usage.stderr.indexOf("{\n"), usage.stderr.lastIndexOf("\n}") + 2);
    out.push(["failure", JSON.parse(obj), "save usage error (--json to stderr)"]);
    for (const [kind, value, what] of out) conforms(kind, value, what);
    // Events: every line conforms, Ajv and vfio-mig's validator agree; a result's summary is the --json output.
    let lines = 0;
    for (const f of ["s", "l", "r"]) {
      for (const line of (await Deno.readTextFile(`${t}/${f}.jsonl`)).trim().split("\n")) {
        const e = JSON.parse(line);
        conforms("events", e, `${f}.jsonl: ${line.slice(0, 80)}`);
        assertEquals(validateEvent(e), null, line);
        if (e.type === "result") conforms(e.summary.command, e.summary, `${f}.jsonl result summary`);
        lines++;
      }
    }
    assert(lines > 30, `${lines} events checked`);
  });
});

Deno.test("schemas: what vfio-mig's events validator refuses, Ajv refuses too (the same file)", () => {
  const start = {
    v: 1,
    t: 0,
    type: "start",
    wallClock: "2026-01-02T03:04:05.000Z",
    epochMs: 1,
    command: "save",
    tool: "vfio-mig 0.1.0",
    pid: 7,
  };
  const phaseEnd = { v: 1, t: 5, type: "phase", phase: "setup", edge: "end", ms: 1 };
  const iterEnd = { v: 1, t: 6, type: "iteration", edge: "start", n: 1 };
  const good = [start, phaseEnd, iterEnd, { ...phaseEnd, device: "sim:/a", index: 0 }];
  const bad = [
    { ...start, command: "copy" },
    { ...start, pid: 0 },
    { ...start, extra: 1 },
    { ...phaseEnd, phase: "warmup" },
    { ...phaseEnd, device: "sim:/a" }, // device without index
    { ...iterEnd, ms: 3 }, // an end-only field at start
    { ...iterEnd, edge: "end" }, // end without its fields
    { v: 1, t: 1, type: "state", protocol: "v2", from: null, to: "STOP", ms: 1 }, // no device
    { v: 2, t: 0, type: "note", level: "note", message: "x" },
    { v: 1, t: -1, type: "note", level: "note", message: "x" },
    { v: 1, t: 0, type: "nosuch" },
  ];
  for (const e of good) {
    assertEquals(validateEvent(e), null, JSON.stringify(e));
    assert(validators.events(e), `Ajv takes ${JSON.stringify(e)}: ${JSON.stringify(validators.events.errors)}`);
  }
  for (const e of bad) {
    assert(validateEvent(e) !== null, `vfio-mig refuses ${JSON.stringify(e)}`);
    assert(!validators.events(e), `Ajv refuses ${JSON.stringify(e)}`);
  }
});
