// The torture of a v1 device (the deprecated region protocol, as QEMU 7.2 drives it:
// struct vfio_device_migration_info at offset 0 of the migration region, fields
// device_state u32 @0, pending_bytes u64 @8, data_offset u64 @16, data_size u64 @24,
// the data section at data_offset; include/uapi/linux/vfio.h before 6.2, and
// src/vfio/v1.ts). Resume-data fuzzing only: each case sets device_state RESUMING,
// writes the mutated stream one transaction per piece (data at data_offset, then
// data_size: the driver consumes it on that write), and sets RUNNING, where the driver
// loads it. A refusal is at a data write, at the data_size write (the driver rejected
// the chunk), or at RESUMING -> RUNNING. Accepted states are exercised (every region
// but the migration region) and saved; the original is loaded back and compared as for
// v2. Every register access is a traced region-read or region-write call.

import { createHash } from "node:crypto";
import { b64 } from "./calls.ts";
import { CONFIG_REGION, Stop, type TortureWorker } from "./engine.ts";
import { knownFields, type Mutation, type Piece, randomCase, structuredCases } from "./mutate.ts";

const DEVICE_STATE = 0;
const PENDING_BYTES = 8;
const DATA_OFFSET = 16;
const DATA_SIZE = 24;
const HEADER = 32;
const RUNNING = 1;
const SAVING = 2;
const RESUMING = 4;
const MASK = 7;
const CHUNK = 1 << 20;
const INLINE_CHUNK = 1 << 16;
const MAX_ITERATIONS = 1 << 20;

function kernelInternal(errno: string | null): boolean {
  const m = errno ? /^E(\d+)$/.exec(errno) : null;
  return m !== null && Number(m[1]) >= 512;
}

function stateText(s: number): string {
  const bits = [s & RUNNING ? "RUNNING" : "", s & SAVING ? "SAVING" : "", s & RESUMING ? "RESUMING" : ""];
  return `${(s & MASK).toString(2).padStart(3, "0")}b${
    bits.some((b) => b) ? ` (${bits.filter((b) => b).join("|")})` : " (stopped)"
  }`;
}

export class V1Torture {
  constructor(readonly w: TortureWorker, readonly index: number, readonly size: number) {}

  #read(offset: number, width: 4 | 8): number | null {
    const r = this.w.call({ op: "region-read", index: this.index, offset, len: width });
    if (r.errno || r.ret !== width) {
      if (kernelInternal(r.errno)) this.w.finding("errno", `a migration register read failed with ${r.errno}`);
      return null;
    }
    const v = new DataView(this.w.t.x.lastRead.buffer, this.w.t.x.lastRead.byteOffset, width);
    return width === 4 ? v.getUint32(0, true) : Number(v.getBigUint64(0, true));
  }

  #write(offset: number, width: 4 | 8, value: number): string | null {
    const b = new Uint8Array(width);
    const v = new DataView(b.buffer);
    if (width === 4) v.setUint32(0, value >>> 0, true);
    else v.setBigUint64(0, BigInt(value), true);
    const r = this.w.call({ op: "region-write", index: this.index, offset, data: b64(b) });
    if (kernelInternal(r.errno)) {
      this.w.finding("errno", `a migration register write failed with ${r.errno}, a kernel-internal errno`);
    }
    return r.errno ?? (r.ret === width ? null : `short write (${r.ret} of ${width})`);
  }

  state(): number | null {
    return this.#read(DEVICE_STATE, 4);
  }

  setState(v: number): string | null {
    return this.#write(DEVICE_STATE, 4, v);
  }

  reset(): void {
    const r = this.w.call({ op: "reset" });
    const s = this.state();
    if (r.errno === null && s !== null && (s & MASK) !== RUNNING) {
      this.w.finding("errno", `VFIO_DEVICE_RESET succeeded but device_state reads ${stateText(s)}, not 001b`);
    }
  }

  /** Running again, by a reset when needed. */
  recover(): void {
    const s = this.state();
    if (s === null || (s & MASK) !== RUNNING) this.reset();
  }

  /** A stop-and-copy save: its size and SHA-256, or why it failed. The device ends running. */
  save(keep?: (data: Uint8Array, off: number) => void): { size: number; sha: string } | { error: string } {
    this.recover();
    let e = this.setState(SAVING);
    if (e) return { error: `device_state 010b (stop-and-copy) failed with ${e}` };
    const hash = createHash("sha256");
    let size = 0;
    for (let i = 0; i < MAX_ITERATIONS; i++) {
      const pending = this.#read(PENDING_BYTES, 8);
      if (pending === null) return { error: "pending_bytes cannot be read" };
      if (pending === 0) break;
      const at = this.#read(DATA_OFFSET, 8);
      const n = this.#read(DATA_SIZE, 8);
      if (at === null || n === null) return { error: "data_offset or data_size cannot be read" };
      if (at < HEADER || at + n > this.size) {
        this.w.finding(
          "errno",
          `the driver's data_offset ${at} and data_size ${n} do not fit its ${this.size}-byte region`,
        );
        return { error: "chunk outside the region" };
      }
      for (let done = 0; done < n;) {
        const len = Math.min(CHUNK, n - done);
        const r = this.w.call({ op: "region-read", index: this.index, offset: at + done, len });
        if (r.errno || !r.ret) return { error: `reading the data section failed with ${r.errno ?? "0 bytes"}` };
        const data = this.w.t.x.lastRead;
        keep?.(data, size);
        hash.update(data);
        size += data.length;
        done += data.length;
      }
    }
    e = this.setState(0);
    if (e) return { error: `device_state 000b after the save failed with ${e}` };
    this.setState(RUNNING);
    return { size, sha: hash.digest("hex") };
  }

  /** Sets RESUMING and writes the pieces: null, or where and how the driver refused. */
  feed(pieces: Piece[]): { where: string; errno: string } | null {
    const e = this.setState(RESUMING);
    if (e) return { where: "device_state 100b (RESUMING)", errno: e };
    for (const p of pieces) {
      let orig: [number, number] | null = "orig" in p ? p.orig : null;
      let bytes = "orig" in p ? null : "flip" in p ? this.w.flipped(p.flip[0], p.flip[1]) : p.bytes;
      for (;;) {
        const left = orig ? orig[1] : bytes!.length;
        if (left === 0) break;
        const at = this.#read(DATA_OFFSET, 8);
        if (at === null) return { where: "data_offset", errno: "unreadable" };
        const room = this.size - at;
        if (at < HEADER || room <= 0) {
          this.w.finding("errno", `the driver's data_offset ${at} is outside its ${this.size}-byte region`);
          return { where: "data_offset", errno: "outside the region" };
        }
        const n = Math.min(left, room, orig ? CHUNK : INLINE_CHUNK);
        const r = this.w.call(
          orig
            ? { op: "region-write", index: this.index, offset: at, orig: [orig[0], n] }
            : { op: "region-write", index: this.index, offset: at, data: b64(bytes!.subarray(0, n)) },
        );
        if (r.errno) return { where: "a data section write", errno: r.errno };
        const ds = this.#write(DATA_SIZE, 8, n);
        if (ds) return { where: "the data_size write", errno: ds };
        if (orig) orig = [orig[0] + n, orig[1] - n];
        else bytes = bytes!.subarray(n);
      }
    }
    return null;
  }

  loadOriginal(): string | null {
    this.recover();
    const f = this.feed([{ orig: [0, this.w.original!.size] }]);
    if (f) return `its own saved state was refused at ${f.where}: ${f.errno}`;
    const e = this.setState(RUNNING);
    return e ? `RESUMING -> RUNNING after its own saved state failed with ${e}` : null;
  }

  bringBack(compare: boolean): void {
    const e = this.loadOriginal();
    if (e) {
      this.w.finding("no-return", `the device's own saved state no longer loads: ${e}`);
      throw new Stop();
    }
    if (!compare || !this.w.deterministic) return;
    const s = this.save();
    if ("error" in s) {
      this.w.finding("no-return", `after its own state was loaded back, the device no longer saves: ${s.error}`);
      throw new Stop();
    }
    if (s.sha !== this.w.original!.sha) {
      this.w.finding(
        "no-return",
        `after its own state was loaded back, the device saves other bytes (${s.size} bytes, was ${
          this.w.original!.size
        })`,
      );
    }
  }

  fuzzCase(k: number, m: Mutation): void {
    const w = this.w;
    w.caseName = `case ${k + 1}: ${m.name}`;
    w.caseStart = w.t.n + 1;
    w.t.send({ t: "case", phase: "fuzz", case: w.caseName });
    w.fuzz.cases++;
    this.recover();
    const f = this.feed(m.pieces);
    let accepted = false;
    if (f) {
      w.fuzz.refusedWrite++;
      this.reset();
    } else {
      const e = this.setState(RUNNING);
      if (e) {
        w.fuzz.refusedStop++;
        this.reset();
      } else {
        accepted = true;
        w.fuzz.accepted++;
        this.exercise();
        const s = this.save();
        if ("error" in s) w.finding("unsavable", `the accepted state (${w.caseName}) cannot be saved: ${s.error}`);
      }
    }
    this.bringBack(accepted || k % 8 === 0);
  }

  exercise(): void {
    for (const reg of this.w.regions) {
      const len = Math.min(reg.size, 4096);
      const rr = this.w.call({ op: "region-read", index: reg.index, offset: 0, len });
      if (rr.errno) continue;
      const back = this.w.t.x.lastRead.slice(0, reg.index === CONFIG_REGION ? len : Math.min(len, 64));
      this.w.call({ op: "region-write", index: reg.index, offset: 0, data: b64(back) });
    }
    this.state();
  }

  run(): void {
    const w = this.w;
    w.phase = "setup";
    const memfd = w.sys.memfd("vfio-mig-torture-original", 1);
    const head = new Uint8Array(64);
    const s = this.save((data, off) => {
      w.sys.pwrite(memfd, data, off);
      if (off < 64) head.set(data.subarray(0, 64 - off), off);
    });
    if ("error" in s) throw new Error(`cannot save the device's own state (v1): ${s.error}`);
    w.original = { fd: memfd, size: s.size, sha: s.sha, head: head.subarray(0, Math.min(64, s.size)) };
    w.t.x.original = { fd: memfd, size: s.size };
    const buf = new Uint8Array(CHUNK);
    for (let off = 0; off < s.size; off += CHUNK) {
      const n = w.sys.pread(memfd, buf.subarray(0, Math.min(CHUNK, s.size - off)), off);
      w.t.blob(off, buf.subarray(0, n));
    }
    const again = this.save();
    w.deterministic = !("error" in again) && again.sha === s.sha;
    w.fuzz.deterministic = w.deterministic;
    const structured = structuredCases(w.original.head, s.size);
    w.fuzz.format = knownFields(w.original.head, s.size).format;
    w.note(
      `v1 device (migration region ${this.index}, ${this.size} bytes): resume-data fuzzing only; saved state ` +
        `${s.size} bytes; saves ${w.deterministic ? "are deterministic" : "differ"}`,
    );
    if (w.opts.only === "stress") {
      w.note("--only stress: the session stress drives uAPI v2 only; nothing to do on a v1 device");
      return;
    }
    w.phase = "fuzz";
    for (let k = 0; k < w.opts.steps && Date.now() < w.deadline; k++) {
      this.fuzzCase(k, k < structured.length ? structured[k] : randomCase(w.rng, s.size));
    }
    w.phase = "end";
    this.recover();
  }
}
