// Fault injection for the simulated kernel: "KEY@N=ERRNO" makes the Nth call whose key
// starts with KEY fail (ERRNO "short" halves the length of a read or write instead).
// Keys look like "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET", "read:data_fd",
// "write:host", "v1:pending_bytes".

import { Errno } from "../../ffi/errno.ts";
import type { IoctlArg } from "../../ffi/sys.ts";
import { FEATURE, FEATURE_FLAGS, IOCTL } from "../../ffi/vfio_uapi.ts";

export interface Fault {
  key: string;
  nth: number;
  errno: number | "short";
  seen: number;
}

/** Parses VFIO_MIG_SIM_FAULTS: a comma list of KEY@N=ERRNO (or =short). */
export function parseFaults(spec: string | undefined): Fault[] {
  if (!spec) return [];
  return spec.split(",").filter((s) => s.trim()).map((item) => {
    const m = /^([A-Za-z0-9_:]+)@(\d+)=([A-Z0-9]+|short)$/.exec(item.trim());
    if (!m) throw new Error(`bad fault "${item}": expected KEY@N=ERRNO, e.g. write:data_fd@2=EIO`);
    const e = m[3] === "short" ? "short" : (Errno as Record<string, number>)[m[3]];
    if (e === undefined) throw new Error(`bad fault "${item}": unknown errno ${m[3]}`);
    return { key: m[1], nth: Number(m[2]), errno: e, seen: 0 };
  });
}

export const IOCTL_NAMES = new Map<number, string>(Object.entries(IOCTL).map(([k, v]) => [v, k]));
const FEATURE_NAMES = new Map<number, string>(Object.entries(FEATURE).map(([k, v]) => [v, k]));

/** The fault and log key of an ioctl on a device or data_fd. */
export function ioctlKey(request: number, arg: IoctlArg): string {
  const name = IOCTL_NAMES.get(request) ?? `0x${request.toString(16)}`;
  if (request === IOCTL.DEVICE_FEATURE && arg instanceof Uint8Array && arg.length >= 8) {
    const flags = new DataView(arg.buffer, arg.byteOffset).getUint32(4, true);
    const id = flags & FEATURE_FLAGS.MASK;
    const op = flags & FEATURE_FLAGS.PROBE ? "PROBE" : flags & FEATURE_FLAGS.SET ? "SET" : "GET";
    return `ioctl:${name}:${FEATURE_NAMES.get(id) ?? id}:${op}`;
  }
  return `ioctl:${name}`;
}
