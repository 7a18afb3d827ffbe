// Quirks: driver behaviours a simulated device can be given with `sim create --quirk
// NAME` (stored as "quirks" in device.json), each read from the real driver's own fix or
// documented behaviour, so that `vfio-mig check` can be shown to catch the
// non-conformant ones and the tool to survive the conformant ones. A device without
// quirks behaves exactly as before. Each quirk is one file in quirks/, a set of hooks
// (driver.ts Behaviour) the core calls around the driver's ops.

import type { Behaviour } from "./driver.ts";
import type { ModelName } from "./models.ts";
import type { SimDeviceMeta } from "./store.ts";
import { blockingRead } from "./quirks/blocking_read.ts";
import { dirtyUnderreport } from "./quirks/dirty_underreport.ts";
import { failsMidPath } from "./quirks/fails_mid_path.ts";
import { fdOnStop } from "./quirks/fd_on_stop.ts";
import { hangsOnArc } from "./quirks/hangs_on_arc.ts";
import { ignoresOffset } from "./quirks/ignores_offset.ts";
import { initialGrows } from "./quirks/initial_grows.ts";
import { leaksSession } from "./quirks/leaks_session.ts";
import { lateWriteback } from "./quirks/late_writeback.ts";
import { noRegionInfo } from "./quirks/no_region_info.ts";
import { openResetsState } from "./quirks/open_resets_state.ts";
import { resetClearsConfig } from "./quirks/reset_clears_config.ts";
import { resetMidSession } from "./quirks/reset_mid_session.ts";
import { staleAfterReopen } from "./quirks/stale_after_reopen.ts";
import { trustsResumeField } from "./quirks/trusts_resume_field.ts";
import { uninitVf } from "./quirks/uninit_vf.ts";
import { wrongArc } from "./quirks/wrong_arc.ts";
import { yieldRate } from "./quirks/yield_rate.ts";

export interface QuirkDef {
  /** One line for `sim --help`. */
  summary: string;
  /** Whether the uAPI allows it (a tool must cope) or not (`check` must catch it). */
  conformant: boolean;
  /** The real fix, driver code or document the behaviour comes from. */
  source: string;
  /** The models it applies to (absent: all). */
  models?: readonly ModelName[];
  /** Only for uAPI v2 devices (it acts on the data_fd). */
  v2Only?: boolean;
  behaviour: Behaviour;
}

/** Every quirk, in the order their hooks wrap a call (the first is the outermost). */
export const QUIRKS = {
  "wrong-arc": wrongArc,
  "fd-on-stop": fdOnStop,
  "initial-grows": initialGrows,
  "blocking-read": blockingRead,
  "reset-mid-session": resetMidSession,
  "fails-mid-path": failsMidPath,
  "open-resets-state": openResetsState,
  "stale-after-reopen": staleAfterReopen,
  "ignores-offset": ignoresOffset,
  "dirty-underreport": dirtyUnderreport,
  "reset-clears-config": resetClearsConfig,
  // Planted defects for `check --torture` (its host tests): not for plain `check`.
  "trusts-resume-field": trustsResumeField,
  "hangs-on-arc": hangsOnArc,
  "leaks-session": leaksSession,
  "no-region-info": noRegionInfo,
  "late-writeback": lateWriteback,
  "uninit-vf": uninitVf,
} satisfies Record<string, QuirkDef>;

export type QuirkName = keyof typeof QUIRKS;
export const QUIRK_NAMES = Object.keys(QUIRKS) as QuirkName[];

/** Validates quirk names (from the command line or device.json). */
export function parseQuirks(names: readonly string[]): QuirkName[] {
  for (const n of names) {
    if (!(n in QUIRKS)) throw new Error(`unknown quirk ${n} (${QUIRK_NAMES.join(", ")})`);
  }
  return [...new Set(names)] as QuirkName[];
}

/** Why a quirk cannot go on a device of this model and protocol, or null. */
export function quirkMismatch(name: QuirkName, model: ModelName, v1: boolean): string | null {
  const q: QuirkDef = QUIRKS[name];
  if (q.models && !q.models.includes(model)) return `quirk ${name} applies to ${q.models.join(", ")} only`;
  if (q.v2Only && v1) return `quirk ${name} needs uAPI v2 (it acts on the data_fd)`;
  return null;
}

export function hasQuirk(meta: { quirks?: readonly string[] }, name: QuirkName): boolean {
  return meta.quirks?.includes(name) ?? false;
}

/** The behaviours of a device, outermost first: its yield rate, then its quirks. */
export function behavioursOf(meta: SimDeviceMeta): { name: string; behaviour: Behaviour }[] {
  const out: { name: string; behaviour: Behaviour }[] = [];
  if (meta.yieldRate) out.push({ name: "yield-rate", behaviour: yieldRate });
  for (const name of QUIRK_NAMES) {
    if (hasQuirk(meta, name)) out.push({ name, behaviour: QUIRKS[name].behaviour });
  }
  return out;
}
