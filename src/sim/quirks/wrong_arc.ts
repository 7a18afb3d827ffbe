// wrong-arc (not conformant; no real driver, a state-machine bug `check` must catch): a
// request whose last arc enters RUNNING reports success but leaves the device one step
// short of it.

import { DeviceState } from "../../vfio/state_machine.ts";
import type { QuirkDef } from "../quirks.ts";

export const wrongArc: QuirkDef = {
  summary: "requests ending with the arc into RUNNING succeed but leave the device in the state before it",
  conformant: false,
  source: "no real driver: a state-machine bug",
  behaviour: {
    arc: (_dev, a) => a.next === a.target && a.target === DeviceState.RUNNING ? "skip" : undefined,
  },
};
