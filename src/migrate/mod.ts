/**
 * The migration's orchestration below `save` and `load`: the protocol sessions (uAPI
 * v2 and the v1 region protocol behind one interface), choosing a protocol, and the
 * DEV_CONFIG_STATE section (PCI config space, MSI-X table and PBA).
 *
 * @module
 */

export {
  chooseProtocol,
  type Protocol,
  type ProtocolChoice,
  type ResumeSession,
  type SaveSession,
} from "./protocol.ts";
export {
  type ConfigState,
  decodeConfigState,
  describeConfig,
  encodeConfigState,
  readConfigState,
  restoreConfigState,
  summarizeConfig,
} from "./config_state.ts";
export { openSaveSession, probeMigration } from "./save.ts";
export { Cancellation } from "./session.ts";
