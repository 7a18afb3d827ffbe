/**
 * vfio-mig as a library: save and restore the migration state of Linux VFIO devices
 * (uAPI v2, and QEMU 7.2's v1 region protocol). The first-use set: open a device by the
 * spec `--device` takes, `save` it to a file, standard output or a transport, `load` it
 * into another, with the errors and results the CLI has. One device or several: pass
 * an array, they move together.
 *
 * The rest is reachable through sub-paths (deno.json `exports`): `./device` (borrowed
 * and inherited fds, families, inventory, description, migration control, backends),
 * `./migrate` (protocol sessions, the config section), `./uapi` (the VFIO uAPI, its
 * wrappers and the state machine), `./stream`, `./inspect`, `./events`, `./report`,
 * `./check`, `./qemu`, and `./sim` (the simulated VFIO kernel).
 *
 * A simulated device is a folder (`vfio-mig sim create`, or `SimStore` of `./sim`);
 * `loadBackendsFor` loads the simulator for the `sim:` specs among those given (a host
 * device spec loads nothing):
 *
 * @example Save one device's state to a file and load it into another
 * ```ts
 * import { load, loadBackendsFor, openDevice, save } from "./mod.ts";
 * import { SimStore } from "./src/sim/mod.ts";
 * import { libc } from "./ffi/libc.ts";
 *
 * const dir = await Deno.makeTempDir();
 * new SimStore(libc(), `${dir}/a`).create({ model: "mtty-2", seed: 1 });
 * new SimStore(libc(), `${dir}/b`).create({ model: "mtty-2", seed: 2 });
 *
 * await loadBackendsFor([`sim:${dir}/a`, `sim:${dir}/b`]);
 * const a = openDevice(`sim:${dir}/a`); // or "0000:3b:00.1", an mdev UUID, pid:PID
 * const b = openDevice(`sim:${dir}/b`);
 * try {
 *   const saved = await save(a, `${dir}/a.vfmig`); // a is left STOP
 *   const loaded = await load(b, `${dir}/a.vfmig`); // b holds a's state, RUNNING
 *   if (saved.finalState !== "STOP" || loaded.finalState !== "RUNNING") throw new Error("unexpected states");
 * } finally {
 *   a.close();
 *   b.close();
 *   await Deno.remove(dir, { recursive: true });
 * }
 * ```
 *
 * @module
 */

import { registerBuiltinBackends } from "./src/backends.ts";

// The simulator is known by its descriptor; loadBackendsFor loads it for sim: specs.
registerBuiltinBackends();

export {
  defaultDeviceSpec,
  DeviceBusyError,
  loadBackendsFor,
  openDevice,
  systemFor,
  VfioDevice,
} from "./src/device/open.ts";
export { type DeviceSaveResult, save, type SaveOptions, type SaveResult } from "./src/migrate/save.ts";
export { type DeviceLoadResult, load, type LoadOptions, type LoadResult, type LoadTarget } from "./src/migrate/load.ts";
export { Cancellation } from "./src/migrate/session.ts";
export {
  openSink,
  openSource,
  openStreamSource,
  type Sink,
  type Source,
  type StreamSource,
} from "./src/transport/transport.ts";
export { TcpClient, TcpServerConn, TcpSink, TcpSource } from "./src/transport/tcp.ts";
export { describeError, EXIT, StreamError, VfioMigError } from "./src/errors.ts";
export { SysError } from "./ffi/errno.ts";
export { VERSION } from "./src/version.ts";
