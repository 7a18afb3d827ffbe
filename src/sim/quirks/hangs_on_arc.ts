// hangs-on-arc (not conformant; a planted defect for `check --torture`): the driver's
// PRE_COPY_P2P -> PRE_COPY arc waits for the device for ever, as a driver waiting on
// firmware without a timeout does: the SET never returns (in the kernel the task sleeps
// uninterruptibly; here the calling thread blocks). The arc is a rare one: only a request
// for PRE_COPY (or through it) made from PRE_COPY_P2P takes it, which neither save nor
// load does.

import { DeviceState } from "../../vfio/state_machine.ts";
import { sleepMs } from "../driver.ts";
import type { QuirkDef } from "../quirks.ts";

export const hangsOnArc: QuirkDef = {
  summary: "the PRE_COPY_P2P -> PRE_COPY arc never returns (a driver waiting on its device without a timeout)",
  conformant: false,
  source: "planted defect (torture positive control): an unbounded wait in one arc",
  v2Only: true,
  behaviour: {
    arc(_dev, a) {
      if (a.cur !== DeviceState.PRE_COPY_P2P || a.next !== DeviceState.PRE_COPY) return;
      for (;;) sleepMs(3_600_000);
    },
  },
};
