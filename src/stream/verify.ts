// Verification of a whole vfio-mig stream without a device: what `load` checks, in the
// order it checks it (src/stream/reader.ts for the framing, every chunk's CRC and the
// trailer's totals; src/stream/grammar.ts for the record order; the header's device
// list), so a file can be refused before any device is touched. `vfio-mig verify`
// and load's pre-check of a seekable file (`load` without --no-verify-first) use it.
//
// A seekable file is read through the descriptor the load then reads, with pread(2)
// (PreadSource): the descriptor's offset does not move, nothing is reopened by path,
// so the bytes checked are the bytes of the file the load holds open.

import { SEEK, type Sys } from "../../ffi/sys.ts";
import { StreamError, VfioMigError } from "../errors.ts";
import type { StreamSource } from "../transport/transport.ts";
import { MAX_DEVICES, STREAM_MAGIC, type StreamDeviceEntry, type StreamHeader } from "./format.ts";
import { RecordGrammar } from "./grammar.ts";
import { StreamReader } from "./reader.ts";
import { StreamAuthError, type StreamKey, type StreamMacInfo } from "./mac.ts";

/** Where a stream is damaged: the byte, the record (null: the header) and what is wrong. */
export interface StreamProblem {
  offset: number | null;
  record: number | null;
  message: string;
  /**
   * Present when the problem is an authentication failure (a key was given: the stream is
   * unsigned, signed with another key, or a MAC does not match; src/stream/mac.ts).
   */
  authentication?: true;
}

/** What verifyStream found. */
export interface VerifyResult {
  /** The stream would load (device permitting): framing, checksums, order, trailer. */
  ok: boolean;
  /** The first problem (load stops at the same one), or null. */
  problem: StreamProblem | null;
  /** The header, when it could be read. */
  header: StreamHeader | null;
  /** Bytes of the stream read. */
  streamBytes: number;
  /** Device data bytes and DEV_DATA_STATE chunks checked. */
  dataBytes: number;
  chunks: number;
  /** Records read (the trailer included). */
  records: number;
  /** The stream's devices (one for a single-device stream). */
  devices: number;
  /** A signed stream's MAC and key id (from its header, once read); null: unsigned (or no header). */
  signed: StreamMacInfo | null;
  /** Every MAC was checked with VerifyOptions.key and matched (false without a key). */
  authenticated: boolean;
}

export interface VerifyOptions {
  /**
   * --verify-key: the stream must be signed with this key and every MAC must match
   * (src/stream/mac.ts). Without it a signed stream's MACs are skipped.
   */
  key?: StreamKey | null;
  /** Called as bytes are checked (at most every 100 ms, and once at the end): bytes read so far. */
  onProgress?: (bytes: number) => void;
  /**
   * Checks a DEV_CONFIG_STATE payload as the load will decode it (throws StreamError);
   * the stream layer does not know the section's inside (src/migrate/config_state.ts).
   */
  checkConfig?: (bytes: Uint8Array) => void;
  /**
   * Awaited before each record: lets signal listeners run (a turn of the event loop now
   * and then) and throws to end the walk (Cancellation.checkpoint: InterruptedError).
   */
  checkpoint?: () => Promise<void>;
}

/**
 * The stream's devices: the header's `devices` (several), or the header itself (one).
 * Throws StreamError (at the header) for a list of the wrong shape or an unknown protocol.
 */
export function headerDevices(h: StreamHeader): StreamDeviceEntry[] {
  const list = h.devices;
  if (list === undefined) {
    if (h.protocol !== "v2" && h.protocol !== "v1") {
      throw new StreamError(`the stream uses migration protocol ${h.protocol}; this vfio-mig speaks v1 and v2`);
    }
    return [{
      source: h.source,
      device: h.device,
      protocol: h.protocol,
      migrationFlags: h.migrationFlags,
      sizeEstimate: h.sizeEstimate,
      ...(h.v1 ? { v1: h.v1 } : {}),
      ...(h.origin ? { origin: h.origin } : {}),
    }];
  }
  if (!Array.isArray(list) || list.length < 2 || list.length > MAX_DEVICES) {
    throw new StreamError(
      `the stream header lists ${Array.isArray(list) ? list.length : "no"} devices (2 to ${MAX_DEVICES} expected)`,
    );
  }
  list.forEach((e, i) => {
    if (
      typeof e !== "object" || e === null || typeof e.source !== "string" || typeof e.device !== "object" ||
      e.device === null || (e.protocol !== "v1" && e.protocol !== "v2")
    ) {
      throw new StreamError(`the stream header's devices[${i}] lacks source, device or a known protocol`);
    }
  });
  return list;
}

/** The grammar of a stream with these devices. */
export function grammarFor(entries: readonly StreamDeviceEntry[]): RecordGrammar {
  return new RecordGrammar(
    entries.map((e) => ({ v1: e.protocol === "v1", source: e.source })),
    entries.length > 1,
  );
}

/**
 * Walks a whole vfio-mig stream: header, device list, every record's framing and CRC,
 * the record order, the trailer's totals and that nothing follows it. Constant memory
 * (StreamReader's bounds). Never throws for damage (the result says where); throws
 * what `checkpoint` throws, and errors of the source itself (I/O).
 */
export async function verifyStream(src: StreamSource, opts: VerifyOptions = {}): Promise<VerifyResult> {
  const reader = new StreamReader(src, undefined, opts.key ?? null);
  const result: VerifyResult = {
    ok: false,
    problem: null,
    header: null,
    streamBytes: 0,
    dataBytes: 0,
    chunks: 0,
    records: 0,
    devices: 0,
    signed: null,
    authenticated: false,
  };
  let last = performance.now();
  try {
    result.header = await reader.readHeader();
    const entries = headerDevices(result.header);
    result.devices = entries.length;
    const grammar = grammarFor(entries);
    for (;;) {
      await opts.checkpoint?.();
      const rec = await reader.next();
      const step = rec.kind === "end"
        ? grammar.end()
        : rec.kind === "data"
        ? (rec.tag === "DEV_DATA_STATE" ? grammar.data() : grammar.config())
        : rec.tag === "DEVICE"
        ? grammar.selectDevice(rec.device!)
        : grammar.tag(rec.tag);
      if (step.problem) throw new StreamError(step.problem, rec.offset, step.index);
      if (rec.kind === "end") break;
      if (rec.kind === "data" && rec.tag === "DEV_CONFIG_STATE" && opts.checkConfig) {
        checkAt(() => opts.checkConfig!(rec.bytes), rec.offset, step.index);
      }
      if (rec.kind === "data" && rec.tag === "DEV_DATA_STATE") result.chunks++;
      const now = performance.now();
      if (opts.onProgress && now - last >= 100) {
        last = now;
        opts.onProgress(reader.offset);
      }
    }
    result.ok = true;
    result.authenticated = !!opts.key;
  } catch (e) {
    if (!(e instanceof StreamError)) throw e;
    result.problem = problemOf(e);
  }
  result.signed = reader.signed;
  result.streamBytes = reader.offset;
  result.dataBytes = reader.dataBytes;
  result.records = reader.records;
  opts.onProgress?.(reader.offset);
  return result;
}

/** Runs a check of a record's inside; its StreamError is placed at the record. */
export function checkAt(fn: () => void, offset: number, record: number): void {
  try {
    fn();
  } catch (e) {
    if (e instanceof StreamError && e.offset === undefined) {
      throw new StreamError(e.message, offset, record);
    }
    throw e;
  }
}

/** A StreamError as a problem: its message without the " (at byte N)" the error line adds. */
export function problemOf(e: StreamError): StreamProblem {
  const suffix = e.offset === undefined ? "" : ` (at byte ${e.offset})`;
  const message = suffix && e.message.endsWith(suffix) ? e.message.slice(0, -suffix.length) : e.message;
  return {
    offset: e.offset ?? null,
    record: e.record ?? null,
    message,
    ...(e instanceof StreamAuthError ? { authentication: true as const } : {}),
  };
}

/**
 * A regular file's bytes from `start` on, read with pread(2) from an open descriptor:
 * the descriptor's offset is left where it is (the load reads from there next).
 */
export class PreadSource implements StreamSource {
  #pos: number;
  constructor(readonly sys: Sys, readonly fd: number, readonly label: string, start: number) {
    this.#pos = start;
  }
  read(buf: Uint8Array): number {
    for (;;) {
      try {
        const n = this.sys.pread(this.fd, buf, this.#pos);
        this.#pos += n;
        return n;
      } catch (e) {
        if ((e as { code?: string }).code === "EINTR") continue;
        throw e;
      }
    }
  }
  close(): void {/* the descriptor is the caller's */}
}

/** What verifyFile found, with the file's size from where the stream starts. */
export interface FileVerifyResult extends VerifyResult {
  /** Bytes from the descriptor's offset to the end of the file. */
  fileBytes: number;
  seconds: number;
}

/**
 * Verifies the vfio-mig stream in the regular file open as `fd`, from the descriptor's
 * current offset, through that descriptor (pread: the offset is not moved). Null when
 * `fd` is not a regular file (a pipe, socket or terminal cannot be read twice) or does
 * not start with the vfio-mig magic (a QEMU stream has its own pre-scan; other bytes
 * are refused by the load's own reader). Throws VfioMigError when the file cannot be read.
 */
export async function verifyFile(
  sys: Sys,
  fd: number,
  label: string,
  opts: VerifyOptions = {},
): Promise<FileVerifyResult | null> {
  let start: number;
  let size: number;
  try {
    const st = sys.fstat(fd);
    if (!st.isRegular) return null;
    start = sys.lseek(fd, 0, SEEK.CUR);
    size = st.size;
  } catch {
    return null; // not seekable
  }
  const src = new PreadSource(sys, fd, label, start);
  const lead = new Uint8Array(STREAM_MAGIC.length);
  try {
    let n = 0;
    while (n < lead.length) {
      const got = sys.pread(fd, lead.subarray(n), start + n);
      if (got === 0) break;
      n += got;
    }
    if (n < lead.length || !lead.every((b, i) => b === STREAM_MAGIC[i])) return null;
  } catch (e) {
    throw new VfioMigError(`cannot read ${label}: ${e instanceof Error ? e.message : e}`, "failure", { cause: e });
  }
  const t0 = performance.now();
  const r = await verifyStream(src, opts);
  return { ...r, fileBytes: Math.max(0, size - start), seconds: (performance.now() - t0) / 1000 };
}
