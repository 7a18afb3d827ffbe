// fd-on-stop (not conformant): the arc RUNNING(_P2P) -> STOP hands out a data_fd,
// where the uAPI says no session starts.

import { O } from "../../../ffi/sys.ts";
import { DeviceState } from "../../vfio/state_machine.ts";
import type { QuirkDef } from "../quirks.ts";

const { STOP, RUNNING, RUNNING_P2P } = DeviceState;

export const fdOnStop: QuirkDef = {
  summary: "the arc RUNNING(_P2P) -> STOP returns a data_fd",
  conformant: false,
  source: "no real driver",
  behaviour: {
    afterSet(dev, s) {
      if (s.file || s.path.length === 0 || dev.meta.state !== STOP) return null;
      if (s.prev !== RUNNING && s.prev !== RUNNING_P2P) return null;
      return dev.meta.model === "xe"
        ? dev.host.memfd("vfio-mig-sim-stray")
        : dev.host.open(dev.store.statePath, O.RDONLY | O.CLOEXEC);
    },
  },
};
