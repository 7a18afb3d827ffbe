// vfio-mig as a library: open devices, save and load their migration state (one
// device or several, one call each), drive the v2 state machine, read and write
// streams, and run the simulated VFIO kernel. The README's "Library" section has a
// first example:
//
//   const a = openDevice("sim:/tmp/a"), b = openDevice("sim:/tmp/b");
//   await save(a, "/tmp/a.vfmig");        // a file, "-", or a Sink (tcp.ts)
//   await load(b, "/tmp/a.vfmig");        // a file, "-", or a StreamSource
//   a.close(); b.close();

export { Errno, errnoName, isErrno, SysError } from "./ffi/errno.ts";
export { libc, LibcSys } from "./ffi/libc.ts";
export type { Mapping, Sys } from "./ffi/sys.ts";
export * as uapi from "./ffi/vfio_uapi.ts";
export {
  ALL_STATES,
  DeviceState,
  isHangingArc,
  nextStep,
  resolvePath,
  stateName,
  supportedStates,
} from "./src/vfio/state_machine.ts";
export { MigrationV2 } from "./src/vfio/v2.ts";
export { MigrationV1, v1StateIsError, v1StateName, v1StateValid } from "./src/vfio/v1.ts";
export { findRegionByType, getRegionInfo, type RegionInfo } from "./src/vfio/regions.ts";
export {
  chooseProtocol,
  type Protocol,
  type ProtocolChoice,
  type ResumeSession,
  type SaveSession,
} from "./src/migrate/protocol.ts";
export {
  type ConfigState,
  decodeConfigState,
  describeConfig,
  encodeConfigState,
  readConfigState,
  restoreConfigState,
  summarizeConfig,
} from "./src/migrate/config_state.ts";
export { defaultDeviceSpec, openDevice, systemFor, VfioDevice } from "./src/device/open.ts";
export {
  borrowDevice,
  type DeviceAccess,
  DeviceBusyError,
  type DeviceFamily,
  type DeviceHolder,
  type ExecOptions,
  execWithDeviceFd,
  freshOpenWarnings,
  openDeviceFd,
  type OpenFdOptions,
  parseFdSpec,
  type ResetBehaviour,
} from "./src/device/open.ts";
export {
  type DeviceSaveResult,
  openSaveSession,
  probeMigration,
  save,
  type SaveOptions,
  type SaveResult,
} from "./src/migrate/save.ts";
export { type DeviceLoadResult, load, type LoadOptions, type LoadResult, type LoadTarget } from "./src/migrate/load.ts";
export { Cancellation } from "./src/migrate/session.ts";
export {
  openSink,
  openSource,
  openStreamSource,
  type Sink,
  type Source,
  type StreamSource,
} from "./src/transport/transport.ts";
export { type RecordReader, StreamReader } from "./src/stream/reader.ts";
export { StreamWriter } from "./src/stream/writer.ts";
export * as streamFormat from "./src/stream/format.ts";
export { parseFaults, SimKernel } from "./src/sim/kernel.ts";
export { SimStore } from "./src/sim/store.ts";
export { describeDevice } from "./src/commands/info.ts";
export { EXIT, StreamError, VfioMigError } from "./src/errors.ts";
export { VERSION } from "./src/version.ts";
export { formatList, listDevices, type ListedDevice, type ListOptions, type ListResult } from "./src/commands/list.ts";
export { arcMismatches, arcPairs, type ArcResult, expectedArc, exploreArcs } from "./src/check/arcs.ts";
export { type CheckReport, type CheckResult, CHECKS, type CheckStatus, runChecks } from "./src/check/conformance.ts";
export { CheckSession } from "./src/check/session.ts";
export { type InspectOptions, type InspectReport, inspectStream } from "./src/inspect/inspect.ts";
export { type DeviceRef, Events, type EventSubscriber, type MigrationEvent } from "./src/events/events.ts";
export { migrationEvents } from "./src/events/cli.ts";
export { JsonLinesWriter } from "./src/events/jsonl.ts";
export { ProgressBar } from "./src/events/progress_bar.ts";
export { EVENTS_SCHEMA_VERSION, validateEvent, validateEventLines } from "./src/events/schema.ts";
export { describeError } from "./src/errors.ts";
export { readEventsFile } from "./src/report/model.ts";
export { renderSvg } from "./src/report/svg.ts";
export { renderHtml } from "./src/report/html.ts";
export { inspectQemuStream, type QemuInspectReport } from "./src/inspect/qemu.ts";
export { type QemuFileHeader, QemuStreamParser } from "./src/qemu/stream.ts";
export { qemuLoadReader, QemuRecordReader } from "./src/qemu/reader.ts";
export { spliceQemuStream, type SpliceResult } from "./src/qemu/splice.ts";
