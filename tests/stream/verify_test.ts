// A damaged file never costs a destination its state: `load FILE` checks a seekable
// vfio-mig file whole (every chunk's CRC, the record order, the trailer) before the device
// is touched; `--no-verify-first` and a pipe load as the records come (damage found
// then resets the device). `vfio-mig verify FILE` is that check alone: exit 0 or 4.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { inspectStream } from "../../src/inspect/inspect.ts";
import { openSource } from "../../src/transport/transport.ts";
import { libc } from "../../ffi/libc.ts";
import {
  assertUntouched,
  CLI,
  cli,
  DENO,
  logLines,
  MiB,
  ok,
  Proc,
  type Run,
  sha,
  show,
  simCreate,
  sleep,
  stateOf,
  stateSets,
  withTemp,
} from "../helpers/proc.ts";

/** vfio-mig with standard input redirected from a file (seekable), through sh. */
function withStdinFrom(path: string, args: string[], env: Record<string, string> = {}): Proc {
  return new Proc("sh", ["-c", `exec "$0" run --allow-ffi --allow-net "$@" < ${path}`, DENO, CLI, ...args], { env });
}

/** vfio-mig reading `bytes` from a pipe. */
function withStdinPipe(bytes: Uint8Array, args: string[], env: Record<string, string> = {}): Proc {
  const p = new Proc(DENO, ["run", "--allow-ffi", "--allow-net", CLI, ...args], { env, stdin: true });
  const w = p.child.stdin.getWriter();
  w.write(bytes).then(() => w.close()).catch(() => {/* the reader went away */});
  return p;
}

function oneLine(r: Run, code: number, what: string): string {
  assertEquals(r.code, code, `${what}: exit ${code}\n${show(r)}`);
  // (VFIO_MIG_PAUSE_AT's own line aside)
  const lines = r.stderr.trim().split("\n").filter((l) => !l.startsWith("vfio-mig: paused at "));
  assertEquals(lines.length, 1, `${what}: one line on stderr\n${show(r)}`);
  return lines[0];
}

/** A 4 MiB bulk source saved to good.vfmig, and a destination with another state. */
async function setup(t: string): Promise<{ b: string; file: string; good: Uint8Array; sourceSha: string }> {
  // The source under a short path: the header (which names it) ends before byte 500.
  const short = await Deno.makeTempDir({ dir: "/tmp", prefix: "vm" });
  const [a, b, file] = [`${short}/a`, `${t}/b`, `${t}/good.vfmig`];
  await simCreate(a, "--model", "bulk", "--size", String(4 * MiB + 11), "--seed", "41");
  await simCreate(b, "--model", "bulk", "--size", String(4 * MiB + 11), "--seed", "42");
  try {
    await ok(["save", "--resume", "--device", `sim:${a}`, file]);
    return { b, file, good: await Deno.readFile(file), sourceSha: await sha(a) };
  } finally {
    await Deno.remove(short, { recursive: true });
  }
}

Deno.test("load FILE: a file cut at 500 bytes or with a byte flipped at 3 MiB is refused before the device is touched", async () => {
  await withTemp(async (t) => {
    const { b, good, sourceSha } = await setup(t);
    const rep = inspectStream(openSource(libc(), `${t}/good.vfmig`));
    // After the setup section a load that reads as it goes has entered RESUMING (so has
    // one of a 500-byte cut, where the header is shorter than the one here).
    const setupEnd = rep.records.find((r) => r.tag === "END_OF_STATE")!.offset + 8;
    const flipped = good.slice();
    flipped[3 * MiB] ^= 0x10;
    const before = await sha(b);
    const cases: [string, Uint8Array, string][] = [
      ["cut at 500 bytes", good.subarray(0, 500), "truncated"],
      ["cut after the setup section", good.subarray(0, setupEnd + 20), "truncated"],
      ["flipped byte at 3 MiB", flipped, "checksum mismatch"],
    ];
    for (const [what, bytes, where] of cases) {
      const path = `${t}/bad.vfmig`;
      await Deno.writeFile(path, bytes);
      const log = `${t}/${what.replaceAll(" ", "_")}.log`;
      const r = await cli(["load", "--device", `sim:${b}`, path], { env: { VFIO_MIG_SIM_LOG: log } });
      const line = oneLine(r, 4, what);
      assertStringIncludes(line, where, what);
      assertMatch(line, new RegExp(`load into sim:${b} refused: .*; sim:${b} was not touched$`), what);
      await assertUntouched(b, log, before, what);
      // The same file on standard input (redirected from the file: seekable) is checked first too.
      const stdinLog = `${t}/${what.replaceAll(" ", "_")}-stdin.log`;
      const p = withStdinFrom(path, ["load", "--device", `sim:${b}`, "-"], { VFIO_MIG_SIM_LOG: stdinLog });
      oneLine(await p.done(), 4, `${what} (stdin from the file)`);
      await assertUntouched(b, stdinLog, before, `${what} (stdin from the file)`);
    }
    // The intact file still loads (checked first, then loaded through the same descriptor).
    await ok(["load", "--device", `sim:${b}`, `${t}/good.vfmig`]);
    assertEquals(await sha(b), sourceSha, "the destination holds the source's state");
  });
});

Deno.test("load --no-verify-first, and a pipe: damage is found as the records are loaded, and the device is reset", async () => {
  await withTemp(async (t) => {
    const { b, good } = await setup(t);
    const flipped = good.slice();
    flipped[3 * MiB] ^= 0x10;
    const path = `${t}/bad.vfmig`;
    await Deno.writeFile(path, flipped);
    const log = `${t}/no-verify.log`;
    const r = await cli(["load", "--no-verify-first", "--device", `sim:${b}`, path], {
      env: { VFIO_MIG_SIM_LOG: log },
    });
    assertStringIncludes(oneLine(r, 4, "--no-verify-first"), "was reset");
    const sets = stateSets(await logLines(log)).map((l) => l.to);
    assert(sets.includes("RESUMING"), `the load had started: ${sets}`);
    assert((await logLines(log)).some((l) => l.key === "ioctl:DEVICE_RESET"), "and was reset");
    assertEquals(await stateOf(b), "RUNNING");

    // A pipe cannot be read twice: the same, without the option.
    const plog = `${t}/pipe.log`;
    const p = withStdinPipe(flipped, ["load", "--device", `sim:${b}`, "-"], { VFIO_MIG_SIM_LOG: plog });
    assertStringIncludes(oneLine(await p.done(), 4, "pipe"), "was reset");
    assert(stateSets(await logLines(plog)).some((l) => l.to === "RESUMING"), "from a pipe the load had started");
  });
});

Deno.test("verify FILE: exit 0 for an intact stream, 4 with the damage's byte and record (as inspect), --json", async () => {
  await withTemp(async (t) => {
    const { file, good } = await setup(t);
    const r = await ok(["verify", file]);
    assertMatch(r.stdout, /: intact: 4(\.0+)? MiB of device data in 5 chunks, 1 device; .* checked in /);
    const j = JSON.parse((await ok(["verify", "--json", file])).stdout);
    assertEquals([j.ok, j.problem, j.format, j.chunks, j.devices, j.streamBytes], [
      true,
      null,
      "vfio-mig",
      5,
      1,
      good.length,
    ]);

    const flipped = good.slice();
    flipped[3 * MiB] ^= 0x10;
    const cases: [string, Uint8Array][] = [
      ["cut at 500 bytes", good.subarray(0, 500)],
      ["flipped byte at 3 MiB", flipped],
      ["no trailer", good.subarray(0, good.length - 32)],
      ["bytes after the trailer", new Uint8Array([...good, 0])],
    ];
    for (const [what, bytes] of cases) {
      const path = `${t}/bad.vfmig`;
      await Deno.writeFile(path, bytes);
      const rep = inspectStream(openSource(libc(), path));
      const v = await cli(["verify", path]);
      assertEquals(v.code, 4, `${what}\n${show(v)}`);
      assertStringIncludes(
        v.stdout,
        `DAMAGED at byte ${rep.firstProblem!.offset} (record ${rep.firstProblemRecord})`,
        what,
      );
      const vj = await cli(["verify", "--json", path]);
      assertEquals(vj.code, 4, what);
      const p = JSON.parse(vj.stdout).problem;
      assertEquals([p.offset, p.record], [rep.firstProblem!.offset, rep.firstProblemRecord], what);
      // The same from a pipe.
      const pv = await withStdinPipe(bytes, ["verify", "-"]).done();
      assertEquals(pv.code, 4, `${what} (pipe)\n${show(pv)}`);
    }
    const usage = await cli(["verify"]);
    assertEquals(usage.code, 2);
  });
});

Deno.test("load FILE: a signal during the whole-file check ends it (exit 130) with the destination untouched", async () => {
  await withTemp(async (t) => {
    const { b, file } = await setup(t);
    const before = await sha(b);
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      const log = `${t}/${sig}.log`;
      const p = new Proc(DENO, ["run", "--allow-ffi", "--allow-net", CLI, "load", "--device", `sim:${b}`, file], {
        env: { VFIO_MIG_PAUSE_AT: "verify", VFIO_MIG_SIM_LOG: log },
      });
      for (let i = 0; i < 600 && !p.stderr.includes("paused at verify"); i++) await sleep(50);
      assertStringIncludes(p.stderr, "paused at verify");
      p.child.kill(sig);
      const line = oneLine(await p.done(), 130, sig);
      assertStringIncludes(line, `interrupted by ${sig}`);
      assertStringIncludes(line, "was not touched");
      await assertUntouched(b, log, before, sig);
    }
  });
});
