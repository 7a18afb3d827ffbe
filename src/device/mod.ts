/**
 * The device layer: reaching a device (opened here, borrowed from the process that
 * holds it with `pid:PID`, inherited as `fd:N`, handed on with `execWithDeviceFd`), its
 * reset family, the inventory of VFIO devices (`list`), what `info` says of one, one
 * migration control for either protocol, and the backend registry (the simulator is
 * one: `./sim`).
 *
 * @module
 */

export {
  type BackendName,
  type BackendOps,
  borrowDevice,
  type BusyHolder,
  defaultDeviceSpec,
  DEVICE_FD_ENV,
  DEVICE_NAME_ENV,
  type DeviceAccess,
  type DeviceBackend,
  DeviceBusyError,
  type DeviceFamily,
  type DeviceHolder,
  type DeviceIdentityInfo,
  type DeviceOperation,
  type ExecOptions,
  execWithDeviceFd,
  familyName,
  type FdSpec,
  freshOpenWarnings,
  loadBackend,
  loadBackendsFor,
  openDevice,
  openDeviceFd,
  type OpenFdOptions,
  type OpenOptions,
  parseFdSpec,
  type PciIdentity,
  pciIdentityFromConfig,
  registerBackend,
  registeredBackends,
  type ResetBehaviour,
  survivesCloseText,
  systemFor,
  VfioDevice,
  type VfioDeviceOptions,
} from "./open.ts";
export { parseVfToken, type VfTokenTarget, vfTokenTarget } from "./vf_token.ts";
export { type ControlProtocol, type MigrationControl, migrationControl, V1_STATE_BITS } from "./control.ts";
export { describeDevice, type DeviceReport, type V1Report } from "./describe.ts";
export {
  type GroupMember,
  listDevices,
  type ListedDevice,
  type ListedMigration,
  type ListOptions,
  type ListResult,
  migrationFacts,
} from "./inventory.ts";
