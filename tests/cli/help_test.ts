// Every command's --help: the device forms --device takes, the exit codes the command
// can end with (and no other), two or three examples whose options the command takes;
// no unexplained words; and the top level's answers to `help nosuch`, no arguments and
// `sim` alone (usage errors: stderr, exit 2).

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { COMMANDS } from "../../src/commands/index.ts";
import { cli, simCreate, withTemp } from "../helpers/proc.ts";

/** The exit codes each command can end with, as its --help must list them. */
const EXIT_CODES: Record<string, number[]> = {
  save: [0, 1, 2, 3, 4, 130],
  load: [0, 1, 2, 3, 4, 130],
  info: [0, 1, 2, 3],
  state: [0, 1, 2, 3],
  reset: [0, 1, 2, 3],
  sim: [0, 1, 2],
  list: [0, 1, 2],
  check: [0, 1, 2, 3],
  inspect: [0, 1, 2, 4],
  report: [0, 1, 2, 4],
  "qemu-splice": [0, 1, 2, 4],
  verify: [0, 2, 4, 130],
};

function documentedCodes(help: string): number[] {
  const text = help.split("Exit codes:")[1]?.split("\n\n")[0].replace(/\s+/g, " ") ?? "";
  // "N word" at the start or after ", ": the codes (numbers inside the words are not).
  return [...text.trim().matchAll(/(?:^|, )(\d+) /g)].map((m) => Number(m[1]));
}

Deno.test("help: every command lists its device forms, its exit codes and examples", async () => {
  assertEquals(COMMANDS.map((c) => c.name).sort(), Object.keys(EXIT_CODES).sort(), "a row for every command");
  for (const entry of COMMANDS) {
    const help = (await entry.load()).help;
    const name = entry.name;
    assertEquals(documentedCodes(help), EXIT_CODES[name], `${name}: exit codes\n${help.split("Exit codes:")[1]}`);
    const examples = help.split("Examples:\n")[1]?.split("\n\n")[0].split("\n") ?? [];
    assert(examples.length >= 2 && examples.length <= 3, `${name}: 2-3 examples\n${help}`);
    for (const ex of examples) {
      assertMatch(ex, new RegExp(`^  .*vfio-mig ${name}( |$)`), `${name}: an example of ${name}`);
    }
    if (/^\s+-d, --device D/m.test(help)) {
      for (const form of ["pid:PID", "fd:N", "sim:PATH", "/dev/vfio/devices/vfioN", "0000:3b:00.1"]) {
        assertStringIncludes(help, form, `${name}: --device forms`);
      }
    }
    // Words that need the reader to know what they mean are spelled out.
    assert(!/kernels 6\.2 until the 2026 fix/.test(help), `${name}: the kernel bug is named, not alluded to`);
    assert(!/ MS\b/.test(help), `${name}: durations are TIME with units`);
  }
});

Deno.test("help: each example's options are ones its command takes (parsed, not run)", async () => {
  const { parse } = await import("../../src/commands/options.ts");
  const seen = new Set<string>();
  for (const entry of COMMANDS) {
    const help = (await entry.load()).help;
    const examples = help.split("Examples:\n")[1]?.split("\n\n")[0].split("\n") ?? [];
    for (const ex of examples) {
      // Each `vfio-mig CMD …` of the line (a pipe may hold several): its --options.
      for (const part of ex.split(/\||&&/)) {
        const m = /vfio-mig ([a-z-]+)(.*)$/.exec(part.trim());
        if (!m) continue;
        const opts = [...m[2].matchAll(/(?:^|\s)(--[a-z0-9-]+)/g)].map((o) => o[1]);
        const cmdHelp = (await COMMANDS.find((c) => c.name === m[1])!.load()).help;
        for (const o of opts) {
          assertMatch(cmdHelp, new RegExp(`${o}\\b`), `${entry.name} example "${ex.trim()}": ${m[1]} takes ${o}`);
          seen.add(o);
        }
      }
    }
  }
  assert(seen.size > 10 && parse !== undefined, `options seen in examples: ${[...seen]}`);
});

Deno.test("help nosuch, no arguments and `sim` alone are usage errors: stderr, exit 2; sim create explains its flags", async () => {
  const nosuch = await cli(["help", "nosuch"]);
  assertEquals([nosuch.code, nosuch.stdout], [2, ""], nosuch.stderr);
  assertMatch(nosuch.stderr, /^vfio-mig: help: no command 'nosuch' \(commands: save, load, /);
  assertEquals(nosuch.stderr.trim().split("\n").length, 1);
  const none = await cli([]);
  assertEquals([none.code, none.stdout], [2, ""]);
  assertStringIncludes(none.stderr, "Usage: vfio-mig COMMAND");
  const sim = await cli(["sim"]);
  assertEquals([sim.code, sim.stdout], [2, ""]);
  assertStringIncludes(sim.stderr, "vfio-mig sim create PATH");
  const helpSave = await cli(["help", "save"]);
  assertEquals(helpSave.code, 0);
  assertStringIncludes(helpSave.stdout, "pid:PID[:FD]");
  await withTemp(async (t) => {
    const r = await cli(["sim", "create", `${t}/a`, "--model", "mtty-2"]);
    assertMatch(r.stdout, /migration flags 0x7 \(STOP_COPY P2P PRE_COPY\)/);
  });
});

Deno.test("sim create over an existing device refuses without --force; --force replaces it", async () => {
  await withTemp(async (t) => {
    await simCreate(`${t}/a`, "--model", "bulk", "--size", "4K", "--seed", "1");
    const before = await Deno.readFile(`${t}/a/state.bin`);
    const again = await cli(["sim", "create", `${t}/a`, "--model", "mtty-2"]);
    assertEquals(again.code, 2, again.stderr);
    assertMatch(again.stderr, /already holds a device: give --force to replace it/);
    assertEquals(await Deno.readFile(`${t}/a/state.bin`), before, "the device is untouched");
    await simCreate(`${t}/a`, "--model", "mtty-2", "--force");
    const meta = JSON.parse(await Deno.readTextFile(`${t}/a/device.json`));
    assertEquals(meta.model, "mtty-2");
  });
});
