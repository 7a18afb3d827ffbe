// late-writeback (not conformant; hisi_acc before its 2025 cache write-back fix): the
// device's last writes before it stops are still in its cache when the STOP_COPY data
// is taken, and reach device memory only later. Stop-copy data then misses them: the
// destination gets the state without the device's last writes, and nothing in the
// stream says so. The simulator: a bulk device that ran with --rate > 0, on the arc
// that stops it (a running state -> STOP or STOP_COPY), makes 4 last 8-byte writes that
// stay cached (device.json quirkState.cached); they are written back to state.bin on the
// arc that leaves STOP_COPY or a stopped device starts running again, and on a reset
// (which the real device's flush precedes). So the source ends with them, the stream
// without: `sim compare` of source and destination shows the loss. A tool without
// ground truth sees it only as two saves of the stopped device that differ (`check`
// round-trip WARN); a single save looks whole.

import { isRunning } from "../driver.ts";
import type { SimDevice } from "../driver.ts";
import { DeviceState } from "../../vfio/state_machine.ts";
import { prng } from "../models.ts";
import type { QuirkDef } from "../quirks.ts";
import { O } from "../../../ffi/sys.ts";

const NAME = "late-writeback";
const { STOP, STOP_COPY } = DeviceState;

/** The cached writes reach device memory. */
function writeBack(dev: SimDevice, why: string): void {
  const cached = dev.meta.quirkState?.cached;
  if (!cached?.length) return;
  const fd = dev.host.open(dev.store.statePath, O.WRONLY | O.CLOEXEC);
  try {
    for (const w of cached) dev.host.pwrite(fd, new Uint8Array(w.bytes), w.at);
  } finally {
    dev.host.close(fd);
  }
  dev.meta.quirkState = { ...dev.meta.quirkState, cached: [] };
  dev.dataChanged();
  dev.persist();
  dev.log({ key: "quirk", quirk: NAME, wroteBack: cached.length, why });
}

/** The device's last writes before it stops: into its cache, not yet its memory. */
function cacheLastWrites(dev: SimDevice): void {
  const m = dev.meta;
  if (m.rate <= 0 || m.size < 8 || m.quirkState?.cached?.length) return;
  const rnd = prng(m.seed ^ Date.now());
  const cached: { at: number; bytes: number[] }[] = [];
  for (let i = 0; i < 4; i++) {
    const at = (rnd() % Math.floor(m.size / 8)) * 8;
    const bytes = Array.from({ length: 8 }, () => rnd() & 0xff);
    cached.push({ at, bytes });
  }
  m.quirkState = { ...m.quirkState, cached };
  dev.persist();
  dev.log({ key: "quirk", quirk: NAME, cached: cached.length });
}

export const lateWriteback: QuirkDef = {
  summary: "the device's last writes before STOP stay in its cache and reach its memory after the STOP_COPY data " +
    "was taken: the stream misses them (bulk, --rate > 0)",
  conformant: false,
  source: "hisi_acc cache write-back fix (2025)",
  models: ["bulk"],
  v2Only: true,
  behaviour: {
    arc(dev, a) {
      if (isRunning(a.cur) && (a.next === STOP || a.next === STOP_COPY)) cacheLastWrites(dev);
      else if (a.cur === STOP_COPY && a.next === STOP) writeBack(dev, "STOP_COPY -> STOP");
      else if (a.cur === STOP && isRunning(a.next)) writeBack(dev, "running again");
    },
    reset(dev) {
      // A PCI function's reset (FLR) loses the cache with the rest; an mdev's flushes it first.
      if (dev.family === "pci") {
        dev.meta.quirkState = { ...dev.meta.quirkState, cached: [] };
        dev.persist();
      } else writeBack(dev, "reset");
    },
  },
};
