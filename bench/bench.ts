// vfio-mig throughput and memory benchmark: save/load of simulated bulk devices, each
// beside baselines (cat) that move the same bytes in the same run. See bench/README.md.
//
//   deno task bench [--sizes 256M,2G] [--rounds 5] [--warmup 1] [--cases null,file,pipe]
//                   [--dir /dev/shm/vfio-mig-bench] [--out bench/results/latest.json]
//                   [--variant NAME=REPO_DIR ...] [--keep] [--no-verify]
//
// Cases (A, B: simulated bulk devices of the given size, on tmpfs):
//   null  vfio-mig save --device sim:A /dev/null        cat A/state.bin > /dev/null
//   file  vfio-mig save --device sim:A OUT              cat A/state.bin > OUT            ("cat", primary)
//                                                       cat A/state.bin > .OUT.tmp && mv .OUT.tmp OUT   ("cat+mv")
//   pipe  vfio-mig save --device sim:A - |              cat A/state.bin | cat > B/copy.bin               ("cat", primary)
//         vfio-mig load --device sim:B -                cat A/state.bin | (cat > B/copy.tmp && mv B/copy.tmp B/copy.bin)
//
// "cat" is the baseline the targets are stated against. "cat+mv" does what the tool and
// the simulator do with the bytes: the tool writes OUT under a temporary name and renames
// it, the simulator's load writes B/incoming.bin and renames it over B/state.bin. Both
// need fresh pages while the old file still exists, and on this VM fresh pages are
// slow (freed pages go back to the host), while `cat > OUT` refills the pages it just
// truncated. The ratio against "cat+mv" isolates the tool from that effect.

import { parseArgs } from "node:util";
import {
  dec,
  die,
  GiB,
  int,
  loadAvg,
  median,
  MiB,
  parseSize,
  type ProcStats,
  readTime,
  setBenchName,
  sh,
  shq,
} from "./common.ts";

setBenchName("bench");

const TIME = "/usr/bin/time";
const TINY = 4096;

// ---------------------------------------------------------------------------
// options

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    sizes: { type: "string", default: "256M,2G" },
    rounds: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    cases: { type: "string", default: "null,file,pipe" },
    dir: { type: "string", default: "/dev/shm/vfio-mig-bench" },
    out: { type: "string" },
    variant: { type: "string", multiple: true },
    keep: { type: "boolean", default: false },
    "no-verify": { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

if (opt.help) {
  console.log(`Usage: deno task bench [options]
  --sizes 256M,2G        device state sizes (K, M, G suffixes)
  --rounds 5             measured rounds per size (candidate and baselines alternate)
  --warmup 1             unmeasured rounds first
  --cases null,file,pipe which cases
  --dir DIR              where the simulated devices live (tmpfs; default /dev/shm/vfio-mig-bench)
  --out FILE             JSON results (default bench/results/latest.json)
  --variant NAME=DIR     a vfio-mig checkout to measure (repeatable: variants alternate in the
                         same rounds, for before/after comparisons); default: tool=${repo}
  --keep                 keep the devices in DIR (reused by the next run)
  --no-verify            skip comparing B with A after the pipe case`);
  Deno.exit(0);
}

type CaseName = "null" | "file" | "pipe";

const ROUNDS = int(opt.rounds!, "--rounds");
const WARMUP = int(opt.warmup!, "--warmup");
if (ROUNDS < 1) die("--rounds must be at least 1");
const SIZES = opt.sizes!.split(",").map((s) => s.trim()).filter(Boolean).map((s) => ({
  label: s,
  bytes: parseSize(s),
}));
const CASES = opt.cases!.split(",").map((s) => s.trim()).filter(Boolean) as CaseName[];
for (const c of CASES) if (!["null", "file", "pipe"].includes(c)) die(`unknown case ${c} (null, file, pipe)`);
const DIR = opt.dir!.replace(/\/$/, "");
const OUT = opt.out ?? `${repo}/bench/results/latest.json`;
const VERIFY = !opt["no-verify"];

interface Variant {
  name: string;
  dir: string;
  /** Shell words that run vfio-mig. */
  cmd: string;
  /** false when `save ... /dev/null` is unsafe with this version (it renamed over /dev/null). */
  devNullSafe: boolean;
}

const VARIANTS: Variant[] = (opt.variant?.length ? opt.variant : [`tool=${repo}`]).map((v) => {
  const eq = v.indexOf("=");
  if (eq <= 0) die(`--variant takes NAME=REPO_DIR, got ${v}`);
  const dir = v.slice(eq + 1).replace(/\/$/, "");
  return {
    name: v.slice(0, eq),
    dir,
    cmd: `${shq(Deno.execPath())} run --allow-ffi ${shq(dir + "/cli.ts")}`,
    devNullSafe: true,
  };
});

// ---------------------------------------------------------------------------
// running things

/** Busy and total jiffies of all CPUs (/proc/stat; Deno would need --allow-all to read /proc). */
async function cpuJiffies(): Promise<{ busy: number; total: number }> {
  const line = (await sh("head -1 /proc/stat")).stdout.trim().split(/\s+/).slice(1).map(Number);
  const total = line.reduce((a, b) => a + b, 0);
  const idle = line[3] + (line[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}

/** Runs a script (outputs to files); its wall time and the CPU seconds all processes used meanwhile. */
async function timed(script: string): Promise<{ wall: number; busyCpu: number }> {
  const before = await cpuJiffies();
  const cmd = new Deno.Command("bash", {
    args: ["-c", `set -o pipefail; ${script}`],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  });
  const t0 = performance.now();
  const r = await cmd.output();
  const wall = (performance.now() - t0) / 1000;
  const after = await cpuJiffies();
  if (r.code !== 0) throw new Error(`failed (exit ${r.code}): ${script}\n${dec.decode(r.stderr)}`);
  return { wall, busyCpu: (after.busy - before.busy) / 100 }; // USER_HZ is 100 on Linux
}

function timeWrap(out: string): string {
  return `${TIME} -o ${shq(out)} -f '%M %U %S'`;
}

/** The tool's --json summary: the last JSON object in the file. */
function readSummary(path: string): { seconds: number; bytes: number } {
  const text = Deno.readTextFileSync(path);
  const at = text.lastIndexOf("\n{");
  const start = at >= 0 ? at + 1 : text.indexOf("{");
  if (start < 0) throw new Error(`no JSON summary in ${path}: ${text.slice(0, 400)}`);
  const j = JSON.parse(text.slice(start));
  return { seconds: j.seconds, bytes: j.bytes };
}

// ---------------------------------------------------------------------------
// the machine

/**
 * Keeps CPUs out of deep idle states: a helper process holds /dev/cpu_dma_latency open
 * with a 32-bit 0 written (Deno itself would need --allow-all to open a /dev path).
 */
async function holdDmaLatency(): Promise<Deno.ChildProcess | null> {
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      `exec 3>/dev/cpu_dma_latency || exit 1; printf '\\0\\0\\0\\0' >&3 || exit 1; echo held; exec sleep infinity`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.getReader();
  const first = await reader.read();
  reader.releaseLock();
  if (first.done || !dec.decode(first.value).startsWith("held")) {
    const st = await child.status;
    const err = dec.decode(await new Response(child.stderr).arrayBuffer());
    console.error(
      `bench: warning: cannot hold /dev/cpu_dma_latency at 0 (exit ${st.code}: ${err.trim()}); expect noisier numbers`,
    );
    return null;
  }
  child.stdout.cancel().catch(() => {});
  child.stderr.cancel().catch(() => {});
  return child;
}

async function releaseDmaLatency(child: Deno.ChildProcess | null): Promise<void> {
  if (!child) return;
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  await child.status;
}

const DEV_NULL_OK = "character special file 1:3";

async function devNullIntact(): Promise<boolean> {
  return (await sh("stat -c '%F %t:%T' /dev/null", false)).stdout.trim() === DEV_NULL_OK;
}

/** Puts /dev/null back after a tool replaced it with a regular file. */
async function restoreDevNull(): Promise<void> {
  await sh("rm -f /dev/null && mknod -m 666 /dev/null c 1 3");
  if (!(await devNullIntact())) die("/dev/null is damaged and could not be restored: run mknod -m 666 /dev/null c 1 3");
}

async function environment(dmaHeld: boolean) {
  const txt = async (s: string) => (await sh(s, false)).stdout.trim();
  return {
    date: new Date().toISOString(),
    deno: Deno.version.deno,
    kernel: await txt("uname -r"),
    cpus: navigator.hardwareConcurrency,
    cpu: await txt("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
    memBytes: Number(await txt("awk '/MemTotal/{print $2*1024}' /proc/meminfo")),
    pipeMaxSize: Number(await txt("cat /proc/sys/fs/pipe-max-size")),
    dmaLatencyHeld: dmaHeld,
    loadAvgAtStart: await loadAvg(),
    dir: DIR,
    variants: await Promise.all(VARIANTS.map(async (v) => ({
      name: v.name,
      dir: v.dir,
      gitHead: await txt(`git -C ${shq(v.dir)} rev-parse --short HEAD 2>/dev/null`),
      gitDirty: (await txt(`git -C ${shq(v.dir)} status --porcelain -- src ffi cli.ts 2>/dev/null`)).split("\n")
        .filter(Boolean),
    }))),
  };
}

// ---------------------------------------------------------------------------
// devices (DIR is under /dev: everything inside it goes through the shell or the tool)

async function ensureDevice(tool: string, path: string, size: number): Promise<void> {
  const r = await sh(`cat ${shq(path + "/device.json")} && stat -c %s ${shq(path + "/state.bin")}`, false);
  if (r.code === 0) {
    try {
      const text = r.stdout.trim();
      const cut = text.lastIndexOf("\n");
      const meta = JSON.parse(text.slice(0, cut));
      if (meta.model === "bulk" && meta.size === size && meta.rate === 0 && Number(text.slice(cut + 1)) === size) {
        await sh(`${tool} reset --device ${shq("sim:" + path)} >/dev/null`);
        return;
      }
    } catch { /* recreate it */ }
  }
  await sh(`rm -rf ${shq(path)}`);
  await sh(`${tool} sim create ${shq(path)} --model bulk --size ${size} >/dev/null`);
}

// ---------------------------------------------------------------------------
// one run of each side

interface Run {
  wall: number;
  /** The tool's own seconds (max over its processes); null for a baseline. */
  inTool: number | null;
  procs: Record<string, ProcStats>;
  /** CPU seconds used by processes other than the measured ones during the run. */
  foreignCpu: number;
}

interface Ctx {
  size: number;
  a: string;
  b: string;
  outFile: string;
  tmp: string;
}

async function finish(script: string, names: string[], tmp: string, tool: boolean, size: number, what: string) {
  const { wall, busyCpu } = await timed(script);
  const procs: Record<string, ProcStats> = {};
  let inTool: number | null = null;
  let own = 0;
  for (const n of names) {
    procs[n] = readTime(`${tmp}/${n}.time`);
    own += procs[n].user + procs[n].sys;
    if (tool) {
      const s = readSummary(`${tmp}/${n}.json`);
      // device data = the state plus the bulk model's small headers
      if (s.bytes < size || s.bytes > size + 4096) {
        throw new Error(`${what}: ${n} moved ${s.bytes} bytes, expected ~${size}`);
      }
      inTool = Math.max(inTool ?? 0, s.seconds);
    }
  }
  return { wall, inTool, procs, foreignCpu: Math.max(0, busyCpu - own) };
}

async function runTool(v: Variant, c: CaseName, x: Ctx): Promise<Run> {
  await sh(`${v.cmd} state --device ${shq("sim:" + x.a)} RUNNING >/dev/null`); // the last save left it STOP
  const t = (n: string) => shq(`${x.tmp}/${n}`);
  const A = shq("sim:" + x.a), B = shq("sim:" + x.b);
  let script: string;
  let names: string[];
  switch (c) {
    case "null":
      script = v.devNullSafe
        ? `${timeWrap(t("save.time"))} ${v.cmd} save --device ${A} --json /dev/null >${t("save.json")}`
        : `${timeWrap(t("save.time"))} ${v.cmd} save --device ${A} --json - 2>${t("save.json")} >/dev/null`;
      names = ["save"];
      break;
    case "file":
      script = `${timeWrap(t("save.time"))} ${v.cmd} save --device ${A} --json ${shq(x.outFile)} >${t("save.json")}`;
      names = ["save"];
      break;
    case "pipe":
      script = `${timeWrap(t("save.time"))} ${v.cmd} save --device ${A} --json - 2>${t("save.json")} | ` +
        `${timeWrap(t("load.time"))} ${v.cmd} load --device ${B} --json - >${t("load.json")}`;
      names = ["save", "load"];
      break;
  }
  const r = await finish(script, names, x.tmp, true, x.size, `${v.name} ${c}`);
  if (c === "null" && !(await devNullIntact())) {
    await restoreDevNull();
    throw new Error(`${v.name}: 'save ... /dev/null' replaced /dev/null (restored it)`);
  }
  return r;
}

type BaselineName = "cat" | "cat+mv";

function baselinesOf(c: CaseName): BaselineName[] {
  return c === "null" ? ["cat"] : ["cat", "cat+mv"];
}

async function runBaseline(b: BaselineName, c: CaseName, x: Ctx): Promise<Run> {
  const t = (n: string) => shq(`${x.tmp}/${n}`);
  const src = shq(`${x.a}/state.bin`);
  const out = shq(x.outFile);
  const tmpOut = shq(`${x.outFile.slice(0, x.outFile.lastIndexOf("/"))}/.out.tmp`);
  const copy = shq(`${x.b}/copy.bin`), copyTmp = shq(`${x.b}/copy.tmp`);
  let script: string;
  let names: string[];
  switch (c) {
    case "null":
      script = `${timeWrap(t("cat1.time"))} cat ${src} >/dev/null`;
      names = ["cat1"];
      break;
    case "file":
      script = b === "cat"
        ? `${timeWrap(t("cat1.time"))} cat ${src} >${out}`
        : `${timeWrap(t("cat1.time"))} cat ${src} >${tmpOut} && mv ${tmpOut} ${out}`;
      names = ["cat1"];
      break;
    case "pipe":
      script = b === "cat"
        ? `${timeWrap(t("cat1.time"))} cat ${src} | ${timeWrap(t("cat2.time"))} cat >${copy}`
        : `${timeWrap(t("cat1.time"))} cat ${src} | { ${
          timeWrap(t("cat2.time"))
        } cat >${copyTmp} && mv ${copyTmp} ${copy}; }`;
      names = ["cat1", "cat2"];
      break;
  }
  return await finish(script, names, x.tmp, false, x.size, `${b} ${c}`);
}

// ---------------------------------------------------------------------------
// statistics

interface SideStats {
  bestGiBs: number;
  medianGiBs: number;
  walls: number[];
  inToolBestGiBs?: number;
  inToolMedianGiBs?: number;
  peakRssMiB: Record<string, number>;
  medianCpuSeconds: Record<string, { user: number; sys: number }>;
  medianForeignCpu: number;
}

function sideStats(size: number, runs: Run[]): SideStats {
  const rates = runs.map((r) => size / r.wall / GiB);
  const st: SideStats = {
    bestGiBs: Math.max(...rates),
    medianGiBs: median(rates),
    walls: runs.map((r) => r.wall),
    peakRssMiB: {},
    medianCpuSeconds: {},
    medianForeignCpu: median(runs.map((r) => r.foreignCpu)),
  };
  const tool = runs.filter((r) => r.inTool !== null).map((r) => size / r.inTool! / GiB);
  if (tool.length) {
    st.inToolBestGiBs = Math.max(...tool);
    st.inToolMedianGiBs = median(tool);
  }
  for (const name of Object.keys(runs[0].procs)) {
    st.peakRssMiB[name] = Math.max(...runs.map((r) => r.procs[name].rssKiB)) / 1024;
    st.medianCpuSeconds[name] = {
      user: median(runs.map((r) => r.procs[name].user)),
      sys: median(runs.map((r) => r.procs[name].sys)),
    };
  }
  return st;
}

const cpuSum = (s: SideStats) => Object.values(s.medianCpuSeconds).reduce((a, c) => a + c.user + c.sys, 0);

// ---------------------------------------------------------------------------
// main

const LABELS: Record<CaseName, string> = {
  null: "save /dev/null  vs  cat A > /dev/null",
  file: "save FILE  vs  cat A > FILE",
  pipe: "save - | load -  vs  cat A | cat > B/copy",
};

interface Result {
  size: string;
  bytes: number;
  case: CaseName;
  variant: string;
  tool: SideStats;
  baselines: Record<string, SideStats>;
  ratioBest: number;
  ratioMedian: number;
  ratioPairedMedian: number;
  sameSemantics?: { baseline: string; ratioBest: number; ratioMedian: number };
  fixedCostSeconds: { median: number; all: number[] };
  netBestGiBs: number | null;
  netMedianGiBs: number | null;
  ratioNetBest: number | null;
  ratioNetMedian: number | null;
  ratioInToolBest: number;
  ratioInToolMedian: number;
  peakRssMiB: number;
  meetsRatio: boolean;
  meetsRss: boolean;
}

async function main(): Promise<void> {
  if ((await sh(`test -x ${TIME}`, false)).code !== 0) {
    die(`${TIME} is missing (apt-get install time): it gives each process's peak RSS`);
  }
  await sh(`mkdir -p ${shq(DIR)}`);
  const [fs, free] = (await sh(`df -B1 --output=fstype,avail ${shq(DIR)} | tail -1`)).stdout.trim().split(/\s+/);
  if (fs !== "tmpfs") console.error(`bench: warning: ${DIR} is ${fs}, not tmpfs: the disk will be measured too`);
  const biggest = Math.max(...SIZES.map((s) => s.bytes));
  // A, B, B/incoming.bin during a load, B/copy.bin (+ copy.tmp), OUT + its temporary copy
  const need = biggest * (2 + (CASES.includes("pipe") ? 3 : 0) + (CASES.includes("file") ? 2 : 0)) + 64 * MiB;
  if (Number(free) < need) {
    die(`${DIR} has ${(Number(free) / GiB).toFixed(1)} GiB free; ${(need / GiB).toFixed(1)} GiB are needed`);
  }
  if (!(await devNullIntact())) die("/dev/null is not the character device 1:3: restore it first");

  const dma = await holdDmaLatency();
  const env = await environment(dma !== null);
  const tmp = Deno.makeTempDirSync({ prefix: "vfio-mig-bench-" }); // /usr/bin/time output, --json summaries
  console.log(
    `vfio-mig bench: sizes ${SIZES.map((s) => s.label).join(",")}, ${ROUNDS} rounds (+${WARMUP} warm-up), ` +
      `cases ${CASES.join(",")}, dir ${DIR} (${fs}), cpu_dma_latency ${dma ? "held at 0" : "NOT held"}, ` +
      `load average ${env.loadAvgAtStart.join(" ")}`,
  );
  for (const v of VARIANTS) console.log(`  ${v.name}: ${v.cmd}`);

  const results: Result[] = [];
  const loadAvgs: Record<string, number[]> = {};
  try {
    // tiny devices: the fixed cost of each command (startup, device open, state changes, rename)
    const tinyBase = `${DIR}/tiny`;
    const tiny: Ctx = { size: TINY, a: `${tinyBase}/A`, b: `${tinyBase}/B`, outFile: `${tinyBase}/out.vfiomig`, tmp };
    await sh(`mkdir -p ${shq(tinyBase)}`);
    await ensureDevice(VARIANTS[0].cmd, tiny.a, TINY);
    await ensureDevice(VARIANTS[0].cmd, tiny.b, TINY);
    if (CASES.includes("null")) {
      // Give each variant a private null device first: a version that renames its output
      // over a device would replace /dev/null for the whole machine.
      const probe = `${tinyBase}/null`;
      for (const v of VARIANTS) {
        const made = await sh(`rm -f ${shq(probe)} && mknod -m 666 ${shq(probe)} c 1 3`, false);
        let safe = made.code === 0;
        if (safe) {
          await sh(`${v.cmd} state --device ${shq("sim:" + tiny.a)} RUNNING >/dev/null`);
          await sh(`${v.cmd} save -q --device ${shq("sim:" + tiny.a)} ${shq(probe)}`, false);
          safe = (await sh(`stat -c '%F %t:%T' ${shq(probe)}`, false)).stdout.trim() === DEV_NULL_OK;
        }
        await sh(`rm -f ${shq(probe)}`, false);
        if (!safe) {
          v.devNullSafe = false;
          console.error(
            `bench: warning: ${v.name}: ` +
              (made.code === 0
                ? "'save FILE' replaced a device node with a regular file"
                : "cannot make a probe node") +
              `; its null case runs as 'save - > /dev/null' instead of 'save /dev/null'`,
          );
        }
      }
    }

    for (const size of SIZES) {
      const base = `${DIR}/${size.label}`;
      const x: Ctx = { size: size.bytes, a: `${base}/A`, b: `${base}/B`, outFile: `${base}/out.vfiomig`, tmp };
      console.log(`\n[${size.label}] devices ${x.a}, ${x.b}`);
      await sh(`mkdir -p ${shq(base)}`);
      await ensureDevice(VARIANTS[0].cmd, x.a, size.bytes);
      await ensureDevice(VARIANTS[0].cmd, x.b, size.bytes);
      const runs = new Map<string, Run[]>(); // `${case}|${side}`
      const fixed = new Map<string, number[]>(); // `${case}|${variant}`
      const push = <T>(m: Map<string, T[]>, k: string, v: T) => m.set(k, [...(m.get(k) ?? []), v]);
      const la0 = await loadAvg();
      for (let round = 0; round < WARMUP + ROUNDS; round++) {
        const warm = round < WARMUP;
        const parts: string[] = [];
        for (const c of CASES) {
          const sides = [...VARIANTS.map((v) => `tool:${v.name}`), ...baselinesOf(c).map((b) => `base:${b}`)];
          const k = round % sides.length;
          const order = [...sides.slice(k), ...sides.slice(0, k)]; // rotate who goes first
          const got = new Map<string, Run>();
          for (const side of order) {
            const [kind, name] = side.split(":") as ["tool" | "base", string];
            got.set(
              side,
              kind === "tool"
                ? await runTool(VARIANTS.find((v) => v.name === name)!, c, x)
                : await runBaseline(name as BaselineName, c, x),
            );
          }
          for (const v of VARIANTS) {
            const f = await runTool(v, c, tiny);
            if (!warm) push(fixed, `${c}|${v.name}`, f.wall);
          }
          if (!warm) { for (const [side, r] of got) push(runs, `${c}|${side}`, r); }
          const g = (side: string) => (size.bytes / got.get(side)!.wall / GiB).toFixed(2);
          parts.push(`${c} ${sides.map((s) => `${s.split(":")[1]} ${g(s)}`).join(" ")}`);
        }
        console.log(`  ${warm ? "warm-up" : `round ${round - WARMUP + 1}`} (GiB/s): ${parts.join(" | ")}`);
      }
      loadAvgs[size.label] = [...la0, ...(await loadAvg())];
      if (VERIFY && CASES.includes("pipe")) {
        const a = shq(x.a + "/state.bin");
        const r = await sh(`cmp ${a} ${shq(x.b + "/state.bin")} && cmp ${a} ${shq(x.b + "/copy.bin")}`, false);
        if (r.code !== 0) {
          throw new Error(`[${size.label}] B differs from A after the pipe case: ${r.stdout}${r.stderr}`);
        }
        console.log(`  verified: B/state.bin and B/copy.bin equal A/state.bin`);
      }
      for (const c of CASES) {
        const bases = Object.fromEntries(
          baselinesOf(c).map((b) => [b, sideStats(size.bytes, runs.get(`${c}|base:${b}`)!)]),
        );
        const primary = bases["cat"];
        const primaryRuns = runs.get(`${c}|base:cat`)!;
        for (const v of VARIANTS) {
          const toolRuns = runs.get(`${c}|tool:${v.name}`)!;
          const ts = sideStats(size.bytes, toolRuns);
          const fx = fixed.get(`${c}|${v.name}`)!;
          const fixedMedian = median(fx);
          // net = without the fixed cost; meaningless when the fixed cost is most of the run
          const netOk = median(ts.walls) - fixedMedian > 0.25 * median(ts.walls);
          const net = toolRuns.map((r) => netOk ? size.bytes / Math.max(r.wall - fixedMedian, 1e-3) / GiB : NaN);
          const peak = Math.max(...Object.values(ts.peakRssMiB));
          const same = bases["cat+mv"];
          results.push({
            size: size.label,
            bytes: size.bytes,
            case: c,
            variant: v.name,
            tool: ts,
            baselines: bases,
            ratioBest: ts.bestGiBs / primary.bestGiBs,
            ratioMedian: ts.medianGiBs / primary.medianGiBs,
            ratioPairedMedian: median(toolRuns.map((r, i) => primaryRuns[i].wall / r.wall)),
            ...(same
              ? {
                sameSemantics: {
                  baseline: "cat+mv",
                  ratioBest: ts.bestGiBs / same.bestGiBs,
                  ratioMedian: ts.medianGiBs / same.medianGiBs,
                },
              }
              : {}),
            fixedCostSeconds: { median: fixedMedian, all: fx },
            netBestGiBs: netOk ? Math.max(...net) : null,
            netMedianGiBs: netOk ? median(net) : null,
            ratioNetBest: netOk ? Math.max(...net) / primary.bestGiBs : null,
            ratioNetMedian: netOk ? median(net) / primary.medianGiBs : null,
            ratioInToolBest: ts.inToolBestGiBs! / primary.bestGiBs,
            ratioInToolMedian: ts.inToolMedianGiBs! / primary.medianGiBs,
            peakRssMiB: peak,
            meetsRatio: ts.medianGiBs / primary.medianGiBs >= 0.9,
            meetsRss: peak <= 64,
          });
        }
      }
      await sh(`rm -f ${shq(x.outFile)} ${shq(x.b + "/copy.bin")}`);
      if (!opt.keep) await sh(`rm -rf ${shq(base)}`);
    }
    if (!opt.keep) await sh(`rm -rf ${shq(tinyBase)}`);
  } finally {
    await releaseDmaLatency(dma);
    Deno.removeSync(tmp, { recursive: true });
  }

  // -------------------------------------------------------------------------
  // report
  const f2 = (n: number | undefined | null) => (n === undefined || n === null ? "-" : n.toFixed(2));
  const table = (rows: string[][]) => {
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
    for (const [i, r] of rows.entries()) {
      console.log("  " + r.map((c, j) => c.padEnd(widths[j])).join("  ").trimEnd());
      if (i === 0) console.log("  " + widths.map((w) => "-".repeat(w)).join("  "));
    }
  };
  const multi = VARIANTS.length > 1;
  console.log("\nThroughput (GiB/s of device state, end to end: wall time of the whole command or pipeline)");
  for (const c of CASES) console.log(`  ${c.padEnd(5)} ${LABELS[c]}`);
  console.log();
  table([
    [
      "size",
      "case",
      ...(multi ? ["variant"] : []),
      "tool best/med",
      "cat best/med",
      "ratio best/med",
      "peak RSS MiB",
      "targets",
    ],
    ...results.map((r) => [
      r.size,
      r.case,
      ...(multi ? [r.variant] : []),
      `${f2(r.tool.bestGiBs)} / ${f2(r.tool.medianGiBs)}`,
      `${f2(r.baselines["cat"].bestGiBs)} / ${f2(r.baselines["cat"].medianGiBs)}`,
      `${f2(r.ratioBest)} / ${f2(r.ratioMedian)}`,
      Object.entries(r.tool.peakRssMiB).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", "),
      `${r.meetsRatio ? "ratio ok" : "ratio < 0.9"}, ${r.meetsRss ? "RSS ok" : "RSS > 64 MiB"}`,
    ]),
  ]);
  console.log("\nWhere the gap comes from (ratios are tool/baseline, best / median)");
  console.log();
  table([
    [
      "size",
      "case",
      ...(multi ? ["variant"] : []),
      "vs cat+mv",
      "fixed ms",
      "net ratio",
      "in-tool GiB/s",
      "in-tool ratio",
      "CPU s tool/cat",
      "others' CPU s",
    ],
    ...results.map((r) => [
      r.size,
      r.case,
      ...(multi ? [r.variant] : []),
      r.sameSemantics ? `${f2(r.sameSemantics.ratioBest)} / ${f2(r.sameSemantics.ratioMedian)}` : "-",
      (r.fixedCostSeconds.median * 1000).toFixed(0),
      `${f2(r.ratioNetBest)} / ${f2(r.ratioNetMedian)}`,
      `${f2(r.tool.inToolBestGiBs)} / ${f2(r.tool.inToolMedianGiBs)}`,
      `${f2(r.ratioInToolBest)} / ${f2(r.ratioInToolMedian)}`,
      `${f2(cpuSum(r.tool))} / ${f2(cpuSum(r.baselines["cat"]))}`,
      f2(r.tool.medianForeignCpu),
    ]),
  ]);
  console.log(`
  vs cat+mv      against a baseline that also writes a new file and renames it (what the tool does for FILE,
                 and what the simulator's load does with B/incoming.bin): fresh pages are slow on this VM
  fixed ms       wall time of the same command on a ${TINY}-byte device (Deno startup, device open, state
                 changes, rename); net ratio = bytes / (wall - fixed) against cat
  in-tool        bytes / the tool's own --json seconds (save()/load() start to end, no startup)
  CPU s          median user+sys of all processes of the side (/usr/bin/time)
  others' CPU s  CPU seconds used by other processes on the machine during a tool run (median):
                 anything well above 0 means the numbers are disturbed
  load average   ${
    Object.entries(loadAvgs).map(([k, v]) => `${k}: ${v.slice(0, 3).join(" ")} -> ${v.slice(3).join(" ")}`).join("; ")
  }`);
  if (VARIANTS.some((v) => !v.devNullSafe)) {
    console.log(
      `  note: ${VARIANTS.filter((v) => !v.devNullSafe).map((v) => v.name).join(", ")} replaced a null device with a ` +
        `file in the probe (or could not be probed); their null case ran as 'save - > /dev/null'`,
    );
  }

  const json = {
    env,
    method: {
      rounds: ROUNDS,
      warmup: WARMUP,
      order: "sides rotate within each round (tool variants and baselines)",
      throughput: "bytes of device state / wall seconds of the whole command or pipeline",
      peakRss: "/usr/bin/time %M of each process",
      devNullSafe: Object.fromEntries(VARIANTS.map((v) => [v.name, v.devNullSafe])),
    },
    loadAverage: loadAvgs,
    results,
  };
  Deno.mkdirSync(OUT.slice(0, OUT.lastIndexOf("/")), { recursive: true });
  Deno.writeTextFileSync(OUT, JSON.stringify(json, null, 2) + "\n");
  console.log(`\nJSON results: ${OUT}`);
}

await main();
