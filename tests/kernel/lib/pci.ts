// Helpers of the groups that drive vfio-mig on real PCI functions bound to the test
// variant driver tests/kernel/ivshmem_mig (groups/pci.ts: ivshmem-plain and e1000e PFs;
// groups/vf.ts: igb SR-IOV VFs): finding and binding functions, holder.ts scripts, the
// `load --exec` reader, hex helpers, the VFIO_MIG_PCI_ONLY filter.

import { assert, check, cli, eq, ok, sh, tmp } from "./guest.ts";
import { HOLDER, Holder } from "./holder.ts";

/** The test variant driver (tests/kernel/ivshmem_mig/ivshmem_vfio_pci.c) and its module parameters. */
export const DRIVER = "ivshmem_vfio_pci";
export const PARAMS = "/sys/module/ivshmem_vfio_pci/parameters";

/** The functions with these vendor and device ids ("0x8086"), by PCI address. */
export function pciFunctions(vendor: string, device: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync("/sys/bus/pci/devices")) {
    const d = `/sys/bus/pci/devices/${e.name}`;
    try {
      if (
        Deno.readTextFileSync(`${d}/vendor`).trim() === vendor &&
        Deno.readTextFileSync(`${d}/device`).trim() === device
      ) {
        out.push(e.name);
      }
    } catch { /* not a function we know */ }
  }
  return out.sort();
}

/** The name of the driver bound to the function, or null. */
export function driverOf(bdf: string): string | null {
  try {
    return Deno.readLinkSync(`/sys/bus/pci/devices/${bdf}/driver`).split("/").pop()!;
  } catch {
    return null;
  }
}

/** Binds by driver_override (default: the test variant driver), as an operator binds a variant driver. */
export function bind(bdf: string, driver = DRIVER): void {
  if (driverOf(bdf) === driver) return;
  const d = `/sys/bus/pci/devices/${bdf}`;
  if (driverOf(bdf)) Deno.writeTextFileSync(`${d}/driver/unbind`, bdf);
  Deno.writeTextFileSync(`${d}/driver_override`, driver);
  Deno.writeTextFileSync("/sys/bus/pci/drivers_probe", bdf);
}

/** Sets one of the driver's planted-defect parameters (off by default). */
export function setParam(name: string, v: boolean): void {
  Deno.writeTextFileSync(`${PARAMS}/${name}`, v ? "1" : "0");
}

export const hex = (b: number[]) => b.map((x) => x.toString(16).padStart(2, "0")).join("");
export const hexOf = (b: Uint8Array) => hex([...b]);
export const unhex = (h: string) => new Uint8Array((h.match(/../g) ?? []).map((x) => parseInt(x, 16)));
export const hexLe16 = (n: number) => hex([n & 0xff, n >> 8]);
/** A little-endian 16-bit value from its hex bytes. */
export const le16 = (h: string) => parseInt(h.slice(2, 4) + h.slice(0, 2), 16);
/** A little-endian 32-bit value as hex bytes, and back. */
export const hexLe32 = (n: number) => hex([n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24]);
export const le32 = (h: string) => parseInt(h.slice(6, 8) + h.slice(4, 6) + h.slice(2, 4) + h.slice(0, 2), 16);

export function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** A shell line running holder.ts on SPEC (a fresh open, or fd:N) with these commands, then quit. */
export function holderScript(spec: string, cmds: string[]): string {
  const input = [...cmds, "quit"].join("\\n");
  return `printf '${input}\\n' | deno run --allow-ffi ${HOLDER} ${spec}`;
}

/** The `hex` of each answer of a holderScript's output ("" for answers without one); throws a holder error. */
export function hexAnswers(stdout: string): string[] {
  return stdout.trim().split("\n").slice(1).map((l) => JSON.parse(l)).map((j) => {
    if (j.error) throw new Error(`holder: ${j.error}`);
    return j.hex ?? "";
  });
}

/**
 * VFIO_MIG_PCI_ONLY=WORD,WORD (e.g. QEMU): only the checks whose name has one of the
 * words (case-insensitive), besides the binding one; to work on a few checks in one guest.
 */
const ONLY = Deno.env.get("VFIO_MIG_PCI_ONLY")?.toLowerCase().split(",").filter((w) => w);
const wanted = (name: string) => !ONLY || ONLY.some((w) => name.toLowerCase().includes(w));
export function pciCheck(name: string, fn: () => Promise<void>): Promise<void> | void {
  if (wanted(name)) return check(name, fn);
}

/** load --device DST FILE --exec (holder.ts on the handed-down fd reads CMDS): the answers. */
export async function loadExecRead(
  dst: string,
  file: string,
  cmds: string[],
): Promise<{ answers: string[]; stderr: string }> {
  const r = await cli([
    "load",
    "--device",
    dst,
    file,
    "--exec",
    "sh",
    "-c",
    holderScript("fd:$VFIO_MIG_DEVICE_FD", cmds),
  ]);
  if (r.code !== 0) throw new Error(`load --exec exited ${r.code}: ${r.stderr.trim()}`);
  return { answers: hexAnswers(r.stdout).filter((x) => x !== ""), stderr: r.stderr };
}

/** /dev/vfio/devices/vfioN of a function bound to a VFIO driver (the custom kernel's cdev). */
export function cdevOf(bdf: string): string {
  const nodes = [...Deno.readDirSync(`/sys/bus/pci/devices/${bdf}/vfio-dev`)].map((e) => e.name);
  assert(nodes.length === 1, `vfio-dev nodes of ${bdf}: ${nodes}`);
  return `/dev/vfio/devices/${nodes[0]}`;
}

/**
 * A group's device state as its holders see it: the commands that write the state for a
 * seed, the reads that show it, and what those reads answer after writeCmds(seed)
 * (pci: ivshmem's BAR2 pattern; vf: the igb VF's queue registers).
 */
export interface StateProfile {
  writeCmds(seed: number): string[];
  readCmds(): string[];
  want(seed: number): string[];
  /** What readCmds() answers on a reset function (the driver cleared its state). */
  zero: string[];
  /** The state's name in messages ("pattern", "registers"), and the file names' prefix ("pci", "vf"). */
  noun: string;
  prefix: string;
}

/**
 * A fresh `save` of `a` gets the state the first open's reset left (vfio-pci-core's
 * pci_try_reset_function, the driver's reset_done) and says so, read back through `b`
 * by `load --exec`. The control first: with the driver's keep_on_reset a holder's
 * seed-10 state survives into the fresh save. `rewrite`: a seed a holder writes (and
 * exits) right before the fresh save, as the control's did. Returns the fresh save's file.
 */
export async function checkFreshSave(
  name: string,
  p: StateProfile,
  a: string,
  b: string,
  cleared: string,
  rewrite?: number,
): Promise<string> {
  const file = `${tmp}/${p.prefix}-fresh.bin`;
  await pciCheck(name, async () => {
    setParam("keep_on_reset", true);
    try {
      const r = await sh(holderScript(a, p.writeCmds(10)));
      eq(r.code, 0, `holder: ${r.stderr}`);
      const s = await cli(["save", "--json", "--device", a, `${tmp}/${p.prefix}-kept.bin`]);
      eq(s.code, 0, `save (control): ${s.stderr.trim()}`);
      const kept = await loadExecRead(b, `${tmp}/${p.prefix}-kept.bin`, p.readCmds());
      eq(kept.answers, p.want(10), `with keep_on_reset the fresh save got the old ${p.noun} (the control)`);
    } finally {
      setParam("keep_on_reset", false);
    }
    if (rewrite !== undefined) {
      const r = await sh(holderScript(a, p.writeCmds(rewrite)));
      eq(r.code, 0, `holder: ${r.stderr}`);
    }
    const s = await cli(["save", "--json", "--device", a, file]);
    eq(s.code, 0, `save: ${s.stderr.trim()}`);
    const j = JSON.parse(s.stdout);
    assert(
      j.warnings.some((w: string) => w.includes("saved post-reset state")) &&
        s.stderr.includes("saved post-reset state"),
      `warning: ${s.stderr.trim()}`,
    );
    const got = await loadExecRead(b, file, p.readCmds());
    eq(got.answers, p.zero, `the fresh save's ${p.noun} (${cleared})`);
  });
  return file;
}

/**
 * A fresh `load` into `b` of a holder's seed-20 state of `a` is undone when vfio-mig
 * exits (the last close resets a vfio-pci function) and says so; `load --exec CMD` keeps
 * it for CMD, which reads it through `bar`. Returns the saved file (`PREFIX-20.bin`).
 */
export async function checkFreshLoad(
  name: string,
  p: StateProfile,
  a: string,
  b: string,
  bar: string,
): Promise<string> {
  const file = `${tmp}/${p.prefix}-20.bin`;
  await pciCheck(name, async () => {
    const h = await new Holder(a).ready();
    try {
      for (const c of p.writeCmds(20)) await h.ask(c);
      await ok(["save", "--device", `pid:${h.pid}`, file]);
    } finally {
      await h.quit();
    }
    const l = await cli(["load", "--json", "--device", b, file]);
    eq(l.code, 0, `load: ${l.stderr.trim()}`);
    assert(l.stderr.includes("the loaded state is lost when vfio-mig exits"), `warning: ${l.stderr.trim()}`);
    const after = await sh(holderScript(b, p.readCmds()));
    eq(hexAnswers(after.stdout).filter((x) => x), p.zero, "B after the fresh load's exit");
    const kept = await loadExecRead(b, file, p.readCmds());
    eq(kept.answers, p.want(20), `what CMD read through ${bar} after load --exec`);
    assert(!kept.stderr.includes("the loaded state is lost"), `no loss warning with --exec: ${kept.stderr.trim()}`);
  });
  return file;
}

/** A held function: a fresh open of `spec` fails EBUSY (exit 3) naming holder `h` and the borrow. */
export function checkBusyNamesHolder(what: string, spec: string, h: Holder): Promise<void> | void {
  return pciCheck(`a held ${what}: a fresh open's EBUSY names the holder`, async () => {
    const r = await cli(["info", "--device", spec]);
    eq(r.code, 3, "exit code");
    assert(
      r.stderr.includes(`is held by deno (pid ${h.pid}); to save its state while it is paused: --device pid:${h.pid}`),
      `message: ${r.stderr.trim()}`,
    );
  });
}

/**
 * Two functions saved in one stream (the v2 FSM's RUNNING_P2P visited) from holder `h1`
 * and a new holder of `spec2`, changed, loaded back together: each gets its own state.
 */
export function checkTwoTogether(
  what: string,
  p: StateProfile,
  h1: Holder,
  spec2: string,
  file: string,
): Promise<void> | void {
  return pciCheck(`two ${what} saved together (P2P) and loaded together, each gets its own`, async () => {
    const h3 = await new Holder(spec2).ready();
    try {
      for (const c of p.writeCmds(40)) await h1.ask(c);
      for (const c of p.writeCmds(50)) await h3.ask(c);
      const s = JSON.parse(
        (await ok(["save", "--json", "--resume", "--device", `pid:${h1.pid}`, "--device", `pid:${h3.pid}`, file]))
          .stdout,
      );
      assert(JSON.stringify(s).includes("RUNNING_P2P"), `P2P visited: ${JSON.stringify(s.statesVisited ?? s)}`);
      for (const c of p.writeCmds(60)) await h1.ask(c);
      for (const c of p.writeCmds(70)) await h3.ask(c);
      await ok(["load", "--device", `pid:${h1.pid}`, "--device", `pid:${h3.pid}`, file]);
      eq(await h1.all(p.readCmds()), p.want(40), "A");
      eq(await h3.all(p.readCmds()), p.want(50), "B");
    } finally {
      await h3.quit();
    }
  });
}
