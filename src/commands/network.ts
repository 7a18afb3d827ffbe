// Options shared by save (tcp://) and load (--listen): the token, TLS files, timeouts.

import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { readSmallFile } from "../io.ts";
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS } from "../transport/tcp.ts";

export const NETWORK_OPTIONS = {
  token: { type: "string" },
  "handshake-timeout": { type: "string" },
} as const;

export const NETWORK_HELP = `      --token T      the shared secret of tcp:// transfers (default $VFIO_MIG_TOKEN);
                     the peer proves it knows it before any state moves
      --handshake-timeout MS  give up on a peer that does not authenticate in MS
                     (default ${DEFAULT_HANDSHAKE_TIMEOUT_MS})`;

export function tokenFrom(sys: Sys, given: string | undefined): string | undefined {
  const t = given ?? (sys.getenv("VFIO_MIG_TOKEN") || undefined); // set but empty: not given
  if (t !== undefined && t.length < 8) {
    throw new VfioMigError("--token must be at least 8 characters", "usage");
  }
  return t;
}

export function msOption(v: string | undefined, name: string, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!(n > 0)) throw new VfioMigError(`--${name} takes a number of milliseconds`, "usage");
  return n;
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
