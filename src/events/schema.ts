// The schema of `--events` (docs/events.md). Its one description is the JSON Schema file
// docs/schemas/events.schema.json (what an orchestrator in any language validates
// against); this module reads that file into the tables below (imported, so a compiled
// vfio-mig carries it, and no JSON-Schema library is needed at run time): validateEvent()
// checks events against them and schemaMarkdown() prints the tables docs/events.md embeds
// (a test keeps the two equal; tests also validate real events with Ajv against the file).
//
//   deno run src/events/schema.ts     prints the Markdown tables of the schema

import EVENTS_JSON_SCHEMA from "../../docs/schemas/events.schema.json" with { type: "json" };

type Kind = "string" | "number" | "integer" | "boolean" | "object" | "array";

export interface FieldSpec {
  kind: Kind;
  /** Always present (true), present when `edge` is "end" ("end"), or optional (false). */
  required: boolean | "end";
  /** null is allowed besides the kind. */
  nullable?: boolean;
  /** The only values a string may take. */
  values?: readonly string[];
  /** Smallest (and largest) value of a number. */
  min?: number;
  max?: number;
  /** Arrays: the shape of each element (an object). */
  items?: Record<string, FieldSpec>;
  /** Arrays: the fewest elements. */
  minItems?: number;
  doc: string;
}

export interface TypeSpec {
  /** Whether the event names a device (`device` and `index`). */
  device: "required" | "optional" | "none";
  doc: string;
  fields: Record<string, FieldSpec>;
}

/** The subset of JSON Schema the file uses (draft 2020-12). */
interface JsonSchema {
  description?: string;
  type?: string | string[];
  enum?: (string | null)[];
  const?: string;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  then?: { required?: string[] };
  $ref?: string;
  $defs?: Record<string, JsonSchema>;
  "x-version"?: number;
}

/** The JSON Schema of an events line, as published (docs/schemas/events.schema.json). */
export const EVENTS_SCHEMA = EVENTS_JSON_SCHEMA as unknown as JsonSchema;

function fieldOf(s: JsonSchema, required: boolean | "end"): FieldSpec {
  const types = Array.isArray(s.type) ? s.type : [s.type];
  const kind = types.find((t) => t !== "null") as Kind;
  const f: FieldSpec = { kind, required, doc: s.description ?? "" };
  if (types.includes("null")) f.nullable = true;
  if (s.enum) f.values = s.enum.filter((v): v is string => v !== null);
  if (s.minimum !== undefined) f.min = s.minimum;
  if (s.maximum !== undefined) f.max = s.maximum;
  if (s.minItems !== undefined) f.minItems = s.minItems;
  if (s.items?.properties) f.items = fieldsOf(s.items, []);
  return f;
}

function fieldsOf(s: JsonSchema, skip: string[]): Record<string, FieldSpec> {
  const out: Record<string, FieldSpec> = {};
  const atEnd = new Set(s.then?.required ?? []);
  for (const [k, p] of Object.entries(s.properties ?? {})) {
    if (skip.includes(k)) continue;
    out[k] = fieldOf(p, s.required?.includes(k) ? true : atEnd.has(k) ? "end" : false);
  }
  return out;
}

/** The `v` of every event. Raised when a field changes meaning or a required field is added. */
export const EVENTS_SCHEMA_VERSION: number = EVENTS_SCHEMA["x-version"]!;

/** Fields of every event. */
export const COMMON: Record<string, FieldSpec> = fieldsOf(EVENTS_SCHEMA, []);
delete COMMON.type.values; // an unknown type is its own problem (validateEvent)

export const SCHEMA: Record<string, TypeSpec> = Object.fromEntries(
  Object.entries(EVENTS_SCHEMA.$defs!).map(([type, d]) => [type, {
    device: d.required?.includes("device") ? "required" : d.properties?.device ? "optional" : "none",
    doc: d.description ?? "",
    fields: fieldsOf(d, Object.keys(COMMON)),
  }]),
);

function valuesOf(type: string, field: string): readonly string[] {
  return SCHEMA[type].fields[field].values!;
}

export const PHASES = valuesOf("phase", "phase");
export const PROGRESS_PHASES = valuesOf("progress", "phase");
export const SWITCH_REASONS = valuesOf("switchover", "reason");
export const TRANSPORT_STEPS = valuesOf("transport", "step");
export const ERROR_KINDS = valuesOf("error", "kind");

export type EventType = keyof typeof SCHEMA;
export const EVENT_TYPES = Object.keys(SCHEMA);

function kindOf(x: unknown): string {
  if (x === null) return "null";
  if (Array.isArray(x)) return "array";
  return typeof x;
}

/** The problem with one value against its spec, or null. */
function checkValue(name: string, x: unknown, f: FieldSpec): string | null {
  if (x === null) return f.nullable ? null : `${name} is null`;
  switch (f.kind) {
    case "string":
      if (typeof x !== "string") return `${name} should be a string, not ${kindOf(x)}`;
      if (f.values && !f.values.includes(x)) {
        return `${name} is ${JSON.stringify(x)}, not one of ${f.values.join(", ")}`;
      }
      return null;
    case "boolean":
      return typeof x === "boolean" ? null : `${name} should be a boolean, not ${kindOf(x)}`;
    case "number":
    case "integer":
      if (typeof x !== "number" || !Number.isFinite(x)) return `${name} should be a finite number, not ${kindOf(x)}`;
      if (f.kind === "integer" && !Number.isInteger(x)) return `${name} should be an integer, not ${x}`;
      if (f.min !== undefined && x < f.min) return `${name} is ${x}, below ${f.min}`;
      if (f.max !== undefined && x > f.max) return `${name} is ${x}, above ${f.max}`;
      return null;
    case "object":
      return typeof x === "object" && !Array.isArray(x) ? null : `${name} should be an object, not ${kindOf(x)}`;
    case "array": {
      if (!Array.isArray(x)) return `${name} should be an array, not ${kindOf(x)}`;
      if (f.minItems !== undefined && x.length < f.minItems) {
        return `${name} has ${x.length} elements, fewer than ${f.minItems}`;
      }
      if (f.items) {
        for (let i = 0; i < x.length; i++) {
          const why = checkObject(`${name}[${i}]`, x[i], f.items, null);
          if (why) return why;
        }
      }
      return null;
    }
  }
}

function checkObject(
  name: string,
  x: unknown,
  fields: Record<string, FieldSpec>,
  edge: unknown,
): string | null {
  if (typeof x !== "object" || x === null || Array.isArray(x)) return `${name} should be an object, not ${kindOf(x)}`;
  const o = x as Record<string, unknown>;
  for (const [k, f] of Object.entries(fields)) {
    const present = k in o && o[k] !== undefined;
    if (!present) {
      if (f.required === true || (f.required === "end" && edge === "end")) {
        return `${name === "" ? "" : `${name}.`}${k} is missing`;
      }
      continue;
    }
    if (f.required === "end" && edge !== "end") return `${k} belongs to edge "end" only`;
    const why = checkValue(name === "" ? k : `${name}.${k}`, o[k], f);
    if (why) return why;
  }
  for (const k of Object.keys(o)) {
    if (!(k in fields)) return `unknown field ${name === "" ? k : `${name}.${k}`}`;
  }
  return null;
}

/**
 * Checks one event (a parsed JSON value) against the schema. Returns null when it
 * conforms, else the first problem in one line ("iteration: devices[0].dirtyBytes is
 * missing"). Unknown fields are problems too: vfio-mig emits only what is documented.
 */
export function validateEvent(x: unknown): string | null {
  if (typeof x !== "object" || x === null || Array.isArray(x)) return `an event is an object, not ${kindOf(x)}`;
  const o = x as Record<string, unknown>;
  if (o.v !== undefined && typeof o.v === "number" && o.v > EVENTS_SCHEMA_VERSION) {
    return `schema version ${o.v} is newer than this vfio-mig reads (${EVENTS_SCHEMA_VERSION})`;
  }
  for (const k of ["v", "t", "type"]) {
    if (o[k] === undefined) return `${k} is missing`;
    const why = checkValue(k, o[k], COMMON[k]);
    if (why) return why;
  }
  const type = o.type as string;
  const spec = SCHEMA[type];
  if (!spec) return `unknown event type ${JSON.stringify(type)}`;
  const hasDevice = o.device !== undefined || o.index !== undefined;
  if (spec.device === "none" && hasDevice) return `${type}: names no device (device/index given)`;
  if (spec.device === "required" && !hasDevice) return `${type}: device and index are missing`;
  if (hasDevice) {
    if (o.device === undefined || o.index === undefined) return `${type}: device and index go together`;
    for (const k of ["device", "index"]) {
      const why = checkValue(k, o[k], COMMON[k]);
      if (why) return `${type}: ${why}`;
    }
  }
  const rest: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(o)) if (!(k in COMMON)) rest[k] = val;
  const why = checkObject("", rest, spec.fields, o.edge);
  return why ? `${type}: ${why}` : null;
}

/** A problem found in a sequence of events: which (1-based line) and what. */
export interface SequenceProblem {
  line: number;
  problem: string;
}

/**
 * Checks a whole events file (JSON lines): every line an event of the schema, and the
 * order rules of docs/events.md — `start` first and once, `t` never decreasing, `devices`
 * once and before any event that names a device, devices as it listed them, progress at most 10 a second (100 ms apart), iterations
 * numbered in order, nothing after `result` or `error`. An empty last line is allowed
 * (the file ends with a newline). Returns the first problem, or null.
 */
export function validateEventLines(text: string): SequenceProblem | null {
  const lines = text.split("\n");
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  const seq = new SequenceChecker();
  for (let i = 0; i < lines.length; i++) {
    let x: unknown;
    try {
      x = JSON.parse(lines[i]);
    } catch (e) {
      return { line: i + 1, problem: `not JSON: ${e instanceof Error ? e.message : e}` };
    }
    const why = validateEvent(x) ?? seq.next(x as Record<string, unknown>);
    if (why) return { line: i + 1, problem: why };
  }
  return seq.finish();
}

/** The order rules, event by event (validateEventLines and the report's reader share it). */
export class SequenceChecker {
  #count = 0;
  #lastT = 0;
  #lastProgress = -Infinity;
  #devices: string[] = [];
  #ended = false;
  #iteration = 0;
  #open = false;

  /** Checks the next (schema-valid) event; returns the problem or null. */
  next(e: Record<string, unknown>): string | null {
    this.#count++;
    const t = e.t as number;
    if (this.#count === 1 && e.type !== "start") return `the first event is ${e.type}, not start`;
    if (this.#count > 1 && e.type === "start") return "a second start event";
    if (this.#ended) return `${e.type} after the final result or error`;
    if (t < this.#lastT) return `t goes back from ${this.#lastT} to ${t}`;
    this.#lastT = t;
    switch (e.type) {
      case "devices":
        if (this.#devices.length) return "a second devices event";
        for (const [i, d] of (e.devices as { index: number }[]).entries()) {
          if (d.index !== i) return `devices: devices[${i}].index is ${d.index}, not ${i}`;
        }
        this.#devices = (e.devices as { index: number; device: string }[]).map((d) => d.device);
        break;
      case "progress":
        if (t - this.#lastProgress < 99.9) {
          return `progress ${
            Math.round((t - this.#lastProgress) * 1000) / 1000
          } ms after the last (at most 10 a second)`;
        }
        this.#lastProgress = t;
        break;
      case "iteration": {
        const n = e.n as number;
        if (e.edge === "start") {
          if (this.#open || n !== this.#iteration + 1) {
            return `iteration ${n} starts after iteration ${this.#iteration}`;
          }
          this.#open = true;
          this.#iteration = n;
        } else {
          if (!this.#open || n !== this.#iteration) return `iteration ${n} ends but iteration ${this.#iteration} ran`;
          this.#open = false;
        }
        break;
      }
      case "result":
      case "error":
        this.#ended = true;
        break;
    }
    if (e.device !== undefined) {
      const i = e.index as number;
      if (this.#devices.length === 0) return `${e.type} names a device before the devices event`;
      if (i >= this.#devices.length) {
        return `${e.type}: device index ${i}, but the devices event lists ${this.#devices.length}`;
      }
      if (this.#devices[i] !== e.device) {
        return `${e.type}: device ${i} is ${JSON.stringify(e.device)}, the devices event says ${
          JSON.stringify(this.#devices[i])
        }`;
      }
    }
    return null;
  }

  /** After the last event: an empty file is a problem (a file without result/error is not: the run was killed). */
  finish(): SequenceProblem | null {
    return this.#count === 0 ? { line: 0, problem: "no events (an events file starts with a start event)" } : null;
  }
}

// ---------------------------------------------------------------------------
// Markdown, for docs/events.md

function kindText(f: FieldSpec): string {
  let k: string = f.kind;
  if (f.kind === "array" && f.items) k = "array of objects";
  if (f.values) k = f.values.map((v) => `"${v}"`).join(" \\| ");
  if (f.nullable) k += " \\| null";
  return k;
}

function requiredText(f: FieldSpec): string {
  return f.required === true ? "yes" : f.required === "end" ? "at end" : "no";
}

function fieldRows(fields: Record<string, FieldSpec>, prefix = ""): string[] {
  const rows: string[] = [];
  for (const [k, f] of Object.entries(fields)) {
    rows.push(`| \`${prefix}${k}\` | ${kindText(f)} | ${requiredText(f)} | ${f.doc} |`);
    if (f.items) rows.push(...fieldRows(f.items, `${prefix}${k}[].`));
  }
  return rows;
}

/** The schema as Markdown: the common fields, then one section per type (docs/events.md embeds it). */
export function schemaMarkdown(): string {
  const head = "| field | type | required | meaning |\n| --- | --- | --- | --- |";
  const out = [
    "<!-- generated by `deno run src/events/schema.ts` from docs/schemas/events.schema.json: edit that file, not this part -->",
    "",
    `### Every event (schema version ${EVENTS_SCHEMA_VERSION})`,
    "",
    head,
    ...fieldRows(COMMON),
  ];
  for (const [type, spec] of Object.entries(SCHEMA)) {
    const dev = spec.device === "required"
      ? " Names its device."
      : spec.device === "optional"
      ? " May name a device."
      : "";
    out.push("", `### \`${type}\``, "", `${spec.doc}${dev}`, "", head, ...fieldRows(spec.fields));
  }
  out.push("", "<!-- end of generated part -->");
  return out.join("\n") + "\n";
}

if (import.meta.main) {
  console.log(schemaMarkdown().trimEnd());
}
