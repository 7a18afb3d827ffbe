// Runs vfio-mig as another user: drops to UID (setgroups, setresgid, setresuid through
// libc, which applies them to every thread) after loading the CLI, then runs it. For
// refusals that need a process without ptrace rights over the holder; busybox has no
// setpriv.
//
//   deno run --allow-ffi tests/kernel/guest/as_user.ts UID vfio-mig-args...

import { main } from "../../../cli.ts";
import { runWithoutInspectorSignal } from "../../../src/launch.ts";

runWithoutInspectorSignal(); // as cli.ts does: SIGUSR1 blocked (re-executes this script once), before the drop

const [uid, ...args] = Deno.args;
const id = Number(uid);
const lib = Deno.dlopen(
  "libc.so.6",
  {
    setgroups: { parameters: ["usize", "pointer"], result: "i32" }, // int setgroups(size_t n, const gid_t *list)
    setresgid: { parameters: ["u32", "u32", "u32"], result: "i32" }, // int setresgid(gid_t r, gid_t e, gid_t s)
    setresuid: { parameters: ["u32", "u32", "u32"], result: "i32" }, // int setresuid(uid_t r, uid_t e, uid_t s)
  } as const,
).symbols;
if (lib.setgroups(0n, null) !== 0 || lib.setresgid(id, id, id) !== 0 || lib.setresuid(id, id, id) !== 0) {
  console.error(`as_user.ts: cannot become uid ${id}`);
  Deno.exit(125);
}
Deno.exit(await main(args));
