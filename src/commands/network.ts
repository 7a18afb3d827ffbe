// Options shared by save (tcp://) and load (--listen): the token, TLS files, timeouts.

import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { readSmallFile } from "../io.ts";
import { parseDuration } from "./options.ts";
import type { Events } from "../events/events.ts";
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_MAX_STARTUPS,
  type MaxStartups,
  parseMaxStartups,
  REFUSALS_SHOWN,
  TLS_HANDSHAKES_PER_S,
  type TurnedAway,
  turnedAwayLine,
} from "../transport/tcp.ts";

export const NETWORK_OPTIONS = {
  token: { type: "string" },
  "handshake-timeout": { type: "string" },
} as const;

export const NETWORK_HELP = `      --token T      the shared secret of tcp:// transfers (default $VFIO_MIG_TOKEN);
                     the peer proves it knows it before any state moves
      --handshake-timeout TIME  give up on a peer that does not authenticate in
                     TIME (default ${DEFAULT_HANDSHAKE_TIMEOUT_MS}ms)`;

/** load --listen's own options (besides NETWORK_OPTIONS). */
export const LISTEN_OPTIONS = {
  "max-startups": { type: "string" },
} as const;

const M = DEFAULT_MAX_STARTUPS;
export const LISTEN_HELP = `      --max-startups START:RATE:FULL  unauthenticated connections at once, as sshd's
                     MaxStartups (default ${M.start}:${M.rate}:${M.full}): from START on, each new one drops
                     the longest-waiting one that sent nothing with probability RATE%,
                     rising to 100% at FULL. One that began the handshake is never
                     dropped for a newcomer. The first ${REFUSALS_SHOWN} refused peers get a line
                     each; the rest, and the drops, are counted in one line (at the end,
                     and every 30 s while they grow). With TLS, at most ${TLS_HANDSHAKES_PER_S}
                     connections are accepted a second (each costs a TLS handshake).`;

/** --max-startups, or the default. */
export function maxStartupsOption(v: string | undefined): MaxStartups {
  return v === undefined ? DEFAULT_MAX_STARTUPS : parseMaxStartups(v);
}

/** The listener's count of what it turned away: one stderr line and a `dropped` event. */
export function reportTurnedAway(events: Events, t: TurnedAway): void {
  const line = turnedAwayLine(t);
  const refused = t.wrongToken + t.notVfioMig + t.timedOut + t.closed + t.tls;
  events.transport("dropped", { dropped: t.dropped, refused, message: line });
  console.error(`vfio-mig: ${line}`);
}

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
