// The real-kernel suite's shared harness: runs INSIDE the test guest. The checks
// (PASS/FAIL lines and their count), the CLI runner, mtty devices and their UART
// registers. tests/kernel/suite.ts and every group in tests/kernel/groups/ use it.

import { libc } from "../../../ffi/libc.ts";
import { openDevice } from "../../../src/device/open.ts";
import { parseState, stateName } from "../../../src/vfio/state_machine.ts";
import { programPort, readPort, uartRegisters, type UartRw } from "../guest/uart.ts";

export const ROOT = new URL("../../../", import.meta.url).pathname;
export const CLI = `${ROOT}cli.ts`;
export const TYPES = "/sys/class/mdev_bus/mtty/mdev_supported_types";
export const CDEV_MODE = Deno.args.includes("--cdev");
export const tmp = Deno.makeTempDirSync({ dir: "/tmp", prefix: "vfio-mig-kernel-" });

export const counts = { passed: 0, failed: 0, notHere: 0 };
export const extraReport: string[] = [];

/**
 * One check: PASS/FAIL with its time. The custom kernel (--cdev) exists to prove the
 * iommufd cdev path, so there only checks marked `cdev: true` (those whose subject is
 * how a device is opened, borrowed or handed down) run; the others ran on the Debian
 * kernel and say so in one line at the end.
 */
export async function check(
  name: string,
  fn: () => Promise<void> | void,
  opts: { cdev?: boolean } = {},
): Promise<void> {
  if (CDEV_MODE && !opts.cdev) {
    counts.notHere++;
    return;
  }
  const t0 = performance.now();
  try {
    await fn();
    counts.passed++;
    console.log(`PASS ${name} (${((performance.now() - t0) / 1000).toFixed(1)}s)`);
  } catch (e) {
    counts.failed++;
    console.log(`FAIL ${name}: ${e instanceof Error ? e.message : e}`);
  }
}

export function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}

export function eq<T>(got: T, want: T, what: string): void {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}

// ---------------------------------------------------------------------------
// Devices

const created: string[] = [];

/** Creates an mtty mdev of `type`; the suite removes it after the group (removeCreatedMtty). */
export function createMtty(type: "mtty-1" | "mtty-2"): string {
  const uuid = crypto.randomUUID();
  Deno.writeTextFileSync(`${TYPES}/${type}/create`, uuid);
  created.push(uuid);
  return uuid;
}

/** Removes the mtty devices created so far (a device still held open is left, with a note). */
export function removeCreatedMtty(): void {
  for (const uuid of created.splice(0)) {
    try {
      Deno.writeTextFileSync(`/sys/bus/mdev/devices/${uuid}/remove`, "1");
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue; // its group removed it already
      console.log(`note: could not remove mtty ${uuid}: ${e instanceof Error ? e.message : e}`);
    }
  }
}

/** The name a user gives: the UUID, or in --cdev mode the cdev node. */
export function spec(uuid: string): string {
  if (!CDEV_MODE) return uuid;
  const nodes = [...Deno.readDirSync(`/sys/bus/mdev/devices/${uuid}/vfio-dev`)].map((e) => e.name);
  assert(nodes.length === 1, `no vfio-dev node for ${uuid}`);
  return `/dev/vfio/devices/${nodes[0]}`;
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export async function cli(args: string[], opts: { env?: Record<string, string> } = {}): Promise<Run> {
  const out = await new Deno.Command("deno", {
    args: ["run", "--allow-ffi", CLI, ...args],
    env: opts.env,
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

export async function ok(args: string[]): Promise<Run> {
  const r = await cli(args);
  if (r.code !== 0) throw new Error(`vfio-mig ${args.join(" ")} exited ${r.code}: ${r.stderr.trim()}`);
  return r;
}

export async function sh(script: string, env?: Record<string, string>): Promise<Run> {
  const out = await new Deno.Command("sh", { args: ["-c", script], env, stdin: "null" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * The device's migration state, read in this process (the `state` command itself is
 * checked in core.ts; elsewhere a state read is a means, and a CLI start costs tens of
 * seconds under TCG).
 */
export function stateOf(uuid: string): Promise<string> {
  const dev = openDevice(libc(), spec(uuid));
  try {
    return Promise.resolve(stateName(dev.migration.getState()));
  } finally {
    dev.close();
  }
}

/** Puts the device in `state` (a setup step, in this process). */
export function setState(uuid: string, state: string): void {
  const dev = openDevice(libc(), spec(uuid));
  try {
    const r = dev.migration.setState(parseState(state));
    if (r.dataFd !== null) dev.sys.close(r.dataFd);
  } finally {
    dev.close();
  }
}

/** Opens the device through the library to touch its UART registers (BARn = port n). */
export function withDevice<T>(uuid: string, fn: (rw: UartRw) => T): T {
  const sys = libc();
  const dev = openDevice(sys, spec(uuid));
  try {
    return fn(uartRegisters(sys, dev.fd));
  } finally {
    dev.close();
  }
}

export { LSR, SCR, TX } from "../guest/uart.ts";

/** Empties the RX FIFO, then writes the scratch register and bytes into the FIFO (mtty loops TX into RX). */
export function program(uuid: string, port: number, scratch: number, bytes: number[]): void {
  withDevice(uuid, (rw) => programPort(rw, port, scratch, bytes));
}

/** Reads the scratch register and drains the RX FIFO. */
export function readBack(uuid: string, port: number): { scratch: number; fifo: number[] } {
  return withDevice(uuid, (rw) => readPort(rw, port));
}
