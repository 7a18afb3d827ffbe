// --json on failure (issue 21 item 6): save and load print one JSON object where the
// success summary would have gone (stdout; stderr when stdout carries the stream) on
// every failure, usage errors and interrupts included: status "failed", the error
// line, the exit code and kind, where a damaged stream is, and each device's state.

import { assert, assertEquals, assertStringIncludes } from "../helpers/assert.ts";
import { inspectStream } from "../../src/inspect/inspect.ts";
import { openSource } from "../../src/transport/transport.ts";
import { libc } from "../../ffi/libc.ts";
import { cli, MiB, ok, type Run, show, simCreate, sleep, stateOf, vfioMig, withTemp } from "../helpers/proc.ts";

/** The one JSON object in `text` (the whole of it, or before the error line on stderr). */
function failureObject(text: string, what: string): Record<string, unknown> {
  const start = text.indexOf("{\n");
  const end = text.lastIndexOf("\n}");
  assert(start >= 0 && end > start, `${what}: a JSON object in ${JSON.stringify(text.slice(0, 500))}`);
  return JSON.parse(text.slice(start, end + 2));
}

function expectFailure(r: Run, code: number, kind: string, what: string, where: "stdout" | "stderr" = "stdout") {
  assertEquals(r.code, code, `${what}\n${show(r)}`);
  const o = failureObject(where === "stdout" ? r.stdout : r.stderr, what);
  assertEquals([o.status, o.exitCode, o.kind], ["failed", code, kind], what);
  // The error is the one line on stderr.
  const line = r.stderr.trim().split("\n").at(-1)!;
  assertEquals(`vfio-mig: ${o.error}`, line, `${what}: the object's error is the stderr line`);
  if (where === "stdout") assert(!r.stderr.includes("{"), `${what}: nothing but the line on stderr`);
  return o;
}

Deno.test("--json on failure: usage, device, stream and I/O errors each print one object with the devices' states", async () => {
  await withTemp(async (t) => {
    const [a, b] = [`${t}/a`, `${t}/b`];
    await simCreate(a, "--model", "bulk", "--size", String(2 * MiB + 3), "--seed", "1");
    await simCreate(b, "--model", "bulk", "--size", String(2 * MiB + 3), "--seed", "2");
    const file = `${t}/s.vfmig`;
    await ok(["save", "--resume", "--device", `sim:${a}`, file]);

    // Usage errors, before anything is opened.
    let o = expectFailure(await cli(["save", "--json"]), 2, "usage", "save without an output");
    assertEquals(o.devices, []);
    o = expectFailure(await cli(["load", "--json", "--bogus", file]), 2, "usage", "an unknown option");
    assertEquals(o.command, "load");
    o = expectFailure(await cli(["load", "--json", "--device", `sim:${b}`, `${t}/none.vfmig`]), 2, "usage", "no file");
    assertEquals(o.devices, [{ index: 0, device: `sim:${b}`, state: null, opened: false }]);

    // A device that cannot be opened.
    o = expectFailure(await cli(["load", "--json", "--device", `sim:${t}/nope`, file]), 3, "device", "no device");
    assertEquals(o.devices, [{ index: 0, device: `sim:${t}/nope`, state: null, opened: false }]);

    // A damaged stream: where (as inspect), and the destination left as it was.
    const bad = (await Deno.readFile(file)).slice();
    bad[MiB + 100] ^= 4;
    await Deno.writeFile(`${t}/bad.vfmig`, bad);
    const rep = inspectStream(openSource(libc(), `${t}/bad.vfmig`));
    o = expectFailure(await cli(["load", "--json", "--device", `sim:${b}`, `${t}/bad.vfmig`]), 4, "stream", "damage");
    assertEquals(o.stream, { offset: rep.firstProblem!.offset, record: rep.firstProblemRecord });
    assertEquals(o.devices, [{ index: 0, device: `sim:${b}`, state: "RUNNING", opened: true }]);
    // The same found while loading (--no-verify-first): the device was reset, RUNNING.
    o = expectFailure(
      await cli(["load", "--json", "--no-verify-first", "--device", `sim:${b}`, `${t}/bad.vfmig`]),
      4,
      "stream",
      "damage while loading",
    );
    assertStringIncludes(o.error as string, "was reset");
    assertEquals(o.devices, [{ index: 0, device: `sim:${b}`, state: "RUNNING", opened: true }]);

    // save to standard output: the object goes to stderr; the device is left as found.
    const r = await cli(["save", "--json", "--device", `sim:${a}`, "-"], {
      env: { VFIO_MIG_SIM_FAULTS: "read:data_fd@2=EIO" },
    });
    o = expectFailure(r, 1, "failure", "save - with an injected EIO", "stderr");
    assertEquals(o.devices, [{ index: 0, device: `sim:${a}`, state: "RUNNING", opened: true }]);
    assertEquals(await stateOf(a), "RUNNING");
    // Without --json: no object anywhere.
    const plain = await cli(["load", "--device", `sim:${b}`, `${t}/bad.vfmig`]);
    assertEquals(plain.code, 4);
    assert(!plain.stdout.includes("{") && !plain.stderr.includes("{"), show(plain));
  });
});

Deno.test("--json on failure: an interrupt (SIGINT while RESUMING) prints the object with the signal and the reset device", async () => {
  await withTemp(async (t) => {
    const [a, b] = [`${t}/a`, `${t}/b`];
    await simCreate(a, "--model", "bulk", "--size", String(MiB), "--seed", "1");
    await simCreate(b, "--model", "bulk", "--size", String(MiB), "--seed", "2");
    const file = `${t}/s.vfmig`;
    await ok(["save", "--resume", "--device", `sim:${a}`, file]);
    const p = vfioMig(["load", "--json", "--device", `sim:${b}`, file], { env: { VFIO_MIG_PAUSE_AT: "resume" } });
    for (let i = 0; i < 600 && !p.stderr.includes("paused at resume"); i++) await sleep(50);
    assertStringIncludes(p.stderr, "paused at resume");
    p.child.kill("SIGINT");
    const r = await p.done();
    const o = expectFailure(r, 130, "interrupted", "SIGINT while RESUMING");
    assertEquals(o.signal, "SIGINT");
    assertEquals(o.devices, [{ index: 0, device: `sim:${b}`, state: "RUNNING", opened: true }]);
    assertStringIncludes(o.error as string, "was reset");
  });
});
