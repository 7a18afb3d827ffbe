// stale-after-reopen (not conformant; hisi_acc before 8c6ac1730a97, "resolve duplicate
// migration states"): the flag that says "this VF's data was migrated" lives in device
// memory and is not cleared when the device is opened again, so after a reopen a new
// migration session skips the data: it carries the header only. Only `sim create` (a new
// device) clears the flag. `check` reopen-session catches it.

import { DeviceState } from "../../vfio/state_machine.ts";
import type { QuirkDef } from "../quirks.ts";

const NAME = "stale-after-reopen";

export const staleAfterReopen: QuirkDef = {
  summary: "after the device is closed and opened again, save sessions carry no device data (header only)",
  conformant: false,
  source: "hisi_acc 8c6ac1730a97",
  behaviour: {
    open(dev) {
      dev.quirkData.set(NAME, dev.meta.quirkState?.migrated === true);
    },
    sessionData: (dev) => dev.quirkData.get(NAME) !== true,
    read(dev, _file, buf, _io, next) {
      const n = next(buf);
      if (n === 0 && dev.meta.state === DeviceState.STOP_COPY && !dev.meta.quirkState?.migrated) {
        // A session delivered the device's data to its end: the driver notes it, for good.
        dev.meta.quirkState = { ...dev.meta.quirkState, migrated: true };
        dev.persist();
        dev.log({ key: "quirk", quirk: NAME, migrated: true });
      }
      return n;
    },
  },
};
