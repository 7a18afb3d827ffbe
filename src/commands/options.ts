// The one option parser behaviour of every command: node:util's parseArgs reads the
// command line (non-strict, with its tokens), and this module decides what is wrong
// with it and says so in one line that tells what to do:
//
//   unknown option --nostart; did you mean --no-start? (see 'vfio-mig load --help')
//   --device needs a value (see 'vfio-mig save --help')
//   --downtime-limit does nothing without --live (see 'vfio-mig save --help')
//
// Durations and sizes are read by the same two functions everywhere (parseDuration,
// parseSize): `500` or `500ms`, `10s`, `2m`, `1h`; `4096`, `64K`, `64M`, `2G` (binary
// units). A negative number is invalid, not "ambiguous" (parseArgs' word for a value that
// starts with '-'); 0 is a value where the option says it means something.
//
// Why parseArgs and not an npm parser: it is part of the runtime (nothing to fetch in a
// guest without network), it already splits `--a=b`, `-qd X`, `--`, and gives tokens;
// what it lacks (suggestions, units, option dependencies) is this module's few lines.

import { parseArgs, type ParseArgsConfig } from "node:util";
import { VfioMigError } from "../errors.ts";

type ParseArgsOptions = NonNullable<ParseArgsConfig["options"]>;
type ParseArgsOption = ParseArgsOptions[string];

/**
 * When an option means something: another option given (`"live"`), or a test of the
 * parsed command line with the words the refusal uses ("a tcp:// output").
 */
export type Needs = string | {
  what: string;
  test: (values: Record<string, unknown>, positionals: string[]) => boolean;
};

/** A parseArgs option, with `needs`: the option does nothing unless that holds (refused, exit 2). */
export type OptionSpec = ParseArgsOption & { needs?: Needs };
export type OptionTable = Record<string, OptionSpec>;

const HELP_OPTION = { help: { type: "boolean", short: "h" } } as const;

type Parsed<O extends OptionTable> = {
  values: ReturnType<
    typeof parseArgs<{ options: O & typeof HELP_OPTION; allowPositionals: true; strict: true }>
  >["values"];
  positionals: string[];
};

function usageError(cmd: string, what: string): VfioMigError {
  return new VfioMigError(`${cmd}: ${what} (see 'vfio-mig ${cmd.split(" ")[0]} --help')`, "usage");
}

/** Edit distance (insertions, deletions, substitutions, adjacent swaps) of two short strings. */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/**
 * The known option closest to a misspelt one: the same letters without dashes
 * (`--nostart` → `--no-start`), a unique prefix (`--down` → `--downtime-limit`), or
 * within an edit distance of about a third of its length. Undefined when none is close.
 */
export function suggestOption(name: string, known: string[]): string | undefined {
  const bare = (s: string) => s.replace(/[-_]/g, "").toLowerCase();
  const same = known.find((k) => bare(k) === bare(name));
  if (same) return same;
  const prefixed = known.filter((k) => name.length >= 3 && k.startsWith(name));
  if (prefixed.length === 1) return prefixed[0];
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const dist = editDistance(name, k);
    if (dist < bestD) [best, bestD] = [k, dist];
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(Math.max(name.length, best.length) / 3))
    ? best
    : undefined;
}

function optionName(name: string, spec: OptionSpec | undefined): string {
  return name.length === 1 && spec === undefined ? `-${name}` : `--${name}`;
}

/**
 * Parses a command's arguments with --help/-h added. Errors (exit 2, one line, naming
 * `vfio-mig CMD --help`): an unknown option (with the closest known one), a string option
 * without its value, a value given to a boolean option, an option whose `needs` does
 * not hold. A string option's value may start with '-' (`--downtime-limit -5` is then
 * refused by parseDuration as negative), except when it is one of the command's own
 * options (`--device --json` is a --device without its value).
 */
export function parse<O extends OptionTable>(cmd: string, args: string[], options: O): Parsed<O> {
  const table: OptionTable = { ...options, ...HELP_OPTION };
  const config: ParseArgsOptions = {};
  const byShort = new Map<string, string>();
  for (const [name, spec] of Object.entries(table)) {
    const { needs: _needs, ...rest } = spec;
    config[name] = rest;
    if (spec.short) byShort.set(spec.short, name);
  }
  let parsed;
  try {
    parsed = parseArgs({ args, options: config, allowPositionals: true, strict: false, tokens: true });
  } catch (e) {
    throw usageError(cmd, e instanceof Error ? e.message.split("\n")[0] : String(e));
  }
  const known = Object.keys(table);
  const isOwnOption = (s: string) =>
    s.startsWith("--") ? s.slice(2).split("=")[0] in table : /^-[a-zA-Z]/.test(s) && byShort.has(s[1]);
  for (const t of parsed.tokens ?? []) {
    if (t.kind !== "option") continue;
    const spec = table[t.name];
    if (spec === undefined) {
      const shown = t.rawName;
      const hint = t.rawName.startsWith("--") ? suggestOption(t.name, known) : undefined;
      throw usageError(cmd, `unknown option ${shown}${hint ? `; did you mean --${hint}?` : ""}`);
    }
    const shown = optionName(t.name, spec);
    if (spec.type === "boolean" && t.value !== undefined) {
      throw usageError(cmd, `${shown} takes no value (given ${t.rawName}=${t.value})`);
    }
    if (spec.type === "string" && (t.value === undefined || (!t.inlineValue && isOwnOption(t.value)))) {
      throw usageError(cmd, `${t.rawName} needs a value`);
    }
  }
  const values = parsed.values as Record<string, unknown>;
  for (const [name, spec] of Object.entries(table)) {
    if (spec.needs === undefined || values[name] === undefined) continue;
    const needs = spec.needs;
    const holds = typeof needs === "string" ? values[needs] !== undefined : needs.test(values, parsed.positionals);
    if (!holds) {
      throw usageError(cmd, `--${name} does nothing without ${typeof needs === "string" ? `--${needs}` : needs.what}`);
    }
  }
  return { values: parsed.values as Parsed<O>["values"], positionals: parsed.positionals };
}

const DURATION_UNITS: Record<string, number> = { "": 1, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * A duration option's value in milliseconds: a number (milliseconds) with an optional
 * unit ms, s, m or h (`500`, `500ms`, `1.5s`, `10s`, `2m`). Undefined gives `dflt`.
 * Refused (usage, exit 2): no number, an unknown unit, a negative number, and 0 unless
 * `zero` says what 0 means for this option.
 */
export function parseDuration(
  text: string | undefined,
  name: string,
  dflt: number,
  opts: { zero?: boolean } = {},
): number {
  if (text === undefined) return dflt;
  const m = /^\s*(-?)(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$/i.exec(text);
  const example = "e.g. 500 or 500ms, 10s, 2m";
  if (!m) throw new VfioMigError(`--${name} takes a duration (${example}), not '${text}'`, "usage");
  if (m[1] === "-") throw new VfioMigError(`--${name} cannot be negative (given ${text})`, "usage");
  const ms = Number(m[2]) * DURATION_UNITS[(m[3] ?? "").toLowerCase()];
  if (ms === 0 && !opts.zero) throw new VfioMigError(`--${name} must be more than 0 (${example})`, "usage");
  return ms;
}

const SIZE_UNITS: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/**
 * A size option's value in bytes: a whole number with an optional binary unit K, M, G
 * or T (also KiB, MB …; all powers of 1024) and, for rates, an optional `/s`:
 * `4096`, `64K`, `64M`, `1.5G`, `100M/s`. Undefined gives `dflt`. Refused (usage, exit 2):
 * no number, an unknown unit, a negative number, a fraction of a byte.
 */
export function parseSize(text: string, name: string): number;
export function parseSize(text: string | undefined, name: string, dflt: number): number;
export function parseSize(text: string | undefined, name: string, dflt?: number): number {
  if (text === undefined) return dflt!;
  return sizeValue(text, name, "a size", "e.g. 4096, 64K, 64M, 2G");
}

function sizeValue(text: string, name: string, noun: string, example: string): number {
  const m = /^\s*(-?)(\d+(?:\.\d+)?|\.\d+)\s*([kmgt]?)(i?b)?(\/s)?\s*$/i.exec(text);
  if (!m) throw new VfioMigError(`--${name} takes ${noun} (${example}), not '${text}'`, "usage");
  if (m[1] === "-") throw new VfioMigError(`--${name} cannot be negative (given ${text})`, "usage");
  const bytes = Number(m[2]) * SIZE_UNITS[m[3].toLowerCase()];
  if (!Number.isSafeInteger(bytes)) {
    throw new VfioMigError(`--${name} takes a whole number of bytes (${example}), not '${text}'`, "usage");
  }
  return bytes;
}

/** What --help says of a RATE (parseRate). */
export const RATE_HELP = "RATE is bytes per second, with an optional binary unit and /s: 100M or 100M/s\n" +
  "(100 MiB/s), 1G, 512K; as QEMU's migrate_set_parameter max-bandwidth reads it.";

/**
 * A rate option's value in bytes per second (--max-bandwidth): a size as parseSize reads
 * it (`100M`, `1G`, `100M/s`, binary units as QEMU's max-bandwidth). Refused (usage, exit
 * 2): what parseSize refuses, and 0 (no rate; leave the option out for none).
 */
export function parseRate(text: string, name: string): number {
  const example = "e.g. 100M or 100M/s, 1G, 512K";
  const bytes = sizeValue(text, name, "a rate in bytes/s", example);
  if (bytes === 0) {
    throw new VfioMigError(`--${name} must be more than 0 bytes/s (${example}; leave it out for no limit)`, "usage");
  }
  return bytes;
}

/** A whole number option (a seed, a count): digits only, 0 allowed. */
export function parseCount(text: string | undefined, name: string, dflt: number): number {
  if (text === undefined) return dflt;
  if (/^\s*-\d/.test(text)) throw new VfioMigError(`--${name} cannot be negative (given ${text})`, "usage");
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) throw new VfioMigError(`--${name} takes a whole number, not '${text}'`, "usage");
  return n;
}
