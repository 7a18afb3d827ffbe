// The exit codes of the README's table, command by command, for the errors a user can
// cause: each case one line on stderr, no stack trace, the documented code. (The
// fault matrix, signals and interrupt tests cover failures; this covers refusals.)

import { assert, assertEquals, assertMatch } from "./assert.ts";
import { cli, ok, simCreate, withTemp } from "./proc_helpers.ts";

interface Case {
  what: string;
  args: (t: string) => string[];
  code: number;
  says: RegExp;
}

const CASES: Case[] = [
  {
    what: "save --live of a stopped device",
    args: (t) => ["save", "--live", "--device", `sim:${t}/stopped`, `${t}/x.vfmig`],
    code: 3,
    says: /is STOP: a live save starts from RUNNING/,
  },
  {
    what: "save --live of a device without PRE_COPY",
    args: (t) => ["save", "--live", "--device", `sim:${t}/nopre`, `${t}/x.vfmig`],
    code: 3,
    says: /--live needs PRE_COPY/,
  },
  {
    what: "save of a device that cannot migrate",
    args: (t) => ["save", "--device", `sim:${t}/none`, `${t}/x.vfmig`],
    code: 3,
    says: /does not support migration/,
  },
  {
    what: "save of a device that does not exist",
    args: (t) => ["save", "--device", `sim:${t}/missing`, `${t}/x.vfmig`],
    code: 3,
    says: /missing/,
  },
  {
    what: "save with no output",
    args: (t) => ["save", "--device", `sim:${t}/stopped`],
    code: 2,
    says: /give one output/,
  },
  {
    what: "load of a file that does not exist",
    args: (t) => ["load", "--device", `sim:${t}/stopped`, `${t}/nothing.vfmig`],
    code: 2,
    says: /no such file/,
  },
];

Deno.test(`exit codes: ${CASES.length} refusals a user can cause, each one line with the README's code`, async () => {
  await withTemp(async (t) => {
    await simCreate(`${t}/stopped`, "--model", "mtty-2");
    await ok(["state", "--device", `sim:${t}/stopped`, "STOP"]);
    await simCreate(`${t}/nopre`, "--model", "mtty-2", "--flags", "stop-copy,p2p");
    await simCreate(`${t}/none`, "--model", "mtty-2", "--flags", "none");
    for (const c of CASES) {
      const r = await cli(c.args(t));
      const lines = r.stderr.split("\n").filter((l) => l.trim());
      assertEquals(r.code, c.code, `${c.what}: exit code\n${r.stderr}`);
      assertEquals(lines.length, 1, `${c.what}: one line\n${r.stderr}`);
      assertMatch(lines[0], c.says, c.what);
      assert(!/^\s+at /m.test(r.stderr), `${c.what}: no stack trace`);
    }
  });
});
