// qemu-splice: a QEMU migration stream with one VFIO device's data replaced by the data
// of a vfio-mig stream, every other byte as it was, so that QEMU's migrate-incoming
// loads device state vfio-mig saved. One pass over both streams, in constant memory:
// the QEMU stream is copied through as it is parsed (QemuBytes' tap), except for the
// device's DEV_DATA_STATE records, which are dropped; the vfio-mig stream's data
// records (each checksum-checked by StreamReader, the trailer at the end) are written
// as QEMU DEV_DATA_STATE records into the device's SECTION_END, before its
// END_OF_STATE, where QEMU's complete phase puts the stop-copy data:
//   SECTION_START  DEV_SETUP_STATE END_OF_STATE                      (as it was)
//   SECTION_PART   [DEV_INIT_DATA_SENT] END_OF_STATE                 (data dropped)
//   SECTION_END    DEV_DATA_STATE be64 n <n bytes> … END_OF_STATE    (vfio-mig's data)
//   SECTION_FULL   DEV_CONFIG_STATE … END_OF_STATE                   (QEMU's config, as it was)
// QEMU's vfio_load_state writes each record to the device as it comes (v2: into the
// data_fd; v1, QEMU 7.2: one region transaction per record), so one record per
// vfio-mig chunk keeps v1 transactions as the source made them. The section sizes the
// VM description gives are untouched (it covers only non-iterable sections).
// The identity is checked when the device's config section comes: its PCI vendor,
// device and subsystem ids must be the vfio-mig stream's.

import { StreamError, VfioMigError } from "../errors.ts";
import { summarizeConfig } from "../migrate/config_state.ts";
import { type StreamHeader, TAG } from "../stream/format.ts";
import { StreamReader } from "../stream/reader.ts";
import type { Sink, StreamSource } from "../transport/transport.ts";
import type { ByteSource } from "./bytes.ts";
import type { VmDescription } from "./description.ts";
import { type QemuSection, QemuStreamParser } from "./stream.ts";
import { decodeVfioConfig } from "./vfio_config.ts";

export interface SpliceOptions {
  /** The VFIO device's idstr; needed when the QEMU stream has several. */
  qemuId?: string;
  description?: VmDescription | null;
}

export interface SpliceResult {
  device: string;
  /** The vfio-mig stream's source device and protocol. */
  from: string;
  protocol: string;
  qemuBytes: number;
  outBytes: number;
  dropped: { records: number; bytes: number };
  inserted: { records: number; bytes: number };
  /** Set when the device data sizes differ (another model of the same PCI ids?). */
  warning: string | null;
}

/** Output through a 1 MiB buffer: the tap hands over RAM a page at a time. */
class Buffered {
  readonly #buf = new Uint8Array(1 << 20);
  #len = 0;
  written = 0;
  constructor(readonly sink: Sink) {}
  write(b: Uint8Array): void {
    this.written += b.length;
    if (this.#len + b.length > this.#buf.length) this.flush();
    if (b.length >= this.#buf.length) {
      this.sink.write(b);
      return;
    }
    this.#buf.set(b, this.#len);
    this.#len += b.length;
  }
  flush(): void {
    if (this.#len) this.sink.write(this.#buf.subarray(0, this.#len));
    this.#len = 0;
  }
}

const be64 = (n: bigint | number) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
};

/**
 * Splices `dev` (a vfio-mig stream of one device) into `qemu`, writing to `sink`; the
 * caller commits or aborts the sink. Throws StreamError for a damaged stream,
 * VfioMigError ("usage") for a device that is not there or ambiguous, and ("stream")
 * for a vfio-mig stream of another kind of device.
 */
export async function spliceQemuStream(
  qemu: ByteSource,
  dev: StreamSource,
  sink: Sink,
  opts: SpliceOptions = {},
): Promise<SpliceResult> {
  const reader = new StreamReader(dev);
  const header: StreamHeader = await reader.readHeader();
  if (Array.isArray(header.devices)) {
    throw new VfioMigError(
      `the vfio-mig stream holds ${header.devices.length} devices: qemu-splice takes a stream of one device`,
      "usage",
    );
  }
  const out = new Buffered(sink);
  const p = new QemuStreamParser(qemu, { description: opts.description ?? null });
  p.bytes.tap = (b) => out.write(b);
  await p.header();
  const result: SpliceResult = {
    device: "",
    from: header.source,
    protocol: header.protocol,
    qemuBytes: 0,
    outBytes: 0,
    dropped: { records: 0, bytes: 0 },
    inserted: { records: 0, bytes: 0 },
    warning: null,
  };
  let target: { idstr: string; instanceId: number } | null = null;
  const vfioStarts: QemuSection[] = [];
  const seen = { end: false, config: false };
  const isTarget = (s: QemuSection) =>
    target !== null && s.idstr === target.idstr && s.instanceId === target.instanceId;

  for (;;) {
    const it = await p.next();
    if (it.kind === "eof") break;
    if (it.kind === "command") continue;
    const s = it.section;
    if (s.vfio && s.kind === "start") {
      vfioStarts.push(s);
      await p.finishBody();
      continue;
    }
    if (s.vfio && target === null) target = pickTarget(vfioStarts, opts.qemuId, s.offset);
    if (!s.vfio || !isTarget(s)) {
      await p.finishBody();
      continue;
    }
    if (s.kind === "full") {
      await checkConfig(p, s, header);
      seen.config = true;
      await p.finishBody();
      continue;
    }
    if (s.kind === "end") {
      if (seen.end) throw new StreamError(`${s.idstr}: a second SECTION_END`, s.offset);
      seen.end = true;
    }
    // SECTION_PART / SECTION_END: drop QEMU's data records; into the END, vfio-mig's.
    for (;;) {
      const tag = await p.peekVfioTag();
      if (tag === TAG.DEV_DATA_STATE) {
        p.bytes.tapPaused = true;
        const r = await p.vfioRecord();
        await p.vfioData(() => {});
        p.bytes.tapPaused = false;
        result.dropped.records++;
        result.dropped.bytes += r.size!;
        continue;
      }
      if (tag === TAG.END_OF_STATE && s.kind === "end") await insertData(reader, out, result, s.idstr);
      const r = await p.vfioRecord();
      if (r.tag === TAG.END_OF_STATE) break;
    }
    await p.finishBody();
  }
  await p.trailer();
  if (target === null) target = pickTarget(vfioStarts, opts.qemuId, p.offset);
  if (!seen.end || !seen.config) {
    throw new StreamError(
      `the QEMU stream has no ${seen.end ? "config section" : "SECTION_END"} for ${target.idstr}`,
      p.offset,
    );
  }
  out.flush();
  result.device = target.idstr;
  result.qemuBytes = p.offset;
  result.outBytes = out.written;
  if (result.dropped.bytes !== result.inserted.bytes) {
    result.warning = `QEMU's stream held ${result.dropped.bytes} bytes of device data, the vfio-mig stream ` +
      `${result.inserted.bytes}: make sure both are of the same device model`;
  }
  return result;
}

/** The device to replace: --qemu-id, or the only VFIO device. */
function pickTarget(
  starts: QemuSection[],
  want: string | undefined,
  at: number,
): { idstr: string; instanceId: number } {
  const list = starts.map((s) => s.idstr).join(", ") || "none";
  if (want !== undefined) {
    const s = starts.find((x) => x.idstr === want);
    if (!s) throw new VfioMigError(`the QEMU stream has no VFIO device ${want} (it has: ${list})`, "usage");
    return { idstr: s.idstr, instanceId: s.instanceId };
  }
  if (starts.length === 1) return { idstr: starts[0].idstr, instanceId: starts[0].instanceId };
  if (starts.length === 0) throw new StreamError("the QEMU stream holds no VFIO device", at);
  throw new VfioMigError(
    `the QEMU stream holds ${starts.length} VFIO devices (${list}): choose one with --qemu-id`,
    "usage",
  );
}

/** Writes every data record of the vfio-mig stream (checked to its trailer) as QEMU records. */
async function insertData(reader: StreamReader, out: Buffered, result: SpliceResult, idstr: string): Promise<void> {
  if (result.inserted.records) throw new Error("insertData twice");
  for (;;) {
    const rec = await reader.next();
    if (rec.kind === "end") break;
    if (rec.kind !== "data" || rec.tag !== "DEV_DATA_STATE") continue;
    if (rec.bytes.length === 0) continue;
    out.write(be64(TAG.DEV_DATA_STATE));
    out.write(be64(rec.bytes.length));
    out.write(rec.bytes);
    result.inserted.records++;
    result.inserted.bytes += rec.bytes.length;
  }
  if (result.inserted.records === 0) {
    throw new VfioMigError(`the vfio-mig stream has no device data to put into ${idstr}`, "stream");
  }
}

/** The device's config section: its ids against the vfio-mig stream's. */
async function checkConfig(p: QemuStreamParser, s: QemuSection, header: StreamHeader): Promise<void> {
  const tag = await p.peekVfioTag();
  if (tag !== TAG.DEV_CONFIG_STATE) return;
  const r = await p.vfioRecord();
  const payload = await p.vfioConfigPayload();
  const c = decodeVfioConfig(payload, r.offset + 8);
  const q = summarizeConfig(c.config);
  const d = header.device;
  const hex = (n: number | null | undefined) => (typeof n === "number" ? `0x${n.toString(16).padStart(4, "0")}` : "?");
  if (q.vendor !== d.vendor || q.device !== d.device) {
    throw new VfioMigError(
      `wrong device: ${s.idstr} in the QEMU stream is a ${hex(q.vendor)}:${hex(q.device)} device, the vfio-mig ` +
        `stream is from a ${hex(d.vendor)}:${hex(d.device)} device`,
      "stream",
    );
  }
  if (q.subsystemVendor !== d.subsystemVendor || q.subsystemDevice !== d.subsystemDevice) {
    throw new VfioMigError(
      `wrong device: subsystem ids differ: ${s.idstr} ${hex(q.subsystemVendor)}:${hex(q.subsystemDevice)}, ` +
        `the vfio-mig stream ${hex(d.subsystemVendor)}:${hex(d.subsystemDevice)}`,
      "stream",
    );
  }
}
