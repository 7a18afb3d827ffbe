// Device backends: other kernels than the host's that serve VFIO devices (today the
// simulated kernel, src/sim/). As Linux drivers register with the VFIO core and the core
// never names one (drivers/vfio/vfio_main.c calls a driver only through the ops it
// registered), a backend registers here and the device layer reaches it only through
// this table: nothing in src/device imports a backend.
//
// A backend registers in two parts, so that a run that does not use it loads none of it:
// - a descriptor (`DeviceBackend`): its name, the spec prefix that names its devices
//   (`sim:PATH`), how an fd of it reads in /proc (a held sim device is its lock file),
//   and how to load the rest;
// - its operations (`BackendOps`), given at registration (a library entry that imports
//   the backend) or loaded on demand by `loadBackendsFor` (the command line registers the
//   descriptor alone: src/backends.ts).

import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import type { DeviceIdentityInfo } from "./device.ts";
import type { ResetBehaviour } from "./family.ts";

/** What the device layer needs of a backend once it is loaded. */
export interface BackendOps {
  /** The syscall layer that serves the backend's devices, over the host's `host`. */
  system(host: Sys): Sys;
  /** Whether `sys` is this backend's syscall layer (made by `system`). */
  serves(sys: Sys): boolean;
  /** Identity and reset family of the device in `dir` (the part of a spec after the prefix). Throws when none is there. */
  facts(sys: Sys, dir: string): { info: DeviceIdentityInfo; reset: ResetBehaviour };
  /** The device folder `fd` (an fd of this process, on the host) is a device of; null when it is not one. */
  deviceOf(host: Sys, fd: number): string | null;
  /** Registers a borrowed or inherited fd of this backend's device with `sys` (no first-open effects). */
  adopt(sys: Sys, fd: number): void;
}

/** A backend as the entry points register it, before anything of it is loaded. */
export interface DeviceBackend {
  /** Its name: the `kind`, `access` and `path` its devices report ("sim"). */
  name: string;
  /** The spec prefix naming its devices ("sim:"). */
  prefix: string;
  /**
   * The device folder an fd target (readlink of /proc/PID/fd/N) is a held device of, or
   * null: without loading the backend, through `sys`'s files only.
   */
  deviceDir(sys: Sys, target: string): string | null;
  /**
   * The backend's devices in folder `dir` (for an inventory): `dir` itself when it is
   * one, else its subfolders that are; [] when none is there.
   */
  devicesIn(sys: Sys, dir: string): string[];
  /** Loads the backend's operations (a dynamic import, so that `deno compile` embeds them). */
  load(): Promise<BackendOps>;
}

interface Entry {
  backend: DeviceBackend;
  ops: BackendOps | null;
}

const table = new Map<string, Entry>();

/**
 * Registers a backend (again: replaces its descriptor, keeps loaded ops unless `ops` is
 * given). With `ops`, it is usable at once (synchronous `openDevice`, `systemFor`).
 */
export function registerBackend(backend: DeviceBackend, ops?: BackendOps): void {
  const had = table.get(backend.name);
  table.set(backend.name, { backend, ops: ops ?? had?.ops ?? null });
}

/** The registered backends, in registration order. */
export function registeredBackends(): DeviceBackend[] {
  return [...table.values()].map((e) => e.backend);
}

/** The backend whose prefix starts `spec`, or null (a host device spec). */
export function backendOfSpec(spec: string): DeviceBackend | null {
  for (const e of table.values()) if (spec.startsWith(e.backend.prefix)) return e.backend;
  return null;
}

/** The backend and device folder an fd target is a held device of, or null. */
export function backendOfFdTarget(sys: Sys, target: string): { backend: DeviceBackend; dir: string } | null {
  for (const e of table.values()) {
    const dir = e.backend.deviceDir(sys, target);
    if (dir !== null) return { backend: e.backend, dir };
  }
  return null;
}

/** The loaded backend whose syscall layer `sys` is, or null (the host's). */
export function backendServing(sys: Sys): { backend: DeviceBackend; ops: BackendOps } | null {
  for (const e of table.values()) if (e.ops?.serves(sys)) return { backend: e.backend, ops: e.ops };
  return null;
}

/** Whether the backend's operations are loaded. */
export function backendLoaded(name: string): boolean {
  return table.get(name)?.ops != null;
}

/**
 * The operations of a registered backend. Throws VfioMigError (usage) naming `label`
 * when they are not loaded: a library user imports the backend's entry (`vfio-mig/sim`)
 * or awaits `loadBackendsFor` first.
 */
export function backendOps(backend: DeviceBackend, label: string): BackendOps {
  const ops = table.get(backend.name)?.ops;
  if (!ops) {
    throw new VfioMigError(
      `${label}: the ${backend.name} backend is not loaded: import its entry (vfio-mig/${backend.name}) or ` +
        `await loadBackendsFor([spec]) before opening the device`,
      "usage",
    );
  }
  return ops;
}

/** Loads a registered backend's operations (once). */
export async function loadBackend(backend: DeviceBackend): Promise<BackendOps> {
  const e = table.get(backend.name);
  if (e?.ops) return e.ops;
  const ops = await backend.load();
  registerBackend(backend, ops);
  return ops;
}
