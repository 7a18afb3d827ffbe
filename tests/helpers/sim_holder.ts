// A process that holds a simulated device, for the tests of borrowed fds
// (tests/sim/sim_family_test.ts): it opens the device through its own SimKernel, prints
// {"pid": P, "fd": N}, then answers one command per stdin line with one stdout line:
//   state          the migration state (a number)
//   set N          SET MIG_DEVICE_STATE N, then prints the state
//   scr [V]        reads (or writes V into) port 0's UART scratch register (mtty)
//   irq I [N]      VFIO_DEVICE_SET_IRQS on IRQ index I: N vectors armed without eventfds
//                  (DATA_EVENTFD, fds -1), or without N disarmed (DATA_NONE, count 0); prints ok
//   cfg OFF [B]    reads config space's 16-bit word at OFF (or writes byte B there first)
//   close          closes the device fd (a pci-family device resets if nobody else holds it)
//   exit           exits (without closing, like a process that just ends)
//
//   deno run --allow-ffi --allow-read tests/helpers/sim_holder.ts DEVICE_FOLDER

import { libc } from "../../ffi/libc.ts";
import { O } from "../../ffi/sys.ts";
import { decode, encodeInto, FEATURE, FEATURE_FLAGS, IOCTL, STRUCTS } from "../../ffi/vfio_uapi.ts";
import { SimKernel } from "../../src/sim/kernel.ts";

const k = new SimKernel(libc());
const CONFIG = 7 * 2 ** 40; // VFIO_PCI_CONFIG_REGION_INDEX's offset
const fd = k.open(`sim:${Deno.args[0]}`, O.RDWR | O.CLOEXEC);

function feature(flags: number, state = 0): number {
  const b = new Uint8Array(16);
  encodeInto(STRUCTS.vfio_device_feature, { argsz: 16, flags: flags | FEATURE.MIG_DEVICE_STATE }, b);
  encodeInto(STRUCTS.vfio_device_feature_mig_state, { device_state: state, data_fd: -1 }, b, 8);
  k.ioctl(fd, IOCTL.DEVICE_FEATURE, b);
  return decode(STRUCTS.vfio_device_feature_mig_state, b, 8).device_state;
}

const out = (line: string) => Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
out(JSON.stringify({ pid: Deno.pid, fd }));

let pending = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf("\n")) >= 0) {
    const [cmd, arg, ...rest] = pending.slice(0, nl).trim().split(/\s+/);
    pending = pending.slice(nl + 1);
    try {
      if (cmd === "state") out(String(feature(FEATURE_FLAGS.GET)));
      else if (cmd === "set") {
        feature(FEATURE_FLAGS.SET, Number(arg));
        out(String(feature(FEATURE_FLAGS.GET)));
      } else if (cmd === "scr") {
        const b = new Uint8Array([Number(arg ?? 0)]);
        if (arg !== undefined) k.pwrite(fd, b, 7);
        else k.pread(fd, b, 7);
        out(String(b[0]));
      } else if (cmd === "irq") {
        const n = Number(rest[0] ?? 0);
        const b = new Uint8Array(20 + 4 * n);
        const v = new DataView(b.buffer);
        const flags = rest[0] === undefined ? (1 << 0) | (1 << 5) : (1 << 2) | (1 << 5);
        [b.length, flags, Number(arg), 0, n].forEach((x, i) => v.setUint32(4 * i, x, true));
        for (let i = 0; i < n; i++) v.setInt32(20 + 4 * i, -1, true);
        k.ioctl(fd, IOCTL.DEVICE_SET_IRQS, b);
        out("ok");
      } else if (cmd === "cfg") {
        const at = CONFIG + Number(arg);
        if (rest[0] !== undefined) k.pwrite(fd, new Uint8Array([Number(rest[0])]), at);
        const b = new Uint8Array(2);
        k.pread(fd, b, at);
        out(String(b[0] | (b[1] << 8)));
      } else if (cmd === "close") {
        k.close(fd);
        out("closed");
      } else if (cmd === "exit") Deno.exit(0);
      else out(`unknown ${cmd}`);
    } catch (e) {
      out(`error ${e instanceof Error ? e.message : e}`);
    }
  }
}
