// vfio-mig protocol v1 save throughput: the mmap'd data section (zero copy into write)
// and the pread path, beside cat of the same bytes, in the same rounds. See bench/README.md ("v1").
//
//   deno task bench:v1 [--sizes 256M,1G] [--data-sizes 4M,64M] [--rounds 7] [--warmup 1]
//                      [--sides mmap,pread,fault] [--dir /dev/shm/vfio-mig-v1-bench]
//                      [--out bench/results/v1.json] [--keep]
//
// Sides (A: a simulated v1 bulk device of the given size on tmpfs; one state.bin, hard-linked
// into every device of a size, so every side reads the very same pages):
//   mmap   save --protocol v1 --device sim:A /dev/null   A made with --sparse full
//   pread  the same                                      A made with --sparse none
//   fault  the same, VFIO_MIG_SIM_FAULTS=mmap:device@1=ENOMEM   --sparse full, the mmap fails: pread
//   cat    cat A/state.bin > /dev/null

import { parseArgs } from "node:util";
import {
  dec,
  die,
  GiB,
  holdDmaLatency,
  int,
  loadAvg,
  median,
  MiB,
  parseSize,
  setBenchName,
  sh,
  shq,
  toolCommand,
} from "./common.ts";

setBenchName("bench:v1");

const TIME = "/usr/bin/time";
const TINY = 4096;
const FAULT = "mmap:device@1=ENOMEM";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    sizes: { type: "string", default: "256M,1G" },
    "data-sizes": { type: "string", default: "4M,64M" },
    rounds: { type: "string", default: "7" },
    warmup: { type: "string", default: "1" },
    sides: { type: "string", default: "mmap,pread,fault" },
    dir: { type: "string", default: "/dev/shm/vfio-mig-v1-bench" },
    out: { type: "string" },
    keep: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

if (opt.help) {
  console.log(`Usage: deno task bench:v1 [options]
  --sizes 256M,1G        device state sizes (K, M, G suffixes)
  --data-sizes 4M,64M    v1 data section sizes (the chunk the device stages per data_offset read)
  --rounds 7             measured rounds (sides rotate within each round)
  --warmup 1             unmeasured rounds first
  --sides mmap,pread,fault   tool sides (cat always runs): mmap = --sparse full, pread = --sparse none,
                         fault = --sparse full with the first mmap failing (${FAULT})
  --dir DIR              where the devices live (tmpfs; default /dev/shm/vfio-mig-v1-bench)
  --out FILE             JSON results (default bench/results/v1.json)
  --keep                 keep the devices (reused by the next run)`);
  Deno.exit(0);
}

type Side = "mmap" | "pread" | "fault";
const SPARSE: Record<Side, "full" | "none"> = { mmap: "full", pread: "none", fault: "full" };

const list = (s: string) => s.split(",").map((x) => x.trim()).filter(Boolean);
const ROUNDS = int(opt.rounds!, "--rounds");
const WARMUP = int(opt.warmup!, "--warmup");
if (ROUNDS < 1) die("--rounds must be at least 1");
const SIZES = list(opt.sizes!).map((s) => ({ label: s, bytes: parseSize(s) }));
const DATA_SIZES = list(opt["data-sizes"]!).map((s) => ({ label: s, bytes: parseSize(s) }));
for (const d of DATA_SIZES) if (d.bytes % 4096 || !d.bytes) die(`data size ${d.label} is not a multiple of 4096`);
const SIDES = list(opt.sides!) as Side[];
for (const s of SIDES) if (!(s in SPARSE)) die(`unknown side ${s} (mmap, pread, fault)`);
const DIR = opt.dir!.replace(/\/$/, "");
const OUT = opt.out ?? `${repo}/bench/results/v1.json`;
const TOOL = toolCommand(repo);

// ---------------------------------------------------------------------------
// running things

/** Busy and total jiffies of all CPUs (/proc/stat). */
async function cpuJiffies(): Promise<{ busy: number; total: number }> {
  const line = (await sh("head -1 /proc/stat")).stdout.trim().split(/\s+/).slice(1).map(Number);
  const total = line.reduce((a, b) => a + b, 0);
  return { busy: total - line[3] - (line[4] ?? 0), total };
}

interface Run {
  wall: number;
  inTool: number | null;
  rssKiB: number;
  user: number;
  sys: number;
  /** CPU seconds other processes used meanwhile. */
  foreignCpu: number;
}

/** One measured command under /usr/bin/time; `json`: the tool's --json summary goes there. */
async function timed(script: string, tmp: string, json: boolean, expect: number, what: string): Promise<Run> {
  const tf = `${tmp}/run.time`, jf = `${tmp}/run.json`;
  const before = await cpuJiffies();
  const t0 = performance.now();
  const r = await new Deno.Command("bash", {
    args: ["-c", `${TIME} -o ${shq(tf)} -f '%M %U %S' ${script}${json ? ` >${shq(jf)}` : ""}`],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  const wall = (performance.now() - t0) / 1000;
  const after = await cpuJiffies();
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code}): ${script}\n${dec.decode(r.stderr)}`);
  const lines = Deno.readTextFileSync(tf).trim().split("\n");
  const [m, u, s] = lines[lines.length - 1].trim().split(/\s+/).map(Number);
  let inTool: number | null = null;
  if (json) {
    const j = JSON.parse(Deno.readTextFileSync(jf));
    if (j.bytes < expect || j.bytes > expect + 4096) throw new Error(`${what}: moved ${j.bytes} bytes, not ~${expect}`);
    inTool = j.seconds;
  }
  const foreignCpu = Math.max(0, (after.busy - before.busy) / 100 - u - s);
  return { wall, inTool, rssKiB: m, user: u, sys: s, foreignCpu };
}

const devPath = (base: string, side: Side, ds: string) => `${base}/${SPARSE[side]}-${ds}`;

async function runSide(side: Side | "cat", base: string, ds: string, bytes: number, tmp: string): Promise<Run> {
  if (side === "cat") return await timed(`cat ${shq(`${base}/state.bin`)} >/dev/null`, tmp, false, 0, "cat");
  const dev = devPath(base, side, ds);
  await sh(`${TOOL} reset --device ${shq("sim:" + dev)} >/dev/null`); // the last save left it stopped
  const env = side === "fault" ? `env VFIO_MIG_SIM_FAULTS=${FAULT} ` : "";
  const cmd = `${env}${TOOL} save --protocol v1 --device ${shq("sim:" + dev)} --json /dev/null`;
  return await timed(cmd, tmp, true, bytes, `${side} ${dev}`);
}

/** Devices of one size: one state.bin (base/state.bin), hard-linked into a device per layout and data size. */
async function makeDevices(base: string, bytes: number): Promise<void> {
  const layouts = [...new Set(SIDES.map((s) => SPARSE[s]))];
  const want = DATA_SIZES.flatMap((d) => layouts.map((l) => ({ dir: `${base}/${l}-${d.label}`, l, d })));
  const ok = async (dir: string, l: string, d: number) => {
    const r = await sh(`cat ${shq(dir + "/device.json")}`, false);
    if (r.code) return false;
    const m = JSON.parse(r.stdout);
    const same = await sh(`test ${shq(dir + "/state.bin")} -ef ${shq(base + "/state.bin")}`, false);
    return m.model === "bulk" && m.size === bytes && m.rate === 0 && m.v1?.dataSize === d && m.v1?.sparse === l &&
      same.code === 0;
  };
  await sh(`mkdir -p ${shq(base)}`);
  for (const w of want) {
    if (await ok(w.dir, w.l, w.d.bytes)) continue;
    await sh(`rm -rf ${shq(w.dir)}`);
    await sh(
      `${TOOL} sim create ${shq(w.dir)} --model bulk --size ${bytes} --seed 1 --protocol v1 ` +
        `--data-size ${w.d.bytes} --sparse ${w.l} >/dev/null`,
    );
    const st = shq(w.dir + "/state.bin"), master = shq(base + "/state.bin");
    // the same seed makes the same bytes: check, then share the pages
    if ((await sh(`test -f ${master}`, false)).code) await sh(`ln ${st} ${master}`);
    else await sh(`cmp ${st} ${master} && ln -f ${master} ${st}`);
  }
}

/** Device preads and staged chunks of one save (the simulator's call log). */
async function countPreads(side: Side, dev: string, tmp: string): Promise<{ chunks: number; preads: number }> {
  const log = `${tmp}/sim.log`;
  await sh(`rm -f ${shq(log)}; ${TOOL} reset --device ${shq("sim:" + dev)} >/dev/null`);
  const env = `VFIO_MIG_SIM_LOG=${shq(log)} ${side === "fault" ? `VFIO_MIG_SIM_FAULTS=${FAULT} ` : ""}`;
  await sh(`${env}${TOOL} save -q --protocol v1 --device ${shq("sim:" + dev)} /dev/null`);
  const text = Deno.readTextFileSync(log);
  return { chunks: (text.match(/"v1:stage"/g) ?? []).length, preads: (text.match(/"pread:device"/g) ?? []).length };
}

/**
 * Which path each side's save takes, once per setup: against a save of the --sparse full device
 * (mmap), the pread path makes at least one more device pread per staged chunk (the data).
 */
async function checkPaths(base: string, ds: string, tmp: string): Promise<Record<string, string>> {
  const ref = await countPreads("mmap", devPath(base, "mmap", ds), tmp);
  const out: Record<string, string> = {};
  for (const s of SIDES) {
    const c = s === "mmap" ? ref : await countPreads(s, devPath(base, s, ds), tmp);
    const extra = c.preads - ref.preads;
    const path = s === "mmap" ? "mmap" : extra >= c.chunks ? "pread" : "mmap";
    if (path !== (s === "mmap" ? "mmap" : "pread") || c.chunks !== ref.chunks) {
      throw new Error(
        `${s}: ${c.preads} device preads for ${c.chunks} chunks (mmap: ${ref.preads}): not the pread path`,
      );
    }
    out[s] = `${c.chunks} chunks, ${c.preads} device preads (${path})`;
  }
  return out;
}

// ---------------------------------------------------------------------------
// statistics

interface SideResult {
  bestGiBs: number;
  medianGiBs: number;
  walls: number[];
  inToolBestGiBs: number | null;
  inToolMedianGiBs: number | null;
  fixedSeconds: number[] | null;
  fixedMedianMs: number | null;
  netBestGiBs: number | null;
  netMedianGiBs: number | null;
  ratioBest: number | null;
  ratioMedian: number | null;
  ratioPairedMedian: number | null;
  ratioNetBest: number | null;
  ratioNetMedian: number | null;
  peakRssMiB: number;
  medianUser: number;
  medianSys: number;
  medianForeignCpu: number;
  maxForeignCpu: number;
}

function stats(bytes: number, runs: Run[], fixed: number[] | null, cat: Run[] | null): SideResult {
  const rates = runs.map((r) => bytes / r.wall / GiB);
  const inTool = runs.every((r) => r.inTool !== null) ? runs.map((r) => bytes / r.inTool! / GiB) : null;
  const fx = fixed ? median(fixed) : null;
  const netOk = fx !== null && median(runs.map((r) => r.wall)) - fx > 0.25 * median(runs.map((r) => r.wall));
  const net = netOk ? runs.map((r) => bytes / Math.max(r.wall - fx!, 1e-3) / GiB) : null;
  const catRates = cat?.map((r) => bytes / r.wall / GiB);
  const cb = catRates ? Math.max(...catRates) : null, cm = catRates ? median(catRates) : null;
  return {
    bestGiBs: Math.max(...rates),
    medianGiBs: median(rates),
    walls: runs.map((r) => r.wall),
    inToolBestGiBs: inTool ? Math.max(...inTool) : null,
    inToolMedianGiBs: inTool ? median(inTool) : null,
    fixedSeconds: fixed,
    fixedMedianMs: fx === null ? null : fx * 1000,
    netBestGiBs: net ? Math.max(...net) : null,
    netMedianGiBs: net ? median(net) : null,
    ratioBest: cb ? Math.max(...rates) / cb : null,
    ratioMedian: cm ? median(rates) / cm : null,
    ratioPairedMedian: cat ? median(runs.map((r, i) => cat[i].wall / r.wall)) : null,
    ratioNetBest: net && cb ? Math.max(...net) / cb : null,
    ratioNetMedian: net && cm ? median(net) / cm : null,
    peakRssMiB: Math.max(...runs.map((r) => r.rssKiB)) / 1024,
    medianUser: median(runs.map((r) => r.user)),
    medianSys: median(runs.map((r) => r.sys)),
    medianForeignCpu: median(runs.map((r) => r.foreignCpu)),
    maxForeignCpu: Math.max(...runs.map((r) => r.foreignCpu)),
  };
}

// ---------------------------------------------------------------------------
// main

interface Row {
  size: string;
  bytes: number;
  dataSize: string;
  path: Record<string, string>;
  loadAverage: number[];
  sides: Record<string, SideResult>;
}

async function main(): Promise<void> {
  if ((await sh(`test -x ${TIME}`, false)).code !== 0) die(`${TIME} is missing (apt-get install time)`);
  await sh(`mkdir -p ${shq(DIR)}`);
  const [fs, free] = (await sh(`df -B1 --output=fstype,avail ${shq(DIR)} | tail -1`)).stdout.trim().split(/\s+/);
  if (fs !== "tmpfs") console.error(`bench:v1: warning: ${DIR} is ${fs}, not tmpfs: the disk will be measured too`);
  const need = Math.max(...SIZES.map((s) => s.bytes)) * 2 + 64 * MiB; // one state.bin (+ one while creating)
  if (Number(free) < need) die(`${DIR} has ${(Number(free) / GiB).toFixed(1)} GiB free, ${need / GiB} needed`);

  const dma = await holdDmaLatency();
  const tmp = Deno.makeTempDirSync({ prefix: "vfio-mig-v1-bench-" });
  const txt = async (s: string) => (await sh(s, false)).stdout.trim();
  const env = {
    date: new Date().toISOString(),
    deno: Deno.version.deno,
    kernel: await txt("uname -r"),
    cpus: navigator.hardwareConcurrency,
    cpu: await txt("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
    dmaLatencyHeld: dma !== null,
    loadAvgAtStart: await loadAvg(),
    dir: DIR,
    gitHead: await txt(`git -C ${shq(repo)} rev-parse --short HEAD`),
    gitDirty: (await txt(`git -C ${shq(repo)} status --porcelain -- src ffi cli.ts`)).split("\n").filter(Boolean),
  };
  console.log(
    `vfio-mig bench:v1: sizes ${SIZES.map((s) => s.label)}, data sections ${DATA_SIZES.map((d) => d.label)}, ` +
      `${ROUNDS} rounds (+${WARMUP} warm-up), sides ${SIDES},cat, dir ${DIR} (${fs}), cpu_dma_latency ` +
      `${dma ? "held at 0" : "NOT held"}, load average ${env.loadAvgAtStart.join(" ")}`,
  );
  const rows: Row[] = [];
  const t0 = performance.now();
  try {
    const tinyBase = `${DIR}/tiny`;
    await makeDevices(tinyBase, TINY);
    for (const size of SIZES) {
      const base = `${DIR}/${size.label}`;
      await makeDevices(base, size.bytes);
      for (const ds of DATA_SIZES) {
        const path = await checkPaths(base, ds.label, tmp);
        console.log(`\n[${size.label}, data section ${ds.label}] ${SIDES.map((s) => `${s}: ${path[s]}`).join("; ")}`);
        const runs = new Map<string, Run[]>();
        const fixed = new Map<string, number[]>();
        const push = <T>(m: Map<string, T[]>, k: string, v: T) => m.set(k, [...(m.get(k) ?? []), v]);
        const la0 = await loadAvg();
        const all: (Side | "cat")[] = [...SIDES, "cat"];
        for (let round = 0; round < WARMUP + ROUNDS; round++) {
          const warm = round < WARMUP;
          const k = round % all.length;
          const order = [...all.slice(k), ...all.slice(0, k)];
          const got = new Map<string, Run>();
          for (const s of order) got.set(s, await runSide(s, base, ds.label, size.bytes, tmp));
          // the fixed cost: the same command on a 4 KiB device with the same layout and data section
          const fx = new Map<string, number>();
          for (const s of SIDES) fx.set(s, (await runSide(s, tinyBase, ds.label, TINY, tmp)).wall);
          if (!warm) {
            for (const [s, r] of got) push(runs, s, r);
            for (const [s, w] of fx) push(fixed, s, w);
          }
          const g = (s: string) => (size.bytes / got.get(s)!.wall / GiB).toFixed(2);
          const others = Math.max(...[...got.values()].map((r) => r.foreignCpu)).toFixed(2);
          console.log(
            `  ${warm ? "warm-up" : `round ${round - WARMUP + 1}`} (GiB/s): ${
              all.map((s) => `${s} ${g(s)}`).join("  ")
            }` +
              `  | others' CPU s max ${others}`,
          );
        }
        const cat = runs.get("cat")!;
        const sides: Record<string, SideResult> = { cat: stats(size.bytes, cat, null, null) };
        for (const s of SIDES) sides[s] = stats(size.bytes, runs.get(s)!, fixed.get(s)!, cat);
        rows.push({
          size: size.label,
          bytes: size.bytes,
          dataSize: ds.label,
          path,
          loadAverage: [...la0, ...(await loadAvg())],
          sides,
        });
      }
      if (!opt.keep) await sh(`rm -rf ${shq(base)}`);
    }
    if (!opt.keep) await sh(`rm -rf ${shq(tinyBase)}`);
  } finally {
    if (dma) {
      try {
        dma.kill("SIGTERM");
      } catch { /* gone */ }
      await dma.status;
    }
    Deno.removeSync(tmp, { recursive: true });
  }

  // -------------------------------------------------------------------------
  // report
  const f2 = (n: number | null) => (n === null ? "-" : n.toFixed(2));
  const table = (t: string[][]) => {
    const w = t[0].map((_, i) => Math.max(...t.map((r) => r[i].length)));
    for (const [i, r] of t.entries()) {
      console.log("  " + r.map((c, j) => c.padEnd(w[j])).join("  ").trimEnd());
      if (i === 0) console.log("  " + w.map((n) => "-".repeat(n)).join("  "));
    }
  };
  console.log("\nsave --protocol v1 --device sim:A /dev/null  vs  cat A/state.bin > /dev/null (GiB/s of state)\n");
  table([
    [
      "size",
      "data sec",
      "side",
      "GiB/s best/med",
      "cat best/med",
      "ratio best/med",
      "paired",
      "fixed ms",
      "net ratio b/m",
      "in-tool GiB/s",
      "RSS MiB",
      "user+sys s",
      "others' CPU s",
    ],
    ...rows.flatMap((r) =>
      SIDES.map((s) => {
        const x = r.sides[s], c = r.sides.cat;
        return [
          r.size,
          r.dataSize,
          s,
          `${f2(x.bestGiBs)} / ${f2(x.medianGiBs)}`,
          `${f2(c.bestGiBs)} / ${f2(c.medianGiBs)}`,
          `${f2(x.ratioBest)} / ${f2(x.ratioMedian)}`,
          f2(x.ratioPairedMedian),
          x.fixedMedianMs!.toFixed(0),
          `${f2(x.ratioNetBest)} / ${f2(x.ratioNetMedian)}`,
          `${f2(x.inToolBestGiBs)} / ${f2(x.inToolMedianGiBs)}`,
          x.peakRssMiB.toFixed(0),
          `${f2(x.medianUser + x.medianSys)} (cat ${f2(c.medianUser + c.medianSys)})`,
          `${f2(x.medianForeignCpu)} (max ${f2(x.maxForeignCpu)})`,
        ];
      })
    ),
  ]);
  console.log(`
  ratio          tool GiB/s / cat GiB/s (best / median); paired: median of cat wall / tool wall in the same round
  fixed ms       the same command on a ${TINY}-byte device with the same layout (Deno startup, device open,
                 region discovery, memfd + mmap, state changes); net ratio = bytes / (wall - fixed) against cat
  in-tool        bytes / the tool's --json seconds (save() start to end, no startup)
  others' CPU s  CPU seconds other processes used during a tool run (median, max): well above 0 = disturbed
  load average   ${rows.map((r) => `${r.size}/${r.dataSize}: ${r.loadAverage.join(" ")}`).join("; ")}
  total          ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  const json = {
    env,
    method: {
      rounds: ROUNDS,
      warmup: WARMUP,
      order: "sides rotate within each round",
      command: "save --protocol v1 --device sim:A --json /dev/null (after reset --device sim:A)",
      sides: { mmap: "--sparse full", pread: "--sparse none", fault: `--sparse full, VFIO_MIG_SIM_FAULTS=${FAULT}` },
      baseline: "cat A/state.bin > /dev/null (the same inode as every device's state.bin)",
      throughput: "device state bytes / wall seconds of the whole command",
      peakRss: "/usr/bin/time %M",
      fixed: `the same command on a ${TINY}-byte device, same layout and data section, in the same rounds`,
    },
    results: rows,
  };
  Deno.mkdirSync(OUT.slice(0, OUT.lastIndexOf("/")), { recursive: true });
  Deno.writeTextFileSync(OUT, JSON.stringify(json, null, 2) + "\n");
  console.log(`\nJSON results: ${OUT}`);
}

await main();
