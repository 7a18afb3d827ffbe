// The record grammar of a vfio-mig stream (docs/stream-format.md, "Order" and "Several
// devices"), written once for every reader that follows it: `load` (which acts on each
// step and stops at the first problem), `inspect` (which notes problems and reads on)
// and `verify` (load's checks without a device). QEMU's split: the migration loop
// dispatches, each device's handler owns its section grammar (hw/vfio/migration.c
// vfio_load_state); here one RecordGrammar dispatches DEVICE tags and each device's
// Track owns its phase.
//
// Per device (its protocol's order):
//   v2   DEV_SETUP_STATE END_OF_STATE
//        ( DEV_DATA_STATE* ( END_OF_STATE | DEV_INIT_DATA_SENT ) )*      pre-copy
//        SWITCHOVER DEV_DATA_STATE* END_OF_STATE                          stop-copy
//        [ DEV_CONFIG_STATE END_OF_STATE ]
//   v1   DEV_SETUP_STATE END_OF_STATE ( DEV_DATA_STATE* END_OF_STATE )*
//        [ DEV_CONFIG_STATE END_OF_STATE ]   (no SWITCHOVER, no DEV_INIT_DATA_SENT)
// Stream: several devices' records each follow a DEVICE tag naming a listed device;
// STREAM_END (the trailer) ends every device at once: the end-of-stream rule.
//
// Records are numbered from 0, the first after the header, every framed record counted
// (DEVICE tags and the trailer included): the number `inspect` lists them by, and the
// one a StreamError carries (StreamError.record), so load, inspect and verify name the
// same record for the same damage.

import { expectedRecords, type RecordPhase } from "./order.ts";
import type { TagName } from "./format.ts";

/**
 * Where a record belongs: "data" is device data of a protocol v1 stream (no SWITCHOVER
 * marker); "device" a DEVICE tag of a multi-device stream (a record, never a section).
 */
export type SectionName = "setup" | "pre-copy" | "stop-copy" | "data" | "config" | "trailer" | "device";

/** One device of the stream, as its header lists it. */
export interface GrammarDevice {
  /** Protocol v1's order (no SWITCHOVER, no DEV_INIT_DATA_SENT). */
  v1: boolean;
  /** The --device it was saved from (for messages), when the header says. */
  source?: string | null;
}

/**
 * What a record means for the device it belongs to:
 *   resume       its setup section ended: a loader's device enters RESUMING here
 *   init-data    DEV_INIT_DATA_SENT: everything before it is the initial data
 *   switchover   SWITCHOVER: the device data after it is stop-copy data
 *   data         DEV_DATA_STATE: device data
 *   config       DEV_CONFIG_STATE: the config section
 *   select       a DEVICE tag: the records after it are `device`'s
 *   end          STREAM_END: the trailer
 */
export type Effect = "resume" | "init-data" | "switchover" | "data" | "config" | "select" | "end" | null;

/** One record as the grammar takes it. */
export interface Step {
  /** The record's number (0: the first after the header). */
  index: number;
  /** The device it belongs to (multi-device streams; a DEVICE tag: the one it selects), else null. */
  device: number | null;
  section: SectionName;
  effect: Effect;
  /** An END_OF_STATE that closed a pre-copy (or v1 data) iteration: the next record starts another. */
  closesIteration: boolean;
  /** Out of order (the message, without the offset); the rest of the step is the grammar's best reading. */
  problem: string | null;
}

/** One device's progress through its records. */
interface Track {
  device: number | null;
  source: string | null;
  v1: boolean;
  phase: RecordPhase;
  /** The device's last record was END_OF_STATE. */
  afterEnd: boolean;
  /** A SWITCHOVER was seen: device data is stop-copy data. */
  switchover: boolean;
}

export class RecordGrammar {
  readonly multi: boolean;
  readonly #tracks: Track[];
  #cur: Track | null;
  #index = 0;
  #ended = false;

  /**
   * `devices`: the header's (one for a single-device stream). `multi`: the stream names
   * each device's records with DEVICE tags (its header has a `devices` list).
   */
  constructor(devices: readonly GrammarDevice[], multi = devices.length > 1) {
    if (devices.length === 0) throw new Error("RecordGrammar: no device");
    this.multi = multi;
    this.#tracks = devices.map((d, i) => ({
      device: multi ? i : null,
      source: d.source ?? null,
      v1: d.v1,
      phase: "setup",
      afterEnd: false,
      switchover: false,
    }));
    this.#cur = multi ? null : this.#tracks[0];
  }

  /** The number the next record gets. */
  get index(): number {
    return this.#index;
  }

  /** The device whose records come now (null: none selected yet, or a single-device stream). */
  get device(): number | null {
    return this.#cur?.device ?? null;
  }

  /** Whether device data of the current device is stop-copy data (after its SWITCHOVER). */
  get afterSwitchover(): boolean {
    return this.#cur?.switchover ?? false;
  }

  /** " for device i (source)" in a multi-device stream, else "". */
  #forDevice(t: Track): string {
    if (t.device === null) return "";
    return ` for device ${t.device}${t.source ? ` (${t.source})` : ""}`;
  }

  #unexpected(t: Track, what: string): string {
    return `unexpected ${what}${this.#forDevice(t)} (expected ${expectedRecords(t.phase, t.v1)})`;
  }

  /**
   * The current device; in a multi-device stream a record before any DEVICE tag is a
   * problem and counts as device 0's from there on.
   */
  #track(name: string): { t: Track; problem: string | null } {
    if (this.#cur) return { t: this.#cur, problem: null };
    this.#cur = this.#tracks[0];
    return {
      t: this.#cur,
      problem: `${name} before any DEVICE tag (each device's records follow a DEVICE tag in this stream)`,
    };
  }

  #step(t: Track | null, section: SectionName, effect: Effect, problem: string | null, closes = false): Step {
    return {
      index: this.#index++,
      device: t?.device ?? null,
      section,
      effect,
      closesIteration: closes,
      problem,
    };
  }

  /** A DEVICE tag selecting device `i`. */
  selectDevice(i: number): Step {
    if (!this.multi) {
      const s = this.#step(null, "device", "select", null);
      s.problem = `a DEVICE tag (device ${i}) in a single-device stream (its header lists no devices)`;
      s.device = i;
      return s;
    }
    if (i >= this.#tracks.length) {
      const s = this.#step(null, "device", "select", null);
      s.problem = `DEVICE ${i} selects a device the header does not list (it lists ${this.#tracks.length})`;
      s.device = i;
      return s;
    }
    this.#cur = this.#tracks[i];
    return this.#step(this.#cur, "device", "select", null);
  }

  /** A bare tag: DEV_SETUP_STATE, END_OF_STATE, DEV_INIT_DATA_SENT, SWITCHOVER (others are out of place). */
  tag(name: TagName): Step {
    const { t, problem: first } = this.#track(name);
    const dataSection: SectionName = t.v1 ? "data" : "pre-copy";
    let section: SectionName = "setup";
    let effect: Effect = null;
    let bad: string | null = null;
    const unexpected = () => (bad = this.#unexpected(t, name));
    switch (name) {
      case "DEV_SETUP_STATE":
        if (t.phase !== "setup") unexpected();
        t.phase = "setup-end";
        break;
      case "END_OF_STATE":
        if (t.phase === "setup-end") {
          t.phase = "iterate";
          effect = "resume";
        } else if (t.phase === "iterate") section = dataSection; // an iteration ends (v1: also the complete phase)
        else if (t.phase === "stop-copy") {
          section = "stop-copy";
          t.phase = "after-data";
        } else if (t.phase === "config-end") {
          section = "config";
          t.phase = "trailer";
        } else unexpected();
        break;
      case "DEV_INIT_DATA_SENT":
        if (t.phase !== "iterate" || t.v1) unexpected();
        else effect = "init-data";
        section = "pre-copy";
        break;
      case "SWITCHOVER":
        if (t.phase !== "iterate" || t.v1) unexpected();
        else effect = "switchover";
        t.phase = "stop-copy";
        t.switchover = true;
        section = "stop-copy";
        break;
      default:
        unexpected();
    }
    t.afterEnd = name === "END_OF_STATE";
    return this.#step(t, section, effect, first ?? bad, t.afterEnd && section === dataSection);
  }

  /** A DEV_DATA_STATE record. */
  data(): Step {
    const { t, problem: first } = this.#track("DEV_DATA_STATE");
    const bad = t.phase !== "iterate" && t.phase !== "stop-copy" ? this.#unexpected(t, "device data") : null;
    const section: SectionName = t.switchover ? "stop-copy" : t.v1 ? "data" : "pre-copy";
    t.afterEnd = false;
    return this.#step(t, section, "data", first ?? bad);
  }

  /** A DEV_CONFIG_STATE record. */
  config(): Step {
    const { t, problem: first } = this.#track("DEV_CONFIG_STATE");
    const bad = !(t.phase === "after-data" || (t.v1 && t.phase === "iterate" && t.afterEnd))
      ? this.#unexpected(t, "DEV_CONFIG_STATE")
      : null;
    t.phase = "config-end";
    t.afterEnd = false;
    return this.#step(t, "config", "config", first ?? bad);
  }

  /**
   * STREAM_END: the end-of-stream rule. Every device must be past its data (after its
   * stop-copy END_OF_STATE, or its config section; v1: after an END_OF_STATE). The
   * step's problem names the first device that is not; `problems` every one.
   */
  end(): Step & { problems: string[] } {
    const problems = this.#tracks.filter((t) => !RecordGrammar.#complete(t)).map((t) =>
      this.#unexpected(t, "STREAM_END")
    );
    this.#ended = true;
    this.#cur = null;
    return { ...this.#step(null, "trailer", "end", problems[0] ?? null), problems };
  }

  static #complete(t: Track): boolean {
    return t.phase === "trailer" || t.phase === "after-data" || (t.v1 && t.phase === "iterate" && t.afterEnd);
  }

  /** What the stream lacks when it ends (no more bytes) before its trailer, for "truncated" messages. */
  expectedAtEnd(): string {
    if (this.#ended) return "nothing";
    const t = this.#cur ?? this.#tracks[0];
    return `${expectedRecords(t.phase, t.v1)}${this.multi && this.#cur ? this.#forDevice(t) : ""}`;
  }

  /** What may come next for the current device (for "unknown record tag" messages). */
  expectedNext(): string {
    const t = this.#cur ?? this.#tracks[0];
    return `${expectedRecords(t.phase, t.v1)}${this.multi && this.#cur ? this.#forDevice(t) : ""}`;
  }

  /** Per device: whether its data carried a SWITCHOVER (null for a single-device stream's device: index 0). */
  switchovers(): boolean[] {
    return this.#tracks.map((t) => t.switchover);
  }

  /** Per device: protocol v1. */
  v1s(): boolean[] {
    return this.#tracks.map((t) => t.v1);
  }
}
