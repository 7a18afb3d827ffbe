// Handing an open device to a command: the state a load put into a vfio-pci function
// is lost at the device's last close, so `load --exec CMD` keeps it alive by running
// CMD with the device fd inherited.
//
// Only the device fd has to cross: a group-path device file holds a reference on its
// group file, which holds the container (drivers/vfio/group.c vfio_group_fops_release:
// "Device FDs hold a group file reference"), and a cdev bound with BIND_IOMMUFD holds
// its iommufd context (drivers/vfio/device_cdev.c: iommufd_ctx_from_fd, released at
// unbind). So the group, container and iommufd fds keep FD_CLOEXEC and close at exec;
// the device stays usable in CMD, and stays open after this process exits for as long
// as CMD (or anything it hands the fd to) holds it.

import { isErrno } from "../../ffi/errno.ts";
import { environment, sendSignal, spawn, waitChild } from "../../ffi/process.ts";
import { F, FD_CLOEXEC } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import type { VfioDevice } from "./device.ts";
import { PCI_ADDR, UUID } from "./sysfs.ts";

/** The variables CMD finds the device by. */
export const DEVICE_FD_ENV = "VFIO_MIG_DEVICE_FD";
/** The device's sysfs name (PCI address, mdev UUID), when known: `fd:N` uses it to name the device. */
export const DEVICE_NAME_ENV = "VFIO_MIG_DEVICE_NAME";

export interface ExecOptions {
  /** More environment for CMD, over ours. */
  env?: Record<string, string>;
  /** When aborted, CMD gets SIGTERM (the wait goes on until it ends). */
  signal?: AbortSignal;
}

const SIGTERM = 15;

/**
 * Runs `argv` (argv[0] looked up in PATH) with the device fd inherited, its number in
 * VFIO_MIG_DEVICE_FD (and the device's sysfs name in VFIO_MIG_DEVICE_NAME when known),
 * waits for it and returns its exit code (128 + N when signal N killed it). CMD can use
 * the device as `vfio-mig … --device fd:$VFIO_MIG_DEVICE_FD` or through the library's
 * openDeviceFd. This process keeps its own fd (FD_CLOEXEC is cleared only for the
 * spawn): the device stays open while either holds it.
 *
 * Started with posix_spawnp (ffi/process.ts): no --allow-run needed. Throws
 * VfioMigError (failure) when CMD cannot be started (ENOENT: no such command; EACCES).
 */
export async function execWithDeviceFd(dev: VfioDevice, argv: string[], opts: ExecOptions = {}): Promise<number> {
  if (argv.length === 0) throw new VfioMigError("--exec needs a command", "usage");
  const sys = dev.sys;
  const env = new Map<string, string>();
  for (const kv of environment()) {
    const eq = kv.indexOf("=");
    if (eq > 0) env.set(kv.slice(0, eq), kv.slice(eq + 1));
  }
  env.delete(DEVICE_NAME_ENV);
  for (const [k, v] of Object.entries(opts.env ?? {})) env.set(k, v);
  env.set(DEVICE_FD_ENV, String(dev.fd));
  if (dev.info.kind !== "sim" && (PCI_ADDR.test(dev.info.name) || UUID.test(dev.info.name))) {
    env.set(DEVICE_NAME_ENV, dev.info.name);
  }
  const flags = sys.fcntl(dev.fd, F.GETFD);
  let pid: number;
  sys.fcntl(dev.fd, F.SETFD, flags & ~FD_CLOEXEC);
  try {
    pid = spawn(argv, [...env].map(([k, v]) => `${k}=${v}`));
  } catch (e) {
    const why = isErrno(e, "ENOENT")
      ? "no such command"
      : isErrno(e, "EACCES")
      ? "permission denied"
      : e instanceof Error
      ? e.message
      : String(e);
    throw new VfioMigError(`--exec ${argv[0]}: cannot start it: ${why}`, "failure", { cause: e });
  } finally {
    try {
      sys.fcntl(dev.fd, F.SETFD, flags);
    } catch { /* the child has its copy either way */ }
  }
  const onAbort = () => {
    try {
      sendSignal(pid, SIGTERM);
    } catch { /* already gone */ }
  };
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const exit = await waitChild(pid);
    return exit.code ?? 128 + (exit.signal ?? 0);
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
  }
}
