import { defaultDeviceSpec, openDevice, systemFor } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { parseProtocol } from "../migrate/protocol.ts";
import { save } from "../migrate/save.ts";
import { Cancellation, formatBytes } from "../migrate/session.ts";
import { DEFAULT_DOWNTIME_LIMIT_MS, DEFAULT_MAX_PRECOPY_MS } from "../migrate/precopy.ts";
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, TcpClient, TcpSink } from "../transport/tcp.ts";
import { openSink, type Sink } from "../transport/transport.ts";
import { type Command, EXIT_CODES_HELP, parse, printJson } from "./command.ts";
import { msOption, NETWORK_HELP, NETWORK_OPTIONS, readPem, tokenFrom } from "./network.ts";

export const saveCommand: Command = {
  name: "save",
  summary: "save a device's migration state to a file, standard output or a listening load",
  help: `Usage: vfio-mig save [--device D] [options] FILE|-|tcp://HOST:PORT

Stops the device (STOP_COPY), streams its migration state into FILE ('-' for
standard output, tcp://HOST:PORT for a 'vfio-mig load --listen'), and leaves it in
STOP (or RUNNING with --resume). A file is written under a temporary name and
appears only when complete; over TCP, save succeeds only when the destination
reports it loaded the state. On failure the device is returned to the state it was found in
(RUNNING normally; reset as a last resort) and nothing complete-looking is left.

Options:
  -d, --device D     PCI address (0000:3b:00.1), mdev UUID, sysfs path,
                     /dev/vfio/devices/vfioN, or sim:PATH. Default: $VFIO_MIG_DEVICE,
                     else the only migration-capable VFIO device.
      --resume       return the device to RUNNING after saving (default: STOP)
      --live         pre-copy while the device runs, then stop it when the rest fits
                     the downtime limit at the measured bandwidth (needs PRE_COPY);
                     SIGUSR1 switches to stop-copy at once
      --downtime-limit MS  the downtime to aim for with --live (default ${DEFAULT_DOWNTIME_LIMIT_MS})
      --max-precopy MS  longest pre-copy phase with --live (default ${DEFAULT_MAX_PRECOPY_MS})
${NETWORK_HELP}
      --tls          connect with TLS (system roots); --tls-ca FILE trusts a CA
      --protocol P   auto (default: uAPI v2 when the device has it, else the v1
                     migration region), v1 or v2
      --json         print a summary as JSON (to stderr when the stream goes to stdout)
  -q, --quiet        no progress line
  -h, --help         this help

Permissions: deno run --allow-ffi (everything goes through libc); tcp:// also
needs --allow-net.
${EXIT_CODES_HELP}`,
  async run(args) {
    const { values, positionals } = parse("save", args, {
      device: { type: "string", short: "d" },
      resume: { type: "boolean" },
      live: { type: "boolean" },
      "max-precopy": { type: "string" },
      "downtime-limit": { type: "string" },
      tls: { type: "boolean" },
      "tls-ca": { type: "string" },
      ...NETWORK_OPTIONS,
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
        "save: give one output: a FILE, - for standard output, or tcp://HOST:PORT (see 'vfio-mig save --help')",
        "usage",
      );
    }
    const target = positionals[0];
    const maxPrecopy = msOption(values["max-precopy"], "max-precopy", DEFAULT_MAX_PRECOPY_MS);
    const downtimeLimit = msOption(values["downtime-limit"], "downtime-limit", DEFAULT_DOWNTIME_LIMIT_MS);
    const probe = systemFor([values.device ?? ""]);
    const spec = values.device ?? defaultDeviceSpec(probe);
    const sys = systemFor([spec]);
    if (target === "-" && sys.isatty(1)) {
      throw new VfioMigError(
        "save: refusing to write device state to a terminal: redirect standard output or give a FILE",
        "usage",
      );
    }
    // Connect and authenticate before the device is touched.
    let sink: Sink | null = null;
    if (target.startsWith("tcp://")) {
      const token = tokenFrom(sys, values.token);
      if (!token) {
        throw new VfioMigError("save: tcp:// needs the listener's token: --token T or VFIO_MIG_TOKEN", "usage");
      }
      sink = new TcpSink(
        await TcpClient.connect(target, {
          token,
          tls: values.tls,
          tlsCa: readPem(sys, values["tls-ca"], "CA certificate"),
          handshakeTimeoutMs: msOption(values["handshake-timeout"], "handshake-timeout", DEFAULT_HANDSHAKE_TIMEOUT_MS),
        }),
      );
    }
    const dev = openDevice(sys, spec);
    const cancel = new Cancellation().install();
    try {
      sink ??= openSink(sys, target);
      const r = await save(dev, sink, {
        resume: values.resume,
        live: values.live,
        maxPrecopyMs: maxPrecopy,
        downtimeLimitMs: downtimeLimit,
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
      if (sink instanceof TcpSink) sink.abort(); // closes the connection (a no-op once finished)
      dev.close();
    }
  },
};
