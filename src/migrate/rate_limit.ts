// --max-bandwidth: the save's copy loop paced to a rate, as QEMU's max-bandwidth paces
// its migration stream (migration/migration-stats.c migration_rate_exceeded; the limit
// is counted in windows of BUFFER_DELAY = 100 ms, migration/migration.c). A token
// bucket: what is read from the device is paid for after the read, so the copy never
// holds more than it does without a limit (the loop waits before its next read); the
// bucket starts empty and holds at most 100 ms of the rate, so after an idle moment
// (a pre-copy round with nothing to send) at most that much goes out at once.

/** The longest burst, in ms of the rate: QEMU's rate-limit window (BUFFER_DELAY). */
export const BURST_MS = 100;

/**
 * A token bucket over `bytesPerSecond` (> 0). `take(n)` after n bytes were read waits
 * until the rate allows them: over any interval the bytes taken are at most
 * rate × interval + rate × BURST_MS, and since the bucket starts empty, N bytes take
 * at least N / rate seconds from the first take.
 */
export class RateLimit {
  /** What may be sent now, in bytes (negative: owed, to be waited for). */
  #tokens = 0;
  #at: number;
  /** Time spent waiting, ms (for the summary). */
  waitedMs = 0;

  constructor(readonly bytesPerSecond: number, readonly now: () => number = () => performance.now()) {
    if (!(bytesPerSecond > 0) || !Number.isFinite(bytesPerSecond)) {
      throw new RangeError(`a rate limit must be a positive number of bytes/s, not ${bytesPerSecond}`);
    }
    this.#at = now();
  }

  /** The burst cap, bytes. */
  get burstBytes(): number {
    return this.bytesPerSecond * BURST_MS / 1000;
  }

  /** How long the n bytes just read must wait, in ms (0: none); counts them. */
  debit(n: number): number {
    const t = this.now();
    this.#tokens = Math.min(this.burstBytes, this.#tokens + (t - this.#at) * this.bytesPerSecond / 1000) - n;
    this.#at = t;
    return this.#tokens >= 0 ? 0 : -this.#tokens * 1000 / this.bytesPerSecond;
  }

  /**
   * Pays for `n` bytes just read: resolves when the rate allows them, or at once when
   * `signal` aborts (the caller's next cancellation check then throws). The wait is a
   * timer, so signals are seen while it lasts.
   */
  async take(n: number, signal?: AbortSignal): Promise<void> {
    const ms = this.debit(n);
    if (ms <= 0 || signal?.aborted) return;
    const t0 = this.now();
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, Math.ceil(ms));
      signal?.addEventListener("abort", done, { once: true });
    });
    this.waitedMs += this.now() - t0;
  }
}
