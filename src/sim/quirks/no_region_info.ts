// no-region-info (not conformant): VFIO_DEVICE_GET_REGION_INFO fails with EINVAL for
// every region, the PCI config region (index 7) included, while VFIO_DEVICE_GET_INFO
// still reports VFIO_DEVICE_FLAGS_PCI. The xe variant driver (drivers/vfio/pci/xe)
// shipped so: its vfio_device_ops lacked get_region_info_caps, so the core's region-info
// ioctl had nothing to call (fixed Dec 2025). Migration itself works; a tool sees no PCI
// identity and no config space. `check` pci-config-region FAILs it; `save` warns that
// the stream has neither; `info` says why the PCI ids are unknown.

import { sysErr } from "../driver.ts";
import type { QuirkDef } from "../quirks.ts";

export const noRegionInfo: QuirkDef = {
  summary: "VFIO_DEVICE_GET_REGION_INFO answers EINVAL for every region (the config region too) of a PCI device",
  conformant: false,
  source: "drivers/vfio/pci/xe without get_region_info_caps (fixed Dec 2025)",
  v2Only: true,
  behaviour: {
    regionInfo() {
      throw sysErr("ioctl", "EINVAL", "no get_region_info_caps (no-region-info)");
    },
  },
};
