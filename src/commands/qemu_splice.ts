import { libc } from "../../ffi/libc.ts";
import { VfioMigError } from "../errors.ts";
import { readFileDescription } from "../qemu/description.ts";
import { spliceQemuStream } from "../qemu/splice.ts";
import { sniff } from "../qemu/sniff.ts";
import { openSink, openSource, type Sink } from "../transport/transport.ts";
import { type Command, parse, printJson } from "./command.ts";
import { examplesHelp, exitCodesHelp } from "./help.ts";

export const qemuSpliceCommand: Command = {
  name: "qemu-splice",
  help: `Usage: vfio-mig qemu-splice QEMU-STREAM --device-stream VFIO-MIG-STREAM -o OUT [--qemu-id ID]

Writes OUT: the QEMU migration stream (a file written by QEMU's 'migrate' to
file: or exec:cat, or '-' for standard input) with one VFIO device's data records
replaced by the data of a vfio-mig stream saved from a device of the same kind, every
other byte as it was. QEMU's 'migrate-incoming' of OUT then loads the state vfio-mig
saved into that device (QEMU 10: protocol v2 streams; QEMU 7.2: protocol v1).

QEMU's data records of the device are dropped (its pre-copy and stop-copy data); the
vfio-mig stream's records go, one QEMU record each, into the device's SECTION_END
before its END_OF_STATE; its SECTION_START, config section (DEV_CONFIG_STATE) and all
other sections are kept. The vfio-mig stream is checked as 'load' checks it (header,
a checksum per chunk, trailer), and its PCI vendor, device and subsystem ids must be
those of the device's config section in the QEMU stream. Both are read once, in
constant memory. OUT is written under a temporary name and renamed only when
complete; on any failure nothing is left.

Options:
      --device-stream FILE  the vfio-mig stream (a file, or '-' for standard input)
  -o, --output OUT          where to write (a file, or '-' for standard output)
      --qemu-id ID          the VFIO device's section id in the QEMU stream, e.g.
                            0000:00:01.0/vfio (needed when it holds several)
      --json                print a summary as JSON
  -q, --quiet               no summary line
  -h, --help                this help

Permissions: deno run --allow-ffi.

${
    examplesHelp([
      "vfio-mig qemu-splice vm.qemu --device-stream gpu.bin -o vm-with-gpu.qemu",
      "vfio-mig save -d 0000:3b:00.1 - | vfio-mig qemu-splice vm.qemu --device-stream - -o out.qemu",
      "vfio-mig qemu-splice vm.qemu --device-stream gpu.bin --qemu-id 0000:00:05.0/vfio -o out.qemu",
    ])
  }

${
    exitCodesHelp([0, 1, 2, 4], {
      1: "failure (reading or writing failed)",
      2: "usage error, or a file named cannot be opened or created",
      4: "a stream is damaged, or the device stream is for another kind of device",
    })
  }`,
  async run(args) {
    // A QEMU migration stream has no place for a MAC (docs/stream-format.md, "Signed streams").
    if (args.some((a) => a === "--sign-key" || a.startsWith("--sign-key="))) {
      throw new VfioMigError(
        "qemu-splice: --sign-key: a QEMU migration stream cannot carry a MAC; only vfio-mig streams are signed " +
          "(save --sign-key)",
        "usage",
      );
    }
    const { values, positionals } = parse("qemu-splice", args, {
      "device-stream": { type: "string" },
      output: { type: "string", short: "o" },
      "qemu-id": { type: "string" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    if (positionals.length !== 1) throw new VfioMigError("qemu-splice: give one QEMU-STREAM (a file or -)", "usage");
    const from = positionals[0];
    const devFrom = values["device-stream"];
    const to = values.output;
    if (devFrom === undefined) throw new VfioMigError("qemu-splice: --device-stream FILE is required", "usage");
    if (to === undefined) throw new VfioMigError("qemu-splice: -o OUT is required", "usage");
    if (from === "-" && devFrom === "-") {
      throw new VfioMigError("qemu-splice: only one of the two streams can come from standard input", "usage");
    }
    const sys = libc();
    if ((from === "-" || devFrom === "-") && sys.isatty(0)) {
      throw new VfioMigError("qemu-splice: standard input is a terminal: pipe a stream in or give a FILE", "usage");
    }
    if (to !== "-" && to === from) throw new VfioMigError("qemu-splice: OUT must not be QEMU-STREAM", "usage");
    const q = sniff(openSource(sys, from));
    let dev = null;
    let sink: Sink | null = null;
    try {
      if (q.kind !== "qemu") {
        throw new VfioMigError(
          `${from} is not a QEMU migration stream${
            q.kind === "vfio-mig" ? " (it is a vfio-mig stream: swap the arguments?)" : ""
          }`,
          "stream",
        );
      }
      dev = openSource(sys, devFrom);
      sink = openSink(sys, to);
      const r = await spliceQemuStream(q.source, dev, sink, {
        qemuId: values["qemu-id"],
        description: readFileDescription(sys, from),
      });
      await sink.commit();
      sink = null;
      if (values.json) printJson({ command: "qemu-splice", input: from, deviceStream: devFrom, output: to, ...r });
      else if (!values.quiet) {
        console.error(
          `spliced ${r.inserted.bytes} bytes of ${r.from}'s state (${r.inserted.records} records, protocol ` +
            `${r.protocol}) into ${r.device} of ${from} in place of ${r.dropped.bytes} (${r.dropped.records} ` +
            `records): ${to === "-" ? "standard output" : to}, ${r.outBytes} bytes`,
        );
      }
      if (r.warning && !values.quiet) console.error(`vfio-mig: warning: ${r.warning}`);
      return 0;
    } finally {
      sink?.abort();
      q.source.close();
      dev?.close();
    }
  },
};
