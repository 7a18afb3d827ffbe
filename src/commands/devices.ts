// The devices a save or load command works on: opening them (each once), closing
// them, `--map SRC=DST` for a multi-device stream, and the help text for several
// devices (`save --device A --device B … OUT`, `load --device B1 --device B2 … IN`).

import { deviceHelp, vfTokenHelp } from "./help.ts";
import type { Sys } from "../../ffi/sys.ts";
import {
  defaultDeviceSpec,
  loadBackendsFor,
  openDevice,
  opensByName,
  systemFor,
  type VfioDevice,
} from "../device/open.ts";
import { parseVfToken } from "../device/vf_token.ts";
import { libc } from "../../ffi/libc.ts";
import { VfioMigError } from "../errors.ts";

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

/** The --vf-token option, in every command that opens devices by name. */
export const VF_TOKEN_OPTION = { "vf-token": { type: "string" } } as const;

/** The environment variable that gives the VF token without putting it on the command line (ps shows argv). */
export const VF_TOKEN_ENV = "VFIO_MIG_VF_TOKEN";

/**
 * The VF token for `specs` (null when none): --vf-token's value, else $VFIO_MIG_VF_TOKEN
 * (set but empty: none), checked. Refused (usage, exit 2): not a UUID; --vf-token when no
 * device among `specs` is opened by name (sim:, pid:, fd: open nothing by name; the
 * variable, which may be set for other commands, then applies to nothing). With several
 * devices, openDevices passes it to each device opened by name, and the device layer to
 * each of those that takes one.
 */
export function vfTokenFor(cmd: string, text: string | undefined, specs: string[]): string | null {
  const fromEnv = text === undefined;
  const given = text ?? (libc().getenv(VF_TOKEN_ENV) || undefined);
  if (given === undefined) return null;
  const token = parseVfToken(given, fromEnv ? VF_TOKEN_ENV : "--vf-token");
  if (!specs.some(opensByName)) {
    if (fromEnv) return null;
    throw new VfioMigError(
      `${cmd}: --vf-token applies only to devices opened by name (a PCI address, sysfs path or ` +
        `/dev/vfio/devices/vfioN), not to ${specs.join(", ")} (see 'vfio-mig ${cmd} --help')`,
      "usage",
    );
  }
  return token;
}

/**
 * Opens every device (closing those opened when one fails); each may be given once.
 * `vfToken` goes to each device opened by name (OpenOptions.vfToken).
 */
export function openDevices(sys: Sys, specs: string[], vfToken: string | null = null): VfioDevice[] {
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s)) throw new VfioMigError(`${s} is given twice: each device may appear once`, "usage");
    seen.add(s);
  }
  const devs: VfioDevice[] = [];
  try {
    for (const s of specs) devs.push(openDevice(sys, s, vfToken !== null && opensByName(s) ? { vfToken } : {}));
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

/** What --device takes, for the help of the commands that open one device. */
export const DEVICE_OPTION_HELP = deviceHelp(19).slice(19);

/** The --vf-token lines of those commands' help (aligned as DEVICE_OPTION_HELP). */
export const VF_TOKEN_OPTION_HELP = vfTokenHelp(19);

/**
 * The device --device names, or the default one ($VFIO_MIG_DEVICE, else the only
 * migratable one), open; `vfTokenText` is --vf-token's value (vfTokenFor checks it).
 */
export async function openNamedDevice(
  cmd: string,
  spec: string | undefined,
  vfTokenText?: string,
): Promise<VfioDevice> {
  if (vfTokenText !== undefined) parseVfToken(vfTokenText); // a malformed one before the default device
  const s = spec ?? defaultDeviceSpec(systemFor([]));
  const vfToken = vfTokenFor(cmd, vfTokenText, [s]);
  await loadBackendsFor([s]);
  return openDevice(systemFor([s]), s, vfToken !== null ? { vfToken } : {});
}
