/**
 * The vfio-mig stream: its format (`streamFormat`: magic, tags, header and trailer),
 * a record reader and a writer, the record grammar load, inspect and verify share,
 * the whole-stream check (`verifyStream`, `verifyFile`) load makes of a file first, and
 * signed streams (`StreamKey`: a key file; give it to StreamWriter to sign, to
 * StreamReader or verifyStream's `key` to verify; docs/stream-format.md, "Signed streams").
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
export { MacChain, StreamAuthError, StreamKey, type StreamMacInfo } from "./mac.ts";
