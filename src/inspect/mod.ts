/**
 * Reading a saved stream without a device: what it holds, whether it is intact, and
 * where it is damaged (`vfio-mig inspect`); QEMU migration streams too.
 *
 * @module
 */

export { type InspectOptions, type InspectReport, inspectStream } from "./inspect.ts";
export { inspectQemuStream, type QemuInspectReport } from "./qemu.ts";
