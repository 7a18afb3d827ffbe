// The worker's side of the torture's two pipes, and its trace file.
//
// Progress (worker -> supervisor), one JSON object a line:
//   {"t":"start","n":N,"what":TEXT}     before call N (N counts from 1)
//   {"t":"end","n":N,"errno":E|null}    after it; the worker then waits for one ack byte,
//                                       so that the supervisor reads the kernel log
//                                       between calls and each line lands on its call
//   {"t":"finding",...}                 a finding the worker saw itself (finding.ts)
//   {"t":"note","text":TEXT}            something the report says
//   {"t":"summary",...}                 the counts, last
// Trace file (the calls, for replays): {"n":N,"call":CALL} before call N, {"r":N,...RESULT}
// after it, and {"blob":"orig","off":O,"data":B64} lines carrying the device's saved state.

import { O, type Sys } from "../../../ffi/sys.ts";
import { readSome, writeAll } from "../../io.ts";
import { b64, type Call, describe, type Executor, type Result } from "./calls.ts";

const enc = new TextEncoder();

/** Appends JSON lines to a file (the trace), one write per line. */
export class LineWriter {
  readonly fd: number;
  constructor(readonly sys: Sys, path: string) {
    this.fd = sys.open(path, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC, 0o600);
  }
  line(v: unknown): void {
    writeAll(this.sys, this.fd, enc.encode(JSON.stringify(v) + "\n"));
  }
  close(): void {
    this.sys.close(this.fd);
  }
}

/** Runs calls through an Executor, recording each in the trace and telling the supervisor. */
export class TracedExecutor {
  n = 0;
  readonly ack = new Uint8Array(1);

  constructor(
    readonly x: Executor,
    readonly trace: LineWriter,
    readonly progressFd: number,
    readonly ackFd: number,
  ) {}

  get sys(): Sys {
    return this.x.sys;
  }

  send(v: unknown): void {
    writeAll(this.sys, this.progressFd, enc.encode(JSON.stringify(v) + "\n"));
  }

  /** One call: traced, announced, executed, answered, acknowledged. */
  call(c: Call): Result {
    const n = ++this.n;
    this.trace.line({ n, call: c });
    this.send({ t: "start", n, what: describe(c) });
    const r = this.x.run(c);
    this.trace.line({ r: n, ...r });
    this.send({ t: "end", n, errno: r.errno });
    // The supervisor's ack: it has read the kernel log up to the end of this call.
    if (this.ackFd >= 0 && readSome(this.sys, this.ackFd, this.ack) === 0) {
      throw new Error("torture worker: the supervisor went away");
    }
    return r;
  }

  /** Records the device's saved state in the trace, for replays. */
  blob(off: number, data: Uint8Array): void {
    this.trace.line({ blob: "orig", off, data: b64(data) });
  }
}
