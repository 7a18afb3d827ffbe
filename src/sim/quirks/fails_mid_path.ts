// fails-mid-path (allowed by the uAPI, which says a failed SET may leave the device in
// the original state, at any step of the path, or in ERROR): a SET whose path has
// several arcs fails (EIO) on its second arc, leaving the device one arc in
// (--fail-leaves intermediate, the default) or in ERROR (--fail-leaves error). Single
// arcs work. A tool must read the state back after a failed SET rather than assume it.

import { DeviceState, stateName } from "../../vfio/state_machine.ts";
import { sysErr } from "../driver.ts";
import type { QuirkDef } from "../quirks.ts";

export const failsMidPath: QuirkDef = {
  summary: "a SET whose path has several arcs fails on the second (--fail-leaves intermediate|error)",
  conformant: false,
  source: "uAPI: a failed SET may stop on the path or in ERROR",
  behaviour: {
    arc(dev, a) {
      if (a.index < 1) return;
      if (dev.meta.quirkOptions?.failLeaves === "error") {
        dev.driver.endSessions();
        dev.meta.state = DeviceState.ERROR;
      }
      throw sysErr("ioctl", "EIO", `the driver failed the arc ${stateName(a.cur)} -> ${stateName(a.next)}`);
    },
  },
};
