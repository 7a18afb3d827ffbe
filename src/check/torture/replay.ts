// Replays: a finding's file holds, as JSON lines, a header, the device's saved state
// (blob lines) and the exact calls of the run up to the finding with their recorded
// results (channel.ts); the replay worker makes the same calls in the same order with
// the same bytes, and reports each result that differs from the recorded one.

import type { Sys } from "../../../ffi/sys.ts";
import { O } from "../../../ffi/sys.ts";
import { readSome } from "../../io.ts";
import { type Call, describe, Executor, type Result, unb64 } from "./calls.ts";
import { LineWriter, TracedExecutor } from "./channel.ts";

const MFD_CLOEXEC = 1;

/** The lines of a file, read in pieces (a replay can be large: never read whole). */
export function* fileLines(sys: Sys, path: string): Generator<string> {
  const fd = sys.open(path, O.RDONLY | O.CLOEXEC);
  try {
    const buf = new Uint8Array(1 << 20);
    const dec = new TextDecoder();
    let rest = "";
    for (;;) {
      const n = readSome(sys, fd, buf);
      if (n === 0) break;
      const text = rest + dec.decode(buf.subarray(0, n), { stream: true });
      const lines = text.split("\n");
      rest = lines.pop() ?? "";
      for (const l of lines) if (l) yield l;
    }
    if (rest) yield rest;
  } finally {
    sys.close(fd);
  }
}

export interface ReplayHeader {
  "vfio-mig-torture-replay": 1;
  device: string;
  seed: number;
  finding: { kinds: string[]; step: number; what: string; detail: string[]; kmsg: string[] };
}

/** Reads a replay file's header (its first line); throws Error with what is wrong. */
export function readReplayHeader(sys: Sys, path: string): ReplayHeader {
  for (const l of fileLines(sys, path)) {
    const h = JSON.parse(l);
    if (h?.["vfio-mig-torture-replay"] !== 1) throw new Error(`${path}: not a vfio-mig torture replay file`);
    return h as ReplayHeader;
  }
  throw new Error(`${path}: empty`);
}

function same(a: Result, b: Record<string, unknown>): boolean {
  return a.errno === (b.errno ?? null) && (a.ret ?? null) === (b.ret ?? null);
}

/** The worker of `--replay FILE`: runs the file's calls on `spec`; returns 0. */
export function runReplayWorker(
  sys: Sys,
  file: string,
  spec: string,
  tracePath: string,
  progressFd: number,
  ackFd: number,
): number {
  const x = new Executor(sys, spec);
  const t = new TracedExecutor(x, new LineWriter(sys, tracePath), progressFd, ackFd);
  let results = new Map<number, Result>();
  let diffs = 0;
  try {
    for (const l of fileLines(sys, file)) {
      const v = JSON.parse(l);
      if (v["vfio-mig-torture-replay"]) continue;
      if (v.blob === "orig") {
        if (!x.original) x.original = { fd: sys.memfd("vfio-mig-torture-original", MFD_CLOEXEC), size: 0 };
        const data = unb64(v.data);
        sys.pwrite(x.original.fd, data, v.off);
        x.original.size = Math.max(x.original.size, v.off + data.length);
        t.blob(v.off, data);
      } else if (v.call) {
        const c = v.call as Call;
        const r = t.call(c);
        if (c.op === "open" && r.errno) throw new Error(x.lastMessage || `cannot open ${spec}: ${r.errno}`);
        results.set(v.n, r);
        if (v.n !== t.n) throw new Error(`replay file out of order at call ${v.n}`);
      } else if (typeof v.r === "number") {
        const now = results.get(v.r);
        results = new Map();
        const { r: _n, ...rec } = v;
        if (now && !same(now, rec)) {
          diffs++;
          t.send({
            t: "diff",
            n: v.r,
            text: `call ${v.r}: recorded ${rec.errno ?? `ok ${rec.ret ?? ""}`.trim()}, now ${
              now.errno ?? `ok ${now.ret ?? ""}`.trim()
            }`,
          });
        }
      }
    }
  } finally {
    t.send({ t: "summary", replay: true, calls: t.n, diffs });
    x.closeAll();
    t.trace.close();
  }
  return 0;
}

export { describe };
