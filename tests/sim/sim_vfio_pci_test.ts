// The pci family's config space and interrupts answer as vfio-pci-core does (src/sim/
// vfio_pci.ts), one test per virtualisation rule, each naming the kernel file and function
// it follows (Linux 6.12, drivers/vfio/pci/). Found different on a real function first
// (QEMU's e1000e under vfio-pci in the kernel lab, tests/kernel/groups/pci.ts): the MSI
// enable, the MSI-X control and the MSI-X table. An mdev's config is its driver's
// emulation and keeps the old model (checked last).

import { assertEquals } from "../helpers/assert.ts";
import { F } from "../../ffi/sys.ts";
import { IOCTL } from "../../ffi/vfio_uapi.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { CAP_MSI_AT, CAP_MSIX_AT, modelInfo } from "../../src/sim/models.ts";
import { hostBarAddress } from "../../src/sim/vfio_pci.ts";
import { expectErrno, host, metaOf, Sim, withSim, withStore } from "../helpers/sim.ts";

const BULK_PCI = { model: "bulk" as const, size: 8192, family: "pci" as const };
const BAR2 = 2 * 2 ** 40;
const MSI = 1, MSIX = 2, INTX = 0, ERR = 3, REQ = 4;
const DATA_NONE = 1, DATA_BOOL = 2, DATA_EVENTFD = 4, ACTION_MASK = 8, ACTION_TRIGGER = 32;
const MSI_CTL = CAP_MSI_AT + 2, MSIX_CTL = CAP_MSIX_AT + 2;

function bar2(s: Sim, off: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  const n = s.k.pread(s.fd, b, BAR2 + off);
  return b.subarray(0, n);
}

function irqInfo(s: Sim, index: number, argsz = 16): { flags: number; count: number } {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, argsz, true);
  v.setUint32(8, index, true);
  s.k.ioctl(s.fd, IOCTL.DEVICE_GET_IRQ_INFO, b);
  return { flags: v.getUint32(4, true), count: v.getUint32(12, true) };
}

Deno.test("vfio_msi_config_write: the MSI enable stays clear unless MSI is armed (SET_IRQS); address and data are virtual", async () => {
  await withSim(BULK_PCI, (s) => {
    assertEquals(s.config(MSI_CTL, 2), 0x0080, "64-bit, disabled at power-on");
    s.setConfig(MSI_CTL, [0x81, 0x00]);
    assertEquals(s.config(MSI_CTL, 2), 0x0080, "the enable written without SET_IRQS: cleared");
    s.setConfig(CAP_MSI_AT + 4, [0x00, 0x10, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0x40]);
    assertEquals([s.config(CAP_MSI_AT + 4, 2), s.config(CAP_MSI_AT + 6, 2), s.config(CAP_MSI_AT + 12, 2)], [
      0x1000,
      0xfee0,
      0x4041,
    ], "address and data (ALL_VIRT, ALL_WRITE)");
    s.setIrqs(MSI, [-1]);
    assertEquals(s.config(MSI_CTL, 2) & 1, 0, "SET_IRQS does not write the virtual control (vfio_msi_enable)");
    s.setConfig(MSI_CTL, [0xf1, 0xff]);
    assertEquals(
      s.config(MSI_CTL, 2),
      0x0081,
      "armed: the enable is kept; QSIZE clamped to msi_qmax 0; the high byte reserved",
    );
    s.setIrqs(MSI);
    assertEquals(s.config(MSI_CTL, 2) & 1, 1, "disarmed: vfio_msi_disable leaves the virtual enable as it was");
    s.setConfig(CAP_MSI_AT + 1, [0x00]); // the next pointer: read-only, but its chunk reaches PCI_MSI_FLAGS
    assertEquals([s.config(MSI_CTL, 2), s.config(CAP_MSI_AT + 1, 1)], [0x0080, CAP_MSIX_AT], "re-filtered; next kept");
  });
});

Deno.test("MSI-X capability (cap_perms default, no writefn): read-only, its enable the hardware's while MSI-X is armed", async () => {
  await withSim(BULK_PCI, (s) => {
    assertEquals(s.config(MSIX_CTL, 2), 0x0003, "table size 4, disabled");
    s.setConfig(MSIX_CTL, [0xff, 0xc0]);
    s.setConfig(CAP_MSIX_AT + 4, [0xff, 0xff, 0xff, 0xff]);
    assertEquals([s.config(MSIX_CTL, 2), s.config(CAP_MSIX_AT + 4, 2)], [0x0003, 0x0002], "writes dropped, no error");
    s.setIrqs(MSIX, [-1, -1]);
    assertEquals(s.config(MSIX_CTL, 2), 0x8003, "armed: enable set, function mask clear");
    s.setConfig(MSIX_CTL, [0x03, 0x40]);
    assertEquals(s.config(MSIX_CTL, 2), 0x8003, "function mask write dropped");
    s.setIrqs(MSIX);
    assertEquals(s.config(MSIX_CTL, 2), 0x0003, "disarmed (pci_free_irq_vectors)");
  });
});

Deno.test("vfio_pci_core_do_io_rw: the MSI-X table reads 0xff and drops writes; the PBA is the hardware's; vfio_pci_bar_rw bounds", async () => {
  await withSim(BULK_PCI, (s) => {
    assertEquals(bar2(s, 0, 64), new Uint8Array(64).fill(0xff), "the table (4 entries)");
    s.k.pwrite(s.fd, new Uint8Array(64).fill(0x5a), BAR2);
    s.setIrqs(MSIX, [-1]);
    assertEquals(bar2(s, 0, 64), new Uint8Array(64).fill(0xff), "written and armed: still hidden");
    assertEquals(bar2(s, 60, 8), new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), "the table ends at 64");
    assertEquals(bar2(s, 0x800, 8), new Uint8Array(8), "the PBA: nothing pending");
    assertEquals(bar2(s, 0xff8, 16).length, 8, "across the BAR's end: a short read");
    expectErrno(() => bar2(s, 0x1000, 4), "EINVAL", "from the BAR's end on");
  });
});

Deno.test("vfio_config_do_rw: an access past the end of config space fails EFAULT", async () => {
  await withSim(BULK_PCI, (s) => {
    expectErrno(() => s.config(0xff, 2), "EFAULT", "read across the end");
    expectErrno(() => s.setConfig(0x100, [0]), "EFAULT", "write from the end");
    assertEquals(s.config(0xfe, 2), 0, "the last two bytes");
  });
});

Deno.test("init_pci_cap_basic_perm, vfio_bar_fixup: the header's writable, virtual and read-only fields", async () => {
  await withSim(BULK_PCI, (s) => {
    assertEquals(s.config(0x04, 2), 0x0002, "vfio_pci_core_enable's pci_enable_device: memory decode for BAR2");
    const host2 = hostBarAddress(modelInfo("bulk"), 2);
    assertEquals([s.config(0x18, 2), s.config(0x1a, 2)], [host2 & 0xffff, host2 >>> 16], "BAR2 at its host address");
    s.setConfig(0x18, [0xff, 0xff, 0xff, 0xff]);
    assertEquals([s.config(0x18, 2), s.config(0x1a, 2)], [0xf000, 0xffff], "sizing: a 4 KiB 32-bit memory BAR");
    s.setConfig(0x10, [0xff, 0xff, 0xff, 0xff]);
    s.setConfig(0x30, [0xff, 0xff, 0xff, 0xff]);
    assertEquals([s.config(0x10, 2), s.config(0x30, 2)], [0, 0], "an absent BAR and no ROM read 0");
    s.setConfig(0x04, [0x06, 0x05]);
    assertEquals(s.config(0x04, 2), 0x0506, "command: memory, bus master, SERR, INTx disable");
    s.setConfig(0x3c, [0x0b]);
    s.setConfig(0x0c, [0x10]);
    assertEquals([s.config(0x3c, 1), s.config(0x0c, 1)], [0x0b, 0x10], "interrupt line (virtual), cache line size");
    s.setConfig(0x00, [0, 0, 0, 0]);
    s.setConfig(0x06, [0xff, 0xff]);
    s.setConfig(0x34, [0x00]);
    s.setConfig(0x3d, [0x01]);
    assertEquals(
      [s.config(0x00, 2), s.config(0x06, 2), s.config(0x34, 1), s.config(0x3d, 1)],
      [0x1b36, 0x0210, CAP_MSI_AT, 0],
      "ids, status, capability pointer, interrupt pin: read-only (no INTx pin)",
    );
  });
});

Deno.test("VFIO_DEVICE_GET_IRQ_INFO (vfio_pci_ioctl_get_irq_info, vfio_pci_get_irq_count)", async () => {
  await withSim(BULK_PCI, (s) => {
    assertEquals(irqInfo(s, INTX), { flags: 1 | 2 | 4, count: 0 }, "INTx: maskable, automasked; no pin");
    assertEquals(irqInfo(s, MSI), { flags: 1 | 8, count: 1 }, "MSI: QMASK 0");
    assertEquals(irqInfo(s, MSIX), { flags: 1 | 8, count: 4 }, "MSI-X: the table size");
    assertEquals(irqInfo(s, REQ), { flags: 1 | 8, count: 1 }, "REQ");
    expectErrno(() => irqInfo(s, ERR), "EINVAL", "ERR: not PCI Express");
    expectErrno(() => irqInfo(s, 5), "EINVAL", "past VFIO_PCI_NUM_IRQS");
    expectErrno(() => irqInfo(s, MSI, 15), "EINVAL", "argsz below minsz");
  });
  await withSim({ model: "xe", size: 8192 }, (s) => {
    assertEquals([irqInfo(s, MSI).count, irqInfo(s, MSIX).count], [0, 8], "xe: no MSI, 8 MSI-X vectors");
  });
});

Deno.test("VFIO_DEVICE_SET_IRQS: vfio_set_irqs_validate_and_prepare and vfio_pci_set_msi_trigger errnos", async () => {
  await withSim(BULK_PCI, (s) => {
    const [r, w] = host.pipe();
    try {
      expectErrno(() => s.setIrqs(INTX, [-1]), "EINVAL", "INTx: no pin, start >= count");
      expectErrno(() => s.setIrqs(ERR, [-1]), "EINVAL", "ERR: not PCI Express");
      expectErrno(() => s.setIrqs(5, [-1]), "EINVAL", "index past VFIO_PCI_NUM_IRQS");
      expectErrno(() => s.setIrqs(MSI, [-1, -1]), "EINVAL", "MSI: one vector");
      expectErrno(
        () => s.setIrqs(MSI, [-1], { flags: DATA_EVENTFD | DATA_BOOL | ACTION_TRIGGER }),
        "EINVAL",
        "two data types",
      );
      expectErrno(() => s.setIrqs(MSI, [-1], { flags: DATA_EVENTFD | ACTION_TRIGGER | 64 }), "EINVAL", "unknown flag");
      expectErrno(() => s.setIrqs(MSI, [], { count: 1 }), "EINVAL", "argsz too small for the fds");
      expectErrno(() => s.setIrqs(MSI, [-1], { flags: DATA_NONE | ACTION_MASK }), "ENOTTY", "MSI masking");
      expectErrno(() => s.setIrqs(MSI, [-1], { flags: DATA_EVENTFD }), "ENOTTY", "no action");
      expectErrno(() => s.setIrqs(MSI), "EINVAL", "disarm when not armed");
      expectErrno(
        () => s.setIrqs(MSI, [], { flags: DATA_BOOL | ACTION_TRIGGER, count: 0 }),
        "EINVAL",
        "loopback unarmed",
      );
      expectErrno(() => s.setIrqs(MSIX, []), "ERANGE", "arm no vector (pci_alloc_irq_vectors(1, 0))");
      expectErrno(() => s.setIrqs(MSIX, [r]), "EINVAL", "a pipe is not an eventfd");
      expectErrno(() => s.setIrqs(MSIX, [9999]), "EBADF", "no such fd");
      assertEquals(metaOf(s.dir).irqType, undefined, "nothing armed by a failed call");
      assertEquals(s.setIrqs(MSIX, [-1, -1, -1, -1]), 0);
      assertEquals(s.setIrqs(MSIX, [-1], { start: 3 }), 0, "a block of an armed type");
      expectErrno(() => s.setIrqs(MSI, [-1]), "EINVAL", "MSI while MSI-X is armed");
      assertEquals(s.setIrqs(MSIX, [], { flags: DATA_NONE | ACTION_TRIGGER, count: 1 }), 0, "loopback, armed");
      assertEquals(s.setIrqs(REQ, [-1]), 0, "REQ: no trigger");
      expectErrno(() => s.setIrqs(REQ, [], { flags: DATA_NONE | ACTION_TRIGGER, count: 0 }), "EINVAL", "REQ: none set");
    } finally {
      host.close(r);
      host.close(w);
    }
  });
  await withSim({ model: "bulk", size: 8192 }, (s) => {
    expectErrno(() => s.setIrqs(MSI, [-1]), "ENOTTY", "mdev family: the sim's mdev drivers have no interrupts");
  });
});

Deno.test("interrupts and config across VFIO_DEVICE_RESET, another open, and the last close (vfio_pci_core_disable)", async () => {
  await withStore(BULK_PCI, (dir) => {
    const s = Sim.open(dir);
    try {
      s.setIrqs(MSIX, [-1]);
      s.setConfig(0x04, [0x06, 0x04]);
      s.setConfig(CAP_MSI_AT + 4, [0x00, 0x10, 0xe0, 0xfe]);
      s.reset();
      assertEquals(
        [s.config(MSIX_CTL, 2), s.config(0x04, 2), s.config(CAP_MSI_AT + 4, 2)],
        [0x8003, 0x0406, 0x1000],
        "VFIO_DEVICE_RESET (pci_try_reset_function saves and restores): all kept",
      );
      // Another open of the same device (a borrowed fd, as another process has it): the
      // armed type is the device's.
      const fd2 = host.fcntl(s.fd, F.DUPFD_CLOEXEC, 0);
      const k2 = new SimKernel(host);
      k2.adopt(fd2);
      const other = new Sim(k2, fd2, dir);
      assertEquals(other.config(MSIX_CTL, 2), 0x8003, "the other open sees MSI-X armed");
      other.setIrqs(MSIX);
      assertEquals(s.config(MSIX_CTL, 2), 0x0003, "and its disarm is the device's");
      s.setIrqs(MSI, [-1]);
      other.setConfig(MSI_CTL, [0x81]);
      assertEquals(s.config(MSI_CTL, 2), 0x0081, "MSI armed by one open, enabled through the other");
      k2.close(fd2);
      assertEquals(metaOf(dir).irqType, MSI, "not the last close: still armed");
    } finally {
      s.close();
    }
    assertEquals(metaOf(dir).irqType, undefined, "the last close disarmed it");
    const again = Sim.open(dir);
    try {
      assertEquals(
        [again.config(MSI_CTL, 2), again.config(0x04, 2), again.config(CAP_MSI_AT + 4, 2), again.config(MSIX_CTL, 2)],
        [0x0080, 0x0002, 0, 0x0003],
        "power-on config at the next open (memory decode: pci_enable_device)",
      );
    } finally {
      again.close();
    }
  });
});

Deno.test("mdev family (the driver emulates config space): MSI/MSI-X control and the MSI-X table take writes", async () => {
  await withSim({ model: "bulk", size: 8192 }, (s) => {
    s.setConfig(MSI_CTL, [0x81, 0x00]);
    s.setConfig(CAP_MSIX_AT + 3, [0xc0]);
    s.k.pwrite(s.fd, new Uint8Array(16).fill(0x5a), BAR2);
    assertEquals([s.config(MSI_CTL, 2), s.config(MSIX_CTL, 2)], [0x0081, 0xc003]);
    assertEquals(bar2(s, 0, 16), new Uint8Array(16).fill(0x5a));
    expectErrno(() => s.config(0xff, 2), "EINVAL", "the mdev model's bound");
  });
});
