// Stream fuzzing: valid streams (uAPI v2 offline and live, bulk and mtty-2, protocol v1)
// are mutated — bit flips, byte inserts and deletes, truncation at every record
// boundary, huge or negative-looking length fields, reordered, duplicated and dropped
// records, wrong checksums, re-checksummed corrupt data, trailers and headers, other
// devices' headers, splices, retagged records, garbage after the end — and each result
// is fed to `load` on a simulated device (the library API, one device per target kept
// open for the whole run) and to `inspect`. For every case:
//   - no uncaught exception: every failure is a VfioMigError (StreamError included);
//     inspect never throws;
//   - no hang: each load settles within a few seconds;
//   - nothing reaches the device (no data_fd write, no region write, no SET, no reset)
//     unless the header and identity are valid, and then only after the whole header
//     was read (the positions come from a recording simulated kernel);
//   - the bytes written to the device are the verified chunk data of the stream, in
//     order, each written only once its record was read and its CRC matched (checked
//     against an independent parse of the mutated stream);
//   - afterwards the device is RUNNING; reset if anything reached it and the load
//     failed, left alone if nothing did; holding the source's state after a success;
//   - memory stays bounded (peak RSS is reported and checked).
//
//   deno task fuzz [--count N] [--seed S] [--json]
//
// Exit status 1 when any case broke a rule (the report lists them).

import { crc32 as zcrc32 } from "node:zlib";
import { SysError } from "../../ffi/errno.ts";
import { FEATURE_FLAGS, IOCTL } from "../../ffi/vfio_uapi.ts";
import { libc } from "../../ffi/libc.ts";
import type { IoctlArg } from "../../ffi/sys.ts";
import { openDevice, type VfioDevice } from "../../src/device/open.ts";
import { VfioMigError } from "../../src/errors.ts";
import { inspectStream } from "../../src/inspect/inspect.ts";
import { load } from "../../src/migrate/load.ts";
import { save } from "../../src/migrate/save.ts";
import { Cancellation } from "../../src/migrate/session.ts";
import { DeviceState } from "../../src/vfio/state_machine.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";
import { V1_DATA_OFFSET, V1_REGION_INDEX } from "../../src/sim/v1_device.ts";
import { HEADER_FIXED, MAX_CHUNK, MAX_HEADER_JSON, TAG } from "../../src/stream/format.ts";
import { openSink, type Source } from "../../src/transport/transport.ts";
import { concat, MemorySource } from "../helpers/bytes.ts";

const host = libc();
const crc32 = (b: Uint8Array, prev = 0) => zcrc32(b, prev) >>> 0;
const LOAD_TIMEOUT_MS = 5000;

// ---------------------------------------------------------------------------
// Deterministic randomness

export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = (seed >>> 0) || 0x9e3779b9;
  }
  /** mulberry32 */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

// ---------------------------------------------------------------------------
// An independent parse of a (possibly damaged) stream: where the header ends, whether
// it is valid, and the records up to the first one that cannot be framed.

interface Rec {
  offset: number;
  end: number;
  tag: bigint;
  /** Sized records: payload offset, size, CRC matched. */
  at?: number;
  size?: number;
  crcOk?: boolean;
}

interface Parsed {
  headerEnd: number | null;
  /** Magic, version, length limit, CRC, JSON object with format and device. */
  headerOk: boolean;
  header: Record<string, unknown> | null;
  records: Rec[];
}

const KNOWN_TAGS = new Set<bigint>(
  Object.values(TAG).filter((t) => t !== TAG.DEVICE) as bigint[],
);
const isKnownTag = (t: bigint) => KNOWN_TAGS.has(t) || (t >= TAG.DEVICE && t < TAG.DEVICE + 256n);
const SIZED = new Set<bigint>([TAG.DEV_DATA_STATE, TAG.DEV_CONFIG_STATE]);
const MAGIC = [0x56, 0x46, 0x49, 0x4f, 0x4d, 0x49, 0x47, 0x00];

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export function parse(b: Uint8Array): Parsed {
  const out: Parsed = { headerEnd: null, headerOk: false, header: null, records: [] };
  if (b.length < HEADER_FIXED) return out;
  const v = view(b);
  const len = v.getUint32(12);
  if (len > MAX_HEADER_JSON || b.length < HEADER_FIXED + len + 4) return out;
  const end = HEADER_FIXED + len + 4;
  out.headerEnd = end;
  let ok = MAGIC.every((m, i) => b[i] === m) && v.getUint16(8) === 1;
  ok &&= crc32(b.subarray(0, HEADER_FIXED + len)) === v.getUint32(HEADER_FIXED + len);
  if (ok) {
    try {
      const h = JSON.parse(
        new TextDecoder("utf-8", { fatal: true }).decode(b.subarray(HEADER_FIXED, HEADER_FIXED + len)),
      );
      if (typeof h === "object" && h !== null && h.format === "vfio-mig" && typeof h.device === "object" && h.device) {
        out.header = h;
      } else ok = false;
    } catch {
      ok = false;
    }
  }
  out.headerOk = ok;
  let p = end;
  while (p + 8 <= b.length) {
    const tag = v.getBigUint64(p);
    if (!isKnownTag(tag)) break;
    if (tag === TAG.STREAM_END) {
      if (p + 32 > b.length) break;
      out.records.push({ offset: p, end: p + 32, tag });
      p += 32;
      continue;
    }
    if (!SIZED.has(tag)) {
      out.records.push({ offset: p, end: p + 8, tag });
      p += 8;
      continue;
    }
    if (p + 20 > b.length) break;
    const size = v.getBigUint64(p + 8);
    if (size > BigInt(MAX_CHUNK)) break;
    const n = Number(size);
    if (p + 20 + n > b.length) break;
    const crcOk = crc32(b.subarray(p + 20, p + 20 + n)) === v.getUint32(p + 16);
    out.records.push({ offset: p, end: p + 20 + n, tag, at: p + 20, size: n, crcOk });
    p += 20 + n;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Building blocks for mutations

/** A header around arbitrary JSON text, with a correct CRC. */
function headerOf(json: string): Uint8Array {
  const j = new TextEncoder().encode(json);
  const b = new Uint8Array(HEADER_FIXED + j.length + 4);
  b.set(MAGIC, 0);
  view(b).setUint16(8, 1);
  view(b).setUint32(12, j.length);
  b.set(j, HEADER_FIXED);
  view(b).setUint32(HEADER_FIXED + j.length, crc32(b.subarray(0, HEADER_FIXED + j.length)));
  return b;
}

function recomputeCrc(b: Uint8Array, r: Rec): void {
  view(b).setUint32(r.offset + 16, crc32(b.subarray(r.at!, r.at! + r.size!)));
}

// ---------------------------------------------------------------------------
// Targets: a device, and the valid streams saved for it

interface Base {
  name: string;
  bytes: Uint8Array;
  parsed: Parsed;
  target: Target;
}

interface Target {
  name: string;
  dir: string;
  protocol: "v1" | "v2";
  dev: VfioDevice;
  /** CRC of the state the target holds after a successful load (its source's). */
  sourceCrc: number;
  /** CRC of the target's state now. */
  crc: number;
  identity: Record<string, unknown>;
}

/** The simulated kernel, recording what reaches a device and how far the stream had been read then. */
class RecordingKernel extends SimKernel {
  events: { kind: "write" | "pwrite" | "set" | "reset"; pos: number; bytes?: Uint8Array; offset?: number }[] = [];
  pos = 0;
  override write(fd: number, buf: Uint8Array): number {
    this.events.push({ kind: "write", pos: this.pos, bytes: buf.slice() });
    return super.write(fd, buf);
  }
  override pwrite(fd: number, buf: Uint8Array, offset: number): number {
    this.events.push({ kind: "pwrite", pos: this.pos, bytes: buf.slice(), offset });
    return super.pwrite(fd, buf, offset);
  }
  override ioctl(fd: number, request: number, arg: IoctlArg): number {
    if (request === IOCTL.DEVICE_RESET) this.events.push({ kind: "reset", pos: this.pos });
    else if (request === IOCTL.DEVICE_FEATURE && arg instanceof Uint8Array && arg.length >= 8) {
      const flags = view(arg).getUint32(4, true);
      if (flags & FEATURE_FLAGS.SET && !(flags & FEATURE_FLAGS.PROBE)) this.events.push({ kind: "set", pos: this.pos });
    }
    return super.ioctl(fd, request, arg);
  }
}

/** The mutated stream, telling the kernel how far it has been read. */
class TrackedSource implements Source {
  readonly label = "fuzzed stream";
  #pos = 0;
  constructor(readonly data: Uint8Array, readonly k: RecordingKernel) {}
  read(buf: Uint8Array): number {
    const n = Math.min(buf.length, this.data.length - this.#pos);
    buf.set(this.data.subarray(this.#pos, this.#pos + n));
    this.#pos += n;
    this.k.pos = this.#pos;
    return n;
  }
  close(): void {}
}

const stateCrc = (dir: string) => crc32(Deno.readFileSync(`${dir}/state.bin`));

async function saveStream(k: SimKernel, dir: string, file: string, live: boolean, chunkSize?: number) {
  const d = openDevice(k, `sim:${dir}`);
  try {
    await save(d, openSink(k, file), { live, resume: true, chunkSize, created: new Date(0) });
  } finally {
    d.close();
  }
  return Deno.readFileSync(file);
}

async function setup(root: string, k: RecordingKernel): Promise<{ bases: Base[]; extraHeaders: Uint8Array[] }> {
  const mk = (name: string, o: Parameters<SimStore["create"]>[0]) => {
    new SimStore(host, `${root}/${name}`).create(o);
    return `${root}/${name}`;
  };
  const b2src = mk("b2src", { model: "bulk", size: 12_000, seed: 1 });
  const b2dst = mk("b2dst", { model: "bulk", size: 12_000, seed: 2 });
  const m2src = mk("m2src", { model: "mtty-2", seed: 3 });
  const m2dst = mk("m2dst", { model: "mtty-2", seed: 4 });
  const v1src = mk("v1src", { model: "bulk", size: 12_000, seed: 5, protocol: "v1", dataSize: 4096, sparse: "full" });
  // The v1 destination without mmap: the data goes through pwrite, where it can be seen.
  const v1dst = mk("v1dst", { model: "bulk", size: 12_000, seed: 6, protocol: "v1", dataSize: 4096, sparse: "none" });
  const other1 = mk("other-m1", { model: "mtty-1", seed: 7 });
  const other2 = mk("other-bulk", { model: "bulk", size: 5_000, seed: 8 });
  const plain = new SimKernel(host);
  const streams = {
    b2: await saveStream(plain, b2src, `${root}/b2.vfmig`, false, 2048),
    b2live: await saveStream(plain, b2src, `${root}/b2live.vfmig`, true, 2048),
    m2: await saveStream(plain, m2src, `${root}/m2.vfmig`, false),
    m2live: await saveStream(plain, m2src, `${root}/m2live.vfmig`, true),
    v1: await saveStream(plain, v1src, `${root}/v1.vfmig`, false),
    m1: await saveStream(plain, other1, `${root}/m1.vfmig`, false),
    bulk5k: await saveStream(plain, other2, `${root}/bulk5k.vfmig`, false, 2048),
  };
  const target = (name: string, dir: string, src: string, protocol: "v1" | "v2", stream: Uint8Array): Target => ({
    name,
    dir,
    protocol,
    dev: openDevice(k, `sim:${dir}`),
    sourceCrc: stateCrc(src),
    crc: stateCrc(dir),
    identity: parse(stream).header!.device as Record<string, unknown>,
  });
  const tb = target("bulk v2", b2dst, b2src, "v2", streams.b2);
  const tm = target("mtty-2 v2", m2dst, m2src, "v2", streams.m2);
  const tv = target("bulk v1", v1dst, v1src, "v1", streams.v1);
  const base = (name: string, bytes: Uint8Array, t: Target): Base => ({ name, bytes, parsed: parse(bytes), target: t });
  const bases = [
    base("bulk v2 offline", streams.b2, tb),
    base("bulk v2 live", streams.b2live, tb),
    base("mtty-2 v2 offline", streams.m2, tm),
    base("mtty-2 v2 live", streams.m2live, tm),
    base("bulk v1", streams.v1, tv),
  ];
  for (const b of bases) {
    if (!b.parsed.headerOk || b.parsed.records.at(-1)?.tag !== TAG.STREAM_END) throw new Error(`${b.name}: bad base`);
  }
  const hdr = (s: Uint8Array) => s.subarray(0, parse(s).headerEnd!);
  return {
    bases,
    extraHeaders: [hdr(streams.m1), hdr(streams.bulk5k), hdr(streams.v1), hdr(streams.b2), hdr(streams.m2)],
  };
}

// ---------------------------------------------------------------------------
// Mutators

type Mutator = (b: Base, r: Rng, ctx: { bases: Base[]; extraHeaders: Uint8Array[] }) => Uint8Array;

const sizedRecs = (b: Base) => b.parsed.records.filter((x) => x.size !== undefined);
const dataRecs = (b: Base) => b.parsed.records.filter((x) => x.tag === TAG.DEV_DATA_STATE);

const MUTATORS: Record<string, Mutator> = {
  "bit flips": (b, r) => {
    const m = b.bytes.slice();
    for (let i = 1 + r.int(4); i > 0; i--) m[r.int(m.length)] ^= 1 << r.int(8);
    return m;
  },
  "bit flips after the header": (b, r) => {
    const m = b.bytes.slice();
    const h = b.parsed.headerEnd!;
    for (let i = 1 + r.int(3); i > 0; i--) m[h + r.int(m.length - h)] ^= 1 << r.int(8);
    return m;
  },
  "byte insert": (b, r) => {
    const at = r.int(b.bytes.length + 1);
    return concat([b.bytes.subarray(0, at), r.bytes(1 + r.int(8)), b.bytes.subarray(at)]);
  },
  "byte delete": (b, r) => {
    const at = r.int(b.bytes.length);
    return concat([b.bytes.subarray(0, at), b.bytes.subarray(Math.min(b.bytes.length, at + 1 + r.int(8)))]);
  },
  "truncation": (b, r) => b.bytes.slice(0, r.int(b.bytes.length)),
  "truncation near a record boundary": (b, r) => {
    const rec = r.pick(b.parsed.records);
    return b.bytes.slice(0, Math.max(0, rec.offset + r.pick([-1, 0, 1, 7, 8, 9, 19, 20, 21])));
  },
  "huge or negative-looking length": (b, r) => {
    const m = b.bytes.slice();
    const rec = r.pick(sizedRecs(b));
    const size = r.pick([
      2n ** 64n - 1n,
      2n ** 63n,
      2n ** 63n - 1n,
      2n ** 53n + 1n,
      2n ** 32n,
      2n ** 32n - 1n,
      2n ** 31n,
      BigInt(MAX_CHUNK) + 1n,
      BigInt(MAX_CHUNK),
      BigInt(rec.size! + 1),
      BigInt(Math.max(0, rec.size! - 1)),
      0n,
      BigInt(r.int(1 << 30)),
    ]);
    view(m).setBigUint64(rec.offset + 8, size);
    return m;
  },
  "header length field": (b, r) => {
    const m = b.bytes.slice();
    const len = view(m).getUint32(12);
    view(m).setUint32(
      12,
      r.pick([0xffffffff, 0x80000000, MAX_HEADER_JSON + 1, MAX_HEADER_JSON, len + 1, len - 1, 0, r.int(1 << 20)]),
    );
    return m;
  },
  "records reordered": (b, r) => {
    const recs = b.parsed.records;
    const i = r.int(recs.length);
    let j = r.int(recs.length);
    if (j === i) j = (j + 1) % recs.length;
    const [x, y] = i < j ? [recs[i], recs[j]] : [recs[j], recs[i]];
    const s = b.bytes;
    return concat([
      s.subarray(0, x.offset),
      s.subarray(y.offset, y.end),
      s.subarray(x.end, y.offset),
      s.subarray(x.offset, x.end),
      s.subarray(y.end),
    ]);
  },
  "record duplicated": (b, r) => {
    const rec = r.pick(b.parsed.records);
    const at = r.pick(b.parsed.records).offset;
    const s = b.bytes;
    return concat([s.subarray(0, at), s.subarray(rec.offset, rec.end), s.subarray(at)]);
  },
  "record dropped": (b, r) => {
    const rec = r.pick(b.parsed.records);
    return concat([b.bytes.subarray(0, rec.offset), b.bytes.subarray(rec.end)]);
  },
  "wrong checksum": (b, r) => {
    const m = b.bytes.slice();
    const which = r.int(3);
    const trailer = b.parsed.records.at(-1)!;
    if (which === 0) m[b.parsed.headerEnd! - 1 - r.int(4)] ^= 1 + r.int(255); // the header's
    else if (which === 1) m[trailer.end - 1 - r.int(4)] ^= 1 + r.int(255); // the trailer's
    else m[r.pick(sizedRecs(b)).offset + 16 + r.int(4)] ^= 1 + r.int(255); // a record's
    return m;
  },
  "corrupt data with a matching checksum": (b, r) => {
    const m = b.bytes.slice();
    const rec = r.pick(sizedRecs(b));
    if (rec.size! > 0) m[rec.at! + r.int(rec.size!)] ^= 1 << r.int(8);
    recomputeCrc(m, rec);
    return m;
  },
  "trailer totals rewritten with a valid trailer checksum": (b, r) => {
    const m = b.bytes.slice();
    const t = b.parsed.records.at(-1)!;
    const v = view(m);
    const f = r.int(3);
    if (f === 0) v.setBigUint64(t.offset + 8, BigInt(r.int(1 << 20)));
    else if (f === 1) v.setBigUint64(t.offset + 16, r.pick([0n, 1n, 2n ** 64n - 1n, BigInt(r.int(100))]));
    else v.setUint32(t.offset + 24, r.int(2 ** 32));
    v.setUint32(t.offset + 28, crc32(m.subarray(t.offset + 8, t.offset + 28)));
    return m;
  },
  "header JSON changed, checksum valid": (b, r) => {
    const h = structuredClone(b.parsed.header!) as Record<string, unknown>;
    const dev = h.device as Record<string, unknown>;
    const k = r.int(12);
    if (k === 0) dev.vendor = r.pick([null, 0, 0xffff, "0x1b36", (dev.vendor as number) + 1]);
    else if (k === 1) dev.model = r.pick(["mtty-1", "bulk", "mtty-2", undefined, 7]);
    else if (k === 2) h.protocol = r.pick(["v1", "v2", "v3", null, 2]);
    else if (k === 3) h.device = r.pick([null, {}, [], "device", 1]);
    else if (k === 4) delete h.format;
    else if (k === 5) h.format = "vfio-mig2";
    else if (k === 6) dev.driver = r.pick([null, "vfio-pci", "mlx5_vfio_pci", "", "two\nlines", "\u001b[31mred"]);
    else if (k === 7) dev.mdevType = r.pick([null, "mtty-1", "mtty-2", "x".repeat(1000), "a\nb", { n: 1 }]);
    else if (k === 8) h.sizeEstimate = r.pick([-1, 2 ** 60, "big", null, 1e308]);
    else if (k === 9) h.mode = r.pick(["live", "offline", "warp", null]);
    else if (k === 10) dev.subsystemDevice = r.pick([null, -1, 1.5, 2 ** 53]);
    else {
      h.devices = r.pick([[], [h.device], [{ source: "a\nb", device: h.device }], "x", null]);
    }
    return concat([headerOf(JSON.stringify(h)), b.bytes.subarray(b.parsed.headerEnd!)]);
  },
  "header text that is not the expected JSON, checksum valid": (b, r) => {
    const json = r.pick([
      "",
      "null",
      "[]",
      "42",
      '"vfio-mig"',
      "{",
      '{"format":"vfio-mig"}',
      '{"format":"vfio-mig","device":null}',
      `{"format":"vfio-mig","device":{},"protocol":"v2"}`,
      "[".repeat(5000) + "]".repeat(5000),
      `{"format":"vfio-mig","device":${JSON.stringify(b.target.identity)},"protocol":"v2","x":"${"y".repeat(60_000)}"}`,
      new TextDecoder().decode(r.bytes(40)),
    ]);
    return concat([headerOf(json), b.bytes.subarray(b.parsed.headerEnd!)]);
  },
  "another device's header": (b, r, ctx) => concat([r.pick(ctx.extraHeaders), b.bytes.subarray(b.parsed.headerEnd!)]),
  "spliced with another stream of the same device": (b, r, ctx) => {
    const same = ctx.bases.filter((x) => x.target === b.target);
    const o = r.pick(same);
    const a = r.pick(b.parsed.records).offset;
    const c = r.pick(o.parsed.records).offset;
    return concat([b.bytes.subarray(0, a), o.bytes.subarray(c)]);
  },
  "record retagged": (b, r) => {
    const m = b.bytes.slice();
    const rec = r.pick(b.parsed.records);
    const tags = [...Object.values(TAG), TAG.DEVICE + 1n, TAG.DEVICE + 255n, 0xffffffffef100006n, 0n];
    view(m).setBigUint64(rec.offset, r.pick(tags) as bigint);
    return m;
  },
  "config section changed, checksum valid": (b, r) => {
    const m = b.bytes.slice();
    const cfg = b.parsed.records.find((x) => x.tag === TAG.DEV_CONFIG_STATE);
    if (!cfg) return m;
    for (let i = 1 + r.int(3); i > 0; i--) {
      m[cfg.at! + r.int(Math.min(cfg.size!, r.pick([24, 64, cfg.size!])))] ^= 1 << r.int(8);
    }
    recomputeCrc(m, cfg);
    return m;
  },
  "bytes after the end": (b, r) => concat([b.bytes, r.bytes(1 + r.int(40))]),
  "data chunk emptied, checksums valid": (b, r) => {
    const rec = r.pick(dataRecs(b));
    const hdr = new Uint8Array(20);
    view(hdr).setBigUint64(0, TAG.DEV_DATA_STATE);
    view(hdr).setUint32(16, crc32(new Uint8Array(0)));
    return concat([b.bytes.subarray(0, rec.offset), hdr, b.bytes.subarray(rec.end)]);
  },
};

const MUTATOR_NAMES = Object.keys(MUTATORS);

// ---------------------------------------------------------------------------
// One case

/**
 * Signals are not what is fuzzed: checkpoints check without yielding to the timer
 * loop (a setTimeout per load would cost more than the load of these small streams).
 */
class NoYield extends Cancellation {
  override checkpoint(): Promise<void> {
    this.check();
    return Promise.resolve();
  }
}
const noYield = new NoYield();

function identityMatches(h: Record<string, unknown>, t: Target): boolean {
  const d = h.device as Record<string, unknown>;
  const want = t.identity;
  for (const k of ["vendor", "device", "subsystemVendor", "subsystemDevice", "driver"]) {
    if (d[k] !== want[k]) return false;
  }
  for (const k of ["mdevType", "model"]) if ((d[k] ?? null) !== (want[k] ?? null)) return false;
  return true;
}

interface CaseResult {
  outcome: string;
  problems: string[];
}

async function runCase(k: RecordingKernel, base: Base, bytes: Uint8Array): Promise<CaseResult> {
  const t = base.target;
  const p = parse(bytes);
  const problems: string[] = [];
  const valid = p.headerOk && p.header !== null && p.header.protocol === t.protocol && identityMatches(p.header, t);

  // load
  k.events = [];
  k.pos = 0;
  let error: unknown = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      load(t.dev, new TrackedSource(bytes, k), { protocol: "auto", cancel: noYield }),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("HANG: the load did not settle")), LOAD_TIMEOUT_MS);
      }),
    ]);
  } catch (e) {
    error = e;
  } finally {
    clearTimeout(timer);
  }
  const ok = error === null;
  let outcome = ok ? "loaded" : "refused";
  if (error !== null && !(error instanceof VfioMigError)) {
    problems.push(`uncaught ${error instanceof Error ? error.stack : String(error)}`);
    outcome = "uncaught";
  } else if (error instanceof VfioMigError) {
    outcome = `refused (exit ${error.exitCode})`;
    // A programming error wrapped into the one-line message is still a programming error.
    let root: unknown = error;
    while (root instanceof Error && root.cause !== undefined) root = root.cause;
    if (root instanceof Error && !(root instanceof VfioMigError) && !(root instanceof SysError)) {
      problems.push(`an internal error behind the message: ${root.stack}`);
      outcome = "uncaught";
    }
    // deno-lint-ignore no-control-regex
    if (/[\x00-\x1f]/.test(error.message)) problems.push(`the error is not one line: ${JSON.stringify(error.message)}`);
  }

  // Nothing reaches the device before the header and identity are valid.
  const changes = k.events;
  if (!valid && changes.length) {
    problems.push(`the device was changed (${changes[0].kind}) although the header or identity is invalid`);
  }
  if (changes.length && p.headerEnd !== null && changes[0].pos < p.headerEnd) {
    problems.push(`the device was changed (${changes[0].kind}) at byte ${changes[0].pos}, before the header ended`);
  }

  // Data written = verified chunk data, in order, each chunk only once read and checked.
  const chunks: Rec[] = [];
  for (const r of p.records) {
    if (r.size !== undefined && !r.crcOk) break; // the load stops at the first bad record
    if (r.tag === TAG.DEV_DATA_STATE) chunks.push(r);
  }
  const isData = (e: (typeof changes)[number]) =>
    t.protocol === "v2"
      ? e.kind === "write"
      : e.kind === "pwrite" && e.offset! - V1_REGION_INDEX * 2 ** 40 >= V1_DATA_OFFSET;
  let written = 0;
  let ci = 0; // chunk being written
  let inChunk = 0; // bytes of it written
  for (const e of changes.filter(isData)) {
    const b = e.bytes!;
    let off = 0;
    while (off < b.length) {
      const c = chunks[ci];
      if (!c) {
        problems.push(`${b.length - off} bytes written beyond the stream's verified chunks`);
        break;
      }
      if (e.pos < c.end) {
        problems.push(`chunk at byte ${c.offset} written before it was read whole (read up to ${e.pos})`);
        break;
      }
      const take = Math.min(b.length - off, c.size! - inChunk);
      const want = bytes.subarray(c.at! + inChunk, c.at! + inChunk + take);
      if (!want.every((x, i) => x === b[off + i])) {
        problems.push(`bytes written differ from chunk at byte ${c.offset}`);
        break;
      }
      off += take;
      inChunk += take;
      written += take;
      if (inChunk === c.size) {
        ci++;
        inChunk = 0;
        while (chunks[ci] && chunks[ci].size === 0) ci++;
      }
    }
    if (problems.length) break;
  }

  // The device afterwards.
  const st = new SimStore(host, t.dir).readMeta().state;
  if (st !== DeviceState.RUNNING) problems.push(`device left ${DeviceState[st]}`);
  const crc = stateCrc(t.dir);
  const reset = changes.some((e) => e.kind === "reset");
  if (ok) {
    if (crc !== t.sourceCrc) problems.push("a successful load left a state that is not the source's");
  } else {
    if (changes.length && !reset) problems.push("the load failed after changing the device but did not reset it");
    if (!changes.length && crc !== t.crc) problems.push("an untouched device's state changed");
    if (crc !== t.crc && crc !== t.sourceCrc) problems.push("a failed load left a state that is neither old nor new");
  }
  t.crc = crc;

  // inspect: never throws; a stream that loads is one it finds nothing wrong with.
  try {
    const rep = inspectStream(new MemorySource(bytes));
    if (ok && !rep.ok) problems.push(`inspect finds a problem in a stream that loaded: ${rep.firstProblem?.message}`);
  } catch (e) {
    problems.push(`inspect threw ${e instanceof Error ? e.stack : e}`);
  }
  void written;
  return { outcome, problems };
}

// ---------------------------------------------------------------------------
// The run

export interface FuzzReport {
  seed: number;
  cases: number;
  seconds: number;
  casesPerSecond: number;
  outcomes: Record<string, number>;
  mutators: Record<string, number>;
  /** Peak resident set size during the run, MiB, and at the start. */
  peakRssMiB: number;
  startRssMiB: number;
  failures: string[];
}

export async function runFuzz(count: number, seed: number, progress?: (n: number) => void): Promise<FuzzReport> {
  const root = await Deno.makeTempDir({ prefix: "vfio-mig-fuzz-" });
  const k = new RecordingKernel(host);
  const rng = new Rng(seed);
  const outcomes: Record<string, number> = {};
  const mutators: Record<string, number> = {};
  const failures: string[] = [];
  const startRss = Deno.memoryUsage().rss;
  let peakRss = startRss;
  const t0 = performance.now();
  let n = 0;
  try {
    const ctx = await setup(root, k);
    const run = async (what: string, base: Base, bytes: Uint8Array) => {
      const r = await runCase(k, base, bytes);
      n++;
      outcomes[r.outcome] = (outcomes[r.outcome] ?? 0) + 1;
      mutators[what] = (mutators[what] ?? 0) + 1;
      if (r.problems.length && failures.length < 50) {
        failures.push(`case ${n} (${base.name}, ${what}): ${r.problems.join("; ")}`);
      }
      if (n % 250 === 0) {
        peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
        progress?.(n);
      }
    };
    // The unmutated streams load.
    for (const b of ctx.bases) await run("none", b, b.bytes);
    // Truncation at every record boundary (and inside the header), each base.
    for (const b of ctx.bases) {
      const cuts = new Set<number>([0, 1, 8, 12, 15, 16, b.parsed.headerEnd! - 1]);
      for (const rec of b.parsed.records) for (const d of [0, 8, 20]) cuts.add(Math.min(rec.offset + d, rec.end - 1));
      for (const c of [...cuts].sort((x, y) => x - y)) {
        if (n >= count) break;
        await run("truncation at a record boundary", b, b.bytes.slice(0, c));
      }
    }
    while (n < count) {
      const b = rng.pick(ctx.bases);
      const name = rng.pick(MUTATOR_NAMES);
      await run(name, b, MUTATORS[name](b, rng, ctx));
    }
    peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
    for (const b of ctx.bases) b.target.dev.close();
  } finally {
    k.closeLog();
    await Deno.remove(root, { recursive: true });
  }
  const seconds = (performance.now() - t0) / 1000;
  return {
    seed,
    cases: n,
    seconds,
    casesPerSecond: n / seconds,
    outcomes,
    mutators,
    peakRssMiB: peakRss / 2 ** 20,
    startRssMiB: startRss / 2 ** 20,
    failures,
  };
}

function arg(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = Number(args[i + 1]);
  if (!Number.isInteger(v) || v < 0) {
    console.error(`fuzz: ${name} takes a non-negative integer`);
    Deno.exit(2);
  }
  return v;
}

if (import.meta.main) {
  const args = Deno.args;
  const count = arg(args, "--count", 20_000);
  const seed = arg(args, "--seed", 1);
  const json = args.includes("--json");
  const r = await runFuzz(
    count,
    seed,
    json ? undefined : (n) => {
      if (n % 5000 === 0) console.error(`fuzz: ${n} cases`);
    },
  );
  if (json) console.log(JSON.stringify(r));
  else {
    console.log(
      `fuzz: seed ${r.seed}, ${r.cases} cases in ${r.seconds.toFixed(1)} s (${r.casesPerSecond.toFixed(0)} cases/s), ` +
        `peak RSS ${r.peakRssMiB.toFixed(0)} MiB (start ${r.startRssMiB.toFixed(0)} MiB)`,
    );
    console.log(`outcomes: ${JSON.stringify(r.outcomes)}`);
    console.log(`mutations: ${JSON.stringify(r.mutators)}`);
    for (const f of r.failures) console.log(`FAIL ${f}`);
    console.log(r.failures.length ? `${r.failures.length}+ cases broke a rule` : "no case broke a rule");
  }
  Deno.exit(r.failures.length ? 1 : 0);
}
