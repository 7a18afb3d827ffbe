// src/signals.ts: SIGINT/SIGTERM/SIGHUP go to the newest claim, SIGUSR2 to the newest
// switchover claim; a signal that comes as a claim
// is released reaches the fallback (the command line's); releasing the last claim gives the process
// the default action back. Each case runs in a child process (the test runner has its
// own SIGINT listener), which signals itself and prints what its handlers saw.

import { assertEquals } from "../helpers/assert.ts";

const SIGNALS = new URL("../../src/signals.ts", import.meta.url).href;

async function child(body: string): Promise<{ out: string; signal: Deno.Signal | null }> {
  const code = `
    import { claimSignals, claimSwitchover, dropUnclaimedSignal, holdSwitchoverSignal, onUnclaimedSignal } from ${
    JSON.stringify(SIGNALS)
  };
    const got: string[] = [];
    const until = async (n: number) => {
      const end = performance.now() + 5000;
      while (got.length < n && performance.now() < end) await new Promise((r) => setTimeout(r, 5));
    };
    ${body}
    console.log(got.join(","));`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", code],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  return { out: new TextDecoder().decode(out.stdout).trim(), signal: out.signal };
}

Deno.test("signals: the newest claim gets the signal, then the one before it", async () => {
  const r = await child(`
    const releaseA = claimSignals((s) => got.push("A " + s));
    const releaseB = claimSignals((s) => got.push("B " + s));
    Deno.kill(Deno.pid, "SIGTERM");
    await until(1);
    releaseB();
    Deno.kill(Deno.pid, "SIGINT");
    await until(2);
    releaseA();`);
  assertEquals(r, { out: "B SIGTERM,A SIGINT", signal: null });
});

Deno.test("signals: a signal that comes as the claim is released goes to the fallback, not lost", async () => {
  // Deno runs a listener on a later turn than the signal's: with listeners added and
  // removed per operation, this signal was caught and then dropped (the process neither
  // handled it nor died).
  const r = await child(`
    onUnclaimedSignal((s) => got.push("fallback " + s));
    const claim = claimSignals((s) => got.push("claim " + s));
    Deno.kill(Deno.pid, "SIGINT");
    claim();
    await until(1);`);
  assertEquals(r, { out: "fallback SIGINT", signal: null });
});

Deno.test("signals: after the last claim is released, SIGINT has its default action again", async () => {
  const r = await child(`
    const release = claimSignals(() => got.push("claimed"));
    release();
    Deno.kill(Deno.pid, "SIGINT");
    await new Promise((r) => setTimeout(r, 3000));
    got.push("survived");`);
  assertEquals(r, { out: "", signal: "SIGINT" });
});

Deno.test("signals: once the fallback is dropped (a command that does not claim signals), SIGINT kills", async () => {
  const r = await child(`
    onUnclaimedSignal(() => got.push("fallback"));
    dropUnclaimedSignal();
    Deno.kill(Deno.pid, "SIGINT");
    await new Promise((r) => setTimeout(r, 3000));
    got.push("survived");`);
  assertEquals(r, { out: "", signal: "SIGINT" });
});

Deno.test("signals: SIGHUP is an interrupt like SIGINT and SIGTERM", async () => {
  const r = await child(`
    const release = claimSignals((s) => got.push(s));
    Deno.kill(Deno.pid, "SIGHUP");
    await until(1);
    release();`);
  assertEquals(r, { out: "SIGHUP", signal: null });
});

Deno.test("signals: SIGUSR2 goes to the newest switchover claim; with none it does nothing, never the default kill", async () => {
  const r = await child(`
    holdSwitchoverSignal();
    const release = claimSwitchover(() => got.push("switch"));
    Deno.kill(Deno.pid, "SIGUSR2");
    await until(1);
    release();
    Deno.kill(Deno.pid, "SIGUSR2");
    await new Promise((r) => setTimeout(r, 1500));
    got.push("survived");`);
  assertEquals(r, { out: "switch,survived", signal: null });
});

Deno.test("signals: without holdSwitchoverSignal (a library's process) SIGUSR2 keeps its default action", async () => {
  const r = await child(`
    const release = claimSwitchover(() => got.push("switch"));
    Deno.kill(Deno.pid, "SIGUSR2");
    await new Promise((r) => setTimeout(r, 1500));
    release();
    got.push("survived");`);
  assertEquals(r, { out: "", signal: "SIGUSR2" });
});
