// The core checks of the real-kernel suite (the first group): info, save/load through a
// file and a pipe, PRE_COPY, identity refusal, corruption, truncation, SIGINT in
// STOP_COPY, state across reopen, the config section, list, check, and the conformance
// of the simulator's mtty with the real one, arc by arc.

import { libc } from "../../../ffi/libc.ts";
import { openDevice } from "../../../src/device/open.ts";
import {
  assert,
  CDEV_MODE,
  check,
  CLI,
  cli,
  createMtty,
  eq,
  extraReport,
  ok,
  program,
  readBack,
  setState,
  sh,
  spec,
  stateOf,
  tmp,
} from "../lib/guest.ts";

// ---------------------------------------------------------------------------

const A = createMtty("mtty-2");
const B = createMtty("mtty-2");
const C = createMtty("mtty-1");
console.log(`devices: A=${A} (mtty-2) B=${B} (mtty-2) C=${C} (mtty-1)${CDEV_MODE ? " via iommufd cdev" : ""}`);

await check("info reports migration flags 0x7 and MIG_DATA_SIZE 96 / 60", async () => {
  const a = JSON.parse((await ok(["info", "--json", "--device", spec(A)])).stdout);
  const c = JSON.parse((await ok(["info", "--json", "--device", spec(C)])).stdout);
  eq([a.migrationFlags, a.dataSize, a.mdevType, a.vendor, a.deviceId], [7, 96, "mtty-2", 0x4348, 0x3253], "mtty-2");
  eq([c.migrationFlags, c.dataSize, c.mdevType], [7, 60, "mtty-1"], "mtty-1");
  eq(a.access, CDEV_MODE ? "cdev" : "group", "access path");
}, { cdev: true });

await check("state persists across closing and reopening the device", async () => {
  eq((await ok(["state", "--device", spec(A), "STOP"])).stdout.trim(), "STOP", "after SET STOP");
  eq(await stateOf(A), "STOP", "after reopen");
  eq((await ok(["state", "--device", spec(A), "RUNNING"])).stdout.trim(), "RUNNING", "after SET RUNNING");
}, { cdev: true });

await check("save to a file, load into another device: registers and FIFO move", async () => {
  program(A, 0, 0x5a, [0x68, 0x69]);
  program(A, 1, 0xa5, [0x21]);
  const file = `${tmp}/a.bin`;
  const s = JSON.parse((await ok(["save", "--json", "--device", spec(A), file])).stdout);
  eq(s.bytes, 96, "bytes saved");
  eq(s.finalState, "STOP", "source after save");
  await ok(["load", "--device", spec(B), file]);
  eq(await stateOf(B), "RUNNING", "destination state");
  eq(readBack(B, 0), { scratch: 0x5a, fifo: [0x68, 0x69] }, "port 0 of B");
  eq(readBack(B, 1), { scratch: 0xa5, fifo: [0x21] }, "port 1 of B");
  setState(A, "RUNNING");
}, { cdev: true });

await check("save - | load - through a pipe", async () => {
  program(A, 0, 0x33, [0x01, 0x02, 0x03]);
  const r = await sh(
    `deno run --allow-ffi ${CLI} save --resume --device ${spec(A)} - | deno run --allow-ffi ${CLI} load --device ${
      spec(B)
    } -`,
  );
  assert(r.code === 0, `pipeline exited ${r.code}: ${r.stderr.trim()}`);
  eq(await stateOf(A), "RUNNING", "source after save --resume");
  eq(readBack(B, 0), { scratch: 0x33, fifo: [1, 2, 3] }, "B after the pipe");
}, { cdev: true });

await check("PRE_COPY path: 24 initial bytes, then STOP_COPY on the same fd", async () => {
  program(A, 0, 0x77, [0x42]);
  const file = `${tmp}/live.bin`;
  const s = JSON.parse((await ok(["save", "--live", "--json", "--device", spec(A), file])).stdout);
  eq([s.precopyBytes, s.stopCopyBytes], [24, 72], "pre-copy / stop-copy bytes");
  eq(s.statesVisited, ["PRE_COPY", "STOP_COPY", "STOP"], "states requested");
  await ok(["load", "--device", spec(B), file]);
  eq(readBack(B, 0), { scratch: 0x77, fifo: [0x42] }, "B after a live save");
  setState(A, "RUNNING");
}, { cdev: true });

await check("an mtty-2 stream is refused by the mtty-1 device, which is not touched", async () => {
  program(C, 0, 0x11, []);
  const file = `${tmp}/a2.bin`;
  await ok(["save", "--resume", "--device", spec(A), file]);
  const r = await cli(["load", "--device", spec(C), file]);
  eq(r.code, 4, "exit code");
  assert(/mtty-2.*mtty-1/.test(r.stderr) && /not touched/.test(r.stderr), `message: ${r.stderr.trim()}`);
  eq(r.stderr.trim().split("\n").length, 1, "one line on stderr");
  eq(await stateOf(C), "RUNNING", "C state");
  eq(readBack(C, 0).scratch, 0x11, "C scratch register");
});

await check("a flipped byte is refused, the destination is reset and then accepts a good stream", async () => {
  program(A, 0, 0x44, [9]);
  const file = `${tmp}/good.bin`;
  await ok(["save", "--resume", "--device", spec(A), file]);
  const bytes = Deno.readFileSync(file);
  const bad = bytes.slice();
  bad[bad.length - 60] ^= 0x01; // inside the device data, before the trailer
  Deno.writeFileSync(`${tmp}/bad.bin`, bad);
  const r = await cli(["load", "--device", spec(B), `${tmp}/bad.bin`]);
  eq(r.code, 4, "exit code");
  assert(/checksum|corrupt/i.test(r.stderr), `message: ${r.stderr.trim()}`);
  eq(await stateOf(B), "RUNNING", "B after the failed load");
  await ok(["load", "--device", spec(B), file]);
  eq(readBack(B, 0), { scratch: 0x44, fifo: [9] }, "B after the good stream");
});

await check("a truncated stream is refused and the destination reset", async () => {
  const file = `${tmp}/good.bin`;
  const bytes = Deno.readFileSync(file);
  Deno.writeFileSync(`${tmp}/short.bin`, bytes.subarray(0, bytes.length - 40));
  const r = await cli(["load", "--device", spec(B), `${tmp}/short.bin`]);
  eq(r.code, 4, "exit code");
  assert(/truncated/.test(r.stderr), `message: ${r.stderr.trim()}`);
  eq(await stateOf(B), "RUNNING", "B after the failed load");
});

await check("a save interrupted by SIGINT in STOP_COPY leaves the source RUNNING and no file", async () => {
  const file = `${tmp}/interrupted.bin`;
  const child = new Deno.Command("deno", {
    args: ["run", "--allow-ffi", CLI, "save", "--device", spec(A), file],
    env: { VFIO_MIG_PAUSE_AT: "stop-copy" },
    stdin: "null",
    stderr: "piped",
    stdout: "null",
  }).spawn();
  const reader = child.stderr.getReader();
  let err = "";
  while (!err.includes("paused at stop-copy")) {
    const { value, done } = await reader.read();
    if (done) break;
    err += new TextDecoder().decode(value);
  }
  assert(err.includes("paused at stop-copy"), `save did not reach stop-copy: ${err}`);
  child.kill("SIGINT");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    err += new TextDecoder().decode(value);
  }
  const status = await child.status;
  eq(status.code, 130, "exit code");
  assert(/interrupted by SIGINT.*RUNNING/.test(err), `message: ${err.trim()}`);
  eq(await stateOf(A), "RUNNING", "A after the interrupted save");
  let exists = true;
  try {
    Deno.statSync(file);
  } catch {
    exists = false;
  }
  assert(!exists, "an output file was left behind");
});

await check("the config section carries mtty's 255-byte config space and is restored", async () => {
  const file = `${tmp}/cfg.bin`;
  const s = JSON.parse((await ok(["save", "--json", "--resume", "--device", spec(A), file])).stdout);
  eq(s.configBytes, 255, "config bytes saved");
  const r = JSON.parse((await ok(["load", "--json", "--device", spec(B), file])).stdout);
  assert(r.config !== null && typeof r.config.command === "number", `config restore: ${JSON.stringify(r.config)}`);
});

await check("list shows the three mtty devices with their groups and migration flags", async () => {
  const l = JSON.parse((await ok(["list", "--json"])).stdout);
  for (const [uuid, type] of [[A, "mtty-2"], [B, "mtty-2"], [C, "mtty-1"]]) {
    const d = l.devices.find((x: { device: string }) => x.device.includes(uuid));
    assert(d, `${uuid} missing from list`);
    eq([d.driver, d.mdevType, d.migration?.flags, d.migration?.state], ["mtty", type, 7, "RUNNING"], uuid);
    assert(d.iommuGroup !== null, `${uuid} has no IOMMU group`);
    if (CDEV_MODE) assert(d.cdev, `${uuid} has no cdev node`);
  }
});

await check("check: the real mtty driver passes the conformance report", async () => {
  const r = await cli(["check", "--json", "--device", spec(B)]);
  const rep = JSON.parse(r.stdout);
  const failedRows = (rep.checks ?? rep.results ?? []).filter((c: { status: string }) => c.status === "FAIL");
  eq(r.code, 0, `exit code (failed rows: ${JSON.stringify(failedRows)})`);
  eq(await stateOf(B), "RUNNING", "B after check");
});

// Conformance of the simulator: every (from, to) arc on the real mtty and on the
// simulated mtty model must give the same result.
await check("simulator conformance: every arc agrees with the real mtty", async () => {
  const mod = await import("../../../src/check/arcs.ts");
  const { SimKernel } = await import("../../../src/sim/kernel.ts");
  const { SimStore } = await import("../../../src/sim/store.ts");
  const real = openDevice(libc(), spec(A));
  let realTable;
  try {
    realTable = await mod.exploreArcs(real);
  } finally {
    real.close();
  }
  const sim = new SimKernel(libc());
  new SimStore(sim, `${tmp}/sim-mtty2`).create({ model: "mtty-2" });
  const simDev = openDevice(sim, `sim:${tmp}/sim-mtty2`);
  let simTable;
  try {
    simTable = await mod.exploreArcs(simDev);
  } finally {
    simDev.close();
  }
  const key = (r: { from: string; to: string }) => `${r.from}->${r.to}`;
  const simByKey = new Map(simTable.map((r: { from: string; to: string }) => [key(r), r]));
  const diffs: string[] = [];
  for (const r of realTable) {
    const s = simByKey.get(key(r));
    if (JSON.stringify(s) !== JSON.stringify(r)) {
      diffs.push(`${key(r)}: real ${JSON.stringify(r)} sim ${JSON.stringify(s)}`);
    }
  }
  extraReport.push(`conformance table: ${realTable.length} arcs compared, ${diffs.length} differences`);
  assert(realTable.length === simTable.length, `table sizes differ: real ${realTable.length}, sim ${simTable.length}`);
  assert(diffs.length === 0, `differences:\n  ${diffs.join("\n  ")}`);
  eq(await stateOf(A), "RUNNING", "A after the exploration");
});
