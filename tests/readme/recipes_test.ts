// The README's recipes for state at rest (compression with zstd, encryption with age and
// with openssl), run as written: each `sh` block after a `<!-- recipe: NAME -->` line,
// with `vfio-mig` this checkout and devices A and B simulated. The state loaded equals the
// state saved; a damaged file is refused by the check before the device is touched.
// tests/run.sh installs zstd, age and openssl; a missing tool skips its recipe, saying so.

import { assert, assertEquals } from "../helpers/assert.ts";
import { CLI, DENO, sha, simCreate, stateOf, withTemp } from "../helpers/proc.ts";

const README = await Deno.readTextFile(new URL("../../README.md", import.meta.url));

function recipes(): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of README.matchAll(/<!-- recipe: (\w+)[^>]*-->\s*```sh\n([\s\S]*?)```/g)) out.set(m[1], m[2]);
  return out;
}

function has(tool: string): boolean {
  return (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":").some((d) => {
    try {
      return Deno.statSync(`${d}/${tool}`).isFile;
    } catch {
      return false;
    }
  });
}

const TOOLS: Record<string, string> = { zstd: "zstd", age: "age", openssl: "openssl" };

async function sh(dir: string, script: string, env: Record<string, string> = {}) {
  const out = await new Deno.Command("bash", {
    args: ["-euo", "pipefail", "-c", script],
    cwd: dir,
    env: { ...env, PATH: `${dir}/bin:${Deno.env.get("PATH")}`, NO_COLOR: "1", VFIO_MIG_DEVICE: "" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("README recipes: zstd, age and openssl at rest, each run as written; load gets the state saved", async () => {
  const found = recipes();
  assertEquals([...found.keys()].sort(), ["age", "openssl", "zstd"], "the README's recipes");
  for (const [name, script] of found) {
    if (!has(TOOLS[name])) {
      console.warn(`recipes_test: ${name} SKIPPED: ${TOOLS[name]} not found (tests/run.sh installs it)`);
      continue;
    }
    await withTemp(async (t) => {
      await Deno.mkdir(`${t}/bin`);
      await Deno.writeTextFile(`${t}/bin/vfio-mig`, `#!/bin/sh\nexec '${DENO}' run --allow-ffi '${CLI}' "$@"\n`);
      await Deno.chmod(`${t}/bin/vfio-mig`, 0o755);
      await simCreate(`${t}/a`, "--model", "bulk", "--size", "3M", "--seed", "11");
      await simCreate(`${t}/b`, "--model", "bulk", "--size", "3M", "--seed", "12");
      const run = script.replaceAll("--device A", `--device sim:${t}/a`).replaceAll(
        "--device B",
        `--device sim:${t}/b`,
      );
      const r = await sh(t, run);
      assertEquals(r.code, 0, `${name}: ${r.stderr}`);
      assertEquals(await sha(`${t}/b`), await sha(`${t}/a`), `${name}: the state loaded is the state saved`);
      assertEquals(await stateOf(`${t}/b`), "RUNNING");
      // The at-rest file is not the plain stream.
      const plain = await Deno.readFile(`${t}/state.vfmig`);
      const rest = (await Array.fromAsync(Deno.readDir(t))).find((e) => /^state\.(zst|age|enc)$/.test(e.name))!;
      const stored = await Deno.readFile(`${t}/${rest.name}`);
      assert(stored.length > 0 && !plain.subarray(0, 64).every((b, i) => b === stored[i]), `${name}: transformed`);
      // A damaged file (its last kilobyte cut off, as a full disk would) is refused by the
      // check: the load never runs, the device keeps its state.
      const before = await sha(`${t}/b`);
      await Deno.writeFile(`${t}/state.vfmig`, plain.subarray(0, plain.length - 1024));
      const check = run.split("\n").find((l) => l.startsWith("vfio-mig inspect"))!;
      const bad = await sh(t, check);
      assertEquals(bad.code, 4, `${name}: a truncated file fails the check\n${bad.stderr}`);
      assertEquals(await sha(`${t}/b`), before, `${name}: untouched`);
    });
  }
});
