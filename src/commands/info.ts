import { isErrno } from "../../ffi/errno.ts";
import { DEVICE_FLAGS, FEATURE, MIGRATION_FLAGS } from "../../ffi/vfio_uapi.ts";
import { defaultDeviceSpec, openDevice, systemFor, type VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { parseState, stateName, supportedStates } from "../migration/state_machine.ts";
import { recoverDevice } from "../migrate/session.ts";
import { type Command, EXIT_CODES_HELP, hex, parse, printJson } from "./command.ts";

export interface DeviceReport {
  device: string;
  access: string;
  kind: string;
  driver: string | null;
  mdevType: string | null;
  vendor: number | null;
  deviceId: number | null;
  subsystemVendor: number | null;
  subsystemDevice: number | null;
  deviceFlags: number | null;
  migratable: boolean;
  protocol: "v2" | null;
  migrationFlags: number | null;
  migrationFlagNames: string[];
  dataSize: number | null;
  state: string | null;
  supportedStates: string[];
  dmaLogging: boolean;
}

export function describeDevice(d: VfioDevice): DeviceReport {
  let flags: number | null = null;
  try {
    flags = d.migration.migrationFlags();
  } catch (e) {
    if (!isErrno(e, "ENOTTY")) throw e;
  }
  let devFlags: number | null = null;
  try {
    devFlags = d.deviceInfo().flags;
  } catch { /* not every device answers GET_INFO the same; not needed here */ }
  const pci = d.info.pci;
  return {
    device: d.label,
    access: d.access,
    kind: d.info.kind,
    driver: d.info.driver,
    mdevType: d.info.mdevType,
    vendor: pci?.vendor ?? null,
    deviceId: pci?.device ?? null,
    subsystemVendor: pci?.subsystemVendor ?? null,
    subsystemDevice: pci?.subsystemDevice ?? null,
    deviceFlags: devFlags,
    migratable: flags !== null,
    protocol: flags !== null ? "v2" : null,
    migrationFlags: flags,
    migrationFlagNames: flags === null
      ? []
      : Object.entries(MIGRATION_FLAGS).filter(([, v]) => flags! & v).map(([k]) => k),
    dataSize: flags !== null ? d.migration.dataSize() : null,
    state: flags !== null ? stateName(d.migration.getState()) : null,
    supportedStates: flags !== null ? supportedStates(flags).map(stateName) : [],
    dmaLogging: flags !== null && d.migration.probe(FEATURE.DMA_LOGGING_START, true),
  };
}

export const infoCommand: Command = {
  name: "info",
  summary: "show a device's identity, migration flags, data size and state",
  help: `Usage: vfio-mig info [--device D] [--json]

Opens the device and reports its identity (driver, mdev type, PCI ids), whether its
driver supports migration (uAPI v2), the migration flags (STOP_COPY, P2P, PRE_COPY),
MIG_DATA_SIZE, the current migration state and DMA logging support. Changes nothing.

Options:
  -d, --device D   as for save (default: $VFIO_MIG_DEVICE or the only candidate)
      --json       machine-readable output
  -h, --help       this help

${EXIT_CODES_HELP}`,
  run(args) {
    const { values } = parse("info", args, {
      device: { type: "string", short: "d" },
      json: { type: "boolean" },
    });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    const spec = values.device ?? defaultDeviceSpec(systemFor([]));
    const dev = openDevice(systemFor([spec]), spec);
    try {
      const r = describeDevice(dev);
      if (values.json) printJson(r);
      else {
        console.log(`device:          ${r.device} (${r.kind}, opened via ${r.access})`);
        console.log(`driver:          ${r.driver ?? "?"}${r.mdevType ? `, mdev type ${r.mdevType}` : ""}`);
        console.log(`PCI ids:         ${hex(r.vendor)}:${hex(r.deviceId)} subsystem ${hex(r.subsystemVendor)}:${hex(r.subsystemDevice)}`);
        if (r.deviceFlags !== null) {
          const names = Object.entries(DEVICE_FLAGS).filter(([, v]) => r.deviceFlags! & v).map(([k]) => k);
          console.log(`device flags:    ${hex(r.deviceFlags, 1)} (${names.join(" ") || "none"})`);
        }
        if (!r.migratable) console.log(`migration:       not supported by this driver (ENOTTY)`);
        else {
          console.log(`migration:       uAPI v2, flags ${hex(r.migrationFlags, 1)} (${r.migrationFlagNames.join(" ")})`);
          console.log(`MIG_DATA_SIZE:   ${r.dataSize ?? "not reported"}`);
          console.log(`state:           ${r.state}`);
          console.log(`states:          ${r.supportedStates.join(" ")}`);
          console.log(`DMA logging:     ${r.dmaLogging ? "yes" : "no"}`);
        }
      }
      return Promise.resolve(0);
    } finally {
      dev.close();
    }
  },
};

export const stateCommand: Command = {
  name: "state",
  summary: "print a device's migration state, or request a new one",
  help: `Usage: vfio-mig state [--device D] [STATE]

Without STATE, prints the current migration state. With STATE (STOP, RUNNING,
RUNNING_P2P, STOP_COPY, RESUMING, PRE_COPY, PRE_COPY_P2P) requests it with
MIG_DEVICE_STATE SET and prints the state reached; a data_fd the kernel hands out is
closed at once (its session is then abandoned). STOP_COPY -> PRE_COPY* is refused
without asking the kernel (it hangs kernels 6.2 until the 2026 fix).

${EXIT_CODES_HELP}`,
  run(args) {
    const { values, positionals } = parse("state", args, { device: { type: "string", short: "d" } });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    const spec = values.device ?? defaultDeviceSpec(systemFor([]));
    const dev = openDevice(systemFor([spec]), spec);
    try {
      if (positionals.length > 1) throw new VfioMigError("state: give at most one STATE", "usage");
      if (positionals.length === 1) {
        let target;
        try {
          target = parseState(positionals[0]);
        } catch (e) {
          throw new VfioMigError(`state: ${(e as Error).message}`, "usage");
        }
        const r = dev.migration.setState(target);
        if (r.dataFd !== null) dev.sys.close(r.dataFd);
      }
      console.log(stateName(dev.migration.getState()));
      return Promise.resolve(0);
    } finally {
      dev.close();
    }
  },
};

export const resetCommand: Command = {
  name: "reset",
  summary: "reset a device (VFIO_DEVICE_RESET): recovers ERROR and aborts RESUMING",
  help: `Usage: vfio-mig reset [--device D]

Issues VFIO_DEVICE_RESET. The migration state becomes RUNNING and any open migration
data_fd stops working; the device's internal state is lost.

${EXIT_CODES_HELP}`,
  run(args) {
    const { values } = parse("reset", args, { device: { type: "string", short: "d" } });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    const spec = values.device ?? defaultDeviceSpec(systemFor([]));
    const dev = openDevice(systemFor([spec]), spec);
    try {
      console.log(recoverDevice(dev, parseState("RUNNING"), true));
      return Promise.resolve(0);
    } finally {
      dev.close();
    }
  },
};
