// The data_fd of a device with a yield rate (sim create --yield-rate): bytes come due at
// that rate (at most 20 ms' worth build up while nobody reads). A read blocks until the
// buffer's worth is due, or with O_NONBLOCK takes what is due and fails with EAGAIN
// while less than YIELD_QUANTUM is. A device property, not a quirk: the core applies it
// to any device created with a rate.

import { type Behaviour, type MigrationFile, type SimDevice, sleepMs, sysErr } from "../driver.ts";

/** A non-blocking read waits for at least this much (EAGAIN before). */
const YIELD_QUANTUM = 64 * 1024;
const buckets = new WeakMap<MigrationFile, { due: number; at: number }>();

function bucketOf(dev: SimDevice, file: MigrationFile) {
  const rate = dev.meta.yieldRate!;
  let b = buckets.get(file);
  if (!b) buckets.set(file, b = { due: 0, at: performance.now() });
  const bucket = b;
  const cap = Math.max(YIELD_QUANTUM, rate / 50);
  const refill = () => {
    const now = performance.now();
    bucket.due = Math.min(cap, bucket.due + ((now - bucket.at) / 1000) * rate);
    bucket.at = now;
  };
  return { bucket, cap, rate, refill };
}

export const yieldRate: Behaviour = {
  read(dev, file, buf, io, next) {
    if (io.v1 || file.disabled || file.pending() === 0) return next(buf);
    const { bucket, cap, rate, refill } = bucketOf(dev, file);
    refill();
    const queued = Math.max(1, file.queued());
    const want = Math.min(buf.length, cap, queued);
    if (bucket.due < want) {
      if (io.nonblock()) {
        if (bucket.due < Math.min(want, YIELD_QUANTUM)) throw sysErr("read", "EAGAIN");
      } else {
        while (bucket.due < want) {
          sleepMs(Math.max(1, ((want - bucket.due) / rate) * 1000));
          refill();
        }
      }
    }
    const n = next(buf.subarray(0, Math.min(buf.length, Math.floor(bucket.due))));
    bucket.due -= n;
    return n;
  },
  readyIn(dev, file) {
    if (file.kind !== "save" || file.disabled || file.pending() === 0) return 0;
    const { bucket, cap, rate, refill } = bucketOf(dev, file);
    refill();
    const need = Math.min(cap, Math.max(1, file.queued()), YIELD_QUANTUM);
    return bucket.due >= need ? 0 : Math.max(1, ((need - bucket.due) / rate) * 1000);
  },
};
