/**
 * The vfio-mig stream: its format (`streamFormat`: magic, tags, header and trailer),
 * a record reader and a writer, the record grammar load, inspect and verify share,
 * and the whole-stream check (`verifyStream`, `verifyFile`) load makes of a file first.
 *
 * @module
 */

export { type RecordReader, StreamReader } from "./reader.ts";
export { StreamWriter } from "./writer.ts";
export * as streamFormat from "./format.ts";
export { type GrammarDevice, RecordGrammar, type SectionName, type Step } from "./grammar.ts";
export {
  type FileVerifyResult,
  type StreamProblem,
  verifyFile,
  type VerifyOptions,
  type VerifyResult,
  verifyStream,
} from "./verify.ts";
