// Options shared by save (tcp://) and load (--listen): the token, TLS files, timeouts.

import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { readSmallFile } from "../io.ts";
import { parseDuration } from "./options.ts";
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS } from "../transport/tcp.ts";

export const NETWORK_OPTIONS = {
  token: { type: "string" },
  "handshake-timeout": { type: "string" },
} as const;

export const NETWORK_HELP = `      --token T      the shared secret of tcp:// transfers (default $VFIO_MIG_TOKEN);
                     the peer proves it knows it before any state moves
      --handshake-timeout TIME  give up on a peer that does not authenticate in
                     TIME (default ${DEFAULT_HANDSHAKE_TIMEOUT_MS}ms)`;

export function tokenFrom(sys: Sys, given: string | undefined): string | undefined {
  const t = given ?? (sys.getenv("VFIO_MIG_TOKEN") || undefined); // set but empty: not given
  if (t !== undefined && t.length < 8) {
    throw new VfioMigError("--token must be at least 8 characters", "usage");
  }
  return t;
}

/** A duration option in milliseconds (units: options.ts parseDuration); 0 only with `zero`. */
export function msOption(v: string | undefined, name: string, dflt: number, opts: { zero?: boolean } = {}): number {
  return parseDuration(v, name, dflt, opts);
}

export function readPem(sys: Sys, path: string | undefined, what: string): string | undefined {
  if (path === undefined) return undefined;
  try {
    return new TextDecoder().decode(readSmallFile(sys, path));
  } catch (e) {
    throw new VfioMigError(`cannot read the ${what} ${path}: ${e instanceof Error ? e.message : e}`, "usage");
  }
}

export { DEFAULT_IDLE_TIMEOUT_MS };
