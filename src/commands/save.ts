import { defaultDeviceSpec, openDevice, systemFor } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { parseProtocol } from "../migrate/protocol.ts";
import { save } from "../migrate/save.ts";
import { Cancellation, formatBytes } from "../migrate/session.ts";
import { openSink } from "../transport/transport.ts";
import { type Command, EXIT_CODES_HELP, parse, printJson } from "./command.ts";

export const saveCommand: Command = {
  name: "save",
  summary: "save a device's migration state to a file or standard output",
  help: `Usage: vfio-mig save [--device D] [options] [FILE|-]

Stops the device (STOP_COPY), streams its migration state into FILE ('-' for
standard output), and leaves it in STOP (or RUNNING with --resume). A file is written under a temporary name and appears only
when complete. On failure the device is returned to the state it was found in
(RUNNING normally; reset as a last resort) and nothing complete-looking is left.

Options:
  -d, --device D     PCI address (0000:3b:00.1), mdev UUID, sysfs path,
                     /dev/vfio/devices/vfioN, or sim:PATH. Default: $VFIO_MIG_DEVICE,
                     else the only migration-capable VFIO device.
      --resume       return the device to RUNNING after saving (default: STOP)
      --live         pre-copy while the device runs, then stop it (needs PRE_COPY)
      --max-precopy MS  longest pre-copy phase with --live (default 10000)
      --protocol P   auto (default: uAPI v2 when the device has it, else the v1
                     migration region), v1 or v2
      --json         print a summary as JSON (to stderr when the stream goes to stdout)
  -q, --quiet        no progress line
  -h, --help         this help

Permissions: deno run --allow-ffi (everything goes through libc).
${EXIT_CODES_HELP}`,
  async run(args) {
    const { values, positionals } = parse("save", args, {
      device: { type: "string", short: "d" },
      resume: { type: "boolean" },
      live: { type: "boolean" },
      "max-precopy": { type: "string" },
      protocol: { type: "string" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    if (positionals.length !== 1) {
      throw new VfioMigError(
        "save: give one output: a FILE, or - for standard output (see 'vfio-mig save --help')",
        "usage",
      );
    }
    const target = positionals[0];
    const maxPrecopy = values["max-precopy"] === undefined ? undefined : Number(values["max-precopy"]);
    if (maxPrecopy !== undefined && !(maxPrecopy >= 0)) {
      throw new VfioMigError("save: --max-precopy takes a number of milliseconds", "usage");
    }
    const probe = systemFor([values.device ?? ""]);
    const spec = values.device ?? defaultDeviceSpec(probe);
    const sys = systemFor([spec]);
    if (target === "-" && sys.isatty(1)) {
      throw new VfioMigError(
        "save: refusing to write device state to a terminal: redirect standard output or give a FILE",
        "usage",
      );
    }
    const dev = openDevice(sys, spec);
    const cancel = new Cancellation().install();
    try {
      const sink = openSink(sys, target);
      const r = await save(dev, sink, {
        resume: values.resume,
        live: values.live,
        maxPrecopyMs: maxPrecopy,
        protocol: parseProtocol(values.protocol, "save"),
        progress: !values.quiet && !values.json,
        cancel,
      });
      if (values.json) printJson({ command: "save", output: target, ...r }, target === "-");
      else if (!values.quiet) {
        console.error(
          `saved ${formatBytes(r.bytes)} from ${r.device} to ${target === "-" ? "standard output" : target} in ` +
            `${r.seconds.toFixed(2)}s (${formatBytes(r.throughput)}/s); device is ${r.finalState}`,
        );
      }
      return 0;
    } finally {
      cancel.uninstall();
      dev.close();
    }
  },
};
