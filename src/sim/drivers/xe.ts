// An Intel xe GPU VF (drivers/vfio/pci/xe, Linux 6.19+), as far as migration shows it:
// STOP_COPY and P2P but no PRE_COPY; a state (GuC, GGTT, VRAM) that can be larger than
// the host's free memory, so nobody along the way may hold it whole; and a
// MIG_DATA_SIZE that is an estimate the real stream exceeds (the VRAM part is sized
// when it is saved). The simulator stores none of the data: it is generated from the
// device's content seed page by page as the data_fd is read, and a resume write is
// verified against the generator of the seed its header names, so a wrong byte is
// refused (EINVAL) and a whole, verified stream makes that seed the device's content.

import { DeviceState } from "../../vfio/state_machine.ts";
import { MigrationFile, sysErr } from "../driver.ts";
import { fillXe, parseXeHeader, XE_HEADER_SIZE, xeHeader } from "../models.ts";
import { SaveQueueFile, SessionDriver } from "./session.ts";

const { STOP_COPY } = DeviceState;
const VERIFY_CHUNK = 1 << 20;

/** Index of the first byte where a and b (of equal length) differ, or -1. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  let k = 0;
  if ((a.byteOffset & 3) === 0 && (b.byteOffset & 3) === 0) {
    const words = a.length >>> 2;
    const wa = new Uint32Array(a.buffer, a.byteOffset, words);
    const wb = new Uint32Array(b.buffer, b.byteOffset, words);
    while (k < words && wa[k] === wb[k]) k++;
    k *= 4;
  }
  for (; k < a.length; k++) if (a[k] !== b[k]) return k;
  return -1;
}

class XeSaveFile extends SaveQueueFile {
  declare readonly driver: XeDriver;
  seed = 0;

  protected override data(dst: Uint8Array, at: number): number {
    fillXe(dst, this.seed, at);
    return dst.length;
  }
}

class XeResumeFile extends MigrationFile {
  readonly kind = "resume";
  readonly header = new Uint8Array(XE_HEADER_SIZE);
  /** The seed the header names, once it was read and valid. */
  seed: number | null = null;
  broken = false;
  #expect = new Uint8Array(0);

  constructor(fd: number, readonly driver: XeDriver) {
    super(fd);
  }

  override write(buf: Uint8Array): number {
    if (this.disabled) throw sysErr("write", "ENODEV");
    if (this.broken) throw sysErr("write", "EINVAL");
    const size = this.driver.dev.meta.size;
    if (this.pos + buf.length > XE_HEADER_SIZE + size) {
      this.broken = true;
      throw sysErr("write", "EINVAL", "more data than the VF's state");
    }
    let i = 0;
    if (this.pos < XE_HEADER_SIZE) {
      const take = Math.min(buf.length, XE_HEADER_SIZE - this.pos);
      this.header.set(buf.subarray(0, take), this.pos);
      this.pos += take;
      i = take;
      if (this.pos === XE_HEADER_SIZE) {
        this.seed = parseXeHeader(size, this.header);
        if (this.seed === null) {
          this.broken = true;
          throw sysErr("write", "EINVAL", "xe header does not match this VF");
        }
      }
    }
    while (i < buf.length) {
      const take = Math.min(buf.length - i, VERIFY_CHUNK);
      if (this.#expect.length < take) this.#expect = new Uint8Array(Math.max(take, 4096));
      const want = this.#expect.subarray(0, take);
      const at = this.pos - XE_HEADER_SIZE;
      fillXe(want, this.seed!, at);
      const bad = firstDifference(buf.subarray(i, i + take), want);
      if (bad >= 0) {
        this.broken = true;
        throw sysErr("write", "EINVAL", `xe data does not verify at byte ${at + bad} of the state`);
      }
      this.pos += take;
      i += take;
    }
    return buf.length;
  }
}

export class XeDriver extends SessionDriver {
  /** The seed the data it holds now was generated from. */
  get contentSeed(): number {
    return this.dev.meta.contentSeed ?? this.dev.meta.seed;
  }

  newSaveFile(state: DeviceState): SaveQueueFile {
    const fd = this.host.memfd("vfio-mig-sim-xe-mig");
    const f = new XeSaveFile(this.host, fd, this, this.dev.sessionData());
    f.seed = this.contentSeed;
    f.push({ mem: xeHeader(f.seed, this.dev.meta.size) });
    if (state === STOP_COPY && f.withData) f.push({ dataOffset: 0, length: this.dev.meta.size });
    f.initialEnd = f.filled;
    this.saving = f;
    return f;
  }

  fillStopCopy(): void {
    const f = this.saving as XeSaveFile;
    if (f.withData) f.push({ dataOffset: 0, length: this.dev.meta.size });
  }

  newResumeFile(): MigrationFile {
    const f = new XeResumeFile(this.host.memfd("vfio-mig-sim-xe-mig"), this);
    this.resuming = f;
    return f;
  }

  loadState(): void {
    const f = this.resuming as XeResumeFile | undefined;
    if (!f || f.broken || f.seed === null || f.pos !== XE_HEADER_SIZE + this.dev.meta.size) {
      throw sysErr("ioctl", "EINVAL");
    }
    this.dev.meta.contentSeed = f.seed;
    this.dev.dataChanged();
  }

  /** An estimate: 15/16 of the data (the real stream is larger). */
  dataSize(): number {
    return XE_HEADER_SIZE + Math.floor(this.dev.meta.size / 16 * 15);
  }

  powerOn(): void {
    delete this.dev.meta.contentSeed;
  }
}
