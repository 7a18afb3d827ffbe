// `vfio-mig report` on the command line: HTML and SVG files, standard output, --json;
// a damaged events file is one line naming the file and line (exit 4), a bad command
// line is exit 2; nothing is left behind on failure.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { cli, ok, show } from "../helpers/proc.ts";
import { LIVE_TCP, TWO_DEVICES, writeModelEvents } from "../helpers/events_fixture.ts";

async function withEvents(fn: (dir: string, events: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-report-cli-" });
  try {
    const events = `${dir}/run.jsonl`;
    writeModelEvents(events, LIVE_TCP);
    await fn(dir, events);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("report CLI: writes the HTML page and the SVG picture, says where (-q: not); --json says what was drawn", () =>
  withEvents(async (dir, events) => {
    const r = await ok(["report", events, "-o", `${dir}/r.html`]);
    assertEquals(r.stdout, "");
    assertMatch(r.stderr, new RegExp(`^wrote ${dir}/r\\.html: a page of \\d+ events\n$`));
    const quiet = await ok(["report", "-q", events, "-o", `${dir}/q.html`]);
    assertEquals([quiet.stdout, quiet.stderr], ["", ""]);
    const html = await Deno.readTextFile(`${dir}/r.html`);
    assertMatch(html, /^<!DOCTYPE html>/);
    assertStringIncludes(html, `class="mark switchover"`);
    await ok(["report", events, "--output", `${dir}/r.svg`, "--title", "VF 0 to host B"]);
    const svg = await Deno.readTextFile(`${dir}/r.svg`);
    assertMatch(svg, /^<\?xml version="1.0" encoding="UTF-8"\?>\n<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assertStringIncludes(svg, ">VF 0 to host B</text>");
    // Default name: the events file's, as .html.
    await ok(["report", events]);
    assert((await Deno.stat(`${dir}/run.html`)).isFile, "run.html next to run.jsonl");
    const j = await ok(["report", events, "-o", `${dir}/j.svg`, "--json"]);
    const s = JSON.parse(j.stdout);
    assertEquals([s.command, s.format, s.result, s.exitCode, s.switchover.reason], [
      "report",
      "svg",
      "result",
      0,
      "converged",
    ]);
    assert(s.iterations >= 6 && s.events > 30, j.stdout);
    assertEquals(s.devices, ["sim:/var/tmp/vf0"]);
    // Standard output, and --format over the name; the temporary file is gone.
    const out = await ok(["report", events, "-o", "-", "--format", "svg"]);
    assertMatch(out.stdout, /^<\?xml/);
    assertEquals((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).filter((n) => n.includes(".tmp-")), []);
  }));

Deno.test("report CLI: reads standard input, and several devices", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-report-cli-" });
  try {
    writeModelEvents(`${dir}/two.jsonl`, TWO_DEVICES);
    const p = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-ffi",
        new URL("../../cli.ts", import.meta.url).pathname,
        "report",
        "-",
        "-o",
        `${dir}/two.html`,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = p.stdin.getWriter();
    await w.write(await Deno.readFile(`${dir}/two.jsonl`));
    await w.close();
    const r = await p.output();
    assertEquals(r.code, 0, new TextDecoder().decode(r.stderr));
    const html = await Deno.readTextFile(`${dir}/two.html`);
    assertEquals((html.match(/<g class="lane" /g) ?? []).length, 2);
    assertStringIncludes(html, "events from standard input");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report CLI: a damaged events file is one line with the file and line, exit 4, and no output", () =>
  withEvents(async (dir, events) => {
    const good = (await Deno.readTextFile(events)).split("\n");
    const st = good.findIndex((l) => l.includes(`"type":"state"`));
    const cases: [string, string, RegExp][] = [
      ["not JSON", [...good.slice(0, 2), "{not json", ...good.slice(2)].join("\n"), /line 3: not JSON \(/],
      ["cut in the middle of a line", good.join("\n").slice(0, 1500), /line \d+: not JSON \(/],
      [
        "a missing field",
        good.map((l, i) => i === st ? l.replace(/"to":"[A-Z_]+",/, "") : l).join("\n"),
        new RegExp(`line ${st + 1}: state: to is missing`),
      ],
      [
        "a newer schema",
        good.map((l, i) => i === 1 ? l.replace('"v":1', '"v":9') : l).join("\n"),
        /line 2: schema version 9 is newer than this vfio-mig reads \(1\)/,
      ],
      [
        "time going back",
        [good[0], good[2], good[1], ...good.slice(3)].join("\n"),
        /line 3: t goes back from 5\.1 to 3\.2/,
      ],
      ["no start", good.slice(1).join("\n"), /line 1: the first event is transport, not start/],
      ["empty", "", /run-bad\.jsonl: no events/],
      ["binary", "\x89PNG\r\n\x1a\n\0\0\0\rIHDR", /line 1: not JSON/],
    ];
    const bad = `${dir}/run-bad.jsonl`;
    for (const [what, text, re] of cases) {
      await Deno.writeTextFile(bad, text);
      const r = await cli(["report", bad, "-o", `${dir}/bad.html`]);
      assertEquals(r.code, 4, `${what}: ${show(r)}`);
      const lines = r.stderr.trimEnd().split("\n");
      assertEquals(lines.length, 1, `${what}: one line: ${r.stderr}`);
      assertMatch(lines[0], new RegExp(`^vfio-mig: report: ${bad.replace(/[.]/g, "\\.")}`));
      assertMatch(lines[0], re, what);
      assert(!(await exists(`${dir}/bad.html`)), `${what}: no report written`);
    }
    // Not UTF-8 at all.
    await Deno.writeFile(bad, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d, 0x0a]));
    const r = await cli(["report", bad, "-o", `${dir}/bad.html`]);
    assertEquals(r.code, 4);
    assertMatch(r.stderr, /^vfio-mig: report: .*: not UTF-8 text/);
  }));

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}

Deno.test("report CLI: usage errors are exit 2 with a line saying what to give", () =>
  withEvents(async (dir, events) => {
    const cases: [string[], RegExp][] = [
      [["report"], /give one events file/],
      [["report", events, events], /give one events file/],
      [["report", events, "-o", `${dir}/r.png`], /r\.png: the name should end in \.html or \.svg/],
      [["report", events, "--format", "pdf"], /--format takes html or svg \(not pdf\)/],
      [["report", `${dir}/missing.jsonl`], /missing\.jsonl: no such file/],
      [
        ["report", events, "-o", `${dir}/no/dir/r.html`],
        /cannot create .*r\.html: its folder .*\/no\/dir does not exist \(create it first\)/,
      ],
      [["report", events, "--bogus"], /report: unknown option --bogus \(see 'vfio-mig report --help'\)/],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      assertEquals(r.code, 2, `${args.join(" ")}: ${show(r)}`);
      assertEquals(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assertMatch(r.stderr, re);
    }
    const h = await ok(["report", "--help"]);
    assertMatch(h.stdout, /^Usage: vfio-mig report EVENTS\.jsonl\|- /);
    const top = await ok(["--help"]);
    assertMatch(top.stdout, /\n {2}report +draw an events file/);
  }));
