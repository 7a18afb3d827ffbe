// Where save's peak RSS comes from, by size of state: samples /proc/PID/smaps of
// `save --device sim:X - | cat >/dev/null` every 20 ms and splits the resident set
// into the deno executable's own pages (file-backed code and data, shared with every
// deno process and dropped under memory pressure), anonymous memory (V8's heap, the
// buffers, the tool's own) and the rest. The same for a bare Deno loop that only
// reads the state file and writes it to stdout (no vfio-mig), the floor of Deno itself.
//
//   deno run -A bench/rss_parts.ts [--sizes 64M,1G,8G] [--dir /dev/shm/vfio-mig-rss]

import { parseArgs } from "node:util";
import { die, parseSize, sh, shq, sizeLabel, toolCommand } from "./common.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    sizes: { type: "string", default: "64M,1G,8G" },
    dir: { type: "string", default: "/dev/shm/vfio-mig-rss" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) {
  console.log("Usage: deno run -A bench/rss_parts.ts [--sizes 64M,1G,8G] [--dir /dev/shm/vfio-mig-rss]");
  Deno.exit(0);
}

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const deno = Deno.execPath();
const cli = toolCommand(repo);

interface Parts {
  rss: number;
  binary: number;
  anon: number;
}

/** Resident KiB of the process now, split (null once it is gone). */
function sample(pid: number): Parts | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/smaps`);
  } catch {
    return null;
  }
  const p: Parts = { rss: 0, binary: 0, anon: 0 };
  let inBinary = false;
  for (const line of text.split("\n")) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      const f = line.trim().split(/\s+/);
      inBinary = f.length >= 6 && f[5] === deno;
    } else if (line.startsWith("Rss:")) {
      const kib = Number(line.split(/\s+/)[1]);
      p.rss += kib;
      if (inBinary) p.binary += kib;
    } else if (line.startsWith("Anonymous:")) {
      p.anon += Number(line.split(/\s+/)[1]);
    }
  }
  return p;
}

/** Runs `script` (its first process writes its pid, then runs) and keeps each part's peak. */
async function peaks(script: string): Promise<Parts & { seconds: number }> {
  const child = new Deno.Command("bash", { args: ["-c", script], stdout: "piped", stderr: "inherit" }).spawn();
  const reader = child.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) die(`no pid from: ${script}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const pid = Number(text.trim());
  const t0 = performance.now();
  const peak: Parts = { rss: 0, binary: 0, anon: 0 };
  let samples = 0;
  for (;;) {
    const s = sample(pid);
    if (!s) break;
    samples += s.binary > 0 ? 1 : 0; // 0: not deno yet (the shell before its exec)
    peak.rss = Math.max(peak.rss, s.rss);
    peak.binary = Math.max(peak.binary, s.binary);
    peak.anon = Math.max(peak.anon, s.anon);
    await new Promise((r) => setTimeout(r, 20));
  }
  const status = await child.status;
  if (!status.success) die(`failed (exit ${status.code}): ${script}`);
  if (samples === 0) die(`the run ended before a sample of it was taken (give a larger size): ${script}`);
  return { ...peak, seconds: (performance.now() - t0) / 1000 };
}

const bare = `${opt.dir}/bare.ts`;
await sh(`mkdir -p ${shq(opt.dir!)}`);
Deno.writeTextFileSync(
  bare,
  `const f = Deno.openSync(Deno.args[0]);
const b = new Uint8Array(1 << 20);
for (;;) {
  const n = f.readSync(b);
  if (!n) break;
  for (let o = 0; o < n;) o += Deno.stdout.writeSync(b.subarray(o, n));
}
`,
);
const mib = (kib: number) => (kib / 1024).toFixed(1);
console.log("peak MiB (sampled every 20 ms): all resident = the deno executable's pages + anonymous + other files");
console.log("size   what                          resident  executable  anonymous  seconds");
try {
  for (const size of opt.sizes!.split(",").map((s) => parseSize(s.trim()))) {
    const dev = `${opt.dir}/dev-${sizeLabel(size)}`;
    await sh(`rm -rf ${shq(dev)} && ${cli} sim create ${shq(dev)} --model bulk --size ${size} --seed 1 >/dev/null`);
    const save = await peaks(
      `${cli} save -q --device ${shq("sim:" + dev)} - > >(cat >/dev/null) & echo $!; wait $!`,
    );
    const loop = await peaks(
      `${shq(deno)} run --allow-all ${shq(bare)} ${shq(dev + "/state.bin")} > >(cat >/dev/null) & echo $!; wait $!`,
    );
    for (const [what, p] of [["vfio-mig save", save], ["bare Deno read+write loop", loop]] as const) {
      console.log(
        `${sizeLabel(size).padEnd(6)} ${what.padEnd(29)} ${mib(p.rss).padStart(8)}  ${mib(p.binary).padStart(10)}  ` +
          `${mib(p.anon).padStart(9)}  ${p.seconds.toFixed(2).padStart(7)}`,
      );
    }
    await sh(`rm -rf ${shq(dev)}`);
  }
} finally {
  await sh(`rm -rf ${shq(opt.dir!)}`, false);
}
