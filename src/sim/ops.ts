// The simulator as a device backend: what the device layer asks of it (src/device/
// backend.ts BackendOps), answered from the simulated kernel and the device's folder.
// The entry points register it (src/backends.ts SIM_BACKEND; loading src/sim/kernel.ts
// registers these ops too, so a program that made a SimKernel can open its devices).

import type { Sys } from "../../ffi/sys.ts";
import { SIM_BACKEND } from "../backends.ts";
import { type BackendOps, registerBackend } from "../device/backend.ts";
import { backendResetBehaviour } from "../device/family.ts";
import { VfioMigError } from "../errors.ts";
import { SimKernel } from "./kernel.ts";
import { modelInfo } from "./models.ts";
import { familyOf, SimStore } from "./store.ts";

export const SIM_OPS: BackendOps = {
  system: (host) => SimKernel.fromEnv(host),
  serves: (sys) => sys instanceof SimKernel,
  /**
   * Identity and family of the device in `dir` (its device.json). The family is the
   * simulator's one rule, familyOf: the device's `--family`, else its model's.
   * Throws VfioMigError (device) when `dir` holds no simulated device.
   */
  facts(sys: Sys, dir: string) {
    const meta = new SimStore(sys, dir).readMeta();
    const model = modelInfo(meta.model);
    return {
      info: {
        kind: "sim" as const,
        name: dir,
        driver: model.driver,
        mdevType: model.mdevType ?? null,
        pci: null,
        model: meta.model,
      },
      reset: backendResetBehaviour(SIM_BACKEND.name, familyOf(meta), "simulated"),
    };
  },
  deviceOf: (host, fd) => SimKernel.simDeviceOf(host, fd),
  adopt(sys: Sys, fd: number) {
    if (!(sys instanceof SimKernel)) {
      throw new VfioMigError(`fd ${fd}: a simulated device needs the simulated kernel (use systemFor)`, "usage");
    }
    sys.adopt(fd);
  },
};

registerBackend(SIM_BACKEND, SIM_OPS);
