// `vfio-mig list` against a fake sysfs tree (symlinks whose basenames say driver,
// group and mdev type) and simulated devices. Nothing under the fake tree can be
// opened (there is no /dev/vfio/<group> for it): each device must say why, not crash.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { listDevices } from "../../src/commands/list.ts";
import { openDevice, systemFor } from "../../src/device/open.ts";
import { libc } from "../../ffi/libc.ts";
import { SimStore } from "../../src/sim/mod.ts";
import { cliText as vfioMig } from "../helpers/proc.ts";

const MDEV = "b1a2c3d4-0000-4000-8000-000000000001";

/** A PCI device under ROOT/bus/pci/devices with its driver, group and cdev links. */
async function pciDevice(root: string, addr: string, driver: string | null, group: string, cdev?: string) {
  const dev = `${root}/bus/pci/devices/${addr}`;
  await Deno.mkdir(dev, { recursive: true });
  if (driver) await Deno.symlink(`../../../../bus/pci/drivers/${driver}`, `${dev}/driver`);
  await joinGroup(root, dev, addr, group);
  if (cdev) await Deno.mkdir(`${dev}/vfio-dev/${cdev}`, { recursive: true });
}

async function joinGroup(root: string, dev: string, name: string, group: string) {
  await Deno.mkdir(`${root}/kernel/iommu_groups/${group}/devices`, { recursive: true });
  await Deno.symlink(`../../../../kernel/iommu_groups/${group}`, `${dev}/iommu_group`);
  await Deno.symlink(dev, `${root}/kernel/iommu_groups/${group}/devices/${name}`);
}

/**
 * Group 9001: a vfio variant driver next to a host driver (not viable). Group 9002:
 * vfio-pci with an unbound sibling (viable). 9003: a NIC on its host driver (not
 * listed). 9005: vfio-pci behind a pcieport bridge and a pci-stub device (viable).
 * 9004: an mtty mdev.
 */
async function fakeSysfs(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "vfio-mig-sysfs-" });
  await pciDevice(root, "0000:3b:00.0", "mlx5_core", "9001");
  await pciDevice(root, "0000:3b:00.1", "mlx5_vfio_pci", "9001", "vfio7");
  await pciDevice(root, "0000:5e:00.0", "vfio-pci", "9002", "vfio8");
  await pciDevice(root, "0000:5e:00.1", null, "9002");
  await pciDevice(root, "0000:00:1f.6", "e1000e", "9003");
  await pciDevice(root, "0000:00:1c.0", "pcieport", "9005");
  await pciDevice(root, "0000:02:00.0", "vfio-pci", "9005");
  await pciDevice(root, "0000:02:00.1", "pci-stub", "9005");
  const mdev = `${root}/bus/mdev/devices/${MDEV}`;
  await Deno.mkdir(mdev, { recursive: true });
  await Deno.symlink("../../../../bus/mdev/drivers/mtty", `${mdev}/driver`);
  await Deno.symlink("../../../../devices/virtual/mtty/mtty/mdev_supported_types/mtty-2", `${mdev}/mdev_type`);
  await joinGroup(root, mdev, MDEV, "9004");
  return root;
}

Deno.test("list: vfio-bound PCI devices and mdevs from a fake sysfs, with groups, viability and cdevs", async () => {
  const root = await fakeSysfs();
  try {
    const r = await vfioMig(["list", "--sysfs", root, "--json"]);
    assertEquals(r.code, 0, r.err);
    const { sysfs, devices } = JSON.parse(r.out);
    assertEquals(sysfs, root);
    const byName = Object.fromEntries(devices.map((d: { device: string }) => [d.device, d]));
    assertEquals(Object.keys(byName).sort(), ["0000:02:00.0", "0000:3b:00.1", "0000:5e:00.0", MDEV].sort());

    const mlx = byName["0000:3b:00.1"];
    assertEquals(mlx.driver, "mlx5_vfio_pci");
    assertEquals(mlx.iommuGroup, "9001");
    assertEquals(mlx.groupPeers, [{ name: "0000:3b:00.0", driver: "mlx5_core" }]);
    assertEquals(mlx.viable, false, "a host driver in the group makes it not viable");
    assertEquals(mlx.cdev, "/dev/vfio/devices/vfio7");

    const vp = byName["0000:5e:00.0"];
    assertEquals(vp.viable, true, "an unbound sibling keeps the group viable");
    assertEquals(vp.groupPeers, [{ name: "0000:5e:00.1", driver: null }]);
    assertEquals(byName["0000:02:00.0"].viable, true, "pcieport and pci-stub are allowed in a vfio group");

    const m = byName[MDEV];
    assertEquals([m.kind, m.driver, m.mdevType, m.iommuGroup, m.viable, m.cdev], [
      "mdev",
      "mtty",
      "mtty-2",
      "9004",
      true,
      null,
    ]);

    for (const d of devices) {
      assertEquals(d.access, "unavailable", `${d.device} cannot be opened here`);
      assert(typeof d.unavailable === "string" && d.unavailable.length > 0, `${d.device} says why`);
      assertEquals(d.migration, null);
      assertEquals(d.kernelViable, null, `${d.device}: no /dev/vfio group node, so no kernel answer`);
      assertStringIncludes(d.groupNote, "/dev/vfio/");
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("list: text output honours VFIO_MIG_SYSFS and shows unavailable devices with their reason", async () => {
  const root = await fakeSysfs();
  try {
    const r = await vfioMig(["list"], undefined, { VFIO_MIG_SYSFS: root });
    assertEquals(r.code, 0, r.err);
    assertMatch(r.out, /0000:3b:00\.1 {2}\(pci, driver mlx5_vfio_pci\)/);
    assertMatch(
      r.out,
      /IOMMU group {2}9001 \(NOT viable; kernel: no \/dev\/vfio\/9001\), shared with 0000:3b:00\.0 \(mlx5_core\)/,
    );
    assertMatch(r.out, /cdev {9}\/dev\/vfio\/devices\/vfio8/);
    assertMatch(r.out, /migration {4}unavailable: \S/);
    assert(!r.out.includes("e1000e"), "devices on host drivers are not listed as VFIO devices");
    assertMatch(r.out, /4 devices: 0 migratable/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("list: an empty sysfs lists nothing and succeeds", async () => {
  const root = await Deno.makeTempDir({ prefix: "vfio-mig-sysfs-" });
  try {
    const r = await vfioMig(["list", "--sysfs", root]);
    assertEquals(r.code, 0, r.err);
    assertStringIncludes(r.out, `no VFIO devices under ${root}`);
    assertEquals(listDevices({ sysfs: root }).devices, []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("list: --no-open reports sysfs facts only", async () => {
  const root = await fakeSysfs();
  try {
    const r = listDevices({ sysfs: root, noOpen: true });
    assertEquals(r.devices.length, 4);
    for (const d of r.devices) {
      assertEquals([d.access, d.unavailable, d.kernelViable, d.migration], [
        "unavailable",
        "not opened (--no-open)",
        null,
        null,
      ]);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("list: --include-sim shows simulated devices' migration facts, and 'busy' for one held open", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-list-" });
  const empty = await Deno.makeTempDir({ prefix: "vfio-mig-sysfs-" });
  try {
    const sys = libc();
    new SimStore(sys, `${dir}/a`).create({ model: "mtty-2" });
    new SimStore(sys, `${dir}/b`).create({ model: "bulk", size: 8192, flags: 0x1 });
    new SimStore(sys, `${dir}/c`).create({ model: "bulk", size: 4096, flags: 0 });
    const held = openDevice(systemFor([`sim:${dir}/b`]), `sim:${dir}/b`);
    try {
      const r = await vfioMig(["list", "--sysfs", empty, "--include-sim", dir, "--json"]);
      assertEquals(r.code, 0, r.err);
      const devices = JSON.parse(r.out).devices;
      assertEquals(devices.map((d: { device: string }) => d.device), [`sim:${dir}/a`, `sim:${dir}/b`, `sim:${dir}/c`]);
      const [a, b, c] = devices;
      assertEquals([a.kind, a.driver, a.mdevType, a.access], ["sim", "mtty", "mtty-2", "ok"]);
      assertEquals(a.migration, {
        migratable: true,
        flags: 7,
        flagNames: ["STOP_COPY", "P2P", "PRE_COPY"],
        dataSize: 96,
        state: "RUNNING",
        dirtyTracking: "dma-logging",
      });
      assertEquals([b.access, b.unavailable, b.migration], ["busy", null, null], "held open by this test");
      assertEquals(b.holders.map((h: { pid: number }) => h.pid), [Deno.pid], "the holder is this test");
      assertEquals(c.migration.migratable, false);
      assertEquals(c.migration.dirtyTracking, "none");

      const text = await vfioMig(["list", "--sysfs", empty, "--include-sim", `${dir}/a`, "--include-sim", `${dir}/b`]);
      assertEquals(text.code, 0, text.err);
      assertMatch(
        text.out,
        /migration {4}flags 0x7 \(STOP_COPY P2P PRE_COPY\), MIG_DATA_SIZE 96, state RUNNING, dirty tracking DMA logging/,
      );
      assertMatch(
        text.out,
        new RegExp(`migration {4}busy: held by deno \\(pid ${Deno.pid}\\); borrow it with --device pid:${Deno.pid}`),
      );
      assertMatch(text.out, /2 devices: 1 migratable, 1 busy/);
    } finally {
      held.close();
    }
    const missing = await vfioMig(["list", "--sysfs", empty, "--include-sim", empty]);
    assertEquals(missing.code, 2, "a folder without simulated devices is a usage error");
    assertStringIncludes(missing.err, "no simulated device there");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(empty, { recursive: true });
  }
});

// Issue 22 item 5: a device that speaks the v1 region protocol (QEMU 7.2's) is migratable,
// and list and info say through which protocol, not "not supported (ENOTTY)".
Deno.test("list and info: a v1 device names the v1 region protocol and its device_state", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-list-v1-" });
  const empty = await Deno.makeTempDir({ prefix: "vfio-mig-sysfs-" });
  try {
    const made = await vfioMig(["sim", "create", `${dir}/v1`, "--model", "mtty-2", "--protocol", "v1"]);
    assertEquals(made.code, 0, made.err);
    const r = await vfioMig(["list", "--sysfs", empty, "--include-sim", dir, "--json"]);
    assertEquals(r.code, 0, r.err);
    const [d] = JSON.parse(r.out).devices;
    assertEquals(d.migration, {
      migratable: true,
      protocol: "v1",
      flags: null,
      flagNames: [],
      dataSize: null,
      state: "running (001b)",
      dirtyTracking: "none",
    });
    const text = await vfioMig(["list", "--sysfs", empty, "--include-sim", dir]);
    assertMatch(text.out, /migration {4}protocol v1 \(deprecated region protocol\), device_state running \(001b\)/);
    assert(!text.out.includes("ENOTTY"), text.out);
    assertMatch(text.out, /1 device: 1 migratable/);
    const info = await vfioMig(["info", "--device", `sim:${dir}/v1`]);
    assertEquals(info.code, 0, info.err);
    assertMatch(info.out, /migration: {7}protocol v1 \(deprecated region protocol\)/);
    assert(!info.out.includes("ENOTTY"), info.out);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(empty, { recursive: true });
  }
});
