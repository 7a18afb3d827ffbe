// `vfio-mig inspect`: what a vfio-mig stream holds, without a device: the header and
// device identity, every record with its size and checksum, the sections (setup,
// pre-copy, stop-copy, config, trailer), totals, a decoded payload, and where the
// stream is damaged. Unlike StreamReader it does not stop at the first problem: a
// bad checksum is noted and reading goes on; a tag it cannot frame makes it look
// for the next recognisable tag. Record data is streamed through (checksummed in
// pieces), never buffered by its stated length.

import {
  CHUNK_HEADER,
  crc32,
  FORMAT_VERSION,
  HEADER_FIXED,
  MAX_CHUNK,
  MAX_HEADER_JSON,
  SIZED_TAGS,
  STREAM_MAGIC,
  type StreamHeader,
  TAG,
  tagName,
  TRAILER_SIZE,
} from "../stream/format.ts";
import type { Source } from "../transport/transport.ts";
import { PayloadInspector, type PayloadSummary } from "./payload.ts";
import { ByteScanner } from "./scanner.ts";

export interface Problem {
  /** Byte offset in the stream where the problem is. */
  offset: number;
  message: string;
}

/** "data": device data of a protocol v1 stream, which has no SWITCHOVER marker. */
export type SectionName = "setup" | "pre-copy" | "stop-copy" | "data" | "config" | "trailer";

export interface RecordInfo {
  index: number;
  offset: number;
  tag: string;
  section: SectionName;
  /** Payload bytes of a sized record (DEV_DATA_STATE, DEV_CONFIG_STATE). */
  size?: number;
  /** Checksum of a sized record's payload; "truncated" when it ends early. */
  crc?: "ok" | "bad" | "truncated";
  /** Found after skipping unframeable bytes: take its position with care. */
  resynced?: boolean;
}

export interface SectionInfo {
  name: SectionName;
  offset: number;
  records: number;
  chunks: number;
  bytes: number;
}

export interface InspectReport {
  /** No problem found: the stream would load (device permitting). */
  ok: boolean;
  streamBytes: number;
  header: {
    version: number;
    jsonBytes: number;
    checksum: "ok" | "bad";
    fields: StreamHeader | null;
  } | null;
  records: RecordInfo[];
  sections: SectionInfo[];
  totals: {
    records: number;
    chunks: number;
    dataBytes: number;
    /** Device data before / after the SWITCHOVER tag (null for streams without one, e.g. protocol v1). */
    precopyBytes: number | null;
    stopCopyBytes: number | null;
    configBytes: number;
    badChecksums: number;
  };
  trailer: {
    offset: number;
    dataBytes: number;
    chunks: number;
    dataCrc: string;
    checksum: "ok" | "bad";
    /** The trailer's counts and CRC agree with the data read. */
    matches: boolean;
  } | null;
  payload: PayloadSummary | null;
  problems: Problem[];
  /** problems[0]: the first thing wrong, with its offset. */
  firstProblem: Problem | null;
}

export interface InspectOptions {
  /** Bytes of each sized record's data passed to onRecord (0: none). */
  dumpBytes?: number;
  /** Called once the header is read (before the records), with the report so far. */
  onHeader?: (r: InspectReport) => void;
  /** Called as each record is complete, with the first dumpBytes of its data. */
  onRecord?: (r: RecordInfo, head: Uint8Array | null) => void;
  /** Problems kept in the report (the first is always kept). Default 50. */
  maxProblems?: number;
}

/** The record order of load.ts: v2 and protocol v1 (QEMU 7.2-style) streams. */
type Phase = "setup" | "setup-end" | "iterate" | "stop-copy" | "after-data" | "config-end" | "trailer";

function expectation(phase: Phase, v1: boolean): string {
  switch (phase) {
    case "setup":
      return "DEV_SETUP_STATE";
    case "setup-end":
      return "END_OF_STATE after DEV_SETUP_STATE";
    case "iterate":
      return v1
        ? "device data, END_OF_STATE, DEV_CONFIG_STATE or the stream trailer"
        : "device data, END_OF_STATE, DEV_INIT_DATA_SENT or SWITCHOVER";
    case "stop-copy":
      return "device data or END_OF_STATE";
    case "after-data":
      return "DEV_CONFIG_STATE or the stream trailer";
    case "config-end":
      return "END_OF_STATE after DEV_CONFIG_STATE";
    case "trailer":
      return "the stream trailer";
  }
}

const hex32 = (n: number) => `0x${(n >>> 0).toString(16).padStart(8, "0")}`;

export function inspectStream(src: Source, opts: InspectOptions = {}): InspectReport {
  const sc = new ByteScanner(src);
  const dumpBytes = Math.max(0, Math.min(opts.dumpBytes ?? 0, MAX_CHUNK));
  const maxProblems = Math.max(1, opts.maxProblems ?? 50);
  const report: InspectReport = {
    ok: false,
    streamBytes: 0,
    header: null,
    records: [],
    sections: [],
    totals: {
      records: 0,
      chunks: 0,
      dataBytes: 0,
      precopyBytes: 0,
      stopCopyBytes: 0,
      configBytes: 0,
      badChecksums: 0,
    },
    trailer: null,
    payload: null,
    problems: [],
    firstProblem: null,
  };
  let omitted = 0;
  const problem = (offset: number, message: string) => {
    if (report.problems.length < maxProblems) report.problems.push({ offset, message });
    else omitted++;
  };
  const payload = new PayloadInspector();
  let sawData = false;

  const finish = (): InspectReport => {
    report.streamBytes = sc.offset;
    if (omitted) report.problems.push({ offset: sc.offset, message: `${omitted} more problems not listed` });
    if (sawData) report.payload = payload.finish();
    report.firstProblem = report.problems[0] ?? null;
    report.ok = report.problems.length === 0;
    return report;
  };

  // -- header ---------------------------------------------------------------
  const fixed = sc.take(HEADER_FIXED)?.slice();
  if (!fixed) {
    const have = sc.available(HEADER_FIXED);
    const lead = sc.peek(have) ?? new Uint8Array();
    const magicOk = lead.subarray(0, STREAM_MAGIC.length).every((b, i) => b === STREAM_MAGIC[i]);
    sc.skip(have);
    problem(
      0,
      have === 0
        ? "empty stream (expected the 16-byte vfio-mig header)"
        : magicOk
        ? `truncated: the stream ends inside the 16-byte header (${have} bytes present)`
        : `not a vfio-mig stream: ${have} bytes without the "VFIOMIG\\0" magic`,
    );
    return finish();
  }
  for (let i = 0; i < STREAM_MAGIC.length; i++) {
    if (fixed[i] !== STREAM_MAGIC[i]) {
      const got = [...fixed.subarray(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
      problem(0, `not a vfio-mig stream: bad magic ${got} (expected "VFIOMIG\\0")`);
      return finish();
    }
  }
  const hv = new DataView(fixed.buffer);
  const version = hv.getUint16(8);
  if (version !== FORMAT_VERSION) {
    problem(8, `stream format version ${version} (expected ${FORMAT_VERSION}, the only one this vfio-mig reads)`);
    return finish();
  }
  const jsonLen = hv.getUint32(12);
  let v1 = false;
  if (jsonLen > MAX_HEADER_JSON) {
    problem(12, `header length ${jsonLen} exceeds the ${MAX_HEADER_JSON}-byte limit (corrupted length field?)`);
    if (!resync(sc)) return finish();
  } else {
    const json = sc.take(jsonLen)?.slice();
    const crcBytes = json ? sc.take(4)?.slice() : undefined;
    if (!json || !crcBytes) {
      const have = sc.available(jsonLen + 4);
      sc.skip(have);
      problem(
        HEADER_FIXED,
        `truncated: the stream ends inside the header (${json ? jsonLen + have : have} of ${jsonLen + 4} bytes ` +
          `of JSON and checksum present)`,
      );
      return finish();
    }
    const want = new DataView(crcBytes.buffer).getUint32(0);
    const got = crc32(json, crc32(fixed));
    if (want !== got) {
      // The checksum covers the whole header: the damage is somewhere from byte 0 on.
      problem(
        0,
        `header checksum mismatch: stored ${hex32(want)}, computed ${hex32(got)} over bytes 0-${
          HEADER_FIXED + jsonLen - 1
        }`,
      );
    }
    let fields: StreamHeader | null = null;
    try {
      const parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
      if (
        typeof parsed !== "object" || parsed === null || parsed.format !== "vfio-mig" ||
        typeof parsed.device !== "object"
      ) {
        problem(HEADER_FIXED, `header JSON lacks the vfio-mig fields (format "vfio-mig", device)`);
      }
      fields = typeof parsed === "object" && parsed !== null ? parsed : null;
    } catch {
      problem(HEADER_FIXED, "header is not valid UTF-8 JSON");
    }
    v1 = fields?.protocol === "v1";
    report.header = { version, jsonBytes: jsonLen, checksum: want === got ? "ok" : "bad", fields };
  }

  opts.onHeader?.(report);

  // -- records --------------------------------------------------------------
  let phase: Phase = "setup";
  let afterEnd = false;
  let switchover = false;
  let resynced = false;
  let dataCrc = 0;
  const sections = { current: null as SectionInfo | null, fresh: false };
  const enter = (name: SectionName, offset: number): SectionInfo => {
    const cur = sections.current;
    if (cur && cur.name === name && !sections.fresh) return cur;
    const next: SectionInfo = { name, offset, records: 0, chunks: 0, bytes: 0 };
    report.sections.push(next);
    sections.current = next;
    sections.fresh = false;
    return next;
  };
  const push = (r: RecordInfo, head: Uint8Array | null) => {
    report.records.push(r);
    report.totals.records++;
    opts.onRecord?.(r, head);
  };

  for (;;) {
    const offset = sc.offset;
    if (sc.atEnd()) {
      problem(
        offset,
        `truncated: the stream ends after ${report.totals.records} records without the STREAM_END trailer ` +
          `(expected ${expectation(phase, v1)})`,
      );
      break;
    }
    const tb = sc.take(8);
    if (!tb) {
      const have = sc.available(8);
      sc.skip(have);
      problem(offset, `truncated: the stream ends inside a record tag (${have} of 8 bytes present)`);
      break;
    }
    const tag = new DataView(tb.buffer, tb.byteOffset, 8).getBigUint64(0);
    const name = tagName(tag);
    if (!name) {
      problem(
        offset,
        `unknown record tag 0x${tag.toString(16).padStart(16, "0")} (expected ${expectation(phase, v1)})`,
      );
      if (!resync(sc)) break;
      resynced = true;
      continue;
    }
    const index = report.totals.records;
    const mark = resynced ? { resynced: true } : {};

    if (tag === TAG.STREAM_END) {
      const t = sc.take(TRAILER_SIZE - 8)?.slice();
      if (!t) {
        const have = sc.available(TRAILER_SIZE - 8);
        sc.skip(have);
        problem(offset, `truncated: the stream ends inside the trailer (${have + 8} of ${TRAILER_SIZE} bytes present)`);
        break;
      }
      if (!(phase === "trailer" || phase === "after-data" || (v1 && phase === "iterate" && afterEnd))) {
        problem(offset, `unexpected STREAM_END (expected ${expectation(phase, v1)})`);
      }
      enter("trailer", offset).records++;
      const v = new DataView(t.buffer);
      const crcOk = crc32(t.subarray(0, 20)) === v.getUint32(20);
      const tr = { dataBytes: Number(v.getBigUint64(0)), chunks: Number(v.getBigUint64(8)), dataCrc: v.getUint32(16) };
      const matches = tr.dataBytes === report.totals.dataBytes && tr.chunks === report.totals.chunks &&
        tr.dataCrc === dataCrc;
      report.trailer = {
        offset,
        dataBytes: tr.dataBytes,
        chunks: tr.chunks,
        dataCrc: hex32(tr.dataCrc),
        checksum: crcOk ? "ok" : "bad",
        matches,
      };
      if (!crcOk) problem(offset, "trailer checksum mismatch (corrupted trailer)");
      if (!matches) {
        problem(
          offset,
          `trailer says ${tr.dataBytes} bytes in ${tr.chunks} chunks (data CRC ${hex32(tr.dataCrc)}); the stream ` +
            `holds ${report.totals.dataBytes} bytes in ${report.totals.chunks} chunks (data CRC ${hex32(dataCrc)})`,
        );
      }
      push({ index, offset, tag: name, section: "trailer", ...mark }, null);
      const extraAt = sc.offset;
      const extra = sc.stream(Number.MAX_SAFE_INTEGER, () => {});
      if (extra > 0) problem(extraAt, `${extra} unexpected bytes after the trailer`);
      break;
    }

    if (!SIZED_TAGS.has(tag)) {
      // A bare tag: move through the phases as load does.
      const dataSection: SectionName = v1 ? "data" : "pre-copy";
      let sec: SectionName = "setup";
      let bad = false;
      switch (name) {
        case "DEV_SETUP_STATE":
          if (phase !== "setup") bad = true;
          phase = "setup-end";
          break;
        case "END_OF_STATE":
          if (phase === "setup-end") phase = "iterate";
          else if (phase === "iterate") sec = dataSection;
          else if (phase === "stop-copy") {
            sec = "stop-copy";
            phase = "after-data";
          } else if (phase === "config-end") {
            sec = "config";
            phase = "trailer";
          } else bad = true;
          break;
        case "DEV_INIT_DATA_SENT":
          if (phase !== "iterate" || v1) bad = true;
          sec = "pre-copy";
          break;
        case "SWITCHOVER":
          if (phase !== "iterate" || v1) bad = true;
          phase = "stop-copy";
          switchover = true;
          sec = "stop-copy";
          break;
        default:
          bad = true;
      }
      if (bad) problem(offset, `unexpected ${name} (expected ${expectation(phase, v1)})`);
      enter(sec, offset).records++;
      push({ index, offset, tag: name, section: sec, ...mark }, null);
      afterEnd = name === "END_OF_STATE";
      // END_OF_STATE closes a pre-copy iteration: the next record starts another.
      if (afterEnd && sec === dataSection) sections.fresh = true;
      continue;
    }

    // A sized record: be64 size | be32 crc | data.
    const hb = sc.take(12);
    if (!hb) {
      const have = sc.available(12);
      sc.skip(have);
      problem(
        offset,
        `truncated: the stream ends inside the header of a ${name} record (${
          have + 8
        } of ${CHUNK_HEADER} bytes present)`,
      );
      break;
    }
    const dv = new DataView(hb.buffer, hb.byteOffset, 12);
    const size = dv.getBigUint64(0);
    const stored = dv.getUint32(8);
    if (size > BigInt(MAX_CHUNK)) {
      problem(
        offset + 8,
        `${name} record of ${size} bytes exceeds the ${MAX_CHUNK}-byte limit (corrupted size field?)`,
      );
      if (!resync(sc)) break;
      resynced = true;
      continue;
    }
    const isData = name === "DEV_DATA_STATE";
    let sec: SectionName;
    if (isData) {
      if (phase !== "iterate" && phase !== "stop-copy") {
        problem(offset, `unexpected device data (expected ${expectation(phase, v1)})`);
      }
      sec = switchover ? "stop-copy" : v1 ? "data" : "pre-copy";
    } else {
      if (!(phase === "after-data" || (v1 && phase === "iterate" && afterEnd))) {
        problem(offset, `unexpected DEV_CONFIG_STATE (expected ${expectation(phase, v1)})`);
      }
      phase = "config-end";
      sec = "config";
    }
    const n = Number(size);
    const head = dumpBytes > 0 ? new Uint8Array(Math.min(n, dumpBytes)) : null;
    let headLen = 0;
    let crc = 0;
    let runCrc = dataCrc;
    const got = sc.stream(n, (piece) => {
      crc = crc32(piece, crc);
      if (isData) {
        runCrc = crc32(piece, runCrc);
        payload.feed(piece);
      }
      if (head && headLen < head.length) {
        const take = Math.min(piece.length, head.length - headLen);
        head.set(piece.subarray(0, take), headLen);
        headLen += take;
      }
    });
    if (isData) {
      sawData = true;
      dataCrc = runCrc;
    }
    const s = enter(sec, offset);
    s.records++;
    if (got < n) {
      problem(offset, `truncated: the stream ends inside a ${name} record (${got} of ${n} data bytes present)`);
      push(
        { index, offset, tag: name, section: sec, size: n, crc: "truncated", ...mark },
        head?.subarray(0, headLen) ?? null,
      );
      break;
    }
    const ok = crc === stored;
    if (!ok) {
      report.totals.badChecksums++;
      problem(
        offset,
        `checksum mismatch in ${name} record #${index} (${n} bytes at offset ${offset + CHUNK_HEADER}): ` +
          `stored ${hex32(stored)}, computed ${hex32(crc)}`,
      );
    }
    if (isData) {
      report.totals.chunks++;
      report.totals.dataBytes += n;
      if (switchover) report.totals.stopCopyBytes! += n;
      else report.totals.precopyBytes! += n;
      s.chunks++;
      s.bytes += n;
    } else {
      report.totals.configBytes += n;
      s.bytes += n;
    }
    push({ index, offset, tag: name, section: sec, size: n, crc: ok ? "ok" : "bad", ...mark }, head);
    afterEnd = false;
  }
  if (!switchover && v1) {
    report.totals.precopyBytes = null;
    report.totals.stopCopyBytes = null;
  }
  return finish();
}

/**
 * Skips to the next 8 bytes that read as a known record tag (all start 0xFFFFFFFFEF1);
 * false when the stream ends first.
 */
function resync(sc: ByteScanner): boolean {
  for (;;) {
    const b = sc.peek(8);
    if (!b) {
      sc.skip(sc.available(8));
      return false;
    }
    if (b[0] === 0xff && b[1] === 0xff && b[2] === 0xff && b[3] === 0xff && (b[4] === 0xef)) {
      const t = new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0);
      if (tagName(t)) return true;
    }
    sc.skip(1);
  }
}
