// The mtty driver (samples/vfio-mdev/mtty.c, Linux 6.12), byte for byte where the
// uAPI lets a user see: the save file holds a 24-byte header (u64 magic, u32 major 1,
// u32 minor 0, u32 nr_ports, u32 flags 0) and, from STOP_COPY, 36 bytes per port; in
// PRE_COPY it offers the header only, then read() returns 0 (not ENOMSG). The resume
// file takes at most 24 + 36n bytes (ENOMEM beyond, checked before ENODEV), validates
// the header on the write that completes byte 24 (EFAULT, the bytes still taken), and
// RESUMING -> STOP fails with EINVAL while data is missing. mtty_disable_file zeroes
// the file position. BARn is port n's eight UART registers; only SCR (7) keeps what is
// written.

import { O } from "../../../ffi/sys.ts";
import { SysError } from "../../../ffi/errno.ts";
import { DeviceState } from "../../vfio/state_machine.ts";
import { MigrationFile, sysErr } from "../driver.ts";
import { MTTY_HEADER_SIZE, MTTY_PORT_SIZE, mttyHeader, validateMttyHeader } from "../models.ts";
import { SaveQueueFile, SessionDriver } from "./session.ts";

const { STOP_COPY } = DeviceState;

class MttyResumeFile extends MigrationFile {
  readonly kind = "resume";
  readonly header = new Uint8Array(MTTY_HEADER_SIZE);

  constructor(fd: number, readonly driver: MttyDriver) {
    super(fd);
  }

  // mtty_resume_write()
  override write(buf: Uint8Array): number {
    const len = buf.length;
    const total = MTTY_HEADER_SIZE + this.driver.stateBytes;
    if (this.pos + len > total) throw sysErr("write", "ENOMEM");
    if (this.disabled) throw sysErr("write", "ENODEV");
    const hdrPart = Math.max(0, Math.min(len, MTTY_HEADER_SIZE - this.pos));
    if (hdrPart > 0) this.header.set(buf.subarray(0, hdrPart), this.pos);
    if (len > hdrPart) {
      this.driver.host.pwrite(this.fd, buf.subarray(hdrPart), this.pos + hdrPart - MTTY_HEADER_SIZE);
    }
    const before = this.pos;
    this.pos += len;
    if (before < MTTY_HEADER_SIZE && this.pos >= MTTY_HEADER_SIZE) {
      const e = validateMttyHeader(this.driver.dev.meta.model, this.header);
      if (e) throw new SysError("write", e, "mtty header validation failed");
    }
    return len;
  }
}

export class MttyDriver extends SessionDriver {
  /** 36 bytes per port; a port per BAR. */
  get stateBytes(): number {
    return this.dev.info.bars.filter((b) => b > 0).length * MTTY_PORT_SIZE;
  }

  // mtty_save_device_data()
  newSaveFile(state: DeviceState): SaveQueueFile {
    const fd = this.host.open(this.dev.store.statePath, O.RDONLY | O.CLOEXEC);
    const f = new SaveQueueFile(this.host, fd, this, this.dev.sessionData());
    f.push({ mem: mttyHeader(this.dev.meta.model) });
    if (state === STOP_COPY && f.withData) f.push({ dataOffset: 0, length: this.stateBytes });
    f.initialEnd = f.filled;
    this.saving = f;
    return f;
  }

  // mtty_save_state(): PRE_COPY -> STOP_COPY appends the ports.
  fillStopCopy(): void {
    const f = this.saving as SaveQueueFile;
    if (f.withData) f.push({ dataOffset: 0, length: this.stateBytes });
  }

  // mtty_resume_device_data(): the incoming state goes into the spare file.
  newResumeFile(): MigrationFile {
    const fd = this.host.open(this.dev.store.incomingPath, O.WRONLY | O.CREAT | O.CLOEXEC, 0o644);
    this.host.ftruncate(fd, this.stateBytes);
    const f = new MttyResumeFile(fd, this);
    this.resuming = f;
    return f;
  }

  // mtty_load_state(): RESUMING -> STOP; EINVAL leaves the device in RESUMING.
  loadState(): void {
    const f = this.resuming;
    if (!f) throw sysErr("ioctl", "EINVAL");
    if (f.pos < MTTY_HEADER_SIZE + this.stateBytes) throw sysErr("ioctl", "EINVAL");
    this.swapIncoming();
  }

  // mtty_data_size(): the same in every state.
  dataSize(): number {
    return MTTY_HEADER_SIZE + this.stateBytes;
  }

  // mtty_disable_file(): filled_size and f_pos back to 0.
  protected override disable(f: MigrationFile): void {
    f.disabled = true;
    f.pos = 0;
  }

  powerOn(): void {
    this.dev.store.writeInitialState(this.dev.meta);
  }

  /** Each BAR is one port's 8 UART registers; only SCR (7) holds what is written. */
  override barAccess(index: number, off: number, buf: Uint8Array, write: boolean): number {
    const fd = this.host.open(this.dev.store.statePath, O.RDWR | O.CLOEXEC);
    try {
      for (let i = 0; i < buf.length; i++) {
        const reg = off + i;
        const at = index * MTTY_PORT_SIZE + reg;
        if (write) {
          if (reg === 7) this.host.pwrite(fd, buf.subarray(i, i + 1), at);
        } else {
          const one = new Uint8Array(1);
          if (reg === 7) this.host.pread(fd, one, at);
          buf[i] = one[0];
        }
      }
    } finally {
      this.host.close(fd);
    }
    if (write) this.dev.dataChanged();
    return buf.length;
  }
}
