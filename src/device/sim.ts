// The device layer's side of simulated devices: their identity and reset family from
// the store, and the two SimKernel entry points a borrowed or inherited sim fd needs
// (SimKernel.simDeviceOf, sim.adopt), reached through guards so that a build whose
// simulator lacks them says so in one line.

import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { SimKernel } from "../sim/kernel.ts";
import { modelInfo } from "../sim/models.ts";
import { SimStore } from "../sim/store.ts";
import type { DeviceIdentityInfo } from "./device.ts";
import { type ResetBehaviour, simResetBehaviour } from "./family.ts";

/** Identity and reset family of the simulated device in `dir` (its device.json). */
export function simDeviceFacts(sys: Sys, dir: string): { info: DeviceIdentityInfo; reset: ResetBehaviour } {
  const meta = new SimStore(sys, dir).readMeta(); // a clear error when it does not exist
  const model = modelInfo(meta.model);
  return {
    info: {
      kind: "sim",
      name: dir,
      driver: model.driver,
      mdevType: model.mdevType ?? null,
      pci: null,
      model: meta.model,
    },
    reset: simResetBehaviour(meta, (model as { family?: string }).family),
  };
}

type SimDeviceOf = (host: Sys, fd: number) => string | null;

/**
 * The sim store folder `fd` (an fd of this process) is a simulated device of, through
 * `SimKernel.simDeviceOf` (src/sim/kernel.ts); null when it is not one. Throws
 * VfioMigError (device) when this build's simulator has no simDeviceOf.
 */
export function simDeviceOf(host: Sys, fd: number, label: string): string | null {
  const f = (SimKernel as unknown as { simDeviceOf?: SimDeviceOf }).simDeviceOf;
  if (typeof f !== "function") {
    throw new VfioMigError(
      `${label}: fd ${fd} is a simulated device, but this build's simulator cannot take over an fd ` +
        `(SimKernel.simDeviceOf is missing)`,
      "device",
    );
  }
  return f.call(SimKernel, host, fd);
}

/**
 * Registers a borrowed or inherited sim device fd with the simulated kernel `sys`
 * (`SimKernel.adopt`: no second lock, no first-open reset). Throws VfioMigError when
 * `sys` is not a SimKernel (usage: use systemFor) or lacks adopt (device).
 */
export function adoptSimFd(sys: Sys, fd: number, label: string): void {
  if (!(sys instanceof SimKernel)) {
    throw new VfioMigError(`${label}: a simulated device needs the simulated kernel (use systemFor)`, "usage");
  }
  const adopt = (sys as unknown as { adopt?: (fd: number) => void }).adopt;
  if (typeof adopt !== "function") {
    throw new VfioMigError(
      `${label}: fd ${fd} is a simulated device, but this build's simulator cannot take over an fd ` +
        `(SimKernel.adopt is missing)`,
      "device",
    );
  }
  adopt.call(sys, fd);
}
