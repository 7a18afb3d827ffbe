// vfio-mig command line (loaded by cli.ts once SIGUSR1 is blocked): parse the command,
// dispatch, turn errors into one line and an exit code. Each command lives in
// src/commands/<name>.ts.

import { libc } from "../ffi/libc.ts";
import { registerBuiltinBackends } from "./backends.ts";
import { COMMANDS } from "./commands/index.ts";
import { describeError, EXIT, EXIT_CODES_HELP, VfioMigError } from "./errors.ts";
import type { Guard } from "./launch.ts";
import { dropUnclaimedSignal, holdSwitchoverSignal, onUnclaimedSignal } from "./signals.ts";
import { VERSION } from "./version.ts";

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `vfio-mig ${VERSION}: save and restore the migration state of Linux VFIO devices

Usage: vfio-mig COMMAND [options]    (vfio-mig COMMAND --help for details)

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join("\n")}

Examples:
  vfio-mig save --device 0000:3b:00.1 state.bin
  vfio-mig save --device A - | ssh dst vfio-mig load --device B -
  vfio-mig sim create /tmp/a --model mtty-2 && vfio-mig info --device sim:/tmp/a

${EXIT_CODES_HELP}`;
}

// The simulator is a device backend: registered here by its descriptor alone, loaded
// (src/sim/ops.ts) only when a spec names a simulated device (sim:PATH, or a pid:/fd:
// whose fd is one). The dynamic import keeps it in what `deno compile` embeds.
registerBuiltinBackends();

/**
 * Runs the command line `args` and returns the exit code. `guard` is what cli.ts's
 * SIGUSR1 check found (src/launch.ts): a failed re-exec refuses to run (exit 1) rather
 * than run with the inspector one signal away; none (a caller's own process) runs as is.
 */
export async function main(args: string[], guard?: Guard): Promise<number> {
  stderrNeverThrows();
  // SIGUSR2 (a live save's switchover) is bound for the whole run: its default action
  // would kill the process, mid-migration or not. Nothing claims it here: ignored.
  holdSwitchoverSignal();
  const [name, ...rest] = args;
  if (name === undefined) {
    console.error(usage()); // no command: a usage error, so the usage goes to stderr
    return EXIT.USAGE;
  }
  if (name === "help" || name === "--help" || name === "-h") {
    const entry = COMMANDS.find((c) => c.name === rest[0]);
    if (rest[0] !== undefined && !entry) {
      console.error(`vfio-mig: help: no command '${rest[0]}' (commands: ${COMMANDS.map((c) => c.name).join(", ")})`);
      return EXIT.USAGE;
    }
    console.log(entry ? (await entry.load()).help : usage());
    return EXIT.OK;
  }
  if (name === "--version" || name === "version") {
    console.log(`vfio-mig ${VERSION}`);
    return EXIT.OK;
  }
  if (guard?.kind === "failed") {
    console.error(
      `vfio-mig: cannot restart with SIGUSR1 blocked (${guard.message}), and without that a SIGUSR1 opens ` +
        "Deno's inspector: run it through bin/vfio-mig, or as env --block-signal=USR1 deno run …",
    );
    return EXIT.FAILURE;
  }
  const entry = COMMANDS.find((c) => c.name === name);
  if (!entry) {
    console.error(`vfio-mig: unknown command '${name}' (commands: ${COMMANDS.map((c) => c.name).join(", ")})`);
    return EXIT.USAGE;
  }
  // An interrupt no command claims (src/signals.ts: SIGINT, SIGTERM, SIGHUP) ends the run
  // with one line and exit 130: while the command's modules load (a few ms here, seconds
  // in a slow guest) nothing was touched yet; save and load claim signals for their whole
  // work (the fallback stays for what they do around it), any other command gets the
  // default action back.
  let started = false;
  onUnclaimedSignal((sig) => {
    console.error(`vfio-mig: interrupted by ${sig}${started ? "" : " while starting; nothing was touched"}`);
    Deno.exit(EXIT.INTERRUPTED);
  });
  try {
    const command = await entry.load();
    started = true;
    if (!command.handlesSignals) dropUnclaimedSignal();
    return await command.run(rest);
  } catch (e) {
    return report(e);
  }
}

/**
 * A line that cannot reach stderr (a terminal hung up: EIO; a closed descriptor) is
 * lost, and nothing else changes: console.error and console.warn swallow the write's
 * error instead of throwing it into whatever was running (a cleanup after SIGHUP).
 */
function stderrNeverThrows(): void {
  for (const m of ["error", "warn"] as const) {
    const write = console[m].bind(console);
    console[m] = (...data: unknown[]) => {
      try {
        write(...data);
      } catch { /* stderr is gone; the exit code still tells */ }
    };
  }
}

function report(e: unknown): number {
  const { exitCode, kind, message } = describeError(e);
  console.error(`vfio-mig: ${message}${kind === "internal" ? " (set VFIO_MIG_DEBUG=1 for details)" : ""}`);
  if (safeDebug()) console.error(e instanceof VfioMigError ? e.cause ?? e : e);
  return exitCode;
}

// Through libc's getenv: no --allow-env needed, and no permission prompt.
function safeDebug(): boolean {
  try {
    return libc().getenv("VFIO_MIG_DEBUG") === "1";
  } catch {
    return false;
  }
}
