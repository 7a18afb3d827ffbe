// initial-grows (not conformant): PRECOPY_INFO's initial_bytes grows while the initial
// data is being read, without the REINIT flag that alone allows it (Linux 7.1).

import type { QuirkDef } from "../quirks.ts";

export const initialGrows: QuirkDef = {
  summary: "PRECOPY_INFO initial_bytes grows as the initial data is read",
  conformant: false,
  source: "uAPI: initial_bytes shrinks unless REINIT",
  behaviour: {
    precopyInfo(_dev, file, next) {
      const n = next();
      if (n.initial > 0) n.initial += 2 * file.pos;
      return n;
    },
  },
};
