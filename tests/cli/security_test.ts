// What the tool must never do to the machine it runs on (README "Security"):
// - open a listening socket nobody asked for: Deno >= 2.9.2 opens its inspector on
//   127.0.0.1:9229 on SIGUSR1; vfio-mig runs with SIGUSR1 blocked from exec (bin/vfio-mig),
//   or re-executes itself so (deno run cli.ts), and moves its switchover to SIGUSR2;
// - change the signal handling of a program that imports it as a library;
// - write into a descriptor nobody handed it (--events fd:N);
// - turn a URI it does not take into a file of that name (save/load positionals).
// Sockets are read as the kernel lists them: the process's socket inodes
// (/proc/PID/fd) against the LISTEN entries of /proc/net/tcp and tcp6.

import { assert, assertEquals, assertMatch, assertThrows, fail } from "../helpers/assert.ts";
import {
  CLI,
  DENO,
  jsonOf,
  killAll,
  listen,
  logLines,
  ok,
  Proc,
  procStatus,
  ROOT,
  sha,
  show,
  simCreate,
  sleep,
  vfioMig,
  withTemp,
} from "../helpers/proc.ts";
import { libc } from "../../ffi/libc.ts";
import { readSmallFile } from "../../src/io.ts";
import { VfioMigError } from "../../src/errors.ts";
import { loadInput, saveTarget } from "../../src/transport/transport.ts";

const LAUNCHER = `${ROOT}bin/vfio-mig`;
const SIGUSR1_BIT = 1n << 9n;

/** The TCP ports process `pid` listens on (IPv4 and IPv6), from its socket inodes. */
function listeningPorts(pid: number): number[] {
  const sys = libc();
  const inodes = new Set<string>();
  let fds: string[];
  try {
    fds = sys.readdir(`/proc/${pid}/fd`);
  } catch {
    return []; // gone
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(sys.readlink(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch { /* closed meanwhile */ }
  }
  const ports: number[] = [];
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = new TextDecoder().decode(readSmallFile(sys, table, 64 << 20));
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== "0A" /* TCP_LISTEN */) continue;
      if (inodes.has(f[9])) ports.push(parseInt(f[1].split(":")[1], 16));
    }
  }
  return ports.sort((a, b) => a - b);
}

function sigusr1Blocked(pid: number): boolean {
  const m = /^SigBlk:\s*([0-9a-f]+)$/m.exec(procStatus(pid) ?? "");
  return m !== null && (BigInt("0x" + m[1]) & SIGUSR1_BIT) !== 0n;
}

/** A loopback port nobody listens on now (bound, read and closed). */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Watches `pid`'s listening sockets for `ms`: fails at once if any is not in `allowed`. */
async function noOtherListener(pid: number, allowed: number[], ms: number, what: string): Promise<void> {
  const end = performance.now() + ms;
  do {
    const extra = listeningPorts(pid).filter((p) => !allowed.includes(p));
    if (extra.length > 0) fail(`${what}: the process listens on ${extra.join(", ")} (allowed: ${allowed.join(", ")})`);
    await sleep(25);
  } while (performance.now() < end);
}

type Start = "launcher" | "deno run";
const STARTS: Start[] = ["launcher", "deno run"];

function start(how: Start, args: string[], env: Record<string, string> = {}): Proc {
  return how === "launcher"
    ? new Proc(LAUNCHER, args, { env: { VFIO_MIG_DENO: DENO, ...env } })
    : new Proc(DENO, ["run", "--allow-ffi", "--allow-net", CLI, ...args], { env });
}

Deno.test("security: the hazard is real here: a Deno process without the block opens 9229 on SIGUSR1, and the check sees it", async () => {
  // Proves the socket check below can fail: without it this file would prove nothing.
  const p = new Proc(DENO, ["eval", "setTimeout(() => {}, 8000); setInterval(() => {}, 50);"]);
  try {
    await sleep(1500); // Deno installs its SIGUSR1 handler some 500 ms after start
    p.kill("SIGUSR1");
    const end = performance.now() + 4000;
    while (!listeningPorts(p.pid).includes(9229)) {
      if (performance.now() > end) {
        fail(`no inspector after SIGUSR1 (Deno no longer opens it? then this file's premise changed)\n${p.stderr}`);
      }
      await sleep(25);
    }
  } finally {
    await killAll();
  }
});

for (const how of STARTS) {
  Deno.test(`security (${how}): SIGUSR1 while load --listen waits for a peer opens nothing; the wait goes on`, async () => {
    await withTemp(async (t) => {
      await simCreate(`${t}/b`, "--size", "1M", "--seed", "1");
      const proc = start(how, ["load", "--device", `sim:${t}/b`, "--listen", "127.0.0.1:0"]);
      const m = await proc.waitStderr(/listening on 127\.0\.0\.1:(\d+)/, 20_000, "the listener");
      const port = Number(m[1]);
      assert(sigusr1Blocked(proc.pid), "SIGUSR1 blocked in the running process");
      // At once, and again well after Deno's own handler would be in place.
      proc.kill("SIGUSR1");
      await noOtherListener(proc.pid, [port], 700, "after a SIGUSR1 at the listening line");
      await sleep(Math.max(0, 1200 - (performance.now() - proc.started)));
      proc.kill("SIGUSR1");
      await noOtherListener(proc.pid, [port], 1500, "after a second SIGUSR1");
      assertEquals(listeningPorts(proc.pid), [port], "still listening for its peer, and on nothing else");
      assert(!proc.stderr.includes("Debugger"), proc.stderr);
      proc.kill("SIGTERM");
      const r = await proc.done(15_000);
      assertEquals(r.code, 130, show(r));
    });
  });

  Deno.test(`security (${how}): SIGUSR1 mid-transfer opens nothing and changes nothing; SIGUSR2 switches over`, async () => {
    await withTemp(async (t) => {
      const [a, b, file, log] = [`${t}/a`, `${t}/b`, `${t}/live.vfmig`, `${t}/a.log`];
      await simCreate(a, "--size", "16M", "--rate", "4G", "--seed", "2"); // never converges
      await simCreate(b, "--size", "16M", "--seed", "3");
      const p = start(how, [
        "save",
        "--live",
        "--json",
        "--downtime-limit",
        "1",
        "--max-precopy",
        "60000",
        "--device",
        `sim:${a}`,
        file,
      ], { VFIO_MIG_SIM_LOG: log });
      const end = performance.now() + 20_000;
      while (!(await logLines(log)).some((l) => l.key === "read:data_fd")) {
        assert(performance.now() < end, `pre-copy did not start\n${p.stderr}`);
        await sleep(20);
      }
      for (let i = 0; i < 3; i++) {
        p.kill("SIGUSR1");
        await noOtherListener(p.pid, [], 500, `after SIGUSR1 #${i + 1} in pre-copy`);
      }
      assert(!p.stderr.includes("Debugger"), p.stderr);
      p.kill("SIGUSR2");
      const r = await p.done(30_000);
      assertEquals(r.code, 0, show(r));
      assertEquals(jsonOf(r.stdout).switchReason, "requested", "SIGUSR2 asked for the switchover, SIGUSR1 did not");
      await ok(["load", "--device", `sim:${b}`, file]);
      assertEquals(await sha(b), await sha(a));
    });
  });
}

Deno.test("security: SIGUSR1 during start-up opens nothing: at worst (deno run cli.ts before its re-exec) it kills the process before anything is touched", async () => {
  await withTemp(async (t) => {
    await simCreate(`${t}/b`, "--size", "1M", "--seed", "4");
    for (const how of STARTS) {
      for (const at of [0, 15, 40, 80, 150, 300, 600]) {
        const log = `${t}/${how.replace(" ", "-")}-${at}.log`;
        // A port known before the start: the listener it was asked for may be bound before it says so.
        const asked = freePort();
        const p = start(how, ["load", "--device", `sim:${t}/b`, "--listen", `127.0.0.1:${asked}`], {
          VFIO_MIG_SIM_LOG: log,
        });
        await sleep(at);
        p.kill("SIGUSR1");
        await noOtherListener(p.pid, [asked], 0, `${how}, SIGUSR1 at ${at} ms`);
        const ended = await Promise.race([p.done(30_000), p.waitStderr(/listening on/, 30_000).then(() => null)]);
        if (ended) {
          // Only before the mask is set: the launcher's env blocks it within its first
          // millisecond; deno run cli.ts runs until cli.ts's first statement re-executes it.
          assert(how === "deno run" || at === 0, `${how}, SIGUSR1 at ${at} ms ended it\n${show(ended)}`);
          assertEquals(ended.signal, "SIGUSR1", show(ended));
          assertEquals(await logLines(log), [], "nothing touched");
          continue;
        }
        const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(p.stderr)![1]);
        assertEquals(port, asked, "it listens where it was told");
        await noOtherListener(p.pid, [port], 1200, `${how}, SIGUSR1 at ${at} ms`);
        assert(!p.stderr.includes("Debugger"), p.stderr);
        p.kill("SIGTERM");
        assertEquals((await p.done(15_000)).code, 130);
      }
    }
  });
});

Deno.test("security: SIGUSR2 to a command that is not a live save does nothing (never its default kill)", async () => {
  await withTemp(async (t) => {
    await simCreate(`${t}/b`, "--size", "1M", "--seed", "5");
    const { proc, port } = await listen(`${t}/b`, []);
    proc.kill("SIGUSR2");
    await sleep(800);
    assertEquals(listeningPorts(proc.pid), [port], "still waiting for its peer");
    proc.kill("SIGTERM");
    assertEquals((await proc.done(15_000)).code, 130);
  });
});

Deno.test("security: a program that imports mod.ts and runs a live save and a load keeps its signals' default actions", async () => {
  // No listener of ours stays or is added by a library call: after the operations, each
  // signal does to the host what it does to any Deno program (here: its default kill).
  await withTemp(async (t) => {
    const mod = new URL("../../mod.ts", import.meta.url).href;
    for (const sig of ["SIGUSR2", "SIGHUP", "SIGINT"] as const) {
      // --force: each signal's round starts from fresh devices in the same place.
      await simCreate(`${t}/a`, "--size", "16M", "--rate", "4G", "--seed", "6", "--force"); // never converges
      await simCreate(`${t}/b`, "--size", "16M", "--seed", "7", "--force");
      const code = `
        const { Cancellation, load, loadBackendsFor, openDevice, save } = await import(${JSON.stringify(mod)});
        await loadBackendsFor(${JSON.stringify([`sim:${t}/a`, `sim:${t}/b`])});
        const a = openDevice(${JSON.stringify(`sim:${t}/a`)}), b = openDevice(${JSON.stringify(`sim:${t}/b`)});
        const cancel = new Cancellation();
        setTimeout(() => cancel.requestSwitchover(), 300); // a library asks for the switchover itself
        const saved = await save(a, ${
        JSON.stringify(`${t}/a.vfmig`)
      }, { live: true, maxPrecopyMs: 30000, downtimeLimitMs: 1, cancel });
        await load(b, ${JSON.stringify(`${t}/a.vfmig`)});
        a.close(); b.close();
        console.log(saved.switchReason);
        Deno.kill(Deno.pid, ${JSON.stringify(sig)});
        await new Promise((r) => setTimeout(r, 3000));
        console.log("survived");`;
      const out = await new Deno.Command(DENO, { args: ["eval", "--ext=ts", code], stdout: "piped", stderr: "piped" })
        .output();
      const text = new TextDecoder().decode(out.stdout).trim();
      assertEquals(
        { out: text, signal: out.signal },
        { out: "requested", signal: sig },
        `${sig}: ${new TextDecoder().decode(out.stderr)}`,
      );
      assertEquals(await sha(`${t}/b`), await sha(`${t}/a`));
    }
  });
});

// ---------------------------------------------------------------------------
// Descriptors: an output given by number must be one the caller handed down.

Deno.test("security: --events fd:9 that nobody handed down is refused (exit 2) before anything is written", async () => {
  await withTemp(async (t) => {
    const [a, log, out] = [`${t}/a`, `${t}/a.log`, `${t}/out.vfmig`];
    await simCreate(a, "--size", "1M", "--seed", "8");
    const before = await sha(a);
    // Inside Deno, fd 9 is one of its own (a module-cache database, O_CLOEXEC): main wrote events into it.
    const r = await vfioMig(["save", "--device", `sim:${a}`, out, "--events", "fd:9"], {
      env: { VFIO_MIG_SIM_LOG: log },
    }).done(30_000);
    assertEquals(r.code, 2, show(r));
    const lines = r.stderr.trim().split("\n");
    assertEquals(lines.length, 1, show(r));
    assert(/^vfio-mig: --events fd:9: descriptor 9 was not handed to vfio-mig/.test(lines[0]), show(r));
    assertEquals((await logLines(log)).filter((l) => l.key === "open:device"), [], "the device was not opened");
    assertEquals(await sha(a), before);
    assert(!(await exists(out)), "no output");
    // Handed down by the shell, the same descriptor number is the caller's: written.
    const sh = await new Proc("sh", [
      "-c",
      `exec 9>>"$0"; exec "$1" run --allow-ffi "$2" save --device "sim:$3" "$4" --events fd:9`,
      `${t}/ev.jsonl`,
      DENO,
      `${ROOT}cli.ts`,
      a,
      out,
    ]).done(30_000);
    assertEquals(sh.code, 0, show(sh));
    const events = (await Deno.readTextFile(`${t}/ev.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
    assertEquals([events[0].type, events.at(-1).type], ["start", "result"]);
  });
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// URIs as QEMU's: tcp:HOST:PORT and file:PATH for save; load refuses tcp: naming
// --listen; a positional never becomes a file named like a URI.

Deno.test("security: saveTarget and loadInput read QEMU's URIs and refuse the rest", () => {
  assertEquals(saveTarget("tcp:127.0.0.1:7707"), "tcp://127.0.0.1:7707");
  assertEquals(saveTarget("tcp:[::1]:7707"), "tcp://[::1]:7707");
  assertEquals(saveTarget("tcp://dst:7707"), "tcp://dst:7707");
  assertEquals(saveTarget("file:/var/tmp/a.vfmig"), "/var/tmp/a.vfmig");
  assertEquals(saveTarget("-"), "-");
  assertEquals(saveTarget("./backup:1.vfmig"), "./backup:1.vfmig");
  assertEquals(saveTarget("/srv/x:y"), "/srv/x:y");
  assertEquals(loadInput("file:a.vfmig"), "a.vfmig");
  assertEquals(loadInput("a.vfmig"), "a.vfmig");
  const refused = (fn: () => unknown, re: RegExp) => {
    const e = assertThrows(fn, VfioMigError);
    assertEquals(e.exitCode, 2);
    assertMatch(e.message, re);
  };
  refused(() => saveTarget("tcp:dst"), /expected tcp:HOST:PORT/);
  refused(() => saveTarget("exec:gzip > /tmp/x"), /exec: is not supported .*save … - \| CMD/);
  refused(() => saveTarget("unix:/run/x.sock"), /unix: is not a transport .*write \.\/unix:\/run\/x\.sock/);
  refused(() => saveTarget("backup:1.vfmig"), /for a file of that name write \.\/backup:1\.vfmig/);
  refused(() => saveTarget("file:/a,offset=4096"), /offset= is not supported/);
  refused(() => loadInput("tcp:0:7707"), /--listen 0\.0\.0\.0:7707 \(every interface/);
  refused(() => loadInput("tcp:10.1.2.3:7707"), /give --listen 10\.1\.2\.3:7707$/);
  refused(() => loadInput("tcp://dst:7707"), /--listen dst:7707/);
  refused(() => loadInput("exec:zcat a.gz"), /CMD \| vfio-mig load … -/);
});

Deno.test("security: save tcp:HOST:PORT connects as tcp:// does; no file named like the URI", async () => {
  await withTemp(async (t) => {
    const [a, b] = [`${t}/a`, `${t}/b`];
    await simCreate(a, "--size", "2M", "--seed", "9");
    await simCreate(b, "--size", "2M", "--seed", "10");
    const { proc, port, token } = await listen(b, []);
    const uri = `tcp:127.0.0.1:${port}`;
    const r = await vfioMig(["save", "--device", `sim:${a}`, uri, "--token", token!]).done(30_000);
    assertEquals(r.code, 0, show(r));
    assertEquals((await proc.done(30_000)).code, 0);
    assertEquals(await sha(b), await sha(a));
    assert(!(await exists(`${ROOT}${uri}`)), "no file named like the URI in the working folder");
  });
});

Deno.test("security: a URI-like positional the tool does not take is refused before any device is touched", async () => {
  await withTemp(async (t) => {
    const [a, log] = [`${t}/a`, `${t}/a.log`];
    await simCreate(a, "--size", "1M", "--seed", "11");
    const cases: [string[], RegExp][] = [
      [["save", "--device", `sim:${a}`, "backup:1.vfmig"], /write \.\/backup:1\.vfmig/],
      [["save", "--device", `sim:${a}`, "exec:cat"], /exec: is not supported/],
      [["load", "--device", `sim:${a}`, "tcp:0:7707"], /give --listen 0\.0\.0\.0:7707/],
    ];
    for (const [args, re] of cases) {
      const r = await vfioMig(args, { env: { VFIO_MIG_SIM_LOG: log } }).done(30_000);
      assertEquals(r.code, 2, show(r));
      assertMatch(r.stderr.trim(), re);
      assertEquals(r.stderr.trim().split("\n").length, 1, show(r));
    }
    assertEquals((await logLines(log)).filter((l) => l.key === "open:device"), [], "no device opened");
    assert(!(await exists(`${ROOT}backup:1.vfmig`)), "no file");
  });
});
