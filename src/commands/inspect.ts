import { libc } from "../../ffi/libc.ts";
import type { Sys } from "../../ffi/sys.ts";
import { EXIT, VfioMigError } from "../errors.ts";
import { type InspectReport, inspectStream, type RecordInfo, type SectionInfo } from "../inspect/inspect.ts";
import { CHUNK_HEADER, type StreamDeviceEntry, type StreamIdentity } from "../stream/format.ts";
import { formatQemuReport, inspectQemuStream, type QemuInspectReport } from "../inspect/qemu.ts";
import { readFileDescription } from "../qemu/description.ts";
import { sniff } from "../qemu/sniff.ts";
import { openSource, type Source } from "../transport/transport.ts";
import { examplesHelp, exitCodesHelp } from "./help.ts";
import { migrationFlagNames } from "../vfio/v2.ts";
import { type Command, hex, parse, printJson } from "./command.ts";

const DUMP_DEFAULT = 256;

/** Classic hexdump lines: offset, 16 bytes, ASCII. */
export function hexdump(bytes: Uint8Array, indent = ""): string[] {
  const lines: string[] = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const row = bytes.subarray(off, off + 16);
    const hexes = [...row].map((b) => b.toString(16).padStart(2, "0"));
    const left = hexes.slice(0, 8).join(" ");
    const right = hexes.slice(8).join(" ");
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${indent}${off.toString(16).padStart(8, "0")}  ${left.padEnd(23)}  ${right.padEnd(23)}  |${ascii}|`);
  }
  return lines;
}

function recordLine(r: RecordInfo, multi = false): string {
  const size = r.size === undefined ? "" : String(r.size);
  const crc = r.crc ?? "";
  const dev = multi ? `${(r.device === undefined ? "-" : String(r.device)).padStart(3)}  ` : "";
  return `  ${String(r.index).padStart(5)}  ${String(r.offset).padStart(10)}  ${dev}${r.section.padEnd(9)}  ` +
    `${r.tag.padEnd(18)}  ${size.padStart(10)}  ${crc}${r.resynced ? "  (after resync)" : ""}`.trimEnd();
}

/** One line of identity: kind, driver, mdev type, PCI ids, simulated model. */
function identityLine(d: StreamIdentity): string {
  const ids = d.vendor === null || d.vendor === undefined
    ? "no PCI ids"
    : `PCI ${hex(d.vendor)}:${hex(d.device)} subsystem ${hex(d.subsystemVendor)}:${hex(d.subsystemDevice)}`;
  return `${d.kind ?? "?"}, driver ${d.driver ?? "?"}${d.mdevType ? `, mdev type ${d.mdevType}` : ""}, ` +
    `${ids}${d.model ? `, simulated model ${d.model}` : ""}`;
}

function flagNames(flags: number | null): string {
  const names = flags === null ? [] : migrationFlagNames(flags);
  return names.length ? ` (${names.join(" ")})` : "";
}

/** A multi-device stream's header: one line per device. */
function devicesLines(list: StreamDeviceEntry[]): string[] {
  const out = [`  devices   ${list.length}, each selected by a DEVICE tag before its records`];
  list.forEach((e, i) => {
    if (typeof e !== "object" || e === null) {
      out.push(`    ${i}  (not an object)`);
      return;
    }
    const flags = typeof e.migrationFlags === "number" ? e.migrationFlags : null;
    out.push(
      `    ${i}  from ${e.source ?? "?"}: ${e.device && typeof e.device === "object" ? identityLine(e.device) : "?"}`,
    );
    out.push(
      `       protocol ${e.protocol ?? "?"}, flags ${hex(flags, 1)}${flagNames(flags)}, MIG_DATA_SIZE at save ${
        e.sizeEstimate ?? "not reported"
      }`,
    );
    out.push(...originLines(e.origin, "       "));
  });
  return out;
}

/** Where the state was saved (header "origin": kernel release, driver module), if recorded. */
function originLines(o: unknown, indent: string): string[] {
  if (!o || typeof o !== "object") return [];
  const x = o as Record<string, unknown>;
  const module = x.driverModule
    ? `, driver module ${x.driverModule}${x.driverVersion ? ` version ${x.driverVersion}` : ""}${
      x.driverSrcversion ? ` srcversion ${x.driverSrcversion}` : ""
    }`
    : "";
  return [`${indent}saved on kernel ${x.kernel ?? "?"}${module}`];
}

/** Whether a report is of a multi-device stream. */
function isMulti(r: InspectReport): boolean {
  return Array.isArray(r.header?.fields?.devices);
}

function headerLines(r: InspectReport): string[] {
  const h = r.header;
  if (!h) return ["header      none readable"];
  const out = [`header      format ${h.version}, ${h.jsonBytes} bytes of JSON, checksum ${h.checksum}`];
  if (h.signed) {
    out.push(
      `  signed    ${h.signed.algorithm}, key id ${h.signed.keyId} (MACs not checked here: ` +
        `vfio-mig verify --verify-key KEY checks them)`,
    );
  } else if (h.version === 1) out.push("  signed    no (unsigned: load --verify-key refuses it)");
  const f = h.fields;
  if (!f) return out;
  if (Array.isArray(f.devices)) {
    out.push(`  written   by ${f.tool ?? "?"} at ${f.created ?? "?"}; ${f.mode ?? "?"} save`);
    return [...out, ...devicesLines(f.devices)];
  }
  out.push(`  written   by ${f.tool ?? "?"} at ${f.created ?? "?"} from ${f.source ?? "?"}`);
  const d = f.device;
  if (d && typeof d === "object") {
    const ids = d.vendor === null || d.vendor === undefined
      ? "no PCI ids"
      : `PCI ${hex(d.vendor)}:${hex(d.device)} subsystem ${hex(d.subsystemVendor)}:${hex(d.subsystemDevice)}`;
    out.push(
      `  device    ${d.kind ?? "?"}, driver ${d.driver ?? "?"}${d.mdevType ? `, mdev type ${d.mdevType}` : ""}, ` +
        `${ids}${d.model ? `, simulated model ${d.model}` : ""}`,
    );
  }
  const flags = typeof f.migrationFlags === "number" ? f.migrationFlags : null;
  const names = flags === null ? "" : migrationFlagNames(flags);
  out.push(
    `  migration protocol ${f.protocol ?? "?"}, ${f.mode ?? "?"} save, flags ${hex(flags, 1)}` +
      `${names ? ` (${(names as string[]).join(" ")})` : ""}, MIG_DATA_SIZE at save ${
        f.sizeEstimate ?? "not reported"
      }`,
  );
  out.push(...originLines(f.origin, "  "));
  return out;
}

/** Lines of a multi-device stream: each device's sections, totals and payload. */
function deviceSummary(r: InspectReport): string[] {
  const out: string[] = [];
  for (const d of r.devices ?? []) {
    out.push(`device ${d.index}    from ${d.source ?? "?"}`);
    for (const s of r.sections.filter((x) => x.device === d.index)) out.push(`  ${sectionLine(s)}`);
    const split = d.precopyBytes === null
      ? "no SWITCHOVER marker (protocol v1)"
      : `pre-copy ${d.precopyBytes}, stop-copy ${d.stopCopyBytes}`;
    out.push(
      `  totals    ${d.dataBytes} bytes in ${d.chunks} chunk${d.chunks === 1 ? "" : "s"} (${split}); ` +
        `config ${d.configBytes} bytes; ${d.records} records`,
    );
    if (d.payload) {
      const [first, ...more] = d.payload.lines;
      out.push(`  payload   ${first ?? d.payload.format}`);
      for (const l of more) out.push(`          ${l}`);
      for (const p of d.payload.problems) out.push(`  note      ${p}`);
    }
  }
  return out;
}

function sectionLine(s: SectionInfo): string {
  const data = s.chunks
    ? `, ${s.chunks} chunk${s.chunks === 1 ? "" : "s"}, ${s.bytes} bytes`
    : s.bytes
    ? `, ${s.bytes} bytes`
    : "";
  return `  ${s.name.padEnd(9)}  at ${s.offset}: ${s.records} record${s.records === 1 ? "" : "s"}${data}`;
}

export function formatSummary(r: InspectReport): string[] {
  const out: string[] = [];
  if (r.devices) {
    out.push(...deviceSummary(r));
    const rest = r.sections.filter((s) => s.device === undefined);
    if (rest.length) {
      out.push("stream");
      for (const s of rest) out.push(`  ${sectionLine(s)}`);
    }
  } else if (r.sections.length) {
    out.push("sections");
    for (const s of r.sections) {
      const data = s.chunks
        ? `, ${s.chunks} chunk${s.chunks === 1 ? "" : "s"}, ${s.bytes} bytes`
        : s.bytes
        ? `, ${s.bytes} bytes`
        : "";
      out.push(`  ${s.name.padEnd(9)}  at ${s.offset}: ${s.records} record${s.records === 1 ? "" : "s"}${data}`);
    }
  }
  const t = r.totals;
  const split = t.precopyBytes === null
    ? "no SWITCHOVER marker (protocol v1)"
    : `pre-copy ${t.precopyBytes}, stop-copy ${t.stopCopyBytes}`;
  out.push(
    `totals      ${t.dataBytes} bytes of device data in ${t.chunks} chunk${t.chunks === 1 ? "" : "s"} (${split}); ` +
      `config ${t.configBytes} bytes; ${t.records} records; stream ${r.streamBytes} bytes`,
  );
  if (r.trailer) {
    const tr = r.trailer;
    out.push(
      `trailer     ${tr.dataBytes} bytes in ${tr.chunks} chunk${
        tr.chunks === 1 ? "" : "s"
      }, data CRC ${tr.dataCrc}; checksum ${tr.checksum}; ` +
        `${tr.matches ? "matches the data" : "does NOT match the data"}`,
    );
  } else out.push("trailer     missing");
  if (r.payload) {
    const [first, ...more] = r.payload.lines;
    out.push(`payload     ${first ?? r.payload.format}`);
    for (const l of more) out.push(`          ${l}`);
    for (const p of r.payload.problems) out.push(`  note      ${p}`);
    if (r.totals.badChecksums) out.push("  note      decoded from data that failed its checksum");
  }
  if (r.ok) out.push("result      OK: the stream is intact");
  else {
    const p = r.firstProblem!;
    out.push(`result      DAMAGED: at byte ${p.offset}: ${p.message}`);
    for (const q of r.problems.slice(1)) out.push(`  also      at byte ${q.offset}: ${q.message}`);
  }
  return out;
}

export const inspectCommand: Command = {
  name: "inspect",
  help: `Usage: vfio-mig inspect [--json] [--dump | --dump-all] FILE|-

Reads a vfio-mig stream (a file, or '-' for standard input) without any device and
shows the header and device identity, every record (offset, section, tag, size,
checksum), the sections (setup, pre-copy, stop-copy, config, trailer), totals with
pre-copy and stop-copy bytes (device data before / after the SWITCHOVER tag), the
trailer, and the device data decoded where the format is known (mtty's
samples/vfio-mdev/mtty.c layout; the simulator's bulk model). A damaged stream is
read as far as possible: bad checksums are listed and reading goes on, unknown tags
are skipped to the next recognisable one, and the first problem is given with its
byte offset and what was expected there. Memory stays bounded whatever the stream's
length fields say. A stream of several devices ('save --device A --device B ...') is
shown per device: the header's device list, a DEV column in the records, and each
device's sections, totals and decoded data. A signed stream ('save --sign-key',
format 2) is named with its key id; inspect takes no key and skips its MACs
('vfio-mig verify --verify-key KEY FILE' checks them).

A QEMU migration stream (magic "QEVM", from 'migrate' to a file) is recognised too:
its machine type, RAM and the other sections summed up, commands such as
SWITCHOVER_START, and each VFIO device's sections (idstr, instance, version, tags,
data records with their bytes, pre-copy / stop-copy split), its data decoded where
the format is known, and its DEV_CONFIG_STATE decoded as far as vfio-pci's vmstate
allows (config space ids, command register, MSI/MSI-X, MSI-X table). Device sections
QEMU does not frame are stepped over by the sizes in the JSON VM description at the
end of the stream (read first from a file; from a pipe, each is found by its footer
and checked against the description at the end). The first problem ends the walk.

Options:
      --json       machine-readable report
      --dump       hexdump the first ${DUMP_DEFAULT} bytes of each record's data (QEMU
                   streams: of each VFIO data record)
      --dump-all   hexdump all of each record's data
  -h, --help       this help

${
    examplesHelp([
      "vfio-mig inspect state.bin",
      "vfio-mig save --device 0000:3b:00.1 - | vfio-mig inspect -",
      "vfio-mig inspect --json --dump qemu-migration.bin",
    ])
  }

${
    exitCodesHelp([0, 1, 2, 4], {
      0: "the stream is intact",
      1: "the input cannot be read",
      4: "it is damaged (truncated, corrupted, out of order, or not a vfio-mig stream)",
    })
  }`,
  async run(args) {
    const { values, positionals } = parse("inspect", args, {
      json: { type: "boolean" },
      dump: { type: "boolean" },
      "dump-all": { type: "boolean" },
    });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    if (positionals.length !== 1) throw new VfioMigError("inspect: give one FILE, or - for standard input", "usage");
    const from = positionals[0];
    const sys = libc();
    if (from === "-" && sys.isatty(0)) {
      throw new VfioMigError("inspect: standard input is a terminal: pipe a stream in or give a FILE", "usage");
    }
    const dumpBytes = values["dump-all"] ? Number.MAX_SAFE_INTEGER : values.dump ? DUMP_DEFAULT : 0;
    const sniffed = sniff(openSource(sys, from));
    const source = sniffed.source;
    if (sniffed.kind === "qemu") {
      try {
        return await inspectQemu(sys, from, source, !!values.json, dumpBytes);
      } finally {
        source.close();
      }
    }
    try {
      const dumps = new Map<number, string>();
      let titled = false;
      const json = !!values.json;
      if (!json) console.log(`stream      ${from === "-" ? "standard input" : from}`);
      let headerShown = false;
      const showHeader = (r: InspectReport) => {
        if (headerShown) return;
        headerShown = true;
        for (const l of headerLines(r)) console.log(l);
      };
      let multi = false;
      const r = inspectStream(source, {
        dumpBytes,
        onHeader: (rep) => {
          multi = isMulti(rep);
          if (!json) showHeader(rep);
        },
        onRecord: (rec, head) => {
          if (json) {
            if (head) dumps.set(rec.index, [...head].map((b) => b.toString(16).padStart(2, "0")).join(""));
            return;
          }
          if (!titled) {
            titled = true;
            console.log("records");
            console.log(
              `  ${"#".padStart(5)}  ${"OFFSET".padStart(10)}  ${multi ? "DEV  " : ""}${"SECTION".padEnd(9)}  ${
                "TAG".padEnd(18)
              }  ${"SIZE".padStart(10)}  CRC`,
            );
          }
          console.log(recordLine(rec, multi));
          if (head && head.length) {
            const total = rec.size ?? head.length;
            console.log(
              `         data at byte ${rec.offset + CHUNK_HEADER}${
                head.length < total ? `, first ${head.length} of ${total} bytes` : ""
              }:`,
            );
            for (const l of hexdump(head, "         ")) console.log(l);
          }
        },
      });
      if (json) {
        printJson(
          dumpBytes
            ? { ...r, records: r.records.map((x) => (dumps.has(x.index) ? { ...x, dump: dumps.get(x.index) } : x)) }
            : r,
        );
      } else {
        showHeader(r);
        for (const l of formatSummary(r)) console.log(l);
      }
      return r.ok ? EXIT.OK : EXIT.STREAM;
    } finally {
      source.close();
    }
  },
};

/** The JSON form of a QEMU report: byte arrays as hex strings. */
export function qemuReportJson(r: QemuInspectReport): unknown {
  const hexOf = (b: Uint8Array | null) => (b ? [...b].map((x) => x.toString(16).padStart(2, "0")).join("") : null);
  return {
    ...r,
    vfio: r.vfio.map((d) => ({
      ...d,
      config: d.config && {
        ...d.config,
        decoded: d.config.decoded && {
          ...d.config.decoded,
          config: hexOf(d.config.decoded.config),
          msixTable: hexOf(d.config.decoded.msixTable),
          pba: hexOf(d.config.decoded.pba),
        },
      },
    })),
  };
}

async function inspectQemu(sys: Sys, from: string, source: Source, json: boolean, dumpBytes: number): Promise<number> {
  const description = readFileDescription(sys, from);
  const dumps: { device: string; section: string; offset: number; size: number; dump: string }[] = [];
  const r = await inspectQemuStream(source, {
    description,
    dumpBytes,
    onVfioRecord: (device, section, offset, size, head) => {
      if (!dumpBytes) return;
      if (json) {
        dumps.push({
          device,
          section,
          offset,
          size,
          dump: [...head].map((b) => b.toString(16).padStart(2, "0")).join(""),
        });
        return;
      }
      console.log(
        `${device} ${section} DEV_DATA_STATE at byte ${offset}: ${size} bytes` +
          `${head.length < size ? `, first ${head.length}` : ""}:`,
      );
      for (const l of hexdump(head, "  ")) console.log(l);
    },
  });
  if (json) {
    const out = qemuReportJson(r) as Record<string, unknown>;
    printJson(dumpBytes ? { ...out, dumps } : out);
  } else {
    console.log(`stream      ${from === "-" ? "standard input" : from}`);
    for (const l of formatQemuReport(r)) console.log(l);
  }
  return r.ok ? EXIT.OK : EXIT.STREAM;
}
