// The device backends the entry points register (cli.ts; the library's simulator entry,
// src/sim/mod.ts): a descriptor each, so that the device layer can tell a spec or an fd
// of a backend's device without loading the backend, and load it only then. The device
// layer (src/device/backend.ts) names no backend; nothing here is loaded with it.

import type { Sys } from "../ffi/sys.ts";
import { type DeviceBackend, registerBackend } from "./device/backend.ts";

/**
 * The files of a simulated device's folder that tell it from outside the simulator
 * (src/sim/store.ts keeps the rest): the folder holds `device.json`, and a process that
 * has the device open holds its `lock` (flock'ed), which is what /proc shows for its fd.
 */
export const SIM_FILES = { meta: "device.json", lock: "lock" } as const;

/** Whether folder `dir` holds a simulated device (its device.json). */
function isSimDevice(sys: Sys, dir: string): boolean {
  try {
    sys.stat(`${dir}/${SIM_FILES.meta}`);
    return true;
  } catch {
    return false;
  }
}

/** The simulated VFIO kernel (src/sim/): `sim:PATH` devices and the fds that hold them. */
export const SIM_BACKEND: DeviceBackend = {
  name: "sim",
  prefix: "sim:",
  deviceDir(sys: Sys, target: string): string | null {
    const slash = target.lastIndexOf("/");
    if (!target.startsWith("/") || slash <= 0 || target.slice(slash + 1) !== SIM_FILES.lock) return null;
    const dir = target.slice(0, slash);
    return isSimDevice(sys, dir) ? dir : null;
  },
  devicesIn(sys: Sys, dir: string): string[] {
    const clean = dir.replace(/\/+$/, "") || "/";
    if (isSimDevice(sys, clean)) return [clean];
    let names: string[];
    try {
      names = sys.readdir(clean);
    } catch {
      return [];
    }
    return names.map((n) => `${clean}/${n}`).filter((p) => isSimDevice(sys, p));
  },
  load: async () => (await import("./sim/ops.ts")).SIM_OPS,
};

/**
 * Registers every backend above by its descriptor (none is loaded: `loadBackendsFor`
 * loads what specs name). For programs: cli.ts, the library's front door (mod.ts).
 */
export function registerBuiltinBackends(): void {
  registerBackend(SIM_BACKEND);
}
