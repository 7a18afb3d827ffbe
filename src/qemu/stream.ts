// A reader of QEMU migration streams (savevm format 3; src/qemu/format.ts), one item at
// a time, in constant memory: RAM pages and device data are streamed through, never
// buffered by their length. It frames every section exactly:
//   - RAM ("ram") by its own record format, up to RAM_SAVE_FLAG_EOS (migration/ram.c);
//   - VFIO devices ("…/vfio") by their tags, up to END_OF_STATE (hw/vfio/migration.c);
//   - any other non-iterable section (SECTION_FULL: a device's vmstate) by the size the
//     JSON VM description gives it. The description sits at the end of the stream:
//     a caller with a seekable file reads it first (description.ts) and passes it in.
//     Without it (a pipe) such a section is delimited by searching for its footer
//     (0x7e + its section id) followed by a well-formed next section, and trailer()
//     then checks every size found that way against the description.
// Other iterable sections (block migration, dirty bitmaps) and postcopy commands are
// refused with a StreamError, as are capabilities that change RAM's format (mapped-ram).
//
// Use: header(); then next() until "eof"; then trailer(). After a "section" item the
// caller may walk a VFIO section's records with vfioRecord() / vfioData() /
// vfioConfigPayload(), or finishBody() to step over (and measure) the body; next()
// finishes whatever body is still open.

import { StreamError } from "../errors.ts";
import { TAG, tagName } from "../stream/format.ts";
import { type ByteSource, QemuBytes } from "./bytes.ts";
import {
  checkDescription,
  type DescDevice,
  describedBodySize,
  MAX_DESCRIPTION,
  type VmDescription,
} from "./description.ts";
import {
  COMMAND_NAMES,
  DEFAULT_PAGE_BITS,
  DEV_CONFIG_LOAD_READY,
  isVfioIdstr,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RAM_FLAG,
  SECTION,
  SECTION_KIND,
  type SectionKind,
  UNSUPPORTED_COMMANDS,
} from "./format.ts";
import { findPayloadLength } from "./vfio_config.ts";

export interface QemuFileHeader {
  version: number;
  /** The configuration section's machine type (e.g. "pc-q35-10.0"); null without one. */
  machine: string | null;
  /** Target page bits (configuration/target-page-bits, else x86's 12). */
  pageBits: number;
  /** configuration/capabilities: the capabilities the destination must also have. */
  capabilities: string[];
  /** configuration/uuid, when validate-uuid is on. */
  uuid: string | null;
  /** Bytes of the header and configuration section. */
  bytes: number;
}

export interface QemuSection {
  kind: SectionKind;
  /** Offset of the section type byte. */
  offset: number;
  sectionId: number;
  idstr: string;
  instanceId: number;
  version: number;
  vfio: boolean;
  ram: boolean;
  bodyOffset: number;
}

export interface RamStats {
  /** RAM_SAVE_FLAG_PAGE records (whole pages). */
  pages: number;
  zeroPages: number;
  xbzrlePages: number;
  compressedPages: number;
  /** Bytes of page data (PAGE, XBZRLE, COMPRESS_PAGE payloads). */
  pageBytes: number;
  multifdFlushes: number;
  /** MEM_SIZE (the setup section): the RAM blocks and their total length. */
  totalBytes?: number;
  blocks?: { name: string; length: number }[];
}

export interface BodyInfo {
  section: QemuSection;
  /** Body bytes (after the header, before the footer). */
  bytes: number;
  /** How the body's end was found. */
  framing: "ram" | "vfio" | "description" | "footer scan";
  ram?: RamStats;
  footer: boolean;
}

export type QemuItem =
  | { kind: "section"; section: QemuSection }
  | { kind: "command"; offset: number; command: number; name: string; length: number }
  | { kind: "eof"; offset: number };

export interface VfioRecord {
  offset: number;
  tag: bigint;
  /** END_OF_STATE, DEV_CONFIG_STATE, DEV_SETUP_STATE, DEV_DATA_STATE, DEV_INIT_DATA_SENT, DEV_CONFIG_LOAD_READY. */
  name: string;
  /** DEV_DATA_STATE: data bytes; DEV_CONFIG_STATE: payload bytes. */
  size?: number;
}

/** A SECTION_FULL as read: trailer() checks the sizes not taken from the description against it. */
interface FullSection {
  idstr: string;
  instanceId: number;
  offset: number;
  bytes: number;
  framing: BodyInfo["framing"];
}

const VFIO_TAG_NAMES = new Map<bigint, string>([
  [TAG.END_OF_STATE, "END_OF_STATE"],
  [TAG.DEV_CONFIG_STATE, "DEV_CONFIG_STATE"],
  [TAG.DEV_SETUP_STATE, "DEV_SETUP_STATE"],
  [TAG.DEV_DATA_STATE, "DEV_DATA_STATE"],
  [TAG.DEV_INIT_DATA_SENT, "DEV_INIT_DATA_SENT"],
  [DEV_CONFIG_LOAD_READY, "DEV_CONFIG_LOAD_READY"],
]);

/** The most a config payload can take: a 4096-byte config space and a 2048-entry MSI-X table. */
const MAX_CONFIG_PAYLOAD = 4 + 4096 + 16 + 2048 * 16 + 256 + 4096;
/** Bytes the footer scan looks at after a candidate footer to accept it. */
const SCAN_LOOKAHEAD = 1 + 4 + 1 + 255 + 8;
const SCAN_WINDOW = 64 << 10;

interface OpenBody {
  section: QemuSection;
  done: boolean;
  /** VFIO: data bytes of the current DEV_DATA_STATE not yet consumed. */
  pendingData: number;
  /** VFIO: the current DEV_CONFIG_STATE's payload, not yet consumed. */
  pendingConfig: number;
  footer?: boolean;
}

export class QemuStreamParser {
  readonly bytes: QemuBytes;
  #description: VmDescription | null;
  #descIndex = 0;
  #header: QemuFileHeader | null = null;
  #pageBits = DEFAULT_PAGE_BITS;
  #ignoreShared = false;
  /** Sections by id, as their SECTION_START / SECTION_FULL introduced them. */
  readonly sections = new Map<number, QemuSection>();
  #body: OpenBody | null = null;
  #footers: boolean | null = null;
  #eof = false;
  /** RAM: the block of the last page record (for RAM_SAVE_FLAG_CONTINUE). */
  #ramBlock: string | null = null;
  readonly fulls: FullSection[] = [];

  constructor(src: ByteSource, opts: { description?: VmDescription | null } = {}) {
    this.bytes = new QemuBytes(src);
    this.#description = opts.description ?? null;
  }

  get offset(): number {
    return this.bytes.offset;
  }

  /** The description given to the constructor (or found by trailer()). */
  get description(): VmDescription | null {
    return this.#description;
  }

  /** The open section whose body is being read, if any. */
  get current(): QemuSection | null {
    return this.#body && !this.#body.done ? this.#body.section : null;
  }

  // -------------------------------------------------------------------------
  // File header and configuration section (savevm.c qemu_savevm_state_header).

  async header(): Promise<QemuFileHeader> {
    const b = this.bytes;
    const head = await b.peekSome(8);
    const magic = head.length >= 4 ? new DataView(head.buffer, head.byteOffset, 4).getUint32(0) : -1;
    if (magic !== QEMU_VM_FILE_MAGIC) {
      throw new StreamError(
        head.length < 4
          ? `not a QEMU migration stream: ${head.length} bytes`
          : 'not a QEMU migration stream (no "QEVM" magic)',
        0,
      );
    }
    await b.take(4, "the file magic");
    const version = await b.be32("the file version");
    if (version !== QEMU_VM_FILE_VERSION) {
      throw new StreamError(
        `QEMU migration stream version ${version} is not supported (this vfio-mig reads ${QEMU_VM_FILE_VERSION})`,
        4,
      );
    }
    const h: QemuFileHeader = {
      version,
      machine: null,
      pageBits: DEFAULT_PAGE_BITS,
      capabilities: [],
      uuid: null,
      bytes: 8,
    };
    const next = await b.peek(1);
    if (next && next[0] === SECTION.CONFIGURATION) await this.#configuration(h);
    h.bytes = b.offset;
    this.#pageBits = h.pageBits;
    if (h.capabilities.includes("mapped-ram")) {
      throw new StreamError("the stream uses the mapped-ram capability (RAM at fixed file offsets): not supported", 8);
    }
    this.#ignoreShared = h.capabilities.includes("x-ignore-shared");
    this.#header = h;
    return h;
  }

  /** vmstate "configuration": be32 n | name[n] | subsections. */
  async #configuration(h: QemuFileHeader): Promise<void> {
    const b = this.bytes;
    const at = b.offset;
    await b.u8("the configuration section");
    const n = await b.be32("the machine name length");
    if (n > 256) throw new StreamError(`machine name of ${n} bytes in the configuration section`, at + 1);
    h.machine = String.fromCharCode(...await b.take(n, "the machine name"));
    for (;;) {
      const p = await b.peek(1);
      if (!p || p[0] !== SECTION.SUBSECTION) break;
      const subAt = b.offset;
      await b.u8("a subsection");
      const name = await b.shortString("a subsection name");
      await b.be32(`the version of ${name}`);
      switch (name) {
        case "configuration/target-page-bits": {
          h.pageBits = await b.be32("target-page-bits");
          if (h.pageBits < 9 || h.pageBits > 20) {
            throw new StreamError(`target-page-bits ${h.pageBits} is not a page size`, subAt);
          }
          break;
        }
        case "configuration/capabilities": {
          const count = await b.be32("the capability count");
          if (count > 256) throw new StreamError(`${count} capabilities in the configuration section`, subAt);
          for (let i = 0; i < count; i++) h.capabilities.push(await b.shortString("a capability name"));
          break;
        }
        case "configuration/uuid": {
          const u = await b.take(16, "the VM UUID");
          const x = [...u].map((v) => v.toString(16).padStart(2, "0")).join("");
          h.uuid = `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
          break;
        }
        default:
          throw new StreamError(`unknown subsection ${name} of the configuration section: cannot frame it`, subAt);
      }
    }
  }

  // -------------------------------------------------------------------------
  // Sections and commands.

  async next(): Promise<QemuItem> {
    if (!this.#header) throw new Error("QemuStreamParser: header() first");
    if (this.#body) await this.finishBody();
    if (this.#eof) throw new StreamError("read past QEMU_VM_EOF", this.offset);
    const b = this.bytes;
    const offset = b.offset;
    const peek = await b.peek(1);
    if (!peek) {
      throw new StreamError(
        "truncated: the stream ends without QEMU_VM_EOF (expected a section, a command or EOF)",
        offset,
      );
    }
    const type = peek[0];
    switch (type) {
      case SECTION.EOF:
        await b.u8("EOF");
        this.#eof = true;
        return { kind: "eof", offset };
      case SECTION.START:
      case SECTION.FULL:
      case SECTION.PART:
      case SECTION.END:
        return { kind: "section", section: await this.#sectionHeader(type, offset) };
      case SECTION.COMMAND: {
        await b.u8("a command");
        const command = await b.be16("the command number");
        const length = await b.be16("the command length");
        const name = COMMAND_NAMES[command] ?? `command ${command}`;
        if (UNSUPPORTED_COMMANDS.has(command)) {
          throw new StreamError(
            `QEMU command ${name}: postcopy and packaged streams are not supported (only precopy streams)`,
            offset,
          );
        }
        if (!(command in COMMAND_NAMES) || command === 0) {
          throw new StreamError(`unknown QEMU command ${command} (corrupted stream?)`, offset);
        }
        await b.stream(length, `the ${name} command`, null, offset);
        return { kind: "command", offset, command, name, length };
      }
      default:
        throw new StreamError(
          `unknown section type 0x${type.toString(16).padStart(2, "0")} (expected a section, a command or EOF)`,
          offset,
        );
    }
  }

  async #sectionHeader(type: number, offset: number): Promise<QemuSection> {
    const b = this.bytes;
    const kind = SECTION_KIND[type];
    await b.u8("a section type");
    const sectionId = await b.be32("a section id");
    let s: QemuSection;
    if (kind === "start" || kind === "full") {
      const idstr = await b.shortString("a section idstr");
      const instanceId = await b.be32(`the instance id of ${idstr}`);
      const version = await b.be32(`the version of ${idstr}`);
      s = {
        kind,
        offset,
        sectionId,
        idstr,
        instanceId,
        version,
        vfio: isVfioIdstr(idstr),
        ram: idstr === "ram",
        bodyOffset: b.offset,
      };
      if (kind === "start") {
        if (this.sections.get(sectionId)?.kind === "start") {
          throw new StreamError(`a second SECTION_START for section ${sectionId} (${idstr})`, offset);
        }
        this.sections.set(sectionId, s);
      }
      if (kind === "start" && !s.ram && !s.vfio) {
        throw new StreamError(`iterable section ${idstr} is not supported (only RAM and VFIO devices)`, offset);
      }
    } else {
      const start = this.sections.get(sectionId);
      if (!start || start.kind !== "start") {
        throw new StreamError(
          `SECTION_${kind.toUpperCase()} of section ${sectionId}, which no SECTION_START opened`,
          offset,
        );
      }
      s = { ...start, kind, offset, bodyOffset: b.offset };
    }
    this.#body = { section: s, done: false, pendingData: 0, pendingConfig: 0 };
    return s;
  }

  /**
   * Steps over what is left of the open section's body and reads its footer; returns
   * how the body was framed and, for RAM, what it held.
   */
  async finishBody(): Promise<BodyInfo> {
    const body = this.#body;
    if (!body) throw new Error("QemuStreamParser: no section is open");
    const s = body.section;
    let framing: BodyInfo["framing"];
    let ram: RamStats | undefined;
    if (s.vfio) {
      framing = "vfio";
      while (!body.done) await this.vfioRecord();
    } else if (s.ram) {
      framing = "ram";
      ram = await this.#ramBody(s);
    } else {
      framing = await this.#fullBody(s);
    }
    body.done = true;
    const bytes = this.offset - s.bodyOffset;
    if (s.kind === "full") {
      this.fulls.push({ idstr: s.idstr, instanceId: s.instanceId, offset: s.offset, bytes, framing });
    }
    const footer = await this.#footer(s);
    this.#body = null;
    return { section: s, bytes, framing, ram, footer };
  }

  /** 0x7e | be32 section_id after every section, when the source sends footers (all or none). */
  async #footer(s: QemuSection): Promise<boolean> {
    const b = this.bytes;
    const p = await b.peek(1);
    const has = p !== null && p[0] === SECTION.FOOTER;
    if (this.#footers === null) this.#footers = has;
    const at = b.offset;
    if (has !== this.#footers) {
      throw new StreamError(
        has
          ? `a section footer after ${s.idstr}, where earlier sections had none`
          : `${s.idstr}: missing section footer (expected 0x7e and section id ${s.sectionId})`,
        at,
      );
    }
    if (!has) return false;
    await b.u8("a section footer");
    const id = await b.be32("the section footer's id");
    if (id !== s.sectionId) {
      throw new StreamError(
        `section footer of ${s.idstr} says section ${id}, expected ${s.sectionId} (the body's length is wrong, or the stream is corrupted)`,
        at,
      );
    }
    return true;
  }

  // -------------------------------------------------------------------------
  // RAM (migration/ram.c ram_load_precopy, ram_save_setup).

  async #ramBody(s: QemuSection): Promise<RamStats> {
    const b = this.bytes;
    const pageSize = 2 ** this.#pageBits;
    const mask = BigInt(pageSize - 1);
    const st: RamStats = {
      pages: 0,
      zeroPages: 0,
      xbzrlePages: 0,
      compressedPages: 0,
      pageBytes: 0,
      multifdFlushes: 0,
    };
    const lowMask = pageSize - 1;
    for (;;) {
      // Fast path, no await: a page or zero page of the current block (CONTINUE), whole
      // in the buffer. That is nearly every record of a large RAM section.
      if (this.#ramBlock !== null) {
        const v = b.buffered();
        let i = 0;
        while (i + 9 <= v.length) {
          const flags = ((v[i + 4] << 24) | (v[i + 5] << 16) | (v[i + 6] << 8) | v[i + 7]) & lowMask;
          if (flags === (RAM_FLAG.PAGE | RAM_FLAG.CONTINUE) && i + 8 + pageSize <= v.length) {
            i += 8 + pageSize;
            st.pages++;
            st.pageBytes += pageSize;
          } else if (flags === (RAM_FLAG.ZERO | RAM_FLAG.CONTINUE)) {
            i += 9;
            st.zeroPages++;
          } else break;
        }
        if (i > 0) {
          b.consumeBuffered(i);
          continue;
        }
      }
      const at = b.offset;
      const v = await b.be64(`a RAM record of ${s.idstr}`);
      const flags = Number(v & mask);
      const addr = v & ~mask;
      const main = flags & ~RAM_FLAG.CONTINUE;
      if (main & (RAM_FLAG.ZERO | RAM_FLAG.PAGE | RAM_FLAG.XBZRLE | RAM_FLAG.COMPRESS_PAGE)) {
        if (flags & RAM_FLAG.CONTINUE) {
          if (this.#ramBlock === null) throw new StreamError("a RAM page continues a block none named", at);
        } else {
          this.#ramBlock = await b.shortString("a RAM block name");
        }
      }
      switch (main) {
        case RAM_FLAG.MEM_SIZE: {
          if (addr > BigInt(Number.MAX_SAFE_INTEGER)) throw new StreamError(`RAM size 0x${addr.toString(16)}`, at);
          let left = Number(addr);
          st.totalBytes = left;
          st.blocks = [];
          while (left > 0) {
            const name = await b.shortString("a RAM block name");
            const len = Number(await b.be64(`the length of RAM block ${name}`));
            if (this.#ignoreShared) await b.be64(`the address of RAM block ${name}`);
            if (len > left || len <= 0) {
              throw new StreamError(
                `RAM block ${name} of ${len} bytes does not fit the ${st.totalBytes}-byte total`,
                at,
              );
            }
            st.blocks.push({ name, length: len });
            left -= len;
            if (st.blocks.length > 4096) throw new StreamError("more than 4096 RAM blocks", at);
          }
          break;
        }
        case RAM_FLAG.ZERO:
          await b.u8("a zero page's fill byte");
          st.zeroPages++;
          break;
        case RAM_FLAG.PAGE:
          await b.stream(pageSize, "a RAM page", null, at);
          st.pages++;
          st.pageBytes += pageSize;
          break;
        case RAM_FLAG.XBZRLE: {
          const enc = await b.u8("an XBZRLE encoding");
          if (enc !== 1) throw new StreamError(`XBZRLE page with encoding ${enc}`, at);
          const len = await b.be16("an XBZRLE length");
          if (len > pageSize) throw new StreamError(`XBZRLE page of ${len} bytes`, at);
          await b.stream(len, "an XBZRLE page", null, at);
          st.xbzrlePages++;
          st.pageBytes += len;
          break;
        }
        case RAM_FLAG.COMPRESS_PAGE: {
          const len = await b.be32("a compressed page's length");
          if (len > pageSize + 64 + (pageSize >> 8)) throw new StreamError(`compressed page of ${len} bytes`, at);
          await b.stream(len, "a compressed page", null, at);
          st.compressedPages++;
          st.pageBytes += len;
          break;
        }
        case RAM_FLAG.MULTIFD_FLUSH:
          st.multifdFlushes++;
          break;
        case RAM_FLAG.EOS:
          return st;
        default:
          throw new StreamError(
            `RAM record with flags 0x${flags.toString(16)} (not a precopy RAM record this vfio-mig reads)`,
            at,
          );
      }
    }
  }

  // -------------------------------------------------------------------------
  // Non-iterable sections other than VFIO's.

  /** The description entry of a SECTION_FULL, in order; null without a description. */
  #describe(s: QemuSection): DescDevice | null {
    const d = this.#description;
    if (!d) return null;
    for (let i = this.#descIndex; i < d.devices.length; i++) {
      const e = d.devices[i];
      if (e.name === s.idstr && e.instance_id === s.instanceId) {
        this.#descIndex = i + 1;
        return e;
      }
    }
    throw new StreamError(
      `the VM description has no entry for section ${s.idstr} instance ${s.instanceId} (after entry ${this.#descIndex})`,
      s.offset,
    );
  }

  async #fullBody(s: QemuSection): Promise<BodyInfo["framing"]> {
    if (s.kind !== "full") throw new StreamError(`iterable section ${s.idstr} is not supported`, s.offset);
    const e = this.#describe(s);
    if (e) {
      await this.bytes.stream(describedBodySize(e), `section ${s.idstr}`, null, s.offset);
      return "description";
    }
    await this.#scanForFooter(s);
    return "footer scan";
  }

  /** Consumes the body of `s` up to its footer (0x7e + its id, followed by a well-formed item); its length. */
  async #scanForFooter(s: QemuSection): Promise<number> {
    const b = this.bytes;
    const start = b.offset;
    const sid = s.sectionId;
    for (;;) {
      const win = await b.peekSome(SCAN_WINDOW);
      if (win.length === 0) {
        throw new StreamError(`truncated: the stream ends inside section ${s.idstr} (no footer found)`, s.offset);
      }
      const atEnd = win.length < SCAN_WINDOW;
      const limit = atEnd ? win.length : win.length - (5 + SCAN_LOOKAHEAD);
      for (let i = 0; i < limit; i++) {
        if (
          win[i] === SECTION.FOOTER && i + 5 <= win.length && win[i + 1] === (sid >>> 24 & 0xff) &&
          win[i + 2] === (sid >>> 16 & 0xff) && win[i + 3] === (sid >>> 8 & 0xff) && win[i + 4] === (sid & 0xff) &&
          this.#plausibleNext(win.subarray(i + 5), atEnd)
        ) {
          await b.stream(i, `section ${s.idstr}`, null);
          return b.offset - start;
        }
      }
      if (atEnd) {
        throw new StreamError(`truncated: the stream ends inside section ${s.idstr} (no footer found)`, s.offset);
      }
      await b.stream(limit, `section ${s.idstr}`, null);
    }
  }

  /** Whether `w` (after a candidate footer) starts like what may follow a section. */
  #plausibleNext(w: Uint8Array, atEnd: boolean): boolean {
    if (w.length === 0) return false;
    const be32 = (at: number) => ((w[at] << 24) | (w[at + 1] << 16) | (w[at + 2] << 8) | w[at + 3]) >>> 0;
    switch (w[0]) {
      case SECTION.EOF:
        return (atEnd && w.length === 1) || (w.length >= 6 && w[1] === SECTION.VMDESCRIPTION && w[6] === 0x7b);
      case SECTION.START:
      case SECTION.FULL: {
        if (w.length < 6) return false;
        const n = w[5];
        if (n === 0 || w.length < 6 + n + 8) return false;
        for (let i = 6; i < 6 + n; i++) if (w[i] < 0x20 || w[i] > 0x7e) return false;
        return be32(6 + n + 4) < 0x10000; // a version, not data
      }
      case SECTION.PART:
      case SECTION.END:
        return w.length >= 5 && this.sections.has(be32(1));
      case SECTION.COMMAND:
        return w.length >= 5 && ((w[1] << 8) | w[2]) in COMMAND_NAMES;
      default:
        return false;
    }
  }

  // -------------------------------------------------------------------------
  // VFIO sections (hw/vfio/migration.c: vfio_load_state's tag loop).

  #vfioBody(what: string): OpenBody {
    const body = this.#body;
    if (!body || !body.section.vfio) throw new Error(`QemuStreamParser.${what}: no VFIO section is open`);
    return body;
  }

  /** The next tag of the open VFIO section, without consuming it (null at its end). */
  async peekVfioTag(): Promise<bigint | null> {
    const body = this.#vfioBody("peekVfioTag");
    if (body.done) return null;
    await this.#skipPending(body);
    const p = await this.bytes.peek(8);
    return p ? new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0) : null;
  }

  async #skipPending(body: OpenBody): Promise<void> {
    if (body.pendingData > 0) {
      const n = body.pendingData;
      body.pendingData = 0;
      await this.bytes.stream(n, "DEV_DATA_STATE data", null);
    }
    if (body.pendingConfig > 0) {
      const n = body.pendingConfig;
      body.pendingConfig = 0;
      await this.bytes.stream(n, "the DEV_CONFIG_STATE payload", null);
    }
  }

  /**
   * The next record of the open VFIO section: its tag and, for DEV_DATA_STATE, the data
   * size (the data is then read with vfioData, or skipped by the next call). After
   * END_OF_STATE the body is complete.
   */
  async vfioRecord(): Promise<VfioRecord> {
    const body = this.#vfioBody("vfioRecord");
    const s = body.section;
    if (body.done) throw new Error("QemuStreamParser.vfioRecord: the section's body is complete");
    await this.#skipPending(body);
    const b = this.bytes;
    const offset = b.offset;
    const tag = await b.be64(`a VFIO tag of ${s.idstr}`);
    const name = VFIO_TAG_NAMES.get(tag);
    if (!name) {
      const ours = tagName(tag) ? ` (${tagName(tag)} is vfio-mig's, not QEMU's)` : "";
      throw new StreamError(`unknown VFIO tag 0x${tag.toString(16).padStart(16, "0")} in ${s.idstr}${ours}`, offset);
    }
    if (tag === TAG.END_OF_STATE) {
      body.done = true;
      return { offset, tag, name };
    }
    if (tag === TAG.DEV_DATA_STATE) {
      const size = await b.be64("the size of a DEV_DATA_STATE record");
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new StreamError(`DEV_DATA_STATE record of 0x${size.toString(16)} bytes`, offset + 8);
      }
      body.pendingData = Number(size);
      return { offset, tag, name, size: Number(size) };
    }
    if (tag === TAG.DEV_CONFIG_STATE) {
      const size = await this.#configPayloadLength(s, offset);
      body.pendingConfig = size;
      return { offset, tag, name, size };
    }
    return { offset, tag, name };
  }

  /** Streams the data of the DEV_DATA_STATE record vfioRecord just returned. */
  async vfioData(fn: (piece: Uint8Array) => void): Promise<void> {
    const body = this.#vfioBody("vfioData");
    const n = body.pendingData;
    body.pendingData = 0;
    await this.bytes.stream(n, "DEV_DATA_STATE data", fn);
  }

  /** Data of the current DEV_DATA_STATE record not read yet. */
  get vfioDataLeft(): number {
    return this.#body?.pendingData ?? 0;
  }

  /**
   * The next at most `max` bytes (<= 1 MiB) of the current DEV_DATA_STATE record; a view
   * valid until the next call. Empty when the record's data is all read.
   */
  async vfioDataPart(max: number): Promise<Uint8Array> {
    const body = this.#vfioBody("vfioDataPart");
    const n = Math.min(body.pendingData, max);
    body.pendingData -= n;
    return await this.bytes.take(n, "DEV_DATA_STATE data");
  }

  /** The DEV_CONFIG_STATE payload vfioRecord just announced (a copy; at most ~40 KiB). */
  async vfioConfigPayload(): Promise<Uint8Array> {
    const body = this.#vfioBody("vfioConfigPayload");
    const n = body.pendingConfig;
    body.pendingConfig = 0;
    return (await this.bytes.take(n, "the DEV_CONFIG_STATE payload")).slice();
  }

  /** Where the un-framed config payload ends: from the description, else from its structure. */
  async #configPayloadLength(s: QemuSection, tagAt: number): Promise<number> {
    if (s.kind !== "full") {
      throw new StreamError(`DEV_CONFIG_STATE in the SECTION_${s.kind.toUpperCase()} of ${s.idstr}`, tagAt);
    }
    const e = this.#describe(s);
    if (e) {
      const n = describedBodySize(e) - 16;
      if (n < 0 || n > MAX_CONFIG_PAYLOAD) {
        throw new StreamError(`the VM description gives ${s.idstr} ${n + 16} bytes: not a config section`, tagAt);
      }
      return n;
    }
    const look = await this.bytes.peekSome(MAX_CONFIG_PAYLOAD + 8);
    const n = findPayloadLength(look);
    if (n === null) {
      throw new StreamError(
        `cannot find the end of ${s.idstr}'s DEV_CONFIG_STATE (no END_OF_STATE after a 256- or 4096-byte config space` +
          `${look.length < MAX_CONFIG_PAYLOAD ? "; the stream may be truncated" : ""})`,
        tagAt + 8,
      );
    }
    return n;
  }

  // -------------------------------------------------------------------------
  // After QEMU_VM_EOF.

  /**
   * Reads what follows QEMU_VM_EOF: the VM description (or nothing), then checks that
   * the stream ends there, and that every section framed by the footer scan has the
   * size the description gives it.
   */
  async trailer(): Promise<{ description: VmDescription; offset: number; bytes: number } | null> {
    if (!this.#eof) throw new Error("QemuStreamParser.trailer: not at QEMU_VM_EOF");
    const b = this.bytes;
    const offset = b.offset;
    const p = await b.peek(1);
    if (!p) {
      const scanned = this.fulls.filter((f) => f.framing === "footer scan").length;
      if (scanned) {
        throw new StreamError(
          `the stream has no VM description to check the ${scanned} sections found by footer scan`,
          offset,
        );
      }
      return null;
    }
    if (p[0] !== SECTION.VMDESCRIPTION) {
      throw new StreamError(
        `0x${p[0].toString(16)} after QEMU_VM_EOF (expected the VM description or the end)`,
        offset,
      );
    }
    await b.u8("the VM description");
    const n = await b.be32("the VM description length");
    if (n > MAX_DESCRIPTION) {
      throw new StreamError(`VM description of ${n} bytes (limit ${MAX_DESCRIPTION})`, offset + 1);
    }
    const json = new Uint8Array(n);
    let got = 0;
    await b.stream(n, "the VM description", (piece) => {
      json.set(piece, got);
      got += piece.length;
    }, offset);
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
    } catch {
      throw new StreamError("the VM description is not valid JSON", offset + 5);
    }
    const description = checkDescription(parsed, offset + 5);
    const extraAt = b.offset;
    const extra = await b.drain();
    if (extra) throw new StreamError(`${extra} unexpected bytes after the VM description`, extraAt);
    let from = 0;
    for (const sc of this.fulls) {
      const i = description.devices.findIndex((d, k) =>
        k >= from && d.name === sc.idstr && d.instance_id === sc.instanceId
      );
      if (i < 0) throw new StreamError(`the VM description has no entry for section ${sc.idstr}`, sc.offset);
      from = i + 1;
      const want = describedBodySize(description.devices[i]);
      if (want !== sc.bytes) {
        throw new StreamError(
          `section ${sc.idstr}: the ${sc.framing} found ${sc.bytes} bytes, the VM description says ${want}`,
          sc.offset,
        );
      }
    }
    this.#description ??= description;
    return { description, offset, bytes: 5 + n };
  }
}
