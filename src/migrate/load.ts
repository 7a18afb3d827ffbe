// Loading a stream into a device: the header and the device identity are checked
// before the device is touched; each chunk reaches the device only after its
// checksum matched; any failure after RESUMING resets the device.

import type { VfioDevice } from "../device/open.ts";
import { InterruptedError, StreamError, VfioMigError } from "../errors.ts";
import { identityMismatch, type StreamHeader } from "../stream/format.ts";
import { StreamReader } from "../stream/reader.ts";
import type { StreamSource } from "../transport/transport.ts";
import {
  checkConfigIdentity,
  type ConfigRestore,
  type ConfigState,
  decodeConfigState,
  restoreConfigState,
} from "./config_state.ts";
import { type Protocol, type ProtocolChoice, type ResumeSession, v1Of } from "./protocol.ts";
import { probeMigration } from "./save.ts";
import { Cancellation, failure, pausePoint, Progress, streamIdentity } from "./session.ts";
import { V1ResumeSession } from "./v1_session.ts";
import { V2ResumeSession } from "./v2_session.ts";
import { expectedRecords, type RecordPhase } from "../stream/order.ts";

export interface LoadOptions {
  /** Leave the device in STOP after loading (default: RUNNING). */
  noStart?: boolean;
  progress?: boolean;
  cancel?: Cancellation;
  /** auto (default: the stream's), v1 or v2; must match the stream's. */
  protocol?: ProtocolChoice;
  /** Do not restore the DEV_CONFIG_STATE section (its ids are still checked). */
  noConfig?: boolean;
}

export interface LoadResult {
  device: string;
  protocol: Protocol;
  bytes: number;
  streamBytes: number;
  seconds: number;
  throughput: number;
  statesVisited: string[];
  finalState: string;
  source: string;
  /** What the config section restored; null without one or with noConfig. */
  config: ConfigRestore | null;
  /** DEV_INIT_DATA_SENT markers loaded (each acknowledged over a two-way transport). */
  initDataLoaded: number;
}

/** Reads and checks the stream header against the device, before any device call. */
export async function checkHeader(reader: StreamReader, d: VfioDevice): Promise<StreamHeader> {
  const h = await reader.readHeader();
  if (h.protocol !== "v2" && h.protocol !== "v1") {
    throw new StreamError(`the stream uses migration protocol ${h.protocol}; this vfio-mig speaks v1 and v2`);
  }
  if (Array.isArray(h.devices)) {
    throw new VfioMigError(
      `the stream holds ${h.devices.length} devices (${h.devices.map((e) => e?.source).join(", ")}): ` +
        `give a --device for each, in order, or --map SRC=DST`,
      "usage",
    );
  }
  const why = identityMismatch(h.device, streamIdentity(d));
  if (why) throw new VfioMigError(`wrong device: ${why}`, "stream");
  return h;
}

/** The resume session for a stream's protocol; throws (nothing touched) when the device cannot. */
export function openResumeSession(d: VfioDevice, header: StreamHeader, want: ProtocolChoice): ResumeSession {
  const protocol = header.protocol;
  if (want !== "auto" && want !== protocol) {
    throw new VfioMigError(
      `the stream was saved with migration protocol ${protocol}; --protocol ${want} cannot load it`,
      "usage",
    );
  }
  if (protocol === "v1") {
    const m = v1Of(d);
    if (!m) {
      throw new VfioMigError(
        `${d.label} has no v1 migration region (CAP_TYPE 3/1): it cannot load a protocol v1 stream`,
        "device",
      );
    }
    return V1ResumeSession.open(m);
  }
  probeMigration(d);
  return V2ResumeSession.open(d);
}

/** Loads a stream, enforcing the record order of src/stream/order.ts. */
export async function load(d: VfioDevice, source: StreamSource, opts: LoadOptions = {}): Promise<LoadResult> {
  const t0 = performance.now();
  const cancel = opts.cancel ?? new Cancellation();
  const reader = new StreamReader(source);
  let header: StreamHeader;
  let session: ResumeSession;
  try {
    header = await checkHeader(reader, d);
    session = openResumeSession(d, header, opts.protocol ?? "auto");
  } catch (e) {
    const cause = cancel.signal && !(e instanceof InterruptedError) ? new InterruptedError(cancel.signal) : e;
    const err = failure(`load into ${d.label} refused`, cause, `${d.label} was not touched`);
    await source.notify?.({ event: "done", ok: false, message: err.message });
    throw err;
  }
  const v1 = session.protocol === "v1";
  const progress = new Progress(!!opts.progress, header.sizeEstimate);
  let phase: RecordPhase = "setup";
  let afterEnd = false; // the last record was END_OF_STATE
  let config: ConfigState | null = null;
  let initDataLoaded = 0;
  const unexpected = (what: string, offset: number) =>
    new StreamError(`unexpected ${what} (expected ${expectedRecords(phase, v1)})`, offset);
  try {
    for (;;) {
      await cancel.checkpoint();
      const rec = await reader.next();
      if (rec.kind === "end") {
        if (phase !== "trailer" && phase !== "after-data" && !(v1 && phase === "iterate" && afterEnd)) {
          throw unexpected("end of stream", rec.offset);
        }
        break;
      }
      const prevEnd = afterEnd;
      afterEnd = rec.kind === "tag" && rec.tag === "END_OF_STATE";
      if (rec.kind === "tag") {
        switch (rec.tag) {
          case "DEV_SETUP_STATE":
            if (phase !== "setup") throw unexpected("DEV_SETUP_STATE", rec.offset);
            phase = "setup-end";
            break;
          case "END_OF_STATE":
            if (phase === "setup-end") {
              session.begin();
              await pausePoint((n) => d.sys.getenv(n), "resume", cancel);
              phase = "iterate";
            } else if (phase === "iterate") {
              // end of an iteration (v1: also of the complete phase)
            } else if (phase === "stop-copy") phase = "after-data";
            else if (phase === "config-end") phase = "trailer";
            else throw unexpected("END_OF_STATE", rec.offset);
            break;
          case "DEV_INIT_DATA_SENT":
            if (phase !== "iterate" || v1) throw unexpected("DEV_INIT_DATA_SENT", rec.offset);
            // Everything before it reached the device: approve the switchover (again
            // after a REINIT: each marker is acknowledged).
            initDataLoaded++;
            await source.notify?.({ event: "init-loaded" });
            break;
          case "SWITCHOVER":
            if (phase !== "iterate" || v1) throw unexpected("SWITCHOVER", rec.offset);
            phase = "stop-copy";
            break;
          default:
            throw unexpected(rec.tag, rec.offset);
        }
        continue;
      }
      if (rec.tag === "DEV_CONFIG_STATE") {
        if (!(phase === "after-data" || (v1 && phase === "iterate" && prevEnd))) {
          throw unexpected("DEV_CONFIG_STATE", rec.offset);
        }
        config = decodeConfigState(rec.bytes);
        checkConfigIdentity(config, d);
        phase = "config-end";
        continue;
      }
      if (phase !== "iterate" && phase !== "stop-copy") throw unexpected("device data", rec.offset);
      session.data(rec.bytes);
      progress.update("resume", reader.dataBytes);
    }
    // The whole stream is verified: let the driver take the data, restore the
    // config space, then start the device (QEMU: load_state, load config, VM start).
    await pausePoint((n) => d.sys.getenv(n), "finish", cancel);
    session.endData();
    const restored = config && !opts.noConfig ? restoreConfigState(config, d) : null;
    const finalState = session.finish(!!opts.noStart);
    progress.update("done", reader.dataBytes, true);
    progress.finish();
    await source.notify?.({ event: "done", ok: true, message: `${d.label} is ${finalState}`, finalState });
    const seconds = (performance.now() - t0) / 1000;
    return {
      device: d.label,
      protocol: session.protocol,
      bytes: reader.dataBytes,
      streamBytes: reader.offset,
      seconds,
      throughput: seconds > 0 ? reader.dataBytes / seconds : 0,
      statesVisited: session.statesVisited(),
      finalState,
      source: header.source,
      config: restored,
      initDataLoaded,
    };
  } catch (e) {
    progress.finish();
    // A signal closes a network source under a pending read: report the signal (exit 130).
    const cause = cancel.signal && !(e instanceof InterruptedError) ? new InterruptedError(cancel.signal) : e;
    const err = failure(`load into ${d.label} failed`, cause, session.abort());
    await source.notify?.({ event: "done", ok: false, message: err.message });
    throw err;
  }
}
