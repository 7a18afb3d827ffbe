// What save and load add to their command lines for events: the --events option, its
// help, and one call that builds the emitter with its subscribers (the JSON-lines
// writer for --events, the progress bar on a terminal).

import type { Sys } from "../../ffi/sys.ts";
import { Events, type EventsOptions } from "./events.ts";
import { JsonLinesWriter } from "./jsonl.ts";
import { type BarOutput, pipePeerSharesTerminal, ProgressBar } from "./progress_bar.ts";

/** parseArgs options of save and load. */
export const EVENTS_OPTIONS = {
  events: { type: "string" },
} as const;

/** The --help lines of the option (aligned as the other options of save and load). */
export const EVENTS_HELP = `      --events FILE|fd:N  write each event of the migration as a JSON line to FILE
                     (created or truncated) or to inherited descriptor N: device
                     state changes, phases, pre-copy iterations, the switchover,
                     transport steps, progress (10 a second), the result or error.
                     Schema: docs/events.md; draw it with 'vfio-mig report'`;

export interface MigrationEventsOptions extends EventsOptions {
  /** --events FILE|fd:N, or undefined. */
  events?: string;
  /** Draw the progress bar when stderr is a terminal (false for --quiet and --json). */
  progress: boolean;
  /** Descriptors the stream uses (1 when it goes to standard output, 0 when it comes from standard input). */
  reservedFds?: number[];
  /**
   * load from standard input: when a vfio-mig save on this terminal writes the pipe, its
   * bar is the one drawn (two would overwrite each other on one line).
   */
  quietUnderSave?: boolean;
  /** Tests: where the bar draws instead of stderr (drawn whether or not it is a terminal). */
  barOutput?: BarOutput;
}

/**
 * The emitter of one save or load, with its subscribers: the JSON-lines writer when
 * `events` is given, the progress bar when `progress` and stderr is a terminal.
 * Throws VfioMigError (usage, exit 2) when the --events target cannot be opened: call it
 * before any device is touched. Returns the emitter and the bar (null when none), whose
 * clear() must precede any other line written to stderr while the run goes on.
 */
export function migrationEvents(sys: Sys, opts: MigrationEventsOptions): { events: Events; bar: ProgressBar | null } {
  const bar = opts.barOutput
    ? (opts.progress ? new ProgressBar(opts.barOutput) : null)
    : ProgressBar.forStderr(opts.progress && !(opts.quietUnderSave && pipePeerSharesTerminal(sys, 0, "save")));
  const say = opts.warn ?? ((l: string) => console.error(l));
  // A warning goes on its own line, not after the bar's.
  const warn = (line: string) => {
    bar?.clear();
    say(line);
  };
  const events = new Events({ ...opts, warn });
  if (opts.events !== undefined) {
    events.on(JsonLinesWriter.open(sys, opts.events, { reservedFds: opts.reservedFds, warn }));
  }
  if (bar) events.on(bar);
  return { events, bar };
}
