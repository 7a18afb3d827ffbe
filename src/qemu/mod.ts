/**
 * QEMU migration streams: a parser, the VFIO device's records in them, and splicing a
 * vfio-mig stream's device data into one (`vfio-mig qemu-splice`).
 *
 * @module
 */

export { type QemuFileHeader, QemuStreamParser } from "./stream.ts";
export { qemuLoadReader, QemuRecordReader } from "./reader.ts";
export { spliceQemuStream, type SpliceResult } from "./splice.ts";
