// Which stream a source holds, told by its first bytes, without losing them: the
// returned source replays what was read (a pipe cannot be rewound).
//   "VFIOMIG\0"      a vfio-mig stream (src/stream/format.ts)
//   "QEVM" be32 3    a QEMU migration stream (src/qemu/format.ts)

import { STREAM_MAGIC } from "../stream/format.ts";
import type { Source, StreamSource } from "../transport/transport.ts";
import { QEMU_MAGIC_BYTES } from "./format.ts";

export type StreamKind = "vfio-mig" | "qemu" | "unknown";

export function kindOf(lead: Uint8Array): StreamKind {
  const starts = (m: Uint8Array) => lead.length >= m.length && m.every((b, i) => lead[i] === b);
  if (starts(STREAM_MAGIC)) return "vfio-mig";
  if (starts(QEMU_MAGIC_BYTES.subarray(0, 4))) return "qemu";
  return "unknown";
}

/** A source whose first bytes were already read: they come first. */
class Replay implements Source {
  #lead: Uint8Array;
  constructor(readonly inner: Source, lead: Uint8Array) {
    this.#lead = lead;
  }
  get label(): string {
    return this.inner.label;
  }
  read(buf: Uint8Array): number {
    if (this.#lead.length) {
      const n = Math.min(buf.length, this.#lead.length);
      buf.set(this.#lead.subarray(0, n));
      this.#lead = this.#lead.subarray(n);
      return n;
    }
    return this.inner.read(buf);
  }
  close(): void {
    this.inner.close();
  }
}

/** Reads up to 8 bytes of `src`; its kind, and a source that still yields every byte. */
export function sniff(src: Source): { kind: StreamKind; source: Source } {
  const lead = new Uint8Array(8);
  let n = 0;
  while (n < lead.length) {
    const got = src.read(lead.subarray(n));
    if (got === 0) break;
    n += got;
  }
  return { kind: kindOf(lead.subarray(0, n)), source: new Replay(src, lead.slice(0, n)) };
}

/** The same for an asynchronous source (network). */
export async function sniffAsync(src: StreamSource): Promise<{ kind: StreamKind; source: StreamSource }> {
  const lead = new Uint8Array(8);
  let n = 0;
  while (n < lead.length) {
    const got = await src.read(lead.subarray(n));
    if (got === 0) break;
    n += got;
  }
  let rest = lead.slice(0, n);
  const source: StreamSource = {
    label: src.label,
    read(buf) {
      if (rest.length) {
        const k = Math.min(buf.length, rest.length);
        buf.set(rest.subarray(0, k));
        rest = rest.subarray(k);
        return k;
      }
      return src.read(buf);
    },
    close: () => src.close(),
    notify: src.notify?.bind(src),
    interrupt: src.interrupt?.bind(src),
  };
  return { kind: kindOf(lead.subarray(0, n)), source };
}
