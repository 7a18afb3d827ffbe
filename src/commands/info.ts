import { isErrno } from "../../ffi/errno.ts";
import { DEVICE_FLAGS, FEATURE, MIGRATION_FLAGS } from "../../ffi/vfio_uapi.ts";
import { type DeviceFamily, survivesCloseText } from "../device/family.ts";
import { defaultDeviceSpec, type DeviceHolder, openDevice, systemFor, type VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { DeviceState, parseState, stateName, supportedStates } from "../migration/state_machine.ts";
import { recoverDevice, tryGetState } from "../migrate/session.ts";
import { type ConfigSummary, describeConfig, summarizeConfig } from "../migrate/config_state.ts";
import { chooseProtocol, parseProtocol, type ProtocolChoice, v1Of } from "../migrate/protocol.ts";
import { mmapAreas } from "../migration/regions.ts";
import { V1, v1StateName } from "../migration/v1.ts";
import { type Command, EXIT_CODES_HELP, hex, parse, printJson } from "./command.ts";

export interface DeviceReport {
  device: string;
  /** How this process got the fd: group, cdev, sim (opened here), borrowed (pid:), inherited (fd:). */
  access: string;
  /** How the device file was opened (here, or by the holder): group, cdev or sim. */
  path: string;
  /** The sysfs name (PCI address, mdev UUID) or sim folder; the spec when it could not be told. */
  name: string;
  /** For an fd sysfs could not tell apart: the devices it may be. */
  candidates: string[];
  /** The process a borrowed fd was taken from. */
  holder: DeviceHolder | null;
  /** This process performed the device's first open (a vfio-pci function was reset by it). */
  openedFresh: boolean;
  /** vfio-pci, mdev, sim-pci, sim-mdev or unknown: decides whether state survives a close. */
  family: DeviceFamily;
  /** false when the device is reset at its last close (vfio-pci with a working reset). */
  stateSurvivesClose: boolean;
  resetReason: string;
  kind: string;
  driver: string | null;
  mdevType: string | null;
  vendor: number | null;
  deviceId: number | null;
  subsystemVendor: number | null;
  subsystemDevice: number | null;
  /** Why the PCI ids are unknown on a PCI device (no readable config region: a driver defect), or null. */
  pciIdsUnknown: string | null;
  deviceFlags: number | null;
  migratable: boolean;
  /** v2 when the device has uAPI v2 (preferred), else v1 when it has the v1 region. */
  protocol: "v1" | "v2" | null;
  /** The v1 migration region, when the device has one (even if it also speaks v2). */
  v1: V1Report | null;
  /** Decoded PCI config space header, read through the config region. */
  config: ConfigSummary | null;
  migrationFlags: number | null;
  migrationFlagNames: string[];
  dataSize: number | null;
  state: string | null;
  supportedStates: string[];
  dmaLogging: boolean;
}

export interface V1Report {
  regionIndex: number;
  regionSize: number;
  regionFlags: number;
  /** The data section's mmap-able areas (region offsets); the rest is pread/pwrite only. */
  mmapAreas: { offset: number; size: number }[];
  state: string;
}

export function describeDevice(d: VfioDevice, want: ProtocolChoice = "auto"): DeviceReport {
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
  const m = v1Of(d);
  const v1: V1Report | null = m && {
    regionIndex: m.region.index,
    regionSize: m.region.size,
    regionFlags: m.region.flags,
    mmapAreas: mmapAreas(m.region),
    state: v1StateName(m.readState()),
  };
  const cfg = d.readConfig();
  return {
    device: d.label,
    access: d.access,
    path: d.path,
    name: d.info.name,
    candidates: d.candidates,
    holder: d.holder,
    openedFresh: d.openedFresh,
    family: d.family,
    stateSurvivesClose: !d.resetsOnClose,
    resetReason: d.reset.reason,
    kind: d.info.kind,
    driver: d.info.driver,
    mdevType: d.info.mdevType,
    vendor: pci?.vendor ?? null,
    deviceId: pci?.device ?? null,
    subsystemVendor: pci?.subsystemVendor ?? null,
    subsystemDevice: pci?.subsystemDevice ?? null,
    pciIdsUnknown: pci ? null : d.info.pciUnknown ?? null,
    deviceFlags: devFlags,
    migratable: flags !== null || v1 !== null,
    protocol: want === "v1"
      ? (v1 !== null ? "v1" : null)
      : want === "v2"
      ? (flags !== null ? "v2" : null)
      : flags !== null
      ? "v2"
      : v1 !== null
      ? "v1"
      : null,
    v1,
    config: cfg ? summarizeConfig(cfg) : null,
    migrationFlags: flags,
    migrationFlagNames: flags === null
      ? []
      : Object.entries(MIGRATION_FLAGS).filter(([, v]) => flags! & v).map(([k]) => k),
    dataSize: flags !== null ? d.migration.dataSize() : null,
    state: flags !== null ? stateName(d.migration.getState()) : v1 !== null ? v1.state : null,
    supportedStates: flags !== null ? supportedStates(flags).map(stateName) : [],
    dmaLogging: flags !== null && d.migration.probe(FEATURE.DMA_LOGGING_START, true),
  };
}

/** What --device takes, for the help of the commands that open one device. */
export const DEVICE_OPTION_HELP = `PCI address (0000:3b:00.1), mdev UUID, sysfs path,
                   /dev/vfio/devices/vfioN, sim:PATH; pid:PID[:FD] borrows the
                   device fd process PID holds (needs ptrace rights over it: root,
                   or its user); fd:N uses an fd this process inherited.
                   Default: $VFIO_MIG_DEVICE, else the only migratable device.`;

export const infoCommand: Command = {
  name: "info",
  help: `Usage: vfio-mig info [--device D] [--protocol auto|v1|v2] [--json]

Opens the device and reports its identity (driver, mdev type, PCI ids), whether its
driver supports migration (uAPI v2, or the deprecated v1 region protocol), the
migration flags (STOP_COPY, P2P, PRE_COPY), MIG_DATA_SIZE, the current migration state
and DMA logging support; for v1, the migration region's size, the data section's
mmap-able areas and device_state; the decoded PCI config space header (command
register, capabilities, MSI/MSI-X state); and whether the device's state survives a
close (an mdev keeps it; vfio-pci resets the function at the first open and the last
close). Changes nothing, except that opening a vfio-pci function nobody holds resets
it (as every first open does).

Options:
  -d, --device D   ${DEVICE_OPTION_HELP}
      --protocol P describe migration through auto (v2 when present, else v1), v1 or v2
      --json       machine-readable output
  -h, --help       this help

${EXIT_CODES_HELP}`,
  run(args) {
    const { values } = parse("info", args, {
      device: { type: "string", short: "d" },
      protocol: { type: "string" },
      json: { type: "boolean" },
    });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    const dev = openNamedDevice(values.device);
    try {
      const r = describeDevice(dev, parseProtocol(values.protocol, "info"));
      if (values.json) printJson(r);
      else {
        console.log(`device:          ${describeAccess(r)}`);
        console.log(`driver:          ${r.driver ?? "?"}${r.mdevType ? `, mdev type ${r.mdevType}` : ""}`);
        console.log(
          `PCI ids:         ${hex(r.vendor)}:${hex(r.deviceId)} subsystem ${hex(r.subsystemVendor)}:${
            hex(r.subsystemDevice)
          }`,
        );
        if (r.pciIdsUnknown) console.log(`                 unknown: ${r.pciIdsUnknown}`);
        if (r.deviceFlags !== null) {
          const names = Object.entries(DEVICE_FLAGS).filter(([, v]) => r.deviceFlags! & v).map(([k]) => k);
          console.log(`device flags:    ${hex(r.deviceFlags, 1)} (${names.join(" ") || "none"})`);
        }
        if (!r.migratable) console.log(`migration:       not supported by this driver (ENOTTY)`);
        else if (r.protocol === null) console.log(`migration:       not through protocol ${values.protocol}`);
        else if (r.protocol === "v1" && r.v1) {
          console.log(`migration:       protocol v1 (deprecated region protocol), region ${r.v1.regionIndex}`);
          console.log(`region size:     ${r.v1.regionSize} bytes (registers at 0, 32 bytes)`);
          console.log(`data section:    ${describeAreas(r.v1.mmapAreas, r.v1.regionSize)}`);
          console.log(`device_state:    ${r.v1.state}`);
        } else {
          console.log(
            `migration:       uAPI v2, flags ${hex(r.migrationFlags, 1)} (${r.migrationFlagNames.join(" ")})`,
          );
          console.log(`MIG_DATA_SIZE:   ${r.dataSize ?? "not reported"}`);
          console.log(`state:           ${r.state}`);
          console.log(`states:          ${r.supportedStates.join(" ")}`);
          console.log(`DMA logging:     ${r.dmaLogging ? "yes" : "no"}`);
          if (r.v1) console.log(`v1 region:       also present (region ${r.v1.regionIndex}); --protocol v1 uses it`);
        }
        console.log(
          `family:          ${r.family}; state survives close: ${
            survivesCloseText({ family: r.family, resetsOnClose: !r.stateSurvivesClose, reason: r.resetReason })
          }`,
        );
        if (r.config) {
          const [first, ...rest] = describeConfig(r.config);
          console.log(`config space:    ${first}`);
          for (const line of rest) console.log(`                 ${line}`);
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
  help: `Usage: vfio-mig state [--device D] [STATE]

Without STATE, prints the current migration state. With STATE (STOP, RUNNING,
RUNNING_P2P, STOP_COPY, RESUMING, PRE_COPY, PRE_COPY_P2P) requests it with
MIG_DEVICE_STATE SET and prints the state reached; a data_fd the kernel hands out is
closed at once (its session is then abandoned). STOP_COPY -> PRE_COPY* is refused
without asking the kernel (it hangs kernels 6.2 until the 2026 fix).

A device with the v1 migration region (QEMU 7.2's protocol) shows its device_state
bits, e.g. "running (001b)"; STATE then sets them as QEMU does for that state: STOP
000b, RUNNING 001b, STOP_COPY 010b (_SAVING), PRE_COPY 011b, RESUMING 100b. A device
that speaks neither protocol is refused (exit 3).

Options:
  -d, --device D   ${DEVICE_OPTION_HELP}
  -h, --help       this help

${EXIT_CODES_HELP}`,
  run(args) {
    const { values, positionals } = parse("state", args, { device: { type: "string", short: "d" } });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    const dev = openNamedDevice(values.device);
    try {
      if (positionals.length > 1) throw new VfioMigError("state: give at most one STATE", "usage");
      let target: DeviceState | null = null;
      if (positionals.length === 1) {
        try {
          target = parseState(positionals[0]);
        } catch (e) {
          throw new VfioMigError(`state: ${(e as Error).message}`, "usage");
        }
      }
      // Either protocol; neither is a device refusal (exit 3) that says why.
      if (chooseProtocol(dev, "auto") === "v1") {
        const m = v1Of(dev)!;
        if (target !== null) {
          const bits = V1_BITS.get(target);
          if (bits === undefined) {
            throw new VfioMigError(
              `state: ${stateName(target)} has no v1 device_state (v1 has no P2P states)`,
              "usage",
            );
          }
          m.setState(~V1.MASK, bits, `state ${stateName(target)}`);
        }
        console.log(v1StateName(m.readState()));
        return Promise.resolve(0);
      }
      if (target !== null) {
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

/** The v1 device_state QEMU 7.2 sets for each v2 state (hw/vfio/migration.c, v1 era). */
const V1_BITS = new Map<DeviceState, number>([
  [DeviceState.STOP, V1.STOP],
  [DeviceState.RUNNING, V1.RUNNING],
  [DeviceState.STOP_COPY, V1.SAVING],
  [DeviceState.PRE_COPY, V1.RUNNING | V1.SAVING],
  [DeviceState.RESUMING, V1.RESUMING],
]);

export const resetCommand: Command = {
  name: "reset",
  help: `Usage: vfio-mig reset [--device D]

Issues VFIO_DEVICE_RESET. The migration state becomes RUNNING and any open migration
data_fd stops working; the device's internal state is lost (for a borrowed device,
the state of the process holding it).

Options:
  -d, --device D   ${DEVICE_OPTION_HELP}
  -h, --help       this help

${EXIT_CODES_HELP}`,
  run(args) {
    const { values } = parse("reset", args, { device: { type: "string", short: "d" } });
    if (values.help) {
      console.log(this.help);
      return Promise.resolve(0);
    }
    const dev = openNamedDevice(values.device);
    try {
      // A v1 device has no v2 state to read back: name its device_state bits.
      const v1 = tryGetState(dev) === null ? v1Of(dev) : null;
      if (v1) {
        dev.migration.reset();
        console.log(`${dev.label} was reset and is ${v1StateName(v1.readState())}`);
      } else console.log(recoverDevice(dev, parseState("RUNNING"), true));
      return Promise.resolve(0);
    } finally {
      dev.close();
    }
  },
};

/** The device --device names, or the default one ($VFIO_MIG_DEVICE, else the only migratable one), open. */
function openNamedDevice(spec: string | undefined): VfioDevice {
  const s = spec ?? defaultDeviceSpec(systemFor([]));
  return openDevice(systemFor([s]), s);
}

/**
 * "0000:3b:00.1 (pci, opened via group)", or for a borrowed fd "pid:4242 = 0000:3b:00.1
 * (pci, borrowed from qemu-system-x86 (pid 4242) fd 31, opened there via group)".
 */
export function describeAccess(r: DeviceReport): string {
  const name = r.name !== r.device ? ` = ${r.name}` : r.candidates.length ? ` = one of ${r.candidates.join(", ")}` : "";
  if (r.access === "borrowed" && r.holder) {
    const who = `${r.holder.command ?? "?"} (pid ${r.holder.pid}) fd ${r.holder.fd}`;
    return `${r.device}${name} (${r.kind}, borrowed from ${who}, opened there via ${r.path})`;
  }
  if (r.access === "inherited") return `${r.device}${name} (${r.kind}, inherited fd, opened via ${r.path})`;
  return `${r.device} (${r.kind}, opened via ${r.access})`;
}

/** "mmap'd 4096+1048576" or "trapped (pread/pwrite only)". */
function describeAreas(areas: { offset: number; size: number }[], regionSize: number): string {
  if (areas.length === 0) return `trapped (pread/pwrite only), up to ${regionSize - 32} bytes`;
  const list = [...areas].sort((a, b) => a.offset - b.offset).map((a) => `[${a.offset}, ${a.offset + a.size})`);
  return `mmap-able ${list.join(" ")}; the rest of the region through pread/pwrite`;
}
