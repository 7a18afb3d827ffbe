/**
 * The VFIO uAPI (include/uapi/linux/vfio.h) as vfio-mig speaks it: the struct layouts,
 * ioctl numbers and flags (`uapi`), the syscall layer (`Sys`, `libc`), errno, the v2
 * state machine as the kernel's table, the v2 feature calls, the v1 region protocol and
 * region discovery.
 *
 * @module
 */

export { Errno, errnoName, isErrno, SysError } from "../../ffi/errno.ts";
export { libc, LibcSys } from "../../ffi/libc.ts";
export type { Mapping, Sys } from "../../ffi/sys.ts";
export * as uapi from "../../ffi/vfio_uapi.ts";
export {
  ALL_STATES,
  DeviceState,
  isHangingArc,
  nextStep,
  resolvePath,
  stateName,
  supportedStates,
} from "./state_machine.ts";
export { migrationFlagNames, MigrationV2 } from "./v2.ts";
export { MigrationV1, v1StateIsError, v1StateName, v1StateValid } from "./v1.ts";
export { findRegion, findRegionByType, getRegionInfo, type RegionInfo } from "./regions.ts";
