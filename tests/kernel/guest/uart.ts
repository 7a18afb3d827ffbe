// mtty's UART registers through a device fd (BARn = port n): the accessor and the two
// operations the real-kernel tests use to give a device a recognisable state and read
// it back. Shared by the suite's harness (lib/guest.ts) and the holder (holder.ts).

import type { Sys } from "../../../ffi/sys.ts";
import { decode, encode, IOCTL, STRUCTS } from "../../../ffi/vfio_uapi.ts";

/** Register offsets of a 16550 port: scratch, TX/RX, line status (bit 0: data ready). */
export const SCR = 7, TX = 0, LSR = 5;

/** Reads (v undefined) or writes one byte register `reg` of port `bar`. */
export type UartRw = (bar: number, reg: number, v?: number) => number;

/** A register accessor over the device fd: pread/pwrite at the BAR region's offset. */
export function uartRegisters(sys: Sys, fd: number): UartRw {
  const offsets = new Map<number, number>();
  return (bar, reg, v) => {
    if (!offsets.has(bar)) {
      const ri = encode(STRUCTS.vfio_region_info, { argsz: 32, index: bar });
      sys.ioctl(fd, IOCTL.DEVICE_GET_REGION_INFO, ri);
      offsets.set(bar, decode(STRUCTS.vfio_region_info, ri).offset);
    }
    const b = new Uint8Array(1);
    if (v === undefined) {
      sys.pread(fd, b, offsets.get(bar)! + reg);
      return b[0];
    }
    b[0] = v;
    sys.pwrite(fd, b, offsets.get(bar)! + reg);
    return v;
  };
}

/** Empties the RX FIFO, then writes the scratch register and bytes into the FIFO (mtty loops TX into RX). */
export function programPort(rw: UartRw, port: number, scratch: number, bytes: number[]): void {
  for (let i = 0; i < 16 && (rw(port, LSR) & 1); i++) rw(port, TX);
  rw(port, SCR, scratch);
  for (const b of bytes) rw(port, TX, b);
}

/** Reads the scratch register and drains the RX FIFO. */
export function readPort(rw: UartRw, port: number): { scratch: number; fifo: number[] } {
  const scratch = rw(port, SCR);
  const fifo: number[] = [];
  for (let i = 0; i < 16 && (rw(port, LSR) & 1); i++) fifo.push(rw(port, TX));
  return { scratch, fifo };
}
