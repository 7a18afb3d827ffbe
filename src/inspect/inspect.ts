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
  deviceIndex,
  FORMAT_VERSION,
  FORMAT_VERSION_SIGNED,
  HEADER_FIXED,
  MAX_CHUNK,
  MAX_HEADER_JSON,
  SIZED_TAGS,
  STREAM_MAGIC,
  type StreamHeader,
  type StreamIdentity,
  TAG,
  tagName,
  TRAILER_SIZE,
} from "../stream/format.ts";
import type { Source } from "../transport/transport.ts";
import { PayloadInspector, type PayloadSummary } from "./payload.ts";
import { ByteScanner } from "./scanner.ts";
import { RecordGrammar, type SectionName, type Step } from "../stream/grammar.ts";
import { MAC_SIZE, macInfoProblem, type StreamMacInfo } from "../stream/mac.ts";

export interface Problem {
  /** Byte offset in the stream where the problem is. */
  offset: number;
  message: string;
}

export type { SectionName };

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
  /** Multi-device streams: the device the record belongs to (a DEVICE tag: the one it selects). */
  device?: number;
}

export interface SectionInfo {
  name: SectionName;
  offset: number;
  records: number;
  chunks: number;
  bytes: number;
  /**
   * Multi-device streams: the device whose section it is. A device's records are
   * interleaved with the others': its section runs from `offset` over its own records.
   */
  device?: number;
}

/** One device of a multi-device stream. */
export interface DeviceReport {
  index: number;
  /** As the header lists it (null where the header's entry lacks it). */
  source: string | null;
  identity: StreamIdentity | null;
  protocol: string | null;
  /** Records of this device, its DEVICE tags included. */
  records: number;
  chunks: number;
  dataBytes: number;
  precopyBytes: number | null;
  stopCopyBytes: number | null;
  configBytes: number;
  payload: PayloadSummary | null;
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
    /**
     * A signed stream (format version 2): its MAC algorithm and key id, from the header.
     * inspect takes no key: the MACs are skipped, not checked (verify/load --verify-key do).
     */
    signed: StreamMacInfo | null;
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
  /** A single-device stream's decoded device data (multi-device streams: per device, in `devices`). */
  payload: PayloadSummary | null;
  /** Multi-device streams: each device's totals and payload; null for a single-device stream. */
  devices: DeviceReport[] | null;
  problems: Problem[];
  /** problems[0]: the first thing wrong, with its offset. */
  firstProblem: Problem | null;
  /**
   * The number of the record firstProblem is in (0: the first after the header, as
   * `records` numbers them; src/stream/grammar.ts), null when it is in the header or
   * nothing is wrong. `load` and `verify` name the same record (StreamError.record).
   */
  firstProblemRecord: number | null;
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
    devices: null,
    problems: [],
    firstProblem: null,
    firstProblemRecord: null,
  };
  let omitted = 0;
  let firstRecord: number | null | undefined;
  /** `record`: the number of the record the problem is in (none: the header). */
  const problem = (offset: number, message: string, record?: number) => {
    if (firstRecord === undefined) firstRecord = record ?? null;
    if (report.problems.length < maxProblems) report.problems.push({ offset, message });
    else omitted++;
  };
  let payloads: { inspector: PayloadInspector; sawData: boolean }[] = [];
  let multi = false;

  const finish = (): InspectReport => {
    report.streamBytes = sc.offset;
    if (omitted) report.problems.push({ offset: sc.offset, message: `${omitted} more problems not listed` });
    payloads.forEach((p, i) => {
      if (!p.sawData) return;
      if (!multi) report.payload = p.inspector.finish();
      else if (report.devices?.[i]) report.devices[i].payload = p.inspector.finish();
    });
    report.firstProblem = report.problems[0] ?? null;
    report.firstProblemRecord = firstRecord ?? null;
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
  if (version !== FORMAT_VERSION && version !== FORMAT_VERSION_SIGNED) {
    problem(
      8,
      `stream format version ${version} (expected ${FORMAT_VERSION}, or ${FORMAT_VERSION_SIGNED} for a signed ` +
        `stream: the ones this vfio-mig reads)`,
    );
    return finish();
  }
  const signed = version === FORMAT_VERSION_SIGNED;
  /** A signed stream's MAC after the record at `offset` (numbered `record`): skipped; false when the stream ends first. */
  const skipMac = (offset: number, record: number, name: string): boolean => {
    if (!signed) return true;
    const got = sc.skip(MAC_SIZE);
    if (got === MAC_SIZE) return true;
    problem(
      offset,
      `truncated: the stream ends inside the MAC of record ${record} (${name}; ${got} of ${MAC_SIZE} bytes present)`,
      record,
    );
    return false;
  };
  const jsonLen = hv.getUint32(12);
  let v1 = false;
  let headerFields: StreamHeader | null = null;
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
    headerFields = fields;
    let macInfo: StreamMacInfo | null = null;
    if (signed) {
      const why = macInfoProblem(fields);
      if (why) problem(HEADER_FIXED, why);
      else macInfo = fields!.mac!;
    }
    report.header = { version, jsonBytes: jsonLen, checksum: want === got ? "ok" : "bad", fields, signed: macInfo };
    if (signed) {
      const have = sc.skip(MAC_SIZE);
      if (have < MAC_SIZE) {
        problem(0, `truncated: the stream ends inside the header's MAC (${have} of ${MAC_SIZE} bytes present)`);
        return finish();
      }
    }
  }

  opts.onHeader?.(report);

  // -- records --------------------------------------------------------------
  // The record grammar (src/stream/grammar.ts) load and verify follow: one device, or
  // the header's `devices` list (an empty list is no list: there would be no device
  // to read the records with). Here it notes each problem and reading goes on.
  const listed = Array.isArray(headerFields?.devices) && headerFields!.devices!.length > 0
    ? headerFields!.devices!
    : null;
  multi = listed !== null;
  const grammar = new RecordGrammar(
    listed
      ? listed.map((e) => {
        const ok = typeof e === "object" && e !== null;
        return { v1: ok && e.protocol === "v1", source: ok && typeof e.source === "string" ? e.source : null };
      })
      : [{ v1 }],
    multi,
  );
  payloads = (listed ?? [null]).map(() => ({ inspector: new PayloadInspector(), sawData: false }));
  if (listed) {
    report.devices = listed.map((e, i) => {
      const ok = typeof e === "object" && e !== null;
      return {
        index: i,
        source: ok && typeof e.source === "string" ? e.source : null,
        identity: ok && typeof e.device === "object" ? e.device : null,
        protocol: ok && typeof e.protocol === "string" ? e.protocol : null,
        records: 0,
        chunks: 0,
        dataBytes: 0,
        precopyBytes: 0,
        stopCopyBytes: 0,
        configBytes: 0,
        payload: null,
      };
    });
  }
  // Each device's sections as they are read (key: device index; -1 a single-device
  // stream's records, -2 the stream's trailer).
  const open = new Map<number, { current: SectionInfo | null; fresh: boolean }>();
  let resynced = false;
  let dataCrc = 0;
  const enter = (name: SectionName, offset: number, device: number | null): SectionInfo => {
    const key = name === "trailer" ? -2 : device ?? -1;
    const at = open.get(key) ?? { current: null, fresh: false };
    open.set(key, at);
    const cur = at.current;
    if (cur && cur.name === name && !at.fresh) return cur;
    const next: SectionInfo = { name, offset, records: 0, chunks: 0, bytes: 0 };
    if (device !== null && name !== "trailer") next.device = device;
    report.sections.push(next);
    at.current = next;
    at.fresh = false;
    return next;
  };
  const push = (r: RecordInfo, head: Uint8Array | null) => {
    report.records.push(r);
    report.totals.records++;
    const dr = r.device === undefined ? null : report.devices?.[r.device];
    if (dr) dr.records++;
    opts.onRecord?.(r, head);
  };
  const dev = (s: Step) => (s.device === null ? {} : { device: s.device });

  for (;;) {
    const offset = sc.offset;
    if (sc.atEnd()) {
      problem(
        offset,
        `truncated: the stream ends after ${report.totals.records} records without the STREAM_END trailer ` +
          `(expected ${grammar.expectedAtEnd()})`,
        grammar.index,
      );
      break;
    }
    const tb = sc.take(8);
    if (!tb) {
      const have = sc.available(8);
      sc.skip(have);
      problem(offset, `truncated: the stream ends inside a record tag (${have} of 8 bytes present)`, grammar.index);
      break;
    }
    const tag = new DataView(tb.buffer, tb.byteOffset, 8).getBigUint64(0);
    const name = tagName(tag);
    if (!name) {
      problem(
        offset,
        `unknown record tag 0x${tag.toString(16).padStart(16, "0")} (expected ${grammar.expectedNext()})`,
        grammar.index,
      );
      if (!resync(sc)) break;
      resynced = true;
      continue;
    }
    const mark = resynced ? { resynced: true } : {};

    if (name === "DEVICE") {
      const s = grammar.selectDevice(deviceIndex(tag)!);
      if (s.problem) problem(offset, s.problem, s.index);
      push({ index: s.index, offset, tag: name, section: "device", ...dev(s), ...mark }, null);
      if (!skipMac(offset, s.index, name)) break;
      continue;
    }

    if (tag === TAG.STREAM_END) {
      const t0 = sc.take(TRAILER_SIZE - 8)?.slice();
      if (!t0) {
        const have = sc.available(TRAILER_SIZE - 8);
        sc.skip(have);
        problem(
          offset,
          `truncated: the stream ends inside the trailer (${have + 8} of ${TRAILER_SIZE} bytes present)`,
          grammar.index,
        );
        break;
      }
      const s = grammar.end();
      for (const p of s.problems) problem(offset, p, s.index);
      enter("trailer", offset, null).records++;
      const v = new DataView(t0.buffer);
      const crcOk = crc32(t0.subarray(0, 20)) === v.getUint32(20);
      const tr = {
        dataBytes: Number(v.getBigUint64(0)),
        chunks: Number(v.getBigUint64(8)),
        dataCrc: v.getUint32(16),
      };
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
      if (!crcOk) problem(offset, "trailer checksum mismatch (corrupted trailer)", s.index);
      if (!matches) {
        problem(
          offset,
          `trailer says ${tr.dataBytes} bytes in ${tr.chunks} chunks (data CRC ${hex32(tr.dataCrc)}); the stream ` +
            `holds ${report.totals.dataBytes} bytes in ${report.totals.chunks} chunks (data CRC ${hex32(dataCrc)})`,
          s.index,
        );
      }
      push({ index: s.index, offset, tag: name, section: "trailer", ...mark }, null);
      if (!skipMac(offset, s.index, name)) break;
      const extraAt = sc.offset;
      const extra = sc.stream(Number.MAX_SAFE_INTEGER, () => {});
      if (extra > 0) problem(extraAt, `${extra} unexpected bytes after the trailer`, grammar.index);
      break;
    }

    if (!SIZED_TAGS.has(tag)) {
      const s = grammar.tag(name);
      if (s.problem) problem(offset, s.problem, s.index);
      enter(s.section, offset, s.device).records++;
      push({ index: s.index, offset, tag: name, section: s.section, ...dev(s), ...mark }, null);
      // END_OF_STATE closes a pre-copy iteration: the next record starts another.
      if (s.closesIteration) open.get(s.device ?? -1)!.fresh = true;
      if (!skipMac(offset, s.index, name)) break;
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
        grammar.index,
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
        grammar.index,
      );
      if (!resync(sc)) break;
      resynced = true;
      continue;
    }
    const isData = name === "DEV_DATA_STATE";
    const s = isData ? grammar.data() : grammar.config();
    if (s.problem) problem(offset, s.problem, s.index);
    const index = s.index;
    const sec = s.section;
    const n = Number(size);
    const head = dumpBytes > 0 ? new Uint8Array(Math.min(n, dumpBytes)) : null;
    let headLen = 0;
    let crc = 0;
    let runCrc = dataCrc;
    const pl = payloads[s.device ?? 0] ?? payloads[0];
    const got = sc.stream(n, (piece) => {
      crc = crc32(piece, crc);
      if (isData) {
        runCrc = crc32(piece, runCrc);
        pl.inspector.feed(piece);
      }
      if (head && headLen < head.length) {
        const take = Math.min(piece.length, head.length - headLen);
        head.set(piece.subarray(0, take), headLen);
        headLen += take;
      }
    });
    if (isData) {
      pl.sawData = true;
      dataCrc = runCrc;
    }
    const section = enter(sec, offset, s.device);
    section.records++;
    if (got < n) {
      problem(
        offset,
        `truncated: the stream ends inside a ${name} record (${got} of ${n} data bytes present)`,
        index,
      );
      push(
        { index, offset, tag: name, section: sec, size: n, crc: "truncated", ...dev(s), ...mark },
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
        index,
      );
    }
    const dr = s.device === null ? null : report.devices?.[s.device] ?? null;
    const stopCopy = sec === "stop-copy";
    if (isData) {
      report.totals.chunks++;
      report.totals.dataBytes += n;
      if (stopCopy) report.totals.stopCopyBytes! += n;
      else report.totals.precopyBytes! += n;
      section.chunks++;
      section.bytes += n;
      if (dr) {
        dr.chunks++;
        dr.dataBytes += n;
        if (stopCopy) dr.stopCopyBytes! += n;
        else dr.precopyBytes! += n;
      }
    } else {
      report.totals.configBytes += n;
      section.bytes += n;
      if (dr) dr.configBytes += n;
    }
    push({ index, offset, tag: name, section: sec, size: n, crc: ok ? "ok" : "bad", ...dev(s), ...mark }, head);
    if (!skipMac(offset, index, name)) break;
  }
  // Protocol v1 has no SWITCHOVER marker: no pre-copy / stop-copy split.
  const switched = grammar.switchovers();
  const v1s = grammar.v1s();
  v1s.forEach((isV1, i) => {
    if (switched[i] || !isV1) return;
    const dr = report.devices?.[i];
    if (dr) dr.precopyBytes = dr.stopCopyBytes = null;
  });
  if (v1s.every((isV1, i) => isV1 && !switched[i])) {
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
