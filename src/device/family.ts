// Whether a device keeps its state when it is closed and opened again, by the family
// of the driver behind it.
//
// vfio-pci and every PCI variant driver (mlx5, hisi_acc, pds, qat, virtio, xe, …) sit on
// vfio-pci-core, which resets the function at the device's FIRST open
// (vfio_pci_core_enable -> pci_try_reset_function) and again at its LAST close
// (vfio_pci_core_disable -> __pci_reset_function_locked), when the function has a reset
// that works (vdev->reset_works, which VFIO_DEVICE_GET_INFO reports as
// VFIO_DEVICE_FLAGS_RESET): drivers/vfio/pci/vfio_pci_core.c. An mdev's state belongs to
// its parent driver, which keeps it across opens (samples/vfio-mdev/mtty.c does).
// So on a PCI function a fresh `save` captures post-reset state, and what a `load` put
// there is lost when the last fd is closed.

import { DEVICE_FLAGS } from "../../ffi/vfio_uapi.ts";
import type { Sysfs, SysfsDevice } from "./sysfs.ts";

/** The two driver families: a PCI function on vfio-pci-core, or a mediated device. */
export type FamilyKind = "pci" | "mdev";

/**
 * The family strings `info`, `list` and `--json` print, made by one rule (`familyName`):
 * - `vfio-pci`: a PCI function on vfio-pci-core;
 * - `mdev`: a mediated device (state kept by its parent driver);
 * - `BACKEND-pci` / `BACKEND-mdev`: a device of a backend (src/device/backend.ts) of that
 *   family: `sim-pci`, `sim-mdev` for the simulator (`sim create --family`, or the model's);
 * - `unknown`: nothing says (a borrowed fd sysfs could not name).
 */
export type DeviceFamily = "vfio-pci" | "mdev" | `${string}-pci` | `${string}-mdev` | "unknown";

/** The family string of a host device (`backend` null) or of a backend's device. */
export function familyName(kind: FamilyKind | "unknown", backend: string | null = null): DeviceFamily {
  if (kind === "unknown") return "unknown";
  if (backend !== null) return `${backend}-${kind}`;
  return kind === "pci" ? "vfio-pci" : "mdev";
}

export interface ResetBehaviour {
  family: DeviceFamily;
  /**
   * The device is reset when its last fd is closed (and was at its first open), so
   * its state does not survive a close. true for vfio-pci with a working reset; false for
   * an mdev or a function without a reset method; for `unknown`, true (assume the worst).
   */
  resetsOnClose: boolean;
  /** Why, in a few words: "vfio-pci resets the function". */
  reason: string;
}

/** "no (vfio-pci resets the function)" / "yes (mdev: its parent driver keeps it)". */
export function survivesCloseText(r: ResetBehaviour): string {
  return `${r.resetsOnClose ? "no" : "yes"} (${r.reason})`;
}

/**
 * The reset behaviour of a real device from sysfs, refined by VFIO_DEVICE_GET_INFO's
 * flags when the device is open (`deviceFlags`: VFIO_DEVICE_FLAGS_RESET is set exactly when
 * vfio-pci-core's first-open reset worked).
 */
export function realResetBehaviour(
  sysfs: Sysfs,
  dev: SysfsDevice | null,
  deviceFlags: number | null = null,
): ResetBehaviour {
  if (dev?.kind === "mdev") {
    return { family: familyName("mdev"), resetsOnClose: false, reason: "mdev: its parent driver keeps it" };
  }
  if (dev?.kind === "pci") {
    let works: boolean | null = null;
    if (deviceFlags !== null && deviceFlags & DEVICE_FLAGS.PCI) works = (deviceFlags & DEVICE_FLAGS.RESET) !== 0;
    if (works === null) {
      const methods = sysfs.resetMethods(dev);
      works = methods === null ? null : methods.length > 0;
    }
    if (works === false) {
      return {
        family: familyName("pci"),
        resetsOnClose: false,
        reason: "vfio-pci, but the function has no reset method: its state is kept",
      };
    }
    return { family: familyName("pci"), resetsOnClose: true, reason: "vfio-pci resets the function" };
  }
  return UNKNOWN_RESET;
}

/** The behaviour of a device nothing names: assume vfio-pci's. */
export const UNKNOWN_RESET: ResetBehaviour = {
  family: familyName("unknown"),
  resetsOnClose: true,
  reason: "unknown driver family: assume vfio-pci, which resets the function",
};

/**
 * The reset behaviour of a backend's device of family `kind` (the backend decides it:
 * the simulator by its one rule, src/sim/store.ts familyOf): a pci-family device is
 * reset at its first open and last close, an mdev keeps its state. `what` names the
 * backend's devices in the reason ("simulated").
 */
export function backendResetBehaviour(backend: string, kind: FamilyKind, what: string): ResetBehaviour {
  return kind === "pci"
    ? {
      family: familyName("pci", backend),
      resetsOnClose: true,
      reason: `${what} vfio-pci: reset at first open and last close`,
    }
    : { family: familyName("mdev", backend), resetsOnClose: false, reason: `${what} mdev: state kept` };
}

/** What an operation did with a device, for `freshOpenWarnings`. */
export type DeviceOperation = "save" | "load";

/** The facts freshOpenWarnings needs (VfioDevice has them). */
export interface FreshOpenFacts {
  label: string;
  access: string;
  resetsOnClose: boolean;
  openedFresh: boolean;
}

/**
 * The warnings to print (stderr, and --json) after a save or load on a device that
 * vfio-pci resets, when this process opened it fresh: a save then saved the state the
 * first-open reset left, not the state any workload had; a load's state is lost when
 * this process closes the device (its last close), unless the fd is handed on. Empty
 * for borrowed and inherited fds and for devices that keep their state.
 */
export function freshOpenWarnings(d: FreshOpenFacts, op: DeviceOperation): string[] {
  if (!d.resetsOnClose || !d.openedFresh) return [];
  if (op === "save") {
    return [
      `${d.label}: saved post-reset state: opening the device reset it (vfio-pci resets a function at its first ` +
      `open); to save the state a process holds, borrow it: --device pid:PID`,
    ];
  }
  if (d.access === "inherited") return []; // the process that handed the fd down may still hold it
  return [
    `${d.label}: the loaded state is lost when vfio-mig exits unless the fd is handed on: --exec CMD ` +
    `(vfio-pci resets a function at its last close)`,
  ];
}
