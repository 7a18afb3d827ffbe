// `vfio-mig state` on the three kinds of device: uAPI v2 (names), v1 (device_state bits,
// set as QEMU 7.2 sets them; `reset` names them too) and one that speaks neither (a
// device refusal, exit 3).

import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { runCli } from "../helpers/proc.ts";

/** The tool's answer, stdout and stderr trimmed. */
async function vfioMig(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await runCli(args);
  return { code: r.code, stdout: r.stdout.trim(), stderr: r.stderr.trim() };
}

Deno.test("state: v2 names, v1 device_state bits (set as QEMU 7.2 does), and a non-migratable device exits 3", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-state-" });
  try {
    const make = async (name: string, ...opts: string[]) =>
      assertEquals((await vfioMig(["sim", "create", `${t}/${name}`, "--model", "mtty-2", ...opts])).code, 0);
    await make("v2");
    await make("v1", "--protocol", "v1");
    await make("none", "--flags", "none");

    assertEquals((await vfioMig(["state", "--device", `sim:${t}/v2`, "STOP"])).stdout, "STOP");
    assertEquals((await vfioMig(["state", "--device", `sim:${t}/v2`])).stdout, "STOP");

    assertEquals((await vfioMig(["state", "--device", `sim:${t}/v1`])).stdout, "running (001b)");
    assertEquals((await vfioMig(["state", "--device", `sim:${t}/v1`, "STOP"])).stdout, "stopped (000b)");
    assertEquals((await vfioMig(["state", "--device", `sim:${t}/v1`])).stdout, "stopped (000b)", "kept");
    const p2p = await vfioMig(["state", "--device", `sim:${t}/v1`, "RUNNING_P2P"]);
    assertEquals(p2p.code, 2, p2p.stderr);
    assertMatch(p2p.stderr, /no v1 device_state/);
    assertEquals((await vfioMig(["state", "--device", `sim:${t}/v1`, "RUNNING"])).stdout, "running (001b)");

    assertEquals((await vfioMig(["state", "--device", `sim:${t}/v1`, "STOP"])).stdout, "stopped (000b)");
    assertMatch((await vfioMig(["reset", "--device", `sim:${t}/v1`])).stdout, /was reset and is running \(001b\)$/);

    const none = await vfioMig(["state", "--device", `sim:${t}/none`]);
    assertEquals(none.code, 3, none.stderr);
    assertMatch(none.stderr, /^vfio-mig: .*does not support migration/);
    assertEquals(none.stderr.split("\n").length, 1);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});
