// QEMU's migration stream (savevm format version 3), as far as vfio-mig reads and
// writes it. Sources: QEMU migration/savevm.c (file header, section types, section
// header and footer, commands, the configuration section), migration/ram.c (RAM's
// own record format), hw/vfio/migration.c (the VFIO tags, QEMU 7.2's protocol v1 and
// 8.0+'s v2), migration/vmstate.c (subsections, the JSON VM description) and
// scripts/analyze-migration.py. All integers are big-endian.
//
//   be32 "QEVM" | be32 3
//   [ 0x07 configuration: be32 n | machine name[n] | subsections ]
//   sections and commands:
//     0x01 SECTION_START, 0x04 SECTION_FULL:
//        be32 section_id | u8 n | idstr[n] | be32 instance_id | be32 version_id | body
//     0x02 SECTION_PART, 0x03 SECTION_END: be32 section_id | body
//     every section ends with the footer 0x7e | be32 section_id (section footers on)
//     0x08 COMMAND: be16 command | be16 n | n bytes
//   0x00 EOF
//   [ 0x06 VMDESCRIPTION: be32 n | n bytes of JSON describing the non-iterable sections ]
//
// A VFIO device's sections (idstr "<qdev path>/vfio", version 1) are sequences of be64
// tags (src/stream/format.ts TAG, QEMU's values): DEV_DATA_STATE is followed by be64 size
// and the device's bytes; every body ends with END_OF_STATE. Its SECTION_FULL holds
// DEV_CONFIG_STATE, vfio_pci_save_config's vmstate (not length-framed), END_OF_STATE.

export const QEMU_VM_FILE_MAGIC = 0x5145564d; // "QEVM"
export const QEMU_VM_FILE_VERSION = 3;
/** The first bytes of every QEMU migration stream this reader takes. */
export const QEMU_MAGIC_BYTES = new Uint8Array([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]);

/** Section types (migration/savevm.h QEMU_VM_*). */
export const SECTION = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

export type SectionKind = "start" | "part" | "end" | "full";
export const SECTION_KIND: Record<number, SectionKind> = { 1: "start", 2: "part", 3: "end", 4: "full" };

/** Commands (migration/savevm.c enum qemu_vm_cmd), by number. */
export const COMMAND_NAMES: Record<number, string> = {
  0: "INVALID",
  1: "OPEN_RETURN_PATH",
  2: "PING",
  3: "POSTCOPY_ADVISE",
  4: "POSTCOPY_LISTEN",
  5: "POSTCOPY_RUN",
  6: "POSTCOPY_RAM_DISCARD",
  7: "POSTCOPY_RESUME",
  8: "PACKAGED",
  9: "RECV_BITMAP",
  10: "ENABLE_COLO",
  11: "SWITCHOVER_START",
};
export const CMD = { PACKAGED: 8, SWITCHOVER_START: 11 } as const;
/** Commands whose streams this reader does not frame (postcopy, a nested stream). */
export const UNSUPPORTED_COMMANDS = new Set([3, 4, 5, 6, 7, 8, 9]);

/**
 * RAM record flags (migration/ram.c RAM_SAVE_FLAG_*): the low bits of each record's
 * be64 address (below the target page size).
 */
export const RAM_FLAG = {
  /** Obsolete (QEMU < 1.x); refused. */
  FULL: 0x01,
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  /** RDMA's hook; refused. */
  HOOK: 0x80,
  /** QEMU <= 9.0 compression; be32 length then data. */
  COMPRESS_PAGE: 0x100,
  MULTIFD_FLUSH: 0x200,
} as const;

/** x86's page size: the default when the configuration has no target-page-bits. */
export const DEFAULT_PAGE_BITS = 12;

/** QEMU's VFIO section names: "<qdev id path>/vfio" or just "vfio". */
export function isVfioIdstr(idstr: string): boolean {
  return idstr === "vfio" || idstr.endsWith("/vfio");
}

/** The VFIO tag DEV_CONFIG_LOAD_READY (QEMU 10 multifd; no payload). */
export const DEV_CONFIG_LOAD_READY = 0xffffffffef100006n;
