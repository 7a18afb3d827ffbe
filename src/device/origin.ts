// Where a device's migration data comes from, as far as the host can tell: the kernel
// release and the driver module's version and srcversion (sysfs). Drivers change their
// data format between kernels (hisi_acc did in 6.16), so a stream records its source's
// origin and a load compares it with the destination's.

import type { Sys } from "../../ffi/sys.ts";
import { readSmallFile } from "../io.ts";

export interface DeviceOrigin {
  /** uname -r of the host (/proc/sys/kernel/osrelease), or null. */
  kernel: string | null;
  /** The driver's module, or null (built in, simulated, unknown). */
  driverModule: string | null;
  /** /sys/module/M/version (MODULE_VERSION), or null. */
  driverVersion: string | null;
  /** /sys/module/M/srcversion (a checksum of the module's source), or null. */
  driverSrcversion: string | null;
}

function readLine(sys: Sys, path: string): string | null {
  try {
    const text = new TextDecoder().decode(readSmallFile(sys, path, 4096)).trim();
    return text === "" ? null : text;
  } catch {
    return null;
  }
}

/**
 * The origin of a device bound to `driver` (its sysfs driver name, e.g. mtty,
 * mlx5_vfio_pci, vfio-pci): the module is the driver's name with '-' as '_' when
 * /sys/module has it. `sysfsRoot` and `procRoot` move for tests.
 */
export function deviceOrigin(
  sys: Sys,
  driver: string | null,
  roots: { sysfs?: string; proc?: string } = {},
): DeviceOrigin {
  const sysfs = roots.sysfs ?? (sys.getenv("VFIO_MIG_SYSFS") || "/sys");
  const proc = roots.proc ?? "/proc";
  const kernel = readLine(sys, `${proc}/sys/kernel/osrelease`);
  let driverModule: string | null = null;
  if (driver) {
    const m = driver.replaceAll("-", "_");
    try {
      sys.stat(`${sysfs}/module/${m}`);
      driverModule = m;
    } catch { /* built in, or not a module */ }
  }
  return {
    kernel,
    driverModule,
    driverVersion: driverModule ? readLine(sys, `${sysfs}/module/${driverModule}/version`) : null,
    driverSrcversion: driverModule ? readLine(sys, `${sysfs}/module/${driverModule}/srcversion`) : null,
  };
}

/**
 * What differs between a stream's origin and the destination's, as warning texts
 * (none when equal or unknown on either side). Not a refusal: the driver validates.
 */
export function originDifferences(stream: Partial<DeviceOrigin> | undefined, dest: DeviceOrigin): string[] {
  if (!stream || typeof stream !== "object") return [];
  const out: string[] = [];
  const differ = (a: unknown, b: unknown) => typeof a === "string" && typeof b === "string" && a !== b;
  if (differ(stream.kernel, dest.kernel)) {
    out.push(`the stream was saved on kernel ${stream.kernel}; this host runs ${dest.kernel}`);
  }
  if (differ(stream.driverVersion, dest.driverVersion)) {
    out.push(
      `its driver ${stream.driverModule ?? ""} was version ${stream.driverVersion}; here it is ${dest.driverVersion}`,
    );
  } else if (differ(stream.driverSrcversion, dest.driverSrcversion)) {
    out.push(
      `its driver ${stream.driverModule ?? ""} was built from other sources (srcversion ${stream.driverSrcversion}; ` +
        `here ${dest.driverSrcversion})`,
    );
  }
  return out;
}
