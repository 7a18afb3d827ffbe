// The one option parser behaviour (src/commands/options.ts): suggestions for misspelt
// options, balanced quotes, units for durations and sizes, 0 where meaningful, negative
// numbers invalid, options that do nothing in this mode refused; and the same behaviour
// seen from the command line of several commands.

import { assert, assertEquals, assertMatch, assertThrows } from "../helpers/assert.ts";
import { parse, parseCount, parseDuration, parseSize, suggestOption } from "../../src/commands/options.ts";
import { VfioMigError } from "../../src/errors.ts";
import { cli, simCreate, withTemp } from "../helpers/proc.ts";

const TABLE = {
  device: { type: "string", short: "d" },
  live: { type: "boolean" },
  "no-start": { type: "boolean" },
  "downtime-limit": { type: "string", needs: "live" },
  token: { type: "string", needs: { what: "a tcp:// output", test: (_: unknown, p: string[]) => /^tcp:/.test(p[0]) } },
  quiet: { type: "boolean", short: "q" },
} as const;

function usage(args: string[]): string {
  const e = assertThrows(() => parse("save", args, TABLE), VfioMigError);
  assertEquals(e.kind, "usage", e.message);
  // One line, quotes balanced, and the way to help.
  assert(!e.message.includes("\n"), e.message);
  assertEquals((e.message.match(/'/g) ?? []).length % 2, 0, `balanced quotes: ${e.message}`);
  assertMatch(e.message, /\(see 'vfio-mig save --help'\)$/);
  return e.message;
}

Deno.test("options: a misspelt option is refused with the closest known one", () => {
  assertMatch(usage(["--nostart"]), /^save: unknown option --nostart; did you mean --no-start\?/);
  assertMatch(usage(["--devise", "x"]), /did you mean --device\?/);
  assertMatch(usage(["--qiuet"]), /did you mean --quiet\?/);
  assertMatch(usage(["--downtime", "5"]), /did you mean --downtime-limit\?/);
  const far = usage(["--frobnicate"]);
  assertMatch(far, /^save: unknown option --frobnicate \(see/);
  assertMatch(usage(["-x"]), /unknown option -x/);
  assertEquals(suggestOption("nostart", ["no-start", "no-config"]), "no-start");
  assertEquals(suggestOption("jsn", ["json", "quiet"]), "json");
  assertEquals(suggestOption("zzzzzz", ["json", "quiet"]), undefined);
});

Deno.test("options: a missing value, a value for a flag, and values that start with '-'", () => {
  assertMatch(usage(["--device"]), /--device needs a value/);
  assertMatch(usage(["--device", "--live"]), /--device needs a value/);
  assertMatch(usage(["-d", "-q"]), /-d needs a value/);
  assertMatch(usage(["--live=yes"]), /--live takes no value/);
  // Not "ambiguous": the value is taken, and the typed reading says what is wrong with it.
  const { values } = parse("save", ["--live", "--downtime-limit", "-5", "out"], TABLE);
  assertEquals(values["downtime-limit"], "-5");
  assertThrows(
    () => parseDuration(values["downtime-limit"], "downtime-limit", 300),
    VfioMigError,
    "cannot be negative",
  );
  // '-' is a value (standard input or output), and `--` ends the options.
  assertEquals(parse("save", ["-d", "x", "--", "-q"], TABLE).positionals, ["-q"]);
  assertEquals(parse("save", ["-"], TABLE).positionals, ["-"]);
  assertEquals(parse("save", ["-qd", "x"], TABLE).values.device, "x");
  assertEquals(parse("save", ["-h"], TABLE).values.help, true);
});

Deno.test("options: an option that does nothing in this mode is refused", () => {
  assertMatch(usage(["--downtime-limit", "100", "out"]), /--downtime-limit does nothing without --live/);
  assertMatch(usage(["--token", "12345678", "out"]), /--token does nothing without a tcp:\/\/ output/);
  assertEquals(parse("save", ["--live", "--downtime-limit", "100", "out"], TABLE).values["downtime-limit"], "100");
  assertEquals(parse("save", ["--token", "12345678", "tcp://h:1"], TABLE).values.token, "12345678");
});

Deno.test("options: durations take ms, s, m, h; 0 only where it means something; negatives are invalid", () => {
  assertEquals(parseDuration(undefined, "x", 42), 42);
  assertEquals(parseDuration("500", "x", 0), 500);
  assertEquals(parseDuration("500ms", "x", 0), 500);
  assertEquals(parseDuration("10s", "x", 0), 10_000);
  assertEquals(parseDuration("1.5s", "x", 0), 1500);
  assertEquals(parseDuration("2m", "x", 0), 120_000);
  assertEquals(parseDuration("1h", "x", 0), 3_600_000);
  assertEquals(parseDuration("0", "x", 5, { zero: true }), 0);
  assertThrows(() => parseDuration("0", "idle-timeout", 5), VfioMigError, "--idle-timeout must be more than 0");
  assertThrows(() => parseDuration("-5", "x", 5), VfioMigError, "--x cannot be negative (given -5)");
  assertThrows(() => parseDuration("10 parsecs", "x", 5), VfioMigError, "--x takes a duration (e.g. 500 or 500ms");
  assertThrows(() => parseDuration("", "x", 5), VfioMigError, "takes a duration");
});

Deno.test("options: sizes take K, M, G, T (powers of 1024) and /s for rates; whole bytes only", () => {
  assertEquals(parseSize("4096", "size"), 4096);
  assertEquals(parseSize("64K", "size"), 64 << 10);
  assertEquals(parseSize("64M", "size"), 64 << 20);
  assertEquals(parseSize("64MiB", "size"), 64 << 20);
  assertEquals(parseSize("1.5G", "size"), 1.5 * 2 ** 30);
  assertEquals(parseSize("100M/s", "rate"), 100 << 20);
  assertEquals(parseSize("0", "size"), 0);
  assertEquals(parseSize(undefined, "size", 7), 7);
  assertThrows(() => parseSize("-1M", "size"), VfioMigError, "--size cannot be negative");
  assertThrows(() => parseSize("1.5", "size"), VfioMigError, "whole number of bytes");
  assertThrows(() => parseSize("lots", "size"), VfioMigError, "--size takes a size (e.g. 4096, 64K");
  assertEquals(parseCount("0", "seed", 1), 0);
  assertThrows(() => parseCount("-3", "seed", 1), VfioMigError, "cannot be negative");
  assertThrows(() => parseCount("3x", "seed", 1), VfioMigError, "whole number");
});

Deno.test("options from the command line: save, load, sim create answer alike (exit 2, one line)", async () => {
  await withTemp(async (t) => {
    await simCreate(`${t}/a`, "--model", "mtty-2", "--size", "4K", "--seed", "0");
    const cases: [string[], RegExp][] = [
      [
        ["load", "--nostart", "--device", `sim:${t}/a`, `${t}/x`],
        /unknown option --nostart; did you mean --no-start\?/,
      ],
      [
        ["save", "--live", "--downtime-limit", "-5", "-d", `sim:${t}/a`, `${t}/o`],
        /--downtime-limit cannot be negative/,
      ],
      [
        ["save", "--downtime-limit", "100", "-d", `sim:${t}/a`, `${t}/o`],
        /--downtime-limit does nothing without --live/,
      ],
      [["save", "--live", "--max-precopy", "10 years", "-d", `sim:${t}/a`, `${t}/o`], /--max-precopy takes a duration/],
      [["load", "--idle-timeout", "5s", "-d", `sim:${t}/a`, `${t}/x`], /--idle-timeout does nothing without --listen/],
      [["load", "--listen", "0", "--idle-timeout", "0", "-d", `sim:${t}/a`], /--idle-timeout must be more than 0/],
      [["sim", "create", `${t}/b`, "--size", "-4K"], /--size cannot be negative/],
      [
        ["sim", "create", `${t}/b`, "--sizee", "4K"],
        /unknown option --sizee; did you mean --size\?.*'vfio-mig sim --help'/,
      ],
      [["info", "--jsno"], /unknown option --jsno; did you mean --json\?/],
    ];
    for (const [args, says] of cases) {
      const r = await cli(args);
      const lines = r.stderr.trim().split("\n");
      assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assertEquals(lines.length, 1, r.stderr);
      assertMatch(lines[0], says);
    }
    // Units and 0 where they mean something are taken: a 0 ms limit converges only when
    // nothing is left, so --max-precopy (given in seconds) ends the pre-copy.
    const r = await cli([
      "save",
      "--live",
      "--downtime-limit",
      "0",
      "--max-precopy",
      "0.3s",
      "-d",
      `sim:${t}/a`,
      `${t}/o`,
    ]);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(r.stderr, /stopped by --max-precopy/);
  });
});
