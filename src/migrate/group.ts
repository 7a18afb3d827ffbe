// The devices one save or load moves together (reference §2.5): the checks that apply
// to the set before any device is touched. One device is a set of one.

import type { VfioDevice } from "../device/open.ts";
import { VfioMigError } from "../errors.ts";
import { MAX_DEVICES } from "../stream/format.ts";
import type { Protocol } from "./protocol.ts";

/**
 * Refuses a set of several devices of which some lack P2P (QEMU docs/devel/migration/
 * vfio.rst: "multiple VFIO devices migration is allowed only if all the devices support
 * P2P migration"), unless the user says they do no peer-to-peer DMA. One device needs
 * no P2P. Throws VfioMigError (exit 3).
 */
export function requireP2p(
  devices: readonly { label: string; p2p: boolean; flags: number; protocol: Protocol }[],
  noP2p: boolean,
): void {
  if (noP2p || devices.length < 2) return;
  const lacking = devices.filter((x) => !x.p2p);
  if (lacking.length === 0) return;
  const what = lacking.map((x) =>
    x.protocol === "v1"
      ? `${x.label} (migration protocol v1)`
      : `${x.label} (migration flags 0x${x.flags.toString(16)})`
  ).join(", ");
  throw new VfioMigError(
    `several devices move together only when every one supports P2P (RUNNING_P2P), so ` +
      `that none starts peer-to-peer DMA into a device already stopped; ${
        lacking.length === 1 ? "this one lacks" : "these lack"
      } it: ${what}. If these devices do no peer-to-peer DMA, give --no-p2p`,
    "device",
  );
}

/** Each device may appear once; at most MAX_DEVICES fit one stream. Throws a usage error. */
export function checkDeviceSet(devs: readonly VfioDevice[], op: "save" | "load"): void {
  if (devs.length === 0) throw new VfioMigError(`${op}: give at least one device`, "usage");
  if (devs.length > MAX_DEVICES) {
    throw new VfioMigError(`${op}: at most ${MAX_DEVICES} devices fit one stream (${devs.length} given)`, "usage");
  }
  const seen = new Set<VfioDevice>();
  const labels = new Set<string>();
  for (const d of devs) {
    if (seen.has(d) || labels.has(d.label)) {
      throw new VfioMigError(`${d.label} is given twice: each device may appear once`, "usage");
    }
    seen.add(d);
    labels.add(d.label);
  }
}

/** How an operation on the set is named in its one-line error. */
export function operationName(op: "save from" | "load into", labels: readonly string[]): string {
  return labels.length === 1 ? `${op} ${labels[0]}` : `${op.split(" ")[0]} of ${labels.length} devices`;
}
