// When to leave pre-copy: QEMU's rule (migration/migration.c), standalone.
//   threshold = bandwidth x downtime limit
//   estimate  = initial_bytes + dirty_bytes   (PRECOPY_INFO)
//   exact     = MIG_DATA_SIZE, or 100 GiB when the device cannot say
// both plus what the transport still holds unsent (it leaves during the downtime too).
// Switch when estimate and exact both fit the threshold and the initial data has been
// sent (and, over a two-way transport, loaded by the destination: switchover-ack; after
// a REINIT the new initial data must be sent and acknowledged again);
// or when the user asks (SIGUSR2), or after --max-precopy.

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
  /**
   * Bytes already taken by the transport but not yet sent (a network sink's queue):
   * they leave during the downtime too, so they count against the threshold.
   */
  backlogBytes?: number;
}

/**
 * Measures transfer bandwidth from the iterations of the last `windowMs` that moved
 * data (at least the last one, at most `keep`). Recent only, as QEMU's: the initial
 * data (large sequential reads) often moves faster than dirty pages do, and what is
 * left at the switchover is dirty pages.
 */
export class BandwidthMeter {
  #samples: { bytes: number; ms: number; at: number }[] = [];
  constructor(readonly keep = 8, readonly windowMs = 500) {}

  /** `bytes` moved in `ms` of work (waiting for the device to dirty data excluded). */
  add(bytes: number, ms: number, now = performance.now()): void {
    this.#samples.push({ bytes, ms: Math.max(ms, 0.001), at: now });
    if (this.#samples.length > this.keep) this.#samples.shift();
  }

  /** Bytes per ms, or null before any sample. */
  rate(now = performance.now()): number | null {
    if (this.#samples.length === 0) return null;
    let recent = this.#samples.filter((x) => now - x.at <= this.windowMs);
    if (recent.length === 0) recent = this.#samples.slice(-1);
    const bytes = recent.reduce((a, x) => a + x.bytes, 0);
    const ms = recent.reduce((a, x) => a + x.ms, 0);
    return bytes / ms;
  }
}

export class PrecopyPolicy {
  readonly start = performance.now();
  requested = false;
  iterations = 0;
  lastThreshold = 0;
  /** The last estimate of what stop-copy would send (backlog + initial + dirty, or exact), bytes. */
  lastEstimate = 0;
  /** The bandwidth the last decision used, bytes per ms (null before any data moved). */
  lastRate: number | null = null;

  constructor(
    readonly downtimeLimitMs = DEFAULT_DOWNTIME_LIMIT_MS,
    readonly maxPrecopyMs = DEFAULT_MAX_PRECOPY_MS,
    readonly meter = new BandwidthMeter(),
  ) {}

  /** null: keep iterating. */
  decide(input: PrecopyDecisionInput, now = performance.now()): SwitchReason | null {
    this.iterations++;
    const backlog = input.backlogBytes ?? 0;
    this.lastEstimate = backlog + input.initialBytes + input.dirtyBytes;
    const rate = this.meter.rate(now);
    this.lastRate = rate;
    if (this.requested) return "requested";
    if (now - this.start >= this.maxPrecopyMs) return "max-precopy";
    // Never before the initial bytes are sent and, where the transport can say so, loaded.
    if (input.initialBytes > 0 || !input.initAcked) return null;
    // Before anything moved there is no bandwidth to judge by: only a device with
    // nothing left may switch.
    if (rate === null && input.dirtyBytes > 0) return null;
    const threshold = (rate ?? Infinity) * this.downtimeLimitMs;
    this.lastThreshold = threshold;
    if (this.lastEstimate > threshold) return null;
    const exact = backlog + (input.exact() ?? UNKNOWN_STOP_COPY_SIZE);
    this.lastEstimate = exact;
    return exact <= threshold ? "converged" : null;
  }
}
