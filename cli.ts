// vfio-mig command line. The first thing it does, before any other module of the tool is
// loaded, is to make sure it runs with SIGUSR1 blocked, so that Deno's inspector cannot be
// opened by a signal (src/launch.ts: re-executes this same command once when it was not
// started through bin/vfio-mig). Then src/main.ts parses the command and dispatches.

import { type Guard, runWithoutInspectorSignal } from "./src/launch.ts";

/**
 * Runs the command line `args` (as after `vfio-mig`) in this process and returns its exit
 * code; errors become one line on stderr. No re-exec: the caller owns the process.
 */
export async function main(args: string[]): Promise<number> {
  return await (await import("./src/main.ts")).main(args);
}

if (import.meta.main) {
  const guard: Guard = runWithoutInspectorSignal(); // returns only when no re-exec was needed or possible
  const cli = await import("./src/main.ts");
  Deno.exit(await cli.main(Deno.args, guard));
}
