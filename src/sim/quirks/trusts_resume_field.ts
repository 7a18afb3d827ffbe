// trusts-resume-field (not conformant; a planted defect for `check --torture`, modelled on
// the resume paths that copied a count from the incoming stream and used it as a bound,
// the class of bug KASAN reports as slab-out-of-bounds): mtty's resume write no longer
// checks the header's nr_ports (u32 at byte 16) against the device's ports; the header's
// other fields are still checked (EFAULT). A load (RESUMING -> STOP) of data whose
// nr_ports differs succeeds; the driver then walks that many ports, and two calls on the
// device later it "crashes": a KASAN report and an Oops go to the kernel log (the
// simulated /dev/kmsg, kmsg.ts) and the device stops answering: every later call on it,
// in any process, blocks for ever (a task in D state), until the device is recreated.

import { DeviceState } from "../../vfio/state_machine.ts";
import { type MigrationFile, type SimDevice, sleepMs } from "../driver.ts";
import { KERN, simPrintk } from "../kmsg.ts";
import { MTTY_HEADER_SIZE, mttyPorts } from "../models.ts";
import type { QuirkDef } from "../quirks.ts";

const NR_PORTS_AT = 16;
/** The nr_ports each resume file's header claimed (when it differs from the device's). */
const claimed = new WeakMap<MigrationFile, number>();

interface Crash {
  /** The load of an untrusted nr_ports is under way (set at the arc, confirmed after the SET). */
  loading: number | null;
  /** Calls left before the crash; null: none pending. */
  countdown: number | null;
  nrPorts: number;
}

function data(dev: SimDevice): Crash {
  let d = dev.quirkData.get("trusts-resume-field") as Crash | undefined;
  if (!d) dev.quirkData.set("trusts-resume-field", d = { loading: null, countdown: null, nrPorts: 0 });
  return d;
}

function crashedPath(dev: SimDevice): string {
  return `${dev.store.dir}/crashed`;
}

function isCrashed(dev: SimDevice): boolean {
  try {
    dev.host.stat(crashedPath(dev));
    return true;
  } catch {
    return false;
  }
}

/** Blocks the calling thread for ever: the task never comes back from the kernel. */
function wedge(): never {
  for (;;) sleepMs(3_600_000);
}

export const trustsResumeField: QuirkDef = {
  summary: "resume trusts the header's nr_ports; a load of a wrong one 'crashes' two calls later " +
    "(KASAN report in the simulated kmsg, then every call blocks)",
  conformant: false,
  source: "planted defect (torture positive control): a length from resume data used as a bound",
  models: ["mtty-1", "mtty-2"],
  v2Only: true,
  behaviour: {
    call(dev) {
      if (isCrashed(dev)) wedge();
      const d = data(dev);
      if (d.countdown === null) return;
      if (--d.countdown > 0) return;
      simPrintk(
        dev.host,
        dev.store.dir,
        KERN.ERR,
        [
          "==================================================================",
          "BUG: KASAN: slab-out-of-bounds in mtty_trusted_port_read+0x54/0x90 [mtty]",
          `Read of size 36 at addr ffff888104a3c9e0 by task vfio-mig (nr_ports ${d.nrPorts} from resume data)`,
          "Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] SMP KASAN",
        ].join("\n"),
      );
      try {
        dev.host.close(dev.host.open(crashedPath(dev), 0o101, /* O_WRONLY|O_CREAT */ 0o644));
      } catch { /* wedged all the same */ }
      wedge();
    },
    write(dev, file, buf, next) {
      // The header's nr_ports, as far as this write covers it: the device's own value goes
      // on to mtty's check, the claimed one is remembered.
      const start = file.pos;
      if (start >= MTTY_HEADER_SIZE || start + buf.length <= NR_PORTS_AT) return next(buf);
      const b = buf.slice();
      const have = new Uint8Array(4);
      new DataView(have.buffer).setUint32(0, claimed.get(file) ?? mttyPorts(dev.meta.model), true);
      const own = new Uint8Array(4);
      new DataView(own.buffer).setUint32(0, mttyPorts(dev.meta.model), true);
      for (let i = 0; i < 4; i++) {
        const at = NR_PORTS_AT + i - start;
        if (at < 0 || at >= b.length) continue;
        have[i] = b[at];
        b[at] = own[i];
      }
      claimed.set(file, new DataView(have.buffer).getUint32(0, true));
      return next(b);
    },
    arc(dev, a) {
      const d = data(dev);
      d.loading = null;
      if (a.cur !== DeviceState.RESUMING || a.next !== DeviceState.STOP) return;
      const f = dev.driver.resuming;
      const n = f ? claimed.get(f) : undefined;
      if (n !== undefined && n !== mttyPorts(dev.meta.model)) d.loading = n;
    },
    afterSet(dev) {
      const d = data(dev);
      if (d.loading !== null && d.countdown === null) {
        d.nrPorts = d.loading;
        d.countdown = 2;
      }
      d.loading = null;
      return null;
    },
  },
};
