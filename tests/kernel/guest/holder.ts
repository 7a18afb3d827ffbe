// A process that holds a VFIO device open, as a VM or a userspace driver would, so
// that vfio-mig can be pointed at it with --device pid:PID. Used by the real-kernel
// group tests/kernel/groups/borrow.ts (mtty) and by tests/borrow_*_test.ts (simulated).
//
//   deno run --allow-ffi tests/kernel/guest/holder.ts SPEC
//
// Opens SPEC through the library (sim:PATH through the simulated kernel), prints one
// JSON line {"ready":true,"pid":…,"fd":…,"access":…}, then answers one JSON line per
// command read from stdin, all through ITS OWN device fd:
//   state                      {"state":"RUNNING"}
//   set STATE                  {"state":"STOP"}
//   program PORT SCR B1,B2,…   empty the RX FIFO, write the scratch register and the bytes
//                              (mtty loops TX into RX)                      {"ok":true}
//   read PORT                  {"scratch":90,"fifo":[104,105]} (drains the FIFO)
//   quit                       closes the device and exits 0
// An error answers {"error":"…"} and the holder goes on.

import { registerBuiltinBackends } from "../../../src/backends.ts";
import { loadBackendsFor, openDevice, systemFor } from "../../../src/device/open.ts";
import { parseState, stateName } from "../../../src/vfio/state_machine.ts";
import { programPort, readPort, uartRegisters } from "./uart.ts";

const spec = Deno.args[0];
if (!spec) {
  console.error("usage: holder.ts SPEC");
  Deno.exit(2);
}
registerBuiltinBackends(); // as cli.ts: the simulator is loaded only for a sim: spec
await loadBackendsFor([spec]);
const sys = systemFor([spec]);
const dev = openDevice(sys, spec);
const rw = uartRegisters(sys, dev.fd);

function answer(line: string): unknown {
  const [cmd, ...args] = line.trim().split(/\s+/);
  switch (cmd) {
    case "state":
      return { state: stateName(dev.migration.getState()) };
    case "set": {
      const r = dev.migration.setState(parseState(args[0]));
      if (r.dataFd !== null) sys.close(r.dataFd);
      return { state: stateName(dev.migration.getState()) };
    }
    case "program":
      programPort(rw, Number(args[0]), Number(args[1]), (args[2] ?? "").split(",").filter((x) => x).map(Number));
      return { ok: true };
    case "read":
      return readPort(rw, Number(args[0]));
    default:
      return { error: `unknown command ${cmd}` };
  }
}

console.log(JSON.stringify({ ready: true, pid: Deno.pid, fd: dev.fd, access: dev.access }));
const dec = new TextDecoder();
let buf = "";
for await (const chunk of Deno.stdin.readable) {
  buf += dec.decode(chunk, { stream: true });
  let nl: number;
  while ((nl = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, nl);
    buf = buf.slice(nl + 1);
    if (line.trim() === "quit") {
      dev.close();
      Deno.exit(0);
    }
    if (!line.trim()) continue;
    let out: unknown;
    try {
      out = answer(line);
    } catch (e) {
      out = { error: e instanceof Error ? e.message : String(e) };
    }
    console.log(JSON.stringify(out));
  }
}
dev.close();
