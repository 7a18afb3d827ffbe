// `vfio-mig check` against each simulated driver model: every non-conformant quirk gets
// its named finding (and the conformant ones none that fails): read-size for
// ignores-offset, reopen-session for stale-after-reopen, precopy-info-accuracy for
// dirty-underreport, spontaneous-reset for reset-mid-session, arc-states for
// fails-mid-path, reopen-state for open-resets-state, config-after-reset for
// reset-clears-config, data-size and reopen-state for xe; nothing for blocking-read.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { type CheckReport, runChecks } from "../../src/check/conformance.ts";
import { openDevice, type VfioDevice } from "../../src/device/open.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import type { SimStore } from "../../src/sim/store.ts";
import { withStore } from "../helpers/sim.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;
type Create = Parameters<SimStore["create"]>[0];

/** Runs every check on a new device made with `opts`, reopening it as the CLI does. */
function check(opts: Create): Promise<CheckReport> {
  return withStore(opts, (dir) => {
    const sys = new SimKernel(libc());
    const spec = `sim:${dir}`;
    const dev = openDevice(sys, spec);
    try {
      const r = runChecks(dev, {
        reopen: (old: VfioDevice) => {
          old.close();
          return openDevice(sys, spec);
        },
      });
      assertEquals(sys.forbiddenArcs, [], "STOP_COPY -> PRE_COPY* is never requested");
      assertEquals(r.finalState, r.protocol === "v1" ? "running (001b)" : "RUNNING", "the device ends RUNNING");
      return r;
    } finally {
      dev.close();
    }
  });
}

function statusOf(r: CheckReport): Record<string, string> {
  return Object.fromEntries(r.checks.map((c) => [c.id, c.status]));
}

function detailOf(r: CheckReport, id: string): string {
  return r.checks.find((c) => c.id === id)?.detail ?? "";
}

/** The findings as id: status, in report order. */
function findings(r: CheckReport): string[] {
  return r.findings.map((c) => `${c.id}: ${c.status}`);
}

Deno.test("check on ignores-offset: read-size FAILs (odd-sized reads give other bytes), nothing else", async () => {
  const r = await check({ model: "mtty-2", seed: 3, quirks: ["ignores-offset"] });
  assertEquals(findings(r), ["read-size: FAIL"]);
  assertMatch(detailOf(r, "read-size"), /differs from 1 MiB reads \(96 bytes\) at byte 7: the driver ignores the file/);
  assertStringIncludes(detailOf(r, "read-size"), "hisi_acc be12ad45e15b");
});

Deno.test("check on stale-after-reopen: reopen-session FAILs with the sizes of both sessions", async () => {
  const r = await check({ model: "bulk", size: 64 * 1024, quirks: ["stale-after-reopen"] });
  assertEquals(findings(r), ["reopen-session: FAIL"]);
  assertStringIncludes(detailOf(r, "reopen-session"), "gave 32 bytes where the first gave 65584");
});

Deno.test("check on dirty-underreport: precopy-info-accuracy WARNs with the numbers; a tidy dirtying device does not", async () => {
  const dev = { model: "bulk" as const, size: 8 << 20, rate: 8 << 20 };
  const bad = await check({ ...dev, quirks: ["dirty-underreport"] });
  assertEquals(findings(bad), ["precopy-info-accuracy: WARN"]);
  assertMatch(
    detailOf(bad, "precopy-info-accuracy"),
    /^PRECOPY_INFO said \d+ bytes were left \(initial \+ dirty\) but \d+ came before ENOMSG, \d+ more than reported/,
  );
  assertEquals(bad.ok, true, "a WARN does not fail the check");
  const good = await check(dev);
  assertEquals(findings(good), [], detailOf(good, "precopy-info-accuracy"));
  assertStringIncludes(detailOf(good, "precopy-info-accuracy"), "initial + dirty covered what was read until ENOMSG");
});

Deno.test("check on reset-mid-session: spontaneous-reset FAILs, whichever phase the device resets in", async () => {
  for (
    const resetAt of [
      { phase: "stop-copy" as const, after: 0, to: "error" as const },
      { phase: "pre-copy" as const, after: 4096, to: "error" as const },
      { phase: "resuming" as const, after: 0, to: "running" as const },
    ]
  ) {
    const r = await check({ model: "bulk", size: 64 * 1024, quirks: ["reset-mid-session"], quirkOptions: { resetAt } });
    assertEquals(statusOf(r)["spontaneous-reset"], "FAIL", resetAt.phase);
    assertMatch(detailOf(r, "spontaneous-reset"), /: the data_fd answered ENODEV and the device is (ERROR|RUNNING)/);
    assertEquals(r.ok, false);
  }
});

Deno.test("check on fails-mid-path: arc-states FAILs, naming where each failed request left the device", async () => {
  const r = await check({ model: "mtty-1", quirks: ["fails-mid-path"] });
  assertEquals(statusOf(r)["arc-states"], "FAIL");
  assertStringIncludes(detailOf(r, "arc-states"), "RUNNING -> STOP: failed with EIO, ended in RUNNING_P2P");
  assertEquals(statusOf(r)["round-trip"], "PASS", "states are still reached one arc at a time");
  const e = await check({ model: "mtty-1", quirks: ["fails-mid-path"], quirkOptions: { failLeaves: "error" } });
  assertStringIncludes(detailOf(e, "arc-states"), "RUNNING -> STOP: failed with EIO, ended in ERROR");
});

Deno.test("check on open-resets-state: reopen-state WARNs; the data survives (reopen-session passes)", async () => {
  const r = await check({ model: "mtty-1", quirks: ["open-resets-state"] });
  assertEquals(findings(r), ["reopen-state: WARN"]);
  assertStringIncludes(detailOf(r, "reopen-state"), "was STOP when closed and is RUNNING after reopening");
  assertEquals(statusOf(r)["reopen-session"], "PASS");
});

Deno.test("check on blocking-read (conformant, mlx5): no finding", async () => {
  const r = await check({ model: "bulk", size: 64 * 1024, quirks: ["blocking-read"], quirkOptions: { readDelay: 30 } });
  assertEquals(findings(r), []);
  assertEquals(r.summary.SKIP, 0);
});

Deno.test("check on reset-clears-config (conformant): config-after-reset WARNs, naming what the reset cleared", async () => {
  const r = await check({ model: "bulk", size: 64 * 1024, quirks: ["reset-clears-config"] });
  assertEquals(findings(r), ["config-after-reset: WARN"]);
  assertStringIncludes(
    detailOf(r, "config-after-reset"),
    "cleared command register (0x6 -> 0x0), MSI enable (0x1 -> 0x0), MSI-X enable (0x8000 -> 0x0)",
  );
  const plain = await check({ model: "bulk", size: 64 * 1024 });
  assertEquals(statusOf(plain)["config-after-reset"], "PASS");
  assertStringIncludes(detailOf(plain, "config-after-reset"), "VFIO_DEVICE_RESET kept command register");
});

Deno.test("check on xe: data-size WARNs (the stream exceeds MIG_DATA_SIZE), reopen-state WARNs (pci family)", async () => {
  const r = await check({ model: "xe", size: 4 << 20, seed: 9 });
  assertEquals(findings(r), ["data-size: WARN", "reopen-state: WARN"]);
  assertMatch(detailOf(r, "data-size"), /^STOP_COPY produced 4194336 bytes, 262144 more than MIG_DATA_SIZE 3932192/);
  assertEquals(
    r.checks.filter((c) => c.status === "SKIP").map((c) => c.id),
    ["precopy-initial-bytes", "precopy-info-accuracy"],
    "no PRE_COPY",
  );
});

Deno.test("check --json lists the findings; exit 1 on a FAIL, 0 on WARNs only", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "vfio-mig-checkm-" });
  const run = async (args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", CLI, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, out: new TextDecoder().decode(out.stdout), err: new TextDecoder().decode(out.stderr) };
  };
  try {
    for (
      const [name, args, code, want] of [
        ["stale", ["--model", "mtty-2", "--quirk", "stale-after-reopen"], 1, ["reopen-session:FAIL"]],
        ["cfg", ["--size", "64K", "--quirk", "reset-clears-config"], 0, ["config-after-reset:WARN"]],
      ] as const
    ) {
      const made = await run(["sim", "create", `${tmp}/${name}`, ...args]);
      assertEquals(made.code, 0, made.err);
      const r = await run(["check", "--json", "--device", `sim:${tmp}/${name}`]);
      assertEquals(r.code, code, r.err);
      const rep = JSON.parse(r.out) as CheckReport;
      assertEquals(rep.findings.map((f) => `${f.id}:${f.status}`), want);
      assert(rep.findings.every((f) => f.detail.length > 0), "each finding says why");
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("a PCI device whose config region cannot be described (xe without get_region_info_caps): check FAILs pci-config-region by name; save warns (stderr, --json, events) what the stream lacks; info says why the ids are unknown", async () => {
  const r = await check({ model: "xe", size: 1 << 20, quirks: ["no-region-info"] });
  assertEquals(statusOf(r)["pci-config-region"], "FAIL");
  assert(!r.ok, "check fails");
  assertStringIncludes(
    detailOf(r, "pci-config-region"),
    "VFIO_DEVICE_GET_REGION_INFO of its PCI config region (index 7) fails with EINVAL",
  );
  assertStringIncludes(detailOf(r, "pci-config-region"), "driver defect");
  // A tidy xe: PASS with its ids.
  const good = await check({ model: "xe", size: 1 << 20 });
  assertEquals(statusOf(good)["pci-config-region"], "PASS");
  assertMatch(detailOf(good, "pci-config-region"), /bytes readable, vendor:device 8086:/);

  await withStore({ model: "xe", size: 1 << 20, quirks: ["no-region-info"] }, async (dir) => {
    const run = async (...args: string[]) => {
      const o = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-ffi", CLI, ...args],
        env: { NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
    };
    const c = await run("check", "--device", `sim:${dir}`);
    assertEquals(c.code, 1, c.stdout + c.stderr);
    assertMatch(c.stdout, /pci-config-region/);
    const out = `${dir}/../s.vfmig`;
    const events = `${dir}/../events.jsonl`;
    const s = await run("save", "--json", "--events", events, "--device", `sim:${dir}`, out);
    assertEquals(s.code, 0, s.stderr);
    assertMatch(s.stderr, /warning: .*VFIO_DEVICE_FLAGS_PCI.*the stream has no PCI identity and no config section/);
    const result = JSON.parse(s.stdout);
    assert(
      result.warnings.some((w: string) => w.includes("no PCI identity and no config section")),
      `--json warnings: ${JSON.stringify(result.warnings)}`,
    );
    const notes = (await Deno.readTextFile(events)).trim().split("\n").map((l) => JSON.parse(l))
      .filter((e) => e.type === "note" && e.level === "warning");
    assert(notes.some((e) => String(e.message).includes("no PCI identity")), "an event note");
    const i = await run("info", "--device", `sim:${dir}`);
    assertEquals(i.code, 0, i.stderr);
    assertMatch(i.stdout, /unknown: the device reports VFIO_DEVICE_FLAGS_PCI but VFIO_DEVICE_GET_REGION_INFO/);
    const j = JSON.parse((await run("info", "--json", "--device", `sim:${dir}`)).stdout);
    assertMatch(j.pciIdsUnknown, /fails with EINVAL/);
    // A load into a tidy xe says what the stream lacks, not "?:?".
    await withStore({ model: "xe", size: 1 << 20 }, async (tidy) => {
      const l = await run("load", "--device", `sim:${tidy}`, out);
      assertEquals(l.code, 4, l.stderr);
      assertStringIncludes(l.stderr, "the stream carries no PCI ids: its source's config region could not be read");
    });
  });
});

Deno.test("check on a v1 device: runs what applies to v1 (region, round trip, config, final state), says which checks are v2-only; exit 0", async () => {
  for (const model of ["bulk", "mtty-2"] as const) {
    const r = await check({ model, size: 64 * 1024, protocol: "v1", dataSize: 4096 });
    assertEquals(r.protocol, "v1");
    assertEquals(findings(r), [], JSON.stringify(r.checks));
    const st = statusOf(r);
    for (const id of ["v1-region", "round-trip", "pci-config-region", "config-after-reset", "final-state"]) {
      assertEquals(st[id], "PASS", `${model} ${id}: ${detailOf(r, id)}`);
    }
    for (const id of ["migration-flags", "arc-states", "precopy-info-states", "reopen-session"]) {
      assertEquals(st[id], "SKIP", id);
      assertMatch(detailOf(r, id), /^v2-only: /);
    }
    assertMatch(detailOf(r, "round-trip"), /^v1: save \(stopped\), load, save gave the same \d+ bytes/);
  }
  // A v1 device that resets itself in stop-and-copy: the round trip FAILs, naming the step.
  const bad = await check({
    model: "bulk",
    size: 64 * 1024,
    protocol: "v1",
    dataSize: 4096,
    quirks: ["reset-mid-session"],
    quirkOptions: { resetAt: { phase: "stop-copy", after: 8192, to: "running" } },
  });
  assertEquals(statusOf(bad)["round-trip"], "FAIL");
  assertStringIncludes(detailOf(bad, "round-trip"), "a step failed");
  // The CLI: exit 0, the header names protocol v1.
  await withStore({ model: "mtty-2", protocol: "v1" }, async (dir) => {
    const o = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", CLI, "check", "--device", `sim:${dir}`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(o.stdout);
    assertEquals(o.code, 0, out + new TextDecoder().decode(o.stderr));
    assertStringIncludes(out, "migration protocol v1 (the deprecated region protocol): the v2-only checks SKIP");
  });
});

Deno.test("check on uninit-vf (a freshly opened PCI function): round-trip FAILs naming the cause; the arc checks are not run", async () => {
  const r = await check({ model: "bulk", family: "pci", size: 64 * 1024, quirks: ["uninit-vf"] });
  assertEquals(statusOf(r)["round-trip"], "FAIL");
  const d = detailOf(r, "round-trip");
  assertStringIncludes(d, "the RESUMING data_fd refused the device's own image (write: EINVAL)");
  assertStringIncludes(d, "this open reset the PCI function");
  assertStringIncludes(d, "never-initialised function");
  assertStringIncludes(d, "live migration without VF device driver");
  for (const id of ["arc-states", "arc-data-fd", "unsupported-targets"]) assertEquals(statusOf(r)[id], "SKIP", id);
  // The same model without the quirk: the round trip passes.
  const good = await check({ model: "bulk", family: "pci", size: 64 * 1024 });
  assertEquals(statusOf(good)["round-trip"], "PASS");
});

Deno.test("late-writeback: a save misses the last writes (sim compare shows it); check sees only two saves of the stopped device that differ (round-trip WARN)", async () => {
  const r = await check({ model: "bulk", size: 256 * 1024, rate: 4 << 20, quirks: ["late-writeback"] });
  assertEquals(statusOf(r)["round-trip"], "WARN", detailOf(r, "round-trip"));
  assertStringIncludes(detailOf(r, "round-trip"), "two saves of the stopped device differ");
  assertStringIncludes(detailOf(r, "round-trip"), "hisi_acc cache write-back");
  const tidy = await check({ model: "bulk", size: 256 * 1024, rate: 4 << 20 });
  assertEquals(statusOf(tidy)["round-trip"], "PASS", "a tidy dirtying device saves the same twice when stopped");

  const run = async (...args: string[]) => {
    const o = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", CLI, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: o.code, out: new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr) };
  };
  for (const quirk of [true, false]) {
    await withStore({
      model: "bulk",
      size: 256 * 1024,
      rate: 4 << 20,
      ...(quirk ? { quirks: ["late-writeback"] } : {}),
    }, async (src) => {
      await withStore({ model: "bulk", size: 256 * 1024, seed: 9 }, async (dst) => {
        const file = `${dst}/../s.vfmig`;
        const s = await run("save", "--device", `sim:${src}`, file);
        assertEquals(s.code, 0, s.out);
        const l = await run("load", "--device", `sim:${dst}`, file);
        assertEquals(l.code, 0, l.out);
        const c = await run("sim", "compare", src, dst);
        if (quirk) {
          assertEquals(c.code, 1, `sim compare shows the loss: ${c.out}`);
          assertStringIncludes(c.out, "different");
        } else assertEquals(c.code, 0, `without the quirk the destination holds the source's state: ${c.out}`);
      });
    });
  }
});
