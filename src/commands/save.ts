import { defaultDeviceSpec, loadBackendsFor, systemFor, type VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { parseProtocol } from "../migrate/protocol.ts";
import { save, type SaveResult } from "../migrate/save.ts";
import { type FailureScope, noteFailureStates, withFailureReport } from "../migrate/operation.ts";
import { Cancellation, formatBytes } from "../migrate/session.ts";
import { DEFAULT_DOWNTIME_LIMIT_MS, DEFAULT_MAX_PRECOPY_MS } from "../migrate/precopy.ts";
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, TcpClient, TcpSink } from "../transport/tcp.ts";
import { openSink, saveTarget, type Sink } from "../transport/transport.ts";
import { type Command, parse, printJson } from "./command.ts";
import { parseRate, RATE_HELP } from "./options.ts";
import { deviceHelp, examplesHelp, exitCodesHelp, vfTokenHelp } from "./help.ts";
import { closeDevices, MULTI_SAVE_HELP, openDevices, VF_TOKEN_OPTION, vfTokenFor } from "./devices.ts";
import { freshOpenWarnings } from "../device/family.ts";
import { EVENTS_HELP, EVENTS_OPTIONS, migrationEvents } from "../events/cli.ts";
import { msOption, NETWORK_HELP, NETWORK_OPTIONS, readPem, tokenFrom } from "./network.ts";
import { libc } from "../../ffi/libc.ts";
import { StreamKey } from "../stream/mac.ts";

function ms(n: number): string {
  return `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`;
}

/** The second line of a live save's text summary: pre-copy, why it ended, the downtime. */
export function liveSummary(r: SaveResult): string {
  const why = r.switchReason === "converged"
    ? `converged under the ${r.downtimeLimitMs} ms limit`
    : r.switchReason === "requested"
    ? "switched on request (SIGUSR2)"
    : "stopped by --max-precopy";
  const bw = r.bandwidth ? ` at ${formatBytes(r.bandwidth)}/s` : "";
  const toRunning = r.downtimeToRunningMs !== null ? ` (${ms(r.downtimeToRunningMs)} until the destination ran)` : "";
  const reinit = r.reinits > 0 ? `, ${r.reinits} REINIT` : "";
  return `pre-copy: ${r.iterations} iterations, ${formatBytes(r.precopyBytes)}${bw}${reinit}, ${why}; ` +
    `stop-copy ${formatBytes(r.stopCopyBytes)}; downtime ${ms(r.downtimeMs)}` +
    `${r.downtimeLimitMs !== null && r.downtimeMs > r.downtimeLimitMs ? " (above the limit)" : ""}${toRunning}`;
}

/** The text summary of a save: one line, the live line, and with several devices one line each. */
export function saveSummary(r: SaveResult, target: string): string[] {
  const to = target === "-" ? "standard output" : target;
  const cap = r.maxBandwidth ? `, at most ${formatBytes(r.maxBandwidth)}/s` : "";
  const lines: string[] = [];
  if (r.devices.length === 1) {
    lines.push(
      `saved ${formatBytes(r.bytes)} from ${r.device} to ${to} in ${r.seconds.toFixed(2)}s ` +
        `(${formatBytes(r.throughput)}/s${cap}); device is ${r.finalState}`,
    );
  } else {
    lines.push(
      `saved ${formatBytes(r.bytes)} from ${r.devices.length} devices to ${to} in ${r.seconds.toFixed(2)}s ` +
        `(${formatBytes(r.throughput)}/s${cap}), downtime ${Math.round(r.downtimeMs)} ms`,
    );
    for (const d of r.devices) {
      lines.push(`  ${d.index}  ${d.device}: ${formatBytes(d.bytes)}, ${d.chunks} chunks; device is ${d.finalState}`);
    }
  }
  if (r.switchReason) lines.push(liveSummary(r));
  return lines;
}

/**
 * What to say when pre-copy had to give up. The bytes are what was left at the switch, measured: what stop-copy
 * sent plus what the TCP queue still held (not the decision's PRECOPY_INFO estimate, which at a --max-precopy
 * switch was taken before MIG_DATA_SIZE was asked and may be far from it).
 */
export function maxPrecopyNote(r: SaveResult): string {
  const left = r.stopCopyBytes + r.backlogAtSwitch;
  const bw = r.bandwidth;
  const needMs = bw ? (left / bw) * 1000 : null;
  const would = needMs !== null ? `, ~${ms(needMs)} at ${formatBytes(bw!)}/s` : "";
  const limit = needMs === null || needMs > (r.downtimeLimitMs ?? 0)
    ? `more than the ${r.downtimeLimitMs} ms downtime limit`
    : `within the ${r.downtimeLimitMs} ms downtime limit only at the switch`;
  return `vfio-mig: note: pre-copy did not converge: after ${r.iterations} iterations ` +
    `${formatBytes(left)} was left at the switch${would}, ${limit} (the device dirties its state about as fast ` +
    `as it can be sent, or cannot report MIG_DATA_SIZE); --max-precopy forced the switch, ` +
    `downtime was ${ms(r.downtimeMs)}. Raise --downtime-limit, or give more bandwidth.`;
}

/** The options that mean something only when the output is tcp://HOST:PORT. */
const TCP_OUTPUT = { what: "a tcp:// output", test: (_: unknown, p: string[]) => /^tcp:/.test(p[0] ?? "") };

export const saveCommand: Command = {
  name: "save",
  handlesSignals: true,
  help: `Usage: vfio-mig save [--device D] [options] FILE|-|tcp://HOST:PORT
       vfio-mig save --device A --device B ... [options] FILE|-|tcp://HOST:PORT

Stops the device (STOP_COPY), streams its migration state into FILE ('-' for
standard output, tcp://HOST:PORT for a 'vfio-mig load --listen'), and leaves it in
STOP (or RUNNING with --resume). A file is written under a temporary name and
appears only when complete; over TCP, save succeeds only when the destination
reports it loaded the state. On failure the device is returned to the state it was found in
(RUNNING normally; reset as a last resort) and nothing complete-looking is left.
QEMU's migrate URIs tcp:HOST:PORT and file:PATH are taken as tcp://HOST:PORT and
PATH; any other NAME:... output is refused (./NAME:... is a file so named).

Options:
${deviceHelp(21)}
${vfTokenHelp(21)}
      --resume       return the device to RUNNING after saving (default: STOP)
      --live         pre-copy while the device runs, then stop it when the rest fits
                     the downtime limit at the measured bandwidth (needs PRE_COPY);
                     never before the initial data was sent (over tcp://: loaded by
                     the destination; again after a Linux 7.1 REINIT); kill -USR2
                     switches to stop-copy at its next decision (a SIGUSR2 before
                     pre-copy: after its first round; without --live: ignored)
      --downtime-limit TIME  the downtime to aim for with --live (default ${DEFAULT_DOWNTIME_LIMIT_MS}ms;
                     0: switch only when nothing is left to send)
      --max-bandwidth RATE  read device data at most this fast (QEMU's max-bandwidth,
                     default: no limit); with --live it paces pre-copy, and the
                     stop-copy runs unlimited as QEMU's does (the device is stopped)
      --max-precopy TIME  longest pre-copy phase with --live (default ${DEFAULT_MAX_PRECOPY_MS / 1000}s;
                     0: stop-copy right after the initial data)
                     A device without MIG_DATA_SIZE never converges (its stop-copy
                     size counts as 100 GiB, as QEMU's): only --max-precopy or
                     kill -USR2 ends its pre-copy. The note at a forced switch
                     gives what was left then, measured (stop-copy's bytes and
                     the TCP queue), not the PRECOPY_INFO estimate
${NETWORK_HELP}
      --tls          connect with TLS (system roots); --tls-ca FILE trusts a CA
      --protocol P   auto (default: uAPI v2 when the device has it, else the v1
                     migration region), v1 or v2
      --sign-key FILE  sign the stream: an HMAC-SHA256 over the header, every record
                     and the trailer, chained, with the key in FILE (its bytes, at
                     least 32; mode 600; make one: (umask 077; head -c 32
                     /dev/urandom > FILE)); 'load --verify-key FILE' then refuses
                     anything else. The header names the key id (sha256sum FILE,
                     first 16 digits), never the key
      --json         print a summary as JSON (to stderr when the stream goes to stdout)
${EVENTS_HELP}
  -q, --quiet        no progress bar
  -h, --help         this help
${MULTI_SAVE_HELP}

TIME is milliseconds, or a number with a unit: 500ms, 10s, 2m.
${RATE_HELP}
Permissions: deno run --allow-ffi (everything goes through libc); tcp:// also
needs --allow-net.

${
    examplesHelp([
      "vfio-mig save --device 0000:3b:00.1 state.bin",
      "vfio-mig save --live --downtime-limit 300ms --device pid:4242 - | ssh dst vfio-mig load -d 0000:3b:00.1 -",
      "vfio-mig save --sign-key /etc/vfio-mig/key --token $T --device 0000:3b:00.1 tcp://dst:7000",
    ])
  }

${exitCodesHelp([0, 1, 2, 3, 4, 130], { 4: "the destination (tcp://) refused the stream" })}`,
  run(args) {
    // --json: any failure, a usage error included, prints one JSON object (docs/tools.md),
    // to stderr when the stream goes to standard output.
    const scope: FailureScope = { labels: [], devices: [], toStderr: args.includes("-") };
    return withFailureReport("save", args.includes("--json"), scope, () => runSave(this.help, args, scope));
  },
};

async function runSave(help: string, args: string[], scope: FailureScope): Promise<number> {
  const { values, positionals } = parse("save", args, {
    device: { type: "string", short: "d", multiple: true },
    ...VF_TOKEN_OPTION,
    "no-p2p": { type: "boolean" },
    resume: { type: "boolean" },
    live: { type: "boolean" },
    "max-bandwidth": { type: "string" },
    "max-precopy": { type: "string", needs: "live" },
    "downtime-limit": { type: "string", needs: "live" },
    tls: { type: "boolean", needs: TCP_OUTPUT },
    "tls-ca": { type: "string", needs: TCP_OUTPUT },
    token: { ...NETWORK_OPTIONS.token, needs: TCP_OUTPUT },
    "handshake-timeout": { ...NETWORK_OPTIONS["handshake-timeout"], needs: TCP_OUTPUT },
    protocol: { type: "string" },
    "sign-key": { type: "string" },
    ...EVENTS_OPTIONS,
    json: { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) {
    console.log(help);
    return 0;
  }
  scope.toStderr = positionals[0] === "-";
  // The key is read (and node:crypto loaded) only when one is given; before any device is touched.
  const signKey: StreamKey | null = values["sign-key"] === undefined
    ? null
    : await StreamKey.fromFile(libc(), values["sign-key"], "--sign-key");
  if (positionals.length !== 1) {
    throw new VfioMigError(
      "save: give one output: a FILE, - for standard output, or tcp://HOST:PORT (see 'vfio-mig save --help')",
      "usage",
    );
  }
  const target = saveTarget(positionals[0]); // QEMU's tcp:H:P and file:P too; other URIs refused
  const maxBandwidth = values["max-bandwidth"] === undefined
    ? undefined
    : parseRate(values["max-bandwidth"], "max-bandwidth");
  const maxPrecopy = msOption(values["max-precopy"], "max-precopy", DEFAULT_MAX_PRECOPY_MS, { zero: true });
  const downtimeLimit = msOption(values["downtime-limit"], "downtime-limit", DEFAULT_DOWNTIME_LIMIT_MS, {
    zero: true,
  });
  const specs = values.device?.length ? values.device : [defaultDeviceSpec(systemFor([""]))];
  const vfToken = vfTokenFor("save", values["vf-token"], specs);
  scope.labels = specs;
  await loadBackendsFor(specs);
  const sys = systemFor(specs);
  if (target === "-" && sys.isatty(1)) {
    throw new VfioMigError(
      "save: refusing to write device state to a terminal: redirect standard output or give a FILE",
      "usage",
    );
  }
  // The events (--events, the progress bar) before anything else can fail or change.
  const { events } = migrationEvents(sys, {
    events: values.events,
    progress: !values.quiet && !values.json,
    reservedFds: target === "-" ? [1] : [],
  });
  events.start({ command: "save", mode: values.live ? "live" : "offline", target, maxBandwidth });
  let sink: Sink | null = null;
  let devs: VfioDevice[] = [];
  try {
    // Connect and authenticate before the device is touched.
    if (target.startsWith("tcp://")) {
      const token = tokenFrom(sys, values.token);
      if (!token) {
        throw new VfioMigError("save: tcp:// needs the listener's token: --token T or VFIO_MIG_TOKEN", "usage");
      }
      const client = await TcpClient.connect(target, {
        token,
        tls: values.tls,
        tlsCa: readPem(sys, values["tls-ca"], "CA certificate"),
        handshakeTimeoutMs: msOption(values["handshake-timeout"], "handshake-timeout", DEFAULT_HANDSHAKE_TIMEOUT_MS),
      });
      events.transport("connected", { peer: target, tls: !!values.tls || values["tls-ca"] !== undefined });
      events.transport("authenticated", { peer: target });
      sink = new TcpSink(client);
    }
    // save() ends the output's waits on a signal (a full pipe, a FIFO without a reader, a
    // destination that stopped reading) and then recovers the devices. Caught from
    // before the open: a signal that came between the open and the listener would kill
    // the process without a word (seen in the TCG guest, where that gap took seconds).
    const cancel = new Cancellation().install();
    try {
      devs = openDevices(sys, specs, vfToken);
      scope.labels = devs.map((d) => d.label);
      scope.devices = devs;
      sink ??= openSink(sys, target);
      const r = await save(devs, sink, {
        resume: values.resume,
        live: values.live,
        maxPrecopyMs: maxPrecopy,
        downtimeLimitMs: downtimeLimit,
        protocol: parseProtocol(values.protocol, "save"),
        events,
        cancel,
        noP2p: values["no-p2p"],
        maxBandwidth,
        signKey,
      });
      // Saved from a fresh open of a device vfio-pci resets: say whose state this is.
      const fresh = devs.flatMap((d) => freshOpenWarnings(d, "save"));
      for (const w of fresh) {
        events.note(w, "warning");
        console.error(`vfio-mig: warning: ${w}`);
      }
      const summary = {
        command: "save",
        output: target,
        ...r,
        warnings: [...r.warnings, ...fresh],
      };
      events.result(summary);
      if (values.json) printJson(summary, target === "-");
      else if (!values.quiet) {
        for (const line of saveSummary(r, target)) console.error(line);
        if (signKey) console.error(`signed with key ${signKey.path} (key id ${signKey.id})`);
      }
      // Not converging is worth a word even with --json (unless the JSON itself goes to stderr).
      if (r.switchReason === "max-precopy" && !values.quiet && !(values.json && target === "-")) {
        console.error(maxPrecopyNote(r));
      }
      return 0;
    } finally {
      cancel.uninstall();
    }
  } catch (e) {
    noteFailureStates(e, devs); // where the devices are left, while they are open
    events.error(e);
    throw e;
  } finally {
    events.close();
    if (sink instanceof TcpSink) sink.abort(); // closes the connection (a no-op once finished)
    scope.devices = [];
    closeDevices(devs);
  }
}
