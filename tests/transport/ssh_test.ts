// `vfio-mig save --device A - | ssh HOST vfio-mig load --device B -` end to end, against
// a real OpenSSH server (Debian's openssh-server) that the test starts on 127.0.0.1 with
// a generated host key and an authorized user key. Needs root (sshd and a root login)
// and the openssh-server / openssh-client binaries; tests/run.sh installs them. Without
// them the test is skipped, and says why.

import { assert, assertEquals, assertMatch, fail } from "../helpers/assert.ts";
import {
  BASE_ENV,
  CLI,
  DENO,
  euid,
  MiB,
  Proc,
  sha,
  show,
  simCreate,
  sleep,
  stateOf,
  withTemp,
} from "../helpers/proc.ts";

const SSHD = "/usr/sbin/sshd";

function which(name: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch { /* not here */ }
  }
  return null;
}

function skipReason(): string | null {
  if (euid() !== 0) return "needs root (sshd, and a root login on loopback)";
  try {
    Deno.statSync(SSHD);
  } catch {
    return `${SSHD} not found (apt-get install openssh-server)`;
  }
  for (const tool of ["ssh", "ssh-keygen"]) {
    if (!which(tool)) return `${tool} not found (apt-get install openssh-client)`;
  }
  return null;
}

const skip = skipReason();
if (skip) console.warn(`ssh_test: SKIPPED: ${skip}`);

async function run(cmd: string, args: string[]): Promise<string> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped", stdin: "null" }).output();
  const dec = new TextDecoder();
  if (!r.success) fail(`${cmd} ${args.join(" ")}: ${dec.decode(r.stderr)}`);
  return dec.decode(r.stdout);
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Waits for the SSH banner on the port; false when sshd ended first or nothing came in ms. */
async function sshReady(port: number, sshd: Proc, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  let exited = false;
  sshd.child.status.then(() => exited = true);
  while (performance.now() < end && !exited) {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        const buf = new Uint8Array(64);
        const n = await c.read(buf);
        if (n && new TextDecoder().decode(buf.subarray(0, n)).startsWith("SSH-2.0")) return true;
      } finally {
        c.close();
      }
    } catch { /* not listening yet */ }
    await sleep(50);
  }
  return false;
}

interface Sshd {
  proc: Proc;
  port: number;
  key: string;
}

/** Starts sshd -D on 127.0.0.1 with keys made in `dir` (a few ports are tried); a string says why it did not start. */
async function startSshd(dir: string): Promise<Sshd | string> {
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/host_key`]);
  await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/user_key`]);
  await Deno.copyFile(`${dir}/user_key.pub`, `${dir}/authorized_keys`);
  await Deno.chmod(`${dir}/authorized_keys`, 0o600);
  await Deno.writeTextFile(
    `${dir}/sshd_config`,
    [
      "ListenAddress 127.0.0.1",
      `HostKey ${dir}/host_key`,
      `PidFile ${dir}/sshd.pid`,
      `AuthorizedKeysFile ${dir}/authorized_keys`,
      "PermitRootLogin prohibit-password",
      "PubkeyAuthentication yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "StrictModes no",
      "LogLevel VERBOSE",
      "",
    ].join("\n"),
  );
  // The privilege separation directory the Debian package makes at boot (systemd-tmpfiles).
  await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  let last = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = freePort();
    const proc = new Proc(SSHD, ["-D", "-e", "-p", String(port), "-f", `${dir}/sshd_config`]);
    if (await sshReady(port, proc, 10_000)) return { proc, port, key: `${dir}/user_key` };
    proc.kill("SIGKILL");
    last = show(await proc.done(5000));
  }
  return last;
}

/** bash -c SCRIPT with the given variables, bounded. */
async function bash(script: string, vars: Record<string, string>, ms = 120_000) {
  const r = await new Proc("bash", ["-c", script], { env: { ...BASE_ENV, ...vars } }).done(ms);
  return r;
}

const SSH = `ssh -p "$PORT" -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null ` +
  `-o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1`;

Deno.test({
  name: "ssh: save - | ssh root@127.0.0.1 load - through a real sshd: offline, live, and a refused load",
  ignore: skip !== null,
  fn: async () => {
    await withTemp(async (t) => {
      await Deno.chmod(t, 0o700);
      const sshd = await startSshd(t);
      if (typeof sshd === "string") {
        // Installed but not startable here (e.g. no privilege separation possible): say so loudly.
        console.warn(`ssh_test: SKIPPED: sshd did not start on 127.0.0.1:\n${sshd}`);
        return;
      }
      try {
        const vars = { DENO, CLI, PORT: String(sshd.port), KEY: sshd.key };
        const [a, b, m] = [`${t}/a`, `${t}/b`, `${t}/m`];
        await simCreate(a, "--size", "48M", "--seed", "51", "--rate", "4M");
        await simCreate(b, "--size", "48M", "--seed", "52");
        await simCreate(m, "--model", "mtty-1");
        assert((await sha(a)) !== (await sha(b)));

        // Offline: the documented pipeline.
        const offline = await bash(
          `"$DENO" run --allow-ffi "$CLI" save -q --device "sim:$A" - | ` +
            `${SSH} "$DENO" run --allow-ffi "$CLI" load -q --device "sim:$B" -; echo "status: \${PIPESTATUS[*]}"`,
          { ...vars, A: a, B: b },
        );
        // sshd's own log (-e) says why a login failed (e.g. a root account locked with "!").
        assertEquals(offline.stdout.trim(), "status: 0 0", `${show(offline)}\n--- sshd\n${sshd.proc.stderr}`);
        assertEquals(await sha(b), await sha(a), "the state crossed ssh");
        assertEquals([await stateOf(a), await stateOf(b)], ["STOP", "RUNNING"]);

        // Live: pre-copy while the source runs and dirties its state; one-way, so no ack.
        await simCreate(a, "--size", "48M", "--seed", "53", "--rate", "8M", "--force"); // over the offline case's source
        const live = await bash(
          `"$DENO" run --allow-ffi "$CLI" save --live --json --device "sim:$A" - 2>"$T/save.json" | ` +
            `${SSH} "$DENO" run --allow-ffi "$CLI" load -q --device "sim:$B" -; echo "status: \${PIPESTATUS[*]}"`,
          { ...vars, A: a, B: b, T: t },
        );
        assertEquals(live.stdout.trim(), "status: 0 0", show(live));
        const s = JSON.parse(await Deno.readTextFile(`${t}/save.json`));
        assertEquals(s.switchReason, "converged");
        assert(s.precopyBytes >= 48 * MiB && s.downtimeMs > 0, JSON.stringify(s));
        assertEquals(await sha(b), await sha(a), "the live state crossed ssh");

        // The far end refuses the stream (another kind of device): the pipeline says so,
        // and the source is running again.
        await simCreate(a, "--size", "48M", "--seed", "54", "--force");
        const refused = await bash(
          `"$DENO" run --allow-ffi "$CLI" save --device "sim:$A" - | ` +
            `${SSH} "$DENO" run --allow-ffi "$CLI" load --device "sim:$M" -; echo "status: \${PIPESTATUS[*]}"`,
          { ...vars, A: a, M: m },
        );
        assertMatch(refused.stdout.trim(), /^status: 1 4$/, show(refused));
        assertMatch(refused.stderr, /load into sim:.*\/m refused: wrong device/);
        assertMatch(refused.stderr, /save from sim:.*: the reading end went away \(broken pipe\); sim:.* is RUNNING/);
        assertEquals(await stateOf(a), "RUNNING", "the source is back to RUNNING");
        assertEquals(await stateOf(m), "RUNNING", "the refused destination was not touched");
      } finally {
        sshd.proc.kill("SIGTERM");
        await sshd.proc.done(10_000);
      }
    });
  },
});
