// ignores-offset (not conformant; hisi_acc before be12ad45e15b, "Update migration data
// pointer correctly on saving/resume"): the save read copies from the start of the
// driver's buffer whatever the file position, while the position and the length limit
// advance as they should. One read from position 0 gets the right bytes; after a partial
// read (the PRE_COPY header) every later read starts over, so STOP_COPY hands out the
// beginning again and the end is never seen. The same stream read in different sizes
// gives different bytes: `check` read-size catches it.

import type { MigrationFile } from "../driver.ts";
import type { QuirkDef } from "../quirks.ts";

/** The start of each session's stream, as far as it was read (a real driver's buffer). */
const seen = new WeakMap<MigrationFile, { prefix: Uint8Array; known: number }>();
const CAP = 16 << 20;

export const ignoresOffset: QuirkDef = {
  summary: "save reads copy from the start of the data whatever the file position (STOP_COPY restarts " +
    "from the beginning after a partial PRE_COPY read)",
  conformant: false,
  source: "hisi_acc be12ad45e15b",
  behaviour: {
    read(_dev, file, buf, _io, next) {
      const start = file.pos;
      const n = next(buf);
      if (n <= 0) return n;
      let st = seen.get(file);
      if (!st) seen.set(file, st = { prefix: new Uint8Array(0), known: 0 });
      const end = Math.min(start + n, CAP);
      if (start <= st.known && end > st.known) {
        if (st.prefix.length < end) {
          const grown = new Uint8Array(Math.min(CAP, Math.max(end, st.prefix.length * 2, 4096)));
          grown.set(st.prefix.subarray(0, st.known));
          st.prefix = grown;
        }
        st.prefix.set(buf.subarray(st.known - start, end - start), st.known);
        st.known = end;
      }
      // copy_to_user(buf, &migf->vf_data, len): from the start, not from *pos.
      buf.set(st.prefix.subarray(0, Math.min(n, st.known)));
      return n;
    },
  },
};
