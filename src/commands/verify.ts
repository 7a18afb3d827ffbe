// `vfio-mig verify FILE`: the check `load` makes of a file before it touches a device
// (src/stream/verify.ts), alone: every chunk's CRC, the record order, the trailer and its
// totals. Exit 0 intact, 4 damaged.

import { libc } from "../../ffi/libc.ts";
import { EXIT, VfioMigError } from "../errors.ts";
import { checkLine } from "../migrate/operation.ts";
import { formatBytes } from "../migrate/session.ts";
import { inspectQemuStream } from "../inspect/qemu.ts";
import { readFileDescription } from "../qemu/description.ts";
import { sniff } from "../qemu/sniff.ts";
import { type StreamProblem, verifyFile, verifyStream } from "../stream/verify.ts";
import { StreamKey, type StreamMacInfo } from "../stream/mac.ts";
import { FdSource, openStreamSource } from "../transport/transport.ts";
import { type Command, parse, printJson } from "./command.ts";
import { examplesHelp, exitCodesHelp } from "./help.ts";

/** What `verify --json` prints. */
export interface VerifySummary {
  command: "verify";
  input: string;
  format: "vfio-mig" | "qemu";
  ok: boolean;
  /** The first problem: byte offset, record number (as `inspect` lists them; null: the header), message. */
  problem: StreamProblem | null;
  streamBytes: number;
  dataBytes: number | null;
  chunks: number | null;
  records: number | null;
  devices: number | null;
  /** A signed stream's MAC algorithm and key id (from its header); null: unsigned. */
  signed: StreamMacInfo | null;
  /** --verify-key given and every MAC matched. */
  authenticated: boolean;
  seconds: number;
  /** Bytes checked per second. */
  rate: number;
}

export const verifyCommand: Command = {
  name: "verify",
  help: `Usage: vfio-mig verify [--json] [--verify-key KEY] FILE|-

Checks a saved stream whole, without a device: the header, every chunk's checksum,
the order of the records (each device's setup, pre-copy, stop-copy and config
sections), the trailer and its totals, and that nothing follows it. It is the check
'vfio-mig load' makes of a FILE before it touches the device (--no-verify-first
skips it there). A QEMU migration stream is checked as 'inspect' checks it.
Constant memory; 0.7-1.1 GiB/s measured (bench/verify_bench.ts). For where and
why a stream is damaged, record by record: vfio-mig inspect.

A signed stream ('save --sign-key') is named as such with its key id; its MACs
are checked only with --verify-key, which also refuses an unsigned stream.

Options:
      --verify-key KEY  the stream must be signed with the key in file KEY (mode
                 600) and every MAC must match, as 'load --verify-key' checks it
      --json     print the result as JSON (ok, problem {offset, record, message},
                 bytes, chunks, records, devices, signed, authenticated, seconds)
  -q, --quiet    no progress line, and nothing printed for an intact stream
  -h, --help     this help

${
    examplesHelp([
      "vfio-mig verify state.bin",
      "vfio-mig verify --json state.bin | jq .problem",
      "zstd -d -c s.zst | vfio-mig verify --verify-key /etc/vfio-mig/key -",
    ])
  }

${
    exitCodesHelp([0, 2, 4, 130], {
      0: "the stream is intact",
      2: "usage error (an input that is missing or not a file included)",
      4: "the stream is damaged (truncated, corrupted, out of order, or not a stream vfio-mig loads); " +
        "with --verify-key: unsigned, signed with another key, or a MAC that does not match",
    })
  }`,
  async run(args) {
    const { values, positionals } = parse("verify", args, {
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
      "verify-key": { type: "string" },
    });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    if (positionals.length !== 1) throw new VfioMigError("verify: give one FILE, or - for standard input", "usage");
    const from = positionals[0];
    const sys = libc();
    const key = values["verify-key"] === undefined
      ? null
      : await StreamKey.fromFile(sys, values["verify-key"], "--verify-key");
    if (from === "-" && sys.isatty(0)) {
      throw new VfioMigError("verify: standard input is a terminal: pipe a stream in or give a FILE", "usage");
    }
    const label = from === "-" ? "standard input" : from;
    const t0 = performance.now();
    let summary: VerifySummary;
    const source = openStreamSource(sys, from);
    try {
      const size = source instanceof FdSource ? sys.fstat(source.fd).size : 0;
      const line = checkLine(label, size, !values.quiet && !values.json, "");
      try {
        const file = source instanceof FdSource
          ? await verifyFile(sys, source.fd, label, { onProgress: line.update, key })
          : null;
        if (file) summary = fromVfioMig(label, file, file.seconds);
        else if (source instanceof FdSource) summary = await verifyOther(sys, from, label, source, t0, key);
        else summary = fromVfioMig(label, await verifyStream(source, { onProgress: line.update, key }), seconds(t0));
      } finally {
        line.done(false); // verify prints its own result
      }
    } finally {
      source.close();
    }
    if (values.json) printJson(summary);
    else if (!summary.ok) {
      const p = summary.problem!;
      const where = p.offset === null ? "" : ` at byte ${p.offset}${p.record === null ? "" : ` (record ${p.record})`}`;
      // An authentication failure (--verify-key) need not be damage: say what it is.
      console.log(`${label}: ${p.authentication ? "NOT AUTHENTIC" : "DAMAGED"}${where}: ${p.message}`);
    } else if (!values.quiet) {
      const signed = summary.signed
        ? `; signed (${summary.signed.algorithm}, key id ${summary.signed.keyId}), ` +
          (summary.authenticated ? "every MAC verified" : "MACs not checked: give --verify-key")
        : "";
      const what = summary.format === "qemu"
        ? "a QEMU migration stream"
        : `${formatBytes(summary.dataBytes!)} of device data in ${summary.chunks} chunks, ` +
          `${summary.devices} device${summary.devices === 1 ? "" : "s"}${signed}`;
      console.log(
        `${label}: intact: ${what}; ${formatBytes(summary.streamBytes)} checked in ${summary.seconds.toFixed(2)}s ` +
          `(${formatBytes(summary.rate)}/s)`,
      );
    }
    return summary.ok ? EXIT.OK : EXIT.STREAM;
  },
};

const seconds = (t0: number) => (performance.now() - t0) / 1000;

function fromVfioMig(
  label: string,
  r: Awaited<ReturnType<typeof verifyStream>>,
  s: number,
): VerifySummary {
  return {
    command: "verify",
    input: label,
    format: "vfio-mig",
    ok: r.ok,
    problem: r.problem,
    streamBytes: r.streamBytes,
    dataBytes: r.dataBytes,
    chunks: r.chunks,
    records: r.records,
    devices: r.devices,
    signed: r.signed,
    authenticated: r.authenticated,
    seconds: s,
    rate: s > 0 ? r.streamBytes / s : 0,
  };
}

/** A regular file that does not start as a vfio-mig stream: a QEMU stream is inspected; anything else refused as load would. */
async function verifyOther(
  sys: ReturnType<typeof libc>,
  from: string,
  label: string,
  source: FdSource,
  t0: number,
  key: StreamKey | null,
): Promise<VerifySummary> {
  const sniffed = sniff(source);
  if (sniffed.kind !== "qemu") return fromVfioMig(label, await verifyStream(sniffed.source, { key }), seconds(t0));
  const description = readFileDescription(sys, from);
  const rep = await inspectQemuStream(sniffed.source, { description });
  const s = seconds(t0);
  const p = key
    ? {
      offset: 0,
      authentication: true as const,
      message: `the stream is not signed: it is a QEMU migration stream, which carries no MAC; ` +
        `--verify-key ${key.path} accepts only vfio-mig streams saved with --sign-key`,
    }
    : rep.firstProblem;
  return {
    command: "verify",
    input: label,
    format: "qemu",
    ok: rep.ok && !key,
    problem: p
      ? { offset: p.offset, record: null, message: p.message, ...(key ? { authentication: true as const } : {}) }
      : null,
    streamBytes: rep.streamBytes,
    dataBytes: null,
    chunks: null,
    records: null,
    devices: null,
    signed: null,
    authenticated: false,
    seconds: s,
    rate: s > 0 ? rep.streamBytes / s : 0,
  };
}
