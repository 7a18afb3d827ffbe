import { defaultDeviceSpec, openDevice, systemFor } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { load } from "../migrate/load.ts";
import { parseProtocol } from "../migrate/protocol.ts";
import { Cancellation, formatBytes } from "../migrate/session.ts";
import { openSource } from "../transport/transport.ts";
import { type Command, EXIT_CODES_HELP, parse, printJson } from "./command.ts";

export const loadCommand: Command = {
  name: "load",
  summary: "load migration state from a file or standard input into a device",
  help: `Usage: vfio-mig load [--device D] [options] [FILE|-]

Checks the stream's header and device identity (vendor/device/subsystem ids, mdev
type, driver) before touching the device, then moves it to RESUMING, writes each
chunk once its checksum matched, and on a complete stream STOP (the driver validates)
then RUNNING. A truncated or corrupted stream, or any failure after RESUMING, resets
the device (the only way to abort RESUMING); it is then RUNNING with its old state lost.

Options:
  -d, --device D     PCI address, mdev UUID, sysfs path, /dev/vfio/devices/vfioN, or
                     sim:PATH. Default: $VFIO_MIG_DEVICE, else the only
                     migration-capable VFIO device.
      --no-start     leave the device in STOP after loading (default: RUNNING)
      --no-config    do not restore the stream's config section (command register,
                     MSI/MSI-X enable state); its vendor/device ids are still checked
      --protocol P   auto (default: the stream's), v1 or v2
      --json         print a summary as JSON
  -q, --quiet        no progress line
  -h, --help         this help

FILE defaults to '-' (standard input). Permissions: deno run --allow-ffi.
${EXIT_CODES_HELP}`,
  async run(args) {
    const { values, positionals } = parse("load", args, {
      device: { type: "string", short: "d" },
      "no-start": { type: "boolean" },
      "no-config": { type: "boolean" },
      protocol: { type: "string" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    if (positionals.length > 1) throw new VfioMigError("load: give at most one input FILE (or -)", "usage");
    const from = positionals[0] ?? "-";
    const spec = values.device ?? defaultDeviceSpec(systemFor([]));
    const sys = systemFor([spec]);
    if (from === "-" && sys.isatty(0)) {
      throw new VfioMigError("load: standard input is a terminal: pipe a stream in or give a FILE", "usage");
    }
    const source = openSource(sys, from);
    const cancel = new Cancellation().install();
    try {
      const dev = openDevice(sys, spec);
      try {
        const r = await load(dev, source, {
          noStart: values["no-start"],
          noConfig: values["no-config"],
          protocol: parseProtocol(values.protocol, "load"),
          progress: !values.quiet && !values.json,
          cancel,
        });
        if (values.json) printJson({ command: "load", input: from, ...r });
        else if (!values.quiet) {
          console.error(
            `loaded ${formatBytes(r.bytes)} into ${r.device} in ${r.seconds.toFixed(2)}s ` +
              `(${formatBytes(r.throughput)}/s); device is ${r.finalState}`,
          );
        }
        return 0;
      } finally {
        dev.close();
      }
    } finally {
      cancel.uninstall();
      source.close();
    }
  },
};
