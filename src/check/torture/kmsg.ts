// The kernel's verdict: a watcher of the kernel log (/dev/kmsg, or a simulated device's
// log file, src/sim/kmsg.ts) that the supervisor drains between the worker's calls, and
// the test of whether a record is a report of a kernel bug.
//
// /dev/kmsg (Documentation/ABI/testing/dev-kmsg): one record per read(), "PRIO,SEQ,
// USEC,FLAGS[,...];TEXT\n" then continuation lines starting with a space; opened
// O_NONBLOCK, a read with nothing new fails with EAGAIN, and EPIPE when records were
// overwritten before we read them (the next read goes on from the oldest one left);
// SEEK_END skips what was logged before the run.

import { isErrno } from "../../../ffi/errno.ts";
import { O, SEEK, type Sys } from "../../../ffi/sys.ts";
import { simKmsgPath } from "../../sim/kmsg.ts";

export interface KmsgRecord {
  level: number;
  text: string;
}

/**
 * The lines a sanitizer or the kernel's own checks print when they catch a bug: WARN,
 * BUG, Oops, general protection faults, KASAN, UBSAN, KFENCE, lockdep ("possible
 * circular locking", "inconsistent lock state", ...), "sleeping function called from
 * invalid context" (DEBUG_ATOMIC_SLEEP), hung tasks, soft and hard lockups, RCU stalls.
 */
const BAD = new RegExp(
  [
    "WARNING:",
    "BUG:",
    "kernel BUG at",
    "Oops",
    "general protection fault",
    "KASAN",
    "UBSAN",
    "KFENCE",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "lock held when returning to user space",
    "suspicious RCU usage",
    "sleeping function called from invalid context",
    "blocked for more than",
    "soft lockup",
    "hard LOCKUP",
    "rcu_sched self-detected stall",
    "rcu: INFO:",
    "Kernel panic",
    "kmemleak",
  ].map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"),
);

export function isBugReport(text: string): boolean {
  return BAD.test(text);
}

/** Parses one /dev/kmsg record (first line only: continuation lines carry dictionary fields). */
export function parseRecord(line: string): KmsgRecord | null {
  const semi = line.indexOf(";");
  if (semi < 0) return null;
  const prio = Number(line.slice(0, line.indexOf(",")));
  return { level: Number.isFinite(prio) ? prio & 7 : 6, text: line.slice(semi + 1).split("\n")[0] };
}

export interface KmsgSource {
  /** Where the log is read from. */
  readonly name: string;
  /** Every record logged since the last drain. */
  drain(): KmsgRecord[];
  close(): void;
}

const dec = new TextDecoder();

/** /dev/kmsg, from its end. Throws SysError when it cannot be opened (EPERM without CAP_SYSLOG...). */
export class DevKmsg implements KmsgSource {
  readonly name = "/dev/kmsg";
  readonly #fd: number;
  readonly #buf = new Uint8Array(8192);

  constructor(readonly sys: Sys, path = "/dev/kmsg") {
    this.#fd = sys.open(path, O.RDONLY | O.NONBLOCK | O.CLOEXEC);
    sys.lseek(this.#fd, 0, SEEK.END);
  }

  drain(): KmsgRecord[] {
    const out: KmsgRecord[] = [];
    for (let i = 0; i < 10_000; i++) {
      let n: number;
      try {
        n = this.sys.read(this.#fd, this.#buf);
      } catch (e) {
        if (isErrno(e, "EAGAIN")) break;
        if (isErrno(e, "EPIPE")) {
          out.push({ level: 4, text: "vfio-mig: kernel log records were overwritten before they were read" });
          continue;
        }
        if (isErrno(e, "EINTR")) continue;
        throw e;
      }
      if (n === 0) break;
      const r = parseRecord(dec.decode(this.#buf.subarray(0, n)));
      if (r) out.push(r);
    }
    return out;
  }

  close(): void {
    try {
      this.sys.close(this.#fd);
    } catch { /* released */ }
  }
}

/** A simulated device's log file (one record a line), from its end at the start of the run. */
export class SimKmsg implements KmsgSource {
  readonly name: string;
  #off: number;
  #partial = "";

  constructor(readonly sys: Sys, dir: string) {
    this.name = simKmsgPath(dir);
    try {
      this.#off = sys.stat(this.name).size;
    } catch {
      this.#off = 0;
    }
  }

  drain(): KmsgRecord[] {
    let fd: number;
    try {
      fd = this.sys.open(this.name, O.RDONLY | O.CLOEXEC);
    } catch {
      return [];
    }
    const out: KmsgRecord[] = [];
    try {
      const buf = new Uint8Array(65536);
      for (;;) {
        const n = this.sys.pread(fd, buf, this.#off);
        if (n <= 0) break;
        this.#off += n;
        const text = this.#partial + dec.decode(buf.subarray(0, n));
        const lines = text.split("\n");
        this.#partial = lines.pop() ?? "";
        for (const l of lines) {
          const r = parseRecord(l);
          if (r) out.push(r);
        }
      }
    } finally {
      this.sys.close(fd);
    }
    return out;
  }

  close(): void {}
}

/** The log to watch for a device spec: the simulated one for sim:DIR, else /dev/kmsg. */
export function kmsgFor(sys: Sys, spec: string): KmsgSource {
  if (spec.startsWith("sim:")) return new SimKmsg(sys, spec.slice(4));
  return new DevKmsg(sys);
}
