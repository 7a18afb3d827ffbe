// uninit-vf (not conformant; hisi_acc before its 2024-25 fix "live migration without VF
// device driver"): a VF whose function was never initialised since its last reset (a PCI
// function fresh from the reset of its first open, no guest driver loaded) still gets
// saved, but the data's match part is read from registers no driver set: zeros. The
// destination's resume path checks that part (hisi_acc vf_qm_check_match) and rejects
// the data: EINVAL. The simulator: a save session that starts while a pci-family device
// is pristine (its power-on content, nothing written since) hands out its first 8 bytes
// (the model's magic, its match data) as zeros; a resume write whose first 8 bytes are
// zeros fails with EINVAL. A device a workload, a register write or a load touched saves
// normally. `check` opens a pci-family device fresh, so its round trip FAILs, naming the
// cause; `save` warns that a freshly opened device holds its post-reset state.

import type { MigrationFile } from "../driver.ts";
import { sysErr } from "../driver.ts";
import type { QuirkDef } from "../quirks.ts";

const MATCH = 8;
/** Save files opened while the function was never initialised. */
const uninit = new WeakSet<MigrationFile>();

export const uninitVf: QuirkDef = {
  summary: "a save of a PCI function never initialised since its reset (pristine) carries zeros as its match data; " +
    "the resume path rejects such data (EINVAL)",
  conformant: false,
  source: "hisi_acc fix: live migration without VF device driver (2024-25)",
  v2Only: true,
  behaviour: {
    phase(dev, file) {
      if (file.pos === 0 && dev.family === "pci" && dev.meta.pristine && !uninit.has(file)) {
        uninit.add(file);
        dev.log({ key: "quirk", quirk: "uninit-vf", save: "from a never-initialised function" });
      }
    },
    read(_dev, file, buf, _io, next) {
      const at = file.pos;
      const n = next(buf);
      if (uninit.has(file) && at < MATCH) buf.fill(0, 0, Math.min(n, MATCH - at));
      return n;
    },
    write(_dev, file, buf, next) {
      const at = file.pos;
      if (at < MATCH && !file.disabled) {
        const part = buf.subarray(0, MATCH - at);
        if (part.length === MATCH - at && part.every((b) => b === 0)) {
          throw sysErr(
            "write",
            "EINVAL",
            "vf_qm_check_match: the data's match part is zeros: saved from a VF never initialised (no VF driver)",
          );
        }
      }
      return next(buf);
    },
  },
};
