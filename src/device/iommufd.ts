// Binding a VFIO device cdev to an iommufd (Linux >= 6.6, VFIO_DEVICE_CDEV): what makes
// an opened /dev/vfio/devices/vfioN usable. Shared by fresh cdev opens (open.ts) and
// inherited, not yet bound cdev fds (borrow.ts).

import { isErrno } from "../../ffi/errno.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import { decode, DEVICE_BIND_FLAG, encode, IOCTL, STRUCTS } from "../../ffi/vfio_uapi.ts";
import { busyError } from "./busy.ts";
import { deviceError } from "./device.ts";

/** Opens a device-side path, turning the usual errnos into one clear line. */
export function openOrExplain(sys: Sys, path: string, spec: string, flags = O.RDWR | O.CLOEXEC): number {
  try {
    return sys.open(path, flags);
  } catch (e) {
    throw explainOpen(e, path, spec);
  }
}

/** The one-line error for a failed open of a VFIO node (the cause itself when not a usual errno). */
export function explainOpen(e: unknown, path: string, spec: string): unknown {
  if (isErrno(e, "EACCES") || isErrno(e, "EPERM")) {
    return deviceError(spec, `permission denied opening ${path}: run as root or give your user access to it`);
  }
  if (isErrno(e, "EBUSY")) {
    return deviceError(spec, `${path} is busy: another process (a VM, or another vfio-mig) has it open`);
  }
  if (isErrno(e, "ENOENT")) return deviceError(spec, `${path} does not exist (is the vfio module loaded?)`);
  return e;
}

/** A VF token for VFIO_DEVICE_BIND_IOMMUFD, and what to throw when the bind is refused for it. */
export interface BindToken {
  /** The 16 bytes of the UUID (vf_token.ts vfTokenBytes); null: no token passed. */
  bytes: Uint8Array | null;
  /** The error for the bind's EACCES, or EINVAL with a token (vf_token.ts); null: the errno as it is. */
  refused(e: unknown): unknown;
}

/**
 * Binds the cdev fd `fd` to a new iommufd with one IOAS attached (VFIO_DEVICE_BIND_IOMMUFD,
 * IOMMU_IOAS_ALLOC, VFIO_DEVICE_ATTACH_IOMMUFD_PT; include/uapi/linux/vfio.h, iommufd.h).
 * The bind is the device's open (drivers/vfio/device_cdev.c vfio_df_ioctl_bind_iommufd):
 * it fails with EBUSY while the device's group is open elsewhere (vfio_device_block_group)
 * and EINVAL while another cdev file has the device open (vfio_df_open); both become a
 * DeviceBusyError naming the holder (`node` is the cdev's vfioN). With `token.bytes`, the
 * bind passes them as the VF token (VFIO_DEVICE_BIND_FLAG_TOKEN, token_uuid_ptr: Linux
 * 6.17; an older kernel answers any flag with EINVAL); its EACCES (a token required or
 * wrong, 6.17+), and its EINVAL with a token when no holder explains it, become
 * `token.refused(e)`. Returns the iommufd fd, which the caller closes after the device fd
 * (the binding holds its own reference).
 */
export function bindIommufd(
  sys: Sys,
  fd: number,
  spec: string,
  node: string | null,
  group: string | null,
  token: BindToken | null = null,
): number {
  const iommufd = openOrExplain(sys, "/dev/iommu", spec);
  try {
    const uuid = token?.bytes ?? null;
    const bind = encode(STRUCTS.vfio_device_bind_iommufd, {
      argsz: 24,
      flags: uuid ? DEVICE_BIND_FLAG.TOKEN : 0,
      iommufd,
      // The kernel copies the 16 bytes from this address during the ioctl; `uuid` lives until then.
      token_uuid_ptr: uuid
        ? Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(uuid as Uint8Array<ArrayBuffer>)))
        : 0,
    });
    try {
      sys.ioctl(fd, IOCTL.DEVICE_BIND_IOMMUFD, bind);
    } catch (e) {
      if (isErrno(e, "EBUSY")) throw busyError(sys, spec, { group, cdev: node });
      if (isErrno(e, "EINVAL") && node) {
        const busy = busyError(sys, spec, { cdev: node });
        if (busy.holders.length) throw busy;
      }
      if (token && (isErrno(e, "EACCES") || (uuid && isErrno(e, "EINVAL")))) throw token.refused(e);
      throw e;
    }
    const alloc = encode(STRUCTS.iommu_ioas_alloc, { size: 12, flags: 0 });
    sys.ioctl(iommufd, IOCTL.IOMMU_IOAS_ALLOC, alloc);
    const ioas = decode(STRUCTS.iommu_ioas_alloc, alloc).out_ioas_id;
    sys.ioctl(
      fd,
      IOCTL.DEVICE_ATTACH_IOMMUFD_PT,
      encode(STRUCTS.vfio_device_attach_iommufd_pt, { argsz: 16, pt_id: ioas }),
    );
    return iommufd;
  } catch (e) {
    try {
      sys.close(iommufd);
    } catch { /* already failing */ }
    throw e;
  }
}
