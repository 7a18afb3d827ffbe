// The DEV_CONFIG_STATE section, for both protocols: what is read (config space through
// the config region, the MSI-X table and PBA through their BAR), its codec and decoded
// fields, and the restore on load, which --no-config skips; the vendor/device ids in it
// are checked. On a pci-family function the simulator answers as vfio-pci does
// (drivers/vfio/pci/vfio_pci_config.c, vfio_pci_rdwr.c; src/sim/vfio_pci.ts): a load
// restores the command register and the MSI address/data, not the MSI enable (unless the
// fd armed MSI with VFIO_DEVICE_SET_IRQS), the MSI-X enable or the MSI-X table, and says so
// (config.notRestored, a warning each), as the kernel lab's pci group found on a real
// e1000e. An mdev's config space is its driver's emulation: everything is restored.

import { assert, assertEquals, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { IOCTL, PCI_REGION } from "../../ffi/vfio_uapi.ts";
import { openDevice, type VfioDevice } from "../../src/device/open.ts";
import { StreamError, VfioMigError } from "../../src/errors.ts";
import {
  checkConfigIdentity,
  decodeConfigState,
  describeConfig,
  encodeConfigState,
  readConfigState,
  summarizeConfig,
} from "../../src/migrate/config_state.ts";
import { load, type LoadOptions } from "../../src/migrate/load.ts";
import { save } from "../../src/migrate/save.ts";
import { getRegionInfo } from "../../src/vfio/regions.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { CAP_MSI_AT, CAP_MSIX_AT } from "../../src/sim/models.ts";
import { SimStore } from "../../src/sim/store.ts";
import { openSink, openSource } from "../../src/transport/transport.ts";
import { cli, show } from "../helpers/proc.ts";

const host = libc();
const MSI = 1, MSIX = 2;

function create(
  dir: string,
  protocol: "v1" | "v2",
  model: "bulk" | "mtty-1" | "mtty-2" = "bulk",
  seed = 1,
  family?: "pci" | "mdev",
): void {
  new SimStore(host, dir).create({
    model,
    size: 64 * 1024,
    seed,
    protocol,
    dataSize: protocol === "v1" ? 16384 : undefined,
    family,
  });
}

async function withDevice<T>(dir: string, fn: (d: VfioDevice) => Promise<T> | T): Promise<T> {
  const d = openDevice(new SimKernel(host), `sim:${dir}`);
  try {
    return await fn(d);
  } finally {
    d.close();
  }
}

function configWrite(d: VfioDevice, at: number, bytes: number[]): void {
  const r = getRegionInfo(d.sys, d.fd, PCI_REGION.CONFIG);
  d.sys.pwrite(d.fd, new Uint8Array(bytes), r.offset + at);
}

/**
 * VFIO_DEVICE_SET_IRQS, DATA_EVENTFD | ACTION_TRIGGER, vector 0 without an eventfd: what a
 * VMM does before its guest's vectors fire (vfio-pci then enables MSI/MSI-X in the function).
 */
function arm(d: VfioDevice, index: number): void {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  [24, (1 << 2) | (1 << 5), index, 0, 1].forEach((x, i) => v.setUint32(4 * i, x, true));
  v.setInt32(20, -1, true);
  d.sys.ioctl(d.fd, IOCTL.DEVICE_SET_IRQS, b);
}

const MSI_ADDR_DATA = [0x00, 0x10, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0x00];

/**
 * Programs what a guest driver and its VMM would: memory + bus master, MSI address/data,
 * then MSI (armed with SET_IRQS, then enabled) or MSI-X (armed: SET_IRQS enables it), and
 * a pattern written into the MSI-X table through its BAR (vfio-pci drops it). An mdev's
 * emulated control takes the enables as written.
 */
function program(d: VfioDevice, mode: "MSI" | "MSI-X", pci: boolean): Uint8Array {
  configWrite(d, 0x04, [0x06, 0x00]);
  configWrite(d, CAP_MSI_AT + 4, MSI_ADDR_DATA);
  if (mode === "MSI") {
    if (pci) arm(d, MSI);
    configWrite(d, CAP_MSI_AT + 2, [0x81, 0x00]);
  } else if (pci) arm(d, MSIX);
  else configWrite(d, CAP_MSIX_AT + 3, [0xc0]); // enable + function mask
  const table = new Uint8Array(4 * 16).map((_, i) => (i * 7 + 3) & 0xff);
  const bar2 = getRegionInfo(d.sys, d.fd, 2);
  d.sys.pwrite(d.fd, table, bar2.offset);
  return table;
}

/**
 * Saves a device programmed in `mode` and loads it into a fresh one, in one open each (a
 * pci-family function resets at the last close): the source's config as saved, load's
 * result, and the target's config read back before its fd closes. `armTarget`: the
 * target's fd arms that interrupt type before the load, as a VMM holding it would.
 */
async function roundTrip(
  t: string,
  protocol: "v1" | "v2",
  family: "pci" | "mdev",
  mode: "MSI" | "MSI-X",
  opts: LoadOptions & { armTarget?: number } = {},
) {
  create(`${t}/a`, protocol, "bulk", 1, family);
  create(`${t}/b`, protocol, "bulk", 2, family);
  const { table, saved } = await withDevice(`${t}/a`, async (d) => {
    const table = program(d, mode, family === "pci");
    const r = await save(d, openSink(d.sys, `${t}/s.bin`), {});
    assertEquals(r.configBytes, 256);
    return { table, saved: readConfigState(d)! };
  });
  return await withDevice(`${t}/b`, async (d) => {
    if (opts.armTarget) arm(d, opts.armTarget);
    const src = openSource(d.sys, `${t}/s.bin`);
    let result;
    try {
      result = await load(d, src, opts);
    } finally {
      src.close();
    }
    return { table, saved, result, after: readConfigState(d)! };
  });
}

const NOT_RESTORED = {
  "MSI enable": /^MSI enable: vfio-pci keeps it only for an fd that armed MSI \(VFIO_DEVICE_SET_IRQS\)/,
  "MSI-X enable": /^MSI-X enable: read-only in vfio-pci's config space/,
  "MSI-X table": /^MSI-X table: vfio-pci hides it from userspace/,
};

function notRestoredNames(list: string[]): string[] {
  return list.map((n) => {
    const hit = Object.entries(NOT_RESTORED).find(([, re]) => re.test(n));
    assert(hit, `an unexpected not-restored note: ${n}`);
    return hit[0];
  });
}

for (const protocol of ["v2", "v1"] as const) {
  for (const mode of ["MSI", "MSI-X"] as const) {
    Deno.test(`config section round trip on a pci-family function (${protocol}, ${mode} armed at the source): what vfio-pci lets a load restore`, async () => {
      const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
      try {
        const { saved, result, after } = await roundTrip(t, protocol, "pci", mode);
        const src = summarizeConfig(saved.config);
        // The source as vfio-pci shows it: its enable where it was armed, the table hidden.
        assertEquals([src.msi?.enabled, src.msix?.enabled], [mode === "MSI", mode === "MSI-X"], "source enables");
        assertEquals(saved.msixTable, new Uint8Array(64).fill(0xff), "the source's MSI-X table: 0xff through vfio-pci");
        const s = summarizeConfig(after.config);
        assertEquals(s.command, 0x0006, "command register restored");
        assertEquals(
          after.config.subarray(CAP_MSI_AT + 4, CAP_MSI_AT + 14),
          new Uint8Array(MSI_ADDR_DATA),
          "MSI address/data",
        );
        assertEquals(
          [s.msi?.enabled, s.msix?.enabled, s.msix?.functionMask],
          [false, false, false],
          "enables not restored",
        );
        assertEquals(after.msixTable, new Uint8Array(64).fill(0xff), "the target's table: hidden");
        assertEquals(after.pba, new Uint8Array(1), "PBA of (4 + 7) / 8 bytes, nothing pending");
        assertEquals(
          { ...result.config!, notRestored: notRestoredNames(result.config!.notRestored) },
          {
            command: 0x0006,
            msiEnabled: false,
            msixEnabled: false,
            msixTable: false,
            notRestored: [mode === "MSI" ? "MSI enable" : "MSI-X enable", "MSI-X table"],
          },
        );
        assertEquals(result.protocol, protocol);
      } finally {
        await Deno.remove(t, { recursive: true });
      }
    });
  }
}

Deno.test("config section on a pci-family function whose fd armed MSI before the load: the MSI enable is restored", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    const { result, after } = await roundTrip(t, "v2", "pci", "MSI", { armTarget: MSI });
    assertEquals(summarizeConfig(after.config).msi?.enabled, true, "vfio_msi_config_write kept it: irq_type is MSI");
    assertEquals([result.config?.msiEnabled, notRestoredNames(result.config!.notRestored)], [true, ["MSI-X table"]]);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("config section round trip on an mdev (its driver emulates config space): enables and MSI-X table restored", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    const { table, result, after } = await roundTrip(t, "v2", "mdev", "MSI-X");
    const s = summarizeConfig(after.config);
    assertEquals([s.command, s.msix?.enabled, s.msix?.functionMask, s.msix?.entries], [0x0006, true, true, 4]);
    assertEquals(after.msixTable, table, "MSI-X table restored");
    assertEquals(result.config, {
      command: 0x0006,
      msiEnabled: false,
      msixEnabled: true,
      msixTable: true,
      notRestored: [],
    });
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("config section: --no-config loads the device state but leaves config space alone", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    const { result, after } = await roundTrip(t, "v2", "pci", "MSI", { noConfig: true });
    assertEquals(result.config, null);
    const s = summarizeConfig(after.config);
    // The target as its open found it: memory decode on (pci_enable_device), nothing else.
    assertEquals([s.command, s.msi?.enabled, s.msix?.enabled], [0x0002, false, false]);
    assertEquals(after.config.subarray(CAP_MSI_AT + 4, CAP_MSI_AT + 14), new Uint8Array(10), "MSI address/data");
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("load --json on a pci-family function: config.notRestored and a warning line for each, from the CLI", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    create(`${t}/a`, "v2", "bulk", 1, "pci");
    create(`${t}/b`, "v2", "bulk", 2, "pci");
    await withDevice(`${t}/a`, async (d) => {
      program(d, "MSI", true);
      await save(d, openSink(d.sys, `${t}/s.bin`), {});
    });
    const r = await cli(["load", "--json", "--device", `sim:${t}/b`, `${t}/s.bin`]);
    assertEquals(r.code, 0, show(r));
    const j = JSON.parse(r.stdout);
    assertEquals([j.config?.command, j.config?.msiEnabled, j.config?.msixEnabled, j.config?.msixTable], [
      0x0006,
      false,
      false,
      false,
    ], show(r));
    assertEquals(notRestoredNames(j.config.notRestored), ["MSI enable", "MSI-X table"]);
    const said = r.stderr.split("\n").filter((l) => l.includes(": not restored: "));
    assertEquals(said.length, 2, r.stderr);
    assertEquals(notRestoredNames(said.map((l) => l.replace(/.*: not restored: /, ""))), ["MSI enable", "MSI-X table"]);
    for (const l of said) assertStringIncludes(l, "vfio-mig: warning: ");
    assertEquals(j.warnings.filter((w: string) => w.includes(": not restored: ")).length, 2, "in --json warnings too");
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("config section of mtty: the 255-byte config region, no capabilities, codec round trip", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    create(`${t}/m`, "v2", "mtty-2");
    const c = await withDevice(`${t}/m`, (d) => readConfigState(d)!);
    assertEquals(c.config.length, 255);
    assertEquals([c.msixTable, c.pba], [null, null]);
    const s = summarizeConfig(c.config);
    assertEquals([s.vendor, s.device, s.capabilities.length], [0x4348, 0x3253, 0]);
    const enc = encodeConfigState(c);
    assertEquals(enc.length, 24 + 255);
    assertEquals(decodeConfigState(enc), c);
    assertStringIncludes(describeConfig(s)[0], "0x4348:0x3253");
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("config section: damaged sections and another device's ids are refused", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    create(`${t}/b`, "v2", "bulk");
    create(`${t}/m`, "v2", "mtty-1");
    const mtty = await withDevice(`${t}/m`, (d) => readConfigState(d)!);
    await withDevice(`${t}/b`, (d) => {
      const e = assertThrows(() => checkConfigIdentity(mtty, d), VfioMigError);
      assertStringIncludes(e.message, "0x4348:0x3253");
      checkConfigIdentity(readConfigState(d)!, d);
    });
    const enc = encodeConfigState(mtty);
    assertThrows(() => decodeConfigState(enc.subarray(0, 30)), StreamError);
    const bad = enc.slice();
    bad[0] = 0x58;
    assertThrows(() => decodeConfigState(bad), StreamError);
    const longer = new Uint8Array(enc.length + 1);
    longer.set(enc);
    assertThrows(() => decodeConfigState(longer), StreamError);
    assert(describeConfig(summarizeConfig(mtty.config)).length >= 2);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});
