// Where device state lives, on the real mtty driver (both kernels: group/container and,
// with --cdev, iommufd): a process holding a device (tests/kernel/guest/holder.ts) makes
// fresh opens fail with EBUSY, and the error names it; vfio-mig borrows its fd
// (--device pid:PID: pidfd_getfd) to save from it and to load into it while it keeps
// the device, and its own fd goes on working; a launcher hands a device down
// (--device fd:N, tests/kernel/guest/hand_down.ts: execWithDeviceFd) and the command
// keeps it after the launcher died; refusals are one line, exit 3, nothing touched.

import {
  assert,
  CDEV_MODE,
  check as anyCheck,
  CLI,
  cli,
  createMtty,
  eq,
  ok,
  ROOT,
  setState,
  sh,
  spec,
  tmp,
} from "../lib/guest.ts";
import { Holder } from "../lib/holder.ts";

// Every check here is about how a device is reached: all run on both kernels.
const check = (name: string, fn: () => Promise<void> | void) => anyCheck(name, fn, { cdev: true });

const HAND_DOWN = `${ROOT}tests/kernel/guest/hand_down.ts`;
const AS_USER = `${ROOT}tests/kernel/guest/as_user.ts`;
const dec = new TextDecoder();

function removeMtty(uuid: string): void {
  try {
    Deno.writeTextFileSync(`/sys/bus/mdev/devices/${uuid}/remove`, "1");
  } catch { /* best effort */ }
}

const A = createMtty("mtty-2"); // source, held by H1
const B = createMtty("mtty-2"); // destination, held by H2
const C = createMtty("mtty-2"); // handed down
console.log(`borrow devices: A=${A} B=${B} C=${C}`);
const H1 = await new Holder(spec(A)).ready();
const H2 = await new Holder(spec(B)).ready();
const file = `${tmp}/borrowed.bin`;

function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n");
  eq(lines.length, 1, `lines on stderr (${stderr.trim()})`);
  return lines[0];
}

try {
  await check("a held device: fresh opens get EBUSY and the error names the holder's pid", async () => {
    const want = `is held by deno (pid ${H1.pid}); to save its state while it is paused: --device pid:${H1.pid}`;
    const specs = CDEV_MODE ? [spec(A), A] : [A]; // --cdev: the group path is refused while the cdev is bound, too
    for (const s of specs) {
      const r = await cli(["info", "--device", s]);
      eq(r.code, 3, `exit code of info --device ${s}`);
      const line = oneLine(r.stderr);
      assert(line === `vfio-mig: ${s} ${want}`, `message: ${line}`);
    }
    const l = JSON.parse((await ok(["list", "--json"])).stdout);
    const d = l.devices.find((x: { device: string }) => x.device === A);
    eq([d.access, d.holders.map((h: { pid: number }) => h.pid)], ["busy", [H1.pid]], "list shows the holder");
  });

  await check("info --device pid:HOLDER borrows the fd and says which device it is", async () => {
    const r = JSON.parse((await ok(["info", "--json", "--device", `pid:${H1.pid}`])).stdout);
    eq(
      [r.access, r.holder, r.path, r.name, r.mdevType, r.driver, r.migrationFlags, r.state],
      [
        "borrowed",
        { pid: H1.pid, fd: H1.fd, command: "deno" },
        CDEV_MODE ? "cdev" : "group",
        A,
        "mtty-2",
        "mtty",
        7,
        "RUNNING",
      ],
      "info of the borrowed fd",
    );
    eq([r.family, r.stateSurvivesClose, r.openedFresh], ["mdev", true, false], "family");
    const text = (await ok(["info", "--device", `pid:${H1.pid}:${H1.fd}`])).stdout;
    assert(text.includes(`borrowed from deno (pid ${H1.pid}) fd ${H1.fd}`), `text: ${text}`);
    assert(text.includes("state survives close: yes (mdev: its parent driver keeps it)"), `text: ${text}`);
  });

  await check("save --device pid:HOLDER succeeds while the holder keeps the device", async () => {
    await H1.ask("program 0 90 104,105"); // scratch 0x5a, FIFO "hi"
    await H1.ask("program 1 165 33"); // scratch 0xa5, FIFO "!"
    const s = JSON.parse((await ok(["save", "--json", "--device", `pid:${H1.pid}`, file])).stdout);
    eq([s.bytes, s.finalState], [96, "STOP"], "save through the borrowed fd");
    eq((await H1.ask("state")).state, "STOP", "the holder sees what the save left");
    eq((await H1.ask("set RUNNING")).state, "RUNNING", "the holder's fd still drives the device");
    eq(await H1.ask("read 0"), { scratch: 0x5a, fifo: [0x68, 0x69] }, "the holder's registers after the save");
  });

  await check(
    "load --device pid:HOLDER2 loads into a device another process holds; it reads the source's registers",
    async () => {
      await H2.ask("program 0 17 1,2,3"); // something else first
      const r = JSON.parse((await ok(["load", "--json", "--device", `pid:${H2.pid}`, file])).stdout);
      eq(r.finalState ?? "RUNNING", "RUNNING", "load result");
      eq((await H2.ask("state")).state, "RUNNING", "holder 2's state");
      eq(await H2.ask("read 0"), { scratch: 0x5a, fifo: [0x68, 0x69] }, "port 0 read by holder 2");
      eq(await H2.ask("read 1"), { scratch: 0xa5, fifo: [0x21] }, "port 1 read by holder 2");
    },
  );

  await check("the holders' fds still work afterwards, and they still hold their devices", async () => {
    await H2.ask("program 0 66 7");
    eq(await H2.ask("read 0"), { scratch: 66, fifo: [7] }, "holder 2 after the load");
    eq((await H1.ask("set STOP")).state, "STOP", "holder 1 after the save");
    eq((await H1.ask("set RUNNING")).state, "RUNNING", "holder 1 after the save");
    const r = await cli(["state", "--device", spec(B)]);
    eq(r.code, 3, "B is still held (fresh open)");
    assert(r.stderr.includes(`(pid ${H2.pid})`), `message: ${r.stderr.trim()}`);
  });

  await check("refused borrows are one line, exit 3, and touch nothing", async () => {
    await H1.ask("program 0 77 9");
    const before = await H1.ask("state");
    let r = await cli(["save", "--device", "pid:999999", `${tmp}/never.bin`]);
    eq([r.code, oneLine(r.stderr)], [3, "vfio-mig: pid:999999: no such process"], "process gone");
    r = await cli(["save", "--device", `pid:${H1.pid}:0`, `${tmp}/never.bin`]);
    eq(r.code, 3, "fd 0 exit code");
    assert(/^vfio-mig: pid:\d+:0: fd 0 of pid \d+ \(deno\) is .*, not a VFIO device/.test(oneLine(r.stderr)), r.stderr);
    // Another user: no ptrace rights over the holder (its /proc/PID/fd is not readable, pidfd_getfd would be EPERM).
    const other = await new Deno.Command("deno", {
      args: ["run", "--allow-ffi", AS_USER, "65534", "save", "--device", `pid:${H1.pid}`, `/tmp/never.bin`],
      stdin: "null",
    }).output();
    eq(other.code, 3, `other user: ${dec.decode(other.stderr)}`);
    assert(
      oneLine(dec.decode(other.stderr)).includes("borrowing a device needs ptrace rights"),
      dec.decode(other.stderr),
    );
    eq(await H1.ask("state"), before, "the holder's state");
    eq(await H1.ask("read 0"), { scratch: 77, fifo: [9] }, "the holder's registers");
  });

  await check("--device fd:N: a launcher opens the device and hands it down to vfio-mig", async () => {
    const out = `${tmp}/fd-info.json`;
    const r = await sh(
      `deno run --allow-ffi ${HAND_DOWN} ${spec(C)} sh -c ` +
        `'deno run --allow-ffi ${CLI} info --json --device fd:$VFIO_MIG_DEVICE_FD > ${out} && ` +
        `deno run --allow-ffi ${CLI} save --device fd:$VFIO_MIG_DEVICE_FD ${tmp}/fd.bin'`,
    );
    eq(r.code, 0, `hand-down: ${r.stderr.trim()}`);
    const info = JSON.parse(Deno.readTextFileSync(out));
    eq([info.access, info.name, info.mdevType, info.openedFresh], ["inherited", C, "mtty-2", false], "info via fd:N");
    eq(Deno.statSync(`${tmp}/fd.bin`).size > 96, true, "save via fd:N wrote a stream");
    setState(C, "RUNNING");
    if (CDEV_MODE) {
      // A shell can hand down a cdev it opened itself: vfio-mig binds it (the device's first open).
      const s = await sh(`exec 7<>${spec(C)}; deno run --allow-ffi ${CLI} info --json --device fd:7`);
      eq(s.code, 0, `exec 7<>cdev: ${s.stderr.trim()}`);
      const j = JSON.parse(s.stdout);
      eq([j.access, j.path, j.name, j.openedFresh], ["inherited", "cdev", C, true], "info via a shell's cdev fd");
    }
  });

  await check("execWithDeviceFd: the command keeps the device after the launcher's exit", async () => {
    const pidFile = `${tmp}/child.pid`, out = `${tmp}/child.out`;
    const launcher = new Deno.Command("deno", {
      args: [
        "run",
        "--allow-ffi",
        HAND_DOWN,
        spec(C),
        "sh",
        "-c",
        `echo $$ > ${pidFile}; while [ ! -e ${tmp}/go ]; do sleep 0.2; done; ` +
        `deno run --allow-ffi ${CLI} state --device fd:$VFIO_MIG_DEVICE_FD > ${out} 2>&1`,
      ],
      stdin: "null",
      stdout: "piped",
    }).spawn();
    for (let i = 0; i < 300; i++) {
      try {
        if (Deno.readTextFileSync(pidFile).trim()) break;
      } catch { /* not yet */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    const child = Number(Deno.readTextFileSync(pidFile).trim());
    launcher.kill("SIGKILL");
    await launcher.status;
    await launcher.stdout.cancel();
    // The launcher is gone; the command holds the device: a fresh open names it.
    const r = await cli(["info", "--device", spec(C)]);
    eq(r.code, 3, "C is held by the command");
    assert(oneLine(r.stderr).includes(`(pid ${child})`), `holder named: ${r.stderr.trim()}`);
    Deno.writeTextFileSync(`${tmp}/go`, "");
    for (let i = 0; i < 600; i++) {
      try {
        if (Deno.readTextFileSync(out).trim()) break;
      } catch { /* not yet */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 500));
    eq(Deno.readTextFileSync(out).trim(), "RUNNING", "the command used the device after the launcher died");
    for (let i = 0; i < 100; i++) {
      if ((await cli(["state", "--device", spec(C)])).code === 0) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error("C was not released after the command ended");
  });
} finally {
  await H1.quit();
  await H2.quit();
  for (const u of [A, B, C]) removeMtty(u);
}
