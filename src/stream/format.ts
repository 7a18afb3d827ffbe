// The vfio-mig stream format, versions 1 and 2 (docs/stream-format.md). Big-endian framing.
//
//   header   "VFIOMIG\0" | be16 version | be16 0 | be32 n | n bytes of JSON | be32 crc32
//   records  be64 tag [payload]:
//     END_OF_STATE, DEV_SETUP_STATE, DEV_INIT_DATA_SENT, SWITCHOVER   no payload
//     DEV_DATA_STATE, DEV_CONFIG_STATE     be64 size | be32 crc32(data) | data
//     STREAM_END                           be64 data bytes | be64 chunks | be32 crc32 of
//                                          all data | be32 crc32 of these 20 bytes
//     DEVICE + i                           no payload; multi-device streams only: the
//                                          following records are device i's
// Version 2 is a signed stream (src/stream/mac.ts): version 1's bytes, with the header's
// JSON naming the MAC and key (`mac`), and a 32-byte HMAC-SHA256 after the header and
// after every record, the trailer included. Unsigned streams are version 1.
// QEMU's VFIO tags (hw/vfio/migration.c) keep their values; vfio-mig's own tags use
// the 0xEF11 magic so they never collide with QEMU's 0xEF10 ones.

export const STREAM_MAGIC = new Uint8Array([0x56, 0x46, 0x49, 0x4f, 0x4d, 0x49, 0x47, 0x00]); // VFIOMIG\0
/** The version of an unsigned stream. */
export const FORMAT_VERSION = 1;
/** The version of a signed stream: version 1 with a MAC after the header and each record (src/stream/mac.ts). */
export const FORMAT_VERSION_SIGNED = 2;
export const HEADER_FIXED = 16; // magic + version + reserved + length
export const MAX_HEADER_JSON = 64 * 1024;
/** Largest data chunk a reader accepts: bounds the memory a stream can make us use. */
export const MAX_CHUNK = 64 * 1024 * 1024;
export const DEFAULT_CHUNK = 1024 * 1024;

export const TAG = {
  END_OF_STATE: 0xffffffffef100001n,
  DEV_CONFIG_STATE: 0xffffffffef100002n,
  DEV_SETUP_STATE: 0xffffffffef100003n,
  DEV_DATA_STATE: 0xffffffffef100004n,
  DEV_INIT_DATA_SENT: 0xffffffffef100005n,
  /** vfio-mig: the source left RUNNING here; what follows is stop-copy data. */
  SWITCHOVER: 0xffffffffef110001n,
  /** vfio-mig: the trailer; nothing may follow it. */
  STREAM_END: 0xffffffffef1100ffn,
  /**
   * vfio-mig, multi-device streams only: the following records belong to device i
   * (header `devices[i]`). The tag is DEVICE + i, for i below MAX_DEVICES
   * (0xFFFFFFFFEF111000 to 0xFFFFFFFFEF1110FF); no payload.
   */
  DEVICE: 0xffffffffef111000n,
} as const;

/** Most devices one stream can carry (the DEVICE tag's range). */
export const MAX_DEVICES = 256;

export type TagName = keyof typeof TAG;
const TAG_NAMES = new Map<bigint, TagName>(Object.entries(TAG).map(([k, v]) => [v, k as TagName]));
export function tagName(t: bigint): TagName | undefined {
  return TAG_NAMES.get(t) ?? (deviceIndex(t) === null ? undefined : "DEVICE");
}

/** The device a DEVICE tag selects, or null when `t` is not one. */
export function deviceIndex(t: bigint): number | null {
  const i = t - TAG.DEVICE;
  return i >= 0n && i < BigInt(MAX_DEVICES) ? Number(i) : null;
}

/** The DEVICE tag that selects device i. */
export function deviceTag(i: number): bigint {
  if (!Number.isInteger(i) || i < 0 || i >= MAX_DEVICES) throw new Error(`device index ${i} out of range`);
  return TAG.DEVICE + BigInt(i);
}

/** Tags followed by be64 size | be32 crc | data. */
export const SIZED_TAGS = new Set<bigint>([TAG.DEV_DATA_STATE, TAG.DEV_CONFIG_STATE]);
export const CHUNK_HEADER = 8 + 8 + 4;
export const TRAILER_SIZE = 8 + 8 + 8 + 4 + 4;

export interface StreamIdentity {
  /** pci, mdev or sim. */
  kind: string;
  driver: string | null;
  mdevType: string | null;
  vendor: number | null;
  device: number | null;
  subsystemVendor: number | null;
  subsystemDevice: number | null;
  /** Simulated model, for sim devices. */
  model?: string;
}

export interface StreamHeader {
  format: "vfio-mig";
  version: number;
  tool: string;
  protocol: "v2" | "v1";
  created: string;
  source: string;
  device: StreamIdentity;
  migrationFlags: number;
  /** MIG_DATA_SIZE at save time, or null. */
  sizeEstimate: number | null;
  /** "offline" (STOP_COPY only) or "live" (pre-copy first). */
  mode: "offline" | "live";
  /** Protocol v1 streams: the source's migration region (informative; loads do not need it). */
  v1?: { regionIndex: number; regionSize: number; mmapAreas: { offset: number; size: number }[] | null };
  /**
   * Where the data comes from (informative): the source's kernel release and driver
   * module version/srcversion. A load warns when the destination's differ.
   */
  origin?: StreamOrigin;
  /**
   * Multi-device streams only (absent with one device): every device, in DEVICE tag
   * order. The fields above then repeat devices[0]'s.
   */
  devices?: StreamDeviceEntry[];
  /** Signed streams (version 2) only: the MAC and the key's id (src/stream/mac.ts). */
  mac?: { algorithm: "hmac-sha256"; keyId: string; nonce: string };
}

/** One device of a multi-device stream (header `devices`). */
export interface StreamDeviceEntry {
  /** The --device the state came from. */
  source: string;
  device: StreamIdentity;
  protocol: "v2" | "v1";
  migrationFlags: number;
  sizeEstimate: number | null;
  /** Protocol v1 devices: as the header's `v1`. */
  v1?: StreamHeader["v1"];
  /** As the header's `origin`, for this device. */
  origin?: StreamOrigin;
}

/** The header's `origin` (src/device/origin.ts); each field may be null (unknown). */
export interface StreamOrigin {
  kernel: string | null;
  driverModule: string | null;
  driverVersion: string | null;
  driverSrcversion: string | null;
}

type Crc32 = (data: Uint8Array, prev: number) => number;
/** zlib's crc32 (node:zlib), once loaded: ~45 GiB/s here, against ~0.5 for the table below. */
let zlibCrc32: Crc32 | null = null;
let zlibLoading = false;
let crcTable: Uint32Array | null = null;

/** CRC-32 (IEEE 802.3, reflected 0xEDB88320; zlib's crc32) with a table, byte by byte. */
export function tableCrc32(data: Uint8Array, prev: number): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = ~prev;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/**
 * The CRC-32 of `data` (zlib's: IEEE 802.3, as `crc32` in zlib and gzip), continuing from
 * `prev`; an unsigned 32-bit number. node:zlib is loaded on the first call, not at start:
 * it costs ~5 MiB of resident memory and ~50 ms, which `--help` and a listener waiting for
 * its peer (issue 28's flood bound) need not pay; until it has loaded (a few event-loop turns,
 * the header and the first records) a table computes the same value.
 */
export function crc32(data: Uint8Array, prev = 0): number {
  if (zlibCrc32) return zlibCrc32(data, prev) >>> 0;
  if (!zlibLoading) {
    zlibLoading = true;
    import("node:zlib").then((z) => zlibCrc32 = (d, p) => z.default.crc32(d, p));
  }
  return tableCrc32(data, prev);
}

const enc = new TextEncoder();

/** The header's bytes; `version` FORMAT_VERSION_SIGNED for a signed stream (whose `h.mac` is set). */
export function encodeHeader(h: StreamHeader, version = FORMAT_VERSION): Uint8Array {
  const json = enc.encode(JSON.stringify(h));
  if (json.length > MAX_HEADER_JSON) throw new Error("stream header too large");
  const out = new Uint8Array(HEADER_FIXED + json.length + 4);
  const v = new DataView(out.buffer);
  out.set(STREAM_MAGIC, 0);
  v.setUint16(8, version);
  v.setUint16(10, 0);
  v.setUint32(12, json.length);
  out.set(json, HEADER_FIXED);
  v.setUint32(HEADER_FIXED + json.length, crc32(out.subarray(0, HEADER_FIXED + json.length)));
  return out;
}

export interface Trailer {
  dataBytes: number;
  chunks: number;
  dataCrc: number;
}

export function encodeTrailer(t: Trailer): Uint8Array {
  const out = new Uint8Array(TRAILER_SIZE);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, TAG.STREAM_END);
  v.setBigUint64(8, BigInt(t.dataBytes));
  v.setBigUint64(16, BigInt(t.chunks));
  v.setUint32(24, t.dataCrc);
  v.setUint32(28, crc32(out.subarray(8, 28)));
  return out;
}

/** Identity fields that must match between a stream and a destination device. */
export function identityMismatch(stream: StreamIdentity, dest: StreamIdentity): string | null {
  // A damaged header may hold anything here (a missing field, a string): say what it is.
  const hex = (n: unknown) =>
    typeof n === "number" ? `0x${n.toString(16).padStart(4, "0")}` : n === null ? "?" : JSON.stringify(n) ?? "none";
  if (stream.vendor !== dest.vendor || stream.device !== dest.device) {
    // No ids on one side: a PCI device whose config region could not be read (a driver defect).
    const why = stream.vendor === null && dest.vendor !== null
      ? " (the stream carries no PCI ids: its source's config region could not be read when it was saved)"
      : dest.vendor === null && stream.vendor !== null
      ? " (the destination's PCI ids are unknown: its config region cannot be read; 'vfio-mig info' says why)"
      : "";
    return `the stream is from a ${hex(stream.vendor)}:${hex(stream.device)} device, the destination is ` +
      `${hex(dest.vendor)}:${hex(dest.device)}${why}`;
  }
  if (stream.subsystemVendor !== dest.subsystemVendor || stream.subsystemDevice !== dest.subsystemDevice) {
    return `subsystem ids differ: stream ${hex(stream.subsystemVendor)}:${hex(stream.subsystemDevice)}, ` +
      `destination ${hex(dest.subsystemVendor)}:${hex(dest.subsystemDevice)}`;
  }
  if ((stream.mdevType ?? null) !== (dest.mdevType ?? null)) {
    return `the stream is from mdev type ${stream.mdevType ?? "none"}, the destination is ${dest.mdevType ?? "none"}`;
  }
  if (stream.driver !== dest.driver) {
    return `the stream was saved by driver ${stream.driver ?? "?"}, the destination uses ${dest.driver ?? "?"}`;
  }
  if ((stream.model ?? null) !== (dest.model ?? null)) {
    return `the stream is from a ${stream.model ?? "real"} device, the destination is ${dest.model ?? "real"}`;
  }
  return null;
}
