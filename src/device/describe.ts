// What `info` says of an open device (identity, family, PCI config header, migration
// through either protocol), as data: the command prints it, the library returns it.

import { isErrno } from "../../ffi/errno.ts";
import { FEATURE } from "../../ffi/vfio_uapi.ts";
import { type ConfigSummary, summarizeConfig } from "../pci/config.ts";
import { mmapAreas } from "../vfio/regions.ts";
import { stateName, supportedStates } from "../vfio/state_machine.ts";
import { v1StateName } from "../vfio/v1.ts";
import { migrationFlagNames } from "../vfio/v2.ts";
import { type ControlProtocol, findV1, migrationControl } from "./control.ts";
import type { DeviceHolder, VfioDevice } from "./device.ts";
import type { DeviceFamily } from "./family.ts";

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

/**
 * What `info` reports of an open device: identity, how it was reached, family, PCI ids
 * and decoded config header, and its migration through `want` (auto: v2 when present,
 * else v1): flags, MIG_DATA_SIZE, state, supported states, DMA logging, the v1 region.
 * Only GET and PROBE calls, config space and region reads: nothing changes. Throws
 * SysError for a kernel error other than ENOTTY on the migration query.
 */
export function describeDevice(d: VfioDevice, want: ControlProtocol | "auto" = "auto"): DeviceReport {
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
  const m = findV1(d);
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
    migrationFlagNames: flags === null ? [] : migrationFlagNames(flags!),
    dataSize: flags !== null ? d.migration.dataSize() : null,
    state: migrationControl(d)?.state() ?? null,
    supportedStates: flags !== null ? supportedStates(flags).map(stateName) : [],
    dmaLogging: flags !== null && d.migration.probe(FEATURE.DMA_LOGGING_START, true),
  };
}
