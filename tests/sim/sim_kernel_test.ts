// The simulated VFIO kernel, driven directly through the Sys interface with raw
// VFIO_DEVICE_FEATURE buffers, against the kernel's and mtty's documented behaviour
// (reference §1.4-1.6 and §3; docs/kernel-vm.md "mtty facts (observed)").

import { assert, assertEquals, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { F, O } from "../../ffi/sys.ts";
import { decode, encodeInto, FEATURE, FEATURE_FLAGS, IOCTL, STRUCTS } from "../../ffi/vfio_uapi.ts";
import {
  ALL_STATES,
  arcOpensDataFd,
  DeviceState,
  isHangingArc,
  resolvePath,
  stateName,
  supportedStates,
} from "../../src/vfio/state_machine.ts";
import { parseFaults, SimKernel, type SimKernelOptions } from "../../src/sim/kernel.ts";
import { type ModelName, MTTY_MAGIC, mttyHeader } from "../../src/sim/models.ts";
import { SimStore } from "../../src/sim/store.ts";
import { Sim as HelperSim, withStore } from "../helpers/sim.ts";
import { concat } from "../helpers/bytes.ts";

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = DeviceState;
const { GET, SET, PROBE } = FEATURE_FLAGS;
const host = libc();

interface Sim {
  k: SimKernel;
  fd: number;
  dir: string;
  /** Data fds to close at the end. */
  fds: Set<number>;
}

/** Creates a device in a temp dir, opens it through a fresh SimKernel, runs fn, cleans up. */
async function withDevice(
  model: ModelName,
  opts: { flags?: number; size?: number; seed?: number; kernel?: SimKernelOptions },
  fn: (s: Sim) => void | Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-simk-" });
  try {
    new SimStore(host, dir).create({ model, flags: opts.flags, size: opts.size, seed: opts.seed ?? 11 });
    const k = new SimKernel(host, opts.kernel);
    const fd = k.open(`sim:${dir}`, O.RDWR | O.CLOEXEC);
    const s: Sim = { k, fd, dir, fds: new Set() };
    try {
      await fn(s);
    } finally {
      for (const f of s.fds) {
        try {
          k.close(f);
        } catch { /* closed by the test */ }
      }
      k.close(fd);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A VFIO_DEVICE_FEATURE buffer: header then payload; argsz defaults to the buffer size. */
function featureBuf(flags: number, payload: number, argsz = 8 + payload): Uint8Array {
  const b = new Uint8Array(8 + payload);
  encodeInto(STRUCTS.vfio_device_feature, { argsz, flags }, b);
  return b;
}

function expectErrno(fn: () => unknown, name: keyof typeof Errno, what: string): SysError {
  const e = assertThrows(fn, SysError, undefined, what);
  assertEquals(e.code, name, `${what}: errno`);
  return e;
}

function getState(s: Sim): DeviceState {
  const b = featureBuf(GET | FEATURE.MIG_DEVICE_STATE, 8);
  assertEquals(s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, b), 0);
  const m = decode(STRUCTS.vfio_device_feature_mig_state, b, 8);
  assertEquals(m.data_fd, -1, "GET returns data_fd -1");
  return m.device_state;
}

/** SET MIG_DEVICE_STATE; returns the data_fd written back (or -1), registered for cleanup. */
function setState(s: Sim, target: number): number {
  const b = featureBuf(SET | FEATURE.MIG_DEVICE_STATE, 8);
  encodeInto(STRUCTS.vfio_device_feature_mig_state, { device_state: target, data_fd: -1 }, b, 8);
  s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, b);
  const m = decode(STRUCTS.vfio_device_feature_mig_state, b, 8);
  assertEquals(m.device_state, target, "SET writes back the requested state");
  if (m.data_fd >= 0) s.fds.add(m.data_fd);
  return m.data_fd;
}

function closeFd(s: Sim, fd: number): void {
  s.fds.delete(fd);
  s.k.close(fd);
}

function reset(s: Sim): void {
  assertEquals(s.k.ioctl(s.fd, IOCTL.DEVICE_RESET, null), 0);
}

/** Puts the device in `state` from wherever it is, closing any fd handed out. */
function reach(s: Sim, state: DeviceState): void {
  reset(s);
  const fd = setState(s, state);
  if (fd >= 0) closeFd(s, fd);
  assertEquals(getState(s), state, `reached ${stateName(state)}`);
}

function precopyInfo(s: Sim, fd: number, argsz = 24): { initial: number; dirty: number; flags: number } {
  const b = new Uint8Array(24);
  encodeInto(STRUCTS.vfio_precopy_info, { argsz, flags: 0 }, b);
  s.k.ioctl(fd, IOCTL.MIG_GET_PRECOPY_INFO, b);
  const d = decode(STRUCTS.vfio_precopy_info, b);
  return { initial: d.initial_bytes, dirty: d.dirty_bytes, flags: d.flags };
}

function readN(s: Sim, fd: number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  const got = s.k.read(fd, b);
  return b.subarray(0, got);
}

/** Reads until read() returns 0. */
function drain(s: Sim, fd: number, bufSize = 1000): Uint8Array {
  const parts: number[] = [];
  for (;;) {
    const b = readN(s, fd, bufSize);
    if (b.length === 0) return new Uint8Array(parts);
    parts.push(...b);
  }
}

function stateFile(s: Sim): Uint8Array {
  return Deno.readFileSync(`${s.dir}/state.bin`);
}

const PORTS: Record<"mtty-1" | "mtty-2", number> = { "mtty-1": 1, "mtty-2": 2 };

Deno.test("not migratable (flags none): every migration feature is ENOTTY, even PROBE", async () => {
  await withDevice("mtty-2", { flags: 0 }, (s) => {
    for (
      const [what, flags, payload] of [
        ["GET MIGRATION", GET | FEATURE.MIGRATION, 8],
        ["PROBE MIGRATION", PROBE | GET | FEATURE.MIGRATION, 0],
        ["GET MIG_DEVICE_STATE", GET | FEATURE.MIG_DEVICE_STATE, 8],
        ["SET MIG_DEVICE_STATE", SET | FEATURE.MIG_DEVICE_STATE, 8],
        ["GET MIG_DATA_SIZE", GET | FEATURE.MIG_DATA_SIZE, 8],
        ["SET DMA_LOGGING_START", SET | FEATURE.DMA_LOGGING_START, 24],
      ] as const
    ) {
      expectErrno(() => s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, featureBuf(flags, payload)), "ENOTTY", what);
    }
  });
});

Deno.test("migratable: GET MIGRATION gives the flags; PROBE succeeds without touching data", async () => {
  for (const flags of [0x1, 0x3, 0x5, 0x7]) {
    await withDevice("mtty-1", { flags }, (s) => {
      const b = featureBuf(GET | FEATURE.MIGRATION, 8);
      s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, b);
      assertEquals(decode(STRUCTS.vfio_device_feature_migration, b, 8).flags, flags);
      const p = featureBuf(PROBE | GET | FEATURE.MIGRATION, 8);
      p.fill(0xaa, 8);
      assertEquals(s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, p), 0);
      assertEquals([...p.subarray(8)], new Array(8).fill(0xaa), "PROBE leaves the payload alone");
    });
  }
});

Deno.test("VFIO_DEVICE_FEATURE: EINVAL for bad flags, GET|SET together, short argsz, unsupported ops", async () => {
  await withDevice("mtty-2", {}, (s) => {
    const io = (b: Uint8Array) => () => s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, b);
    const ms = FEATURE.MIG_DEVICE_STATE;
    expectErrno(io(featureBuf(GET | ms | (1 << 19), 8)), "EINVAL", "unknown flag bit 19");
    expectErrno(io(featureBuf(GET | ms | (1 << 31), 8)), "EINVAL", "unknown flag bit 31");
    expectErrno(io(featureBuf(GET | SET | ms, 8)), "EINVAL", "GET|SET without PROBE");
    assertEquals(io(featureBuf(PROBE | GET | SET | ms, 0))(), 0, "GET|SET with PROBE is a probe");
    expectErrno(io(featureBuf(ms, 8)), "EINVAL", "neither GET nor SET");
    expectErrno(io(featureBuf(GET | ms, 8, 7)), "EINVAL", "argsz 7 < header");
    expectErrno(io(featureBuf(GET | ms, 8, 0)), "EINVAL", "argsz 0");
    expectErrno(io(featureBuf(GET | ms, 4)), "EINVAL", "payload 4 < mig_state");
    expectErrno(io(featureBuf(GET | ms, 0)), "EINVAL", "no payload");
    expectErrno(io(featureBuf(SET | ms, 4)), "EINVAL", "SET payload 4");
    expectErrno(io(featureBuf(GET | FEATURE.MIGRATION, 4)), "EINVAL", "MIGRATION payload 4");
    expectErrno(io(featureBuf(SET | FEATURE.MIGRATION, 8)), "EINVAL", "SET of GET-only MIGRATION");
    expectErrno(io(featureBuf(PROBE | SET | FEATURE.MIGRATION, 0)), "EINVAL", "PROBE SET of GET-only MIGRATION");
    expectErrno(io(featureBuf(SET | FEATURE.MIG_DATA_SIZE, 8)), "EINVAL", "SET of MIG_DATA_SIZE");
    expectErrno(io(featureBuf(GET | 3, 8)), "EINVAL", "feature 3 (no device_feature op)");
    expectErrno(io(featureBuf(GET | FEATURE.MIG_PRECOPY_INFOv2, 8)), "EINVAL", "feature 12");
    // argsz larger than the buffer: copy_from_user would fault.
    expectErrno(io(featureBuf(GET | ms, 8, 64)), "EFAULT", "argsz beyond the buffer");
    // None of that moved the device.
    assertEquals(getState(s), RUNNING);
    // A larger payload than needed is fine (argsz covers the buffer).
    const big = featureBuf(GET | ms, 64);
    s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, big);
    assertEquals(decode(STRUCTS.vfio_device_feature_mig_state, big, 8).device_state, RUNNING);
  });
});

Deno.test("SET MIG_DEVICE_STATE: ERROR, out-of-range and unsupported targets are EINVAL; the state stays", async () => {
  await withDevice("mtty-2", { flags: 0x1 }, (s) => {
    for (const target of [ERROR, 8, 0xffff, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P]) {
      expectErrno(() => setState(s, target), "EINVAL", `target ${target}`);
      assertEquals(getState(s), RUNNING);
    }
  });
});

Deno.test("MIG_DATA_SIZE is 24 + 36 per port (60 / 96) in every state", async () => {
  for (const model of ["mtty-1", "mtty-2"] as const) {
    await withDevice(model, {}, (s) => {
      for (const st of [RUNNING, STOP, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, STOP_COPY, RESUMING]) {
        reach(s, st);
        const b = featureBuf(GET | FEATURE.MIG_DATA_SIZE, 8);
        s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, b);
        assertEquals(
          decode(STRUCTS.vfio_device_feature_mig_data_size, b, 8).stop_copy_length,
          model === "mtty-1" ? 60 : 96,
          `${model} in ${stateName(st)}`,
        );
      }
    });
  }
});

Deno.test("a data_fd comes back exactly when the final arc is STOP->STOP_COPY, RUNNING->PRE_COPY, RUNNING_P2P->PRE_COPY_P2P or STOP->RESUMING", async () => {
  await withDevice("mtty-2", {}, (s) => {
    const states = supportedStates(0x7);
    let opened = 0;
    for (const from of states) {
      for (const to of states) {
        if (from === to) continue;
        reach(s, from);
        const what = `${stateName(from)} -> ${stateName(to)}`;
        if (isHangingArc(from, to)) {
          expectErrno(() => setState(s, to), "EINVAL", what);
          assertEquals(getState(s), from, `${what}: state unchanged`);
          continue;
        }
        if (from === RESUMING) {
          // No data was written: the first step (RESUMING -> STOP) fails validation.
          expectErrno(() => setState(s, to), "EINVAL", what);
          assertEquals(getState(s), RESUMING, `${what}: still RESUMING`);
          continue;
        }
        const path = resolvePath(0x7, from, to)!;
        const last = path.length > 1 ? path[path.length - 2] : from;
        const fd = setState(s, to);
        assertEquals(getState(s), to, what);
        const opens = arcOpensDataFd(last, to);
        assertEquals(
          fd >= 0,
          opens !== null,
          `${what} (final arc ${stateName(last)} -> ${stateName(to)}): data_fd ${fd}`,
        );
        if (fd >= 0) {
          opened++;
          // Save fds read, resume fds write.
          if (opens === "save") assert(readN(s, fd, 4).length > 0, `${what}: save fd readable`);
          else expectErrno(() => s.k.read(fd, new Uint8Array(4)), "EBADF", `${what}: resume fd not readable`);
          closeFd(s, fd);
        }
      }
    }
    assert(opened >= 8, `some arcs opened fds (${opened})`);
  });
  // The four direct arcs, by name.
  await withDevice("mtty-1", {}, (s) => {
    for (const [from, to] of [[STOP, STOP_COPY], [RUNNING, PRE_COPY], [RUNNING_P2P, PRE_COPY_P2P], [STOP, RESUMING]]) {
      reach(s, from);
      const fd = setState(s, to);
      assert(fd >= 0, `${stateName(from)} -> ${stateName(to)} returns a data_fd`);
      closeFd(s, fd);
    }
    for (const [from, to] of [[PRE_COPY, STOP_COPY], [PRE_COPY_P2P, STOP_COPY], [PRE_COPY, PRE_COPY_P2P]]) {
      reach(s, from);
      assertEquals(setState(s, to), -1, `${stateName(from)} -> ${stateName(to)} returns no new fd`);
    }
  });
});

Deno.test("STOP_COPY -> PRE_COPY* is refused (EINVAL) and recorded as a forbidden request", async () => {
  await withDevice("mtty-2", {}, (s) => {
    reach(s, STOP_COPY);
    expectErrno(() => setState(s, PRE_COPY), "EINVAL", "STOP_COPY -> PRE_COPY");
    expectErrno(() => setState(s, PRE_COPY_P2P), "EINVAL", "STOP_COPY -> PRE_COPY_P2P");
    assertEquals(s.k.forbiddenArcs, ["STOP_COPY->PRE_COPY", "STOP_COPY->PRE_COPY_P2P"]);
    assertEquals(getState(s), STOP_COPY);
  });
});

Deno.test("mtty pre-copy: 24 header bytes, then read() returns 0 (not ENOMSG); PRECOPY_INFO 24 -> 0", async () => {
  for (const model of ["mtty-1", "mtty-2"] as const) {
    await withDevice(model, {}, (s) => {
      const fd = setState(s, PRE_COPY);
      assert(fd >= 0);
      assertEquals(precopyInfo(s, fd), { initial: 24, dirty: 0, flags: 0 });
      assertEquals(readN(s, fd, 10), mttyHeader(model).subarray(0, 10));
      assertEquals(precopyInfo(s, fd), { initial: 14, dirty: 0, flags: 0 }, "initial counts down as read");
      assertEquals(readN(s, fd, 1000), mttyHeader(model).subarray(10), "the rest of the header, no port data");
      assertEquals(precopyInfo(s, fd), { initial: 0, dirty: 0, flags: 0 });
      assertEquals(readN(s, fd, 1000).length, 0, "0 at the end of pre-copy data");
      assertEquals(readN(s, fd, 1000).length, 0, "and again");
      const h = new DataView(mttyHeader(model).buffer);
      assertEquals(h.getBigUint64(0, true), MTTY_MAGIC);
      assertEquals([h.getUint32(8, true), h.getUint32(12, true), h.getUint32(16, true), h.getUint32(20, true)], [
        1,
        0,
        PORTS[model],
        0,
      ]);
      // Streams, not files.
      expectErrno(() => s.k.pread(fd, new Uint8Array(4), 0), "ESPIPE", "pread on data_fd");
      expectErrno(() => s.k.lseek(fd, 0, 0), "ESPIPE", "lseek on data_fd");
      expectErrno(() => precopyInfo(s, fd, 16), "EINVAL", "PRECOPY_INFO argsz 16");
    });
  }
});

Deno.test("PRECOPY_INFO is EINVAL outside PRE_COPY / PRE_COPY_P2P", async () => {
  await withDevice("mtty-2", {}, (s) => {
    assertEquals(setState(s, STOP), -1);
    const sc = setState(s, STOP_COPY);
    assert(sc >= 0, "STOP -> STOP_COPY gives a fd");
    expectErrno(() => precopyInfo(s, sc), "EINVAL", "PRECOPY_INFO in STOP_COPY");
    closeFd(s, sc);
    reach(s, RUNNING_P2P);
    const p2p = setState(s, PRE_COPY_P2P);
    assertEquals(precopyInfo(s, p2p).initial, 24, "valid in PRE_COPY_P2P");
    setState(s, STOP_COPY);
    expectErrno(() => precopyInfo(s, p2p), "EINVAL", "PRECOPY_INFO after PRE_COPY_P2P -> STOP_COPY");
    // On a resume fd it is not an ioctl at all.
    reach(s, STOP);
    const res = setState(s, RESUMING);
    expectErrno(() => precopyInfo(s, res), "ENOTTY", "PRECOPY_INFO on a resume fd");
  });
});

Deno.test("PRE_COPY -> STOP_COPY: no new fd; the same fd delivers the remaining 36 / 72 bytes, then 0 for ever", async () => {
  for (const model of ["mtty-1", "mtty-2"] as const) {
    await withDevice(model, { seed: 77 }, (s) => {
      const fd = setState(s, PRE_COPY);
      assertEquals(drain(s, fd), mttyHeader(model), "pre-copy data is the header");
      assertEquals(setState(s, STOP_COPY), -1, "no new data_fd");
      const ports = drain(s, fd, 7);
      assertEquals(ports.length, 36 * PORTS[model]);
      assertEquals(ports, stateFile(s), "the port data is the device state");
      for (let i = 0; i < 5; i++) assertEquals(readN(s, fd, 100).length, 0, "end of stream is permanent");
    });
  }
  // STOP -> STOP_COPY: one new file with header and ports at once.
  await withDevice("mtty-2", { seed: 78 }, (s) => {
    setState(s, STOP);
    const fd = setState(s, STOP_COPY);
    assertEquals(drain(s, fd, 5), concat(mttyHeader("mtty-2"), stateFile(s)));
    assertEquals(readN(s, fd, 1).length, 0);
  });
});

/** The 60 bytes of a valid mtty-1 stream, with SCR set. */
function mtty1Stream(scr: number): Uint8Array {
  const port = new Uint8Array(36);
  port[7] = scr;
  port[33] = 16;
  port[34] = 1;
  return concat(mttyHeader("mtty-1"), port);
}

function toResuming(s: Sim): number {
  assertEquals(setState(s, STOP), -1);
  const fd = setState(s, RESUMING);
  assert(fd >= 0, "STOP -> RESUMING returns a data_fd");
  return fd;
}

Deno.test("mtty resume: a valid stream, written byte by byte, loads on RESUMING -> STOP", async () => {
  await withDevice("mtty-1", {}, (s) => {
    const fd = toResuming(s);
    const data = mtty1Stream(0xab);
    for (let i = 0; i < data.length; i++) assertEquals(s.k.write(fd, data.subarray(i, i + 1)), 1);
    expectErrno(() => s.k.read(fd, new Uint8Array(1)), "EBADF", "resume fd is write-only");
    assertEquals(setState(s, STOP), -1);
    assertEquals(getState(s), STOP);
    assertEquals(stateFile(s), data.subarray(24));
    // The UART scratch register now reads back through BAR0 (offset 7; region 0 at 0).
    const scr = new Uint8Array(1);
    s.k.pread(s.fd, scr, 7);
    assertEquals(scr[0], 0xab);
    setState(s, RUNNING);
    assertEquals(getState(s), RUNNING);
  });
});

Deno.test("mtty resume: a write past 24 + 36n fails with ENOMEM and takes nothing", async () => {
  await withDevice("mtty-1", {}, (s) => {
    const fd = toResuming(s);
    const data = mtty1Stream(1);
    expectErrno(() => s.k.write(fd, concat(data, new Uint8Array(1))), "ENOMEM", "61 bytes at once");
    assertEquals(s.k.write(fd, data.subarray(0, 59)), 59, "nothing was taken by the failed write");
    expectErrno(() => s.k.write(fd, new Uint8Array(2)), "ENOMEM", "2 bytes at 59");
    assertEquals(s.k.write(fd, data.subarray(59)), 1);
    expectErrno(() => s.k.write(fd, new Uint8Array(1)), "ENOMEM", "1 byte at 60");
    assertEquals(setState(s, STOP), -1, "the 60 bytes load");
  });
  await withDevice("mtty-2", {}, (s) => {
    const fd = toResuming(s);
    assertEquals(s.k.write(fd, concat(mttyHeader("mtty-2"), new Uint8Array(72))), 96);
    expectErrno(() => s.k.write(fd, new Uint8Array(1)), "ENOMEM", "mtty-2 byte 97");
  });
});

Deno.test("mtty resume: a bad header fails the write completing byte 24 with EFAULT; the bytes are still taken", async () => {
  await withDevice("mtty-1", {}, (s) => {
    const fd = toResuming(s);
    const bad = mttyHeader("mtty-2"); // nr_ports 2 into a 1-port device
    assertEquals(s.k.write(fd, bad.subarray(0, 20)), 20, "no validation before byte 24");
    expectErrno(() => s.k.write(fd, bad.subarray(20)), "EFAULT", "write completing byte 24");
    // Taken: 36 more bytes fill the device exactly, a 37th does not fit.
    assertEquals(s.k.write(fd, new Uint8Array(36)), 36);
    expectErrno(() => s.k.write(fd, new Uint8Array(1)), "ENOMEM", "past 60");
  });
  const variants: [string, (v: DataView) => void][] = [
    ["magic", (v) => v.setUint8(0, 0)],
    ["major version", (v) => v.setUint32(8, 2, true)],
    ["minor version", (v) => v.setUint32(12, 1, true)],
    ["nr_ports", (v) => v.setUint32(16, 0, true)],
    ["flags", (v) => v.setUint32(20, 1, true)],
  ];
  for (const [what, spoil] of variants) {
    await withDevice("mtty-1", {}, (s) => {
      const fd = toResuming(s);
      const h = mttyHeader("mtty-1");
      spoil(new DataView(h.buffer));
      expectErrno(() => s.k.write(fd, concat(h, new Uint8Array(10))), "EFAULT", `bad ${what}`);
    });
  }
});

Deno.test("mtty resume: RESUMING -> STOP with short data is EINVAL and the device stays RESUMING", async () => {
  await withDevice("mtty-2", { seed: 5 }, (s) => {
    const before = stateFile(s);
    const fd = toResuming(s);
    const data = concat(mttyHeader("mtty-2"), new Uint8Array(72).fill(0x5a));
    let written = 0;
    for (const have of [0, 24, 95]) {
      assertEquals(s.k.write(fd, data.subarray(written, have)), have - written);
      written = have;
      const b = featureBuf(SET | FEATURE.MIG_DEVICE_STATE, 8);
      encodeInto(STRUCTS.vfio_device_feature_mig_state, { device_state: STOP, data_fd: 7 }, b, 8);
      expectErrno(() => s.k.ioctl(s.fd, IOCTL.DEVICE_FEATURE, b), "EINVAL", `STOP after ${have} bytes`);
      // The core writes the struct back: the requested state, data_fd -1.
      assertEquals(decode(STRUCTS.vfio_device_feature_mig_state, b, 8), { device_state: STOP, data_fd: -1 });
      assertEquals(getState(s), RESUMING, `still RESUMING after ${have} bytes`);
      expectErrno(() => setState(s, RUNNING), "EINVAL", `RUNNING after ${have} bytes`);
      assertEquals(getState(s), RESUMING);
    }
    assertEquals(stateFile(s), before, "nothing loaded");
    // The session is still open: the last byte completes it.
    s.k.write(fd, data.subarray(95));
    setState(s, RUNNING);
    assertEquals(getState(s), RUNNING);
    assertEquals(stateFile(s), data.subarray(24));
  });
});

Deno.test("VFIO_DEVICE_RESET: RUNNING from any state, and open data_fds stop working", async () => {
  await withDevice("mtty-2", {}, (s) => {
    for (const st of supportedStates(0x7)) {
      reach(s, st);
      reset(s);
      assertEquals(getState(s), RUNNING, `reset from ${stateName(st)}`);
    }
    const save = setState(s, PRE_COPY);
    readN(s, save, 4);
    reset(s);
    expectErrno(() => s.k.read(save, new Uint8Array(4)), "ENODEV", "read on a save fd after reset");
    setState(s, STOP);
    const res = setState(s, RESUMING);
    reset(s);
    expectErrno(() => s.k.write(res, new Uint8Array(4)), "ENODEV", "write on a resume fd after reset");
    assertEquals(getState(s), RUNNING);
  });
});

Deno.test("leaving a session disables its fd: STOP_COPY -> STOP, PRE_COPY -> RUNNING", async () => {
  await withDevice("mtty-1", {}, (s) => {
    const pre = setState(s, PRE_COPY);
    setState(s, RUNNING);
    expectErrno(() => s.k.read(pre, new Uint8Array(4)), "ENODEV", "after PRE_COPY -> RUNNING");
    setState(s, STOP);
    const sc = setState(s, STOP_COPY);
    setState(s, STOP);
    expectErrno(() => s.k.read(sc, new Uint8Array(4)), "ENODEV", "after STOP_COPY -> STOP");
  });
});

Deno.test("EBUSY on a second open of a device that is open; free again after close", async () => {
  await withDevice("mtty-1", {}, (s) => {
    const path = `sim:${s.dir}`;
    expectErrno(() => s.k.open(path, O.RDWR), "EBUSY", "same kernel");
    const other = new SimKernel(host);
    expectErrno(() => other.open(path, O.RDWR), "EBUSY", "another kernel (another process's view)");
    s.k.close(s.fd);
    const fd2 = other.open(path, O.RDWR);
    expectErrno(() => s.k.open(path, O.RDWR), "EBUSY", "now the other one holds it");
    other.close(fd2);
    s.fd = s.k.open(path, O.RDWR); // withDevice closes it
  });
  const k = new SimKernel(host);
  expectErrno(() => k.open("sim:/nonexistent/vfio-mig-test", O.RDWR), "ENOENT", "missing device");
});

Deno.test("migration state persists across close and reopen (a device left in STOP reads STOP)", async () => {
  await withDevice("mtty-2", {}, (s) => {
    setState(s, STOP);
    s.k.close(s.fd);
    const k2 = new SimKernel(host);
    const fd = k2.open(`sim:${s.dir}`, O.RDWR);
    assertEquals(getState({ ...s, k: k2, fd }), STOP);
    setState({ ...s, k: k2, fd }, RUNNING_P2P);
    k2.close(fd);
    s.fd = s.k.open(`sim:${s.dir}`, O.RDWR);
    assertEquals(getState(s), RUNNING_P2P);
  });
});

Deno.test("device info and regions: PCI, 9 regions, 5 irqs; BAR0 8 bytes rw no mmap; config 0xff at 7<<40", async () => {
  await withDevice("mtty-2", {}, (s) => {
    const info = new Uint8Array(24);
    encodeInto(STRUCTS.vfio_device_info, { argsz: 24 }, info);
    s.k.ioctl(s.fd, IOCTL.DEVICE_GET_INFO, info);
    const d = decode(STRUCTS.vfio_device_info, info);
    assertEquals([d.flags, d.num_regions, d.num_irqs], [0x2, 9, 5]);
    const region = (index: number) => {
      const b = new Uint8Array(32);
      encodeInto(STRUCTS.vfio_region_info, { argsz: 32, index }, b);
      s.k.ioctl(s.fd, IOCTL.DEVICE_GET_REGION_INFO, b);
      const r = decode(STRUCTS.vfio_region_info, b);
      return { flags: r.flags, size: r.size, offset: r.offset };
    };
    assertEquals(region(0), { flags: 0x3, size: 8, offset: 0 });
    assertEquals(region(1), { flags: 0x3, size: 8, offset: 2 ** 40 });
    assertEquals(region(2).size, 0);
    assertEquals(region(7), { flags: 0x3, size: 0xff, offset: 7 * 2 ** 40 });
    const cfg = new Uint8Array(4);
    s.k.pread(s.fd, cfg, 7 * 2 ** 40);
    assertEquals([...cfg], [0x48, 0x43, 0x53, 0x32], "vendor 0x4348 device 0x3253");
    expectErrno(() => s.k.mmap(s.fd, 8, 1, 1, 0), "EINVAL", "no mmap");
  });
});

Deno.test("parseFaults: KEY@N=ERRNO lists, 'short', and clear errors", () => {
  assertEquals(parseFaults(undefined), []);
  assertEquals(parseFaults(""), []);
  assertEquals(parseFaults("read:data_fd@2=EIO"), [{ key: "read:data_fd", nth: 2, errno: Errno.EIO, seen: 0 }]);
  assertEquals(parseFaults(" ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET@1=EINVAL , write:host@3=short"), [
    { key: "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET", nth: 1, errno: Errno.EINVAL, seen: 0 },
    { key: "write:host", nth: 3, errno: "short", seen: 0 },
  ]);
  for (const bad of ["read:data_fd", "read:data_fd@x=EIO", "read:data_fd@2=", "read data_fd@1=EIO"]) {
    assertThrows(() => parseFaults(bad), Error, "expected KEY@N=ERRNO", bad);
  }
  assertThrows(() => parseFaults("read:data_fd@1=EWHATEVER"), Error, "unknown errno EWHATEVER");
});

Deno.test("fault injection fires on the Nth matching call only, before the call has any effect", async () => {
  await withDevice("mtty-2", { kernel: { faults: parseFaults("read:data_fd@2=EIO") } }, (s) => {
    setState(s, STOP);
    const fd = setState(s, STOP_COPY);
    const want = concat(mttyHeader("mtty-2"), stateFile(s));
    const first = readN(s, fd, 10);
    const e = expectErrno(() => readN(s, fd, 10), "EIO", "2nd read");
    assertStringIncludes(e.message, "injected at read:data_fd@2");
    const rest = drain(s, fd, 10);
    assertEquals(concat(first, rest), want, "the failed read consumed nothing; later reads go on");
    assert(s.k.faults[0].seen > 3, "later reads were counted and passed");
  });
  // Keys are prefixes: the SET key does not count GETs; a shorter key counts both.
  await withDevice("mtty-1", {
    kernel: { faults: parseFaults("ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET@2=EBUSY,ioctl:DEVICE_FEATURE@7=EIO") },
  }, (s) => {
    getState(s); // feature call 1
    getState(s); // 2
    setState(s, STOP); // 3, SET 1
    getState(s); // 4
    expectErrno(() => setState(s, RUNNING), "EBUSY", "SET 2"); // 5
    assertEquals(getState(s), STOP, "the failed SET changed nothing"); // 6
    expectErrno(() => getState(s), "EIO", "7th DEVICE_FEATURE call (a GET)"); // 7
    setState(s, RUNNING); // 8: neither fires again
    assertEquals(getState(s), RUNNING);
  });
  // "short" halves a write (or read) instead of failing it.
  await withDevice("mtty-1", { kernel: { faults: parseFaults("write:host@1=short") } }, (s) => {
    const [r, w] = s.k.pipe();
    try {
      assertEquals(s.k.write(w, new Uint8Array(10)), 5, "1st host write is short");
      assertEquals(s.k.write(w, new Uint8Array(10)), 10, "2nd is whole");
    } finally {
      s.k.close(r);
      s.k.close(w);
    }
  });
});

Deno.test("the call log records each SET with its path and data_fd, and injected faults", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-simlog-" });
  const logPath = `${dir}/calls.jsonl`;
  try {
    await withDevice("mtty-2", {
      kernel: { logPath, faults: parseFaults("ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET@3=EIO") },
    }, (s) => {
      const fd = setState(s, PRE_COPY);
      setState(s, STOP_COPY);
      expectErrno(() => setState(s, STOP), "EIO", "3rd SET");
      reset(s);
      closeFd(s, fd);
    });
    const lines = (await Deno.readTextFile(logPath)).trim().split("\n").map((l) => JSON.parse(l));
    const sets = lines.filter((l) => l.key === "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET");
    assertEquals(sets.map((l) => [l.from, l.to, l.path, l.data_fd >= 0, l.fault]), [
      ["RUNNING", "PRE_COPY", ["PRE_COPY"], true, undefined],
      ["PRE_COPY", "STOP_COPY", ["PRE_COPY_P2P", "STOP_COPY"], false, undefined],
      [undefined, undefined, undefined, false, "EIO"],
    ]);
    assert(lines.some((l) => l.key === "ioctl:DEVICE_RESET"), "reset logged");
    assert(lines.every((l) => typeof l.n === "number" && l.pid === Deno.pid), "sequence numbers and pid");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("every state is reachable from RUNNING on a 0x7 device, and GET reports it", async () => {
  await withDevice("bulk", { size: 4096 }, (s) => {
    for (const st of ALL_STATES.filter((x) => x !== ERROR)) reach(s, st);
  });
});

// ---------------------------------------------------------------------------
// A reset from another open (another process: a borrower through pidfd_getfd, or a
// second fd) ends the holder's session as the kernel does: the driver's reset disables
// every migration file of the device (mtty_reset -> mtty_disable_files; mlx5vf,
// hisi_acc, pds from their reset_done), so the old data_fd answers ENODEV, a pci-family
// device's included (not EIO from its regenerated data).

/** A second open of the holder's device: its fd duplicated and adopted by another kernel (another process). */
function secondOpen(h: HelperSim): HelperSim {
  const dup = host.fcntl(h.fd, F.DUPFD_CLOEXEC, 0);
  const k = new SimKernel(host);
  k.adopt(dup);
  return new HelperSim(k, dup, h.dir);
}

for (
  const [model, family] of [["mtty-2", "mdev"], ["bulk", "mdev"], ["bulk", "pci"], ["xe", "pci"]] as const
) {
  Deno.test(`sim ${model} (${family}): a reset from another open ends the holder's save session: the old data_fd answers ENODEV`, async () => {
    await withStore({ model, family, size: model === "xe" ? 1 << 20 : 64 << 10 }, (dir) => {
      const h = HelperSim.open(dir);
      try {
        const pre = model === "xe" ? -1 : h.set(PRE_COPY);
        if (pre >= 0) h.read(pre, 10);
        h.set(model === "xe" ? STOP : PRE_COPY_P2P);
        const sc = model === "xe" ? h.set(STOP_COPY) : pre;
        if (model !== "xe") h.set(STOP_COPY);
        assertEquals(h.read(sc, 16).length, 16, "the session reads before the reset");
        const other = secondOpen(h);
        other.reset();
        expectErrno(() => h.read(sc, 16), "ENODEV", "read of the old data_fd after the other open's reset");
        expectErrno(() => h.read(sc, 16), "ENODEV", "and again");
        assertEquals(h.state(), RUNNING, "the holder sees RUNNING");
        // A new session from the holder carries the device's data again.
        h.set(STOP);
        const fresh = h.set(STOP_COPY);
        assert(h.drain(fresh).length > 16, "a new session after the reset");
        other.k.close(other.fd);
      } finally {
        h.close();
      }
    });
  });
}

Deno.test("sim mtty-2: a reset from another open during a pre-copy and a resume session answers as mtty (PRECOPY_INFO EINVAL, ENOMEM before ENODEV)", async () => {
  await withStore({ model: "mtty-2" }, (dir) => {
    const h = HelperSim.open(dir);
    try {
      const pre = h.set(PRE_COPY);
      h.read(pre, 10);
      secondOpen(h).reset();
      expectErrno(() => h.read(pre, 16), "ENODEV", "read after the reset");
      // mtty_precopy_ioctl checks the state (RUNNING now) before the disabled file.
      expectErrno(() => h.precopyInfo(pre), "EINVAL", "PRECOPY_INFO after the reset");
      h.set(STOP);
      const res = h.set(RESUMING);
      h.k.write(res, mttyHeader("mtty-2"));
      h.k.write(res, new Uint8Array(6));
      secondOpen(h).reset();
      // mtty_disable_file zeroes the position; the length check (ENOMEM) comes first.
      expectErrno(() => h.k.write(res, new Uint8Array(8)), "ENODEV", "write 8 after the reset");
      expectErrno(() => h.k.write(res, new Uint8Array(200)), "ENOMEM", "write 200 after the reset");
    } finally {
      h.close();
    }
  });
});

Deno.test("sim: `vfio-mig reset --device pid:PID:FD` from another process ends this process's session (ENODEV), pci family too", async () => {
  for (const family of ["mdev", "pci"] as const) {
    await withStore({ model: "bulk", family, size: 1 << 20 }, async (dir) => {
      const h = HelperSim.open(dir);
      try {
        const pre = h.set(PRE_COPY);
        h.read(pre, 4096);
        const r = await new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "--allow-ffi",
            new URL("../../cli.ts", import.meta.url).pathname,
            "reset",
            "--device",
            `pid:${Deno.pid}:${h.fd}`,
          ],
          env: { NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        assertEquals(r.code, 0, new TextDecoder().decode(r.stderr));
        expectErrno(() => h.read(pre, 4096), "ENODEV", `${family}: the holder's read after another process's reset`);
        assertEquals(h.state(), RUNNING);
      } finally {
        h.close();
      }
    });
  }
});
