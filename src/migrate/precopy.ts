// When to leave pre-copy: QEMU's rule (migration/migration.c), standalone.
//   threshold = bandwidth x downtime limit
//   estimate  = initial_bytes + dirty_bytes   (PRECOPY_INFO)
//   exact     = MIG_DATA_SIZE, or 100 GiB when the device cannot say
// Switch when estimate and exact both fit the threshold and the initial data has been
// sent (and, over a two-way transport, loaded by the destination: switchover-ack);
// or when the user asks (SIGUSR1), or after --max-precopy.

export const DEFAULT_DOWNTIME_LIMIT_MS = 300;
export const DEFAULT_MAX_PRECOPY_MS = 60_000;
/** QEMU's VFIO_MIG_STOP_COPY_SIZE: the estimate used when MIG_DATA_SIZE fails. */
export const UNKNOWN_STOP_COPY_SIZE = 100 * 1024 ** 3;

export type SwitchReason = "converged" | "max-precopy" | "requested";

export interface PrecopyDecisionInput {
  initialBytes: number;
  dirtyBytes: number;
  /** Fresh MIG_DATA_SIZE, or null when unavailable. Asked for only when needed. */
  exact: () => number | null;
  /** True when the destination acknowledged the initial data (or no ack is possible). */
  initAcked: boolean;
  /** The device reported nothing pending in this iteration. */
  done?: boolean;
}

/** Measures transfer bandwidth from the last few iterations that moved data. */
export class BandwidthMeter {
  #samples: { bytes: number; ms: number }[] = [];
  constructor(readonly keep = 8) {}

  /** `bytes` moved in `ms` of work (waiting for the device to dirty data excluded). */
  add(bytes: number, ms: number): void {
    this.#samples.push({ bytes, ms: Math.max(ms, 0.001) });
    if (this.#samples.length > this.keep) this.#samples.shift();
  }

  /** Bytes per ms, or null before any sample. */
  rate(): number | null {
    if (this.#samples.length === 0) return null;
    const bytes = this.#samples.reduce((a, x) => a + x.bytes, 0);
    const ms = this.#samples.reduce((a, x) => a + x.ms, 0);
    return bytes / ms;
  }
}

export class PrecopyPolicy {
  readonly start = performance.now();
  requested = false;
  iterations = 0;
  lastThreshold = 0;

  constructor(
    readonly downtimeLimitMs = DEFAULT_DOWNTIME_LIMIT_MS,
    readonly maxPrecopyMs = DEFAULT_MAX_PRECOPY_MS,
    readonly meter = new BandwidthMeter(),
  ) {}

  /** null: keep iterating. */
  decide(input: PrecopyDecisionInput, now = performance.now()): SwitchReason | null {
    this.iterations++;
    if (this.requested) return "requested";
    if (now - this.start >= this.maxPrecopyMs) return "max-precopy";
    // Never before the initial bytes are sent and, where the transport can say so, loaded.
    if (input.initialBytes > 0 || !input.initAcked) return null;
    // Before anything moved there is no bandwidth to judge by: only a device with
    // nothing left may switch.
    const rate = this.meter.rate();
    if (rate === null && input.dirtyBytes > 0) return null;
    const threshold = (rate ?? Infinity) * this.downtimeLimitMs;
    this.lastThreshold = threshold;
    if (input.initialBytes + input.dirtyBytes > threshold) return null;
    const exact = input.exact() ?? UNKNOWN_STOP_COPY_SIZE;
    return exact <= threshold ? "converged" : null;
  }
}
