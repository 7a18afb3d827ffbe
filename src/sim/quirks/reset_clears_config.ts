// reset-clears-config (conformant: what PCI functions do): VFIO_DEVICE_RESET clears the
// command register and the MSI and MSI-X enables; whoever drives the device must
// restore them (Cloud Hypervisor PR #8528 re-arms them after a reset). `check`
// config-after-reset reports it (a warning, not a failure).

import { writeFileAtomic } from "../store.ts";
import { clearCommandAndEnables } from "../models.ts";
import type { QuirkDef } from "../quirks.ts";

export const resetClearsConfig: QuirkDef = {
  summary: "VFIO_DEVICE_RESET clears the command register and the MSI/MSI-X enables",
  conformant: true,
  source: "PCI reset; Cloud Hypervisor #8528",
  behaviour: {
    reset(dev) {
      if (clearCommandAndEnables(dev.info, dev.config)) writeFileAtomic(dev.host, dev.store.configPath, dev.config);
    },
  },
};
