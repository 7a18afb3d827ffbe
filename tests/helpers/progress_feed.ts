// Feeds the progress bar (src/events/progress_bar.ts) the events of a save, as the
// orchestration will, on a fake clock, then prints a summary line on stderr as the
// command does. Run by tests/events/progress_bar_test.ts under a pseudo-terminal (script(1))
// and without one.
//
//   deno run tests/helpers/progress_feed.ts live|offline

import { type DeviceRef, Events } from "../../src/events/events.ts";
import { ProgressBar } from "../../src/events/progress_bar.ts";

const MiB = 1 << 20;
const live = Deno.args[0] === "live";
let clock = 0;
const events = new Events({ now: () => clock });
const bar = ProgressBar.forStderr(true);
if (bar) events.on(bar);
const dev: DeviceRef = { index: 0, label: "sim:/tmp/a" };
const size = 64 * MiB;

events.start({ command: "save", mode: live ? "live" : "offline", target: "/tmp/state.bin" });
events.devices([dev]);
events.header({
  mode: live ? "live" : "offline",
  protocol: "v2",
  devices: [{ index: 0, source: dev.label, protocol: "v2", sizeEstimate: size }],
});
events.phase("setup", "start");
let total = 0;
/** 1 MiB chunks at 25 MiB/s: 40 ms each (about 10 progress events a second). */
const move = (bytes: number, phase: "pre-copy" | "stop-copy") => {
  for (let left = bytes; left > 0; left -= MiB) {
    clock += 40;
    total += Math.min(MiB, left);
    events.progress(phase, total);
  }
};
if (live) {
  events.phase("pre-copy", "start");
  let left = size;
  for (let n = 1; n <= 4; n++) {
    events.iterationStart(n);
    const t = clock;
    const moved = Math.min(left, 25 * MiB);
    move(moved, "pre-copy");
    left = left - moved + 4 * MiB;
    events.iterationEnd({
      n,
      ms: clock - t,
      bytes: moved,
      totalBytes: total,
      devices: [{ device: dev, bytes: moved, initialBytes: 0, dirtyBytes: left }],
      estimate: left,
      threshold: 8 * MiB,
      bandwidth: 25 * MiB,
    });
  }
  events.switchover({
    reason: "converged",
    iterations: 4,
    estimate: 4 * MiB,
    threshold: 8 * MiB,
    downtimeLimitMs: 30,
    bandwidth: 25 * MiB,
    precopyMs: clock,
  });
}
events.phase("stop-copy", "start");
move(live ? 4 * MiB : size, "stop-copy");
events.phase("stop-copy", "end");
events.result({ command: "save", bytes: total });
console.error(`saved ${total / MiB} MiB from ${dev.label} to /tmp/state.bin; device is STOP`);
events.close();
