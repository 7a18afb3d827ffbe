// One VFIO device's state out of a QEMU migration stream, as the records vfio-mig's
// loader consumes: an adapter with the public shape of StreamReader
// (src/stream/reader.ts) over QemuStreamParser. The device's sections become, in order:
//   SECTION_START   DEV_SETUP_STATE, END_OF_STATE
//   SECTION_PART    its DEV_DATA_STATE records, DEV_INIT_DATA_SENT, END_OF_STATE
//                   (one pre-copy iteration each)
//   SECTION_END     SWITCHOVER (protocol v2: the source left RUNNING here), its data
//                   records, END_OF_STATE
//   SECTION_FULL    DEV_CONFIG_STATE, converted from vfio-pci's vmstate to vfio-mig's
//                   own encoding (src/migrate/config_state.ts), END_OF_STATE
//   QEMU_VM_EOF     the end record, once the VM description after it checked out
// Every other section is stepped over; empty data records are dropped (QEMU's load
// skips them too). Protocol v2 data records are handed out in pieces of at most 1 MiB
// (the data_fd takes any segmentation); a v1 record is one transaction and stays
// whole (up to MAX_CHUNK).
//
// The header is synthesized: the protocol is the destination's (a QEMU stream does
// not say), the identity comes from the device's config section. From a seekable
// file, openQemuRecordReader walks the whole stream once first (a pre-scan, constant
// memory): the device is found, its framing and the whole stream's checked, and its
// ids known before anything is written to a device. From a pipe the config section
// arrives last: the header's ids are null, and the loader's check of the config
// section (vendor/device ids against the destination) is the identity check, before
// the device is started; a mismatch resets it.

import { StreamError, VfioMigError } from "../errors.ts";
import { type ConfigState, encodeConfigState } from "../migrate/config_state.ts";
import {
  crc32,
  FORMAT_VERSION,
  MAX_CHUNK,
  type StreamHeader,
  type StreamIdentity,
  type Trailer,
} from "../stream/format.ts";
import type { RecordReader, StreamRecord } from "../stream/reader.ts";
import type { Source, StreamSource } from "../transport/transport.ts";
import type { Sys } from "../../ffi/sys.ts";
import type { VfioDevice } from "../device/open.ts";
import { chooseProtocol, type ProtocolChoice } from "../migrate/protocol.ts";
import { failure, streamIdentity } from "../migrate/session.ts";
import { configIdentity, inspectQemuStream, type QemuInspectReport } from "../inspect/qemu.ts";
import { openSource } from "../transport/transport.ts";
import type { ByteSource } from "./bytes.ts";
import { readFileDescription, type VmDescription } from "./description.ts";
import { type QemuFileHeader, type QemuItem, type QemuSection, QemuStreamParser } from "./stream.ts";
import { decodeVfioConfig, toConfigState } from "./vfio_config.ts";

/** Largest piece of a protocol v2 data record handed out at once. */
export const QEMU_PIECE = 1 << 20;

export interface QemuReaderOptions {
  /** The VFIO device's section idstr, e.g. "0000:00:01.0/vfio" (needed when there are several). */
  qemuId?: string;
  /** The protocol the synthesized header names: the destination's. Default "v2". */
  protocol?: "v1" | "v2";
  /** The VM description, read first from the end of a seekable file. */
  description?: VmDescription | null;
  /** A whole walk of the same stream done beforehand (openQemuRecordReader). */
  prescan?: QemuInspectReport | null;
  /** Names the input in the header's `source`. */
  label?: string;
  /**
   * The destination's identity. A QEMU stream carries the device's PCI ids (in its
   * config section) but no driver, mdev type or kind: those are taken from here, so
   * that the loader's identity check compares what the stream knows. Without ids (a
   * pipe) the destination's are taken too, and the config section's ids, checked by
   * the loader when it arrives, decide.
   */
  destination?: StreamIdentity;
}

/** Extra header fields of a synthesized header. */
export interface QemuHeaderInfo {
  idstr: string;
  instanceId: number;
  machine: string | null;
  /** Where the identity came from. */
  identity: "config section (pre-scan)" | "unknown until DEV_CONFIG_STATE (pipe)";
}

export class QemuRecordReader implements RecordReader {
  readonly #p: QemuStreamParser;
  readonly #opts: QemuReaderOptions;
  #file: QemuFileHeader | null = null;
  #target: { idstr: string; instanceId: number } | null = null;
  /** Records waiting to be handed out (the target's SECTION_START, read ahead). */
  readonly #queue: StreamRecord[] = [];
  /** An item read ahead while looking for the target. */
  #held: QemuItem | null = null;
  /** The target's open section. */
  #inTarget: QemuSection | null = null;
  #seen = { start: false, end: false, config: false };
  #dataBytes = 0;
  #chunks = 0;
  #dataCrc = 0;
  #ended = false;
  #v1Buf: Uint8Array | null = null;

  constructor(src: ByteSource, opts: QemuReaderOptions = {}) {
    this.#p = new QemuStreamParser(src, { description: opts.description ?? null });
    this.#opts = opts;
  }

  /** Bytes of the QEMU stream consumed so far. */
  get offset(): number {
    return this.#p.offset;
  }

  /** Device data handed out so far. */
  get dataBytes(): number {
    return this.#dataBytes;
  }

  get protocol(): "v1" | "v2" {
    return this.#opts.protocol ?? "v2";
  }

  /** The file header and the device: reads up to the first item after the SECTION_STARTs. */
  async readHeader(): Promise<StreamHeader & { qemu: QemuHeaderInfo }> {
    const p = this.#p;
    this.#file = await p.header();
    const starts: { s: QemuSection; records: StreamRecord[] }[] = [];
    const want = this.#opts.qemuId;
    const pre = this.#opts.prescan ?? null;
    // Setup: every iterable section starts before any other item (savevm.c
    // qemu_savevm_state_setup), so once something else comes, all VFIO devices are known.
    for (;;) {
      const it = await p.next();
      if (it.kind === "section" && it.section.kind === "start") {
        const s = it.section;
        if (s.vfio) starts.push({ s, records: await this.#collectStart(s) });
        else await p.finishBody();
        if (want !== undefined && s.idstr === want) break;
        continue;
      }
      this.#held = it;
      break;
    }
    const vfio = pre ? pre.vfio.map((d) => d.idstr) : starts.map((x) => x.s.idstr);
    const list = vfio.length ? vfio.join(", ") : "none";
    const pick = want ?? (vfio.length === 1 ? vfio[0] : undefined);
    if (pick === undefined) {
      throw new VfioMigError(
        vfio.length
          ? `the QEMU stream holds ${vfio.length} VFIO devices (${list}): choose one with --qemu-id`
          : "the QEMU stream holds no VFIO device",
        vfio.length ? "usage" : "stream",
      );
    }
    const found = starts.find((x) => x.s.idstr === pick);
    if (!found) {
      throw new VfioMigError(`the QEMU stream has no VFIO device ${pick} (it has: ${list})`, "usage");
    }
    this.#target = { idstr: found.s.idstr, instanceId: found.s.instanceId };
    this.#queue.push(...found.records);
    this.#seen.start = true;
    const dev = pre?.vfio.find((d) => d.idstr === pick) ?? null;
    const ids = dev?.config?.decoded ? configIdentity(dev.config.decoded) : null;
    const dest = this.#opts.destination;
    const device: StreamIdentity = dest ? { ...dest, ...(ids ?? {}) } : {
      kind: "qemu",
      driver: null,
      mdevType: null,
      vendor: ids?.vendor ?? null,
      device: ids?.device ?? null,
      subsystemVendor: ids?.subsystemVendor ?? null,
      subsystemDevice: ids?.subsystemDevice ?? null,
    };
    return {
      format: "vfio-mig",
      version: FORMAT_VERSION,
      tool: `QEMU${this.#file.machine ? ` (machine ${this.#file.machine})` : ""}`,
      protocol: this.protocol,
      created: "",
      source: `${this.#opts.label ?? "QEMU stream"} ${pick}`,
      device,
      migrationFlags: 0,
      sizeEstimate: dev ? dev.dataBytes : null,
      mode: dev && dev.precopyBytes === 0 ? "offline" : "live",
      qemu: {
        idstr: pick,
        instanceId: found.s.instanceId,
        machine: this.#file.machine,
        identity: ids ? "config section (pre-scan)" : "unknown until DEV_CONFIG_STATE (pipe)",
      },
    };
  }

  /** A VFIO SECTION_START's records (QEMU writes only DEV_SETUP_STATE and END_OF_STATE there). */
  async #collectStart(s: QemuSection): Promise<StreamRecord[]> {
    const out: StreamRecord[] = [];
    for (;;) {
      const r = await this.#p.vfioRecord();
      if (r.name === "DEV_SETUP_STATE") out.push({ kind: "tag", tag: "DEV_SETUP_STATE", offset: r.offset });
      else if (r.name === "END_OF_STATE") {
        out.push({ kind: "tag", tag: "END_OF_STATE", offset: r.offset });
        break;
      } else {
        throw new StreamError(
          `${s.idstr}: ${r.name} in its SECTION_START (QEMU writes only DEV_SETUP_STATE there)`,
          r.offset,
        );
      }
    }
    await this.#p.finishBody();
    return out;
  }

  #data(bytes: Uint8Array, offset: number): StreamRecord {
    this.#dataBytes += bytes.length;
    this.#chunks++;
    this.#dataCrc = crc32(bytes, this.#dataCrc);
    return { kind: "data", tag: "DEV_DATA_STATE", bytes, offset };
  }

  async next(): Promise<StreamRecord> {
    if (!this.#target) throw new Error("QemuRecordReader: readHeader() first");
    if (this.#ended) throw new StreamError("read past the end of the stream", this.offset);
    const queued = this.#queue.shift();
    if (queued) return queued;
    const p = this.#p;
    for (;;) {
      const s = this.#inTarget;
      if (s) {
        if (p.vfioDataLeft > 0) return this.#data(await p.vfioDataPart(QEMU_PIECE), p.offset);
        const rec = await this.#targetRecord(s);
        if (rec) return rec;
        continue;
      }
      const it = this.#held ?? await p.next();
      this.#held = null;
      if (it.kind === "command") continue;
      if (it.kind === "eof") return await this.#end(it.offset);
      const sec = it.section;
      if (!(sec.vfio && sec.idstr === this.#target.idstr && sec.instanceId === this.#target.instanceId)) {
        await p.finishBody();
        continue;
      }
      this.#enter(sec);
      this.#inTarget = sec;
      if (sec.kind === "end" && this.protocol === "v2") return { kind: "tag", tag: "SWITCHOVER", offset: sec.offset };
    }
  }

  /** Checks where a section of the device may come. */
  #enter(s: QemuSection): void {
    const name = `${s.idstr}: SECTION_${s.kind.toUpperCase()}`;
    const seen = this.#seen;
    if (s.kind === "part" && seen.end) throw new StreamError(`${name} after its SECTION_END`, s.offset);
    if (s.kind === "end") {
      if (seen.end) throw new StreamError(`${name} a second time`, s.offset);
      seen.end = true;
    }
    if (s.kind === "full") {
      if (!seen.end) throw new StreamError(`${name} (its config) before its SECTION_END`, s.offset);
      if (seen.config) throw new StreamError(`${name} a second time`, s.offset);
      seen.config = true;
    }
  }

  /** The next record of the device's open section (null: nothing to hand out for that tag). */
  async #targetRecord(s: QemuSection): Promise<StreamRecord | null> {
    const p = this.#p;
    const r = await p.vfioRecord();
    switch (r.name) {
      case "END_OF_STATE":
        this.#inTarget = null;
        return { kind: "tag", tag: "END_OF_STATE", offset: r.offset };
      case "DEV_DATA_STATE": {
        if (s.kind !== "part" && s.kind !== "end") {
          throw new StreamError(`${s.idstr}: device data in its SECTION_${s.kind.toUpperCase()}`, r.offset);
        }
        const n = r.size!;
        if (n === 0) return null;
        if (this.protocol === "v2") return this.#data(await p.vfioDataPart(QEMU_PIECE), r.offset);
        // v1: one chunk is one transaction of the destination: whole.
        if (n > MAX_CHUNK) {
          throw new StreamError(`${s.idstr}: a ${n}-byte v1 chunk exceeds the ${MAX_CHUNK}-byte limit`, r.offset);
        }
        if (!this.#v1Buf || this.#v1Buf.length < n) this.#v1Buf = new Uint8Array(Math.max(n, QEMU_PIECE));
        const buf = this.#v1Buf;
        let at = 0;
        await p.vfioData((piece) => {
          buf.set(piece, at);
          at += piece.length;
        });
        return this.#data(buf.subarray(0, n), r.offset);
      }
      case "DEV_INIT_DATA_SENT":
        return { kind: "tag", tag: "DEV_INIT_DATA_SENT", offset: r.offset };
      case "DEV_CONFIG_STATE": {
        const payload = await p.vfioConfigPayload();
        const state: ConfigState = toConfigState(decodeVfioConfig(payload, r.offset + 8));
        return { kind: "data", tag: "DEV_CONFIG_STATE", bytes: encodeConfigState(state), offset: r.offset };
      }
      case "DEV_SETUP_STATE":
        throw new StreamError(`${s.idstr}: DEV_SETUP_STATE outside its SECTION_START`, r.offset);
      default:
        return null; // DEV_CONFIG_LOAD_READY: nothing for a standalone load
    }
  }

  /** QEMU_VM_EOF: the description checks out and the device's sections were all there. */
  async #end(offset: number): Promise<StreamRecord> {
    await this.#p.trailer();
    const t = this.#target!;
    if (!this.#seen.end) {
      throw new StreamError(`the QEMU stream ends without ${t.idstr}'s SECTION_END (its stop-copy data)`, offset);
    }
    if (!this.#seen.config) {
      throw new StreamError(`the QEMU stream ends without ${t.idstr}'s config section (DEV_CONFIG_STATE)`, offset);
    }
    this.#ended = true;
    const trailer: Trailer = { dataBytes: this.#dataBytes, chunks: this.#chunks, dataCrc: this.#dataCrc };
    return { kind: "end", trailer, offset };
  }
}

/**
 * The pre-scan of `from`: a regular file is walked whole once (a second open of it,
 * constant memory), and a damaged stream is refused (StreamError) before any device
 * is touched. Null for a pipe or standard input.
 */
export async function prescanQemuFile(
  sys: Sys,
  from: string,
): Promise<{ description: VmDescription | null; prescan: QemuInspectReport | null }> {
  const description = readFileDescription(sys, from);
  if (from === "-" || !sys.stat(from).isRegular) return { description, prescan: null };
  const again = openSource(sys, from);
  let prescan: QemuInspectReport;
  try {
    prescan = await inspectQemuStream(again, { description });
  } finally {
    again.close();
  }
  if (!prescan.ok) {
    const q = prescan.firstProblem!;
    throw new StreamError(`damaged QEMU stream: ${q.message}`, q.offset);
  }
  return { description, prescan };
}

/**
 * A QemuRecordReader over `source`, the opened `from` (a path or "-"), pre-scanned
 * when it is a regular file (prescanQemuFile): the header then has the device's ids.
 * Throws StreamError / VfioMigError.
 */
export async function openQemuRecordReader(
  sys: Sys,
  from: string,
  source: Source,
  opts: Omit<QemuReaderOptions, "prescan" | "description"> = {},
): Promise<QemuRecordReader> {
  const pre = await prescanQemuFile(sys, from);
  return new QemuRecordReader(source, { ...opts, ...pre, label: opts.label ?? from });
}

/**
 * For `load`: the record reader of a QEMU stream (`from`, a path or "-") for one
 * destination device. The protocol is the device's (--protocol, else v2 when it has
 * it, else v1); a regular file is pre-scanned first. Returns the factory load() takes
 * as `reader`. Throws VfioMigError (usage: several devices; device: not migratable;
 * stream: damaged), all before any device call that changes anything.
 */
export async function qemuLoadReader(
  sys: Sys,
  from: string,
  devices: VfioDevice[],
  opts: { qemuId?: string; protocol?: ProtocolChoice } = {},
): Promise<(src: StreamSource) => RecordReader> {
  if (devices.length !== 1) {
    throw new VfioMigError(`a QEMU stream is loaded into one --device (${devices.length} were given)`, "usage");
  }
  const d = devices[0];
  let protocol: "v1" | "v2";
  let pre: Awaited<ReturnType<typeof prescanQemuFile>>;
  try {
    protocol = chooseProtocol(d, opts.protocol ?? "auto");
    pre = await prescanQemuFile(sys, from);
  } catch (e) {
    throw failure(`load into ${d.label} refused`, e, `${d.label} was not touched`);
  }
  return (src) =>
    new QemuRecordReader(src, {
      ...pre,
      qemuId: opts.qemuId,
      protocol,
      destination: streamIdentity(d),
      label: from === "-" ? "standard input" : from,
    });
}
