// A launcher that opens a VFIO device and hands it down to a command, as a VMM
// launcher or `vfio-mig load --exec` does: the command gets the device fd inherited,
// its number in VFIO_MIG_DEVICE_FD (execWithDeviceFd, src/device/exec.ts).
//
//   deno run --allow-ffi tests/kernel/guest/hand_down.ts SPEC CMD [ARGS...]
//
// Prints one JSON line {"pid":…,"fd":…} once the device is open, runs CMD, and exits
// with CMD's exit code. Used by tests/kernel/groups/borrow.ts (real mtty) and
// tests/device/borrow_sim_test.ts (simulated).

import { execWithDeviceFd } from "../../../src/device/exec.ts";
import { registerBuiltinBackends } from "../../../src/backends.ts";
import { loadBackendsFor, openDevice, systemFor } from "../../../src/device/open.ts";

const [spec, ...argv] = Deno.args;
if (!spec || argv.length === 0) {
  console.error("usage: hand_down.ts SPEC CMD [ARGS...]");
  Deno.exit(2);
}
registerBuiltinBackends(); // as cli.ts: the simulator is loaded only for a sim: spec
await loadBackendsFor([spec]);
const dev = openDevice(systemFor([spec]), spec);
console.log(JSON.stringify({ pid: Deno.pid, fd: dev.fd }));
const code = await execWithDeviceFd(dev, argv);
dev.close();
Deno.exit(code);
