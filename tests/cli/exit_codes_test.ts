// The exit codes of the README's table, command by command, for the errors a user can
// cause: each case one line on stderr, no stack trace, the documented code. (The
// fault matrix, signals and interrupt tests cover failures; this covers refusals.)
//
// The same situation gets the same answer in every command: a file named on the command
// line that cannot be used (missing, its folder missing, a folder that takes no files,
// a directory, no permission) is a usage error (2) naming the path and what to do; a
// device that cannot be opened (missing, no permission) is a device error (3).

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, cli, DENO, euid, killAll, ok, Proc, type Run, simCreate } from "../helpers/proc.ts";

interface Case {
  what: string;
  args: (t: string) => string[];
  code: number;
  says: RegExp;
  /** Run as another user (nobody, when the tests run as root): for permission cases. */
  asOther?: boolean;
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
  {
    what: "save into a folder that does not exist",
    args: (t) => ["save", "--device", `sim:${t}/stopped`, `${t}/nofolder/x.vfmig`],
    code: 2,
    says:
      /^vfio-mig: cannot create \S+\/nofolder\/x\.vfmig: its folder \S+\/nofolder does not exist \(create it first\)$/,
  },
  {
    what: "report -o into a folder that does not exist",
    args: (t) => ["report", `${t}/run.jsonl`, "-o", `${t}/nofolder/r.html`],
    code: 2,
    says: /^vfio-mig: report: cannot create \S+\/nofolder\/r\.html: its folder \S+ does not exist/,
  },
  {
    what: "--events into a folder that does not exist",
    args: (t) => ["save", "--events", `${t}/nofolder/e.jsonl`, "--device", `sim:${t}/stopped`, `${t}/x.vfmig`],
    code: 2,
    says: /--events: cannot create \S+\/nofolder\/e\.jsonl: its folder \S+ does not exist/,
  },
  {
    what: "save into /proc (a folder that takes no new files)",
    args: (t) => ["save", "--device", `sim:${t}/stopped`, "/proc/x.bin"],
    code: 2,
    says: /^vfio-mig: cannot create \/proc\/x\.bin: \/proc takes no new files$/,
  },
  {
    what: "save onto a directory",
    args: (t) => ["save", "--device", `sim:${t}/stopped`, t],
    code: 2,
    says: /is a directory: give a file name/,
  },
  {
    what: "report of an events file that does not exist",
    args: (t) => ["report", `${t}/nothing.jsonl`],
    code: 2,
    says: /^vfio-mig: report: \S+\/nothing\.jsonl: no such file$/,
  },
  {
    what: "inspect of a directory",
    args: (t) => ["inspect", t],
    code: 2,
    says: /^vfio-mig: \/\S+ is a directory: give a file$/,
  },
  {
    what: "load of a directory",
    args: (t) => ["load", "--device", `sim:${t}/stopped`, t],
    code: 2,
    says: /^vfio-mig: \/\S+ is a directory: give a file$/,
  },
  {
    what: "load of a file the user may not read",
    args: (t) => ["load", "--device", `sim:${t}/open`, `${t}/secret.vfmig`],
    code: 2,
    says: /^vfio-mig: cannot read \S+\/secret\.vfmig: permission denied \(run as a user who may read it\)$/,
    asOther: true,
  },
  {
    what: "inspect of a file the user may not read",
    args: (t) => ["inspect", `${t}/secret.vfmig`],
    code: 2,
    says: /^vfio-mig: cannot read \S+\/secret\.vfmig: permission denied/,
    asOther: true,
  },
  {
    what: "save of a device the user may not open",
    args: (t) => ["save", "--device", `sim:${t}/stopped`, "/dev/null"],
    code: 3,
    says: /^vfio-mig: sim:\S+\/stopped: permission denied opening \S+: run as root or give your user access to it$/,
    asOther: true,
  },
  {
    what: "info of a device the user may not open",
    args: (t) => ["info", "--device", `sim:${t}/stopped`],
    code: 3,
    says: /permission denied opening/,
    asOther: true,
  },
];

/** Runs vfio-mig as nobody when the tests run as root (else as this user: the modes still apply). */
function cliAsOther(args: string[]): Promise<Run> {
  const prefix = euid() === 0 ? ["--reuid=65534", "--regid=65534", "--clear-groups"] : null;
  const p = prefix
    ? new Proc("setpriv", [...prefix, DENO, "run", "--allow-ffi", CLI, ...args])
    : new Proc(DENO, ["run", "--allow-ffi", CLI, ...args]);
  return p.done(60_000);
}

Deno.test(`exit codes: ${CASES.length} refusals a user can cause, each one line with the README's code`, async () => {
  // A folder every user may enter (temp folders are 0700), for the cases run as another user.
  const t = await Deno.makeTempDir({ dir: "/tmp", prefix: "vfio-mig-exit-" });
  try {
    await Deno.chmod(t, 0o755);
    await simCreate(`${t}/stopped`, "--model", "mtty-2");
    // The device's files are root's (0600): another user may not open it. 'open' is open to all.
    await simCreate(`${t}/open`, "--model", "mtty-2");
    await Deno.writeTextFile(`${t}/secret.vfmig`, "not for everyone");
    await Deno.chmod(`${t}/secret.vfmig`, 0o600);
    await simCreate(`${t}/ev`, "--model", "mtty-1");
    await ok(["save", "--events", `${t}/run.jsonl`, "--device", `sim:${t}/ev`, `${t}/ev.vfmig`]);
    await ok(["state", "--device", `sim:${t}/stopped`, "STOP"]);
    await simCreate(`${t}/nopre`, "--model", "mtty-2", "--flags", "stop-copy,p2p");
    await simCreate(`${t}/none`, "--model", "mtty-2", "--flags", "none");
    for (const f of await Array.fromAsync(Deno.readDir(`${t}/open`))) await Deno.chmod(`${t}/open/${f.name}`, 0o666);
    await Deno.chmod(`${t}/open`, 0o777);
    for (const f of await Array.fromAsync(Deno.readDir(`${t}/stopped`))) {
      await Deno.chmod(`${t}/stopped/${f.name}`, 0o600);
    }
    for (const c of CASES) {
      const r = c.asOther ? await cliAsOther(c.args(t)) : await cli(c.args(t));
      const lines = r.stderr.split("\n").filter((l) => l.trim());
      assertEquals(r.code, c.code, `${c.what}: exit code\n${r.stderr}`);
      assertEquals(lines.length, 1, `${c.what}: one line\n${r.stderr}`);
      assertMatch(lines[0], c.says, c.what);
      assert(!/^\s+at /m.test(r.stderr), `${c.what}: no stack trace`);
    }
  } finally {
    await killAll();
    await Deno.remove(t, { recursive: true });
  }
});
