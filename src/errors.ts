// The one error type the tool reports to users: a one-line message and an exit code.

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
  /** Interrupted by a signal (SIGINT / SIGTERM). */
  INTERRUPTED: 130,
} as const;

export type ErrorKind = "failure" | "usage" | "device" | "stream" | "interrupted";

const EXIT_OF: Record<ErrorKind, number> = {
  failure: EXIT.FAILURE,
  usage: EXIT.USAGE,
  device: EXIT.DEVICE,
  stream: EXIT.STREAM,
  interrupted: EXIT.INTERRUPTED,
};

export class VfioMigError extends Error {
  readonly kind: ErrorKind;
  constructor(message: string, kind: ErrorKind = "failure", options?: ErrorOptions) {
    super(message, options);
    this.name = "VfioMigError";
    this.kind = kind;
  }
  get exitCode(): number {
    return EXIT_OF[this.kind];
  }
}

export class StreamError extends VfioMigError {
  constructor(message: string, readonly offset?: number) {
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
