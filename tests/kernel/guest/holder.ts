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
// and for a PCI function (tests/kernel/groups/pci.ts), region by region (pread/pwrite at
// the region's offset; index 7 is config space, as vfio-pci virtualises it):
//   region-write INDEX OFF HEX {"ok":true}
//   region-read INDEX OFF LEN  {"hex":"0a0b…"}
//   churn INDEX OFF LEN        writes a counter (4 bytes, little endian) at OFF, OFF+4096, …
//                              below OFF+LEN every 20 ms until churn-stop; writes the device
//                              refuses (stopped) are counted, not errors   {"ok":true}
//   churn-stop                 {"writes":N,"refused":N,"last":N}
//   irq INDEX COUNT            VFIO_DEVICE_SET_IRQS, DATA_EVENTFD | ACTION_TRIGGER on IRQ index
//                              INDEX (1 MSI, 2 MSI-X) for vectors 0..COUNT-1, each with eventfd
//                              -1 (enabled, no trigger): vfio-pci enables MSI/MSI-X in the
//                              function, as a VMM does before its guest's vectors fire {"ok":true}
//   irq-info INDEX             VFIO_DEVICE_GET_IRQ_INFO for IRQ index INDEX (0 INTx, 1 MSI,
//                              2 MSI-X)                                {"flags":N,"count":N}
//   quit                       closes the device and exits 0
// An error answers {"error":"…"} and the holder goes on.

import { registerBuiltinBackends } from "../../../src/backends.ts";
import { loadBackendsFor, openDevice, systemFor } from "../../../src/device/open.ts";
import { parseState, stateName } from "../../../src/vfio/state_machine.ts";
import { decode, encode, IOCTL, STRUCTS } from "../../../ffi/vfio_uapi.ts";
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
const regionOffsets = new Map<number, number>();
function regionOffset(index: number): number {
  if (!regionOffsets.has(index)) {
    const ri = encode(STRUCTS.vfio_region_info, { argsz: 32, index });
    sys.ioctl(dev.fd, IOCTL.DEVICE_GET_REGION_INFO, ri);
    regionOffsets.set(index, decode(STRUCTS.vfio_region_info, ri).offset);
  }
  return regionOffsets.get(index)!;
}
const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (h: string) => new Uint8Array((h.match(/../g) ?? []).map((x) => parseInt(x, 16)));
let churn: { timer: ReturnType<typeof setInterval>; writes: number; refused: number; last: number } | null = null;
function churnStart(index: number, off: number, len: number): void {
  const c = { timer: 0 as unknown as ReturnType<typeof setInterval>, writes: 0, refused: 0, last: 0 };
  c.timer = setInterval(() => {
    const v = c.last + 1;
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    try {
      for (let at = off; at < off + len; at += 4096) sys.pwrite(dev.fd, b, regionOffset(index) + at);
      c.writes++;
      c.last = v;
    } catch {
      c.refused++;
    }
  }, 20);
  churn = c;
}

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
    case "region-write": {
      const b = unhex(args[2]);
      const n = sys.pwrite(dev.fd, b, regionOffset(Number(args[0])) + Number(args[1]));
      if (n !== b.length) throw new Error(`short write: ${n} of ${b.length}`);
      return { ok: true };
    }
    case "region-read": {
      const b = new Uint8Array(Number(args[2]));
      const n = sys.pread(dev.fd, b, regionOffset(Number(args[0])) + Number(args[1]));
      return { hex: hex(b.subarray(0, n)) };
    }
    case "irq": {
      // struct vfio_irq_set: argsz, flags, index, start, count (u32 each), then count s32 fds.
      const count = Number(args[1]);
      const b = new Uint8Array(20 + 4 * count);
      const v = new DataView(b.buffer);
      const DATA_EVENTFD = 1 << 2, ACTION_TRIGGER = 1 << 5;
      [b.length, DATA_EVENTFD | ACTION_TRIGGER, Number(args[0]), 0, count].forEach((x, i) =>
        v.setUint32(4 * i, x, true)
      );
      for (let i = 0; i < count; i++) v.setInt32(20 + 4 * i, -1, true);
      sys.ioctl(dev.fd, IOCTL.DEVICE_SET_IRQS, b);
      return { ok: true };
    }
    case "irq-info": {
      // struct vfio_irq_info: argsz, flags, index, count (u32 each).
      const b = new Uint8Array(16);
      const v = new DataView(b.buffer);
      v.setUint32(0, 16, true);
      v.setUint32(8, Number(args[0]), true);
      sys.ioctl(dev.fd, IOCTL.DEVICE_GET_IRQ_INFO, b);
      return { flags: v.getUint32(4, true), count: v.getUint32(12, true) };
    }
    case "churn":
      if (churn) throw new Error("already churning");
      churnStart(Number(args[0]), Number(args[1]), Number(args[2]));
      return { ok: true };
    case "churn-stop": {
      if (!churn) throw new Error("not churning");
      clearInterval(churn.timer);
      const { writes, refused, last } = churn;
      churn = null;
      return { writes, refused, last };
    }
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
