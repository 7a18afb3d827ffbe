// The real-kernel suite: runs INSIDE the test guest (tests/kernel/run.sh), against
// real mtty devices, driving vfio-mig through its CLI as a user would. Prints one
// PASS/FAIL line per check and ends with "kernel: N passed, N failed".
//
//   deno run -A tests/kernel/suite.ts [--cdev] [--group NAME ...] [--without NAME ...]
// --cdev (custom kernel with IOMMUFD): also every save/load through
// /dev/vfio/devices/vfioN. --group NAME runs only that group, --without NAME all but
// that one (both repeatable).
//
// The checks live in groups, tests/kernel/groups/*.ts, each a module that runs its
// checks when imported, with the harness of tests/kernel/lib/guest.ts; core.ts first,
// then the others in file-name order. The mtty devices a group created are removed after
// it, so every group starts with the parent's full capacity.

import { counts, extraReport, removeCreatedMtty, tmp } from "./lib/guest.ts";

const only: string[] = [], without: string[] = [];
Deno.args.forEach((a, i) => {
  const name = Deno.args[i + 1]?.replace(/\.ts$/, "");
  if (a === "--group" && name) only.push(name);
  if (a === "--without" && name) without.push(name);
});
const names = [...Deno.readDirSync(new URL("./groups/", import.meta.url))]
  .filter((e) => e.isFile && e.name.endsWith(".ts")).map((e) => e.name.slice(0, -3))
  .sort((a, b) => (a === "core" ? -1 : b === "core" ? 1 : a < b ? -1 : a > b ? 1 : 0))
  .filter((n) => (only.length === 0 || only.includes(n)) && !without.includes(n));
for (const g of names) {
  console.log(`group ${g}`);
  await import(`./groups/${g}.ts`);
  removeCreatedMtty();
}

for (const line of extraReport) console.log(line);
if (counts.notHere) console.log(`${counts.notHere} checks are not about the open path: they ran on the Debian kernel`);
Deno.removeSync(tmp, { recursive: true });
console.log(`kernel: ${counts.passed} passed, ${counts.failed} failed`);
Deno.exit(counts.failed === 0 ? 0 : 1);
