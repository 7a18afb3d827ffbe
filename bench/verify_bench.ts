// The cost of checking a vfio-mig file whole before a load touches the device (load's
// pre-check, `vfio-mig verify`): at 1 GiB and at the bench's big size (8 GiB), the wall
// time of `verify FILE`, of `load FILE` (checked first, then loaded) and of
// `load --no-verify-first FILE`, against `cat FILE > /dev/null` (reading the bytes once).
// The pre-check's cost is load - load --no-verify-first.
//
//   deno task bench:verify [--sizes 1G,8G] [--rounds 3] [--dir /dev/shm/vfio-mig-verify-bench] [--out FILE]
//
// Devices are simulated xe VFs (state generated from the seed as it is read and checked
// as it is written back, never stored), so only the stream file takes space: 8 GiB of
// tmpfs for the big size, removed at the end.

import {
  fileBenchOptions,
  GiB,
  loadAvg,
  median,
  printTable,
  setBenchName,
  sh,
  shq,
  sizeLabel,
  timed,
} from "./common.ts";

setBenchName("bench:verify");
const { sizes: SIZES, rounds: ROUNDS, dir: DIR, out: OUT, vm: VM } = fileBenchOptions(Deno.args, {
  usage: "deno task bench:verify [--sizes 1G,8G] [--rounds 3] [--dir /dev/shm/vfio-mig-verify-bench] [--out FILE]",
  sizes: "1G,8G",
  rounds: 3,
  dir: "/dev/shm/vfio-mig-verify-bench",
  out: "verify.json",
});

interface Row {
  size: number;
  streamBytes: number;
  seconds: Record<string, number[]>;
  median: Record<string, number>;
  /** load - load --no-verify-first, s (median of the rounds' differences). */
  precheckSeconds: number;
  /** What `verify` reported as its own walk (no Deno start), s, and GiB/s. */
  verifyWalkSeconds: number;
}

const rows: Row[] = [];
await sh(`rm -rf ${shq(DIR)} && mkdir -p ${shq(DIR)}`);
try {
  for (const size of SIZES) {
    const [a, b, stream] = [`${DIR}/a`, `${DIR}/b`, `${DIR}/s.vfmig`];
    await sh(`rm -rf ${shq(a)} ${shq(b)} ${shq(stream)}`);
    await sh(`${VM} sim create ${shq(a)} --model xe --size ${size} --seed 1 >/dev/null`);
    await sh(`${VM} sim create ${shq(b)} --model xe --size ${size} --seed 1 >/dev/null`);
    await sh(`${VM} save -q --resume --device sim:${shq(a)} ${shq(stream)}`);
    const streamBytes = Number((await sh(`stat -c %s ${shq(stream)}`)).stdout.trim());
    const cmds: Record<string, string> = {
      cat: `cat ${shq(stream)} > /dev/null`,
      verify: `${VM} verify -q ${shq(stream)}`,
      load: `${VM} load -q --device sim:${shq(b)} ${shq(stream)}`,
      "load --no-verify-first": `${VM} load -q --no-verify-first --device sim:${shq(b)} ${shq(stream)}`,
    };
    const seconds: Record<string, number[]> = Object.fromEntries(Object.keys(cmds).map((k) => [k, []]));
    const diffs: number[] = [];
    const walks: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      // Alternate the order of the two loads between rounds.
      const order = r % 2 === 0 ? Object.keys(cmds) : Object.keys(cmds).reverse();
      const t: Record<string, number> = {};
      for (const k of order) seconds[k].push(t[k] = await timed(cmds[k]));
      diffs.push(t.load - t["load --no-verify-first"]);
      walks.push(JSON.parse((await sh(`${VM} verify --json ${shq(stream)}`)).stdout).seconds);
    }
    rows.push({
      size,
      streamBytes,
      seconds,
      median: Object.fromEntries(Object.entries(seconds).map(([k, v]) => [k, median(v)])),
      precheckSeconds: median(diffs),
      verifyWalkSeconds: median(walks),
    });
    await sh(`rm -rf ${shq(a)} ${shq(b)} ${shq(stream)}`);
  }
} finally {
  await sh(`rm -rf ${shq(DIR)}`, false);
}

const gibs = (bytes: number, s: number) => (s > 0 ? (bytes / GiB / s).toFixed(2) : "-");
printTable([
  [
    "size",
    "cat s",
    "verify s",
    "verify walk GiB/s",
    "load s",
    "load --no-verify-first s",
    "pre-check s",
    "pre-check %",
  ],
  ...rows.map((r) => [
    sizeLabel(r.size),
    r.median.cat.toFixed(2),
    r.median.verify.toFixed(2),
    gibs(r.streamBytes, r.verifyWalkSeconds),
    r.median.load.toFixed(2),
    r.median["load --no-verify-first"].toFixed(2),
    r.precheckSeconds.toFixed(2),
    `${((r.precheckSeconds / r.median["load --no-verify-first"]) * 100).toFixed(0)}%`,
  ]),
]);
const result = {
  date: new Date().toISOString(),
  rounds: ROUNDS,
  loadAvgAfter: await loadAvg(),
  deno: Deno.version.deno,
  rows,
};
await Deno.writeTextFile(OUT, JSON.stringify(result, null, 2) + "\n");
console.log(`written ${OUT}`);
