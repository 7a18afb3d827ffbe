// The VFIO (and iommufd) userspace API: ioctl numbers, constants, and struct codecs
// over DataView. Source: include/uapi/linux/vfio.h and iommufd.h. Every struct's
// layout is data (STRUCTS) so tests can compare it with the C compiler's view of the
// real header (tests/vfio/uapi_layout_test.ts).

// ---------------------------------------------------------------------------
// ioctl numbers. VFIO defines every ioctl with plain _IO(';', 100 + n): no size or
// direction bits. asm-generic encoding (x86, arm64, riscv): (type << 8) | nr.
// powerpc/mips/sparc put _IOC_NONE in the top bits; refuse to guess there.

const IOC_NONE_SHIFTED = (() => {
  switch (Deno.build.arch) {
    case "x86_64":
    case "aarch64":
      return 0;
    default:
      throw new Error(`vfio-mig: ioctl encoding for ${Deno.build.arch} is not known`);
  }
})();

const VFIO_TYPE = 0x3b; // ';'
const VFIO_BASE = 100;
const io = (nr: number) => IOC_NONE_SHIFTED | (VFIO_TYPE << 8) | nr;

export const IOCTL = {
  GET_API_VERSION: io(VFIO_BASE + 0),
  CHECK_EXTENSION: io(VFIO_BASE + 1),
  SET_IOMMU: io(VFIO_BASE + 2),
  GROUP_GET_STATUS: io(VFIO_BASE + 3),
  GROUP_SET_CONTAINER: io(VFIO_BASE + 4),
  GROUP_UNSET_CONTAINER: io(VFIO_BASE + 5),
  GROUP_GET_DEVICE_FD: io(VFIO_BASE + 6),
  DEVICE_GET_INFO: io(VFIO_BASE + 7),
  DEVICE_GET_REGION_INFO: io(VFIO_BASE + 8),
  DEVICE_GET_IRQ_INFO: io(VFIO_BASE + 9),
  DEVICE_SET_IRQS: io(VFIO_BASE + 10),
  DEVICE_RESET: io(VFIO_BASE + 11),
  DEVICE_FEATURE: io(VFIO_BASE + 17),
  DEVICE_BIND_IOMMUFD: io(VFIO_BASE + 18),
  DEVICE_ATTACH_IOMMUFD_PT: io(VFIO_BASE + 19),
  DEVICE_DETACH_IOMMUFD_PT: io(VFIO_BASE + 20),
  /** Issued on the migration data_fd, not on the device fd. */
  MIG_GET_PRECOPY_INFO: io(VFIO_BASE + 21),
  // iommufd: _IO(';', 0x80 + n)
  IOMMU_DESTROY: io(0x80),
  IOMMU_IOAS_ALLOC: io(0x81),
} as const;

/**
 * The kernel's name of an ioctl request (VFIO_SET_IOMMU, VFIO_DEVICE_FEATURE,
 * IOMMU_IOAS_ALLOC, ...), as include/uapi/linux/vfio.h and iommufd.h spell it; a
 * request this table does not know is shown as its number in hex.
 */
export function ioctlName(request: number): string {
  const key = IOCTL_KEYS.get(request);
  if (key === undefined) return `0x${request.toString(16)}`;
  return key.startsWith("IOMMU_") ? key : `VFIO_${key}`;
}

const IOCTL_KEYS = new Map<number, string>(Object.entries(IOCTL).map(([k, v]) => [v, k]));

export const VFIO_API_VERSION = 0;
export const IOMMU_TYPE = { TYPE1: 1, TYPE1v2: 3 } as const;

export const GROUP_FLAGS = { VIABLE: 1 << 0, CONTAINER_SET: 1 << 1 } as const;
export const DEVICE_FLAGS = {
  RESET: 1 << 0,
  PCI: 1 << 1,
  PLATFORM: 1 << 2,
  AMBA: 1 << 3,
  CCW: 1 << 4,
  AP: 1 << 5,
  FSL_MC: 1 << 6,
  CAPS: 1 << 7,
  CDX: 1 << 8,
} as const;
export const REGION_FLAGS = { READ: 1 << 0, WRITE: 1 << 1, MMAP: 1 << 2, CAPS: 1 << 3 } as const;
export const PCI_REGION = { BAR0: 0, ROM: 6, CONFIG: 7, VGA: 8, NUM: 9 } as const;

export const FEATURE_FLAGS = { MASK: 0xffff, GET: 1 << 16, SET: 1 << 17, PROBE: 1 << 18 } as const;
export const FEATURE = {
  PCI_VF_TOKEN: 0,
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
  MIG_DATA_SIZE: 9,
  MIG_PRECOPY_INFOv2: 12,
} as const;

export const MIGRATION_FLAGS = { STOP_COPY: 1 << 0, P2P: 1 << 1, PRE_COPY: 1 << 2 } as const;
export const PRECOPY_INFO_REINIT = 1 << 0;

// ---------------------------------------------------------------------------
// Struct codecs. A struct is its size and its fields' offsets and types; encode and
// decode are generic over that description.

export type FieldType = "u8" | "u16" | "u32" | "s32" | "u64";
export type Field = readonly [offset: number, type: FieldType];
export interface StructDef<F extends string = string> {
  readonly name: string;
  readonly size: number;
  readonly fields: Readonly<Record<F, Field>>;
}

export const FIELD_SIZE: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

function def<F extends string>(name: string, size: number, fields: Record<F, Field>): StructDef<F> {
  return { name, size, fields };
}

export const STRUCTS = {
  vfio_info_cap_header: def("vfio_info_cap_header", 8, {
    id: [0, "u16"],
    version: [2, "u16"],
    next: [4, "u32"],
  }),
  vfio_group_status: def("vfio_group_status", 8, { argsz: [0, "u32"], flags: [4, "u32"] }),
  vfio_device_info: def("vfio_device_info", 24, {
    argsz: [0, "u32"],
    flags: [4, "u32"],
    num_regions: [8, "u32"],
    num_irqs: [12, "u32"],
    cap_offset: [16, "u32"],
    pad: [20, "u32"],
  }),
  vfio_region_info: def("vfio_region_info", 32, {
    argsz: [0, "u32"],
    flags: [4, "u32"],
    index: [8, "u32"],
    cap_offset: [12, "u32"],
    size: [16, "u64"],
    offset: [24, "u64"],
  }),
  vfio_region_info_cap_type: def("vfio_region_info_cap_type", 16, {
    type: [8, "u32"],
    subtype: [12, "u32"],
  }),
  vfio_region_info_cap_sparse_mmap: def("vfio_region_info_cap_sparse_mmap", 16, {
    nr_areas: [8, "u32"],
    reserved: [12, "u32"],
  }),
  vfio_region_sparse_mmap_area: def("vfio_region_sparse_mmap_area", 16, {
    offset: [0, "u64"],
    size: [8, "u64"],
  }),
  vfio_device_feature: def("vfio_device_feature", 8, { argsz: [0, "u32"], flags: [4, "u32"] }),
  vfio_device_feature_migration: def("vfio_device_feature_migration", 8, { flags: [0, "u64"] }),
  vfio_device_feature_mig_state: def("vfio_device_feature_mig_state", 8, {
    device_state: [0, "u32"],
    data_fd: [4, "s32"],
  }),
  vfio_device_feature_mig_data_size: def("vfio_device_feature_mig_data_size", 8, {
    stop_copy_length: [0, "u64"],
  }),
  vfio_precopy_info: def("vfio_precopy_info", 24, {
    argsz: [0, "u32"],
    flags: [4, "u32"],
    initial_bytes: [8, "u64"],
    dirty_bytes: [16, "u64"],
  }),
  vfio_device_bind_iommufd: def("vfio_device_bind_iommufd", 24, {
    argsz: [0, "u32"],
    flags: [4, "u32"],
    iommufd: [8, "s32"],
    out_devid: [12, "u32"],
    token_uuid_ptr: [16, "u64"],
  }),
  vfio_device_attach_iommufd_pt: def("vfio_device_attach_iommufd_pt", 16, {
    argsz: [0, "u32"],
    flags: [4, "u32"],
    pt_id: [8, "u32"],
    pasid: [12, "u32"],
  }),
  vfio_device_migration_info: def("vfio_device_migration_info", 32, {
    device_state: [0, "u32"],
    reserved: [4, "u32"],
    pending_bytes: [8, "u64"],
    data_offset: [16, "u64"],
    data_size: [24, "u64"],
  }),
  iommu_ioas_alloc: def("iommu_ioas_alloc", 12, {
    size: [0, "u32"],
    flags: [4, "u32"],
    out_ioas_id: [8, "u32"],
  }),
} as const;

export type Decoded<S extends StructDef> = { [K in keyof S["fields"]]: number };

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Writes `values` into `buf` at `base` following `s` (little-endian, native here). */
export function encodeInto<S extends StructDef>(
  s: S,
  values: Partial<Decoded<S>>,
  buf: Uint8Array,
  base = 0,
): Uint8Array {
  const v = view(buf);
  for (const [name, [off, type]] of Object.entries(s.fields) as [string, Field][]) {
    const x = (values as Record<string, number | undefined>)[name] ?? 0;
    const at = base + off;
    switch (type) {
      case "u8":
        v.setUint8(at, x);
        break;
      case "u16":
        v.setUint16(at, x, true);
        break;
      case "u32":
        v.setUint32(at, x >>> 0, true);
        break;
      case "s32":
        v.setInt32(at, x, true);
        break;
      case "u64":
        v.setBigUint64(at, BigInt(x), true);
        break;
    }
  }
  return buf;
}

export function encode<S extends StructDef>(s: S, values: Partial<Decoded<S>>, size = s.size): Uint8Array {
  return encodeInto(s, values, new Uint8Array(size));
}

/** u64 fields decode to numbers: every u64 VFIO reports here (sizes, offsets) is < 2^53. */
export function decode<S extends StructDef>(s: S, buf: Uint8Array, base = 0): Decoded<S> {
  const v = view(buf);
  const out: Record<string, number> = {};
  for (const [name, [off, type]] of Object.entries(s.fields) as [string, Field][]) {
    const at = base + off;
    switch (type) {
      case "u8":
        out[name] = v.getUint8(at);
        break;
      case "u16":
        out[name] = v.getUint16(at, true);
        break;
      case "u32":
        out[name] = v.getUint32(at, true);
        break;
      case "s32":
        out[name] = v.getInt32(at, true);
        break;
      case "u64":
        out[name] = Number(v.getBigUint64(at, true));
        break;
    }
  }
  return out as Decoded<S>;
}

/**
 * A VFIO_DEVICE_FEATURE argument: the 8-byte header followed by a payload, sized to
 * whole u64 words as QEMU does, argsz covering the whole buffer.
 */
export function featureBuffer(flags: number, payloadSize: number): Uint8Array {
  const size = 8 + Math.ceil(payloadSize / 8) * 8;
  const buf = new Uint8Array(size);
  encodeInto(STRUCTS.vfio_device_feature, { argsz: size, flags }, buf);
  return buf;
}

/** vfio_device_bind_iommufd.flags (include/uapi/linux/vfio.h): TOKEN (Linux 6.17) makes token_uuid_ptr valid. */
export const DEVICE_BIND_FLAG = { TOKEN: 1 << 0 } as const;

export const REGION_CAP = { SPARSE_MMAP: 1, TYPE: 2, MSIX_MAPPABLE: 3 } as const;
export const REGION_TYPE_MIGRATION_DEPRECATED = 3;
export const REGION_SUBTYPE_MIGRATION_DEPRECATED = 1;

/**
 * Migration protocol v1 (Linux 5.8 to 5.17, `VFIO_DEVICE_STATE_V1_*` in today's header):
 * the bits of vfio_device_migration_info.device_state. Bits 3..31 are reserved.
 */
export const DEVICE_STATE_V1 = { STOP: 0, RUNNING: 1 << 0, SAVING: 1 << 1, RESUMING: 1 << 2, MASK: 0b111 } as const;
