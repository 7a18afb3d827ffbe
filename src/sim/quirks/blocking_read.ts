// blocking-read (conformant; what mlx5 does, mlx5vf_save_read): the device produces a
// phase's data asynchronously, ready --read-delay MS after the phase starts (the session
// opens, or STOP_COPY is entered). Until then a read without O_NONBLOCK sleeps
// (wait_event_interruptible; here the thread blocks, as a synchronous FFI read would)
// and a read with O_NONBLOCK fails with EAGAIN; poll() reports POLLIN once a read would
// not block. A read in PRE_COPY with nothing queued and nothing dirtied does not wait:
// ENOMSG (bulk) or 0 (mtty), "no data now". A correct tool reads with O_NONBLOCK and
// poll, and never blocks here.

import { type MigrationFile, type SimDevice, sleepMs, sysErr } from "../driver.ts";
import type { QuirkDef } from "../quirks.ts";

export const DEFAULT_READ_DELAY_MS = 200;
const readyAt = new WeakMap<MigrationFile, number>();

function readyIn(_dev: SimDevice, file: MigrationFile): number {
  if (file.kind !== "save" || file.disabled || file.pending() === 0) return 0;
  return Math.max(0, (readyAt.get(file) ?? 0) - performance.now());
}

export const blockingRead: QuirkDef = {
  summary: "data_fd reads block until the phase's data is ready (--read-delay TIME); EAGAIN with O_NONBLOCK; " +
    "poll() says when",
  conformant: true,
  source: "mlx5 mlx5vf_save_read",
  v2Only: true,
  behaviour: {
    phase(dev, file) {
      readyAt.set(file, performance.now() + (dev.meta.quirkOptions?.readDelay ?? DEFAULT_READ_DELAY_MS));
    },
    readyIn,
    read(dev, file, buf, io, next) {
      if (io.v1) return next(buf);
      let wait = readyIn(dev, file);
      if (wait > 0 && io.nonblock()) throw sysErr("read", "EAGAIN");
      for (; wait > 0; wait = readyIn(dev, file)) sleepMs(wait);
      return next(buf);
    },
  },
};
