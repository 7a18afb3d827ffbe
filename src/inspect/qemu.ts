// `vfio-mig inspect` of a QEMU migration stream (src/qemu/stream.ts reads it): the
// file header and machine, RAM and the other sections summed up, the commands, and
// for each VFIO device its sections (idstr, instance, version, tags, data records),
// its data decoded where the format is known (mtty) and its DEV_CONFIG_STATE decoded
// as far as vfio-pci's vmstate allows (config space, INTx, MSI/MSI-X, MSI-X table).
// The VFIO records are checked against the order QEMU's vfio_load_state accepts. A
// damaged or truncated stream stops the walk at the first problem, with its offset.

import { StreamError } from "../errors.ts";
import { summarizeConfig } from "../migrate/config_state.ts";
import { TAG } from "../stream/format.ts";
import type { VmDescription } from "../qemu/description.ts";
import { type QemuFileHeader, type QemuSection, QemuStreamParser, type RamStats } from "../qemu/stream.ts";
import type { ByteSource } from "../qemu/bytes.ts";
import { decodeVfioConfig, describeVfioConfig, type QemuVfioConfig } from "../qemu/vfio_config.ts";
import { PayloadInspector, type PayloadSummary } from "./payload.ts";
import type { Problem } from "./inspect.ts";

/** Sections listed one by one per VFIO device; the rest are only counted. */
const MAX_LISTED_SECTIONS = 200;

export interface QemuVfioSectionInfo {
  kind: QemuSection["kind"];
  offset: number;
  /** The tags in order (data records as DEV_DATA_STATE). */
  tags: string[];
  dataRecords: number;
  dataBytes: number;
}

export interface QemuVfioDevice {
  idstr: string;
  instanceId: number;
  version: number;
  sectionId: number;
  /** Sections of the device, in stream order (at most MAX_LISTED_SECTIONS). */
  sections: QemuVfioSectionInfo[];
  /** Sections not listed above. */
  moreSections: number;
  dataRecords: number;
  dataBytes: number;
  /** Data in SECTION_PART (save_live_iterate: pre-copy) and SECTION_END (complete: stop-copy). */
  precopyBytes: number;
  stopCopyBytes: number;
  /** The largest data record. */
  largestRecord: number;
  initDataSent: number;
  /** SECTION_START … SECTION_END seen. */
  complete: boolean;
  config: {
    offset: number;
    bytes: number;
    decoded: QemuVfioConfig | null;
    lines: string[];
    problem: string | null;
  } | null;
  payload: PayloadSummary | null;
}

export interface QemuInspectReport {
  format: "qemu";
  ok: boolean;
  streamBytes: number;
  header: QemuFileHeader | null;
  /** Where the VM description came from: read first from the end of the file, or met at the end of the stream. */
  descriptionRead: "first" | "at the end" | null;
  description: { offset: number; bytes: number; devices: number } | null;
  ram: (RamStats & { sections: number; bytes: number }) | null;
  /** Non-iterable sections other than VFIO's (device vmstates). */
  devices: { idstr: string; instanceId: number; version: number; offset: number; bytes: number; framing: string }[];
  commands: { offset: number; name: string; length: number }[];
  vfio: QemuVfioDevice[];
  eofOffset: number | null;
  problems: Problem[];
  firstProblem: Problem | null;
}

export interface QemuInspectOptions {
  /** The VM description, read from the end of a seekable file beforehand. */
  description?: VmDescription | null;
  /** Called with each VFIO data record as it is read, and the first dumpBytes of its data. */
  onVfioRecord?: (device: string, section: QemuSection["kind"], offset: number, size: number, head: Uint8Array) => void;
  dumpBytes?: number;
}

/** Walks a whole QEMU stream; never throws for what the stream holds (problems go in the report). */
export async function inspectQemuStream(src: ByteSource, opts: QemuInspectOptions = {}): Promise<QemuInspectReport> {
  const p = new QemuStreamParser(src, { description: opts.description ?? null });
  const report: QemuInspectReport = {
    format: "qemu",
    ok: false,
    streamBytes: 0,
    header: null,
    descriptionRead: opts.description ? "first" : null,
    description: null,
    ram: null,
    devices: [],
    commands: [],
    vfio: [],
    eofOffset: null,
    problems: [],
    firstProblem: null,
  };
  const payloads = new Map<string, PayloadInspector>();
  const problem = (offset: number, message: string) => report.problems.push({ offset, message });
  const dump = Math.max(0, opts.dumpBytes ?? 0);
  try {
    report.header = await p.header();
    for (;;) {
      const it = await p.next();
      if (it.kind === "eof") {
        report.eofOffset = it.offset;
        break;
      }
      if (it.kind === "command") {
        report.commands.push({ offset: it.offset, name: it.name, length: it.length });
        continue;
      }
      const s = it.section;
      if (s.vfio) {
        const key = `${s.idstr}#${s.instanceId}`;
        let dev = report.vfio.find((d) => `${d.idstr}#${d.instanceId}` === key);
        if (!dev) {
          dev = newDevice(s);
          report.vfio.push(dev);
          payloads.set(key, new PayloadInspector());
        }
        await walkVfioSection(p, s, dev, payloads.get(key)!, problem, opts, dump);
        continue;
      }
      const body = await p.finishBody();
      if (s.ram) {
        const r = body.ram!;
        const t = report.ram ??= {
          sections: 0,
          bytes: 0,
          pages: 0,
          zeroPages: 0,
          xbzrlePages: 0,
          compressedPages: 0,
          pageBytes: 0,
          multifdFlushes: 0,
        };
        t.sections++;
        t.bytes += body.bytes;
        t.pages += r.pages;
        t.zeroPages += r.zeroPages;
        t.xbzrlePages += r.xbzrlePages;
        t.compressedPages += r.compressedPages;
        t.pageBytes += r.pageBytes;
        t.multifdFlushes += r.multifdFlushes;
        if (r.blocks) {
          t.blocks = r.blocks;
          t.totalBytes = r.totalBytes;
        }
      } else {
        report.devices.push({
          idstr: s.idstr,
          instanceId: s.instanceId,
          version: s.version,
          offset: s.offset,
          bytes: body.bytes,
          framing: body.framing,
        });
      }
    }
    const t = await p.trailer();
    if (t) {
      report.description = { offset: t.offset, bytes: t.bytes, devices: t.description.devices.length };
      report.descriptionRead ??= "at the end";
    }
    for (const d of report.vfio) {
      if (!d.complete) {
        problem(
          report.eofOffset ?? p.offset,
          `VFIO device ${d.idstr}: no SECTION_END (its stop-copy data and END_OF_STATE) before QEMU_VM_EOF`,
        );
      }
      if (!d.config) problem(report.eofOffset ?? p.offset, `VFIO device ${d.idstr}: no DEV_CONFIG_STATE section`);
    }
  } catch (e) {
    if (!(e instanceof StreamError)) throw e;
    problem(e.offset ?? p.offset, stripOffset(e.message));
  }
  for (const d of report.vfio) {
    const pi = payloads.get(`${d.idstr}#${d.instanceId}`);
    if (pi && d.dataBytes > 0) d.payload = pi.finish();
  }
  report.streamBytes = p.offset;
  report.problems.sort((a, b) => a.offset - b.offset);
  report.firstProblem = report.problems[0] ?? null;
  report.ok = report.problems.length === 0;
  return report;
}

/** StreamError messages end with " (at byte N)"; the report keeps the offset apart. */
function stripOffset(m: string): string {
  return m.replace(/ \(at byte \d+\)$/, "");
}

function newDevice(s: QemuSection): QemuVfioDevice {
  return {
    idstr: s.idstr,
    instanceId: s.instanceId,
    version: s.version,
    sectionId: s.sectionId,
    sections: [],
    moreSections: 0,
    dataRecords: 0,
    dataBytes: 0,
    precopyBytes: 0,
    stopCopyBytes: 0,
    largestRecord: 0,
    initDataSent: 0,
    complete: false,
    config: null,
    payload: null,
  };
}

/** The records of one VFIO section, checked as vfio_load_state would take them. */
async function walkVfioSection(
  p: QemuStreamParser,
  s: QemuSection,
  dev: QemuVfioDevice,
  payload: PayloadInspector,
  problem: (offset: number, message: string) => void,
  opts: QemuInspectOptions,
  dump: number,
): Promise<void> {
  const info: QemuVfioSectionInfo = { kind: s.kind, offset: s.offset, tags: [], dataRecords: 0, dataBytes: 0 };
  const where = `${s.idstr} SECTION_${s.kind.toUpperCase()}`;
  let first = true;
  for (;;) {
    const r = await p.vfioRecord();
    info.tags.push(r.name);
    if (r.tag === TAG.END_OF_STATE) break;
    switch (r.name) {
      case "DEV_SETUP_STATE":
        if (s.kind !== "start" || !first) problem(r.offset, `${where}: DEV_SETUP_STATE out of place`);
        break;
      case "DEV_DATA_STATE": {
        if (s.kind !== "part" && s.kind !== "end") {
          problem(r.offset, `${where}: device data outside SECTION_PART / SECTION_END`);
        }
        const n = r.size!;
        const head = new Uint8Array(Math.min(n, dump));
        let got = 0;
        await p.vfioData((piece) => {
          payload.feed(piece);
          if (got < head.length) head.set(piece.subarray(0, head.length - got), got);
          got += piece.length;
        });
        info.dataRecords++;
        info.dataBytes += n;
        dev.dataRecords++;
        dev.dataBytes += n;
        dev.largestRecord = Math.max(dev.largestRecord, n);
        if (s.kind === "end") dev.stopCopyBytes += n;
        else dev.precopyBytes += n;
        opts.onVfioRecord?.(s.idstr, s.kind, r.offset, n, head);
        break;
      }
      case "DEV_INIT_DATA_SENT":
        if (s.kind !== "part") problem(r.offset, `${where}: DEV_INIT_DATA_SENT outside SECTION_PART`);
        dev.initDataSent++;
        break;
      case "DEV_CONFIG_STATE": {
        if (dev.config) problem(r.offset, `${s.idstr}: a second DEV_CONFIG_STATE`);
        const payloadBytes = await p.vfioConfigPayload();
        const c: QemuVfioDevice["config"] = {
          offset: r.offset,
          bytes: payloadBytes.length,
          decoded: null,
          lines: [],
          problem: null,
        };
        try {
          c.decoded = decodeVfioConfig(payloadBytes, r.offset + 8);
          c.lines = describeVfioConfig(c.decoded);
        } catch (e) {
          if (!(e instanceof StreamError)) throw e;
          c.problem = stripOffset(e.message);
          c.lines = [`undecoded (${c.problem})`];
          problem(r.offset + 8, c.problem);
        }
        dev.config = c;
        break;
      }
      case "DEV_CONFIG_LOAD_READY":
        break;
    }
    first = false;
  }
  if (s.kind === "start" && info.tags[0] !== "DEV_SETUP_STATE") {
    problem(s.offset, `${where}: no DEV_SETUP_STATE (QEMU's load_state refuses the section)`);
  }
  if (s.kind === "end") dev.complete = true;
  await p.finishBody();
  if (dev.sections.length < MAX_LISTED_SECTIONS) dev.sections.push(info);
  else dev.moreSections++;
}

/** The text report's lines (after the "stream" line). */
export function formatQemuReport(r: QemuInspectReport): string[] {
  const out: string[] = [];
  const h = r.header;
  if (h) {
    out.push(
      `format      QEMU migration stream, version ${h.version}` +
        `${h.machine ? `, machine ${h.machine}` : ", no configuration section"}, page size ${2 ** h.pageBits}` +
        `${h.capabilities.length ? `, capabilities ${h.capabilities.join(" ")}` : ""}${
          h.uuid ? `, uuid ${h.uuid}` : ""
        }`,
    );
  } else out.push("format      QEMU migration stream (header unreadable)");
  if (r.ram) {
    const m = r.ram;
    out.push(
      `ram         ${m.sections} section${m.sections === 1 ? "" : "s"}, ${m.bytes} bytes: ${m.pages} pages ` +
        `(${m.pageBytes} bytes of page data), ${m.zeroPages} zero pages` +
        `${m.xbzrlePages ? `, ${m.xbzrlePages} XBZRLE` : ""}${
          m.compressedPages ? `, ${m.compressedPages} compressed` : ""
        }`,
    );
    if (m.blocks) {
      out.push(
        `            ${m.blocks.length} RAM blocks, ${m.totalBytes} bytes: ` +
          m.blocks.map((b) => `${b.name} ${b.length}`).join(", "),
      );
    }
  }
  if (r.devices.length) {
    const bytes = r.devices.reduce((n, d) => n + d.bytes, 0);
    const framings = [...new Set(r.devices.map((d) => d.framing))].join(", ");
    out.push(
      `devices     ${r.devices.length} other non-iterable sections, ${bytes} bytes (framed by ${framings}): ` +
        r.devices.slice(0, 12).map((d) => d.idstr).join(" ") + (r.devices.length > 12 ? " …" : ""),
    );
  }
  for (const c of r.commands) out.push(`command     ${c.name} at ${c.offset}${c.length ? ` (${c.length} bytes)` : ""}`);
  for (const d of r.vfio) {
    out.push(
      `vfio        ${d.idstr} (section ${d.sectionId}, instance ${d.instanceId}, version ${d.version})`,
    );
    for (const s of d.sections) {
      const data = s.dataRecords
        ? `: ${s.dataRecords} data record${s.dataRecords === 1 ? "" : "s"}, ${s.dataBytes} bytes`
        : "";
      out.push(`  ${s.kind.padEnd(5)} at ${String(s.offset).padEnd(10)} ${s.tags.join(" ")}${data}`);
    }
    if (d.moreSections) out.push(`  … ${d.moreSections} more sections`);
    out.push(
      `  totals    ${d.dataBytes} bytes in ${d.dataRecords} data record${d.dataRecords === 1 ? "" : "s"} ` +
        `(pre-copy ${d.precopyBytes}, stop-copy ${d.stopCopyBytes}; largest ${d.largestRecord})` +
        `${d.initDataSent ? `; ${d.initDataSent} DEV_INIT_DATA_SENT` : ""}`,
    );
    if (d.config) {
      const [first, ...more] = d.config.lines;
      out.push(`  config    at ${d.config.offset}, ${d.config.bytes} bytes: ${first ?? ""}`);
      for (const l of more) out.push(`            ${l}`);
    }
    if (d.payload) {
      const [first, ...more] = d.payload.lines;
      out.push(`  payload   ${first ?? d.payload.format}`);
      for (const l of more) out.push(`          ${l}`);
      for (const q of d.payload.problems) out.push(`  note      ${q}`);
    }
  }
  if (!r.vfio.length) out.push("vfio        no VFIO device sections");
  if (r.description) {
    out.push(
      `description at ${r.description.offset}: ${r.description.bytes} bytes, ${r.description.devices} devices` +
        (r.descriptionRead === "first" ? " (read first: it gave the device sections their sizes)" : ""),
    );
  }
  out.push(`stream      ${r.streamBytes} bytes`);
  if (r.ok) out.push("result      OK: the QEMU stream is intact");
  else {
    const q = r.firstProblem!;
    out.push(`result      DAMAGED: at byte ${q.offset}: ${q.message}`);
    for (const x of r.problems.slice(1)) out.push(`  also      at byte ${x.offset}: ${x.message}`);
  }
  return out;
}

/** The identity of a VFIO device's config section, for a synthesized stream header. */
export function configIdentity(c: QemuVfioConfig): {
  vendor: number;
  device: number;
  subsystemVendor: number | null;
  subsystemDevice: number | null;
} {
  const s = summarizeConfig(c.config);
  return { vendor: s.vendor, device: s.device, subsystemVendor: s.subsystemVendor, subsystemDevice: s.subsystemDevice };
}
