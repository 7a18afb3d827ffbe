// The one error type the tool reports to users: a one-line message and an exit code,
// and the one place that decides the exit code and line of any error (describeError).

import { SysError } from "../ffi/errno.ts";
import { LibcLoadError } from "../ffi/libc.ts";

export const EXIT = {
  OK: 0,
  /** Generic failure (a syscall or device step failed). */
  FAILURE: 1,
  /** Bad command line or option. */
  USAGE: 2,
  /** The device could not be found, opened or is not migratable. */
  DEVICE: 3,
  /** The stream is damaged, truncated, or for another device. */
  STREAM: 4,
  /** Interrupted by a signal: SIGINT, SIGTERM or SIGHUP alike (not 128+N: one code says "interrupted"). */
  INTERRUPTED: 130,
} as const;

/** The exit code table every --help ends with (EXIT above, in words). */
export const EXIT_CODES_HELP = `Exit codes: 0 success, 1 failure (a device step or I/O failed), 2 usage error,
3 device not found / not openable / not migratable, 4 stream damaged or for another
device, 130 interrupted (SIGINT, SIGTERM or SIGHUP; SIGQUIT still quits at once).`;

export type ErrorKind = "failure" | "usage" | "device" | "stream" | "interrupted";

const EXIT_OF: Record<ErrorKind, number> = {
  failure: EXIT.FAILURE,
  usage: EXIT.USAGE,
  device: EXIT.DEVICE,
  stream: EXIT.STREAM,
  interrupted: EXIT.INTERRUPTED,
};

/**
 * One printable line: control characters (from a damaged or hostile stream's header
 * text, say: a newline, a terminal escape) are shown escaped, never emitted.
 */
export function printable(s: string): string {
  // deno-lint-ignore no-control-regex
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

export class VfioMigError extends Error {
  readonly kind: ErrorKind;
  constructor(message: string, kind: ErrorKind = "failure", options?: ErrorOptions) {
    super(printable(message), options);
    this.name = "VfioMigError";
    this.kind = kind;
  }
  get exitCode(): number {
    return EXIT_OF[this.kind];
  }
}

export class StreamError extends VfioMigError {
  /**
   * `offset`: the stream byte where the damage is; `record`: the number of the record
   * it is in (0: the first after the header, as `inspect` lists them; src/stream/grammar.ts).
   */
  constructor(message: string, readonly offset?: number, readonly record?: number) {
    super(offset === undefined ? message : `${message} (at byte ${offset})`, "stream");
    this.name = "StreamError";
  }
}

export class InterruptedError extends VfioMigError {
  constructor(readonly signal: string) {
    super(`interrupted by ${signal}`, "interrupted");
    this.name = "InterruptedError";
  }
}

/**
 * The exit code, kind and one line of any error, as the CLI reports it (cli.ts) and the
 * events record it: a VfioMigError by its kind; libc that cannot be loaded is a usage
 * error (2); a bare system call failure 1; anything else an internal error (1).
 */
export function describeError(e: unknown): { exitCode: number; kind: ErrorKind | "internal"; message: string } {
  if (e instanceof VfioMigError) return { exitCode: e.exitCode, kind: e.kind, message: e.message };
  if (e instanceof LibcLoadError) return { exitCode: EXIT.USAGE, kind: "usage", message: printable(e.message) };
  if (e instanceof SysError) return { exitCode: EXIT.FAILURE, kind: "failure", message: printable(e.message) };
  return {
    exitCode: EXIT.FAILURE,
    kind: "internal",
    message: printable(`internal error: ${e instanceof Error ? e.message : String(e)}`),
  };
}
