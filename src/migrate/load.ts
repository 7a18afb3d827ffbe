// Loading a stream into a device: the header and the device identity are checked
// before the device is touched; each chunk reaches the device only after its
// checksum matched; any failure after RESUMING resets the device.

import type { VfioDevice } from "../device/open.ts";
import { StreamError, VfioMigError } from "../errors.ts";
import { writeAll } from "../io.ts";
import { DeviceState, stateName } from "../migration/state_machine.ts";
import { identityMismatch, type StreamHeader } from "../stream/format.ts";
import { StreamReader } from "../stream/reader.ts";
import type { Source } from "../transport/transport.ts";
import { probeMigration } from "./save.ts";
import { Cancellation, failure, pausePoint, Progress, recoverDevice, streamIdentity, tryGetState } from "./session.ts";

export interface LoadOptions {
  /** Leave the device in STOP after loading (default: RUNNING). */
  noStart?: boolean;
  progress?: boolean;
  cancel?: Cancellation;
}

export interface LoadResult {
  device: string;
  bytes: number;
  streamBytes: number;
  seconds: number;
  throughput: number;
  statesVisited: string[];
  finalState: string;
  source: string;
}

/** Reads and checks the stream header against the device, before any device call. */
export function checkHeader(reader: StreamReader, d: VfioDevice): StreamHeader {
  const h = reader.readHeader();
  if (h.protocol !== "v2") {
    throw new StreamError(`the stream uses migration protocol ${h.protocol}; this load speaks v2`);
  }
  const why = identityMismatch(h.device, streamIdentity(d));
  if (why) throw new VfioMigError(`wrong device: ${why}`, "stream");
  return h;
}

/** The record order a stream must follow (docs/stream-format.md). */
type Phase = "setup" | "setup-end" | "iterate" | "stop-copy" | "trailer";

export async function load(d: VfioDevice, source: Source, opts: LoadOptions = {}): Promise<LoadResult> {
  const t0 = performance.now();
  const cancel = opts.cancel ?? new Cancellation();
  const reader = new StreamReader(source);
  let header: StreamHeader;
  try {
    header = checkHeader(reader, d);
  } catch (e) {
    throw failure(`load into ${d.label} refused`, e, `${d.label} was not touched`);
  }
  try {
    probeMigration(d);
  } catch (e) {
    throw failure(`load into ${d.label} refused`, e, `${d.label} was not touched`);
  }
  const found = tryGetState(d);
  if (found === DeviceState.ERROR || found === null) {
    throw new VfioMigError(
      `${d.label} is in the ERROR state: recover it with 'vfio-mig reset --device ${d.label}' first`,
      "device",
    );
  }
  const progress = new Progress(!!opts.progress, header.sizeEstimate);
  let dataFd: number | null = null;
  let resuming = false;
  let phase: Phase = "setup";
  const unexpected = (what: string, offset: number) =>
    new StreamError(`unexpected ${what} (expected ${expectation(phase)})`, offset);
  try {
    for (;;) {
      await cancel.checkpoint();
      const rec = reader.next();
      if (rec.kind === "end") {
        if (phase !== "trailer") throw unexpected("end of stream", rec.offset);
        break;
      }
      if (rec.kind === "tag") {
        switch (rec.tag) {
          case "DEV_SETUP_STATE":
            if (phase !== "setup") throw unexpected("DEV_SETUP_STATE", rec.offset);
            phase = "setup-end";
            break;
          case "END_OF_STATE":
            if (phase === "setup-end") {
              // The destination enters RESUMING as the stream starts (reference §2.4 load_setup).
              const r = d.migration.setState(DeviceState.RESUMING, found);
              resuming = true;
              dataFd = r.dataFd;
              if (dataFd === null) throw new VfioMigError(`${d.label}: RESUMING returned no data_fd`);
              await pausePoint((n) => d.sys.getenv(n), "resume", cancel);
              phase = "iterate";
            } else if (phase === "iterate") {
              // end of a pre-copy iteration
            } else if (phase === "stop-copy") phase = "trailer";
            else throw unexpected("END_OF_STATE", rec.offset);
            break;
          case "DEV_INIT_DATA_SENT":
            if (phase !== "iterate") throw unexpected("DEV_INIT_DATA_SENT", rec.offset);
            break;
          case "SWITCHOVER":
            if (phase !== "iterate") throw unexpected("SWITCHOVER", rec.offset);
            phase = "stop-copy";
            break;
          default:
            throw unexpected(rec.tag, rec.offset);
        }
        continue;
      }
      if (rec.tag === "DEV_CONFIG_STATE") throw unexpected("DEV_CONFIG_STATE", rec.offset);
      if ((phase !== "iterate" && phase !== "stop-copy") || dataFd === null) {
        throw unexpected("device data", rec.offset);
      }
      writeAll(d.sys, dataFd, rec.bytes);
      progress.update("resume", reader.dataBytes);
    }
    await pausePoint((n) => d.sys.getenv(n), "finish", cancel);
    // The whole stream verified: let the driver validate and load it (RESUMING ->
    // STOP), then end the session by closing the data_fd, as QEMU's cleanup does.
    d.migration.setState(DeviceState.STOP, DeviceState.RESUMING);
    resuming = false;
    d.sys.close(dataFd!);
    dataFd = null;
    const finalState = opts.noStart ? DeviceState.STOP : DeviceState.RUNNING;
    if (finalState !== DeviceState.STOP) d.migration.setState(finalState, DeviceState.STOP);
    progress.update("done", reader.dataBytes, true);
    progress.finish();
    const seconds = (performance.now() - t0) / 1000;
    return {
      device: d.label,
      bytes: reader.dataBytes,
      streamBytes: reader.offset,
      seconds,
      throughput: seconds > 0 ? reader.dataBytes / seconds : 0,
      statesVisited: d.migration.visited.map(stateName),
      finalState: stateName(finalState),
      source: header.source,
    };
  } catch (e) {
    progress.finish();
    if (dataFd !== null) {
      try {
        d.sys.close(dataFd);
      } catch { /* best effort */ }
    }
    let where: string;
    const now = tryGetState(d);
    if (resuming || now === DeviceState.RESUMING || now === DeviceState.ERROR || now === null) {
      // The only way to abort a RESUMING session is a device reset.
      where = recoverDevice(d, DeviceState.RUNNING, true);
    } else if (d.migration.visited.length === 0) {
      where = `${d.label} was not touched`;
    } else {
      where = recoverDevice(d, DeviceState.RUNNING, true);
    }
    throw failure(`load into ${d.label} failed`, e, where);
  }
}

function expectation(phase: Phase): string {
  switch (phase) {
    case "setup":
      return "DEV_SETUP_STATE";
    case "setup-end":
      return "END_OF_STATE after DEV_SETUP_STATE";
    case "iterate":
      return "device data, END_OF_STATE, DEV_INIT_DATA_SENT or SWITCHOVER";
    case "stop-copy":
      return "device data or END_OF_STATE";
    case "trailer":
      return "the stream trailer";
  }
}
