// What save and load add to their command lines for events: the --events option, its
// help, and one call that builds the emitter with its subscribers (the JSON-lines
// writer for --events, the progress bar on a terminal).

import { F, FD_CLOEXEC, type Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { Events, type EventsOptions } from "./events.ts";
import { JsonLinesWriter, parseEventsTarget } from "./jsonl.ts";
import { type BarOutput, pipePeerSharesTerminal, ProgressBar } from "./progress_bar.ts";

/** parseArgs options of save and load. */
export const EVENTS_OPTIONS = {
  events: { type: "string" },
} as const;

/** The --help lines of the option (aligned as the other options of save and load). */
export const EVENTS_HELP = `      --events FILE|fd:N  write each event of the migration as a JSON line to FILE
                     (created or truncated) or to descriptor N that the caller handed
                     down (as 9>>ev.jsonl does; any other is refused): device
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
 * Throws VfioMigError (usage, exit 2) when the --events target cannot be opened, or is a
 * descriptor this process opened itself (handedDown): call it before any device is touched. Returns the emitter and the bar (null when none), whose
 * clear() must precede any other line written to stderr while the run goes on.
 */
export function migrationEvents(sys: Sys, opts: MigrationEventsOptions): { events: Events; bar: ProgressBar | null } {
  const bar = opts.barOutput
    ? (opts.progress ? new ProgressBar(opts.barOutput) : null)
    : ProgressBar.forStderr(opts.progress && !(opts.quietUnderSave && pipePeerSharesTerminal(sys, 0, "save")));
  const say = opts.warn ?? ((l: string) => console.error(l));
  // A warning goes on its own line, not after the bar's. A terminal that hung up (EIO)
  // loses both; the run goes on as it would have (a SIGHUP's cleanup, say).
  const warn = (line: string) => {
    try {
      bar?.clear();
    } catch { /* stderr is gone */ }
    say(line);
  };
  const events = new Events({ ...opts, warn });
  if (opts.events !== undefined) {
    const target = parseEventsTarget(opts.events);
    if (target.kind === "fd") handedDown(sys, target.fd, "--events");
    events.on(JsonLinesWriter.open(sys, opts.events, { reservedFds: opts.reservedFds, warn }));
  }
  if (bar) events.on(bar);
  return { events, bar };
}

/**
 * Refuses (usage error, exit 2) an output descriptor given by number that the process
 * that started us did not hand down. The kernel does not record who opened a descriptor;
 * the rule: one that survived exec has FD_CLOEXEC clear (execve(2) closes the others), and
 * every descriptor Deno and this tool open carry FD_CLOEXEC (Rust's std and the libc
 * calls here open with O_CLOEXEC: Deno's module-cache databases, its epoll, eventfd and
 * sockets; measured on Deno 2.9). So a descriptor with FD_CLOEXEC set is this process's
 * own, and writing into it would corrupt it (fd 9 was Deno's cache database). A
 * descriptor that is not open passes: the writer's open says so. Source: fcntl(2) F_GETFD.
 */
export function handedDown(sys: Sys, fd: number, option: string): void {
  let flags: number;
  try {
    flags = sys.fcntl(fd, F.GETFD);
  } catch {
    return; // not open: JsonLinesWriter.open gives the error
  }
  if (flags & FD_CLOEXEC) {
    throw new VfioMigError(
      `${option} fd:${fd}: descriptor ${fd} was not handed to vfio-mig (it is close-on-exec: this process opened ` +
        `it itself); give a descriptor the caller opened, e.g. ${fd}>>events.jsonl, or a FILE`,
      "usage",
    );
  }
}
