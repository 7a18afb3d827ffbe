// `vfio-mig check` and exploreArcs on simulated devices: every model and flag set
// passes; devices made non-conformant with `sim create --quirk` fail the check that
// describes their fault, and only that one; no run ever requests STOP_COPY -> PRE_COPY*.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { arcPairs, expectedArc, exploreArcs } from "../../src/check/arcs.ts";
import { type CheckReport, runChecks } from "../../src/check/conformance.ts";
import { openDevice } from "../../src/device/open.ts";
import { DeviceState, isHangingArc, supportedStates } from "../../src/vfio/state_machine.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import type { ModelName } from "../../src/sim/models.ts";
import { SimStore } from "../../src/sim/store.ts";
import { stateHash } from "../../src/commands/sim.ts";
import { cliText as vfioMig } from "../helpers/proc.ts";

const MODELS: ModelName[] = ["mtty-1", "mtty-2", "bulk"];
const FLAG_SETS = [0x1, 0x3, 0x5, 0x7];

async function withDevice<T>(
  opts: { model: ModelName; flags?: number; size?: number; quirks?: string[] },
  fn: (dir: string) => Promise<T> | T,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-check-" });
  try {
    new SimStore(libc(), `${dir}/dev`).create({ size: 64 * 1024, ...opts });
    return await fn(`${dir}/dev`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Opens a simulated device on its own SimKernel, so its forbiddenArcs are this run's. */
function open(path: string) {
  const sys = new SimKernel(libc());
  const reopen = (old: { close(): void }) => {
    old.close();
    return openDevice(sys, `sim:${path}`);
  };
  return { sys, dev: openDevice(sys, `sim:${path}`), reopen };
}

function status(r: CheckReport): Record<string, string> {
  return Object.fromEntries(r.checks.map((c) => [c.id, c.status]));
}

function detail(r: CheckReport, id: string): string {
  return r.checks.find((c) => c.id === id)?.detail ?? "";
}

for (const model of MODELS) {
  for (const flags of FLAG_SETS) {
    Deno.test(`check: simulated ${model} with flags 0x${flags.toString(16)} passes every check`, async () => {
      await withDevice({ model, flags }, (path) => {
        const { sys, dev, reopen } = open(path);
        try {
          const before = stateHash(libc(), new SimStore(libc(), path));
          const r = runChecks(dev, { reopen });
          assertEquals(r.summary.FAIL, 0, JSON.stringify(r.checks.filter((c) => c.status !== "PASS"), null, 1));
          assertEquals(r.summary.WARN, 0);
          assertEquals(r.findings, [], "no findings");
          const hasPre = (flags & 0x4) !== 0;
          assertEquals(
            r.checks.filter((c) => c.status === "SKIP").map((c) => c.id),
            hasPre ? [] : ["precopy-initial-bytes", "precopy-info-accuracy"],
            "only the pre-copy checks are skipped, without PRE_COPY",
          );
          assertEquals(r.ok, true);
          assertEquals([r.initialState, r.finalState, r.resets], ["RUNNING", "RUNNING", 0]);
          assertEquals(r.dataSize, r.stopCopyBytes, "the simulator's MIG_DATA_SIZE is exact");
          assertEquals(sys.forbiddenArcs, [], "STOP_COPY -> PRE_COPY* must never be requested");
          assertEquals(
            stateHash(libc(), new SimStore(libc(), path)),
            before,
            "the device ends with the state it had (its own image loaded back)",
          );
        } finally {
          dev.close();
        }
      });
    });
  }
}

Deno.test("exploreArcs: one row per pair but the hanging arcs, as the kernel's table says, and deterministic", async () => {
  for (const flags of FLAG_SETS) {
    await withDevice({ model: "mtty-2", flags }, (path) => {
      const { sys, dev } = open(path);
      try {
        const rows = exploreArcs(dev);
        // 8 targets from each supported state (ERROR and the unsupported included), minus
        // STOP_COPY -> PRE_COPY and -> PRE_COPY_P2P, left out even where PRE_COPY is unsupported.
        const hanging = [0, 1, 2, 3, 4, 5, 6, 7].filter((to) => isHangingArc(DeviceState.STOP_COPY, to)).length;
        assertEquals(hanging, 2);
        assertEquals(rows.length, supportedStates(flags).length * 8 - hanging);
        assertEquals(rows.length, arcPairs(flags).length);
        for (const row of rows) {
          const e = expectedArc(flags, DeviceState[row.from as "STOP"], DeviceState[row.to as "STOP"]);
          assertEquals(
            { finalState: row.finalState, dataFd: row.dataFd, errno: row.errno },
            e,
            `${row.from} -> ${row.to}`,
          );
        }
        assert(!rows.some((r) => r.from === "STOP_COPY" && r.to.startsWith("PRE_COPY")), "hanging arcs left out");
        assertEquals(rows.find((r) => r.from === "STOP" && r.to === "RESUMING")?.dataFd, true);
        assertEquals(rows.find((r) => r.from === "RUNNING" && r.to === "ERROR")?.errno, "EINVAL");
        assertEquals(exploreArcs(dev), rows, "a second exploration gives the same table");
        assertEquals(dev.migration.getState(), DeviceState.RUNNING);
        assertEquals(sys.forbiddenArcs, []);
      } finally {
        dev.close();
      }
    });
  }
});

Deno.test("exploreArcs: the simulated mtty-1 and a bulk device with mtty's flags give the same table", async () => {
  const table = (model: ModelName) =>
    withDevice({ model, flags: 0x7 }, (path) => {
      const { dev } = open(path);
      try {
        return exploreArcs(dev);
      } finally {
        dev.close();
      }
    });
  assertEquals(await table("bulk"), await table("mtty-1"));
});

Deno.test("check: the CLI prints the table and exits 0 on a conformant device; --json and --arcs", async () => {
  await withDevice({ model: "mtty-2" }, async (path) => {
    const text = await vfioMig(["check", "--device", `sim:${path}`, "--arcs"]);
    assertEquals(text.code, 0, text.out + text.err);
    assertMatch(text.out, /^PASS {4}arc-states {13}47 requests ended in the state the kernel's table gives/m);
    assertMatch(text.out, /^PASS {4}round-trip {13}96 bytes saved, loaded and saved again identically/m);
    assertMatch(text.out, /^STOP {10}STOP_COPY {5}ok {6}STOP_COPY {5}yes {6}=$/m);
    assertMatch(text.out, /^PASS {4}reopen-session {9}a session after reopening gave all 96 bytes, identical$/m);
    assertMatch(text.out, /summary: 18 PASS, 0 FAIL, 0 WARN, 0 SKIP/);
    const json = await vfioMig(["check", "--device", `sim:${path}`, "--json"]);
    assertEquals(json.code, 0, json.err);
    const r = JSON.parse(json.out) as CheckReport;
    assertEquals([r.ok, r.migrationFlags, r.arcs.length, r.dataSize, r.stopCopyBytes], [true, 7, 54, 96, 96]);
    assertEquals(r.findings, []);
  });
});

Deno.test("check: quirk wrong-arc fails arc-states with the arcs that end short of RUNNING", async () => {
  await withDevice({ model: "mtty-1", quirks: ["wrong-arc"] }, (path) => {
    const { dev } = open(path);
    try {
      const r = runChecks(dev);
      assertEquals(r.ok, false);
      assertEquals(status(r)["arc-states"], "FAIL");
      assertStringIncludes(
        detail(r, "arc-states"),
        "STOP -> RUNNING: succeeded, ended in RUNNING_P2P (expected success, RUNNING)",
      );
      assertStringIncludes(detail(r, "arc-states"), "PRE_COPY -> RUNNING: succeeded, ended in PRE_COPY");
      assertEquals(status(r)["arc-data-fd"], "PASS");
      assertEquals(status(r)["unsupported-targets"], "PASS");
      assertEquals(status(r)["final-state"], "WARN", "RUNNING only through a reset");
      assertEquals(r.finalState, "RUNNING");
      assert(r.resets > 0);
    } finally {
      dev.close();
    }
  });
});

Deno.test("check: quirk fd-on-stop fails arc-data-fd on the arcs into STOP", async () => {
  for (const flags of [0x1, 0x7]) {
    await withDevice({ model: "bulk", flags, quirks: ["fd-on-stop"] }, (path) => {
      const { dev } = open(path);
      try {
        const r = runChecks(dev);
        assertEquals(status(r)["arc-data-fd"], "FAIL");
        const d = detail(r, "arc-data-fd");
        assertStringIncludes(
          d,
          "RUNNING -> STOP: succeeded, ended in STOP, returned a data_fd (expected success, STOP)",
        );
        if (flags & 0x2) assertStringIncludes(d, "RUNNING_P2P -> STOP: succeeded, ended in STOP, returned a data_fd");
        assertEquals(r.summary.FAIL, 1, "only that check fails");
        assertEquals(status(r)["arc-states"], "PASS");
      } finally {
        dev.close();
      }
    });
  }
});

Deno.test("check: quirk initial-grows fails precopy-initial-bytes", async () => {
  for (const model of ["mtty-1", "bulk"] as ModelName[]) {
    await withDevice({ model, quirks: ["initial-grows"] }, (path) => {
      const { dev } = open(path);
      try {
        const r = runChecks(dev);
        assertEquals(status(r)["precopy-initial-bytes"], "FAIL", model);
        assertMatch(
          detail(r, "precopy-initial-bytes"),
          /^initial_bytes grew from \d+ to \d+ after \d+ bytes were read \(no REINIT flag\)$/,
        );
        assertEquals(r.summary.FAIL, 1, `${model}: only that check fails`);
      } finally {
        dev.close();
      }
    });
  }
});

Deno.test("check: the CLI exits 1 on a quirky device and names the failing check", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-check-" });
  try {
    const made = await vfioMig([
      "sim",
      "create",
      `${dir}/q`,
      "--model",
      "mtty-2",
      "--quirk",
      "fd-on-stop",
      "--quirk",
      "initial-grows",
    ]);
    assertEquals(made.code, 0, made.err);
    const shown = await vfioMig(["sim", "show", `${dir}/q`, "--json"]);
    assertEquals(JSON.parse(shown.out).quirks, "fd-on-stop,initial-grows");
    const r = await vfioMig(["check", "--device", `sim:${dir}/q`]);
    assertEquals(r.code, 1, r.out + r.err);
    assertMatch(r.out, /^FAIL {4}arc-data-fd {12}RUNNING -> STOP: succeeded, ended in STOP, returned a data_fd/m);
    assertMatch(r.out, /^FAIL {4}precopy-initial-bytes {2}initial_bytes grew/m);
    assertMatch(r.out, /summary: 16 PASS, 2 FAIL, 0 WARN, 0 SKIP/);
    const bad = await vfioMig(["sim", "create", `${dir}/x`, "--quirk", "no-such-quirk"]);
    assertEquals(bad.code, 2);
    assertStringIncludes(bad.err, "unknown quirk no-such-quirk");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("check: a device that is not migratable fails migration-flags and exits 3", async () => {
  await withDevice({ model: "bulk", flags: 0 }, async (path) => {
    const r = await vfioMig(["check", "--device", `sim:${path}`, "--json"]);
    assertEquals(r.code, 3, r.err);
    const report = JSON.parse(r.out) as CheckReport;
    assertEquals(report.migratable, false);
    assertEquals(status(report)["migration-flags"], "FAIL");
    assertStringIncludes(detail(report, "migration-flags"), "ENOTTY");
    assertEquals(report.summary.SKIP, report.checks.length - 1);
  });
});
