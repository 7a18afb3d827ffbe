// `vfio-mig check --torture` on simulated devices: a clean device gives no finding; each
// planted defect (src/sim/quirks: trusts-resume-field, hangs-on-arc, leaks-session) is
// found, with the finding the supervisor or the worker should give, and its replay file
// reproduces it on a fresh device of the same kind, and not on a clean one.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { SimStore } from "../../src/sim/store.ts";
import type { ModelName } from "../../src/sim/models.ts";
import { isBugReport, parseRecord } from "../../src/check/torture/kmsg.ts";
import { knownFields, structuredCases } from "../../src/check/torture/mutate.ts";
import { otherTask, type TortureReport } from "../../src/check/torture/supervisor.ts";
import { cliText as vfioMig } from "../helpers/proc.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;
const ACK = "--i-accept-state-loss";

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-torture-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function create(path: string, opts: { model: ModelName; size?: number; quirks?: string[]; seed?: number }): string {
  new SimStore(libc(), path).create({ size: 64 * 1024, seed: 3, ...opts });
  return `sim:${path}`;
}

async function torture(args: string[]): Promise<{ code: number; r: TortureReport; err: string }> {
  // A call longer than 5 s is a hang: the planted ones never return, a slow machine still fits.
  const res = await vfioMig(["check", "--torture", ACK, "--json", "--step-timeout", "5", ...args]);
  let r: TortureReport;
  try {
    r = JSON.parse(res.out);
  } catch {
    throw new Error(`no JSON report (exit ${res.code}): ${res.out}\n${res.err}`);
  }
  return { code: res.code, r, err: res.err };
}

Deno.test("torture: a clean mtty-2 gives no finding; both halves run, the device ends with its own state", async () => {
  await withDir(async (dir) => {
    const dev = create(`${dir}/d`, { model: "mtty-2" });
    const out = `${dir}/out`;
    const { code, r, err } = await torture(["--device", dev, "--seed", "7", "--steps", "60", "--out", out]);
    assertEquals(r.findings, [], JSON.stringify(r.findings));
    assertEquals(code, 0);
    assertStringIncludes(err, "DESTRUCTIVE");
    assertEquals(r.fuzz!.cases, 60);
    assert(r.fuzz!.refusedWrite > 0, "mtty refuses a bad header at the write (EFAULT)");
    assert(r.fuzz!.refusedStop > 0, "mtty refuses short data at RESUMING -> STOP (EINVAL)");
    assert(r.fuzz!.accepted > 0, "mtty takes any port contents");
    assertEquals(r.fuzz!.format, "mtty");
    assertEquals(r.fuzz!.deterministic, true);
    assertEquals(r.stress!.steps, 60);
    assert(r.stress!.arcs.length >= 10, `arcs taken: ${r.stress!.arcs}`);
    assertEquals(r.kernelLog, `${dir}/d/kmsg`);
    let gone = false;
    try {
      Deno.statSync(out);
    } catch {
      gone = true;
    }
    assert(gone, "no finding: no replay folder left");
    const show = await vfioMig(["sim", "show", `${dir}/d`, "--json"]);
    assertEquals(JSON.parse(show.out).state, "RUNNING");
  });
});

Deno.test("torture: trusts-resume-field is found (KASAN line + hang two calls after the load) and replayed", async () => {
  await withDir(async (dir) => {
    const dev = create(`${dir}/d`, { model: "mtty-2", quirks: ["trusts-resume-field"] });
    const out = `${dir}/out`;
    const { code, r } = await torture([
      "--device",
      dev,
      "--seed",
      "1",
      "--steps",
      "80",
      "--only",
      "fuzz",
      "--out",
      out,
    ]);
    assertEquals(code, 1);
    assertEquals(r.findings.length, 1, JSON.stringify(r.findings));
    const f = r.findings[0];
    assertEquals(f.kinds.sort(), ["hang", "kernel-log"]);
    assertMatch(f.case!, /nr_ports = /);
    assertEquals(f.phase, "fuzz");
    assert(f.kmsg.some((l) => l.includes("BUG: KASAN: slab-out-of-bounds")), f.kmsg.join("\n"));
    assertEquals(r.stress, null);
    assertEquals(f.replayCommand, `vfio-mig check --torture --replay ${f.replayFile} --device ${dev} ${ACK}`);
    // The text report: findings first, with the replay command.
    const text = await vfioMig(["check", "--torture", ACK, "--device", `sim:${dir}/d2`, "--replay", f.replayFile]);
    assertEquals(text.code, 3, "no such device: exit 3");
    // Replayed on a fresh device of the same kind: reproduced.
    const fresh = create(`${dir}/fresh`, { model: "mtty-2", quirks: ["trusts-resume-field"] });
    const rep = await torture(["--device", fresh, "--replay", f.replayFile, "--out", `${dir}/rep`]);
    assertEquals(rep.r.replay!.reproduced, true, JSON.stringify(rep.r));
    assertEquals(rep.code, 1);
    assert(
      rep.r.findings.some((x) => x.kinds.includes("kernel-log") && x.step === f.step),
      JSON.stringify(rep.r.findings),
    );
    // On a clean device the same calls find nothing.
    const clean = create(`${dir}/clean`, { model: "mtty-2" });
    const no = await torture(["--device", clean, "--replay", f.replayFile, "--out", `${dir}/rep2`]);
    assertEquals(no.r.replay!.reproduced, false);
    assertEquals(no.code, 0);
  });
});

Deno.test("torture: hangs-on-arc is a hang on PRE_COPY_P2P -> PRE_COPY, found by the stress and replayed", async () => {
  await withDir(async (dir) => {
    const dev = create(`${dir}/d`, { model: "mtty-2", quirks: ["hangs-on-arc"] });
    const { code, r } = await torture([
      "--device",
      dev,
      "--seed",
      "1",
      "--steps",
      "1000",
      "--only",
      "stress",
      "--out",
      `${dir}/out`,
    ]);
    assertEquals(code, 1);
    assertEquals(r.findings.length, 1, JSON.stringify(r.findings));
    const f = r.findings[0];
    assertEquals(f.kinds, ["hang"]);
    assertEquals(f.what, "SET MIG_DEVICE_STATE PRE_COPY_P2P -> PRE_COPY");
    const fresh = create(`${dir}/fresh`, { model: "mtty-2", quirks: ["hangs-on-arc"] });
    const rep = await torture(["--device", fresh, "--replay", f.replayFile, "--out", `${dir}/rep`]);
    assertEquals(rep.r.replay!.reproduced, true);
    assertEquals(rep.r.findings.at(-1)!.step, f.step);
  });
});

Deno.test("torture: leaks-session makes the device impossible to bring back; replayed; not on a clean device", async () => {
  await withDir(async (dir) => {
    const dev = create(`${dir}/d`, { model: "bulk", quirks: ["leaks-session"] });
    const { code, r } = await torture([
      "--device",
      dev,
      "--seed",
      "1",
      "--steps",
      "400",
      "--only",
      "stress",
      "--out",
      `${dir}/out`,
    ]);
    assertEquals(code, 1);
    const f = r.findings.find((x) => x.kinds.includes("no-return"));
    assert(f, JSON.stringify(r.findings));
    assertMatch(f.detail.join("\n"), /no longer loads: STOP -> RESUMING failed with ENOMEM/);
    assert(r.notes.some((n) => n.includes("the run stopped")));
    const fresh = create(`${dir}/fresh`, { model: "bulk", quirks: ["leaks-session"] });
    const rep = await torture(["--device", fresh, "--replay", f.replayFile, "--out", `${dir}/rep`]);
    assertEquals(rep.r.replay!.reproduced, true, JSON.stringify(rep.r.replay));
    const clean = create(`${dir}/clean`, { model: "bulk" });
    const no = await torture(["--device", clean, "--replay", f.replayFile, "--out", `${dir}/rep2`]);
    assertEquals(no.r.replay!.reproduced, false);
  });
});

Deno.test("torture: usage: the acknowledgement is required; torture options need --torture", async () => {
  await withDir(async (dir) => {
    const dev = create(`${dir}/d`, { model: "mtty-1" });
    const a = await vfioMig(["check", "--torture", "--device", dev]);
    assertEquals(a.code, 2);
    assertStringIncludes(a.err, "--i-accept-state-loss");
    assertEquals(a.err.trim().split("\n").length, 1);
    const b = await vfioMig(["check", "--seed", "3", "--device", dev]);
    assertEquals(b.code, 2);
    assertStringIncludes(b.err, "--seed goes with --torture");
    const c = await vfioMig(["check", "--torture", ACK, "--only", "both", "--device", dev]);
    assertEquals(c.code, 2);
    const d = await vfioMig(["check", "--torture", ACK, "--device", `sim:${dir}/nothing`]);
    assertEquals(d.code, 3);
    assertEquals(d.err.trim().split("\n").length, 2, d.err); // the warning, then the one error line
  });
});

Deno.test("torture: --events logs every call and its end; the same seed makes the same calls", async () => {
  await withDir(async (dir) => {
    const runs: string[][] = [];
    for (const k of [1, 2]) {
      const dev = create(`${dir}/d${k}`, { model: "mtty-1" });
      const ev = `${dir}/ev${k}.jsonl`;
      const { code } = await torture([
        "--device",
        dev,
        "--seed",
        "11",
        "--steps",
        "20",
        "--events",
        ev,
        "--out",
        `${dir}/o`,
      ]);
      assertEquals(code, 0);
      const lines = Deno.readTextFileSync(ev).trim().split("\n").map((l) => JSON.parse(l));
      const starts = lines.filter((l) => l.t === "start");
      assertEquals(starts.length, lines.filter((l) => l.t === "end").length);
      runs.push(starts.map((l) => l.what));
    }
    assertEquals(runs[0], runs[1]);
  });
});

Deno.test("kmsg: records are parsed, and the sanitizers' lines are told from ordinary ones", () => {
  assertEquals(parseRecord("3,1234,5678,-;BUG: KASAN: use-after-free in foo"), {
    level: 3,
    text: "BUG: KASAN: use-after-free in foo",
  });
  for (
    const l of [
      "WARNING: CPU: 0 PID: 1 at drivers/vfio/vfio_main.c:1 vfio_foo+0x1/0x2",
      "UBSAN: array-index-out-of-bounds in samples/vfio-mdev/mtty.c:123:4",
      "INFO: task vfio-mig:99 blocked for more than 10 seconds.",
      "watchdog: BUG: soft lockup - CPU#0 stuck for 22s!",
      "WARNING: possible circular locking dependency detected",
      "BUG: sleeping function called from invalid context at kernel/locking/mutex.c:1",
    ]
  ) assert(isBugReport(l), l);
  for (const l of ["mtty: loading mtty", "vfio-pci 0000:00:04.0: enabling device"]) assert(!isBugReport(l), l);
});

Deno.test("torture: Ctrl-C during a hung call ends the run at once with exit 130, the worker killed", async () => {
  await withDir(async (dir) => {
    const dev = create(`${dir}/d`, { model: "mtty-2", quirks: ["hangs-on-arc"] });
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-ffi",
        "--allow-read",
        "--allow-write",
        "--allow-env",
        CLI,
        "check",
        "--torture",
        ACK,
        "--device",
        dev,
        "--seed",
        "1",
        "--steps",
        "1000",
        "--only",
        "stress",
        "--step-timeout",
        "600",
        "--out",
        `${dir}/out`,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Wait until the worker is stuck in the hanging arc (its call log stops growing).
    await new Promise((r) => setTimeout(r, 10_000));
    const t0 = performance.now();
    child.kill("SIGINT");
    const out = await child.output();
    assertEquals(out.code, 130);
    assert(performance.now() - t0 < 5000, "ended soon after the signal");
    assertStringIncludes(new TextDecoder().decode(out.stdout), "interrupted by SIGINT");
  });
});

Deno.test("torture: a v1 device (region protocol) is fuzzed through its migration region; a clean one gives no finding", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/d`;
    new SimStore(libc(), path).create({ model: "mtty-2", size: 64 * 1024, seed: 3, protocol: "v1" });
    const { code, r } = await torture(["--device", `sim:${path}`, "--seed", "2", "--steps", "60", "--out", `${dir}/o`]);
    assertEquals(r.findings, [], JSON.stringify(r.findings));
    assertEquals(code, 0);
    assertEquals(r.stress, null, "the stress drives uAPI v2 only");
    assertEquals(r.fuzz!.cases, 60);
    assert(r.fuzz!.refusedWrite > 0 && r.fuzz!.refusedStop > 0 && r.fuzz!.accepted > 0, JSON.stringify(r.fuzz));
    assert(r.notes.some((n) => n.startsWith("v1 device (migration region 9")), r.notes.join("\n"));
  });
});

Deno.test("torture: the kernel lab's ivshmem_vfio_pci stream is a known format; its chunk record's fields get boundary values", () => {
  // The driver's stream (tests/kernel/ivshmem_mig/ivshmem_vfio_pci.c): header {"IVMG", 1, mem_bytes, chunk_bytes},
  // then a chunk record's head {1, offset, length, 0}.
  const size = 16 + 16 * (16 + 4096) + 16 + 4 + 16;
  const head = new Uint8Array(64);
  const v = new DataView(head.buffer);
  [0x474d5649, 1, 65536, 4096, 1, 0, 4096, 0].forEach((x, i) => v.setUint32(i * 4, x, true));
  const k = knownFields(head, size);
  assertEquals(k.format, "ivshmem_vfio_pci (kernel lab)");
  assertEquals(k.header, 16);
  const names = structuredCases(head, size).map((m) => m.name);
  // Past the end of the memory area (the planted defect trust_resume_len lets these through).
  for (const want of ["record[0].offset = 0x10000 (was 0x0)", "record[0].length = 0x7fffffff (was 0x1000)"]) {
    assert(names.includes(want), `${want} not among ${names.length} cases`);
  }
  // Version 2 is not this format.
  v.setUint32(4, 2, true);
  assertEquals(knownFields(head, size).format, "unknown");
});

Deno.test("kmsg: a hung-task report about a task that is not the worker's is told apart (an earlier run's wedged task)", () => {
  const sys = libc();
  const line = (tid: number) => `INFO: task deno:${tid} blocked for more than 30 seconds.`;
  assertEquals(otherTask(sys, line(Deno.pid), Deno.pid), null); // the worker's own (main) thread
  assertEquals(otherTask(sys, line(2147483646), Deno.pid), 2147483646);
  assertEquals(otherTask(sys, "BUG: KASAN: use-after-free in foo", Deno.pid), null);
  assertEquals(otherTask(sys, line(2147483646), undefined), null); // no worker yet: not judged
});
