// The simulated kernel log: what /dev/kmsg is for the simulated devices. A quirk that
// models a driver bug the real kernel would report (KASAN, an Oops) appends a record
// here, in /dev/kmsg's own format ("PRIO,SEQ,USEC,FLAGS;TEXT", one record a line:
// Documentation/ABI/testing/dev-kmsg), so the torture's kernel-log watcher
// (src/check/torture/kmsg.ts) reads it as it reads the real one. The file is the
// device's store folder's `kmsg`: it outlives the process, as the kernel's log does.

import { O, type Sys } from "../../ffi/sys.ts";

/** KERN_* log levels as /dev/kmsg reports them (the PRIO field's low 3 bits). */
export const KERN = { EMERG: 0, ALERT: 1, CRIT: 2, ERR: 3, WARNING: 4, NOTICE: 5, INFO: 6, DEBUG: 7 } as const;

/** The simulated /dev/kmsg of the device stored in `dir`. */
export function simKmsgPath(dir: string): string {
  return `${dir}/kmsg`;
}

let seq = 0;

/**
 * printk for a simulated device: appends one record per line of `text` at `level`.
 * Errors are ignored (a log that cannot be written does not change the device's answer).
 */
export function simPrintk(host: Sys, dir: string, level: number, text: string): void {
  const usec = Math.round(performance.timeOrigin * 1000 + performance.now() * 1000);
  const lines = text.split("\n").map((l) => `${level},${++seq},${usec},-;${l}\n`).join("");
  try {
    const fd = host.open(simKmsgPath(dir), O.WRONLY | O.CREAT | O.APPEND | O.CLOEXEC, 0o644);
    try {
      host.write(fd, new TextEncoder().encode(lines));
    } finally {
      host.close(fd);
    }
  } catch { /* no log */ }
}
