// The JSON VM description QEMU appends to a migration stream (QEMU_VM_VMDESCRIPTION
// after QEMU_VM_EOF; migration/savevm.c, migration/vmstate.c vmstate_save_vmsd): for
// every non-iterable section (SECTION_FULL), in stream order, its fields with the bytes
// each one took, and its subsections. It is what lets a reader step over a device's
// vmstate without knowing the device: scripts/analyze-migration.py reads it the same
// way. An old-style section (save_state, no vmsd: VFIO's config section among them)
// has one "size" for its whole body.

import { O, type Sys } from "../../ffi/sys.ts";
import { StreamError } from "../errors.ts";
import { SECTION } from "./format.ts";

/** The most JSON this reader parses (QEMU's own for a large VM is a few hundred KiB). */
export const MAX_DESCRIPTION = 16 << 20;

export interface DescField {
  name?: string;
  type?: string;
  size?: number;
  array_len?: number;
  index?: number;
  struct?: DescVmsd;
}

export interface DescVmsd {
  vmsd_name?: string;
  version?: number;
  fields?: DescField[];
  subsections?: DescVmsd[];
}

export interface DescDevice extends DescVmsd {
  name: string;
  instance_id: number;
  /** Old-style sections: the whole body. */
  size?: number;
}

export interface VmDescription {
  page_size?: number;
  devices: DescDevice[];
  configuration?: DescVmsd;
}

/** Bytes the fields of a vmsd took (each field's size, times array_len for compressed arrays). */
function fieldBytes(fields: DescField[] | undefined): number {
  let n = 0;
  for (const f of fields ?? []) {
    const size = typeof f.size === "number" ? f.size : NaN;
    n += size * (typeof f.array_len === "number" ? f.array_len : 1);
  }
  return n;
}

/** A subsection in the stream: 0x05 | u8 n | name | be32 version | fields | its subsections. */
function subsectionBytes(s: DescVmsd): number {
  return 1 + 1 + (s.vmsd_name?.length ?? NaN) + 4 + fieldBytes(s.fields) + subsectionsBytes(s.subsections);
}

function subsectionsBytes(list: DescVmsd[] | undefined): number {
  let n = 0;
  for (const s of list ?? []) n += subsectionBytes(s);
  return n;
}

/**
 * The body size of a non-iterable section (what follows its header, before the footer),
 * from its description; NaN when the description lacks sizes.
 */
export function describedBodySize(d: DescDevice): number {
  if (typeof d.size === "number") return d.size;
  return fieldBytes(d.fields) + subsectionsBytes(d.subsections);
}

/** Checks the shape this reader relies on; throws a StreamError at `offset`. */
export function checkDescription(json: unknown, offset: number): VmDescription {
  const bad = (why: string) => new StreamError(`the VM description (JSON) is not QEMU's: ${why}`, offset);
  if (typeof json !== "object" || json === null) throw bad("not an object");
  const d = json as VmDescription;
  if (!Array.isArray(d.devices)) throw bad(`no "devices" list`);
  for (const dev of d.devices) {
    if (typeof dev !== "object" || dev === null || typeof dev.name !== "string") throw bad("a device without a name");
    if (!Number.isFinite(describedBodySize(dev))) throw bad(`device ${dev.name} has fields without sizes`);
  }
  return d;
}

/**
 * Finds and parses the description at the end of a seekable QEMU stream (the file
 * ends with 0x00 EOF | 0x06 | be32 n | n bytes of JSON): scans backwards for the one
 * 0x00 0x06 whose length reaches exactly to the end, reading 64 KiB at a time.
 * Null when there is none (a truncated file, or a VM with suppress-vmdesc).
 * Throws a StreamError for a description that is there but not valid JSON.
 */
export function readDescriptionAtEnd(
  sys: Sys,
  fd: number,
  size: number,
): { description: VmDescription; offset: number } | null {
  const WINDOW = 64 << 10;
  const limit = Math.max(0, size - MAX_DESCRIPTION - 6);
  const buf = new Uint8Array(WINDOW + 5);
  for (let end = size; end > limit;) {
    const start = Math.max(limit, end - WINDOW);
    const len = Math.min(size, end + 5) - start;
    const got = preadFull(sys, fd, buf.subarray(0, len), start);
    for (let i = Math.min(got, end - start) - 1; i >= 1; i--) {
      if (buf[i] !== SECTION.VMDESCRIPTION || buf[i - 1] !== SECTION.EOF || i + 5 > got) continue;
      const n = ((buf[i + 1] << 24) | (buf[i + 2] << 16) | (buf[i + 3] << 8) | buf[i + 4]) >>> 0;
      const at = start + i;
      if (at + 5 + n !== size || n === 0) continue;
      const json = new Uint8Array(n);
      if (preadFull(sys, fd, json, at + 5) !== n || json[0] !== 0x7b) continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
      } catch {
        throw new StreamError("the VM description at the end of the stream is not valid JSON", at + 5);
      }
      return { description: checkDescription(parsed, at + 5), offset: at };
    }
    end = start;
  }
  return null;
}

function preadFull(sys: Sys, fd: number, buf: Uint8Array, at: number): number {
  let off = 0;
  while (off < buf.length) {
    const n = sys.pread(fd, buf.subarray(off), at + off);
    if (n === 0) break;
    off += n;
  }
  return off;
}

/**
 * The VM description at the end of the regular file `path`; null for anything else
 * (a pipe, "-"), when there is none, or when it cannot be read (the walk then meets
 * whatever is wrong with it where it is).
 */
export function readFileDescription(sys: Sys, path: string): VmDescription | null {
  if (path === "-") return null;
  let fd: number;
  try {
    fd = sys.open(path, O.RDONLY | O.CLOEXEC);
  } catch {
    return null;
  }
  try {
    const st = sys.fstat(fd);
    if (!st.isRegular) return null;
    return readDescriptionAtEnd(sys, fd, st.size)?.description ?? null;
  } catch {
    return null;
  } finally {
    sys.close(fd);
  }
}
