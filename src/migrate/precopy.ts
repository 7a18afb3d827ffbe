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
}

/** Measures bandwidth over a sliding window of transfers. */
export class BandwidthMeter {
  #samples: { t: number; bytes: number }[] = [];
  constructor(readonly windowMs = 1000) {}

  add(bytes: number, now = performance.now()): void {
    this.#samples.push({ t: now, bytes });
    while (this.#samples.length > 2 && now - this.#samples[0].t > this.windowMs) this.#samples.shift();
  }

  /** Bytes per ms, or null before two samples. */
  rate(): number | null {
    const s = this.#samples;
    if (s.length < 2) return null;
    const dt = s[s.length - 1].t - s[0].t;
    if (dt <= 0) return null;
    const bytes = s.slice(1).reduce((a, x) => a + x.bytes, 0);
    return bytes / dt;
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
    const rate = this.meter.rate();
    if (rate === null) {
      // Nothing moving: no more data to estimate from; decide on size alone.
      if (input.dirtyBytes > 0) return null;
    }
    const threshold = (rate ?? Infinity) * this.downtimeLimitMs;
    this.lastThreshold = threshold;
    if (input.initialBytes + input.dirtyBytes > threshold) return null;
    const exact = input.exact() ?? UNKNOWN_STOP_COPY_SIZE;
    return exact <= threshold ? "converged" : null;
  }
}
