// Several devices at once vs one after another (issue 6, item 4). Four simulated bulk
// devices that yield their state no faster than --rate (sim create --yield-rate, as
// real devices produce state slower than a link carries it), each --size bytes:
//
//   parallel  vfio-mig save --device A1 … --device A4 - | vfio-mig load --device B1 … --device B4 -
//   serial    for i in 1..4: vfio-mig save --device Ai - | vfio-mig load --device Bi -
//
// Measured per round, by the bench (watching the devices' device.json, written on every
// state change by the simulator): total wall time of the whole migration (Deno startups
// included); group downtime, from the first source leaving RUNNING to the last
// destination RUNNING (for devices that belong together, the time they are not all
// running); each device's own downtime (its source leaving RUNNING to its destination
// RUNNING). Plus the tool's own --json figures.
//
//   deno task bench:multi [--size 512M] [--rate 256M] [--devices 4] [--rounds 3] [--warmup 1]
//                         [--dir /dev/shm/vfio-mig-multibench] [--out bench/results/multi.json]
//                         [--clean] [--no-verify]

import { parseArgs } from "node:util";
import { dec, die, GiB, parseSize, setBenchName, shq, toolCommand } from "./common.ts";

setBenchName("bench:multi");

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "512M" },
    rate: { type: "string", default: "256M" },
    devices: { type: "string", default: "4" },
    rounds: { type: "string", default: "3" },
    warmup: { type: "string", default: "1" },
    dir: { type: "string", default: "/dev/shm/vfio-mig-multibench" },
    out: { type: "string" },
    clean: { type: "boolean", default: false },
    "no-verify": { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

if (opt.help) {
  console.log(`Usage: deno task bench:multi [options]
  --size 512M       state of each device (K, M, G suffixes)
  --rate 256M       bytes per second each source device yields its state (--yield-rate)
  --devices 4       how many devices
  --rounds 3        rounds (parallel and serial alternate, order rotated)
  --warmup 1        unmeasured rounds first (the first load into fresh tmpfs pages can be
                    several times slower on a VM that returns freed memory to its host)
  --dir DIR         where the simulated devices live (tmpfs; default /dev/shm/vfio-mig-multibench);
                    devices of the same size and rate are reused across runs
  --out FILE        JSON results (default bench/results/multi.json)
  --clean           remove the devices afterwards
  --no-verify       skip checking that every destination holds its source's state`);
  Deno.exit(0);
}

const SIZE = parseSize(opt.size!);
const RATE = parseSize(opt.rate!);
const N = Number(opt.devices);
const ROUNDS = Number(opt.rounds);
const WARMUP = Number(opt.warmup);
if (!Number.isInteger(N) || N < 2 || N > 16) die("--devices takes 2 to 16");
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) die("--rounds takes a whole number, at least 1");
if (!Number.isInteger(WARMUP) || WARMUP < 0) die("--warmup takes a whole number");
const DIR = opt.dir!.replace(/\/$/, "");
const OUT = opt.out ?? `${repo}/bench/results/multi.json`;
const TOOL = toolCommand(repo);
const SRC = Array.from({ length: N }, (_, i) => `${DIR}/src${i}`);
const DST = Array.from({ length: N }, (_, i) => `${DIR}/dst${i}`);

async function sh(script: string): Promise<string> {
  const r = await new Deno.Command("bash", {
    args: ["-c", `set -o pipefail; ${script}`],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (r.code !== 0) throw new Error(`failed (exit ${r.code}): ${script}\n${dec.decode(r.stderr)}`);
  return dec.decode(r.stdout);
}

async function meta(dir: string): Promise<Record<string, number> | null> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/device.json`));
  } catch {
    return null;
  }
}

/** Creates the devices unless ones of this size and rate are there already. */
async function setup(): Promise<void> {
  await Deno.mkdir(DIR, { recursive: true });
  await Promise.all([...SRC, ...DST].map(async (d, k) => {
    const src = k < N;
    const m = await meta(d);
    if (m && m.size === SIZE && (src ? m.yieldRate === RATE : !m.yieldRate)) return;
    const seed = src ? 100 + k : 200 + k;
    await sh(
      `rm -rf ${shq(d)} && ${TOOL} sim create ${shq(d)} --model bulk --size ${SIZE} --seed ${seed}` +
        (src ? ` --yield-rate ${RATE}` : ""),
    );
  }));
}

const RUNNING = 2;

interface Timeline {
  /** Per source: when it was first seen out of RUNNING (ms since the round's start). */
  left: (number | null)[];
  /** Per destination: when it was last seen reaching RUNNING after having left it. */
  running: (number | null)[];
}

/**
 * Watches every device.json (the simulator persists the state on each change) and
 * notes when sources leave RUNNING and destinations come back to it.
 */
function watch(t0: number): { timeline: Timeline; stop: () => Promise<void> } {
  const timeline: Timeline = { left: SRC.map(() => null), running: DST.map(() => null) };
  const left = DST.map(() => false);
  const watcher = Deno.watchFs(DIR, { recursive: true });
  const index = new Map<string, { src: boolean; i: number }>();
  SRC.forEach((d, i) => index.set(d, { src: true, i }));
  DST.forEach((d, i) => index.set(d, { src: false, i }));
  const pending: Promise<void>[] = [];
  const loop = (async () => {
    for await (const ev of watcher) {
      const at = performance.now() - t0;
      for (const p of ev.paths) {
        const slash = p.lastIndexOf("/");
        if (!p.slice(slash + 1).startsWith("device.json")) continue;
        const who = index.get(p.slice(0, slash));
        if (!who) continue;
        pending.push((async () => {
          const m = await meta(p.slice(0, slash));
          if (!m) return;
          if (who.src) {
            if (m.state !== RUNNING && timeline.left[who.i] === null) timeline.left[who.i] = at;
          } else if (m.state !== RUNNING) left[who.i] = true;
          else if (left[who.i]) timeline.running[who.i] = at;
        })());
      }
    }
  })();
  return {
    timeline,
    stop: async () => {
      await new Promise((r) => setTimeout(r, 100));
      watcher.close();
      await loop;
      await Promise.all(pending);
    },
  };
}

interface Result {
  mode: "parallel" | "serial";
  round: number;
  totalS: number;
  groupDowntimeS: number;
  maxDeviceDowntimeS: number;
  deviceDowntimeS: number[];
  /** The tool's own figures: save seconds (summed over the serial saves) and downtime ms (max). */
  toolSaveS: number;
  toolDowntimeMs: number;
}

async function round(mode: "parallel" | "serial", n: number): Promise<Result> {
  // Every source RUNNING again (a save leaves it in STOP).
  await sh(SRC.map((d) => `${TOOL} state --device ${shq("sim:" + d)} RUNNING >/dev/null`).join(" && "));
  const tmp = await Deno.makeTempDir({ prefix: "vfio-mig-multibench-" });
  const dev = (ds: string[]) => ds.map((d) => `--device ${shq("sim:" + d)}`).join(" ");
  const pipeline = (s: string[], d: string[], k: number) =>
    `${TOOL} save -q --json ${dev(s)} - 2>${tmp}/save${k}.json | ${TOOL} load -q --json ${
      dev(d)
    } - >${tmp}/load${k}.json`;
  const script = mode === "parallel"
    ? pipeline(SRC, DST, 0)
    : SRC.map((_, i) => pipeline([SRC[i]], [DST[i]], i)).join(" && ");
  const t0 = performance.now();
  const w = watch(t0);
  await sh(script);
  const totalS = (performance.now() - t0) / 1000;
  await w.stop();
  const { left, running } = w.timeline;
  if (left.some((x) => x === null) || running.some((x) => x === null)) {
    throw new Error(`missed a state change: sources left RUNNING at ${left}, destinations RUNNING at ${running}`);
  }
  const per = left.map((l, i) => (running[i]! - l!) / 1000);
  const saves = await Promise.all(
    (mode === "parallel" ? [0] : SRC.map((_, i) => i)).map(async (k) =>
      JSON.parse(await Deno.readTextFile(`${tmp}/save${k}.json`))
    ),
  );
  await Deno.remove(tmp, { recursive: true });
  return {
    mode,
    round: n,
    totalS,
    groupDowntimeS: (Math.max(...running.map(Number)) - Math.min(...left.map(Number))) / 1000,
    maxDeviceDowntimeS: Math.max(...per),
    deviceDowntimeS: per,
    toolSaveS: saves.reduce((a, s) => a + s.seconds, 0),
    toolDowntimeMs: Math.max(...saves.map((s) => s.downtimeMs)),
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

// ---------------------------------------------------------------------------

console.error(
  `bench:multi: ${N} devices x ${opt.size} yielding at ${opt.rate}/s each, ${ROUNDS} rounds, in ${DIR}`,
);
const tSetup = performance.now();
await setup();
console.error(`bench:multi: devices ready in ${((performance.now() - tSetup) / 1000).toFixed(1)} s`);
const results: Result[] = [];
const warmups: Result[] = [];
for (let r = 0; r < WARMUP + ROUNDS; r++) {
  const order: ("parallel" | "serial")[] = r % 2 ? ["serial", "parallel"] : ["parallel", "serial"];
  for (const mode of order) {
    const res = await round(mode, r + 1 - WARMUP);
    (r < WARMUP ? warmups : results).push(res);
    console.error(
      `  ${r < WARMUP ? "warm-up" : `round ${r + 1 - WARMUP}`} ${mode.padEnd(8)} total ${
        res.totalS.toFixed(2)
      } s, group downtime ${res.groupDowntimeS.toFixed(2)} s, max device downtime ${
        res.maxDeviceDowntimeS.toFixed(2)
      } s`,
    );
  }
}
let verified: boolean | null = null;
if (!opt["no-verify"]) {
  const cmp = await Promise.all(
    SRC.map((s, i) =>
      new Deno.Command("sh", {
        args: ["-c", `${TOOL} sim compare ${shq(s)} ${shq(DST[i])}`],
        stdout: "null",
        stderr: "null",
      }).output()
    ),
  );
  verified = cmp.every((c) => c.code === 0);
  if (!verified) console.error("bench:multi: a destination does NOT hold its source's state");
}

const summary = (mode: "parallel" | "serial") => {
  const rs = results.filter((r) => r.mode === mode);
  return {
    totalS: median(rs.map((r) => r.totalS)),
    groupDowntimeS: median(rs.map((r) => r.groupDowntimeS)),
    maxDeviceDowntimeS: median(rs.map((r) => r.maxDeviceDowntimeS)),
    toolSaveS: median(rs.map((r) => r.toolSaveS)),
    toolDowntimeMs: median(rs.map((r) => r.toolDowntimeMs)),
  };
};
const par = summary("parallel");
const ser = summary("serial");
const ratio = {
  totalS: par.totalS / ser.totalS,
  groupDowntimeS: par.groupDowntimeS / ser.groupDowntimeS,
  maxDeviceDowntimeS: par.maxDeviceDowntimeS / ser.maxDeviceDowntimeS,
  toolSaveS: par.toolSaveS / ser.toolSaveS,
};
const fmt = (x: number) => x.toFixed(2).padStart(8);
console.log(`\n${N} devices x ${opt.size} at ${opt.rate}/s each (state ${(N * SIZE) / GiB} GiB); medians of ${ROUNDS}`);
console.log(
  `${"".padEnd(10)}${"total s".padStart(10)}${"group downtime s".padStart(18)}` +
    `${"max device downtime s".padStart(23)}${"in-tool save s".padStart(16)}`,
);
for (const [name, s] of [["parallel", par], ["serial", ser]] as const) {
  console.log(
    `${name.padEnd(10)}${fmt(s.totalS)}  ${fmt(s.groupDowntimeS)}        ${fmt(s.maxDeviceDowntimeS)}               ` +
      `${fmt(s.toolSaveS)}`,
  );
}
console.log(
  `${"ratio".padEnd(10)}${fmt(ratio.totalS)}  ${fmt(ratio.groupDowntimeS)}        ${
    fmt(ratio.maxDeviceDowntimeS)
  }               ${fmt(ratio.toolSaveS)}`,
);
const goal = ratio.totalS <= 0.35 && ratio.groupDowntimeS <= 0.35;
console.log(
  `goal (parallel <= 0.35x serial, total and group downtime): ${goal ? "met" : "NOT met"}` +
    (verified === null ? "" : `; destinations ${verified ? "hold" : "do NOT hold"} their sources' state`),
);

await Deno.mkdir(OUT.slice(0, OUT.lastIndexOf("/")), { recursive: true });
await Deno.writeTextFile(
  OUT,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      deno: Deno.version.deno,
      devices: N,
      sizeBytes: SIZE,
      yieldRate: RATE,
      rounds: ROUNDS,
      warmup: WARMUP,
      parallel: par,
      serial: ser,
      ratio,
      goalMet: goal,
      verified,
      results,
      warmups,
    },
    null,
    2,
  ) + "\n",
);
console.error(`bench:multi: results in ${OUT}`);
if (opt.clean) await Deno.remove(DIR, { recursive: true });
