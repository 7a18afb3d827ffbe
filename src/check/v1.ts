// `vfio-mig check` on a device that migrates through the deprecated v1 region protocol
// (reference §1.9; QEMU 7.2 hw/vfio/migration.c): it has no VFIO_DEVICE_FEATURE_MIGRATION
// (ENOTTY), so the uAPI v2 checks (the state machine, data_fd, PRECOPY_INFO, MIG_DATA_SIZE)
// do not apply and are reported SKIP as v2-only, each saying why. What applies to v1 runs:
// the region's layout and device_state, VFIO_DEVICE_RESET back to _RUNNING, a round trip
// through the region (save stopped, load, save again: identical bytes), the PCI config
// region and its command register across a reset, and the final state.

import { SysError } from "../../ffi/errno.ts";
import type { VfioDevice } from "../device/open.ts";
import { type MigrationV1, V1, v1StateIsError, v1StateName, v1StateValid } from "../vfio/v1.ts";

const { RUNNING, SAVING, RESUMING, MASK } = V1;

/** The v2-only checks, and why each does not apply to a v1 device. */
export const V2_ONLY: Record<string, string> = {
  "migration-flags": "v1 has no VFIO_DEVICE_FEATURE_MIGRATION (ENOTTY): its flags are the v1 region's existence",
  "stop-copy-eos": "v1 has no data_fd: the data ends when pending_bytes reads 0",
  "read-size": "v1 has no data_fd: the driver stages each chunk itself (data_offset, data_size)",
  "data-size": "v1 has no MIG_DATA_SIZE (pending_bytes is its estimate)",
  "arc-states": "v1 has no FSM of arcs: device_state bits are written directly",
  "arc-data-fd": "v1 has no data_fd",
  "unsupported-targets": "v1 has no FSM of arcs (VFIO_DEVICE_STATE_VALID is checked by the tool before a write)",
  "precopy-info-states": "v1 has no VFIO_MIG_GET_PRECOPY_INFO",
  "precopy-initial-bytes": "v1 has no VFIO_MIG_GET_PRECOPY_INFO",
  "precopy-info-accuracy": "v1 has no VFIO_MIG_GET_PRECOPY_INFO",
  "reset-ends-session": "v1 has no data_fd to end (v1-region checks that a reset reads back _RUNNING)",
  "spontaneous-reset": "v1 has no data_fd to answer ENODEV",
  "reopen-session": "the reopen checks drive a STOP_COPY data_fd (not written for v1)",
  "reopen-state": "the reopen checks read MIG_DEVICE_STATE (not written for v1)",
};

/** What each v1-only check verifies, for --help and docs. */
export const V1_CHECKS: Record<string, string> = {
  "v1-region": "v1 only: the migration region (VFIO_REGION_TYPE_MIGRATION_DEPRECATED) is readable, device_state " +
    "valid, and VFIO_DEVICE_RESET reads back _RUNNING (001b)",
};

export class V1StepError extends Error {}

function errText(e: unknown): string {
  if (e instanceof SysError) return e.code;
  return e instanceof Error ? e.message : String(e);
}

/** The region's layout and device_state, and that VFIO_DEVICE_RESET reads back _RUNNING. Problems, or a PASS detail. */
export function v1RegionFacts(dev: VfioDevice, m: MigrationV1): { problems: string[]; detail: string } {
  const problems: string[] = [];
  let st: number | null = null;
  try {
    st = m.readState();
  } catch (e) {
    problems.push(`device_state cannot be read (${errText(e)})`);
  }
  if (st !== null && (!v1StateValid(st) || v1StateIsError(st))) {
    problems.push(`device_state reads ${v1StateName(st)}: not a valid state outside an error`);
  }
  try {
    dev.migration.reset();
    const after = m.readState();
    if ((after & MASK) !== RUNNING) problems.push(`after VFIO_DEVICE_RESET device_state reads ${v1StateName(after)}`);
  } catch (e) {
    problems.push(`VFIO_DEVICE_RESET or the read after it failed (${errText(e)})`);
  }
  const areas = m.region.sparse?.length ?? 0;
  return {
    problems,
    detail: `region ${m.region.index}, ${m.region.size} bytes, ${
      areas ? `${areas} mmap area${areas === 1 ? "" : "s"}` : "no mmap areas"
    }; device_state ${st === null ? "?" : v1StateName(st)}; a reset reads back running (001b)`,
  };
}

/** A stopped save through the region (SAVING, chunks while pending_bytes > 0, SAVING cleared). */
function v1Capture(m: MigrationV1, maxBytes: number): Uint8Array[] {
  m.setState(~(RUNNING | RESUMING), SAVING, "check: stop-and-copy");
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (let i = 0;; i++) {
    const st = m.readState();
    if ((st & MASK) !== SAVING) throw new V1StepError(`device_state left stop-and-copy: ${v1StateName(st)}`);
    if (m.pendingBytes() === 0) break;
    const at = m.dataOffset();
    const size = m.dataSize();
    m.checkBounds(at, size, "chunk");
    if (size === 0) {
      if (i > 1 << 20) throw new V1StepError("pending_bytes never reaches 0 while data_size is 0");
      continue;
    }
    total += size;
    if (total > maxBytes) throw new V1StepError(`the saved data exceeds ${maxBytes} bytes`);
    const buf = new Uint8Array(size);
    for (let off = 0; off < size;) {
      const n = m.sys.pread(m.fd, buf.subarray(off), m.region.offset + at + off);
      if (n === 0) throw new V1StepError(`the region ended inside a chunk (at ${at + off})`);
      off += n;
    }
    chunks.push(buf);
  }
  m.setState(~SAVING, 0, "check: stopped");
  return chunks;
}

/** Loads `chunks` through the region (RESUMING, each chunk in pieces the data section takes, RESUMING cleared). */
function v1Load(m: MigrationV1, chunks: Uint8Array[]): void {
  m.setState(~MASK, RESUMING, "check: resuming");
  for (const c of chunks) {
    for (let src = 0; src < c.length;) {
      const at = m.dataOffset();
      const room = m.region.size - at;
      m.checkBounds(at, 1, "data section");
      const size = Math.min(c.length - src, room);
      for (let off = 0; off < size;) {
        const n = m.sys.pwrite(m.fd, c.subarray(src + off, src + size), m.region.offset + at + off);
        if (n === 0) throw new V1StepError(`the region took no bytes (at ${at + off})`);
        off += n;
      }
      m.writeDataSize(size);
      src += size;
    }
  }
  m.setState(~MASK, 0, "check: stopped after resuming");
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/**
 * Save (stopped), load into the same device, save again: the two saves must be the same
 * bytes. Returns the problems (empty: PASS) and the size. The device ends running, or is
 * reset when a step failed.
 */
export function v1RoundTrip(m: MigrationV1, maxBytes: number): { problems: string[]; bytes: number } {
  try {
    const first = concat(v1Capture(m, maxBytes));
    v1Load(m, [first]);
    const second = concat(v1Capture(m, maxBytes));
    m.setState(~MASK, RUNNING, "check: running");
    if (first.length !== second.length) {
      return {
        problems: [`the second save gave ${second.length} bytes, the first ${first.length}`],
        bytes: first.length,
      };
    }
    const at = first.findIndex((b, i) => b !== second[i]);
    if (at >= 0) return { problems: [`the second save differs from the first at byte ${at}`], bytes: first.length };
    return { problems: [], bytes: first.length };
  } catch (e) {
    try {
      m.reset();
    } catch { /* reported below */ }
    return { problems: [`a step failed: ${errText(e)}`], bytes: 0 };
  }
}
