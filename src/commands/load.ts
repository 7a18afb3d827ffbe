import { defaultDeviceSpec, loadBackendsFor, systemFor } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { load, type LoadOptions, type LoadResult } from "../migrate/load.ts";
import { qemuLoadReader } from "../qemu/reader.ts";
import { kindOf, sniffAsync, type StreamKind } from "../qemu/sniff.ts";
import { SEEK } from "../../ffi/sys.ts";
import { isErrno } from "../../ffi/errno.ts";
import { parseProtocol } from "../migrate/protocol.ts";
import { Cancellation, failure, formatBytes, onCancel } from "../migrate/session.ts";
import { type FailureScope, interruptedOr, noteFailureStates, withFailureReport } from "../migrate/operation.ts";
import { operationName } from "../migrate/group.ts";
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  newToken,
  TcpServerConn,
  TcpSource,
} from "../transport/tcp.ts";
import { FdSource, loadInput, openStreamSource, type StreamSource } from "../transport/transport.ts";
import { type Command, parse, printJson } from "./command.ts";
import { deviceHelp, examplesHelp, exitCodesHelp, vfTokenHelp } from "./help.ts";
import { closeDevices, MULTI_LOAD_HELP, openDevices, parseMaps, VF_TOKEN_OPTION, vfTokenFor } from "./devices.ts";
import { EVENTS_HELP, EVENTS_OPTIONS, migrationEvents } from "../events/cli.ts";
import { freshOpenWarnings } from "../device/family.ts";
import { execWithDeviceFd } from "../device/exec.ts";
import {
  LISTEN_HELP,
  LISTEN_OPTIONS,
  maxStartupsOption,
  msOption,
  NETWORK_HELP,
  NETWORK_OPTIONS,
  readPem,
  reportTurnedAway,
  tokenFrom,
} from "./network.ts";
import { libc } from "../../ffi/libc.ts";
import { StreamAuthError, StreamKey } from "../stream/mac.ts";

/**
 * The kind of stream in a regular file, from its first bytes read with pread (the
 * offset does not move); null for anything that is not a regular file. Throws
 * VfioMigError when the file cannot be read.
 */
function peekKind(src: FdSource): StreamKind | null {
  let at: number;
  try {
    if (!src.sys.fstat(src.fd).isRegular) return null;
    at = src.sys.lseek(src.fd, 0, SEEK.CUR);
  } catch {
    return null; // not seekable: told by its first bytes
  }
  const lead = new Uint8Array(8);
  let n = 0;
  try {
    while (n < lead.length) {
      const got = src.sys.pread(src.fd, lead.subarray(n), at + n);
      if (got === 0) break;
      n += got;
    }
  } catch (e) {
    if (isErrno(e, "EINTR")) return peekKind(src);
    throw new VfioMigError(`cannot read ${src.label}: ${e instanceof Error ? e.message : e}`, "failure", { cause: e });
  }
  return kindOf(lead.subarray(0, n));
}

/** The text summary of a load: one line, and with several devices one line each. */
export function loadSummary(r: LoadResult): string[] {
  if (r.devices.length === 1) {
    return [
      `loaded ${formatBytes(r.bytes)} into ${r.device} in ${r.seconds.toFixed(2)}s ` +
      `(${formatBytes(r.throughput)}/s); device is ${r.finalState}`,
    ];
  }
  return [
    `loaded ${formatBytes(r.bytes)} into ${r.devices.length} devices in ${r.seconds.toFixed(2)}s ` +
    `(${formatBytes(r.throughput)}/s)`,
    ...r.devices.map((d) =>
      `  ${d.index}  ${d.source} -> ${d.device}: ${formatBytes(d.bytes)}; device is ${d.finalState}`
    ),
  ];
}

export const loadCommand: Command = {
  name: "load",
  handlesSignals: true,
  help: `Usage: vfio-mig load [--device D] [options] [FILE|-]
       vfio-mig load [--device D] [options] --listen [HOST:]PORT
       vfio-mig load --device B1 --device B2 ... | --map SRC=DST ... [options] [FILE|-]

Checks the stream's header and device identity (vendor/device/subsystem ids, mdev
type, driver) before touching the device, then moves it to RESUMING, writes each
chunk once its checksum matched, and on a complete stream STOP (the driver validates)
then RUNNING. A truncated or corrupted stream, or any failure after RESUMING, resets
the device (the only way to abort RESUMING); it is then RUNNING with its old state lost.
file:PATH (QEMU's URI) is PATH; a tcp: address is refused: vfio-mig listens only
where --listen says; any other NAME:... input is refused (./NAME:... is the file).

A FILE (or standard input redirected from a file) is first checked whole, before
the device is touched: every chunk's checksum, the record order, the trailer and
its totals, read through the descriptor the load then reads (measured: +1.5 s at
1 GiB, +6 s at 8 GiB; bench/verify_bench.ts); a damaged file is refused and the
device keeps its state. A pipe, socket or --listen stream cannot be read twice, so it is checked
only as it is loaded: damage found then resets the device. To check a file
without a device: vfio-mig verify FILE.

Options:
${deviceHelp(21)}
${vfTokenHelp(21)}
      --no-start     leave the device in STOP after loading (default: RUNNING)
      --exec CMD ... after the load, run CMD (all the arguments that follow) with the
                     device fd inherited, its number in $VFIO_MIG_DEVICE_FD: a
                     vfio-pci function resets at its last close, so the state lives
                     while CMD holds it. The exit code is CMD's (128+N for signal N).
      --no-config    do not restore the stream's config section (command register,
                     MSI/MSI-X enable state); its vendor/device ids are still checked
      --no-verify-first  do not check a FILE whole before touching the device (saves
                     reading it twice; damage found while loading then resets it)
      --verify-key FILE  accept only a stream signed ('save --sign-key') with the key
                     in FILE (mode 600): an unsigned stream, another key or any MAC
                     that does not match is refused (exit 4). A FILE is checked whole
                     first (the device keeps its state); a pipe or --listen stream
                     is refused at its first bad record, before any of its bytes
                     reach the device (the device is then reset, as for damage)
      --protocol P   auto (default: the stream's), v1 or v2
      --qemu-id ID   FILE is a QEMU migration stream ('migrate' to a file; told by its
                     magic) holding several VFIO devices: load the one whose section
                     is ID, e.g. 0000:00:01.0/vfio. Its data records go to the device
                     in order, its config section is restored as a vfio-mig one; the
                     protocol is the device's. A file is checked whole before the
                     device is touched; from a pipe the device's ids are checked when
                     its config section comes, after the data (a mismatch resets it).
      --listen [HOST:]PORT  accept exactly one 'vfio-mig save … tcp://' peer; HOST
                     defaults to 127.0.0.1 (say 0.0.0.0 to accept from other hosts).
                     The peer must prove it knows the token before any state is
                     read; without --token or $VFIO_MIG_TOKEN a random token is
                     printed. Handshakes run side by side, each with its own timeout:
                     silent, slow or wrong peers never delay the right one. Peers that
                     fail are refused and the wait goes on; once one is in, every
                     other connection is closed.
${LISTEN_HELP}
${NETWORK_HELP}
      --idle-timeout TIME  fail when the peer sends nothing for TIME (default ${DEFAULT_IDLE_TIMEOUT_MS / 1000}s)
      --accept-timeout TIME  give up when no peer authenticated within TIME
                     (default, or 0: wait until one does)
      --tls-cert FILE, --tls-key FILE  accept TLS connections (PEM)
      --json         print a summary as JSON
${EVENTS_HELP}
  -q, --quiet        no progress bar
  -h, --help         this help
${MULTI_LOAD_HELP}

FILE defaults to '-' (standard input). TIME is milliseconds, or a number with a
unit: 500ms, 10s, 2m. Permissions: deno run --allow-ffi; --listen also needs
--allow-net.

${
    examplesHelp([
      "vfio-mig load --device 0000:3b:00.1 state.bin",
      "zstd -d -q s.zst -o s.bin && vfio-mig inspect s.bin > /dev/null && vfio-mig load -d 0000:3b:00.1 s.bin",
      "vfio-mig load --listen 0.0.0.0:7000 --token $T --verify-key /etc/vfio-mig/key -d 0000:3b:00.1 --exec qemu-system-x86_64 ...",
    ])
  }

${exitCodesHelp([0, 1, 2, 3, 4, 130], { 0: "success (with --exec: CMD's exit code)" })}`,
  run(allArgs) {
    // Everything after --exec is the command (its own options are not ours).
    const ex = allArgs.indexOf("--exec");
    const args = ex >= 0 ? allArgs.slice(0, ex) : allArgs;
    // --json: any failure, a usage error included, prints one JSON object (docs/tools.md).
    const scope: FailureScope = { labels: [], devices: [], toStderr: false };
    return withFailureReport("load", args.includes("--json"), scope, () => runLoad(this.help, allArgs, scope));
  },
};

async function runLoad(help: string, allArgs: string[], scope: FailureScope): Promise<number> {
  const ex = allArgs.indexOf("--exec");
  const execArgv = ex >= 0 ? allArgs.slice(ex + 1) : null;
  const args = ex >= 0 ? allArgs.slice(0, ex) : allArgs;
  const { values, positionals } = parse("load", args, {
    device: { type: "string", short: "d", multiple: true },
    ...VF_TOKEN_OPTION,
    map: { type: "string", multiple: true },
    "no-p2p": { type: "boolean" },
    "no-start": { type: "boolean" },
    "no-config": { type: "boolean" },
    "no-verify-first": { type: "boolean" },
    "verify-key": { type: "string" },
    protocol: { type: "string" },
    "qemu-id": { type: "string" },
    listen: { type: "string" },
    "idle-timeout": { type: "string", needs: "listen" },
    "accept-timeout": { type: "string", needs: "listen" },
    "tls-cert": { type: "string", needs: "listen" },
    "tls-key": { type: "string", needs: "listen" },
    token: { ...NETWORK_OPTIONS.token, needs: "listen" },
    "handshake-timeout": { ...NETWORK_OPTIONS["handshake-timeout"], needs: "listen" },
    "max-startups": { ...LISTEN_OPTIONS["max-startups"], needs: "listen" },
    ...EVENTS_OPTIONS,
    json: { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) {
    console.log(help);
    return 0;
  }
  if (positionals.length > 1) throw new VfioMigError("load: give at most one input FILE (or -)", "usage");
  // The key is read (and node:crypto loaded) only when one is given; before any device is opened.
  const key = values["verify-key"] === undefined
    ? null
    : await StreamKey.fromFile(libc(), values["verify-key"], "--verify-key");
  if (execArgv && execArgv.length === 0) throw new VfioMigError("load: --exec needs a command", "usage");
  if (values.listen !== undefined && positionals.length > 0) {
    throw new VfioMigError("load: give either an input FILE or --listen, not both", "usage");
  }
  const from = values.listen !== undefined ? `tcp listener ${values.listen}` : loadInput(positionals[0] ?? "-");
  const maps = parseMaps(values.map ?? []);
  if (maps.length && values.device?.length) {
    throw new VfioMigError("load: give the destinations with --device (in order) or with --map, not both", "usage");
  }
  const specs = maps.length
    ? maps.map((m) => m.spec)
    : values.device?.length
    ? values.device
    : [defaultDeviceSpec(systemFor([]))];
  const vfToken = vfTokenFor("load", values["vf-token"], specs);
  scope.labels = specs;
  if (execArgv && specs.length !== 1) throw new VfioMigError("load: --exec hands on one device; give one", "usage");
  await loadBackendsFor(specs);
  const sys = systemFor(specs);
  if (from === "-" && values.listen === undefined && sys.isatty(0)) {
    throw new VfioMigError("load: standard input is a terminal: pipe a stream in or give a FILE", "usage");
  }
  if ((values["tls-cert"] === undefined) !== (values["tls-key"] === undefined)) {
    throw new VfioMigError("load: --tls-cert and --tls-key go together", "usage");
  }
  // The events (--events, the progress bar) before anything else can fail or change.
  const { events } = migrationEvents(sys, {
    events: values.events,
    progress: !values.quiet && !values.json,
    quietUnderSave: from === "-",
    reservedFds: from === "-" ? [0] : [],
  });
  events.start({ command: "load", target: from });
  let source: StreamSource | null = null;
  const cancel = new Cancellation().install();
  try {
    if (values.listen === undefined) source = openStreamSource(sys, from);
    const devs = openDevices(sys, specs, vfToken);
    scope.labels = devs.map((d) => d.label);
    scope.devices = devs;
    try {
      // A QEMU migration stream (its magic) is read by its own record reader.
      let reader: LoadOptions["reader"];
      if (source) {
        const pending = source;
        const unbind = onCancel(cancel, () => pending.interrupt?.());
        // A regular file is told by pread (its offset stays, so load() can check it whole
        // first through the same descriptor); anything else by its first bytes, replayed.
        const kind = pending instanceof FdSource ? peekKind(pending) : null;
        const sniffed = kind !== null ? { kind, source: pending } : await sniffAsync(pending).catch((e) => {
          // A signal ended the wait for the stream's first bytes: nothing was touched.
          if (!cancel.signal) throw e;
          throw failure(
            `${operationName("load into", devs.map((d) => d.label))} refused`,
            interruptedOr(cancel, e),
            devs.length === 1 ? `${devs[0].label} was not touched` : "no device was touched",
          );
        }).finally(unbind);
        if (kind !== null) unbind();
        source = sniffed.source;
        if (sniffed.kind === "qemu") {
          if (key) {
            throw failure(
              `${operationName("load into", devs.map((d) => d.label))} refused`,
              new StreamAuthError(
                `the stream is not signed: it is a QEMU migration stream, which carries no MAC; ` +
                  `--verify-key ${key.path} accepts only vfio-mig streams saved with --sign-key`,
                0,
              ),
              devs.length === 1 ? `${devs[0].label} was not touched` : "no device was touched",
            );
          }
          reader = await qemuLoadReader(sys, from, devs, {
            qemuId: values["qemu-id"],
            protocol: parseProtocol(values.protocol, "load"),
          });
        }
      }
      if (values["qemu-id"] !== undefined && !reader) {
        throw new VfioMigError("load: --qemu-id is for QEMU migration streams; the input is not one", "usage");
      }
      if (values.listen !== undefined) {
        // The device is open (so nobody takes it meanwhile) but untouched until a
        // peer has authenticated and its stream header matched.
        let token = tokenFrom(sys, values.token);
        const generated = token === undefined;
        token ??= newToken();
        const conn = await TcpServerConn.accept(values.listen, {
          token,
          handshakeTimeoutMs: msOption(
            values["handshake-timeout"],
            "handshake-timeout",
            DEFAULT_HANDSHAKE_TIMEOUT_MS,
          ),
          idleTimeoutMs: msOption(values["idle-timeout"], "idle-timeout", DEFAULT_IDLE_TIMEOUT_MS),
          acceptTimeoutMs: values["accept-timeout"] === undefined
            ? undefined
            : msOption(values["accept-timeout"], "accept-timeout", 0, { zero: true }),
          tlsCert: readPem(sys, values["tls-cert"], "TLS certificate"),
          tlsKey: readPem(sys, values["tls-key"], "TLS key"),
          onListening: (a) => {
            events.transport("listening", { peer: `${a.hostname}:${a.port}` });
            console.error(
              `vfio-mig: listening on ${a.hostname}:${a.port}` +
                (generated ? `; token ${token} (give it to save with --token or VFIO_MIG_TOKEN)` : ""),
            );
          },
          onRefused: (why) => {
            events.transport("refused", { message: why });
            console.error(`vfio-mig: ${why}`);
          },
          maxStartups: maxStartupsOption(values["max-startups"]),
          onTurnedAway: (t) => reportTurnedAway(events, t),
          signal: cancel.abortSignal,
        });
        events.transport("authenticated", { peer: conn.label });
        // load() ends a read that waits on a silent peer on a signal (then resets the device).
        source = new TcpSource(conn);
      }
      const r = await load(devs.map((d, i) => ({ device: d, source: maps[i]?.source })), source!, {
        noStart: values["no-start"],
        noConfig: values["no-config"],
        protocol: parseProtocol(values.protocol, "load"),
        events,
        cancel,
        noP2p: values["no-p2p"],
        reader,
        verifyFirst: !values["no-verify-first"],
        progress: !values.quiet && !values.json,
        key,
      });
      // A fresh open of a device vfio-pci resets: the state dies with our fd unless
      // --exec hands it on.
      const fresh = execArgv ? [] : devs.flatMap((d) => freshOpenWarnings(d, "load"));
      // What a device's config space did not take (vfio-pci virtualises and drops some).
      for (const u of r.devices) {
        for (const n of u.config?.notRestored ?? []) fresh.push(`${u.device}: not restored: ${n}`);
      }
      for (const w of fresh) {
        events.note(w, "warning");
        console.error(`vfio-mig: warning: ${w}`);
      }
      const summary = { command: "load", input: from, ...r, warnings: fresh };
      events.result(summary);
      if (values.json) printJson(summary);
      else if (!values.quiet) { for (const line of loadSummary(r)) console.error(line); }
      if (execArgv) {
        // CMD inherits the device fd (VFIO_MIG_DEVICE_FD): the loaded state lives while it holds it.
        return await execWithDeviceFd(devs[0], execArgv, { signal: cancel.abortSignal });
      }
      return 0;
    } catch (e) {
      noteFailureStates(e, devs); // where the devices are left, while they are open
      throw e;
    } finally {
      scope.devices = [];
      closeDevices(devs);
    }
  } catch (e) {
    events.error(e);
    throw e;
  } finally {
    events.close();
    cancel.uninstall();
    source?.close();
  }
}
