// `--events FILE|fd:N`: one JSON object per line, written synchronously through the Sys
// (ffi/sys.ts) as each event happens, so that nothing is lost when the process exits or
// is killed between two events. A write that fails (disk full, the reader of a pipe
// gone) costs one warning on stderr and ends the events; it never fails the migration.

import { SysError } from "../../ffi/errno.ts";
import { F, O, type Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { writeAll } from "../io.ts";
import { fileError } from "../transport/transport.ts";
import type { EventSubscriber, MigrationEvent } from "./events.ts";

export type EventsTarget = { kind: "file"; path: string } | { kind: "fd"; fd: number };

/** `fd:N` (an inherited descriptor, N a decimal number) or a file path. Throws a usage error for a bad `fd:`. */
export function parseEventsTarget(spec: string): EventsTarget {
  if (spec === "") throw new VfioMigError("--events takes a FILE or fd:N", "usage");
  if (spec.startsWith("fd:")) {
    const n = spec.slice(3);
    if (!/^\d{1,9}$/.test(n)) throw new VfioMigError(`--events ${spec}: fd:N takes a descriptor number`, "usage");
    return { kind: "fd", fd: Number(n) };
  }
  return { kind: "file", path: spec };
}

export interface JsonLinesOptions {
  /** Descriptors events must not go to (the stream's own: 1 when it goes to standard output). */
  reservedFds?: number[];
  /** Where the one warning goes (default: stderr). */
  warn?: (line: string) => void;
}

const ACCMODE = 3;

/**
 * The JSON-lines subscriber. open() checks the target before anything else happens:
 * a file is created (truncated) with mode 0644 (less the umask); `fd:N` must be open
 * for writing and not reserved. Both failures are usage errors (exit 2), given before
 * any device is touched. Later write errors only warn.
 */
export class JsonLinesWriter implements EventSubscriber {
  #failed = false;
  #closed = false;
  readonly #enc = new TextEncoder();

  private constructor(
    readonly sys: Sys,
    readonly fd: number,
    readonly label: string,
    readonly owned: boolean,
    readonly warn: (line: string) => void,
  ) {}

  static open(sys: Sys, spec: string, opts: JsonLinesOptions = {}): JsonLinesWriter {
    const target = parseEventsTarget(spec);
    const warn = opts.warn ?? ((l: string) => console.error(l));
    if (target.kind === "fd") {
      const { fd } = target;
      if (opts.reservedFds?.includes(fd)) {
        throw new VfioMigError(`--events fd:${fd}: that descriptor carries the stream`, "usage");
      }
      let flags: number;
      try {
        flags = sys.fcntl(fd, F.GETFL);
      } catch (e) {
        throw new VfioMigError(
          `--events fd:${fd}: descriptor ${fd} is not open (${e instanceof SysError ? e.code : e})`,
          "usage",
        );
      }
      if ((flags & ACCMODE) === O.RDONLY) {
        throw new VfioMigError(`--events fd:${fd}: descriptor ${fd} is open for reading only`, "usage");
      }
      return new JsonLinesWriter(sys, fd, `fd:${fd}`, false, warn);
    }
    let fd: number;
    try {
      fd = sys.open(target.path, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, 0o644);
    } catch (e) {
      throw new VfioMigError(`--events: ${fileError(sys, target.path, e, "create").message}`, "usage");
    }
    return new JsonLinesWriter(sys, fd, target.path, true, warn);
  }

  /** False once a write failed: nothing more is written. */
  get healthy(): boolean {
    return !this.#failed;
  }

  event(e: MigrationEvent): void {
    if (this.#failed || this.#closed) return;
    try {
      // One write per line: lines shorter than PIPE_BUF reach a pipe whole.
      writeAll(this.sys, this.fd, this.#enc.encode(JSON.stringify(e) + "\n"));
    } catch (err) {
      this.#failed = true;
      const why = err instanceof SysError ? `${err.code} (${err.message.replace(/^.*\((.*)\)$/, "$1")})` : err;
      this.warn(
        `vfio-mig: warning: --events ${this.label}: write failed: ${why}; no more events are written ` +
          `(the migration goes on)`,
      );
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.owned) return; // an inherited descriptor belongs to whoever handed it down
    try {
      this.sys.close(this.fd);
    } catch { /* the events were written; nothing to do */ }
  }
}
