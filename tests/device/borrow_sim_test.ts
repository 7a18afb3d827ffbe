// Borrowed and inherited fds of simulated devices, with real processes: a holder
// (tests/kernel/guest/holder.ts) keeps a device open; a fresh open names it; a launcher
// (tests/kernel/guest/hand_down.ts) hands a device to a command, which keeps it after
// the launcher is killed. Taking over a sim fd (pid:, fd:) needs the simulator's
// SimKernel.simDeviceOf and adopt; until this build has them those tests check the
// one-line refusal instead.

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { O } from "../../ffi/sys.ts";
import { systemFor } from "../../src/device/open.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { BASE_ENV, CLI, DENO, killAll, ok, Proc, ROOT, simCreate, sleep, stateOf, withTemp } from "../helpers/proc.ts";

const HOLDER = `${ROOT}tests/kernel/guest/holder.ts`;
const HAND_DOWN = `${ROOT}tests/kernel/guest/hand_down.ts`;
const CAN_ADOPT = typeof (SimKernel as unknown as { simDeviceOf?: unknown }).simDeviceOf === "function" &&
  typeof (SimKernel.prototype as unknown as { adopt?: unknown }).adopt === "function";

async function run(args: string[], cwd = ROOT) {
  const out = await new Deno.Command(DENO, {
    args: ["run", "--allow-ffi", CLI, ...args],
    cwd,
    env: BASE_ENV,
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n");
  assertEquals(lines.length, 1, `one line on stderr: ${stderr}`);
  return lines[0];
}

/** A holder process: waits for its ready line, then answers commands. */
interface Holder {
  proc: Proc;
  pid: number;
  fd: number;
  ask: (c: string) => Promise<unknown>;
  quit: () => Promise<void>;
}

async function holder(spec: string): Promise<Holder> {
  const proc = new Proc(DENO, ["run", "--allow-ffi", HOLDER, spec], { stdin: true });
  const writer = proc.child.stdin.getWriter();
  let seen = 0;
  const next = async () => {
    const end = performance.now() + 20_000;
    for (;;) {
      const lines = proc.stdout.split("\n").filter((l) => l.trim());
      if (lines.length > seen) return JSON.parse(lines[seen++]);
      if (performance.now() > end) throw new Error(`holder: no answer; stderr: ${proc.stderr}`);
      await sleep(20);
    }
  };
  const ready = await next();
  assert(ready.ready, `holder: ${JSON.stringify(ready)}`);
  const ask = async (c: string) => {
    await writer.write(new TextEncoder().encode(c + "\n"));
    return await next();
  };
  const quit = async () => {
    await writer.write(new TextEncoder().encode("quit\n"));
    assertEquals((await proc.done(20_000)).code, 0, "the holder quits");
  };
  return { proc, pid: ready.pid, fd: ready.fd, ask, quit };
}

Deno.test("sim: a device another process holds: a fresh open names the holder, one line, exit 3, nothing touched", async () => {
  await withTemp(async (dir) => {
    await simCreate(`${dir}/a`, "--model", "mtty-2");
    const h = await holder(`sim:${dir}/a`);
    assertEquals(await h.ask("set STOP"), { state: "STOP" });
    const want = `is held by deno (pid ${h.pid}); to save its state while it is paused: --device pid:${h.pid}`;
    let r = await run(["save", "--device", `sim:${dir}/a`, `${dir}/out.bin`]);
    assertEquals([r.code, oneLine(r.stderr)], [3, `vfio-mig: sim:${dir}/a ${want}`]);
    // A relative path names the same holder.
    r = await run(["info", "--device", "sim:a"], dir);
    assertEquals([r.code, oneLine(r.stderr)], [3, `vfio-mig: sim:a ${want}`]);
    assertEquals(await stateOf(`${dir}/a`), "STOP", "untouched");
    assertEquals(await h.ask("state"), { state: "STOP" }, "the holder's fd still works");
    let exists = true;
    await Deno.stat(`${dir}/out.bin`).catch(() => exists = false);
    assert(!exists, "no output was created");
  });
});

Deno.test("sim: systemFor gives the simulated kernel for pid:/fd: specs whose fd is a simulated device", async () => {
  await withTemp(async (dir) => {
    await simCreate(`${dir}/a`, "--model", "mtty-2");
    const h = await holder(`sim:${dir}/a`);
    assert(systemFor([`pid:${h.pid}`]) instanceof SimKernel, "pid: of a sim holder");
    assert(systemFor([`pid:${h.pid}:${h.fd}`]) instanceof SimKernel, "pid:PID:FD of a sim holder");
    assert(!(systemFor([`pid:${h.pid}:0`]) instanceof SimKernel), "its stdin is not a device");
    const sys = libc();
    const fd = sys.open(`${dir}/a/device.json`, O.RDONLY | O.CLOEXEC);
    try {
      assert(!(systemFor([`fd:${fd}`]) instanceof SimKernel), "a file of the store that is not the device fd");
    } finally {
      sys.close(fd);
    }
    assert(!(systemFor(["fd:0", "0000:3b:00.1"]) instanceof SimKernel), "real specs");
  });
});

Deno.test("sim: execWithDeviceFd hands the device to a command, which keeps it after the launcher is killed", async () => {
  await withTemp(async (dir) => {
    await simCreate(`${dir}/a`, "--model", "mtty-2");
    const script = `readlink /proc/self/fd/$VFIO_MIG_DEVICE_FD > ${dir}/link; echo $$ > ${dir}/pid; ` +
      `while [ ! -e ${dir}/go ]; do sleep 0.05; done`;
    const launcher = new Proc(DENO, ["run", "--allow-ffi", HAND_DOWN, `sim:${dir}/a`, "sh", "-c", script]);
    let child = 0;
    for (let i = 0; i < 400 && !child; i++) {
      child = Number((await Deno.readTextFile(`${dir}/pid`).catch(() => "")).trim()) || 0;
      await sleep(25);
    }
    try {
      assert(child > 0, `the command did not start: ${launcher.stderr}`);
      assertEquals((await Deno.readTextFile(`${dir}/link`)).trim(), `${dir}/a/lock`, "the command has the device fd");
      launcher.kill("SIGKILL");
      // Its exit only: the command still has the launcher's stdout and stderr open.
      assertEquals((await launcher.child.status).signal, "SIGKILL");
      // The launcher is dead; the command still holds the device (and so may the sleep
      // it runs at that moment, which inherited the fd).
      const r = await run(["info", "--device", `sim:${dir}/a`]);
      assertEquals(r.code, 3);
      assertMatch(
        oneLine(r.stderr),
        new RegExp(`is held by sh \\(pid ${child}\\)( and sleep \\(pid \\d+\\))?; .* --device pid:${child}$`),
      );
    } finally {
      // Whatever failed, the command ends (it holds the launcher's pipes open).
      await Deno.writeTextFile(`${dir}/go`, "");
    }
    for (let i = 0; i < 200; i++) {
      if ((await run(["state", "--device", `sim:${dir}/a`])).code === 0) return;
      await sleep(50);
    }
    throw new Error("the device was not released when the command ended");
  });
});

Deno.test("sim: execWithDeviceFd returns the command's exit code (128+N for a signal) and says when it cannot start", async () => {
  await withTemp(async (dir) => {
    await simCreate(`${dir}/a`, "--model", "mtty-2");
    const code = async (argv: string[]) => {
      const p = new Proc(DENO, ["run", "--allow-ffi", HAND_DOWN, `sim:${dir}/a`, ...argv]);
      return await p.done(30_000);
    };
    assertEquals((await code(["sh", "-c", "exit 7"])).code, 7);
    assertEquals((await code(["sh", "-c", 'test "$VFIO_MIG_DEVICE_FD" -gt 2 && exit 0; exit 9'])).code, 0);
    assertEquals((await code(["sh", "-c", "kill -TERM $$"])).code, 128 + 15);
    const missing = await code(["no-such-command-vfio-mig"]);
    assertEquals(missing.code, 1, missing.stderr);
    assertMatch(missing.stderr, /--exec no-such-command-vfio-mig: cannot start it: no such command/);
  });
});

Deno.test({
  name: "sim: pid:/fd: of a simulated device, while this build's simulator cannot adopt fds, is one line, exit 3",
  ignore: CAN_ADOPT,
  async fn() {
    await withTemp(async (dir) => {
      await simCreate(`${dir}/a`, "--model", "mtty-2");
      const h = await holder(`sim:${dir}/a`);
      const r = await run(["info", "--device", `pid:${h.pid}`]);
      assertEquals(r.code, 3);
      assertMatch(oneLine(r.stderr), /cannot take over an fd \(SimKernel\.(adopt|simDeviceOf) is missing\)/);
      await killAll();
    });
  },
});

Deno.test({
  name: "sim: save from and load into devices other processes hold (pid:), and through an inherited fd (fd:N)",
  ignore: !CAN_ADOPT,
  async fn() {
    await withTemp(async (dir) => {
      await simCreate(`${dir}/src`, "--model", "mtty-2");
      await simCreate(`${dir}/dst`, "--model", "mtty-2");
      const src = await holder(`sim:${dir}/src`);
      const dst = await holder(`sim:${dir}/dst`);
      const info = JSON.parse((await ok(["info", "--json", "--device", `pid:${src.pid}`])).stdout);
      assertEquals([info.access, info.holder.pid, info.path, info.openedFresh], ["borrowed", src.pid, "sim", false]);
      const s = JSON.parse((await ok(["save", "--json", "--device", `pid:${src.pid}`, `${dir}/s.bin`])).stdout);
      assertEquals(s.finalState, "STOP");
      assertEquals(await src.ask("state"), { state: "STOP" }, "the holder sees the state the save left");
      await ok(["load", "--device", `pid:${dst.pid}`, `${dir}/s.bin`]);
      assertEquals(await dst.ask("state"), { state: "RUNNING" });
      await src.quit();
      const r = await new Proc(DENO, [
        "run",
        "--allow-ffi",
        HAND_DOWN,
        `sim:${dir}/src`,
        "sh",
        "-c",
        `${DENO} run --allow-ffi ${CLI} info --json --device fd:$VFIO_MIG_DEVICE_FD`,
      ]).done(60_000);
      assertEquals(r.code, 0, r.stderr);
      const j = JSON.parse(r.stdout.slice(r.stdout.indexOf("\n") + 1)); // after hand_down's own line
      assertEquals([j.access, j.path, j.name, j.openedFresh], ["inherited", "sim", `${dir}/src`, false]);
    });
  },
});
