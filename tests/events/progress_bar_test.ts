// The progress bar (src/events/progress_bar.ts): one line redrawn in place on a
// terminal — bytes, rate, ETA; the iteration and what is left when live — fitted to the
// terminal's width and cleared before the summary line; nothing when stderr is not a
// terminal. Driven under a pseudo-terminal by script(1) (util-linux) feeding it the
// events of a save (tests/helpers/progress_feed.ts).

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { Events } from "../../src/events/events.ts";
import { formatDuration, ProgressBar } from "../../src/events/progress_bar.ts";

const FEED = new URL("../helpers/progress_feed.ts", import.meta.url).pathname;
const CLEAR = "\r\x1b[K";
const MiB = 1 << 20;

function which(name: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return true;
    } catch { /* not here */ }
  }
  return false;
}

const noScript = which("script") ? null : "script (util-linux) not found";
if (noScript) console.warn(`progress_bar_test: pseudo-terminal tests SKIPPED: ${noScript}`);

/** Runs the feed under a pseudo-terminal `cols` wide; returns what the terminal received. */
async function underPty(mode: string, cols: number): Promise<string> {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const cmd = `stty cols ${cols}; exec ${q(Deno.execPath())} run --no-check ${q(FEED)} ${mode}`;
  const out = await new Deno.Command("script", {
    args: ["-qfec", cmd, "/dev/null"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", TERM: "xterm" },
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert(out.success, `script failed: ${text}\n${new TextDecoder().decode(out.stderr)}`);
  return text;
}

/** The frames the bar drew (each after a clear), and what followed the last clear. */
function frames(tty: string): { drawn: string[]; after: string; before: string } {
  const parts = tty.split(CLEAR);
  return { before: parts[0], drawn: parts.slice(1, -1), after: parts.at(-1)! };
}

Deno.test({
  name: "progress: a live save on a terminal: one line redrawn, iteration and what is left, cleared before the summary",
  ignore: noScript !== null,
  fn: async () => {
    const tty = await underPty("live", 120);
    const { drawn, after, before } = frames(tty);
    assertEquals(before, "", "nothing before the bar");
    assert(drawn.length >= 10, `redrawn often: ${drawn.length} frames`);
    for (const f of drawn) {
      assert(!f.includes("\n") && !f.includes("\r"), `one line, redrawn in place: ${JSON.stringify(f)}`);
      assert(f.length <= 119, `fits 120 columns: ${f.length}`);
    }
    // Pre-copy frames: the iteration, what is left against what fits.
    const pre = drawn.filter((f) => f.startsWith("save pre-copy #"));
    assert(pre.length >= 4, `pre-copy frames: ${JSON.stringify(drawn.slice(0, 5))}`);
    assert(
      pre.some((f) => /^save pre-copy #2 .* 25 MiB\/s {2}left ~43 MiB \(fits 8 MiB\) {2}1\.\ds$/.test(f)),
      JSON.stringify(pre),
    );
    assertMatch(pre[0], /^save pre-copy #1 {2}\[#+\.+\] {2}\d+ MiB \/ ~64 MiB {2}25 MiB\/s {2}0\.\ds$/);
    // Past the size estimate (the state was sent once and is being sent again), no bar.
    assert(pre.some((f) => /^save pre-copy #\d {2}7\d MiB {2}25 MiB\/s {2}left/.test(f)), JSON.stringify(pre));
    // Stop-copy frames follow; the last frame is followed by a clear, then only the summary.
    assert(drawn.some((f) => f.startsWith("save stop-copy")), "stop-copy drawn");
    assertEquals(after, "saved 80 MiB from sim:/tmp/a to /tmp/state.bin; device is STOP\r\n");
  },
});

Deno.test({
  name: "progress: an offline save on a terminal shows the bar, the total and an ETA",
  ignore: noScript !== null,
  fn: async () => {
    const { drawn, after } = frames(await underPty("offline", 100));
    const mid = drawn.find((f) => /32(\.\d+)? MiB \//.test(f)) ?? drawn[Math.floor(drawn.length / 2)];
    assertMatch(
      mid,
      /^save stop-copy {2}\[#{14,16}\.{14,16}\] {2}3\d MiB \/ ~64 MiB {2}25 MiB\/s {2}ETA 1\.\ds {2}1\.\ds$/,
    );
    assertMatch(after, /^saved 64 MiB /);
  },
});

Deno.test({
  name: "progress: a narrow terminal gets a shorter line, never a wrapped one",
  ignore: noScript !== null,
  fn: async () => {
    const { drawn } = frames(await underPty("live", 44));
    assert(drawn.length > 0);
    for (const f of drawn) assert(f.length <= 43, `${f.length} > 43: ${JSON.stringify(f)}`);
    assert(drawn.every((f) => f.startsWith("save ")), "the phase stays");
  },
});

Deno.test("progress: no terminal, no bar: stderr holds the summary line alone", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-check", FEED, "live"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  assert(out.success);
  assertEquals(
    new TextDecoder().decode(out.stderr),
    "saved 80 MiB from sim:/tmp/a to /tmp/state.bin; device is STOP\n",
  );
  assertEquals(new TextDecoder().decode(out.stdout), "");
});

Deno.test("progress: render() drops the least useful parts first as the width shrinks", () => {
  const bar = new ProgressBar({ write: () => {}, columns: () => 80 });
  const ev = new Events({
    now: (() => {
      let t = 0;
      return () => t += 150;
    })(),
  }).on(bar);
  ev.start({ command: "load" });
  ev.header({
    mode: "offline",
    protocol: "v2",
    devices: [{ index: 0, source: "a", protocol: "v2", sizeEstimate: 100 * MiB }],
  });
  ev.progress("resume", 0);
  ev.progress("resume", 40 * MiB);
  const wide = bar.render(120);
  assertMatch(wide, /^load resume {2}\[#{12}\.{18}\] {2}40 MiB \/ ~100 MiB {2}267 MiB\/s {2}ETA 0\.2s {2}0\.6s$/);
  const mid = bar.render(60);
  assert(mid.length <= 59 && mid.startsWith("load resume  40 MiB / ~100 MiB"), mid);
  const tiny = bar.render(20);
  assert(tiny.length <= 19 && tiny.startsWith("load resume"), tiny);
  assertEquals([formatDuration(4.25), formatDuration(185), formatDuration(3720)], ["4.3s", "3m05s", "1h02m"]);
});

Deno.test({
  name: "progress: the real save and load draw the bar on a terminal and print the summary after it; none without one",
  ignore: noScript !== null,
  fn: async () => {
    const t = await Deno.makeTempDir({ prefix: "vfio-mig-bar-" });
    try {
      const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
      const cli = `${q(Deno.execPath())} run --allow-ffi ${q(new URL("../../cli.ts", import.meta.url).pathname)}`;
      const run = async (args: string, pty: boolean) => {
        const cmd = `stty cols 100 2>/dev/null; ${cli} ${args}`;
        const out = pty
          ? await new Deno.Command("script", { args: ["-qfec", cmd, "/dev/null"], stdin: "null", stdout: "piped" })
            .output()
          : await new Deno.Command("sh", { args: ["-c", cmd], stdin: "null", stdout: "piped", stderr: "piped" })
            .output();
        const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr ?? new Uint8Array());
        assert(out.success, `${args}: ${text}`);
        return text;
      };
      await run(`sim create ${t}/a --model bulk --size ${256 * MiB} --seed 1`, false);
      await run(`sim create ${t}/b --model bulk --size ${256 * MiB} --seed 2`, false);
      for (
        const [what, args] of [["save", `save --device sim:${t}/a ${t}/s.vfmig`], [
          "load",
          `load --device sim:${t}/b ${t}/s.vfmig`,
        ]]
      ) {
        const tty = await run(args, true);
        const { drawn, after } = frames(tty);
        assert(drawn.length >= 1, `${what}: the bar was drawn on the terminal: ${JSON.stringify(tty.slice(0, 400))}`);
        for (const f of drawn) assertMatch(f, /MiB|GiB|KiB/, `${what}: a frame shows bytes: ${JSON.stringify(f)}`);
        assertMatch(
          after,
          new RegExp(`^${what === "save" ? "saved" : "loaded"} 256 MiB`), // the one byte format (src/units.ts)
          `${what}: the summary after the bar`,
        );
        const plain = await run(args, false);
        assert(
          !plain.includes("\x1b[K") && !plain.includes("\r"),
          `${what}: no bar without a terminal: ${JSON.stringify(plain)}`,
        );
      }
    } finally {
      await Deno.remove(t, { recursive: true });
    }
  },
});

Deno.test("progress: the finish phase shows the bar full, whatever the size estimate said", () => {
  const frames: string[] = [];
  const bar = new ProgressBar({ write: (s) => frames.push(s), columns: () => 100 });
  const ev = (t: number, type: string, f: Record<string, unknown> = {}) => bar.event({ v: 1, t, type, ...f });
  ev(0, "start", { command: "save", mode: "offline" });
  ev(1, "header", { mode: "offline", sizeEstimate: 512 * MiB });
  ev(2, "phase", { phase: "stop-copy", edge: "start" });
  ev(200, "progress", { phase: "stop-copy", bytes: 480 * MiB, rate: 500 * MiB, total: 512 * MiB });
  assertMatch(bar.render(100), /480 MiB \/ ~512 MiB/);
  ev(210, "phase", { phase: "stop-copy", edge: "end", bytes: 489 * MiB });
  ev(211, "phase", { phase: "trailer", edge: "end", bytes: 489 * MiB + 40 });
  ev(212, "phase", { phase: "finish", edge: "start" });
  const last = frames.at(-1)!;
  assert(last.startsWith(CLEAR), "a redraw");
  assertMatch(last.slice(CLEAR.length), /^save finish {2}\[#{30}\] {2}489 MiB \/ ~489 MiB {2}/, JSON.stringify(last));
  // A progress event in the finish phase does not bring the estimate back.
  ev(300, "progress", { phase: "finish", bytes: 489 * MiB + 40, rate: 0, total: 512 * MiB });
  assertMatch(bar.render(100), /\[#{30}\]/);
});

Deno.test({
  name: "progress: save - | load - on one terminal: one bar (save's), never two on one line",
  ignore: noScript !== null,
  fn: async () => {
    const t = await Deno.makeTempDir({ prefix: "vfio-mig-bar-" });
    try {
      const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
      const cli = `${q(Deno.execPath())} run --allow-ffi ${q(new URL("../../cli.ts", import.meta.url).pathname)}`;
      const sh = async (cmd: string, pty: boolean) => {
        const out = await new Deno.Command(pty ? "script" : "sh", {
          args: pty ? ["-qfec", `stty cols 100; ${cmd}`, "/dev/null"] : ["-c", cmd],
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output();
        const text = new TextDecoder().decode(out.stdout);
        assert(out.success, `${cmd}: ${text}${new TextDecoder().decode(out.stderr)}`);
        return text;
      };
      await sh(`${cli} sim create ${t}/a --model bulk --size 256M --seed 1 --yield-rate 256M`, false);
      await sh(`${cli} sim create ${t}/b --model bulk --size 256M --seed 2`, false);
      const tty = await sh(`${cli} save --device sim:${t}/a - | ${cli} load --device sim:${t}/b -`, true);
      const drawn = tty.split(CLEAR).slice(1).map((f) => f.split("\r\n")[0]).filter((f) => f);
      assert(
        drawn.some((f) => f.startsWith("save stop-copy")),
        `save's bar drawn: ${JSON.stringify(tty.slice(0, 300))}`,
      );
      const loads = drawn.filter((f) => f.startsWith("load "));
      assertEquals(loads, [], "load draws no bar under save's");
      assertMatch(tty, /saved 256(\.0)? MiB from .* to standard output/);
      assertMatch(tty, /loaded 256(\.0)? MiB into /);
      // load alone on a terminal still draws.
      await sh(`${cli} save --device sim:${t}/a ${t}/s.vfmig`, false);
      const alone = await sh(`cat ${t}/s.vfmig | ${cli} load --device sim:${t}/b -`, true);
      assert(
        alone.split(CLEAR).some((f) => f.startsWith("load ")),
        `load's bar: ${JSON.stringify(alone.slice(0, 300))}`,
      );
    } finally {
      await Deno.remove(t, { recursive: true });
    }
  },
});
