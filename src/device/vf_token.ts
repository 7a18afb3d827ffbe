// The SR-IOV VF token (vfio-pci's shared secret between a PF's user and its VFs' users):
// whether a device takes one, how it is handed to the kernel on either open path, and the
// one-line errors when the kernel refuses the open for it.
//
// The kernel's rules (drivers/vfio/pci/vfio_pci_core.c, vfio_pci_validate_vf_token before
// Linux 6.17, vfio_pci_core_match_token_uuid since):
//  - a VF whose PF was bound to vfio-pci (a vfio-pci-core driver that enabled SR-IOV) needs
//    the PF's token: none → EACCES "VF token required to access device", another →
//    EACCES "Incorrect VF token provided for device";
//  - a PF with the SR-IOV capability bound to vfio-pci: while VFs are in use the same two
//    EACCES; while none is, a token given at open becomes the PF's token (as
//    VFIO_DEVICE_FEATURE_PCI_VF_TOKEN on the PF's fd does);
//  - a token where none applies is EINVAL: "VF token incorrectly provided, PF not bound to
//    vfio-pci" (a VF) or "VF token incorrectly provided, not a PF or VF".
// The group path passes it in VFIO_GROUP_GET_DEVICE_FD's name ("0000:04:10.0
// vf_token=UUID", vfio_pci_core_match); the cdev path in VFIO_DEVICE_BIND_IOMMUFD
// (VFIO_DEVICE_BIND_FLAG_TOKEN, token_uuid_ptr: Linux 6.17; earlier kernels refuse any
// flag with EINVAL and check no token on the cdev path at all: drivers/vfio/device_cdev.c).

import { isErrno } from "../../ffi/errno.ts";
import type { Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { readSmallFile } from "../io.ts";
import { deviceError } from "./device.ts";
import { isVfioDriver, type Sysfs, type SysfsDevice, UUID } from "./sysfs.ts";

/** The first kernel whose VFIO_DEVICE_BIND_IOMMUFD takes a VF token (VFIO_DEVICE_BIND_FLAG_TOKEN). */
export const BIND_TOKEN_KERNEL = "6.17";

/**
 * A --vf-token value checked: a UUID as the kernel's uuid_parse reads it (8-4-4-4-12 hex
 * digits), lowercased. Throws VfioMigError (usage, exit 2) otherwise; the message does not
 * repeat the value (a token is treated as a credential).
 */
export function parseVfToken(text: string, option = "--vf-token"): string {
  if (!UUID.test(text)) {
    throw new VfioMigError(
      `${option} takes a UUID (8-4-4-4-12 hex digits, e.g. 2ab74924-c335-45f4-9b16-8569e5b08258); the value ` +
        `given is not one (uuidgen makes one)`,
      "usage",
    );
  }
  return text.toLowerCase();
}

/** The token's 16 bytes, in the order VFIO_DEVICE_FEATURE_PCI_VF_TOKEN and token_uuid_ptr take (uuid_t). */
export function vfTokenBytes(token: string): Uint8Array {
  const hex = token.replace(/-/g, "");
  const b = new Uint8Array(16);
  for (let i = 0; i < 16; i++) b[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return b;
}

/** What a device is to vfio-pci's VF token, from sysfs (Sysfs.sriov). */
export interface VfTokenTarget {
  /** "vf": an SR-IOV VF; "pf": a function with the SR-IOV capability; null: neither, or an mdev. */
  kind: "vf" | "pf" | null;
  /** A VF's PF and its driver. */
  pf: { name: string; driver: string | null } | null;
  /** Whether the kernel takes a token for it (and refuses one with EINVAL otherwise). */
  takesToken: boolean;
}

/**
 * Whether vfio-pci takes a VF token for `dev`, from sysfs: a VF whose PF (`physfn`) is bound
 * to a vfio driver (vfio_pci_core_match checks its token against the PF's), or a PF with the
 * SR-IOV capability (`sriov_totalvfs`) bound to one (its token is checked, or set, at open).
 * Nothing else takes one: the kernel answers a token there with EINVAL, so one --vf-token
 * given for several devices is passed only to those that take it. An mdev's name takes no
 * options at all (its driver has no match op: vfio_device_get_from_name compares the whole
 * string). A VF whose PF is bound to a vfio driver that did not create the VFs is a case
 * sysfs cannot tell apart; the kernel's EINVAL then says so (tokenRefused).
 */
export function vfTokenTarget(sysfs: Sysfs, dev: SysfsDevice | null): VfTokenTarget {
  if (!dev || dev.kind !== "pci") return { kind: null, pf: null, takesToken: false };
  const { pf, totalVfs } = sysfs.sriov(dev);
  const onVfio = (driver: string | null) => driver !== null && isVfioDriver(driver);
  if (pf) return { kind: "vf", pf, takesToken: onVfio(pf.driver) };
  if (totalVfs !== null) return { kind: "pf", pf: null, takesToken: onVfio(dev.driver) };
  return { kind: null, pf: null, takesToken: false };
}

/**
 * The name VFIO_GROUP_GET_DEVICE_FD takes: the device's name, with " vf_token=UUID" when a
 * token is given and the device takes one (vfio_pci_core_match's syntax).
 */
export function groupDeviceName(dev: SysfsDevice, token: string | null, target: VfTokenTarget): string {
  return token !== null && target.takesToken ? `${dev.name} vf_token=${token}` : dev.name;
}

/** The kernel's release (/proc/sys/kernel/osrelease), or null when it cannot be read. */
function kernelRelease(sys: Sys): string | null {
  try {
    return new TextDecoder().decode(readSmallFile(sys, "/proc/sys/kernel/osrelease", 256)).trim();
  } catch {
    return null;
  }
}

/** Whether release `r` ("6.12.117+deb12-amd64") is older than `min` ("6.17"); null if unreadable. */
export function releaseBefore(r: string, min: string): boolean | null {
  const m = /^(\d+)\.(\d+)/.exec(r);
  const n = /^(\d+)\.(\d+)/.exec(min)!;
  if (!m) return null;
  const [a, b, c, d] = [Number(m[1]), Number(m[2]), Number(n[1]), Number(n[2])];
  return a !== c ? a < c : b < d;
}

/**
 * The one-line error (exit 3) for an open the kernel refused for the VF token, or null when
 * `e` is not such a refusal. `ioctl` is where (VFIO_GROUP_GET_DEVICE_FD, or
 * VFIO_DEVICE_BIND_IOMMUFD on Linux >= 6.17); `given`: whether a token was passed.
 *  - EACCES without a token: the token is required (a VF: naming its PF and the PF's driver;
 *    a PF: its VFs are in use), and --vf-token is the way;
 *  - EACCES with one: it is not the PF's;
 *  - EINVAL with one: the kernel's reason (vfio_pci_core.c's message for the device's kind).
 * The token itself is never in the message.
 */
export function tokenRefused(
  e: unknown,
  spec: string,
  ioctl: string,
  target: VfTokenTarget,
  given: boolean,
): VfioMigError | null {
  if (isErrno(e, "EACCES")) return refusal("EACCES", spec, ioctl, target, given);
  if (isErrno(e, "EINVAL") && given) return refusal("EINVAL", spec, ioctl, target, given);
  return null;
}

function refusal(
  code: "EACCES" | "EINVAL",
  spec: string,
  ioctl: string,
  target: VfTokenTarget,
  given: boolean,
): VfioMigError {
  const pf = target.pf;
  if (code === "EACCES") {
    const head = `${ioctl}: EACCES: `;
    if (target.kind === "vf" && pf) {
      const bound = `the PF ${pf.name} is bound to ${pf.driver ?? "no driver"}`;
      return deviceError(
        spec,
        given
          ? head + `the VF token is not the one PF ${pf.name} has (${bound}): pass the token its user set ` +
            `(opening the PF with --vf-token sets it while none of its VFs is in use)`
          : head + `VF token required: ${bound}; pass --vf-token UUID (the token its user set; ` +
            `'vfio-mig info --device ${pf.name} --vf-token UUID' sets one while none of its VFs is in use)`,
      );
    }
    if (target.kind === "pf") {
      return deviceError(
        spec,
        given
          ? head + `the VF token is not the one this PF has, and its VFs are in use: pass the token ` +
            `their users were given`
          : head + `VF token required: VFs of this PF are in use through vfio-pci; pass --vf-token UUID ` +
            `(the token their users were given)`,
      );
    }
    return deviceError(
      spec,
      head + `refused (vfio-pci refuses an SR-IOV VF or PF without the right VF token: see the kernel log; ` +
        `pass --vf-token UUID if it says "VF token required")`,
    );
  }
  // EINVAL with a token: vfio_pci_core.c's message for the device's kind.
  const reason = target.kind === "vf"
    ? `"VF token incorrectly provided, PF not bound to vfio-pci" (the PF ${pf?.name} did not create its VFs ` +
      `through vfio-pci)`
    : `"VF token incorrectly provided, not a PF or VF"`;
  return deviceError(spec, `${ioctl}: EINVAL: the kernel refused the VF token: ${reason}; open it without --vf-token`);
}

/**
 * VFIO_DEVICE_BIND_IOMMUFD's EINVAL when a token was passed: a kernel before Linux 6.17 takes
 * no flag there (`bind.flags` must be 0: drivers/vfio/device_cdev.c), so it cannot take a
 * token on the cdev path: the group path (the PCI address) can. On a newer kernel, the
 * kernel's reason (tokenRefused). The release is read from /proc/sys/kernel/osrelease.
 */
export function bindTokenRefused(sys: Sys, spec: string, target: VfTokenTarget, name: string | null): VfioMigError {
  const release = kernelRelease(sys);
  const before = release === null ? null : releaseBefore(release, BIND_TOKEN_KERNEL);
  if (before !== false) {
    const kernel = release === null ? "this kernel" : `this kernel (${release})`;
    return deviceError(
      spec,
      `VFIO_DEVICE_BIND_IOMMUFD: EINVAL: ${kernel} takes no VF token on the cdev path ` +
        `(VFIO_DEVICE_BIND_FLAG_TOKEN came in Linux ${BIND_TOKEN_KERNEL}); open it by its PCI address ` +
        `(${name ?? "0000:BB:DD.F"}: the group path) with --vf-token`,
    );
  }
  return refusal("EINVAL", spec, "VFIO_DEVICE_BIND_IOMMUFD", target, true);
}
