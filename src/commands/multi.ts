// The command-line side of several devices in one stream (src/migrate/multi.ts):
// `save --device A --device B … OUT` and `load --device B1 --device B2 … IN` or
// `load --map SRC=DST …`. save.ts and load.ts hand over here when more than one
// device is given.

import type { Sys } from "../../ffi/sys.ts";
import { openDevice, type VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import {
  loadMulti,
  type MultiLoadOptions,
  type MultiLoadResult,
  type MultiLoadTarget,
  type MultiSaveOptions,
  type MultiSaveResult,
  saveMulti,
} from "../migrate/multi.ts";
import { formatBytes } from "../migrate/session.ts";
import type { Sink, StreamSource } from "../transport/transport.ts";
import { printJson } from "./command.ts";

export const MULTI_SAVE_HELP = `
Several devices: repeat --device to save them into one stream. They move together:
every device enters RUNNING_P2P (PRE_COPY_P2P with --live) before any is stopped,
and their data is read in parallel, one chunk of each in turn (a device that
yields its data slowly holds no other up). Every device must support P2P, as QEMU
requires, unless --no-p2p says they do no peer-to-peer DMA. A failure of any
device returns all of them to the state they were found in.
      --no-p2p       allow devices without P2P (they must do no peer-to-peer DMA)`;

export const MULTI_LOAD_HELP = `
Several devices (a stream saved with several --device): give a --device for each,
in the stream's order, or --map SRC=DST for each (SRC: the source device name the
stream recorded, or its index; 'vfio-mig inspect' lists them). Every identity is
checked before any device is touched; all devices go RESUMING -> STOP ->
RUNNING_P2P and only when all are loaded does any go RUNNING. A failure resets them
all. --no-p2p allows destinations without P2P (no peer-to-peer DMA).
      --map SRC=DST  (repeatable) load stream device SRC into DST
      --no-p2p       allow devices without P2P`;

/** Opens every device (closing those opened when one fails); each may be given once. */
export function openDevices(sys: Sys, specs: string[]): VfioDevice[] {
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s)) throw new VfioMigError(`${s} is given twice: each device may appear once`, "usage");
    seen.add(s);
  }
  const devs: VfioDevice[] = [];
  try {
    for (const s of specs) devs.push(openDevice(sys, s));
  } catch (e) {
    closeDevices(devs);
    throw e;
  }
  return devs;
}

export function closeDevices(devs: VfioDevice[]): void {
  for (const d of devs) {
    try {
      d.close();
    } catch { /* closing is best effort */ }
  }
}

/** --map SRC=DST values: the source part (split at the last '='), and the destination spec. */
export function parseMaps(maps: string[]): { source: string; spec: string }[] {
  return maps.map((m) => {
    const at = m.lastIndexOf("=");
    if (at <= 0 || at === m.length - 1) {
      throw new VfioMigError(`load: --map takes SRC=DST (e.g. --map 0=sim:/tmp/b), not ${m}`, "usage");
    }
    return { source: m.slice(0, at), spec: m.slice(at + 1) };
  });
}

export async function saveSeveral(
  devs: VfioDevice[],
  sink: Sink,
  target: string,
  opts: MultiSaveOptions,
  out: { json?: boolean; quiet?: boolean },
): Promise<number> {
  const r: MultiSaveResult = await saveMulti(devs, sink, opts);
  if (out.json) printJson({ command: "save", output: target, ...r }, target === "-");
  else if (!out.quiet) {
    console.error(
      `saved ${formatBytes(r.bytes)} from ${r.devices.length} devices to ${
        target === "-" ? "standard output" : target
      } in ${r.seconds.toFixed(2)}s (${formatBytes(r.throughput)}/s), downtime ${Math.round(r.downtimeMs)} ms`,
    );
    for (const d of r.devices) {
      console.error(
        `  ${d.index}  ${d.device}: ${formatBytes(d.bytes)}, ${d.chunks} chunks; device is ${d.finalState}`,
      );
    }
  }
  return 0;
}

export async function loadSeveral(
  targets: MultiLoadTarget[],
  source: StreamSource,
  from: string,
  opts: MultiLoadOptions,
  out: { json?: boolean; quiet?: boolean },
): Promise<number> {
  const r: MultiLoadResult = await loadMulti(targets, source, opts);
  if (out.json) printJson({ command: "load", input: from, ...r });
  else if (!out.quiet) {
    console.error(
      `loaded ${formatBytes(r.bytes)} into ${r.devices.length} devices in ${r.seconds.toFixed(2)}s ` +
        `(${formatBytes(r.throughput)}/s)`,
    );
    for (const d of r.devices) {
      console.error(`  ${d.index}  ${d.source} -> ${d.device}: ${formatBytes(d.bytes)}; device is ${d.finalState}`);
    }
  }
  return 0;
}
