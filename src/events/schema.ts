// The schema of `--events` (docs/events.md): every event type and its fields, as data.
// It is the one description: validateEvent() checks events against it, and
// schemaMarkdown() prints the tables docs/events.md embeds (a test keeps the two equal).
// Hand-written checks, no JSON-Schema library: the shapes are flat and few.
//
//   deno run src/events/schema.ts     prints the Markdown tables of the schema

/** The `v` of every event. Raised when a field changes meaning or a required field is added. */
export const EVENTS_SCHEMA_VERSION = 1;

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

const req = (kind: Kind, doc: string, more: Partial<FieldSpec> = {}): FieldSpec => ({
  kind,
  required: true,
  doc,
  ...more,
});
const opt = (kind: Kind, doc: string, more: Partial<FieldSpec> = {}): FieldSpec => ({
  kind,
  required: false,
  doc,
  ...more,
});
const atEnd = (kind: Kind, doc: string, more: Partial<FieldSpec> = {}): FieldSpec => ({
  kind,
  required: "end",
  doc,
  ...more,
});

/** Bytes: a non-negative integer. */
const BYTES = { min: 0 } as const;

export const PHASES = ["setup", "pre-copy", "stop-copy", "config", "trailer", "resume", "finish"] as const;
export const PROGRESS_PHASES = ["setup", "pre-copy", "stop-copy", "resume", "finish"] as const;
export const SWITCH_REASONS = ["converged", "max-precopy", "requested"] as const;
export const TRANSPORT_STEPS = [
  "listening",
  "connected",
  "authenticated",
  "refused",
  "dropped",
  "init-ack",
  "peer-result",
] as const;
export const ERROR_KINDS = ["failure", "usage", "device", "stream", "interrupted", "internal"] as const;

/** Fields of every event. */
export const COMMON: Record<string, FieldSpec> = {
  v: req("integer", `schema version: ${EVENTS_SCHEMA_VERSION}`, {
    min: EVENTS_SCHEMA_VERSION,
    max: EVENTS_SCHEMA_VERSION,
  }),
  t: req("number", "ms since the run started (monotonic: performance.now()), never decreasing", { min: 0 }),
  type: req("string", "the event type (below)"),
  device: opt("string", "the device's label (`sim:/tmp/a`, `0000:3b:00.1`), where one applies"),
  index: opt("integer", "the device's index in the stream (0 for a single device); present with `device`", {
    min: 0,
  }),
};

const DEVICE_ENTRY: Record<string, FieldSpec> = {
  index: req("integer", "index in the stream", { min: 0 }),
  device: req("string", "label"),
};

export const SCHEMA: Record<string, TypeSpec> = {
  start: {
    device: "none",
    doc: "The first event, once: what runs, where to, and the wall-clock time of t = 0.",
    fields: {
      wallClock: req("string", "wall-clock time at t = 0, ISO 8601 UTC"),
      epochMs: req("number", "the same as ms since 1970-01-01 UTC", { min: 0 }),
      command: req("string", "`save` or `load`", { values: ["save", "load"] }),
      tool: req("string", "`vfio-mig VERSION`"),
      pid: req("integer", "process id", { min: 1 }),
      mode: opt("string", "`offline` or `live` (a load learns it from the stream: `header`)", {
        values: ["offline", "live"],
      }),
      target: opt(
        "string",
        "where the stream goes (save) or comes from (load): a file, `-`, `tcp://HOST:PORT`, " +
          "`tcp listener ADDR`",
      ),
    },
  },
  devices: {
    device: "none",
    doc: "The devices, once, when they are open and their order in the stream is known (a load: after the " +
      "header), before any event that names one. A save connects to a `tcp://` destination before it opens " +
      "its devices, so transport events may come first.",
    fields: {
      devices: req("array", "`{index, device}` in stream order: the labels the other events use", {
        items: DEVICE_ENTRY,
        minItems: 1,
      }),
    },
  },
  header: {
    device: "none",
    doc: "The stream header, as written (save) or read and checked (load).",
    fields: {
      mode: req("string", "`offline` or `live`", { values: ["offline", "live"] }),
      protocol: req("string", "`v1` or `v2` (the first device's)", { values: ["v1", "v2"] }),
      sizeEstimate: req("number", "MIG_DATA_SIZE at setup, summed over the devices, bytes (null: unknown)", {
        nullable: true,
        ...BYTES,
      }),
      devices: req("array", "`{index, source, protocol, sizeEstimate}`: `source` is the saved device's label", {
        minItems: 1,
        items: {
          index: req("integer", "index in the stream", { min: 0 }),
          source: req("string", "the source device's label"),
          protocol: req("string", "`v1` or `v2`", { values: ["v1", "v2"] }),
          sizeEstimate: req("number", "bytes, or null", { nullable: true, ...BYTES }),
        },
      }),
    },
  },
  state: {
    device: "required",
    doc: "A device state change: one SET of MIG_DEVICE_STATE (v2), one write of device_state (v1), " +
      "or a VFIO_DEVICE_RESET.",
    fields: {
      protocol: req("string", "`v1` or `v2`", { values: ["v1", "v2"] }),
      from: req("string", "the state before (v2: `RUNNING`…; v1: `running (001b)`…), null when unknown", {
        nullable: true,
      }),
      to: req("string", "the state asked for (and reached unless `error`)"),
      ms: req("number", "how long the SET (or reset) took, ms", { min: 0 }),
      fromBits: opt("integer", "v1: device_state bits before", { min: 0 }),
      toBits: opt("integer", "v1: device_state bits written", { min: 0 }),
      reset: opt("boolean", "true: a VFIO_DEVICE_RESET (the device is then RUNNING), not a SET"),
      error: opt("string", "the SET failed: the errno name or message; the device may be elsewhere"),
    },
  },
  phase: {
    device: "optional",
    doc: "A phase starts or ends (for all devices, or one: `device`). Save: setup, pre-copy, stop-copy, " +
      "config, trailer, finish. Load: setup (header checked), resume (RESUMING: device data), config, " +
      "trailer, finish.",
    fields: {
      phase: req("string", PHASES.map((p) => `\`${p}\``).join(", "), { values: PHASES }),
      edge: req("string", "`start` or `end`", { values: ["start", "end"] }),
      bytes: opt("integer", "at `end`: device data bytes moved in the phase", BYTES),
      ms: opt("number", "at `end`: how long the phase took, ms", { min: 0 }),
    },
  },
  iteration: {
    device: "none",
    doc: "A pre-copy iteration starts (`edge: start`, `n`) or ends (every field): what it moved and what " +
      "each device's PRECOPY_INFO then said, and what the switchover policy judged.",
    fields: {
      edge: req("string", "`start` or `end`", { values: ["start", "end"] }),
      n: req("integer", "iteration number, from 1", { min: 1 }),
      ms: atEnd("number", "how long the iteration took, ms", { min: 0 }),
      bytes: atEnd("integer", "device data bytes it moved, all devices", BYTES),
      totalBytes: atEnd("integer", "device data bytes moved since the start, all devices", BYTES),
      devices: atEnd("array", "per device: `{index, device, bytes, initialBytes, dirtyBytes, reinit}`", {
        minItems: 1,
        items: {
          ...DEVICE_ENTRY,
          bytes: req("integer", "bytes read from this device in the iteration", BYTES),
          initialBytes: req("integer", "PRECOPY_INFO initial_bytes after it (v1: 0)", BYTES),
          dirtyBytes: req("integer", "PRECOPY_INFO dirty_bytes after it (v1: pending_bytes)", BYTES),
          reinit: opt("boolean", "VFIO_PRECOPY_INFO_REINIT was reported (Linux 7.1)"),
        },
      }),
      estimate: atEnd(
        "number",
        "what stop-copy would send: transport backlog + initial + dirty (or " +
          "MIG_DATA_SIZE when asked), bytes",
        BYTES,
      ),
      threshold: atEnd(
        "number",
        "what fits the downtime limit: bandwidth x limit, bytes; null before any " +
          "bandwidth was measured",
        { nullable: true, ...BYTES },
      ),
      bandwidth: atEnd("number", "the bandwidth judged by, bytes/s (null: none yet)", { nullable: true, ...BYTES }),
      backlog: opt("integer", "bytes the transport still held unsent", BYTES),
    },
  },
  switchover: {
    device: "none",
    doc: "Pre-copy ends: why, and the numbers the decision was made on.",
    fields: {
      reason: req("string", SWITCH_REASONS.map((r) => `\`${r}\``).join(", "), { values: SWITCH_REASONS }),
      iterations: req("integer", "pre-copy iterations", { min: 0 }),
      estimate: req("number", "the last estimate of what stop-copy sends, bytes", BYTES),
      exact: opt("number", "MIG_DATA_SIZE summed, when it was asked for, bytes (null: unavailable)", {
        nullable: true,
        ...BYTES,
      }),
      threshold: req("number", "bandwidth x downtime limit, bytes (null: no bandwidth measured)", {
        nullable: true,
        ...BYTES,
      }),
      downtimeLimitMs: req("number", "--downtime-limit, ms", { min: 0 }),
      bandwidth: req("number", "bytes/s judged by (null: none)", { nullable: true, ...BYTES }),
      precopyMs: req("number", "how long pre-copy lasted, ms", { min: 0 }),
    },
  },
  transport: {
    device: "none",
    doc: "A step of a tcp:// transfer: `listening` (load), `connected`, `authenticated`, `refused` (a peer " +
      "the listener turned away), `dropped` (the counts of connections it turned away without a `refused` " +
      "each: at most every 30 s while they grow, and when the wait ends), `init-ack` (the destination loaded a DEV_INIT_DATA_SENT: switchover-ack), " +
      "`peer-result` (the destination's result).",
    fields: {
      step: req("string", TRANSPORT_STEPS.map((s) => `\`${s}\``).join(", "), { values: TRANSPORT_STEPS }),
      peer: opt("string", "HOST:PORT of the other end (or the listening address)"),
      tls: opt("boolean", "the connection uses TLS"),
      acks: opt("integer", "init-ack: markers acknowledged so far", { min: 1 }),
      ok: opt("boolean", "peer-result: the destination loaded the state"),
      message: opt("string", "refused: why; dropped: the stderr line; peer-result: the destination's words"),
      dropped: opt("integer", "dropped: connections closed unread over --max-startups, so far", { min: 0 }),
      refused: opt("integer", "dropped: connections refused by the handshake without a `refused` each, so far", {
        min: 0,
      }),
      finalState: opt("string", "peer-result: the destination device's state"),
    },
  },
  progress: {
    device: "optional",
    doc: "Bytes so far, at most 10 a second (nothing is emitted between): for progress bars.",
    fields: {
      phase: req("string", PROGRESS_PHASES.map((p) => `\`${p}\``).join(", "), { values: PROGRESS_PHASES }),
      bytes: req("integer", "device data bytes moved since the start, all devices", BYTES),
      rate: req("number", "bytes/s over the last second (0 in the first progress event)", BYTES),
      total: req("number", "the size estimate, bytes (null: unknown)", { nullable: true, ...BYTES }),
    },
  },
  note: {
    device: "optional",
    doc: "Something vfio-mig also says on stderr as a note or warning (a forced switchover, a slow path).",
    fields: {
      level: req("string", "`note` or `warning`", { values: ["note", "warning"] }),
      message: req("string", "one line"),
    },
  },
  result: {
    device: "none",
    doc: "The last event of a run that succeeded.",
    fields: {
      exitCode: req("integer", "0", { min: 0, max: 0 }),
      summary: req("object", "the `--json` summary of the command, whole"),
    },
  },
  error: {
    device: "none",
    doc: "The last event of a run that failed: the line printed on stderr and the exit code.",
    fields: {
      exitCode: req("integer", "1 failure, 2 usage, 3 device, 4 stream, 130 interrupted", { min: 1, max: 255 }),
      kind: req("string", ERROR_KINDS.map((k) => `\`${k}\``).join(", "), { values: ERROR_KINDS }),
      message: req("string", "one line, without the leading `vfio-mig:`"),
    },
  },
};

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
    "<!-- generated by `deno run src/events/schema.ts`: edit src/events/schema.ts, not this part -->",
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
