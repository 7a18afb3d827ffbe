// Region discovery: VFIO_DEVICE_GET_REGION_INFO with its capability chain.
//
// The chain is read the way the header documents it: ask with the 32-byte struct; a
// kernel with capabilities to report sets the CAPS flag and raises argsz to the size
// it needs, and we ask again with a buffer that large. Each capability header's
// `next` is an offset from the start of the info buffer; 0 ends the chain.

import { isErrno, SysError } from "../../ffi/errno.ts";
import type { Sys } from "../../ffi/sys.ts";
import { decode, encode, IOCTL, REGION_CAP, REGION_FLAGS, STRUCTS } from "../../ffi/vfio_uapi.ts";

/** An mmap-able window of a region, relative to the region's start. */
export interface SparseArea {
  offset: number;
  size: number;
}

export interface RegionInfo {
  index: number;
  flags: number;
  size: number;
  /** File offset of the region on the device fd (pread/pwrite/mmap). */
  offset: number;
  /** VFIO_REGION_INFO_CAP_TYPE, when present. */
  type: { type: number; subtype: number } | null;
  /** VFIO_REGION_INFO_CAP_SPARSE_MMAP areas; null when the cap is absent. */
  sparse: SparseArea[] | null;
  msixMappable: boolean;
}

/** Longest argsz we follow: a chain is a handful of small structs. */
const MAX_ARGSZ = 64 * 1024;
/** More capabilities than this in one chain means a loop. */
const MAX_CAPS = 64;

/**
 * getRegionInfo, or null when the device has no such region: EINVAL (no region at that
 * index: drivers/vfio/pci/vfio_pci_core.c vfio_pci_ioctl_get_region_info) or ENOTTY (no
 * region ioctl at all). Any other error is thrown (SysError): a failure, not an absence.
 */
export function findRegion(sys: Sys, fd: number, index: number): RegionInfo | null {
  try {
    return getRegionInfo(sys, fd, index);
  } catch (e) {
    if (isErrno(e, "EINVAL") || isErrno(e, "ENOTTY")) return null;
    throw e;
  }
}

/** GET_REGION_INFO for one index, with its capability chain; throws SysError. */
export function getRegionInfo(sys: Sys, fd: number, index: number): RegionInfo {
  let argsz: number = STRUCTS.vfio_region_info.size;
  for (let attempt = 0;; attempt++) {
    const buf = encode(STRUCTS.vfio_region_info, { argsz, index }, argsz);
    sys.ioctl(fd, IOCTL.DEVICE_GET_REGION_INFO, buf);
    const r = decode(STRUCTS.vfio_region_info, buf);
    if (r.argsz > argsz && attempt === 0 && r.argsz <= MAX_ARGSZ) {
      argsz = r.argsz; // the kernel asks for more room for its capabilities
      continue;
    }
    const info: RegionInfo = {
      index,
      flags: r.flags,
      size: r.size,
      offset: r.offset,
      type: null,
      sparse: null,
      msixMappable: false,
    };
    if (r.flags & REGION_FLAGS.CAPS && r.cap_offset !== 0 && r.argsz <= argsz) walkCaps(buf, r.cap_offset, info);
    return info;
  }
}

function walkCaps(buf: Uint8Array, first: number, info: RegionInfo): void {
  const hdrSize = STRUCTS.vfio_info_cap_header.size;
  let off = first;
  for (let n = 0; off !== 0 && n < MAX_CAPS; n++) {
    if (off < STRUCTS.vfio_region_info.size || off + hdrSize > buf.length) return; // malformed: stop
    const h = decode(STRUCTS.vfio_info_cap_header, buf, off);
    switch (h.id) {
      case REGION_CAP.TYPE:
        if (off + STRUCTS.vfio_region_info_cap_type.size <= buf.length) {
          const t = decode(STRUCTS.vfio_region_info_cap_type, buf, off);
          info.type = { type: t.type, subtype: t.subtype };
        }
        break;
      case REGION_CAP.SPARSE_MMAP: {
        const s = decode(STRUCTS.vfio_region_info_cap_sparse_mmap, buf, off);
        const areaSize = STRUCTS.vfio_region_sparse_mmap_area.size;
        const base = off + STRUCTS.vfio_region_info_cap_sparse_mmap.size;
        const areas: SparseArea[] = [];
        for (let i = 0; i < s.nr_areas && base + (i + 1) * areaSize <= buf.length; i++) {
          const a = decode(STRUCTS.vfio_region_sparse_mmap_area, buf, base + i * areaSize);
          if (a.size > 0) areas.push({ offset: a.offset, size: a.size });
        }
        info.sparse = areas;
        break;
      }
      case REGION_CAP.MSIX_MAPPABLE:
        info.msixMappable = true;
        break;
    }
    if (h.next === off) return;
    off = h.next;
  }
}

/**
 * The mmap-able parts of a region: the sparse areas when the cap is present (an
 * empty list means nothing may be mapped), else the whole region when MMAP is set.
 */
export function mmapAreas(r: RegionInfo): SparseArea[] {
  if (!(r.flags & REGION_FLAGS.MMAP)) return [];
  if (r.sparse) return r.sparse.filter((a) => a.offset + a.size <= r.size);
  return [{ offset: 0, size: r.size }];
}

/**
 * The first region whose CAP_TYPE is (type, subtype), as QEMU's
 * vfio_get_dev_region_info() looks for it: every index, skipping those that fail.
 */
export function findRegionByType(
  sys: Sys,
  fd: number,
  numRegions: number,
  type: number,
  subtype: number,
): RegionInfo | null {
  for (let i = 0; i < numRegions; i++) {
    let r: RegionInfo;
    try {
      r = getRegionInfo(sys, fd, i);
    } catch (e) {
      if (e instanceof SysError) continue;
      throw e;
    }
    if (r.type && r.type.type === type && r.type.subtype === subtype) return r;
  }
  return null;
}
