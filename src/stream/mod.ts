/**
 * The vfio-mig stream: its format (`streamFormat`: magic, tags, header and trailer),
 * a record reader and a writer.
 *
 * @module
 */

export { type RecordReader, StreamReader } from "./reader.ts";
export { StreamWriter } from "./writer.ts";
export * as streamFormat from "./format.ts";
