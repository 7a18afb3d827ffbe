// open-resets-state (not conformant for an mdev, what PCI variant drivers do: mlx5 and
// hisi_acc set their migration state to RUNNING in open_device): every open of the
// device finds it RUNNING, whatever state the last user left it in; the device's data is
// kept (the pci family also resets that, at the first open). `check` reopen-state warns.

import { DeviceState } from "../../vfio/state_machine.ts";
import type { QuirkDef } from "../quirks.ts";

export const openResetsState: QuirkDef = {
  summary: "every open finds the device RUNNING (its data kept)",
  conformant: false,
  source: "mlx5, hisi_acc open_device",
  behaviour: {
    open(dev) {
      const v1 = dev.meta.v1;
      if (dev.meta.state === DeviceState.RUNNING && (!v1 || v1.state === 1)) return;
      if (v1) v1.state = 1; // RUNNING
      dev.meta.state = DeviceState.RUNNING;
      dev.meta.runningSince = Date.now();
      dev.persist();
    },
  },
};
