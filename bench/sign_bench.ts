// The cost of signing and verifying (save --sign-key, load --verify-key; src/stream/mac.ts):
// the wall time of a save to a file and of a load from it, with and without a key, at 1 GiB
// (the bench's sizes are taken), rounds alternating the order of the two.
//
//   deno run --allow-ffi --allow-read --allow-write --allow-run --allow-env bench/sign_bench.ts \
//     [--sizes 1G] [--rounds 5] [--dir /dev/shm/vfio-mig-sign-bench] [--out FILE]
//
// Devices are simulated xe VFs (state generated from the seed as it is read and checked as
// it is written back, never stored): only the stream files take space (tmpfs).

import { fileBenchOptions, loadAvg, median, printTable, setBenchName, sh, shq, sizeLabel, timed } from "./common.ts";

setBenchName("bench:sign");
const { sizes: SIZES, rounds: ROUNDS, dir: DIR, out: OUT, vm: VM } = fileBenchOptions(Deno.args, {
  usage: "bench/sign_bench.ts [--sizes 1G] [--rounds 5] [--dir /dev/shm/vfio-mig-sign-bench] [--out FILE]",
  sizes: "1G",
  rounds: 5,
  dir: "/dev/shm/vfio-mig-sign-bench",
  out: "sign.json",
});

interface Row {
  size: number;
  seconds: Record<string, number[]>;
  median: Record<string, number>;
  /** Per round, signed / unsigned, then the median of those ratios. */
  saveRatio: number;
  loadRatio: number;
}

const rows: Row[] = [];
await sh(`rm -rf ${shq(DIR)} && mkdir -p ${shq(DIR)}`);
try {
  for (const size of SIZES) {
    const [a, b, u, s, key] = [`${DIR}/a`, `${DIR}/b`, `${DIR}/u.vfmig`, `${DIR}/s.vfmig`, `${DIR}/key`];
    await sh(`${VM} sim create ${shq(a)} --model xe --size ${size} --seed 1 >/dev/null`);
    await sh(`${VM} sim create ${shq(b)} --model xe --size ${size} --seed 1 >/dev/null`);
    await sh(`(umask 077; head -c 32 /dev/urandom > ${shq(key)})`);
    const cmds: Record<string, string> = {
      save: `${VM} save -q --resume --device sim:${shq(a)} ${shq(u)}`,
      "save --sign-key": `${VM} save -q --resume --sign-key ${shq(key)} --device sim:${shq(a)} ${shq(s)}`,
      load: `${VM} load -q --device sim:${shq(b)} ${shq(u)}`,
      "load --verify-key": `${VM} load -q --verify-key ${shq(key)} --device sim:${shq(b)} ${shq(s)}`,
    };
    const seconds: Record<string, number[]> = Object.fromEntries(Object.keys(cmds).map((k) => [k, []]));
    const saveRatios: number[] = [];
    const loadRatios: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const t: Record<string, number> = {};
      // Saves first (the loads read their files), each pair in alternating order.
      for (const pair of [["save", "save --sign-key"], ["load", "load --verify-key"]]) {
        for (const k of r % 2 === 0 ? pair : [...pair].reverse()) seconds[k].push(t[k] = await timed(cmds[k]));
      }
      saveRatios.push(t["save --sign-key"] / t.save);
      loadRatios.push(t["load --verify-key"] / t.load);
    }
    rows.push({
      size,
      seconds,
      median: Object.fromEntries(Object.entries(seconds).map(([k, v]) => [k, median(v)])),
      saveRatio: median(saveRatios),
      loadRatio: median(loadRatios),
    });
    await sh(`rm -rf ${shq(a)} ${shq(b)} ${shq(u)} ${shq(s)}`);
  }
} finally {
  await sh(`rm -rf ${shq(DIR)}`, false);
}

printTable([
  ["size", "save s", "save --sign-key s", "ratio", "load s", "load --verify-key s", "ratio"],
  ...rows.map((r) => [
    sizeLabel(r.size),
    r.median.save.toFixed(2),
    r.median["save --sign-key"].toFixed(2),
    r.saveRatio.toFixed(2),
    r.median.load.toFixed(2),
    r.median["load --verify-key"].toFixed(2),
    r.loadRatio.toFixed(2),
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
