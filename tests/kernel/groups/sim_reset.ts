// The simulator's mtty against the real one, for what a reset does (mtty_reset in
// samples/vfio-mdev/mtty.c: a deferred reset that forces RUNNING and disables the open
// migration files, f_pos back to 0, the UART registers kept) and for what the old data_fd
// answers after it: the same table of outcomes, row by row, from both devices.
//
// Imported by tests/kernel/suite.ts inside the guest; `deno run -A
// tests/kernel/groups/sim_reset.ts` runs this group alone (in the guest).

import { libc } from "../../../ffi/libc.ts";
import { SysError } from "../../../ffi/errno.ts";
import { openDevice, type VfioDevice } from "../../../src/device/open.ts";
import { DeviceState, stateName, supportedStates } from "../../../src/vfio/state_machine.ts";
import { SimKernel } from "../../../src/sim/kernel.ts";
import { SimStore } from "../../../src/sim/store.ts";

const { STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY } = DeviceState;

/** One call's outcome: the bytes it moved, "ok", or the errno name. */
function outcome(fn: () => number | void): string {
  try {
    const r = fn();
    return typeof r === "number" ? String(r) : "ok";
  } catch (e) {
    if (e instanceof SysError) return e.code;
    throw e;
  }
}

/** Port 0's UART scratch register (BAR0 offset 7; region 0 starts at 0 in both). */
function scratch(d: VfioDevice, v?: number): number {
  const b = new Uint8Array([v ?? 0]);
  if (v === undefined) d.sys.pread(d.fd, b, 7);
  else d.sys.pwrite(d.fd, b, 7);
  return b[0];
}

/**
 * What a reset does on `d`, as rows "case: outcome": the state after a reset from every
 * supported state; a save session's data_fd after a reset in PRE_COPY and in STOP_COPY
 * (read, PRECOPY_INFO); a resume session's (write within and beyond the data size);
 * the registers across a reset; a session after it. The device ends RUNNING.
 */
export function resetTable(d: VfioDevice): string[] {
  const rows: string[] = [];
  const m = d.migration;
  const row = (name: string, value: string | number) => rows.push(`${name}: ${value}`);
  const reach = (s: DeviceState) => {
    m.reset();
    const r = m.setState(s, RUNNING);
    if (r.dataFd !== null) d.sys.close(r.dataFd);
  };
  for (const s of supportedStates(m.migrationFlags())) {
    if (s === RESUMING) {
      m.reset();
      m.setState(STOP, RUNNING);
      const r = m.setState(RESUMING, STOP);
      if (r.dataFd !== null) d.sys.close(r.dataFd);
    } else reach(s);
    m.reset();
    row(`reset from ${stateName(s)}: state`, stateName(m.getState()));
  }
  const read = (fd: number, n: number) => () => d.sys.read(fd, new Uint8Array(n));
  const write = (fd: number, n: number) => () => d.sys.write(fd, new Uint8Array(n));
  const info = (fd: number) => () => void m.precopyInfo(fd);

  // A save session in PRE_COPY, reset after a partial read.
  m.reset();
  let fd = m.setState(PRE_COPY, RUNNING).dataFd!;
  row("PRE_COPY: read 10 before the reset", outcome(read(fd, 10)));
  m.reset();
  row("PRE_COPY: state after the reset", stateName(m.getState()));
  row("PRE_COPY: read after the reset", outcome(read(fd, 16)));
  row("PRE_COPY: PRECOPY_INFO after the reset", outcome(info(fd)));
  row("PRE_COPY: read again", outcome(read(fd, 16)));
  d.sys.close(fd);

  // A save session in STOP_COPY (its header is written back below).
  m.setState(STOP, RUNNING);
  fd = m.setState(STOP_COPY, STOP).dataFd!;
  const header = new Uint8Array(24);
  row("STOP_COPY: read 24 before the reset", outcome(() => d.sys.read(fd, header)));
  m.reset();
  row("STOP_COPY: state after the reset", stateName(m.getState()));
  row("STOP_COPY: read after the reset", outcome(read(fd, 16)));
  row("STOP_COPY: PRECOPY_INFO after the reset", outcome(info(fd)));
  d.sys.close(fd);

  // A resume session: mtty zeroes the file position when it disables the file, and
  // checks the length (ENOMEM) before the disabled flag (ENODEV).
  m.setState(STOP, RUNNING);
  fd = m.setState(RESUMING, STOP).dataFd!;
  row("RESUMING: write the header before the reset", outcome(() => d.sys.write(fd, header)));
  row("RESUMING: write 6 before the reset", outcome(write(fd, 6)));
  m.reset();
  row("RESUMING: state after the reset", stateName(m.getState()));
  row("RESUMING: write 8 after the reset", outcome(write(fd, 8)));
  row("RESUMING: write 90 after the reset", outcome(write(fd, 90)));
  row("RESUMING: write 200 after the reset", outcome(write(fd, 200)));
  d.sys.close(fd);

  // Leaving a session (no reset) disables its file too.
  fd = m.setState(PRE_COPY, RUNNING).dataFd!;
  m.setState(RUNNING, PRE_COPY);
  row("PRE_COPY -> RUNNING: read", outcome(read(fd, 16)));
  row("PRE_COPY -> RUNNING: PRECOPY_INFO", outcome(info(fd)));
  d.sys.close(fd);

  // The UART registers survive the reset; a new session carries all the data.
  scratch(d, 0x5a);
  m.reset();
  row("scratch register after a reset", `0x${scratch(d).toString(16)}`);
  m.setState(STOP, RUNNING);
  fd = m.setState(STOP_COPY, STOP).dataFd!;
  let total = 0;
  for (;;) {
    const n = d.sys.read(fd, new Uint8Array(4096));
    if (n === 0) break;
    total += n;
  }
  d.sys.close(fd);
  row("a session after the reset: bytes", total);
  m.setState(RUNNING, STOP);
  return rows;
}

/** The same table from the simulator's mtty-2 (a fresh device in `dir`). */
export function simResetTable(dir: string): string[] {
  const sys = new SimKernel(libc());
  new SimStore(sys, dir).create({ model: "mtty-2" });
  const d = openDevice(sys, `sim:${dir}`);
  try {
    return resetTable(d);
  } finally {
    d.close();
  }
}

if (Deno.env.get("VFIO_MIG_KERNEL_GUEST") === "1") {
  const g: typeof import("../lib/guest.ts") = await import("../lib/guest.ts");
  const uuid = g.createMtty("mtty-2");
  await g.check("simulator conformance: reset semantics and the data_fd's answers after a reset", () => {
    const real = openDevice(libc(), g.spec(uuid));
    let realRows: string[];
    try {
      realRows = resetTable(real);
    } finally {
      real.close();
    }
    const simRows = simResetTable(`${g.tmp}/sim-reset-mtty2`);
    const diffs = realRows.map((r, i) => r === simRows[i] ? null : `real "${r}", sim "${simRows[i]}"`)
      .filter((x) => x !== null);
    g.extraReport.push(`reset table: ${realRows.length} rows compared, ${diffs.length} differences`);
    g.eq(simRows.length, realRows.length, "rows");
    g.assert(diffs.length === 0, `differences:\n  ${diffs.join("\n  ")}`);
  }, { cdev: true });

  if (import.meta.main) {
    for (const line of g.extraReport) console.log(line);
    console.log(`kernel: ${g.counts.passed} passed, ${g.counts.failed} failed`);
    Deno.exit(g.counts.failed === 0 ? 0 : 1);
  }
}
