// dirty-underreport (not conformant; mlx5 before 4928f67bc911, "Fix the report of
// dirty_bytes upon pre-copy"): PRECOPY_INFO's dirty_bytes counts only what the device
// has not queued yet, leaving out data already queued in the migration file. A user
// that takes initial_bytes + dirty_bytes as what is left reads too little; reading until
// ENOMSG (or 0) gets it all. `check` precopy-info-accuracy warns with the numbers.

import type { QuirkDef } from "../quirks.ts";

export const dirtyUnderreport: QuirkDef = {
  summary: "PRECOPY_INFO dirty_bytes leaves out data already queued in the migration file",
  conformant: false,
  source: "mlx5 4928f67bc911",
  models: ["bulk"],
  behaviour: {
    precopyInfo(_dev, _file, next) {
      return { ...next(), queued: 0 };
    },
  },
};
