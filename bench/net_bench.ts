// vfio-mig over TCP: throughput against socat moving the same bytes, and live migration
// of a bulk device that dirties its state while running: total time, iterations, and the
// downtime against its floor (what was left to send / the measured bandwidth).
// See bench/README.md ("Network").
//
//   deno task bench:net [--size 1G] [--rounds 5] [--warmup 1] [--cases tcp,live]
//                       [--rates 10,50] [--dir /dev/shm/vfio-mig-net-bench]
//                       [--out bench/results/net.json] [--no-verify]
//
// tcp   load --listen 127.0.0.1:0 --device sim:B  +  save --device sim:A tcp://…     (vfio-mig)
//       socat -u TCP-LISTEN:P CREATE:B/copy.bin  +  socat -u OPEN:A/state.bin TCP:…  ("socat")
//       the same into B/copy.tmp, then mv over B/copy.bin                          ("socat+mv")
//       (both socats with -b1048576). Wall time from starting the sender until both ends
//       exited; the listener is up before (its start is not counted on either side).
// live  A dirties R bytes/s (R = 10% and 50% of the tcp case's measured bandwidth), and
//       `save --live` migrates it to a listening load with the default 300 ms limit.
//       floor = (stop-copy bytes + what the TCP queue held at the switch) / bandwidth,
//       with the bandwidth the switchover was judged by (the last pre-copy iterations'),
//       and with the offline tcp bandwidth. Goal: downtime <= 1.1 x floor.

import { parseArgs } from "node:util";
import {
  die,
  GiB,
  holdDmaLatency,
  int,
  MiB,
  parseSize,
  type ProcStats,
  readTime,
  setBenchName,
  sh,
  shq,
  toolCommand,
} from "./common.ts";

setBenchName("bench:net");

const TIME = "/usr/bin/time";
const TOKEN = "bench-token-0123456789";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "1G" },
    rounds: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    cases: { type: "string", default: "tcp,live" },
    rates: { type: "string", default: "0,10,50" },
    dir: { type: "string", default: "/dev/shm/vfio-mig-net-bench" },
    out: { type: "string" },
    "no-verify": { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

if (opt.help) {
  console.log(`Usage: deno task bench:net [options]
  --size 1G              device state size
  --rounds 5             measured rounds (sides alternate within a round)
  --warmup 1             unmeasured rounds first
  --cases tcp,live       which cases
  --rates 0,10,50        live case: dirty rates, % of the measured TCP bandwidth (0: the
                         downtime's fixed part: state changes, config, trailer, round trip)
  --dir DIR              where the simulated devices live (tmpfs)
  --out FILE             JSON results (default bench/results/net.json)
  --no-verify            skip comparing the destination with the source`);
  Deno.exit(0);
}

const SIZE = parseSize(opt.size!);
const ROUNDS = int(opt.rounds!, "--rounds");
const WARMUP = int(opt.warmup!, "--warmup");
if (ROUNDS < 1) die("--rounds must be at least 1");
const CASES = opt.cases!.split(",").map((s) => s.trim()).filter(Boolean);
for (const c of CASES) if (c !== "tcp" && c !== "live") die(`unknown case ${c} (tcp, live)`);
const RATES = opt.rates!.split(",").map((s) => Number(s.trim())).filter((n) => n >= 0);
const DIR = opt.dir!.replace(/\/$/, "");
const OUT = opt.out ?? `${repo}/bench/results/net.json`;
const VERIFY = !opt["no-verify"];
const TOOL = toolCommand(repo);

async function cpuJiffies(): Promise<number> {
  const line = (await sh("head -1 /proc/stat")).stdout.trim().split(/\s+/).slice(1).map(Number);
  return line.reduce((a, b) => a + b, 0) - (line[3] + (line[4] ?? 0));
}

function json(path: string): Record<string, unknown> {
  const text = Deno.readTextFileSync(path);
  const start = text.indexOf("{");
  if (start < 0) throw new Error(`no JSON summary in ${path}: ${text.slice(0, 400)}`);
  return JSON.parse(text.slice(start, text.lastIndexOf("}") + 1));
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

/** Runs a script whose last stdout line is the measured wall time in ns; also the CPU all processes used. */
async function timedScript(script: string): Promise<{ wall: number; busyCpu: number }> {
  const before = await cpuJiffies();
  const r = await sh(`set -euo pipefail\n${script}`);
  const after = await cpuJiffies();
  const lines = r.stdout.trim().split("\n");
  return { wall: Number(lines[lines.length - 1]) / 1e9, busyCpu: (after - before) / 100 };
}

// Small result files (Deno would need --allow-all to read them under /dev/shm).
const W = await Deno.makeTempDir({ prefix: "vfio-mig-net-bench-" });

/** vfio-mig load --listen, then save to it; `saveArgs` go to save (e.g. --live). */
function toolScript(a: string, b: string, saveArgs: string): string {
  // Empty load.err first: the shell truncates it in the background child, maybe after the
  // loop below has read the previous run's "listening on" line.
  return `
: >${W}/load.err
${TIME} -o ${W}/load.time -f '%M %U %S' ${TOOL} load -q --json --device sim:${b} --listen 127.0.0.1:0 \\
  --token ${TOKEN} --accept-timeout 60000 >${W}/load.json 2>${W}/load.err &  # never waits for ever
L=$!
for i in $(seq 1000); do grep -q 'listening on' ${W}/load.err && break; sleep 0.005; done
PORT=$(sed -n 's/.*listening on 127\\.0\\.0\\.1:\\([0-9]*\\).*/\\1/p' ${W}/load.err)
t0=$(date +%s%N)
${TIME} -o ${W}/save.time -f '%M %U %S' ${TOOL} save -q --json ${saveArgs} --device sim:${a} \\
  tcp://127.0.0.1:$PORT --token ${TOKEN} >${W}/save.json
wait $L
t1=$(date +%s%N)
echo $((t1 - t0))`;
}

function socatScript(a: string, b: string, mv: boolean): string {
  const port = freePort();
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  const into = mv ? `${b}/copy.tmp` : `${b}/copy.bin`;
  return `
( ${TIME} -o ${W}/recv.time -f '%M %U %S' timeout 120 socat -b1048576 -u TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr \\
  CREATE:${into}${mv ? ` && mv ${b}/copy.tmp ${b}/copy.bin` : ""} ) &
L=$!
for i in $(seq 1000); do grep -qi ':${hex} 00000000:0000 0A' /proc/net/tcp && break; sleep 0.005; done
t0=$(date +%s%N)
${TIME} -o ${W}/send.time -f '%M %U %S' socat -b1048576 -u OPEN:${a}/state.bin TCP:127.0.0.1:${port}
wait $L
t1=$(date +%s%N)
echo $((t1 - t0))`;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function f(n: number, d = 2): string {
  return Number.isFinite(n) ? n.toFixed(d) : "-";
}

// ---------------------------------------------------------------------------

async function main() {
  for (const tool of [TIME, "socat"]) {
    if ((await sh(`command -v ${tool}`, false)).code !== 0) {
      die(`${tool} is needed (apt-get install ${tool === TIME ? "time" : "socat"})`);
    }
  }
  await sh(`mkdir -p ${shq(DIR)}`);
  const A = `${DIR}/a`, B = `${DIR}/b`;
  const dma = await holdDmaLatency();
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    deno: Deno.version.deno,
    cpus: (await sh("nproc")).stdout.trim(),
    size: SIZE,
    rounds: ROUNDS,
    warmup: WARMUP,
    dmaLatencyHeld: dma !== null,
  };
  const create = (path: string, seed: number, rate = 0) =>
    sh(
      `rm -rf ${shq(path)} && ${TOOL} sim create ${path} --size ${SIZE} --seed ${seed}${
        rate ? ` --rate ${Math.round(rate)}` : ""
      }`,
    );
  try {
    await create(A, 1);
    await create(B, 2);
    let bandwidth = NaN; // bytes/s, from the tcp case

    if (CASES.includes("tcp") || CASES.includes("live")) {
      // tcp: vfio-mig vs socat, sides rotated each round.
      const sides = ["vfio-mig", "socat", "socat+mv"] as const;
      const runs: Record<
        string,
        { wall: number; busyCpu: number; procs: Record<string, ProcStats>; inTool?: number }[]
      > = { "vfio-mig": [], socat: [], "socat+mv": [] };
      const rounds = CASES.includes("tcp") ? ROUNDS : Math.min(ROUNDS, 2);
      for (let round = 0; round < WARMUP + rounds; round++) {
        const order = sides.map((_, i) => sides[(i + round) % sides.length]);
        for (const side of order) {
          let r;
          if (side === "vfio-mig") {
            r = await timedScript(toolScript(A, B, "--resume"));
            const s = json(`${W}/save.json`);
            const procs = { save: readTime(`${W}/save.time`), load: readTime(`${W}/load.time`) };
            if (round >= WARMUP) runs[side].push({ ...r, procs, inTool: (s.bytes as number) / (s.seconds as number) });
          } else {
            r = await timedScript(socatScript(A, B, side === "socat+mv"));
            const procs = { send: readTime(`${W}/send.time`), recv: readTime(`${W}/recv.time`) };
            if (round >= WARMUP) runs[side].push({ ...r, procs });
          }
          console.error(`tcp round ${round + 1}${round < WARMUP ? " (warmup)" : ""} ${side}: ${f(r.wall, 3)} s`);
        }
      }
      if (VERIFY) {
        const c = await sh(`cmp -s ${A}/state.bin ${B}/state.bin && cmp -s ${A}/state.bin ${B}/copy.bin`, false);
        if (c.code !== 0) throw new Error("after the tcp case B does not hold A's state");
      }
      const walls = (s: string) => runs[s].map((x) => x.wall);
      const gibs = (w: number) => SIZE / GiB / w;
      const table = sides.map((s) => ({
        side: s,
        bestGiBs: gibs(Math.min(...walls(s))),
        medianGiBs: gibs(median(walls(s))),
        medianWall: median(walls(s)),
        ratioMedian: median(walls("socat")) / median(walls(s)),
        ratioMvMedian: median(walls("socat+mv")) / median(walls(s)),
        rssMiB: Object.fromEntries(
          Object.keys(runs[s][0].procs).map((k) => [k, Math.max(...runs[s].map((x) => x.procs[k].rssKiB)) / 1024]),
        ),
        busyCpuMedian: median(runs[s].map((x) => x.busyCpu)),
      }));
      bandwidth = median(runs["vfio-mig"].map((x) => x.inTool!));
      results.tcp = { runs, table, bandwidth };
      console.log(
        `\nTCP, ${opt.size} (${rounds} rounds): GiB/s best / median, ratio = socat's median wall / this one's`,
      );
      console.log("side        best   median  wall s  vs socat  vs socat+mv  peak RSS MiB");
      for (const t of table) {
        console.log(
          `${t.side.padEnd(10)} ${f(t.bestGiBs).padStart(5)}  ${f(t.medianGiBs).padStart(6)}  ${f(t.medianWall, 3)}  ` +
            `${f(t.ratioMedian).padStart(8)}  ${f(t.ratioMvMedian).padStart(11)}  ` +
            Object.entries(t.rssMiB).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", "),
        );
      }
      console.log(`vfio-mig in-tool bandwidth (bytes / save's seconds, median): ${f(bandwidth / MiB, 0)} MiB/s`);
    }

    if (CASES.includes("live")) {
      const live: Record<string, unknown>[] = [];
      for (const pct of RATES) {
        const rate = (bandwidth * pct) / 100;
        const rows: Record<string, number | string>[] = [];
        for (let round = 0; round < WARMUP + ROUNDS; round++) {
          await create(A, 10 + round, rate); // running, dirtying from now on
          const r = await timedScript(toolScript(A, B, "--live"));
          const s = json(`${W}/save.json`);
          const left = (s.stopCopyBytes as number) + (s.backlogAtSwitch as number) + (s.configBytes as number);
          const bw = s.bandwidth as number;
          const row = {
            round: round + 1,
            wall: r.wall,
            seconds: s.seconds as number,
            iterations: s.iterations as number,
            switchReason: s.switchReason as string,
            precopyBytes: s.precopyBytes as number,
            stopCopyBytes: s.stopCopyBytes as number,
            backlogAtSwitch: s.backlogAtSwitch as number,
            bandwidth: bw,
            downtimeMs: s.downtimeMs as number,
            downtimeToRunningMs: s.downtimeToRunningMs as number,
            floorMs: (left / bw) * 1000,
            floorTcpMs: (left / bandwidth) * 1000,
            busyCpu: r.busyCpu,
          };
          console.error(
            `live ${pct}% round ${round + 1}${round < WARMUP ? " (warmup)" : ""}: ${f(r.wall, 2)} s, ` +
              `${row.iterations} it, ${row.switchReason}, downtime ${f(row.downtimeMs, 1)} ms, floor ${
                f(row.floorMs, 1)
              } ms`,
          );
          if (round >= WARMUP) rows.push(row);
          if (VERIFY && round === WARMUP + ROUNDS - 1) {
            const c = await sh(`cmp -s ${A}/state.bin ${B}/state.bin`, false);
            if (c.code !== 0) throw new Error(`live ${pct}%: B does not hold A's final state`);
          }
        }
        const med = (k: string) => median(rows.map((x) => x[k] as number));
        live.push({
          pct,
          rate,
          rows,
          medianSeconds: med("seconds"),
          medianIterations: med("iterations"),
          medianStopCopyBytes: med("stopCopyBytes"),
          medianDowntimeMs: med("downtimeMs"),
          medianToRunningMs: med("downtimeToRunningMs"),
          medianFloorMs: med("floorMs"),
          medianRatio: median(rows.map((x) => (x.downtimeMs as number) / (x.floorMs as number))),
          medianRatioTcp: median(rows.map((x) => (x.downtimeMs as number) / (x.floorTcpMs as number))),
          converged: rows.filter((x) => x.switchReason === "converged").length,
        });
      }
      // The part of the downtime that does not depend on what is left: a device that
      // dirties nothing (0%) still changes state, sends its config and the trailer, and
      // waits for the destination.
      const zero = live.find((l) => l.pct === 0);
      const fixedMs = zero ? zero.medianDowntimeMs as number : 0;
      for (const l of live) {
        const rows = l.rows as Record<string, number>[];
        l.fixedMs = fixedMs;
        l.medianRatioBeyondFixed = median(rows.map((x) => (x.downtimeMs - fixedMs) / x.floorMs));
      }
      results.live = live;
      console.log(
        `\nLive, ${opt.size} dirtying at % of ${f(bandwidth / MiB, 0)} MiB/s, 300 ms limit (${ROUNDS} rounds, medians)`,
      );
      console.log(
        "rate  MiB/s  total s  iter  stop-copy MiB  downtime ms  to RUNNING ms  floor ms  ratio  " +
          "ratio beyond fixed  ratio (tcp bw)  converged",
      );
      for (const l of live as Record<string, number>[]) {
        const cells = [
          `${l.pct}%`.padStart(4),
          f(l.rate / MiB, 0).padStart(5),
          f(l.medianSeconds).padStart(7),
          String(l.medianIterations).padStart(4),
          f(l.medianStopCopyBytes / MiB, 1).padStart(13),
          f(l.medianDowntimeMs, 1).padStart(11),
          f(l.medianToRunningMs, 1).padStart(13),
          f(l.medianFloorMs, 1).padStart(8),
          (l.pct === 0 ? "-" : f(l.medianRatio)).padStart(5),
          (l.pct === 0 ? "-" : f(l.medianRatioBeyondFixed)).padStart(18),
          (l.pct === 0 ? "-" : f(l.medianRatioTcp)).padStart(14),
          `${l.converged}/${ROUNDS}`.padStart(9),
        ];
        console.log(cells.join("  "));
      }
      console.log(
        `floor = (stop-copy + TCP queue at the switch + config) / the bandwidth the switch was judged by; ` +
          `fixed = the 0% downtime (${f(fixedMs, 1)} ms)`,
      );
    }
  } finally {
    if (dma) {
      try {
        dma.kill("SIGKILL");
      } catch { /* gone */ }
      await dma.status;
    }
  }
  await Deno.remove(W, { recursive: true });
  await Deno.writeTextFile(OUT, JSON.stringify(results, null, 2) + "\n");
  console.log(`\nresults: ${OUT}`);
}

await main();
