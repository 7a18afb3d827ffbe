// Helpers every benchmark script shares: option parsing, shell commands, /usr/bin/time
// output, and statistics.

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;
export const dec = new TextDecoder();

let benchName = "bench";

/** The name error messages start with ("bench:net", …). */
export function setBenchName(name: string): void {
  benchName = name;
}

export function die(msg: string): never {
  console.error(`${benchName}: ${msg}`);
  Deno.exit(2);
}

export function int(s: string, what: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) die(`${what} takes a whole number`);
  return n;
}

/** "256M", "2G", "4096". */
export function parseSize(s: string): number {
  const m = /^(\d+)([KMG]?)$/i.exec(s);
  if (!m) die(`bad size ${s} (e.g. 256M, 2G)`);
  return Number(m[1]) * { "": 1, K: 1024, M: MiB, G: GiB }[m[2].toUpperCase() as "" | "K" | "M" | "G"];
}

/** Quotes a word for bash. */
export function shq(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

export async function sh(script: string, check = true): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await new Deno.Command("bash", { args: ["-c", script], stdin: "null", stdout: "piped", stderr: "piped" })
    .output();
  const out = { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
  if (check && r.code !== 0) throw new Error(`command failed (exit ${r.code}): ${script}\n${out.stderr}${out.stdout}`);
  return out;
}

export async function loadAvg(): Promise<number[]> {
  return (await sh("cat /proc/loadavg")).stdout.trim().split(/\s+/).slice(0, 3).map(Number);
}

export interface ProcStats {
  rssKiB: number;
  user: number;
  sys: number;
}

/** /usr/bin/time -f "%M %U %S" output (its last line). */
export function readTime(path: string): ProcStats {
  const lines = Deno.readTextFileSync(path).trim().split("\n");
  const [m, u, s] = lines[lines.length - 1].trim().split(/\s+/).map(Number);
  return { rssKiB: m, user: u, sys: s };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
