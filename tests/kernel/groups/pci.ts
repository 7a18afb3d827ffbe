// A real vfio-pci-core function (Debian kernel): QEMU's ivshmem-plain, two of them, each
// alone behind a root port under the emulated IOMMU, bound by driver_override to the test
// variant driver tests/kernel/ivshmem_mig (migration uAPI v2 over vfio-pci-core). What the
// README says about VFs — reset at first open and last close, a busy function named with
// its holder, borrowing a held fd (--device pid:), load --exec, the config section on
// vfio-pci's config virtualisation, several functions together, check — judged by the
// real kernel. The device state: BAR2's first 64 KiB (written through the BAR region)
// and BAR0's INTRMASK register.

import { SysError } from "../../../ffi/errno.ts";
import { libc } from "../../../ffi/libc.ts";
import { encode, IOCTL, STRUCTS } from "../../../ffi/vfio_uapi.ts";
import { openDevice, type VfioDevice } from "../../../src/device/open.ts";
import { DeviceState, stateName } from "../../../src/vfio/state_machine.ts";
import { SimKernel } from "../../../src/sim/kernel.ts";
import { SimStore } from "../../../src/sim/store.ts";
import { summarizeConfig } from "../../../src/pci/config.ts";
import { assert, CDEV_MODE, check, cli, eq, extraReport, ok, tmp } from "../lib/guest.ts";
import { Holder } from "../lib/holder.ts";
import {
  bind,
  cdevOf,
  checkBusyNamesHolder,
  checkFreshLoad,
  checkFreshSave,
  checkTwoTogether,
  DRIVER,
  driverOf,
  exists,
  hex,
  hexLe16,
  hexOf,
  le16,
  loadExecRead,
  pciCheck,
  pciFunctions,
  unhex,
} from "../lib/pci.ts";
import { qemuAvailable, QemuVm } from "../lib/qemu_vm.ts";

const BAR0 = 0, BAR2 = 2, CONFIG = 7;
const MEM = 65536, CHUNK = 4096;
const STREAM = 16 + (MEM / CHUNK) * (16 + CHUNK) + 16 + 4 + 16; // the driver's MIG_DATA_SIZE

/** ivshmem-plain functions (1af4:1110), by PCI address. */
function ivshmemFunctions(): string[] {
  return pciFunctions("0x1af4", "0x1110");
}

/** 16 recognisable bytes for a seed. */
const pattern = (seed: number) => hex(Array.from({ length: 16 }, (_, i) => (seed * 16 + i * 7 + 1) & 0xff));
/** Where the patterns go: the first chunk, one in the middle, the last bytes of the area. */
const SPOTS = [0, CHUNK * 5 + 100, MEM - 16];
const ZERO = "00".repeat(16);

function writeCmds(seed: number): string[] {
  return SPOTS.map((at, i) => `region-write ${BAR2} ${at} ${pattern(seed + i)}`);
}
function readCmds(): string[] {
  return SPOTS.map((at) => `region-read ${BAR2} ${at} 16`);
}
const want = (seed: number) => SPOTS.map((_, i) => pattern(seed + i));
/** The memory area as the holders see it (lib/pci.ts's shared checks). */
const STATE = { writeCmds, readCmds, want, zero: SPOTS.map(() => ZERO), noun: "pattern", prefix: "pci" };

/** A holder on SPEC writes pattern SEED, and vfio-mig saves it from the holder into FILE. */
async function holderSave(spec: string, seed: number, file: string): Promise<void> {
  const H = await new Holder(spec).ready();
  try {
    for (const c of writeCmds(seed)) await H.ask(c);
    await ok(["save", "--device", `pid:${H.pid}`, file]);
  } finally {
    await H.quit();
  }
}

const PCI_COMMAND_MEMORY = 0x2, PCI_COMMAND_MASTER = 0x4;
/** The idstr of the first device QemuVm passes through (addr 0x1). */
const QEMU_IDSTR = "0000:00:01.0/vfio";

const fns = ivshmemFunctions();
const haveDriver = (() => {
  try {
    return Deno.statSync(`/sys/bus/pci/drivers/${DRIVER}`).isDirectory;
  } catch {
    return false;
  }
})();
if (CDEV_MODE && fns.length >= 2 && haveDriver) {
  // The custom kernel (IOMMUFD, VFIO_DEVICE_CDEV, the variant driver built in): the
  // cdev/iommufd path on the real function. The other checks run on the Debian kernel.
  const [A, B] = fns;
  await check("cdev/iommufd: each function bound has /dev/vfio/devices/vfioN; info through it", async () => {
    for (const f of fns) bind(f);
    const i = JSON.parse((await ok(["info", "--json", "--device", cdevOf(A)])).stdout);
    eq(
      [i.driver, i.migrationFlags, i.dataSize, i.family, i.stateSurvivesClose, i.access],
      [DRIVER, 7, STREAM, "vfio-pci", false, "cdev"],
      "info",
    );
  }, { cdev: true });
  await check(
    "cdev/iommufd: save --device pid:HOLDER of A's cdev, load --exec into B's cdev (read through BAR2); a fresh save through the cdev gets the post-reset state",
    async () => {
      const f = `${tmp}/pci-cdev.bin`;
      await holderSave(cdevOf(A), 90, f);
      const got = await loadExecRead(cdevOf(B), f, readCmds());
      eq(got.answers, want(90), "B's BAR2 through its cdev");
      const s = await cli(["save", "--json", "--device", cdevOf(A), `${tmp}/pci-cdev-fresh.bin`]);
      eq(s.code, 0, `fresh save: ${s.stderr.trim()}`);
      assert(s.stderr.includes("saved post-reset state"), `warning: ${s.stderr.trim()}`);
      const z = await loadExecRead(cdevOf(B), `${tmp}/pci-cdev-fresh.bin`, readCmds());
      eq(z.answers, [ZERO, ZERO, ZERO], "the fresh save's memory area (the first open's reset cleared it)");
    },
    { cdev: true },
  );
}
if (fns.length < 2 || !haveDriver || CDEV_MODE) {
  console.log(
    `group pci: ${CDEV_MODE ? "the group/container checks run on the Debian kernel" : "skipped"} ` +
      `(${fns.length} ivshmem functions; driver ${haveDriver ? "" : "not "}there)`,
  );
} else {
  const [A, B] = fns;
  console.log(`pci functions: A=${A} B=${B} (ivshmem-plain, driver ${DRIVER})`);

  await check(
    "bound by driver_override: each function in its own IOMMU group; migration 0x7, family vfio-pci",
    async () => {
      for (const f of fns) bind(f);
      eq(fns.map(driverOf), fns.map(() => DRIVER), "drivers");
      const groups = fns.map((f) => Deno.readLinkSync(`/sys/bus/pci/devices/${f}/iommu_group`).split("/").pop());
      assert(new Set(groups).size === fns.length, `groups ${groups}`);
      const i = JSON.parse((await ok(["info", "--json", "--device", A])).stdout);
      eq(
        [i.driver, i.migrationFlags, i.dataSize, i.family, i.stateSurvivesClose, i.access],
        [DRIVER, 7, STREAM, "vfio-pci", false, "group"],
        "info",
      );
    },
  );

  // The holder's pattern 20 (pci-20.bin) is used again by the QEMU check.
  await checkFreshSave(
    "fresh save: the first open's reset cleared the function (warning); with keep_on_reset the control keeps it",
    STATE,
    A,
    B,
    "reset_done cleared it",
  );
  await checkFreshLoad(
    "fresh load: undone at exit, and says so; load --exec CMD keeps it (CMD reads it through the BAR)",
    STATE,
    A,
    B,
    "BAR2",
  );

  const H1 = await new Holder(A).ready();
  const H2 = await new Holder(B).ready();
  try {
    await checkBusyNamesHolder("function", A, H1);

    const held = `${tmp}/pci-held.bin`;
    await pciCheck(
      "save --device pid:HOLDER gets the holder's pattern and INTRMASK; load --device pid:HOLDER2 gives them to another function",
      async () => {
        for (const c of writeCmds(30)) await H1.ask(c);
        await H1.ask(`region-write ${BAR0} 0 5a5a0000`);
        await H2.ask(`region-write ${BAR0} 0 00000000`);
        for (const c of writeCmds(99)) await H2.ask(c);
        const s = JSON.parse((await ok(["save", "--json", "--device", `pid:${H1.pid}`, held])).stdout);
        eq([s.finalState, s.warnings.length], ["STOP", 0], "borrowed save");
        eq((await H1.ask("state")).state, "STOP", "H1 sees STOP");
        let refused = "";
        try {
          await H1.ask(`region-write ${BAR2} 0 ff`);
        } catch (e) {
          refused = String(e);
        }
        assert(refused.includes("EBUSY"), `a stopped function refuses BAR2 writes: ${refused || "accepted"}`);
        eq((await H1.ask("set RUNNING")).state, "RUNNING", "H1's fd drives its function");
        const l = JSON.parse((await ok(["load", "--json", "--device", `pid:${H2.pid}`, held])).stdout);
        eq(l.warnings.length, 0, "borrowed load: no warnings");
        eq(await H2.all(readCmds()), want(30), "H2 reads the source's pattern");
        eq((await H2.ask(`region-read ${BAR0} 0 4`)).hex, "5a5a0000", "H2 reads the source's INTRMASK");
        eq(await H1.all(readCmds()), want(30), "H1's function still has its pattern");
        await H2.ask(`region-write ${BAR2} 0 ${pattern(7)}`);
        eq((await H2.ask(`region-read ${BAR2} 0 16`)).hex, pattern(7), "H2's fd still writes");
      },
    );

    await pciCheck(
      "live save (PRE_COPY, PRECOPY_INFO) from pid:HOLDER while it writes; loaded into pid:HOLDER2: equal",
      async () => {
        await H1.ask(`churn ${BAR2} 0 ${MEM}`);
        await new Promise((r) => setTimeout(r, 300));
        const live = `${tmp}/pci-live.bin`;
        const s = JSON.parse(
          (await ok(["save", "--live", "--json", "--max-precopy", "20000", "--device", `pid:${H1.pid}`, live]))
            .stdout,
        );
        const c = await H1.ask("churn-stop");
        assert(
          (c.writes as number) > 0 && (c.refused as number) > 0,
          `churn: ${JSON.stringify(c)} (writes, then refused in STOP)`,
        );
        assert(s.precopyBytes >= 16 + (MEM / CHUNK) * (16 + CHUNK), `pre-copy bytes ${s.precopyBytes}`);
        assert(s.stopCopyBytes > 0, `stop-copy bytes ${s.stopCopyBytes}`);
        eq(s.statesVisited.slice(-3), ["PRE_COPY", "STOP_COPY", "STOP"], "states");
        const src = await H1.all(Array.from({ length: MEM / CHUNK }, (_, i) => `region-read ${BAR2} ${i * CHUNK} 4`));
        await ok(["load", "--device", `pid:${H2.pid}`, live]);
        const dst = await H2.all(Array.from({ length: MEM / CHUNK }, (_, i) => `region-read ${BAR2} ${i * CHUNK} 4`));
        eq(dst, src, "every chunk's counter");
        extraReport.push(
          `pci live save: ${s.precopyBytes} B pre-copy, ${s.stopCopyBytes} B stop-copy, ${c.writes} writes by the holder ` +
            `(last counter ${c.last}), ${c.refused} refused once stopped`,
        );
        await H1.ask("set RUNNING");
      },
    );

    await pciCheck(
      "config section on vfio-pci's virtualisation: load --exec gives the source's command register",
      async () => {
        // Source: memory + bus master + INTx disable; the destination's CMD reads it through vfio-pci.
        await H1.ask(`region-write ${CONFIG} 4 0605`); // 0x0506: MEMORY, MASTER, SERR, INTX_DISABLE
        const srcCmd = (await H1.ask(`region-read ${CONFIG} 4 2`)).hex as string;
        const caps = (await H1.ask(`region-read ${CONFIG} 6 2`)).hex as string; // status: capability list bit
        await H2.quit();
        const file = `${tmp}/pci-cfg.bin`;
        const s = JSON.parse((await ok(["save", "--json", "--resume", "--device", `pid:${H1.pid}`, file])).stdout);
        eq(s.configBytes, 256, "config bytes saved");
        const got = await loadExecRead(B, file, [`region-read ${CONFIG} 4 2`]);
        eq(got.answers, [srcCmd], "command register through vfio-pci after load --exec");
        extraReport.push(
          `pci config: source command ${srcCmd} (LE) read back ${got.answers[0]}; status ${caps}: ivshmem-plain has ` +
            `no MSI or MSI-X capability, the e1000e check exercises them`,
        );
      },
    );

    await checkTwoTogether("functions", STATE, H1, B, `${tmp}/pci-both.bin`);
  } finally {
    await H1.quit();
    await H2.quit().catch(() => {});
  }

  const E = pciFunctions("0x8086", "0x10d3")[0]; // QEMU's e1000e: MSI and MSI-X
  if (E) {
    await pciCheck(
      "config section on an MSI/MSI-X function (e1000e): command, MSI address/data/enable, MSI-X enable and table, source vs after load --exec",
      async () => {
        bind(E);
        const table: string[] = [];
        for (const mode of ["MSI", "MSI-X"] as const) {
          const H = await new Holder(E).ready();
          const file = `${tmp}/e1000e-${mode}.bin`;
          let fields: [string, string][] = [];
          let src: string[] = [];
          try {
            const s = summarizeConfig(unhex((await H.ask(`region-read ${CONFIG} 0 256`)).hex as string));
            assert(s.msi && s.msix, `e1000e's capabilities: ${JSON.stringify(s)}`);
            const msi = s.msi, msix = s.msix;
            fields = [
              ["command", `region-read ${CONFIG} 4 2`],
              ["MSI control", `region-read ${CONFIG} ${msi.offset + 2} 2`],
              ["MSI address", `region-read ${CONFIG} ${msi.offset + 4} 4`],
              ["MSI data", `region-read ${CONFIG} ${msi.offset + (msi.is64bit ? 12 : 8)} 2`],
              ["MSI-X control", `region-read ${CONFIG} ${msix.offset + 2} 2`],
              ["MSI-X table entry 0", `region-read ${msix.table.bar} ${msix.table.offset} 16`],
            ];
            await H.ask(`region-write ${CONFIG} 4 0605`); // 0x0506: MEMORY, MASTER, SERR, INTX_DISABLE
            if (mode === "MSI") {
              await H.ask(`region-write ${CONFIG} ${msi.offset + 4} 0010e0fe`); // 0xfee01000
              await H.ask(`region-write ${CONFIG} ${msi.offset + (msi.is64bit ? 12 : 8)} 4140`); // 0x4041
              await H.ask("irq 1 1"); // VFIO_DEVICE_SET_IRQS: MSI on, as a VMM arms it
              await H.ask(`region-write ${CONFIG} ${msi.offset + 2} ${hexLe16(msi.control | 1)}`);
            } else {
              await H.ask("irq 2 1"); // MSI-X on
            }
            src = await H.all(fields.map(([, c]) => c));
            await ok(["save", "--resume", "--device", `pid:${H.pid}`, file]);
          } finally {
            await H.quit();
          }
          const { answers: got, stderr } = await loadExecRead(E, file, fields.map(([, c]) => c));
          // The tool reads back what vfio-pci kept and says what it did not (stderr, --json notRestored).
          const said = stderr.split("\n").filter((l) => l.includes("not restored: ")).map((l) =>
            l.replace(/.*not restored: /, "").split(":")[0]
          );
          eq(
            said,
            mode === "MSI" ? ["MSI enable", "MSI-X table"] : ["MSI-X enable", "MSI-X table"],
            `${mode}: warnings`,
          );
          fields.forEach(([name], i) =>
            table.push(`${mode} armed: ${name}: source ${src[i]}, after load --exec ${got[i]}`)
          );
          const at = (name: string, from: string[]) => from[fields.findIndex(([n]) => n === name)];
          // What a load can give through vfio-pci (drivers/vfio/pci/vfio_pci_config.c, vfio_pci_rdwr.c):
          eq(le16(at("command", got)) & 0x0506, 0x0506, `${mode}: command register after load --exec`);
          eq(
            at("MSI-X table entry 0", src),
            "ff".repeat(16),
            `${mode}: the MSI-X table through BAR (vfio-pci hides it)`,
          );
          eq(at("MSI-X table entry 0", got), "ff".repeat(16), `${mode}: the MSI-X table after the load`);
          if (mode === "MSI") {
            eq(
              [at("MSI address", got), at("MSI data", got)],
              ["0010e0fe", "4140"],
              "MSI address and data (virtualised)",
            );
            eq(le16(at("MSI control", src)) & 1, 1, "the source's MSI enable (armed, then written)");
            // vfio_msi_config_write clears the enable bit unless this fd armed MSI (SET_IRQS).
            eq(le16(at("MSI control", got)) & 1, 0, "MSI enable after load --exec (not armed by the load)");
          } else {
            eq(le16(at("MSI-X control", src)) >> 15, 1, "the source's MSI-X enable (hardware, read-only)");
            eq(le16(at("MSI-X control", got)) >> 15, 0, "MSI-X enable after load --exec (read-only in vfio-pci)");
          }
        }
        for (const l of table) extraReport.push(`pci e1000e config: ${l}`);
      },
    );
  }

  await pciCheck("check on the function: every conformance row's answer (listed below)", async () => {
    const r = await cli(["check", "--json", "--device", B]);
    const rep = JSON.parse(r.stdout);
    const rows = (rep.checks ?? rep.results ?? []) as { id?: string; name?: string; status: string; detail?: string }[];
    for (const row of rows) {
      extraReport.push(`pci check: ${row.status} ${row.id ?? row.name}${row.detail ? ` — ${row.detail}` : ""}`);
    }
    const failed = rows.filter((c) => c.status === "FAIL");
    eq(r.code, 0, `exit code (failed rows: ${JSON.stringify(failed)}; stderr ${r.stderr.trim()})`);
  });

  const p20 = `${tmp}/pci-20.bin`; // the holder's pattern 20, saved by the fresh-load check
  const qfile = `${tmp}/pci-qemu-migration.bin`; // QEMU's migration of A, written by the first QEMU check
  if (qemuAvailable("10")) {
    await pciCheck(
      "QEMU 10 holds A (-device vfio-pci): stop, load and save --device pid:QEMU, load into B, cont",
      async () => {
        if (!exists(p20)) await holderSave(A, 20, p20); // the check that saves it did not run (PCI_CHECKS)
        const vm = await QemuVm.start({ version: "10", devices: [A] });
        const out = `${tmp}/pci-from-qemu.bin`;
        try {
          const r = await cli(["info", "--device", A]);
          assert(r.code === 3 && r.stderr.includes(`(pid ${vm.pid})`), `EBUSY names QEMU: ${r.stderr.trim()}`);
          await vm.qmp("stop");
          await ok(["load", "--device", `pid:${vm.pid}`, p20]);
          const s = JSON.parse((await ok(["save", "--json", "--resume", "--device", `pid:${vm.pid}`, out])).stdout);
          eq([s.finalState, s.warnings.length], ["RUNNING", 0], "save from QEMU's fd");
          await vm.qmp("cont");
          eq((await vm.qmp("query-status")).status, "running", "QEMU after cont");
          const m = await vm.migrateTo(qfile);
          eq(m.status, "completed", "QEMU migrated the VM with the function to a file");
        } finally {
          await vm.quit().catch(() => vm.kill());
        }
        const got = await loadExecRead(B, out, readCmds());
        eq(got.answers, want(20), "the pattern loaded into QEMU's function, saved from it, read in B");
      },
    );

    await pciCheck(
      "QEMU 10's migration file of A: inspect shows a real PCI function's config section; load --exec into B reads A's pattern",
      async () => {
        const ins = JSON.parse((await ok(["inspect", "--json", qfile])).stdout);
        const d = ins.vfio.find((x: { idstr: string }) => x.idstr === QEMU_IDSTR);
        assert(d, `inspect lists no ${QEMU_IDSTR}: ${JSON.stringify(ins.vfio.map((x: { idstr: string }) => x.idstr))}`);
        eq(d.dataBytes, STREAM, "QEMU's data bytes (the driver's MIG_DATA_SIZE)");
        const c = d.config.decoded;
        eq([c.summary.vendor, c.summary.device, c.express, c.msixTable], [0x1af4, 0x1110, false, null], "config");
        eq(d.config.bytes, 4 + 256 + 16, "config payload: version, 256 bytes of config space, INTx levels, no MSI-X");
        extraReport.push(
          `pci QEMU 10 file: ${d.dataBytes} B data (${d.precopyBytes} pre-copy, ${d.stopCopyBytes} stop-copy), ` +
            `config payload ${d.config.bytes} B, command 0x${c.summary.command.toString(16)}, ` +
            `subsections ${JSON.stringify(c.subsections.map((x: { name: string }) => x.name))}`,
        );
        const got = await loadExecRead(B, qfile, [...readCmds(), `region-read ${CONFIG} 4 2`]);
        eq(got.answers.slice(0, 3), want(20), "B's BAR2 after load --exec of QEMU's file");
        const cmd = c.summary.command & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        eq(
          le16(got.answers[3]) & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER),
          cmd,
          "B's command register (memory, master)",
        );
      },
    );

    await pciCheck(
      "qemu-splice of a vfio-mig save of B into QEMU's file; QEMU 10 migrate-incoming gives A the spliced state (BAR2 as the guest sees it, and saved from QEMU)",
      async () => {
        if (!exists(qfile)) throw new Error("no QEMU migration file: the check before failed");
        const src = `${tmp}/pci-80.bin`;
        await holderSave(B, 80, src);
        const spliced = `${tmp}/pci-spliced.bin`;
        const s = JSON.parse(
          (await ok(["qemu-splice", qfile, "--device-stream", src, "-o", spliced, "--json"])).stdout,
        );
        eq([s.device, s.inserted.bytes, s.warning], [QEMU_IDSTR, STREAM, null], "splice");
        const vm = await QemuVm.start({ version: "10", devices: [A], incoming: true });
        const back = `${tmp}/pci-spliced-back.bin`;
        try {
          await vm.incomingFrom(spliced);
          // The guest's view: BAR2 where the restored config space maps it, read by QEMU (pmemsave).
          const dev = (await vm.qmp("query-pci")).flatMap((b: { devices: unknown[] }) => b.devices)
            .find((x: { id: { vendor: number } }) => x.id.vendor === 0x1af4);
          const bar2 = dev?.regions.find((r: { bar: number }) => r.bar === BAR2);
          assert(bar2 && bar2.address > 0 && bar2.address < 2 ** 52, `BAR2 mapped: ${JSON.stringify(dev?.regions)}`);
          const dump = `${tmp}/pci-bar2.dump`;
          await vm.qmp("pmemsave", { val: bar2.address, size: MEM, filename: dump });
          const mem = Deno.readFileSync(dump);
          eq(SPOTS.map((at) => hexOf(mem.subarray(at, at + 16))), want(80), "BAR2 as QEMU's guest sees it");
          await vm.qmp("stop");
          await ok(["save", "--resume", "--device", `pid:${vm.pid}`, back]);
        } finally {
          await vm.quit().catch(() => vm.kill());
        }
        const got = await loadExecRead(B, back, readCmds());
        eq(got.answers, want(80), "the spliced state saved from QEMU's fd, read in B");
      },
    );
  }

  await pciCheck(
    "simulator (mtty-2 model, family pci) against the real function: every arc, and VFIO_DEVICE_RESET",
    async () => {
      const { exploreArcs } = await import("../../../src/check/arcs.ts");
      const sim = new SimKernel(libc());
      new SimStore(sim, `${tmp}/sim-pci`).create({ model: "mtty-2", family: "pci" });
      const tables = (d: VfioDevice) => {
        try {
          return { arcs: exploreArcs(d).map((r) => JSON.stringify(r)), resets: resetRows(d) };
        } finally {
          d.close();
        }
      };
      const real = tables(openDevice(libc(), B));
      const simt = tables(openDevice(sim, `sim:${tmp}/sim-pci`));
      const diffs: string[] = [];
      real.arcs.forEach((r, i) => r !== simt.arcs[i] && diffs.push(`arc: real ${r} sim ${simt.arcs[i]}`));
      real.resets.forEach((r, i) => r !== simt.resets[i] && diffs.push(`reset: real ${r} sim ${simt.resets[i]}`));
      extraReport.push(
        `pci vs simulator: ${real.arcs.length} arcs and ${real.resets.length} reset rows compared, ${diffs.length} differences`,
      );
      for (const d of diffs) extraReport.push(`pci vs simulator: ${d}`);
      eq(real.arcs.length, simt.arcs.length, "arc table sizes");
      assert(diffs.length === 0, `differences:\n  ${diffs.join("\n  ")}`);
    },
  );
}

/** One call's outcome: bytes moved, "ok", or the errno name. */
function outcome(fn: () => number | void): string {
  try {
    const r = fn();
    return typeof r === "number" ? String(r) : "ok";
  } catch (e) {
    if (e instanceof SysError) return e.code;
    throw e;
  }
}

/**
 * VFIO_DEVICE_RESET on `d` (vfio-pci-core: pci_try_reset_function -> reset_done): the state
 * after a reset from PRE_COPY, STOP_COPY and RESUMING, and what the data_fd of that
 * session answers afterwards (read or write, PRECOPY_INFO). The device ends RUNNING.
 */
function resetRows(d: VfioDevice): string[] {
  const rows: string[] = [];
  const m = d.migration;
  const { RUNNING, STOP, PRE_COPY, STOP_COPY, RESUMING } = DeviceState;
  const info = () => d.sys.ioctl(fd, IOCTL.MIG_GET_PRECOPY_INFO, encode(STRUCTS.vfio_precopy_info, { argsz: 24 }));
  let fd = -1;
  for (const [target, via] of [[PRE_COPY, RUNNING], [STOP_COPY, STOP], [RESUMING, STOP]] as const) {
    m.reset();
    if (via === STOP) m.setState(STOP, RUNNING);
    const r = m.setState(target, via);
    fd = r.dataFd ?? -1;
    const name = stateName(target);
    rows.push(`${name}: data_fd ${fd >= 0 ? "yes" : "no"}`);
    if (target !== RESUMING) {
      rows.push(`${name}: read before reset ${outcome(() => d.sys.read(fd, new Uint8Array(16)))}`);
    }
    rows.push(`${name}: reset ${outcome(() => m.reset())}, state ${stateName(m.getState())}`);
    if (target === RESUMING) {
      rows.push(`${name}: write after reset ${outcome(() => d.sys.write(fd, new Uint8Array(16)))}`);
    } else rows.push(`${name}: read after reset ${outcome(() => d.sys.read(fd, new Uint8Array(16)))}`);
    rows.push(`${name}: PRECOPY_INFO after reset ${outcome(info)}`);
    d.sys.close(fd);
  }
  m.reset();
  rows.push(`final state ${stateName(m.getState())}`);
  return rows;
}
