// Quirks: deliberate NON-CONFORMANT driver behaviour of a simulated device, so that
// `vfio-mig check` can be shown to catch it. Off unless a device is created with
// `sim create --quirk NAME` (stored as "quirks" in device.json); a device without
// quirks behaves exactly as before. Each quirk is one small hook in kernel.ts.

export const QUIRKS = {
  /** A request whose last arc enters RUNNING reports success but leaves the device one step short. */
  "wrong-arc": "requests ending with the arc into RUNNING succeed but leave the device in the state before it",
  /** STOP entered from RUNNING or RUNNING_P2P hands out a data_fd (no session should start there). */
  "fd-on-stop": "the arc RUNNING(_P2P) -> STOP returns a data_fd",
  /** PRECOPY_INFO's initial_bytes grows while the initial data is being read (without REINIT). */
  "initial-grows": "PRECOPY_INFO initial_bytes grows as the initial data is read",
} as const;

export type QuirkName = keyof typeof QUIRKS;
export const QUIRK_NAMES = Object.keys(QUIRKS) as QuirkName[];

/** Validates quirk names (from the command line or device.json). */
export function parseQuirks(names: readonly string[]): QuirkName[] {
  for (const n of names) {
    if (!(n in QUIRKS)) throw new Error(`unknown quirk ${n} (${QUIRK_NAMES.join(", ")})`);
  }
  return [...new Set(names)] as QuirkName[];
}

export function hasQuirk(meta: { quirks?: readonly string[] }, name: QuirkName): boolean {
  return meta.quirks?.includes(name) ?? false;
}
