// The order records follow in a stream (docs/stream-format.md), named once for the
// readers that enforce it (load, multi-device load) and the one that reports it
// (inspect). v2: setup, pre-copy iterations, SWITCHOVER, stop-copy data,
// END_OF_STATE; v1 (QEMU 7.2): setup, then data records with END_OF_STATE after
// each iteration and the complete phase. Both may end with a config section.

export type RecordPhase = "setup" | "setup-end" | "iterate" | "stop-copy" | "after-data" | "config-end" | "trailer";

/** What may come next in `phase`, for "unexpected X (expected …)" messages. */
export function expectedRecords(phase: RecordPhase, v1: boolean): string {
  switch (phase) {
    case "setup":
      return "DEV_SETUP_STATE";
    case "setup-end":
      return "END_OF_STATE after DEV_SETUP_STATE";
    case "iterate":
      return v1
        ? "device data, END_OF_STATE, DEV_CONFIG_STATE or the stream trailer"
        : "device data, END_OF_STATE, DEV_INIT_DATA_SENT or SWITCHOVER";
    case "stop-copy":
      return "device data or END_OF_STATE";
    case "after-data":
      return "DEV_CONFIG_STATE or the stream trailer";
    case "config-end":
      return "END_OF_STATE after DEV_CONFIG_STATE";
    case "trailer":
      return "the stream trailer";
  }
}
