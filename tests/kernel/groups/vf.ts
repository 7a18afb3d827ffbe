// A real SR-IOV virtual function (the VF lab: tests/kernel/run.sh --vf, Debian kernel,
// QEMU 10 as the outer QEMU): QEMU's igb PF (82576, 8086:10c9) on the kernel's own igb
// driver, as an operator's PF is on its vendor driver (mlx5_core with mlx5-vfio-pci on
// the VFs), two of its VFs (8086:10ca) enabled with sriov_numvfs, with the VF driver's
// autoprobe off, and bound by driver_override to the test variant driver
// tests/kernel/ivshmem_mig (migration uAPI v2 over vfio-pci-core). What the README says
// about VFs — the reset at first open is an FLR, a busy VF named with its holder,
// borrowing a held fd (--device pid:), load --exec, the config section on vfio-pci's
// virtualisation of a VF (memory enable, BARs, no INTx), two VFs together, check —
// judged by the real kernel. The device state: the VF's queue 0 registers RDBAL, RDBAH,
// RDLEN, TDBAL, TDBAH, TDLEN, written and read through BAR0 (ivshmem_mig/README.md).
// Without an igb PF (every other guest) the group skips itself.

import { assert, CDEV_MODE, cli, eq, extraReport, ok, tmp } from "../lib/guest.ts";
import { Holder } from "../lib/holder.ts";
import {
  bind,
  checkBusyNamesHolder,
  checkFreshLoad,
  checkFreshSave,
  checkTwoTogether,
  DRIVER,
  driverOf,
  exists,
  hexAnswers,
  hexLe32,
  holderScript,
  le16,
  le32,
  loadExecRead,
  pciCheck,
  pciFunctions,
} from "../lib/pci.ts";

const BAR0 = 0, CONFIG = 7;
/** The VF's queue 0 registers through BAR0: RDBAL0, RDBAH0, RDLEN0 at 0x2800; TDBAL0, TDBAH0, TDLEN0 at 0x3800. */
const RX = 0x2800, TX = 0x3800;
const AREA = 24; // six 32-bit registers: the driver's one chunk
const STREAM = 16 + (16 + AREA) + 16 + 4 + 16; // the driver's MIG_DATA_SIZE for a VF
const PCI_COMMAND_MEMORY = 0x2;

/**
 * Six register values for a seed, as QEMU's igb stores them (hw/net/igb_core.c: a ring's
 * base address low keeps bits 31:7, its length bits 19:7; the high halves are plain): a
 * pattern the device keeps as written. RX registers then TX registers, each 12 bytes of hex.
 */
function values(seed: number): [string, string] {
  const rx = [0x10000000 | (seed << 12), 0x00a00000 + seed, 0x80 * (seed + 1)];
  const tx = [0x20000000 | (seed << 12), 0x00b00000 + seed, 0x80 * (seed + 2)];
  return [rx.map(hexLe32).join(""), tx.map(hexLe32).join("")];
}
const writeCmds = (seed: number) => {
  const [rx, tx] = values(seed);
  return [`region-write ${BAR0} ${RX} ${rx}`, `region-write ${BAR0} ${TX} ${tx}`];
};
const readCmds = () => [`region-read ${BAR0} ${RX} 12`, `region-read ${BAR0} ${TX} 12`];
const want = (seed: number) => values(seed);
const ZERO = ["00".repeat(12), "00".repeat(12)];
/** The queue registers as the holders see them (lib/pci.ts's shared checks). */
const STATE = { writeCmds, readCmds, want, zero: ZERO, noun: "registers", prefix: "vf" };

const sysfs = (bdf: string, f: string) => Deno.readTextFileSync(`/sys/bus/pci/devices/${bdf}/${f}`).trim();
const link = (bdf: string, f: string) => Deno.readLinkSync(`/sys/bus/pci/devices/${bdf}/${f}`).split("/").pop()!;

/** The PF's VFs, enabled as an operator does: the VF driver's autoprobe off, then sriov_numvfs. */
function enableVfs(pf: string, n: number): string[] {
  if (Number(sysfs(pf, "sriov_numvfs")) !== n) {
    Deno.writeTextFileSync(`/sys/bus/pci/devices/${pf}/sriov_drivers_autoprobe`, "0");
    if (Number(sysfs(pf, "sriov_numvfs")) !== 0) Deno.writeTextFileSync(`/sys/bus/pci/devices/${pf}/sriov_numvfs`, "0");
    Deno.writeTextFileSync(`/sys/bus/pci/devices/${pf}/sriov_numvfs`, String(n));
  }
  return Array.from({ length: n }, (_, i) => link(pf, `virtfn${i}`));
}

const PF = pciFunctions("0x8086", "0x10c9")[0];
if (!PF || CDEV_MODE) {
  console.log(
    `group vf: skipped (${CDEV_MODE ? "the VF lab runs the Debian kernel" : "no igb PF: the VF lab is run.sh --vf"})`,
  );
} else {
  let vfs: string[] = [];
  await pciCheck(
    "SR-IOV: the igb PF on igb, 2 VFs (8086:10ca) bound by driver_override, own IOMMU groups, reset_method flr; info: migration 0x7, MIG_DATA_SIZE 92, family vfio-pci",
    async () => {
      eq(driverOf(PF), "igb", "the PF's driver");
      vfs = enableVfs(PF, 2);
      for (const f of vfs) bind(f);
      eq(vfs.map(driverOf), [DRIVER, DRIVER], "the VFs' driver");
      eq(vfs.map((f) => sysfs(f, "device")), ["0x10ca", "0x10ca"], "VF device ids");
      eq(vfs.map((f) => link(f, "physfn")), [PF, PF], "physfn");
      eq(vfs.map((f) => sysfs(f, "reset_method")), ["flr", "flr"], "reset_method");
      const groups = [PF, ...vfs].map((f) => link(f, "iommu_group"));
      assert(new Set(groups).size === 3, `IOMMU groups of the PF and the VFs: ${groups}`);
      const i = JSON.parse((await ok(["info", "--json", "--device", vfs[0]])).stdout);
      eq(
        [i.driver, i.migrationFlags, i.dataSize, i.family, i.stateSurvivesClose, i.access],
        [DRIVER, 7, STREAM, "vfio-pci", false, "group"],
        "info",
      );
      console.log(`vf functions: PF=${PF} (igb) A=${vfs[0]} B=${vfs[1]} (driver ${DRIVER}), groups ${groups}`);
    },
  );
  if (vfs.length !== 2) { // the binding check was filtered out or failed
    vfs = enableVfs(PF, 2);
    for (const f of vfs) bind(f);
  }
  const [A, B] = vfs;

  // QEMU's igb_core_vf_reset disables the VF's queues and keeps their registers; a real
  // VF loses them at FLR, so the driver clears them (keep_on_reset: it does not).
  await checkFreshSave(
    "VF fresh save: the first open's FLR state (registers cleared, warning); with keep_on_reset QEMU's FLR keeps them (the control)",
    STATE,
    A,
    B,
    "cleared at the FLR",
    11,
  );
  await checkFreshLoad(
    "VF fresh load: undone at exit, and says so; load --exec CMD keeps it (CMD reads the registers through BAR0)",
    STATE,
    A,
    B,
    "BAR0",
  );

  const H1 = await new Holder(A).ready();
  const H2 = await new Holder(B).ready();
  try {
    await checkBusyNamesHolder("VF", A, H1);

    await pciCheck(
      "VF save --device pid:HOLDER gets the holder's registers (a stopped VF refuses BAR0 writes); load --device pid:HOLDER2 gives them to the other VF",
      async () => {
        for (const c of writeCmds(30)) await H1.ask(c);
        for (const c of writeCmds(99)) await H2.ask(c);
        const held = `${tmp}/vf-held.bin`;
        const s = JSON.parse((await ok(["save", "--json", "--device", `pid:${H1.pid}`, held])).stdout);
        eq([s.finalState, s.warnings.length], ["STOP", 0], "borrowed save");
        eq((await H1.ask("state")).state, "STOP", "H1 sees STOP");
        let refused = "";
        try {
          await H1.ask(`region-write ${BAR0} ${RX} 00000000`);
        } catch (e) {
          refused = String(e);
        }
        assert(refused.includes("EBUSY"), `a stopped VF refuses BAR0 writes: ${refused || "accepted"}`);
        eq((await H1.ask("set RUNNING")).state, "RUNNING", "H1's fd drives its VF");
        const l = JSON.parse((await ok(["load", "--json", "--device", `pid:${H2.pid}`, held])).stdout);
        // The VF has MSI-X: its table is the VMM's to restore (as on the pci group's e1000e).
        eq(
          l.warnings.map((w: string) => w.replace(/.*not restored: /, "").split(":")[0]),
          ["MSI-X table"],
          `borrowed load: warnings ${JSON.stringify(l.warnings)}`,
        );
        eq(await H2.all(readCmds()), want(30), "H2 reads the source's registers");
        eq(await H1.all(readCmds()), want(30), "H1's VF still has its registers");
        await H2.ask(writeCmds(7)[0]);
        eq((await H2.ask(readCmds()[0])).hex, want(7)[0], "H2's fd still writes");
      },
    );

    await pciCheck(
      "VF live save (PRE_COPY, PRECOPY_INFO) from pid:HOLDER while it writes RDBAH0; loaded into pid:HOLDER2: equal",
      async () => {
        await H1.ask(`churn ${BAR0} ${RX + 4} 4`);
        await new Promise((r) => setTimeout(r, 300));
        const live = `${tmp}/vf-live.bin`;
        const s = JSON.parse(
          (await ok(["save", "--live", "--json", "--max-precopy", "2000", "--device", `pid:${H1.pid}`, live])).stdout,
        );
        const c = await H1.ask("churn-stop");
        assert(
          (c.writes as number) > 0 && (c.refused as number) > 0,
          `churn: ${JSON.stringify(c)} (writes, then refused in STOP)`,
        );
        assert(s.precopyBytes >= 16 + 16 + AREA, `pre-copy bytes ${s.precopyBytes}`);
        assert(s.stopCopyBytes > 0, `stop-copy bytes ${s.stopCopyBytes}`);
        eq(s.statesVisited.slice(-3), ["PRE_COPY", "STOP_COPY", "STOP"], "states");
        const src = await H1.all(readCmds());
        eq(le32(src[0].slice(8, 16)), c.last, "the source's RDBAH0: the holder's last counter");
        await ok(["load", "--device", `pid:${H2.pid}`, live]);
        eq(await H2.all(readCmds()), src, "the six registers");
        extraReport.push(
          `vf live save: ${s.precopyBytes} B pre-copy, ${s.stopCopyBytes} B stop-copy, ${c.writes} writes of RDBAH0 ` +
            `by the holder (last ${c.last}), ${c.refused} refused once stopped`,
        );
        await H1.ask("set RUNNING");
      },
    );

    await pciCheck(
      "config section of a VF through vfio-pci: virtual memory enable (BAR0 still decodes with it off), BARs, no INTx; load --exec gives the source's command register",
      async () => {
        const rows: string[] = [];
        // INTx: vfio-pci gives a VF none (vfio_pci_get_irq_count) and a pin of 0 (vfio_config_init).
        const intx = await H1.ask("irq-info 0");
        eq(intx.count, 0, "VFIO_DEVICE_GET_IRQ_INFO(INTx) count");
        eq((await H1.ask(`region-read ${CONFIG} 61 1`)).hex, "00", "interrupt pin through vfio-pci");
        const msix = await H1.ask("irq-info 2");
        rows.push(`INTx: GET_IRQ_INFO count ${intx.count}, pin 0; MSI-X: count ${msix.count}`);
        // Memory enable: a VF's is the PF's VF MSE (no_command_memory): with the bit off,
        // vfio-pci does not refuse BAR0 (a PF's region read would fail with EIO).
        for (const c of writeCmds(41)) await H1.ask(c);
        await H1.ask(`region-write ${CONFIG} 4 0400`); // 0x0004: bus master on, memory off
        const off = (await H1.ask(`region-read ${CONFIG} 4 2`)).hex as string;
        eq(le16(off) & PCI_COMMAND_MEMORY, 0, "memory enable read back after writing it off");
        const hwOff = Deno.readFileSync(`/sys/bus/pci/devices/${A}/config`).subarray(4, 6);
        const whileOff = await H1.all(readCmds()); // vfio-pci: no EIO for a VF
        await H1.ask(`region-write ${CONFIG} 4 0600`); // 0x0006: memory and master on again
        eq(await H1.all(readCmds()), want(41), "the registers with memory enable on again");
        rows.push(
          `command: wrote 0x0004 (memory off), vfio-pci reads 0x${le16(off).toString(16)}, the VF's own register ` +
            `0x${(hwOff[0] | hwOff[1] << 8).toString(16)}; BAR0 through vfio-pci meanwhile: no error, ` +
            `${whileOff.join(" ") === want(41).join(" ") ? "the registers" : `read ${whileOff.join(" ")}`}`,
        );
        // BARs: a VF's BAR registers read 0 (the PF's SR-IOV BARs place them); vfio-pci's
        // virtual BAR0 is that value with the BAR's type bits, and sizes as a 16 KiB BAR.
        const res = BigInt(sysfs(A, "resource").split("\n")[0].split(/\s+/)[0]);
        const hwBar = Deno.readFileSync(`/sys/bus/pci/devices/${A}/config`).subarray(16, 24);
        const bar = (await H1.ask(`region-read ${CONFIG} 16 8`)).hex as string;
        await H1.ask(`region-write ${CONFIG} 16 ffffffff`);
        const sized = (await H1.ask(`region-read ${CONFIG} 16 4`)).hex as string;
        await H1.ask(`region-write ${CONFIG} 16 ${bar.slice(0, 8)}`);
        eq([...hwBar].every((x) => x === 0), true, "the VF's own BAR0 register reads 0");
        eq(le32(bar.slice(0, 8)) & ~0xf, 0, "BAR0 through vfio-pci: no address");
        assert((le32(bar.slice(0, 8)) & 0x6) === 0x4, `BAR0's type through vfio-pci: 64-bit memory (${bar})`);
        eq((le32(sized) & ~0xf) >>> 0, 0xffffc000, "BAR0 sized through vfio-pci (16 KiB)");
        rows.push(
          `BAR0: the VF's own register 0, its resource 0x${res.toString(16)}; vfio-pci reads ${bar} (LE), ` +
            `sizing ${sized}: virtual, a load's BAR writes change no host resource`,
        );
        // The source's command register (memory, master, INTx disable) reaches the other VF.
        await H1.ask(`region-write ${CONFIG} 4 0604`); // 0x0406
        const srcCmd = (await H1.ask(`region-read ${CONFIG} 4 2`)).hex as string;
        await H2.quit();
        const file = `${tmp}/vf-cfg.bin`;
        const s = JSON.parse((await ok(["save", "--json", "--resume", "--device", `pid:${H1.pid}`, file])).stdout);
        eq(s.configBytes, 4096, "config bytes saved (a PCIe function: the extended config space too)");
        const got = await loadExecRead(B, file, [`region-read ${CONFIG} 4 2`, `region-read ${CONFIG} 61 1`]);
        eq(got.answers[0], srcCmd, "command register through vfio-pci after load --exec");
        eq(got.answers[1], "00", "interrupt pin after load --exec");
        const notRestored = got.stderr.split("\n").filter((l) => l.includes("not restored: "));
        rows.push(
          `load --exec: source command ${srcCmd} (LE), read back ${got.answers[0]}; the tool's warnings: ` +
            `${notRestored.length ? notRestored.map((l) => l.replace(/.*not restored: /, "")).join("; ") : "none"}`,
        );
        for (const r of rows) extraReport.push(`vf config: ${r}`);
      },
    );

    await checkTwoTogether("VFs", STATE, H1, B, `${tmp}/vf-both.bin`);
  } finally {
    await H1.quit();
    await H2.quit().catch(() => {});
  }

  await pciCheck("check on the VF: every conformance row's answer (listed below)", async () => {
    const r = await cli(["check", "--json", "--device", B]);
    const rep = JSON.parse(r.stdout);
    const rows = (rep.checks ?? rep.results ?? []) as { id?: string; name?: string; status: string; detail?: string }[];
    for (const row of rows) {
      extraReport.push(`vf check: ${row.status} ${row.id ?? row.name}${row.detail ? ` — ${row.detail}` : ""}`);
    }
    const failed = rows.filter((c) => c.status === "FAIL");
    eq(r.code, 0, `exit code (failed rows: ${JSON.stringify(failed)}; stderr ${r.stderr.trim()})`);
  });

  // Last: it moves the PF to vfio-pci. The VFs of a PF that user space drives through
  // vfio-pci (enable_sriov=1) want the VF token its user set (vfio_pci_validate_vf_token).
  await pciCheck(
    "VF token: the PF rebound to vfio-pci (enable_sriov); a VF opened without the token: exit 3 naming it; with it, load --exec works; a wrong one: exit 3",
    async () => {
      const token = crypto.randomUUID(), wrong = crypto.randomUUID();
      const f = `${tmp}/vf-20.bin`; // a holder's registers, saved by the fresh-load check
      if (!exists(f)) {
        const H = await new Holder(A).ready();
        try {
          for (const c of writeCmds(20)) await H.ask(c);
          await ok(["save", "--device", `pid:${H.pid}`, f]);
        } finally {
          await H.quit();
        }
      }
      const pfDir = `/sys/bus/pci/devices/${PF}`;
      Deno.writeTextFileSync(`${pfDir}/sriov_numvfs`, "0");
      Deno.writeTextFileSync("/sys/module/vfio_pci/parameters/enable_sriov", "Y");
      bind(PF, "vfio-pci");
      eq(driverOf(PF), "vfio-pci", "the PF's driver");
      // The PF's user sets the token (an open of the PF with it, none of its VFs in use).
      await ok(["info", "--device", PF, "--vf-token", token]);
      const [a, b] = enableVfs(PF, 2);
      for (const f of [a, b]) bind(f);
      const none = await cli(["info", "--device", a]);
      eq(none.code, 3, `without the token: exit code (${none.stderr.trim()})`);
      assert(
        none.stderr.includes("VF token required") && none.stderr.includes(`the PF ${PF} is bound to vfio-pci`) &&
          none.stderr.includes("--vf-token"),
        `without the token: ${none.stderr.trim()}`,
      );
      const bad = await cli(["info", "--device", a, "--vf-token", wrong]);
      eq(bad.code, 3, `a wrong token: exit code (${bad.stderr.trim()})`);
      assert(bad.stderr.includes(`the VF token is not the one PF ${PF} has`), `a wrong token: ${bad.stderr.trim()}`);
      assert(!bad.stderr.includes(wrong), "the token is never printed");
      // With it: the holder's registers loaded into this PF's VF, read by CMD.
      const r = await cli([
        "load",
        "--device",
        b,
        "--vf-token",
        token,
        f,
        "--exec",
        "sh",
        "-c",
        holderScript("fd:$VFIO_MIG_DEVICE_FD", readCmds()),
      ]);
      eq(r.code, 0, `load --vf-token --exec: ${r.stderr.trim()}`);
      eq(hexAnswers(r.stdout).filter((x) => x), want(20), "what CMD read through BAR0");
      const i = JSON.parse((await ok(["info", "--json", "--device", a, "--vf-token", token])).stdout);
      eq([i.migrationFlags, i.dataSize], [7, STREAM], "info with the token");
      extraReport.push(`vf token: without: ${none.stderr.trim()}`);
      extraReport.push(`vf token: wrong: ${bad.stderr.trim()}`);
    },
  );
}
