// Example decoders of the device data inside a stream (the concatenated
// DEV_DATA_STATE payloads), fed piece by piece in stream order:
//   mtty   samples/vfio-mdev/mtty.c: u64 magic, u32 major, u32 minor, u32 nr_ports,
//          u32 flags, then 36 bytes per serial port (reference §3), host-endian
//   bulk   the simulator's model: a 32-byte header (magic "VFIMBULK", u32 version,
//          u32 flags, u64 state size) then records {u64 offset, u64 length, bytes}
// Anything else is reported as opaque. Memory is bounded whatever the input says.

import {
  BULK_HEADER_SIZE,
  BULK_MAGIC,
  BULK_PAGE,
  BULK_RECORD_HEADER,
  MTTY_HEADER_SIZE,
  MTTY_MAGIC,
  MTTY_PORT_SIZE,
} from "../sim/models.ts";

/** mtty.c MAX_MTTYS: ports over all instances. */
const MTTY_MAX_PORTS = 24;
const UART_REGS = ["RBR/THR", "IER", "IIR/FCR", "LCR", "MCR", "LSR", "MSR", "SCR"];

export interface MttyPort {
  index: number;
  /** uart_reg[8], named RBR/THR IER IIR/FCR LCR MCR LSR MSR SCR. */
  uartRegs: Record<string, number>;
  fifo: { head: number; tail: number; count: number; bytes: number[] };
  dlab: number;
  overrun: number;
  divisor: number;
  fcr: number;
  maxFifoSize: number;
  intrTriggerLevel: number;
}

export interface PayloadSummary {
  /** "mtty", "bulk" (vfio-mig simulator), "opaque" or "empty". */
  format: "mtty" | "bulk" | "opaque" | "empty";
  bytes: number;
  /** One line per fact, for the text report. */
  lines: string[];
  /** Where the data does not follow its format (the stream framing may still be fine). */
  problems: string[];
  mtty?: { magic: string; version: string; nrPorts: number; flags: number; ports: MttyPort[] };
  bulk?: {
    version: number;
    flags: number;
    stateSize: number;
    records: number;
    fullRecords: number;
    pageRecords: number;
    recordBytes: number;
  };
}

interface Decoder {
  feed(piece: Uint8Array): void;
  finish(total: number): PayloadSummary;
}

const hex = (n: number | bigint, w = 2) => `0x${n.toString(16).padStart(w, "0")}`;

class MttyDecoder implements Decoder {
  // Header and ports of the largest mtty device: nothing else is kept.
  readonly #buf = new Uint8Array(MTTY_HEADER_SIZE + MTTY_MAX_PORTS * MTTY_PORT_SIZE);
  #len = 0;

  feed(piece: Uint8Array): void {
    const take = Math.min(piece.length, this.#buf.length - this.#len);
    this.#buf.set(piece.subarray(0, take), this.#len);
    this.#len += take;
  }

  finish(total: number): PayloadSummary {
    const out: PayloadSummary = { format: "mtty", bytes: total, lines: [], problems: [] };
    if (this.#len < MTTY_HEADER_SIZE) {
      out.problems.push(`mtty data ends inside its ${MTTY_HEADER_SIZE}-byte header (${this.#len} bytes)`);
      return out;
    }
    const v = new DataView(this.#buf.buffer, 0, this.#len);
    const major = v.getUint32(8, true);
    const minor = v.getUint32(12, true);
    const nrPorts = v.getUint32(16, true);
    const flags = v.getUint32(20, true);
    out.lines.push(
      `mtty (samples/vfio-mdev/mtty.c): magic ${hex(v.getBigUint64(0, true), 16)}, version ${major}.${minor}, ` +
        `${nrPorts} port${nrPorts === 1 ? "" : "s"}, flags ${hex(flags)}`,
    );
    if (major !== 1 || minor !== 0) out.problems.push(`mtty version ${major}.${minor}: mtty.c accepts 1.0 only`);
    if (flags !== 0) out.problems.push(`mtty flags ${hex(flags)}: mtty.c requires 0`);
    if (nrPorts === 0 || nrPorts > MTTY_MAX_PORTS) {
      out.problems.push(`nr_ports ${nrPorts} is outside mtty's 1..${MTTY_MAX_PORTS}`);
      out.mtty = { magic: hex(MTTY_MAGIC, 16), version: `${major}.${minor}`, nrPorts, flags, ports: [] };
      return out;
    }
    const expected = MTTY_HEADER_SIZE + nrPorts * MTTY_PORT_SIZE;
    if (total !== expected) {
      out.problems.push(
        `${total} bytes of mtty data; ${nrPorts} port${nrPorts === 1 ? "" : "s"} make ${expected} ` +
          `(24-byte header + 36 per port): ${total < expected ? "short" : "trailing bytes"}`,
      );
    }
    const ports: MttyPort[] = [];
    for (let i = 0; i < nrPorts; i++) {
      const p = MTTY_HEADER_SIZE + i * MTTY_PORT_SIZE;
      if (p + MTTY_PORT_SIZE > this.#len) break;
      const b = this.#buf.subarray(p, p + MTTY_PORT_SIZE);
      const head = b[24], tail = b[25], count = b[26];
      const fifo: number[] = [];
      // mtty writes at head and reads at tail (CIRCULAR_BUF_INC_IDX): the bytes waiting start at tail.
      for (let k = 0; k < Math.min(count, 16); k++) fifo.push(b[8 + ((tail + k) % 16)]);
      const port: MttyPort = {
        index: i,
        uartRegs: Object.fromEntries(UART_REGS.map((n, k) => [n, b[k]])),
        fifo: { head, tail, count, bytes: fifo },
        dlab: b[27],
        overrun: b[28],
        divisor: b[30] | (b[31] << 8),
        fcr: b[32],
        maxFifoSize: b[33],
        intrTriggerLevel: b[34],
      };
      ports.push(port);
      const regs = UART_REGS.map((n, k) => `${n} ${hex(b[k])}`).join(" ");
      out.lines.push(`  port ${i}: ${regs}`);
      out.lines.push(
        `          fifo ${count} byte${count === 1 ? "" : "s"} (head ${head}, tail ${tail})` +
          `${fifo.length ? `: ${fifo.map((x) => x.toString(16).padStart(2, "0")).join(" ")}` : ""}; ` +
          `dlab ${port.dlab}, overrun ${port.overrun}, divisor ${port.divisor}, fcr ${hex(port.fcr)}, ` +
          `max fifo ${port.maxFifoSize}, trigger level ${port.intrTriggerLevel}`,
      );
      if (count > 16) out.problems.push(`port ${i}: fifo count ${count} exceeds the 16-byte fifo`);
    }
    out.mtty = { magic: hex(MTTY_MAGIC, 16), version: `${major}.${minor}`, nrPorts, flags, ports };
    return out;
  }
}

class BulkDecoder implements Decoder {
  readonly #head = new Uint8Array(BULK_HEADER_SIZE);
  #headLen = 0;
  readonly #rec = new Uint8Array(BULK_RECORD_HEADER);
  #recLen = 0;
  #dataLeft = 0;
  #stateSize = 0;
  #records = 0;
  #full = 0;
  #pages = 0;
  #recordBytes = 0;
  #broken: string | null = null;

  feed(piece: Uint8Array): void {
    let i = 0;
    while (i < piece.length && !this.#broken) {
      if (this.#headLen < BULK_HEADER_SIZE) {
        const take = Math.min(piece.length - i, BULK_HEADER_SIZE - this.#headLen);
        this.#head.set(piece.subarray(i, i + take), this.#headLen);
        this.#headLen += take;
        i += take;
        if (this.#headLen === BULK_HEADER_SIZE) {
          this.#stateSize = Number(new DataView(this.#head.buffer).getBigUint64(16, true));
        }
        continue;
      }
      if (this.#dataLeft > 0) {
        const take = Math.min(piece.length - i, this.#dataLeft);
        this.#dataLeft -= take;
        i += take;
        continue;
      }
      const take = Math.min(piece.length - i, BULK_RECORD_HEADER - this.#recLen);
      this.#rec.set(piece.subarray(i, i + take), this.#recLen);
      this.#recLen += take;
      i += take;
      if (this.#recLen < BULK_RECORD_HEADER) continue;
      this.#recLen = 0;
      const v = new DataView(this.#rec.buffer);
      const off = Number(v.getBigUint64(0, true));
      const len = Number(v.getBigUint64(8, true));
      this.#records++;
      if (len === 0 || off + len > this.#stateSize) {
        this.#broken = `record ${this.#records} {offset ${off}, length ${len}} is outside the ` +
          `${this.#stateSize}-byte state`;
        return;
      }
      if (off === 0 && len === this.#stateSize) this.#full++;
      else this.#pages++;
      this.#recordBytes += len;
      this.#dataLeft = len;
    }
  }

  finish(total: number): PayloadSummary {
    const out: PayloadSummary = { format: "bulk", bytes: total, lines: [], problems: [] };
    if (this.#headLen < BULK_HEADER_SIZE) {
      out.problems.push(`bulk data ends inside its ${BULK_HEADER_SIZE}-byte header`);
      return out;
    }
    const v = new DataView(this.#head.buffer);
    const version = v.getUint32(8, true);
    const flags = v.getUint32(12, true);
    out.bulk = {
      version,
      flags,
      stateSize: this.#stateSize,
      records: this.#records,
      fullRecords: this.#full,
      pageRecords: this.#pages,
      recordBytes: this.#recordBytes,
    };
    out.lines.push(
      `bulk (vfio-mig simulator): version ${version}, flags ${hex(flags)}, state ${this.#stateSize} bytes; ` +
        `${this.#records} record${this.#records === 1 ? "" : "s"}: ${this.#full} full state, ` +
        `${this.#pages} page update${this.#pages === 1 ? "" : "s"} (${BULK_PAGE}-byte pages), ` +
        `${this.#recordBytes} bytes of state data`,
    );
    if (version !== 1) out.problems.push(`bulk version ${version}: the simulator writes 1`);
    if (flags !== 0) out.problems.push(`bulk flags ${hex(flags)}: the simulator requires 0`);
    if (this.#broken) out.problems.push(this.#broken);
    else if (this.#dataLeft > 0 || this.#recLen > 0) out.problems.push("bulk data ends inside a record");
    if (!this.#broken && this.#stateSize > 0 && this.#full === 0) {
      out.problems.push("no record covers the whole state (the simulator refuses such a resume)");
    }
    return out;
  }
}

class OpaqueDecoder implements Decoder {
  constructor(readonly first: Uint8Array) {}
  feed(): void {}
  finish(total: number): PayloadSummary {
    const lead = [...this.first].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    return {
      format: total === 0 ? "empty" : "opaque",
      bytes: total,
      lines: total === 0 ? ["no device data"] : [`opaque driver data (no known magic; first bytes ${lead})`],
      problems: [],
    };
  }
}

/** Picks a decoder from the first 8 bytes of device data (the magics are little-endian u64s). */
export class PayloadInspector {
  readonly #lead = new Uint8Array(8);
  #leadLen = 0;
  #decoder: Decoder | null = null;
  #total = 0;

  feed(piece: Uint8Array): void {
    this.#total += piece.length;
    if (this.#decoder) {
      this.#decoder.feed(piece);
      return;
    }
    const take = Math.min(piece.length, 8 - this.#leadLen);
    this.#lead.set(piece.subarray(0, take), this.#leadLen);
    this.#leadLen += take;
    if (this.#leadLen < 8) return;
    this.#decoder = this.#choose();
    this.#decoder.feed(this.#lead);
    if (piece.length > take) this.#decoder.feed(piece.subarray(take));
  }

  #choose(): Decoder {
    const magic = new DataView(this.#lead.buffer).getBigUint64(0, true);
    if (magic === MTTY_MAGIC) return new MttyDecoder();
    if (magic === BULK_MAGIC) return new BulkDecoder();
    return new OpaqueDecoder(this.#lead.slice());
  }

  finish(): PayloadSummary {
    const d = this.#decoder ?? new OpaqueDecoder(this.#lead.slice(0, this.#leadLen));
    return d.finish(this.#total);
  }
}
