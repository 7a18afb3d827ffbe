// vfio-mig benchmark: each path of issue 15 beside a baseline that moves the same bytes, measured in
// the same run (sides alternate within each round), the peak RSS of save from 64 MiB to 8 GiB of
// state, and the time from the CLI's start to its first access to the device. See bench/README.md.
//
//   deno task bench [--rows pipe,file,file-rw,file-floor,load,load-rw,saveload,v1,tcp,rss,start] [--rounds 5] [--warmup 1]
//                   [--size 1G] [--big 8G] [--quick] [--dir /dev/shm/vfio-mig-bench]
//                   [--out bench/results/latest.json] [--variant NAME=REPO_DIR ...] [--keep] [--no-verify]
//
// rows (A, B: simulated bulk devices on tmpfs; V1: a v1 bulk device whose data section is mmap-able)
//   pipe      save --device sim:A - | cat >/dev/null            cat A/state.bin | cat >/dev/null     (SIZE, BIG)
//   file      save --device sim:A OUT                           cat A/state.bin > OUT
//   file-rw   the file row against dd bs=1M (read + write)      dd if=A/state.bin of=OUT bs=1M
//   file-floor  bench/floor_copy.ts: a bare Deno read + crc32 + write loop  dd if=A/state.bin of=OUT bs=1M
//             (the least a Deno tool that checksums pays: what the tool costs beyond it is its own)
//   load      load --device sim:B STREAM (a vfio-mig stream)    cat STREAM > /dev/null
//   load-rw   the load row against dd bs=1M (read + write)      dd if=STREAM of=B/copy.bin bs=1M
//             (cat copies file to file in the kernel, copy_file_range, and a read to /dev/null stops
//             there; a device's data_fd has only read and write, so these rows show the two-copy floor)
//   saveload  save --device sim:A - | load --device sim:B -     cat A/state.bin | cat > B/copy.bin
//   v1        save --protocol v1 --device sim:V1 - | cat >/dev/null   cat V1/state.bin | cat >/dev/null
//   tcp       load --listen + save tcp:// (--token)             socat -u TCP-LISTEN → socat -u OPEN:A/state.bin
//   rss       peak RSS (/usr/bin/time %M) of the pipe row's save at 64M, 256M, SIZE, BIG
//   start     bare `deno run empty.ts`, `vfio-mig --help`, `info --device` of a PCI address with no device and
//             `state --device sim:A` (also under strace: first execve → first openat inside A/), in the same rounds

import { parseArgs } from "node:util";
import {
  type BenchJson,
  type RowResult,
  type RssResult,
  type SideSummary,
  type StartResult,
  writeCharts,
} from "./charts.ts";
import {
  cpuJiffies,
  dec,
  die,
  freePort,
  GiB,
  holdDmaLatency,
  int,
  loadAvg,
  median,
  MiB,
  parseSize,
  printTable,
  type ProcStats,
  readTime,
  releaseDmaLatency,
  setBenchName,
  sh,
  shq,
  sizeLabel,
  toolCommand,
} from "./common.ts";

setBenchName("bench");

const TIME = "/usr/bin/time";
const TINY = 4096;
const TOKEN = "bench-token-0123456789";
const V1_DATA = 4 * MiB;
const RSS_GOAL = 64;
const FLAT_MIB = 8;
/** Start-up over a bare `deno run empty.ts` in the same rounds, ms (issue 27). */
const START_GOALS = { help: 15, info: 20 } as const;
/** A PCI address no machine has (domain ffff): `info` looks, finds nothing, exits 3. */
const NO_DEVICE = "ffff:ff:1f.7";
const ALL_ROWS = [
  "pipe",
  "file",
  "file-rw",
  "file-floor",
  "load",
  "load-rw",
  "saveload",
  "v1",
  "tcp",
  "rss",
  "start",
] as const;
type RowId = typeof ALL_ROWS[number];

// ---------------------------------------------------------------------------
// options

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    rows: { type: "string", default: ALL_ROWS.join(",") },
    rounds: { type: "string" },
    warmup: { type: "string" },
    size: { type: "string" },
    big: { type: "string" },
    quick: { type: "boolean", default: false },
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
  --rows LIST            which rows (default all): ${ALL_ROWS.join(",")}
  --rounds 5             measured rounds (the sides of a row rotate within each round)
  --warmup 1             unmeasured rounds first
  --size 1G              the state size of the pipe, file, load, saveload, v1 and tcp rows
  --big 8G               the big size (pipe row and RSS); e.g. --big 2G for a quicker run
  --quick                smoke run: --size 64M --big 256M, RSS at 16M,64M,256M, 2 rounds, no warm-up
  --dir DIR              where the simulated devices live (tmpfs; default /dev/shm/vfio-mig-bench)
  --out FILE             JSON results (default bench/results/latest.json); the charts
                         (throughput.svg, rss.svg) go to the same folder
  --variant NAME=DIR     a vfio-mig checkout to measure (repeatable: variants run in the same
                         rounds, for before/after comparisons); default: tool=${repo}
  --keep                 keep the devices in DIR (and plan space for all of them at once)
  --no-verify            skip comparing B with A after the load, saveload and tcp rows`);
  Deno.exit(0);
}

const QUICK = opt.quick!;
const ROUNDS = int(opt.rounds ?? (QUICK ? "2" : "5"), "--rounds");
const WARMUP = int(opt.warmup ?? (QUICK ? "0" : "1"), "--warmup");
if (ROUNDS < 1) die("--rounds must be at least 1");
const SIZE = parseSize(opt.size ?? (QUICK ? "64M" : "1G"));
const BIG = parseSize(opt.big ?? (QUICK ? "256M" : "8G"));
if (BIG < SIZE) die("--big must not be smaller than --size");
const RSS_SIZES = [...new Set(QUICK ? [16 * MiB, SIZE, BIG] : [64 * MiB, 256 * MiB, SIZE, BIG])]
  .filter((b) => b <= BIG).sort((a, b) => a - b);
const ROWS = opt.rows!.split(",").map((s) => s.trim()).filter(Boolean) as RowId[];
for (const r of ROWS) if (!ALL_ROWS.includes(r)) die(`unknown row ${r} (${ALL_ROWS.join(", ")})`);
const DIR = opt.dir!.replace(/\/$/, "");
const OUT = opt.out ?? `${repo}/bench/results/latest.json`;
const VERIFY = !opt["no-verify"];

interface Variant {
  name: string;
  dir: string;
  /** Shell words that run vfio-mig. */
  cmd: string;
}

const denoRun = toolCommand;
const VARIANTS: Variant[] = (opt.variant?.length ? opt.variant : [`tool=${repo}`]).map((v) => {
  const eq = v.indexOf("=");
  if (eq <= 0) die(`--variant takes NAME=REPO_DIR, got ${v}`);
  const dir = v.slice(eq + 1).replace(/\/$/, "");
  return { name: v.slice(0, eq), dir, cmd: denoRun(dir) };
});
if (new Set(VARIANTS.map((v) => v.name)).size !== VARIANTS.length) die("variant names must differ");
/** This checkout's CLI: makes and resets the simulated devices. */
const SETUP = denoRun(repo);

// ---------------------------------------------------------------------------
// running things

interface Run {
  wall: number;
  /** The tool's own seconds (max over its processes' --json summaries); null for a baseline. */
  inTool: number | null;
  procs: Record<string, ProcStats>;
  /** CPU seconds used by processes other than the measured ones during the run. */
  foreignCpu: number;
}

/** A measured command: a bash script, the names of its processes under /usr/bin/time (`tw`). */
interface Cmd {
  script: string;
  names: string[];
  /** Untimed, before the run (e.g. put the source device back into RUNNING). */
  pre?: string;
}

let TMP = ""; // /usr/bin/time output, --json summaries, strace logs

const tf = (n: string) => shq(`${TMP}/${n}`);
/** /usr/bin/time prefix for process `name`. */
const tw = (name: string) => `${TIME} -o ${tf(name + ".time")} -f '%M %U %S'`;

/** The tool's --json summary: the last JSON object in the file (null when there is none). */
function readSeconds(path: string): number | null {
  try {
    const text = Deno.readTextFileSync(path);
    const at = text.lastIndexOf("\n{");
    const start = at >= 0 ? at + 1 : text.indexOf("{");
    const s = JSON.parse(text.slice(start)).seconds;
    return typeof s === "number" ? s : null;
  } catch {
    return null;
  }
}

function readIf(path: string): string {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return "";
  }
}

/**
 * Runs a command: wall time of the whole script (or the `WALL_NS n` it prints last, for the
 * TCP sides, whose listener starts before the clock), each process's RSS and CPU, others' CPU.
 */
async function measure(c: Cmd, tool: boolean): Promise<Run> {
  if (c.pre) await sh(c.pre);
  for (const n of c.names) await Deno.remove(`${TMP}/${n}.json`).catch(() => {});
  const before = await cpuJiffies();
  const t0 = performance.now();
  const r = await new Deno.Command("bash", {
    args: ["-c", `set -o pipefail; ${c.script}`],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  let wall = (performance.now() - t0) / 1000;
  const after = await cpuJiffies();
  const stderr = dec.decode(r.stderr).trim();
  if (r.code !== 0) {
    // the tool's stderr may have gone to its --json file
    const texts = [stderr, ...c.names.map((n) => readIf(`${TMP}/${n}.json`))];
    const last = texts.join("\n").split("\n").filter((l) => l && !/^Command exited with/.test(l)).slice(-1)[0] ?? "";
    throw new Error(`exit ${r.code}${last ? `: ${last}` : ""}`);
  }
  const m = /WALL_NS (\d+)\s*$/.exec(dec.decode(r.stdout));
  if (m) wall = Number(m[1]) / 1e9;
  const procs: Record<string, ProcStats> = {};
  let own = 0, inTool: number | null = null;
  for (const n of c.names) {
    procs[n] = readTime(`${TMP}/${n}.time`);
    own += procs[n].user + procs[n].sys;
    const s = tool ? readSeconds(`${TMP}/${n}.json`) : null;
    if (s !== null) inTool = Math.max(inTool ?? 0, s);
  }
  return { wall, inTool, procs, foreignCpu: Math.max(0, (after.busy - before.busy) / 100 - own) };
}

// ---------------------------------------------------------------------------
// devices (DIR is under /dev: everything inside it goes through the shell or the tool)

interface Devs {
  size: number;
  dir: string;
  a: string;
  b: string;
  v1: string;
  out: string;
  stream: (v: Variant) => string;
}

function devs(dir: string, size: number): Devs {
  return {
    size,
    dir,
    a: `${dir}/A`,
    b: `${dir}/B`,
    v1: `${dir}/V1`,
    out: `${dir}/out.vfiomig`,
    stream: (v) => `${dir}/stream-${v.name}.vfiomig`,
  };
}

/** A bulk device of `size` (v1: with an mmap-able data section); an existing one is reused when it matches. */
async function ensureDevice(path: string, size: number, v1 = false): Promise<void> {
  const r = await sh(`cat ${shq(path + "/device.json")} && stat -c %s ${shq(path + "/state.bin")}`, false);
  if (r.code === 0) {
    try {
      const text = r.stdout.trim();
      const cut = text.lastIndexOf("\n");
      const m = JSON.parse(text.slice(0, cut));
      const layout = v1 ? m.v1?.sparse === "full" && m.v1?.dataSize === V1_DATA : !m.v1;
      if (m.model === "bulk" && m.size === size && m.rate === 0 && layout && Number(text.slice(cut + 1)) === size) {
        await sh(`${SETUP} reset --device ${shq("sim:" + path)} >/dev/null`);
        return;
      }
    } catch { /* recreate it */ }
  }
  await sh(`rm -rf ${shq(path)}`);
  const extra = v1 ? ` --protocol v1 --data-size ${V1_DATA} --sparse full` : "";
  await sh(`${SETUP} sim create ${shq(path)} --model bulk --size ${size} --seed 1${extra} >/dev/null`);
}

/** Puts a device back into RUNNING before a save (the last save left it in STOP): the variant's CLI, else ours. */
const running = (v: Variant, dev: string) =>
  `{ ${v.cmd} state --device ${shq("sim:" + dev)} RUNNING || ${SETUP} state --device ${
    shq("sim:" + dev)
  } RUNNING; } >/dev/null 2>&1`;

// ---------------------------------------------------------------------------
// rows

interface RowDef {
  id: RowId;
  path: string;
  size: number;
  goal: number;
  toolText: string;
  baseText: string;
  /** Devices this row needs, made before its rounds. */
  needs: ("ab" | "v1")[];
  tool: (v: Variant, d: Devs) => Cmd;
  base: (d: Devs, vs: Variant[]) => Cmd;
  /** Per variant, untimed, once before the rounds (for the big and the tiny devices). */
  prepare?: (v: Variant, d: Devs) => string;
  verify?: (d: Devs) => string;
}

const sim = (p: string) => shq("sim:" + p);
const q = shq;

/** TCP: the listener starts first (not timed, on either side); the clock runs from the sender's start. */
function tcpTool(v: Variant, d: Devs): Cmd {
  return {
    pre: running(v, d.a),
    names: ["save", "load"],
    script: `
: >${tf("load.err")}
${tw("load")} ${v.cmd} load -q --json --device ${sim(d.b)} --listen 127.0.0.1:0 \\
  --token ${TOKEN} --accept-timeout 60000 >${tf("load.json")} 2>${tf("load.err")} &
L=$!
for i in $(seq 2000); do grep -q 'listening on' ${
      tf("load.err")
    } && break; kill -0 $L 2>/dev/null || break; sleep 0.005; done
PORT=$(sed -n 's/.*listening on 127\\.0\\.0\\.1:\\([0-9]*\\).*/\\1/p' ${tf("load.err")})
[ -n "$PORT" ] || { kill $L 2>/dev/null; tail -1 ${tf("load.err")} >&2; exit 1; }
t0=$(date +%s%N)
${tw("save")} ${v.cmd} save -q --json --resume --device ${sim(d.a)} tcp://127.0.0.1:$PORT --token ${TOKEN} \\
  >${tf("save.json")} || { kill $L 2>/dev/null; exit 1; }
wait $L
t1=$(date +%s%N)
echo WALL_NS $((t1 - t0))`,
  };
}

function tcpBase(d: Devs): Cmd {
  const port = freePort();
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  return {
    names: ["send", "recv"],
    script: `
${tw("recv")} timeout 120 socat -b1048576 -u TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr CREATE:${
      q(d.b + "/copy.bin")
    } &
L=$!
for i in $(seq 2000); do grep -qi ':${hex} 00000000:0000 0A' /proc/net/tcp && break; sleep 0.005; done
t0=$(date +%s%N)
${tw("send")} socat -b1048576 -u OPEN:${q(d.a + "/state.bin")} TCP:127.0.0.1:${port}
wait $L
t1=$(date +%s%N)
echo WALL_NS $((t1 - t0))`,
  };
}

const sameAsA = (d: Devs, ...files: string[]) =>
  files.map((f) => `cmp ${q(d.a + "/state.bin")} ${q(d.b + "/" + f)}`).join(" && ");

function rowDefs(): RowDef[] {
  const pipe = (size: number): RowDef => ({
    id: "pipe",
    path: "save → pipe",
    size,
    goal: 0.95,
    toolText: "vfio-mig save --device sim:A - | cat >/dev/null",
    baseText: "cat A/state.bin | cat >/dev/null",
    needs: ["ab"],
    tool: (v, d) => ({
      pre: running(v, d.a),
      names: ["save"],
      script: `${tw("save")} ${v.cmd} save --device ${sim(d.a)} --json - 2>${tf("save.json")} | cat >/dev/null`,
    }),
    base: (d) => ({ names: ["cat"], script: `${tw("cat")} cat ${q(d.a + "/state.bin")} | cat >/dev/null` }),
  });
  const defs: RowDef[] = [];
  if (ROWS.includes("pipe")) defs.push(pipe(SIZE));
  // No output file on either side (issue 27): OUT is removed, untimed, right before each run. The tool writes under a
  // temporary name and renames it over OUT, so an existing OUT stays allocated while the new one is written, and on
  // this VM those fresh pages are ones the guest had reported free to the host (virtio-balloon free page reporting):
  // 4 GiB over an existing OUT took 2.8-7.9 s (write(2) 1.6 ms a call) against 1.7-2.0 s over none (bench/README.md).
  const noOut = (d: Devs) => `rm -f ${q(d.out)}`;
  const fileTool = (v: Variant, d: Devs): Cmd => ({
    pre: `${running(v, d.a)}; ${noOut(d)}`,
    names: ["save"],
    script: `${tw("save")} ${v.cmd} save --device ${sim(d.a)} --json ${q(d.out)} >${tf("save.json")}`,
  });
  if (ROWS.includes("file")) {
    defs.push({
      id: "file",
      path: "save → file",
      size: SIZE,
      goal: 0.95,
      toolText: "vfio-mig save --device sim:A OUT",
      baseText: "cat A/state.bin > OUT",
      needs: ["ab"],
      tool: fileTool,
      base: (d) => ({
        pre: noOut(d),
        names: ["cat"],
        script: `${tw("cat")} cat ${q(d.a + "/state.bin")} >${q(d.out)}`,
      }),
    });
  }
  if (ROWS.includes("file-rw")) {
    defs.push({
      id: "file-rw",
      path: "save → file vs read+write",
      size: SIZE,
      goal: 0.9,
      toolText: "vfio-mig save --device sim:A OUT",
      baseText: "dd if=A/state.bin of=OUT bs=1M",
      needs: ["ab"],
      tool: fileTool,
      base: (d) => ({
        pre: noOut(d),
        names: ["dd"],
        script: `${tw("dd")} dd if=${q(d.a + "/state.bin")} of=${q(d.out)} bs=1M status=none`,
      }),
    });
  }
  if (ROWS.includes("file-floor")) {
    defs.push({
      id: "file-floor",
      path: "Deno floor → file vs read+write",
      size: SIZE,
      goal: 0.9,
      toolText: "deno run bench/floor_copy.ts A/state.bin OUT (read, zlib crc32, write; no tool)",
      baseText: "dd if=A/state.bin of=OUT bs=1M",
      needs: ["ab"],
      tool: (_v, d) => ({
        pre: noOut(d),
        names: ["floor"],
        // --allow-all: Deno asks for it for any path under /dev (the bench's --dir is on /dev/shm)
        script: `${tw("floor")} ${shq(Deno.execPath())} run --allow-all ${shq(`${repo}/bench/floor_copy.ts`)} ${
          q(d.a + "/state.bin")
        } ${q(d.out)}`,
      }),
      base: (d) => ({
        pre: noOut(d),
        names: ["dd"],
        script: `${tw("dd")} dd if=${q(d.a + "/state.bin")} of=${q(d.out)} bs=1M status=none`,
      }),
    });
  }
  // each variant loads a stream it saved itself (the format may differ between checkouts)
  const loadPrepare = (v: Variant, d: Devs) =>
    `${running(v, d.a)}; ${v.cmd} save -q --device ${sim(d.a)} ${q(d.stream(v))}`;
  const loadTool = (v: Variant, d: Devs): Cmd => ({
    names: ["load"],
    script: `${tw("load")} ${v.cmd} load --device ${sim(d.b)} --json ${q(d.stream(v))} >${tf("load.json")}`,
  });
  if (ROWS.includes("load")) {
    defs.push({
      id: "load",
      path: "load ← file",
      size: SIZE,
      goal: 0.9,
      toolText: "vfio-mig load --device sim:B STREAM (a stream file on tmpfs)",
      baseText: "cat STREAM > /dev/null",
      needs: ["ab"],
      prepare: loadPrepare,
      tool: loadTool,
      base: (d, vs) => ({ names: ["cat"], script: `${tw("cat")} cat ${q(d.stream(vs[0]))} >/dev/null` }),
      verify: (d) => sameAsA(d, "state.bin"),
    });
  }
  if (ROWS.includes("load-rw")) {
    defs.push({
      id: "load-rw",
      path: "load ← file vs read+write",
      size: SIZE,
      goal: 0.9,
      toolText: "vfio-mig load --device sim:B STREAM (a stream file on tmpfs)",
      baseText: "dd if=STREAM of=B/copy.bin bs=1M",
      needs: ["ab"],
      prepare: loadPrepare,
      tool: loadTool,
      base: (d, vs) => ({
        names: ["dd"],
        script: `${tw("dd")} dd if=${q(d.stream(vs[0]))} of=${q(d.b + "/copy.bin")} bs=1M status=none`,
      }),
      verify: (d) => sameAsA(d, "state.bin"),
    });
  }
  if (ROWS.includes("saveload")) {
    defs.push({
      id: "saveload",
      path: "save | load",
      size: SIZE,
      goal: 0.95,
      toolText: "vfio-mig save --device sim:A - | vfio-mig load --device sim:B -",
      baseText: "cat A/state.bin | cat > B/copy.bin",
      needs: ["ab"],
      tool: (v, d) => ({
        pre: running(v, d.a),
        names: ["save", "load"],
        script: `${tw("save")} ${v.cmd} save --device ${sim(d.a)} --json - 2>${tf("save.json")} | ` +
          `${tw("load")} ${v.cmd} load --device ${sim(d.b)} --json - >${tf("load.json")}`,
      }),
      base: (d) => ({
        names: ["cat1", "cat2"],
        script: `${tw("cat1")} cat ${q(d.a + "/state.bin")} | ${tw("cat2")} cat >${q(d.b + "/copy.bin")}`,
      }),
      verify: (d) => sameAsA(d, "state.bin", "copy.bin"),
    });
  }
  if (ROWS.includes("v1")) {
    defs.push({
      id: "v1",
      path: "v1 save (mmap)",
      size: SIZE,
      goal: 0.95,
      toolText: "vfio-mig save --protocol v1 --device sim:V1 - | cat >/dev/null",
      baseText: "cat V1/state.bin | cat >/dev/null",
      needs: ["v1"],
      tool: (v, d) => ({
        pre: `{ ${v.cmd} reset --device ${sim(d.v1)} || ${SETUP} reset --device ${sim(d.v1)}; } >/dev/null 2>&1`,
        names: ["save"],
        script: `${tw("save")} ${v.cmd} save --protocol v1 --device ${sim(d.v1)} --json - 2>${tf("save.json")} | ` +
          `cat >/dev/null`,
      }),
      base: (d) => ({ names: ["cat"], script: `${tw("cat")} cat ${q(d.v1 + "/state.bin")} | cat >/dev/null` }),
    });
  }
  if (ROWS.includes("tcp")) {
    defs.push({
      id: "tcp",
      path: "TCP save → load --listen",
      size: SIZE,
      goal: 0.95,
      toolText: "vfio-mig load --listen 127.0.0.1:0 --token T --device sim:B & vfio-mig save --resume " +
        "--device sim:A tcp://127.0.0.1:PORT --token T",
      baseText: "socat -b1048576 -u TCP-LISTEN:PORT CREATE:B/copy.bin & socat -b1048576 -u OPEN:A/state.bin " +
        "TCP:127.0.0.1:PORT",
      needs: ["ab"],
      tool: tcpTool,
      base: tcpBase,
      verify: (d) => sameAsA(d, "state.bin", "copy.bin"),
    });
  }
  if (ROWS.includes("pipe") && BIG !== SIZE) defs.push(pipe(BIG));
  return defs;
}

// ---------------------------------------------------------------------------
// statistics

function sideStats(bytes: number, runs: Run[]): SideSummary {
  const rates = runs.map((r) => bytes / r.wall / GiB);
  const inTool = runs.every((r) => r.inTool !== null) ? runs.map((r) => bytes / r.inTool! / GiB) : null;
  const peak: Record<string, number> = {};
  for (const n of Object.keys(runs[0].procs)) peak[n] = Math.max(...runs.map((r) => r.procs[n].rssKiB)) / 1024;
  return {
    medianGiBs: median(rates),
    bestGiBs: Math.max(...rates),
    walls: runs.map((r) => r.wall),
    inToolMedianGiBs: inTool ? median(inTool) : null,
    peakRssMiB: peak,
    medianForeignCpu: median(runs.map((r) => r.foreignCpu)),
  };
}

/** save's peak RSS (KiB) per variant and size, from every pipe-row run (the rss row reuses them). */
const saveRss = new Map<string, number[]>();
const rssKey = (v: string, bytes: number) => `${v}|${bytes}`;

// ---------------------------------------------------------------------------
// one row

const short = (e: unknown) => (e instanceof Error ? e.message : String(e)).split("\n")[0].slice(0, 160);

async function runRow(def: RowDef, big: Devs, tiny: Devs): Promise<RowResult[]> {
  const label = sizeLabel(def.size);
  console.log(`\n[${def.path}, ${label}] ${def.toolText}  vs  ${def.baseText}`);
  for (const d of [tiny, big]) {
    await sh(`mkdir -p ${q(d.dir)}`);
    if (def.needs.includes("ab")) {
      await ensureDevice(d.a, d.size);
      await ensureDevice(d.b, d.size);
    }
    if (def.needs.includes("v1")) await ensureDevice(d.v1, d.size, true);
  }
  // which variants can run this row: the prepare step and one run on the tiny devices
  const unsupported = new Map<string, string>();
  for (const v of VARIANTS) {
    try {
      if (def.prepare) {
        for (const d of [tiny, big]) {
          const r = await sh(def.prepare(v, d), false);
          if (r.code) throw new Error(`preparing: ${r.stderr.trim().split("\n").slice(-1)[0]}`);
        }
      }
      await measure(def.tool(v, tiny), true);
    } catch (e) {
      unsupported.set(v.name, short(e));
      console.log(`  ${v.name}: cannot run this row (${short(e)})`);
    }
  }
  const supported = () => VARIANTS.filter((v) => !unsupported.has(v.name));
  if (!supported().length && (def.id === "load" || def.id === "load-rw")) {
    // the baseline reads a variant's stream: nothing to compare
    return VARIANTS.map((v) => result(def, v, [], [], [], unsupported.get(v.name)));
  }
  const runs = new Map<string, Run[]>();
  const fixed = new Map<string, number[]>();
  const push = <T>(m: Map<string, T[]>, k: string, x: T) => m.set(k, [...(m.get(k) ?? []), x]);
  const baseVariants = supported().length ? supported() : VARIANTS;
  for (let round = 0; round < WARMUP + ROUNDS; round++) {
    const warm = round < WARMUP;
    const sides = [...supported().map((v) => v.name), "\0base"];
    const k = round % sides.length;
    const order = [...sides.slice(k), ...sides.slice(0, k)]; // rotate who goes first
    const got = new Map<string, Run>();
    for (const side of order) {
      if (side === "\0base") {
        got.set(side, await measure(def.base(big, baseVariants), false));
        continue;
      }
      const v = VARIANTS.find((x) => x.name === side)!;
      try {
        got.set(side, await measure(def.tool(v, big), true));
      } catch (e) {
        unsupported.set(v.name, `failed in round ${round + 1}: ${short(e)}`);
        console.log(`  ${v.name}: ${unsupported.get(v.name)}`);
      }
    }
    // the fixed cost: the same command on a 4 KiB device, in the same rounds
    for (const v of supported()) {
      try {
        const f = await measure(def.tool(v, tiny), true);
        if (!warm) push(fixed, v.name, f.wall);
      } catch (e) {
        unsupported.set(v.name, `failed on the 4 KiB device: ${short(e)}`);
      }
    }
    if (!warm) { for (const [s, r] of got) push(runs, s, r); }
    const g = (s: string) => got.has(s) ? (def.size / got.get(s)!.wall / GiB).toFixed(2) : "-";
    const others = Math.max(...[...got.values()].map((r) => r.foreignCpu)).toFixed(2);
    console.log(
      `  ${warm ? "warm-up" : `round ${round - WARMUP + 1}`} (GiB/s): ` +
        sides.map((s) => `${s === "\0base" ? "baseline" : s} ${g(s)}`).join("  ") + `  | others' CPU s ${others}`,
    );
  }
  if (VERIFY && def.verify) {
    const r = await sh(def.verify(big), false);
    if (r.code !== 0) throw new Error(`[${def.path} ${label}] B differs from A: ${r.stdout}${r.stderr}`);
    console.log(`  verified: ${def.verify(big).replaceAll(big.dir + "/", "")}`);
  }
  if (def.id === "pipe") {
    for (const v of supported()) {
      for (const r of runs.get(v.name) ?? []) {
        saveRss.set(rssKey(v.name, def.size), [...(saveRss.get(rssKey(v.name, def.size)) ?? []), r.procs.save.rssKiB]);
      }
    }
  }
  const base = runs.get("\0base")!;
  return VARIANTS.map((v) =>
    result(def, v, runs.get(v.name) ?? [], base, fixed.get(v.name) ?? [], unsupported.get(v.name))
  );
}

function result(def: RowDef, v: Variant, tool: Run[], base: Run[], fixed: number[], why?: string): RowResult {
  const r: RowResult = {
    row: def.id,
    path: def.path,
    size: sizeLabel(def.size),
    bytes: def.size,
    goal: def.goal,
    variant: v.name,
    toolCommand: def.toolText,
    baselineCommand: def.baseText,
    baseline: base.length
      ? sideStats(def.size, base)
      : { medianGiBs: 0, bestGiBs: 0, walls: [], peakRssMiB: {}, medianForeignCpu: 0 },
  };
  if (why || !tool.length || !base.length) {
    r.unsupported = why ?? "no runs";
    return r;
  }
  const t = sideStats(def.size, tool);
  const b = r.baseline;
  const fx = median(fixed);
  const mw = median(t.walls);
  // net = without the fixed cost; meaningless when the fixed cost is most of the run
  const netOk = mw - fx > 0.25 * mw;
  return {
    ...r,
    tool: t,
    ratioMedian: t.medianGiBs / b.medianGiBs,
    ratioBest: t.bestGiBs / b.bestGiBs,
    ratioPairedMedian: median(tool.map((x, i) => base[i].wall / x.wall)),
    fixedMs: fx * 1000,
    ratioNetMedian: netOk ? (def.size / (mw - fx) / GiB) / b.medianGiBs : null,
    met: t.medianGiBs / b.medianGiBs >= def.goal,
  };
}

// ---------------------------------------------------------------------------
// rss row: save's peak RSS from 64 MiB to BIG (the pipe row's runs where it measured that size)

async function runRss(): Promise<RssResult[]> {
  console.log(`\n[peak RSS] save --device sim:A - | cat >/dev/null at ${RSS_SIZES.map(sizeLabel).join(", ")}`);
  const why = new Map<string, string>();
  for (const bytes of RSS_SIZES) {
    if (VARIANTS.every((v) => saveRss.has(rssKey(v.name, bytes)) || why.has(v.name))) continue;
    const d = devs(`${DIR}/rss-${sizeLabel(bytes)}`, bytes);
    await sh(`mkdir -p ${q(d.dir)}`);
    await ensureDevice(d.a, bytes);
    const todo = VARIANTS.filter((v) => !saveRss.has(rssKey(v.name, bytes)));
    for (let round = 0; round < ROUNDS; round++) {
      for (const v of todo) {
        if (why.has(v.name)) continue;
        try {
          const r = await measure({
            pre: running(v, d.a),
            names: ["save"],
            script: `${tw("save")} ${v.cmd} save --device ${sim(d.a)} - | cat >/dev/null`,
          }, true);
          saveRss.set(rssKey(v.name, bytes), [...(saveRss.get(rssKey(v.name, bytes)) ?? []), r.procs.save.rssKiB]);
        } catch (e) {
          why.set(v.name, short(e));
        }
      }
    }
    console.log(
      `  ${sizeLabel(bytes)}: ` +
        VARIANTS.map((v) =>
          `${v.name} ${((Math.max(...saveRss.get(rssKey(v.name, bytes)) ?? [NaN])) / 1024).toFixed(0)} MiB`
        )
          .join(", "),
    );
    if (!opt.keep) await sh(`rm -rf ${q(d.dir)}`);
  }
  return VARIANTS.map((v) => {
    const points = RSS_SIZES.filter((b) => saveRss.has(rssKey(v.name, b))).map((b) => ({
      size: sizeLabel(b),
      bytes: b,
      peakRssMiB: Math.max(...saveRss.get(rssKey(v.name, b))!) / 1024,
      runs: saveRss.get(rssKey(v.name, b))!.length,
    }));
    const ms = points.map((p) => p.peakRssMiB);
    const maxMiB = ms.length ? Math.max(...ms) : NaN, spreadMiB = ms.length ? maxMiB - Math.min(...ms) : NaN;
    return {
      variant: v.name,
      command: "vfio-mig save --device sim:A - | cat >/dev/null",
      points,
      maxMiB,
      spreadMiB,
      goalMiB: RSS_GOAL,
      met: points.length === RSS_SIZES.length && maxMiB <= RSS_GOAL && spreadMiB <= FLAT_MIB,
      ...(why.has(v.name) || points.length < RSS_SIZES.length
        ? { unsupported: why.get(v.name) ?? "sizes missing" }
        : {}),
    };
  });
}

// ---------------------------------------------------------------------------
// start row: the CLI's start-up against a bare `deno run` in the same rounds; first device access under strace

async function runStart(tiny: Devs): Promise<StartResult[]> {
  const cmdText = "vfio-mig state --device sim:A";
  const empty = `${TMP}/empty.ts`;
  Deno.writeTextFileSync(empty, "");
  const bare = `${shq(Deno.execPath())} run ${q(empty)}`;
  console.log(
    `\n[CLI start] in the same rounds: ${bare}; vfio-mig --help; vfio-mig info --device ${NO_DEVICE} (no such ` +
      `device: exit 3); ${cmdText}, plain and under strace -f -ttt --seccomp-bpf -e trace=execve,openat,ioctl ` +
      "(first execve → first openat inside A/)",
  );
  await sh(`mkdir -p ${q(tiny.dir)}`);
  await ensureDevice(tiny.a, TINY);
  const haveStrace = (await sh("command -v strace", false)).code === 0;
  const times = new Map<string, number[]>(); // "variant\0side" (side: plain, strace, help, info, first) or "\0bare"
  const files = new Map<string, string>();
  const why = new Map<string, string>();
  const push = (k: string, x: number) => times.set(k, [...(times.get(k) ?? []), x]);
  const log = `${TMP}/strace.log`;
  const prefix = tiny.a + "/";
  const kinds = ["plain", "help", "info", ...(haveStrace ? ["strace"] : [])];
  const script = (v: Variant, kind: string) =>
    kind === "help"
      ? `${v.cmd} --help`
      : kind === "info"
      ? `${v.cmd} info --device ${NO_DEVICE}`
      : `${
        kind === "strace" ? `strace -f -ttt --seccomp-bpf -e trace=execve,openat,ioctl -o ${q(log)} ` : ""
      }${v.cmd} ` +
        `state --device ${sim(tiny.a)}`;
  for (let round = 0; round < WARMUP + ROUNDS; round++) {
    const warm = round < WARMUP;
    const sides = ["\0bare", ...VARIANTS.flatMap((v) => kinds.map((k) => `${v.name}\0${k}`))];
    const k = round % sides.length;
    for (const side of [...sides.slice(k), ...sides.slice(0, k)]) {
      const [name, kind] = side.split("\0");
      if (why.has(name)) continue;
      const v = VARIANTS.find((x) => x.name === name);
      const t0 = performance.now();
      const r = await sh(`${v ? script(v, kind) : bare} >/dev/null`, false);
      const wall = performance.now() - t0;
      if (r.code !== (kind === "info" ? 3 : 0)) {
        why.set(name, `${kind}: exit ${r.code}: ${r.stderr.trim().split("\n").slice(-1)[0]}`);
        continue;
      }
      if (warm) continue;
      push(side, wall);
      if (kind !== "strace") continue;
      let t0s = NaN, t1s = NaN;
      for (const line of Deno.readTextFileSync(log).split("\n")) {
        const m = /^\d+\s+(\d+\.\d+)\s+(execve|openat)\((?:AT_FDCWD, )?"([^"]*)"/.exec(line);
        if (!m) continue;
        if (m[2] === "execve" && Number.isNaN(t0s)) t0s = Number(m[1]);
        if (m[2] === "openat" && m[3].startsWith(prefix)) {
          t1s = Number(m[1]);
          files.set(name, m[3].slice(prefix.length));
          break;
        }
      }
      if (Number.isNaN(t0s) || Number.isNaN(t1s)) why.set(name, "no execve or no openat inside the device folder");
      else push(`${name}\0first`, (t1s - t0s) * 1000);
    }
  }
  const stat = (xs: number[]) => ({ median: median(xs), best: Math.min(...xs), all: xs });
  const bareMs = stat(times.get("\0bare") ?? [NaN]);
  return VARIANTS.map((v) => {
    const r: StartResult = { variant: v.name, command: cmdText, goals: { ...START_GOALS } };
    const get = (kind: string) => times.get(`${v.name}\0${kind}`);
    if (why.has(v.name) || !get("plain")?.length) return { ...r, unsupported: why.get(v.name) ?? "no runs" };
    const help = stat(get("help")!), info = stat(get("info")!);
    const over = { help: help.median - bareMs.median, info: info.median - bareMs.median };
    return {
      ...r,
      bareMs,
      helpMs: help,
      infoMs: info,
      overBareMs: over,
      stateWallMs: stat(get("plain")!),
      ...(get("first")?.length
        ? {
          firstFile: files.get(v.name),
          firstAccessMs: stat(get("first")!),
          straceWallMs: { median: median(get("strace")!), all: get("strace")! },
        }
        : {}),
      met: over.help <= START_GOALS.help && over.info <= START_GOALS.info,
    };
  });
}

// ---------------------------------------------------------------------------
// main

async function environment(dmaHeld: boolean) {
  const txt = async (s: string) => (await sh(s, false)).stdout.trim();
  return {
    date: new Date().toISOString(),
    deno: Deno.version.deno,
    kernel: await txt("uname -r"),
    cpus: navigator.hardwareConcurrency,
    cpu: await txt("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
    memBytes: Number(await txt("awk '/MemTotal/{print $2*1024}' /proc/meminfo")),
    dmaLatencyHeld: dmaHeld,
    loadAvgAtStart: await loadAvg(),
    dir: DIR,
    quick: QUICK,
    rounds: ROUNDS,
    warmup: WARMUP,
    size: sizeLabel(SIZE),
    big: sizeLabel(BIG),
    variants: await Promise.all(VARIANTS.map(async (v) => ({
      name: v.name,
      dir: v.dir,
      gitHead: await txt(`git -C ${q(v.dir)} rev-parse --short HEAD 2>/dev/null`),
      gitDirty: (await txt(`git -C ${q(v.dir)} status --porcelain -- src ffi cli.ts 2>/dev/null`)).split("\n")
        .filter(Boolean),
    }))),
  };
}

function report(j: BenchJson): void {
  const f2 = (
    n: number | undefined | null,
  ) => (n === undefined || n === null || !Number.isFinite(n) ? "-" : n.toFixed(2));
  const multi = VARIANTS.length > 1;
  const cut = (s?: string) => (s && s.length > 48 ? s.slice(0, 47) + "…" : s ?? ""); // the JSON has it whole
  console.log(
    `\nvfio-mig vs baseline (GiB/s of device state = bytes / wall time of the whole command, Deno start-up ` +
      `included; median of ${ROUNDS} rounds${QUICK ? "; SMOKE RUN with small sizes" : ""})\n`,
  );
  const rows: string[][] = [[
    "path",
    "size",
    ...(multi ? ["variant"] : []),
    "tool GiB/s",
    "baseline GiB/s",
    "ratio med (best)",
    "goal",
    "result",
    "fixed ms",
    "net ratio",
    "peak RSS MiB",
    "others' CPU s",
  ]];
  for (const r of j.rows) {
    const common = [r.path, r.size, ...(multi ? [r.variant] : [])];
    if (r.unsupported || !r.tool) {
      rows.push([
        ...common,
        "-",
        f2(r.baseline.medianGiBs),
        "-",
        `≥ ${r.goal}`,
        `not run: ${cut(r.unsupported)}`,
        "",
        "",
        "",
        "",
      ]);
      continue;
    }
    rows.push([
      ...common,
      f2(r.tool.medianGiBs),
      f2(r.baseline.medianGiBs),
      `${f2(r.ratioMedian)} (${f2(r.ratioBest)})`,
      `≥ ${r.goal}`,
      r.met ? "met" : "not met",
      r.fixedMs!.toFixed(0),
      f2(r.ratioNetMedian),
      Object.entries(r.tool.peakRssMiB).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", "),
      f2(r.tool.medianForeignCpu),
    ]);
  }
  for (const s of j.rss) {
    const range = s.points.length ? `${s.points[0].size}→${s.points[s.points.length - 1].size}` : "-";
    rows.push([
      "peak RSS of save",
      range,
      ...(multi ? [s.variant] : []),
      s.points.map((p) => `${p.size} ${p.peakRssMiB.toFixed(0)}`).join(", ") + " MiB",
      "-",
      "-",
      `≤ ${s.goalMiB} MiB, flat`,
      s.unsupported ? `not run: ${cut(s.unsupported)}` : s.met ? "met" : "not met",
      "",
      "",
      `spread ${f2(s.spreadMiB)}`,
      "",
    ]);
  }
  for (const s of j.start) {
    const ok = !s.unsupported && s.overBareMs;
    for (const [what, key] of [["vfio-mig --help", "help"], [`info --device (no device)`, "info"]] as const) {
      const side = key === "help" ? s.helpMs : s.infoMs;
      rows.push([
        `start: ${what}`,
        "-",
        ...(multi ? [s.variant] : []),
        ok ? `${side!.median.toFixed(0)} ms` : "-",
        ok ? `deno run empty.ts ${s.bareMs!.median.toFixed(0)} ms` : "-",
        ok ? `+${s.overBareMs![key].toFixed(1)} ms` : "-",
        `≤ +${s.goals[key]} ms`,
        ok ? (s.overBareMs![key] <= s.goals[key] ? "met" : "not met") : `not run: ${cut(s.unsupported)}`,
        "",
        "",
        "",
        "",
      ]);
    }
  }
  if (j.rows.length + j.rss.length + j.start.length) printTable(rows);
  console.log(`
  ratio          tool GiB/s / baseline GiB/s, medians (best: best / best); sides rotate within each round
  fixed ms       median wall time of the same command on a ${TINY}-byte device (Deno start-up, module loading,
                 device open, state changes); net ratio = bytes / (median wall - fixed) against the baseline
                 ("-" when the fixed cost is most of the run)
  others' CPU s  CPU seconds other processes used during a tool run (median): well above 0 = disturbed
  peak RSS       /usr/bin/time %M of each vfio-mig process, max over the rounds; "flat": spread ≤ ${FLAT_MIB} MiB`);
  if (j.rows.some((r) => r.row === "load" || r.row === "load-rw") && multi) {
    console.log("  load           the baseline reads the stream file of the first variant that could save one");
  }
  for (const s of j.start) {
    if (s.unsupported || !s.stateWallMs) continue;
    const state = `whole \`state --device sim:A\` ${s.stateWallMs.median.toFixed(0)} ms (+${
      (s.stateWallMs.median - s.bareMs!.median).toFixed(0)
    } over deno run empty.ts)`;
    if (!s.firstAccessMs) {
      console.log(`  start${multi ? ` (${s.variant})` : ""}: ${state}`);
      continue;
    }
    const over = s.straceWallMs!.median - s.stateWallMs.median;
    console.log(
      `  start${multi ? ` (${s.variant})` : ""}: ${state}; under strace, first execve → openat of A/${s.firstFile} ${
        s.firstAccessMs.median.toFixed(1)
      } ms median (all: ${s.firstAccessMs.all.map((x) => x.toFixed(0)).join(" ")}), the whole command ${
        s.straceWallMs!.median.toFixed(0)
      } ms (strace's overhead ${over.toFixed(0)} ms, ${(100 * over / s.stateWallMs.median).toFixed(0)}%)`,
    );
  }
}

async function main(): Promise<void> {
  if ((await sh(`test -x ${TIME}`, false)).code !== 0) {
    die(`${TIME} is missing (apt-get install time): it gives each process's peak RSS`);
  }
  if (ROWS.includes("tcp") && (await sh("command -v socat", false)).code !== 0) {
    die("socat is missing (apt-get install socat): it is the tcp row's baseline");
  }
  await sh(`mkdir -p ${q(DIR)}`);
  const [fs, free] = (await sh(`df -B1 --output=fstype,avail ${q(DIR)} | tail -1`)).stdout.trim().split(/\s+/);
  if (fs !== "tmpfs") console.error(`bench: warning: ${DIR} is ${fs}, not tmpfs: the disk will be measured too`);
  // at once, SIZE: A, B, B's incoming state during a load, B/copy.bin, OUT and its temporary, a stream per
  // variant, V1; BIG (its own phase, after SIZE's devices are gone): A; then one RSS device at a time
  // only pipe/file rows: A, OUT and its temporary
  const fileOnly = ROWS.every((r) => ["pipe", "file", "file-rw", "file-floor", "rss", "start"].includes(r));
  const mainNeed = SIZE * (fileOnly ? 3 : 7 + VARIANTS.length);
  const bigNeed = ROWS.includes("pipe") || ROWS.includes("rss") ? BIG * 1.05 : 0;
  const need = (opt.keep ? mainNeed + bigNeed + RSS_SIZES.reduce((a, b) => a + b, 0) : Math.max(mainNeed, bigNeed)) +
    256 * MiB;
  if (Number(free) < need) {
    die(`${DIR} has ${(Number(free) / GiB).toFixed(1)} GiB free; ${(need / GiB).toFixed(1)} GiB are needed`);
  }

  const dma = await holdDmaLatency();
  const env = await environment(dma !== null);
  TMP = Deno.makeTempDirSync({ prefix: "vfio-mig-bench-" });
  console.log(
    `vfio-mig bench: rows ${ROWS.join(",")}, size ${sizeLabel(SIZE)}, big ${sizeLabel(BIG)}, ${ROUNDS} rounds ` +
      `(+${WARMUP} warm-up)${QUICK ? ", QUICK (smoke run)" : ""}, dir ${DIR} (${fs}), cpu_dma_latency ` +
      `${dma ? "held at 0" : "NOT held"}, load average ${env.loadAvgAtStart.join(" ")}`,
  );
  for (const v of VARIANTS) console.log(`  ${v.name}: ${v.cmd}`);
  const t0 = performance.now();
  const rowResults: RowResult[] = [];
  let rss: RssResult[] = [];
  let start: StartResult[] = [];
  const tiny = devs(`${DIR}/tiny`, TINY);
  try {
    const mainDevs = devs(`${DIR}/main`, SIZE);
    const bigDevs = devs(`${DIR}/big`, BIG);
    for (const def of rowDefs()) {
      const d = def.size === SIZE ? mainDevs : bigDevs;
      if (def.size === BIG && BIG !== SIZE && !opt.keep) await sh(`rm -rf ${q(mainDevs.dir)}`); // make room
      rowResults.push(...await runRow(def, d, tiny));
      const last = (ids: RowId[]) => def.id === ids.filter((id) => ROWS.includes(id)).at(-1);
      if (last(["file", "file-rw", "file-floor"])) await sh(`rm -f ${q(d.out)} ${q(tiny.out)}`);
      if (last(["load", "load-rw"])) {
        for (const v of VARIANTS) await sh(`rm -f ${q(d.stream(v))} ${q(tiny.stream(v))}`);
      }
    }
    if (!opt.keep) await sh(`rm -rf ${q(mainDevs.dir)} ${q(bigDevs.dir)}`);
    if (ROWS.includes("rss")) rss = await runRss();
    if (ROWS.includes("start")) start = await runStart(tiny);
    if (!opt.keep) await sh(`rm -rf ${q(tiny.dir)}`);
  } finally {
    await releaseDmaLatency(dma);
    Deno.removeSync(TMP, { recursive: true });
    if (!opt.keep) await sh(`rm -rf ${q(DIR)}/main ${q(DIR)}/big ${q(DIR)}/tiny ${q(DIR)}/rss-*`, false);
  }
  const seconds = (performance.now() - t0) / 1000;
  const json: BenchJson = {
    env: { ...env, loadAvgAtEnd: await loadAvg(), seconds },
    method: {
      throughput: "bytes of device state / wall seconds of the whole command or pipeline (Deno start-up included)",
      ratio: "median tool GiB/s / median baseline GiB/s; best / best; sides rotate within each round",
      fixed: `the same command on a ${TINY}-byte device, in the same rounds`,
      peakRss: "/usr/bin/time %M of each process, max over the rounds",
      start: "wall ms of `vfio-mig --help` and `info --device` of a PCI address with no device, less a bare " +
        "`deno run empty.ts` in the same rounds (medians); under strace -f -ttt --seccomp-bpf -e " +
        "trace=execve,openat,ioctl: first execve to the first openat of a file inside the device folder",
    },
    rows: rowResults,
    rss,
    start,
  };
  report(json);
  Deno.mkdirSync(OUT.slice(0, OUT.lastIndexOf("/")), { recursive: true });
  Deno.writeTextFileSync(OUT, JSON.stringify(json, null, 2) + "\n");
  console.log(`\nJSON results: ${OUT} (${seconds.toFixed(0)} s)`);
  if (rowResults.length || rss.length) {
    console.log(`charts: ${writeCharts(json, OUT.slice(0, OUT.lastIndexOf("/"))).join(", ")}`);
  }
}

await main();
