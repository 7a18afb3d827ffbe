// Helpers every benchmark script shares: option parsing, shell commands, /usr/bin/time
// output, and statistics.

import { parseArgs } from "node:util";

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

/**
 * Shell words that start the vfio-mig of checkout `repo` as users do: its bin/vfio-mig (SIGUSR1 blocked from exec,
 * so cli.ts does not re-execute itself: README "Security"; the commands' modules read lazily), with this Deno
 * (VFIO_MIG_DENO, set in this process's environment for every child). A checkout without bin/vfio-mig: `deno run
 * cli.ts` under the same `env`.
 */
export function toolCommand(repo: string): string {
  try {
    if (Deno.statSync(`${repo}/bin/vfio-mig`).isFile) {
      Deno.env.set("VFIO_MIG_DENO", Deno.execPath());
      return shq(repo + "/bin/vfio-mig");
    }
  } catch { /* an older checkout */ }
  return `env --block-signal=USR1 --ignore-signal=USR2 ${shq(Deno.execPath())} run --allow-ffi --allow-net ${
    shq(repo + "/cli.ts")
  }`;
}

export async function sh(script: string, check = true): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await new Deno.Command("bash", { args: ["-c", script], stdin: "null", stdout: "piped", stderr: "piped" })
    .output();
  const out = { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
  if (check && r.code !== 0) throw new Error(`command failed (exit ${r.code}): ${script}\n${out.stderr}${out.stdout}`);
  return out;
}

/** Runs `script` in bash (exit 0 required) and returns its wall time in seconds. */
export async function timed(script: string): Promise<number> {
  const t = performance.now();
  await sh(script);
  return (performance.now() - t) / 1000;
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

/** Busy and total jiffies of all CPUs (/proc/stat, read through the shell: Deno wants --allow-all for /proc). */
export async function cpuJiffies(): Promise<{ busy: number; total: number }> {
  const line = (await sh("head -1 /proc/stat")).stdout.trim().split(/\s+/).slice(1).map(Number);
  const total = line.reduce((a, b) => a + b, 0);
  return { busy: total - line[3] - (line[4] ?? 0), total }; // idle + iowait
}

/**
 * Keeps CPUs out of deep idle states: a helper process holds /dev/cpu_dma_latency open with a
 * 32-bit 0 written. null (and a warning) when that is not possible.
 */
export async function holdDmaLatency(): Promise<Deno.ChildProcess | null> {
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      `exec 3>/dev/cpu_dma_latency || exit 1; printf '\\0\\0\\0\\0' >&3 || exit 1; echo held; exec sleep infinity`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  const first = await Promise.race([reader.read(), new Promise<null>((r) => setTimeout(() => r(null), 2000))]);
  reader.releaseLock();
  if (first && !first.done && dec.decode(first.value).startsWith("held")) {
    child.stdout.cancel().catch(() => {});
    return child;
  }
  try {
    child.kill("SIGKILL");
  } catch { /* gone */ }
  await child.status;
  console.error(`${benchName}: warning: cannot hold /dev/cpu_dma_latency at 0; expect noisier numbers`);
  return null;
}

export async function releaseDmaLatency(child: Deno.ChildProcess | null): Promise<void> {
  if (!child) return;
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  await child.status;
}

/** A TCP port that was free a moment ago (needs --allow-net). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

/** Prints rows as an aligned text table, the first row a header. */
export function printTable(rows: string[][], indent = "  "): void {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const [i, r] of rows.entries()) {
    console.log(indent + r.map((c, j) => c.padEnd(widths[j])).join("  ").trimEnd());
    if (i === 0) console.log(indent + widths.map((w) => "-".repeat(w)).join("  "));
  }
}

/** "1G", "256M", "4K" for a byte count (binary units, whole numbers when exact). */
export function sizeLabel(bytes: number): string {
  for (const [u, n] of [["G", GiB], ["M", MiB], ["K", 1024]] as const) {
    if (bytes >= n && bytes % n === 0) return `${bytes / n}${u}`;
  }
  return String(bytes);
}

/** What the small file benches (sign, verify) take: --sizes, --rounds, --dir, --out, --help. */
export interface FileBenchOptions {
  sizes: number[];
  rounds: number;
  dir: string;
  out: string;
  /** The tool's command line, as toolCommand gives it for this checkout. */
  vm: string;
}

/**
 * Parses a file bench's options (exits after --help, dies on a bad --rounds); `defaults`
 * gives the usage line and the default sizes, rounds, dir and results file (under bench/results/).
 */
export function fileBenchOptions(
  args: string[],
  defaults: { usage: string; sizes: string; rounds: number; dir: string; out: string },
): FileBenchOptions {
  const { values: opt } = parseArgs({
    args,
    options: {
      sizes: { type: "string" },
      rounds: { type: "string" },
      dir: { type: "string" },
      out: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (opt.help) {
    console.log(defaults.usage);
    Deno.exit(0);
  }
  const rounds = Number(opt.rounds ?? String(defaults.rounds));
  if (!Number.isInteger(rounds) || rounds < 1) die("--rounds takes a whole number >= 1");
  return {
    sizes: (opt.sizes ?? defaults.sizes).split(",").map(parseSize),
    rounds,
    dir: opt.dir ?? defaults.dir,
    out: opt.out ?? new URL(`./results/${defaults.out}`, import.meta.url).pathname,
    vm: toolCommand(new URL("..", import.meta.url).pathname.replace(/\/$/, "")),
  };
}
