// A device vfio-pci resets (sim --family pci: reset at the first open and the last
// close), opened fresh by the CLI: save says it saved post-reset state, load says the
// state dies with its fd, and `load --exec CMD` keeps the loaded state alive for CMD
// (docs/device-state.md). Real processes: the reset happens at the process's last close.

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, DENO, runCli, show } from "../helpers/proc.ts";

const vfioMig = (args: string[]) => runCli(args, { allow: ["--allow-ffi", "--allow-read"] });

Deno.test("fresh opens of a pci-family device: save and load warn; load --exec keeps the state for CMD", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-fresh-" });
  try {
    const a = `${t}/a`, b = `${t}/b`, m = `${t}/m`, file = `${t}/a.vfmig`;
    for (const [dev, seed, family] of [[a, "1", "pci"], [b, "2", "pci"], [m, "3", "mdev"]]) {
      const r = await vfioMig(["sim", "create", dev, "--model", "mtty-2", "--seed", seed, "--family", family]);
      assertEquals(r.code, 0, show(r));
    }

    let r = await vfioMig(["save", "--device", `sim:${a}`, file]);
    assertEquals(r.code, 0, show(r));
    assertMatch(r.stderr, /warning: .*saved post-reset state.*--device pid:PID/, "the save says whose state it is");

    // A plain load: the state is in b until vfio-mig's last close resets it.
    r = await vfioMig(["load", "--json", "--device", `sim:${b}`, file]);
    assertEquals(r.code, 0, show(r));
    assertMatch(r.stderr, /warning: .*lost when vfio-mig exits.*--exec CMD/);
    assertEquals(JSON.parse(r.stdout).warnings.length, 1, "--json carries the warning");
    r = await vfioMig(["sim", "compare", a, b]);
    assertEquals(r.code, 1, `after the load's exit, b no longer holds a's state\n${show(r)}`);

    // With --exec, CMD runs while the device is held: b holds a's state then, and the
    // exit code is CMD's.
    const cmp = `${DENO} run --allow-ffi --allow-read ${CLI} sim compare ${a} ${b}`;
    r = await vfioMig([
      "load",
      "--device",
      `sim:${b}`,
      file,
      "--exec",
      "sh",
      "-c",
      `test -n "$VFIO_MIG_DEVICE_FD" && ${cmp} >/dev/null && exit 42`,
    ]);
    assertEquals(r.code, 42, `CMD saw b equal to a, with the fd in its environment\n${show(r)}`);
    assert(!/lost when vfio-mig exits/.test(r.stderr), "no warning when the fd is handed on");

    // An mdev keeps its state: no warning either way.
    r = await vfioMig(["save", "--device", `sim:${m}`, `${t}/m.vfmig`]);
    assertEquals(r.code, 0, show(r));
    assert(!/warning/.test(r.stderr), show(r));

    r = await vfioMig(["load", "--device", `sim:${b}`, file, "--exec"]);
    assertEquals(r.code, 2, `--exec without a command is a usage error\n${show(r)}`);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});
