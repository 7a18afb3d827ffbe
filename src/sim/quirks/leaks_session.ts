// leaks-session (not conformant; a planted defect for `check --torture`): a data_fd
// closed while its session is still open (mid-transfer) is never released: the driver
// drops its pointer to the migration file but not its reference, so the file's buffers
// stay allocated for ever. Closing a data_fd mid-transfer is legal (the uAPI ends the
// session at the next arc); here each such close leaks one of the device's
// LEAK_LIMIT migration buffers, which neither a reset nor a reopen gives back (the count
// is kept in the store's `leaked` file, as leaked kernel memory outlives the process).
// Once they are all gone, every arc that opens a new session fails with ENOMEM: the
// device can no longer save or load.

import { arcOpensDataFd } from "../../vfio/state_machine.ts";
import { type SimDevice, sysErr } from "../driver.ts";
import type { QuirkDef } from "../quirks.ts";
import { writeFileAtomic } from "../store.ts";

export const LEAK_LIMIT = 3;

function leakedPath(dev: SimDevice): string {
  return `${dev.store.dir}/leaked`;
}

function leaked(dev: SimDevice): number {
  const b = dev.store.readOptional(leakedPath(dev));
  return b ? Number(new TextDecoder().decode(b)) || 0 : 0;
}

export const leaksSession: QuirkDef = {
  summary: `a data_fd closed mid-session leaks the session's buffers; after ${LEAK_LIMIT} leaks new sessions ` +
    "fail with ENOMEM, across resets and reopens",
  conformant: false,
  source: "planted defect (torture positive control): a migration file reference never put",
  v2Only: true,
  behaviour: {
    fileClosed(dev, file) {
      if (file.disabled || !dev.driver.holds(file)) return;
      const n = leaked(dev) + 1;
      writeFileAtomic(dev.host, leakedPath(dev), new TextEncoder().encode(String(n)));
      dev.log({ key: "leak", leaked: n });
    },
    arc(dev, a) {
      if (arcOpensDataFd(a.cur, a.next) === null) return;
      if (leaked(dev) >= LEAK_LIMIT) throw sysErr("ioctl", "ENOMEM", "migration buffers leaked");
    },
  },
};
