// The shape of a CLI command, and the option parsing every command shares.

export interface Command {
  name: string;
  /** Full --help text. */
  help: string;
  run(args: string[]): Promise<number>;
  /**
   * The command catches SIGINT and SIGTERM itself (save, load: src/signals.ts claims),
   * so the command line's fallback stays bound for its run. Any other command gets the
   * default action back once it is loaded: a long synchronous step (inspect of a large
   * file) still ends at once on Ctrl-C, not at its next turn of the event loop.
   */
  handlesSignals?: boolean;
}

/** The option parser every command shares (src/commands/options.ts). */
export { parse } from "./options.ts";

export function printJson(value: unknown, toStderr = false): void {
  const text = JSON.stringify(value, null, 2);
  if (toStderr) console.error(text);
  else console.log(text);
}

export function hex(n: number | null | undefined, width = 4): string {
  return n === null || n === undefined ? "?" : `0x${n.toString(16).padStart(width, "0")}`;
}

/** The exit code table every --help ends with (src/errors.ts, beside EXIT: --help loads no parser). */
export { EXIT_CODES_HELP } from "../errors.ts";
