// One migration-control interface for either protocol: uAPI v2's MIG_DEVICE_STATE
// feature (include/uapi/linux/vfio.h) and the deprecated v1 migration region's
// device_state register (QEMU 7.2 hw/vfio/migration.c). `state`, `info` and `list` ask
// it for the state and request states through it; the save and resume sessions
// (src/migrate/protocol.ts) drive the protocols' data phases.

import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { DeviceState, stateName } from "../vfio/state_machine.ts";
import { MigrationV1, V1, v1StateName } from "../vfio/v1.ts";
import type { MigrationV2 } from "../vfio/v2.ts";

/** Which protocol a device's migration is controlled through. */
export type ControlProtocol = "v1" | "v2";

/** The state of a device's migration, read and requested through its protocol. */
export interface MigrationControl {
  readonly protocol: ControlProtocol;
  /** The current state as the protocol names it: v2 "RUNNING"; v1 "running (001b)". Throws SysError. */
  state(): string;
  /**
   * Requests `target` (a v2 state; for v1, the device_state QEMU 7.2 sets for it: STOP
   * 000b, RUNNING 001b, STOP_COPY 010b, PRE_COPY 011b, RESUMING 100b) and returns the
   * state reached, as `state()` names it. A data_fd the kernel hands out (v2) is closed
   * at once: its session is abandoned. Throws VfioMigError (usage) for a state v1 has
   * no device_state for (the P2P states), SysError / VfioMigError from the kernel.
   */
  setState(target: DeviceState): string;
}

/** What the control needs of an open device (VfioDevice has it). */
export interface ControlledDevice {
  readonly sys: Sys;
  readonly fd: number;
  readonly label: string;
  readonly migration: MigrationV2;
  deviceInfo(): { numRegions: number };
}

/** The v1 device_state QEMU 7.2 sets for each v2 state (hw/vfio/migration.c, v1 era). */
export const V1_STATE_BITS: ReadonlyMap<DeviceState, number> = new Map<DeviceState, number>([
  [DeviceState.STOP, V1.STOP],
  [DeviceState.RUNNING, V1.RUNNING],
  [DeviceState.STOP_COPY, V1.SAVING],
  [DeviceState.PRE_COPY, V1.RUNNING | V1.SAVING],
  [DeviceState.RESUMING, V1.RESUMING],
]);

/** The device's v1 migration region (CAP_TYPE type 3 / subtype 1), or null. Never throws. */
export function findV1(d: ControlledDevice): MigrationV1 | null {
  try {
    return MigrationV1.find(d.sys, d.fd, d.label, d.deviceInfo().numRegions);
  } catch {
    return null;
  }
}

/** The v2 migration flags, or null when the device has no uAPI v2 migration (ENOTTY and the like). */
function v2Flags(d: ControlledDevice): number | null {
  try {
    return d.migration.migrationFlags();
  } catch {
    return null;
  }
}

function v2Control(d: ControlledDevice): MigrationControl {
  return {
    protocol: "v2",
    state: () => stateName(d.migration.getState()),
    setState(target) {
      const r = d.migration.setState(target);
      if (r.dataFd !== null) d.sys.close(r.dataFd);
      return stateName(d.migration.getState());
    },
  };
}

function v1Control(m: MigrationV1): MigrationControl {
  return {
    protocol: "v1",
    state: () => v1StateName(m.readState()),
    setState(target) {
      const bits = V1_STATE_BITS.get(target);
      if (bits === undefined) {
        throw new VfioMigError(`state: ${stateName(target)} has no v1 device_state (v1 has no P2P states)`, "usage");
      }
      m.setState(~V1.MASK, bits, `state ${stateName(target)}`);
      return v1StateName(m.readState());
    },
  };
}

/**
 * The control of the device's migration through `want` (auto: v2 when the device has
 * it, else v1), or null when the device speaks no such protocol. Only GET calls and a
 * region scan: nothing changes.
 */
export function migrationControl(
  d: ControlledDevice,
  want: ControlProtocol | "auto" = "auto",
): MigrationControl | null {
  if (want !== "v1" && v2Flags(d) !== null) return v2Control(d);
  if (want === "v2") return null;
  const m = findV1(d);
  return m ? v1Control(m) : null;
}
