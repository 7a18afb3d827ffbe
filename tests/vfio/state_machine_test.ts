// The v2 migration state machine against the reference (docs: vfio-migration-reference.md
// §1.5): every cell of the 0x7 table, the listed 0x1 / 0x5 facts, EINVAL cases, the
// hanging arcs, and which arcs open a data_fd.

import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import {
  ALL_STATES,
  arcClosesSession,
  arcOpensDataFd,
  DeviceState,
  isHangingArc,
  isRunningState,
  isSavingState,
  nextStep,
  parseState,
  resolvePath,
  stateName,
  supportedStates,
  supportsState,
} from "../../src/vfio/state_machine.ts";

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = DeviceState;
const NON_ERROR = ALL_STATES.filter((s) => s !== ERROR);

// The reference's abbreviations.
const ABBREV: Record<string, DeviceState> = {
  STOP,
  RUN: RUNNING,
  SC: STOP_COPY,
  RES: RESUMING,
  P2P: RUNNING_P2P,
  PRE: PRE_COPY,
  PRE_P2P: PRE_COPY_P2P,
};

/**
 * A cell as the reference writes it: "–" (same state), "direct", "EINVAL", or the
 * states visited after `from`, ending with the target ("P2P→RUN→PRE").
 */
function cellPath(cell: string, to: DeviceState): DeviceState[] | null {
  if (cell === "–") return [];
  if (cell === "direct") return [to];
  if (cell === "EINVAL") return null;
  const path = cell.split("→").map((a) => {
    const s = ABBREV[a];
    if (s === undefined) throw new Error(`bad abbreviation ${a} in ${cell}`);
    return s;
  });
  if (path[path.length - 1] !== to) throw new Error(`cell ${cell} does not end at ${stateName(to)}`);
  return path;
}

// §1.5, "Device with STOP_COPY|P2P|PRE_COPY (flags 0x7)", transcribed cell by cell.
const COLUMNS = [STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P];
// deno-fmt-ignore
const TABLE_0x7: [DeviceState, string[]][] = [
  [STOP, ["–", "P2P→RUN", "direct", "direct", "direct", "P2P→RUN→PRE", "P2P→PRE_P2P"]],
  [RUNNING, ["P2P→STOP", "–", "P2P→STOP→SC", "P2P→STOP→RES", "direct", "direct", "P2P→PRE_P2P"]],
  [STOP_COPY, ["direct", "STOP→P2P→RUN", "–", "STOP→RES", "STOP→P2P", "EINVAL", "EINVAL"]],
  [RESUMING, ["direct", "STOP→P2P→RUN", "STOP→SC", "–", "STOP→P2P", "STOP→P2P→RUN→PRE", "STOP→P2P→PRE_P2P"]],
  [RUNNING_P2P, ["direct", "direct", "STOP→SC", "STOP→RES", "–", "RUN→PRE", "direct"]],
  [PRE_COPY, ["RUN→P2P→STOP", "direct", "PRE_P2P→SC", "RUN→P2P→STOP→RES", "RUN→P2P", "–", "direct"]],
  [PRE_COPY_P2P, ["P2P→STOP", "P2P→RUN", "direct", "P2P→STOP→RES", "direct", "direct", "–"]],
];

const pathName = (p: DeviceState[] | null) => (p === null ? "EINVAL" : p.map(stateName).join("→") || "(none)");

Deno.test("state values are the uAPI's enum vfio_device_mig_state", () => {
  assertEquals(
    [ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P],
    [0, 1, 2, 3, 4, 5, 6, 7],
  );
  assertEquals(ALL_STATES.length, 8);
  assertEquals(stateName(RUNNING_P2P), "RUNNING_P2P");
  assertEquals(stateName(42), "UNKNOWN(42)");
  assertEquals(parseState("pre_copy_p2p"), PRE_COPY_P2P);
  assertThrows(() => parseState("PAUSED"), Error, "unknown device state");
});

Deno.test("resolvePath, flags 0x7: every cell of the reference table (49 cells)", () => {
  let cells = 0;
  for (const [from, row] of TABLE_0x7) {
    assertEquals(row.length, COLUMNS.length, `row ${stateName(from)} has every column`);
    row.forEach((cell, i) => {
      const to = COLUMNS[i];
      const want = cellPath(cell, to);
      const got = resolvePath(0x7, from, to);
      assertEquals(
        got,
        want,
        `${stateName(from)} -> ${stateName(to)}: expected ${pathName(want)}, got ${pathName(got)}`,
      );
      cells++;
    });
  }
  assertEquals(cells, 49);
});

Deno.test("resolvePath, flags 0x1 (STOP_COPY only): the reference's facts", () => {
  const cases: [DeviceState, DeviceState, DeviceState[]][] = [
    [STOP, RUNNING, [RUNNING]],
    [RUNNING, STOP, [STOP]],
    [STOP, STOP_COPY, [STOP_COPY]],
    [STOP, RESUMING, [RESUMING]],
    [STOP_COPY, STOP, [STOP]],
    [RESUMING, STOP, [STOP]],
    [RUNNING, STOP_COPY, [STOP, STOP_COPY]],
    [RUNNING, RESUMING, [STOP, RESUMING]],
    [STOP_COPY, RUNNING, [STOP, RUNNING]],
    [RESUMING, RUNNING, [STOP, RUNNING]],
  ];
  for (const [from, to, want] of cases) {
    assertEquals(resolvePath(0x1, from, to), want, `0x1 ${stateName(from)} -> ${stateName(to)}`);
  }
  // The optional states do not exist on this device: EINVAL as source or target.
  for (const opt of [RUNNING_P2P, PRE_COPY, PRE_COPY_P2P]) {
    for (const other of [STOP, RUNNING, STOP_COPY, RESUMING]) {
      assertEquals(resolvePath(0x1, other, opt), null, `0x1 ${stateName(other)} -> ${stateName(opt)}`);
      assertEquals(resolvePath(0x1, opt, other), null, `0x1 ${stateName(opt)} -> ${stateName(other)}`);
    }
  }
});

Deno.test("resolvePath, flags 0x5 (STOP_COPY|PRE_COPY): the reference's facts", () => {
  assertEquals(resolvePath(0x5, PRE_COPY, STOP_COPY), [STOP_COPY], "PRE_COPY -> STOP_COPY is direct");
  assertEquals(resolvePath(0x5, PRE_COPY, STOP), [RUNNING, STOP], "PRE_COPY -> STOP goes through RUNNING");
  assertEquals(resolvePath(0x5, STOP, PRE_COPY), [RUNNING, PRE_COPY], "STOP -> PRE_COPY goes through RUNNING");
  assertEquals(resolvePath(0x5, STOP_COPY, PRE_COPY), null, "STOP_COPY -> PRE_COPY is EINVAL");
  assertEquals(resolvePath(0x5, RUNNING, PRE_COPY), [PRE_COPY]);
  for (const s of [RUNNING_P2P, PRE_COPY_P2P]) {
    assertEquals(resolvePath(0x5, RUNNING, s), null, `0x5 has no ${stateName(s)}`);
    assertEquals(resolvePath(0x5, s, RUNNING), null, `0x5 has no ${stateName(s)} source`);
  }
});

Deno.test("resolvePath: ERROR as source or target is EINVAL for every device", () => {
  for (const flags of [0x1, 0x3, 0x5, 0x7]) {
    for (const s of NON_ERROR) {
      assertEquals(resolvePath(flags, ERROR, s), null, `flags ${flags} ERROR -> ${stateName(s)}`);
      assertEquals(resolvePath(flags, s, ERROR), null, `flags ${flags} ${stateName(s)} -> ERROR`);
      assertEquals(nextStep(flags, ERROR, s), { ok: false, hangs: false });
      assertEquals(nextStep(flags, s, ERROR), { ok: false, hangs: false });
    }
  }
});

Deno.test("resolvePath: requesting the current state is an empty path (drivers loop while cur != new)", () => {
  for (const flags of [0x1, 0x3, 0x5, 0x7]) {
    for (const s of supportedStates(flags)) assertEquals(resolvePath(flags, s, s), [], `${flags} ${stateName(s)}`);
  }
});

Deno.test("supported states per flags (reference §1.3)", () => {
  assertEquals(supportedStates(0x1), [STOP, RUNNING, STOP_COPY, RESUMING]);
  assertEquals(supportedStates(0x3), [STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P]);
  assertEquals(supportedStates(0x5), [STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY]);
  assertEquals(supportedStates(0x7), NON_ERROR);
  for (const flags of [0x1, 0x3, 0x5, 0x7]) assert(!supportsState(flags, ERROR), "ERROR never supported");
});

Deno.test("every path visits only supported states, and only its final arc may open a data_fd", () => {
  for (const flags of [0x1, 0x3, 0x5, 0x7]) {
    const states = supportedStates(flags);
    for (const from of states) {
      for (const to of states) {
        const path = resolvePath(flags, from, to);
        const hanging = isHangingArc(from, to);
        assertEquals(path === null, hanging, `flags ${flags} ${stateName(from)} -> ${stateName(to)} refused`);
        if (path === null) continue;
        let cur = from;
        path.forEach((next, i) => {
          assert(supportsState(flags, next), `flags ${flags} ${pathName(path)} visits ${stateName(next)}`);
          if (i < path.length - 1) {
            assertEquals(arcOpensDataFd(cur, next), null, `intermediate arc ${stateName(cur)}->${stateName(next)}`);
          }
          cur = next;
        });
      }
    }
  }
});

Deno.test("isHangingArc: exactly STOP_COPY -> PRE_COPY and STOP_COPY -> PRE_COPY_P2P", () => {
  for (const from of ALL_STATES) {
    for (const to of ALL_STATES) {
      const want = from === STOP_COPY && (to === PRE_COPY || to === PRE_COPY_P2P);
      assertEquals(isHangingArc(from, to), want, `${stateName(from)} -> ${stateName(to)}`);
    }
  }
  // The unfixed kernel's skip loop would spin: nextStep flags it.
  assertEquals(nextStep(0x7, STOP_COPY, PRE_COPY), { ok: false, hangs: true });
  assertEquals(nextStep(0x7, STOP_COPY, PRE_COPY_P2P), { ok: false, hangs: true });
  assertEquals(nextStep(0x5, STOP_COPY, PRE_COPY), { ok: false, hangs: true });
  // Without PRE_COPY the target is unsupported: a plain EINVAL, no loop.
  assertEquals(nextStep(0x1, STOP_COPY, PRE_COPY), { ok: false, hangs: false });
  assertEquals(nextStep(0x3, STOP_COPY, PRE_COPY_P2P), { ok: false, hangs: false });
});

Deno.test("arcOpensDataFd: the four arcs of the reference, nothing else", () => {
  const opening = new Map<string, "save" | "resume">([
    [`${RUNNING}>${PRE_COPY}`, "save"],
    [`${RUNNING_P2P}>${PRE_COPY_P2P}`, "save"],
    [`${STOP}>${STOP_COPY}`, "save"],
    [`${STOP}>${RESUMING}`, "resume"],
  ]);
  for (const from of ALL_STATES) {
    for (const to of ALL_STATES) {
      assertEquals(
        arcOpensDataFd(from, to),
        opening.get(`${from}>${to}`) ?? null,
        `${stateName(from)}->${stateName(to)}`,
      );
    }
  }
  // Moving inside the saving group keeps the fd.
  assertEquals(arcOpensDataFd(PRE_COPY, STOP_COPY), null);
  assertEquals(arcOpensDataFd(PRE_COPY_P2P, STOP_COPY), null);
  assertEquals(arcOpensDataFd(PRE_COPY, PRE_COPY_P2P), null);
});

Deno.test("arcClosesSession: PRE_COPY->RUNNING, PRE_COPY_P2P->RUNNING_P2P, STOP_COPY->STOP, RESUMING->STOP", () => {
  const closing = new Set([
    `${PRE_COPY}>${RUNNING}`,
    `${PRE_COPY_P2P}>${RUNNING_P2P}`,
    `${STOP_COPY}>${STOP}`,
    `${RESUMING}>${STOP}`,
  ]);
  for (const from of ALL_STATES) {
    for (const to of ALL_STATES) {
      assertEquals(arcClosesSession(from, to), closing.has(`${from}>${to}`), `${stateName(from)}->${stateName(to)}`);
    }
  }
  assertEquals(ALL_STATES.filter(isSavingState), [STOP_COPY, PRE_COPY, PRE_COPY_P2P]);
  assertEquals(ALL_STATES.filter(isRunningState), [RUNNING, PRE_COPY]);
});
