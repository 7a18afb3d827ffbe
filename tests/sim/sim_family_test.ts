// Device families and shared devices. A pci-family device is reset to its power-on state
// at the first open and at the last close, as vfio-pci-core does
// (vfio_pci_core_enable -> pci_try_reset_function; vfio_pci_core_disable), and
// VFIO_DEVICE_RESET (an FLR) loses its data; an mdev keeps its state across opens and
// resets (mtty_reset only ends the session). A device held by one process can be
// borrowed by another (pidfd_getfd) and adopted: the borrower sees the holder's state
// and data, takes no lock, and its close resets nothing while the holder still holds it.

import { assertEquals } from "../helpers/assert.ts";
import { O } from "../../ffi/sys.ts";
import { DeviceState } from "../../src/vfio/state_machine.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { CAP_MSI_AT, CAP_MSIX_AT, initialMttyState } from "../../src/sim/models.ts";
import { expectErrno, host, metaOf, Sim, stateFile, withStore } from "../helpers/sim.ts";

const { STOP, RUNNING, RUNNING_P2P, STOP_COPY, RESUMING } = DeviceState;
const HOLDER = new URL("../helpers/sim_holder.ts", import.meta.url).pathname;

/** A process that holds a device (tests/helpers/sim_holder.ts), driven one line at a time. */
class Holder {
  readonly child: Deno.ChildProcess;
  readonly #lines: ReadableStreamDefaultReader<string>;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  #buf = "";
  pid = 0;
  fd = -1;

  constructor(dir: string) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", "--allow-read", HOLDER, dir],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#lines = this.child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#writer = this.child.stdin.getWriter();
  }

  static async start(dir: string): Promise<Holder> {
    const h = new Holder(dir);
    const hello = JSON.parse(await h.#line());
    h.pid = hello.pid;
    h.fd = hello.fd;
    return h;
  }

  async #line(): Promise<string> {
    for (;;) {
      const nl = this.#buf.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buf.slice(0, nl);
        this.#buf = this.#buf.slice(nl + 1);
        return line;
      }
      const { value, done } = await this.#lines.read();
      if (done) throw new Error("the holder exited");
      this.#buf += value;
    }
  }

  async ask(cmd: string): Promise<string> {
    await this.#writer.write(new TextEncoder().encode(cmd + "\n"));
    return await this.#line();
  }

  async end(signal?: Deno.Signal): Promise<void> {
    if (signal) this.child.kill(signal);
    else await this.#writer.write(new TextEncoder().encode("exit\n"));
    await this.#writer.close().catch(() => {});
    await this.child.status;
    await this.#lines.cancel().catch(() => {});
  }
}

/** Borrows the holder's device fd into this process (pidfd_getfd). */
function borrow(h: Holder): number {
  const pidfd = host.pidfdOpen(h.pid);
  try {
    return host.pidfdGetfd(pidfd, h.fd);
  } finally {
    host.close(pidfd);
  }
}

const MTTY_PCI = { model: "mtty-1" as const, seed: 3, family: "pci" as const };

Deno.test("family pci: the last close resets the device to power-on (RUNNING, seeded data, config cleared)", async () => {
  await withStore(MTTY_PCI, (dir) => {
    const initial = stateFile(dir);
    assertEquals(initial, initialMttyState("mtty-1", 3));
    const s = Sim.open(dir);
    s.k.pwrite(s.fd, new Uint8Array([0x42]), 7); // port 0's scratch register
    s.setConfig(0x04, [0x06, 0x00]);
    s.set(STOP);
    assertEquals(metaOf(dir).state, STOP);
    assertEquals(stateFile(dir)[7], 0x42, "the data changed while open");
    s.close();
    assertEquals(metaOf(dir).state, RUNNING, "last close: RUNNING");
    assertEquals(stateFile(dir), initial, "last close: the seeded data again");
    assertEquals([...Deno.readDirSync(dir)].some((e) => e.name === "config.bin"), false, "config back to power-on");
    const again = Sim.open(dir);
    try {
      // The command register as the next open finds it: I/O decode for mtty's I/O BAR
      // (vfio_pci_core_enable -> pci_enable_device), not the 0x06 written before.
      assertEquals([again.state(), again.config(0x04, 2)], [RUNNING, 0x0001]);
    } finally {
      again.close();
    }
  });
});

Deno.test("family mdev (mtty, bulk default): state, data and config survive close and reopen", async () => {
  await withStore({ model: "mtty-1", seed: 3 }, (dir) => {
    assertEquals(metaOf(dir).family, undefined, "mdev is mtty's default");
    const s = Sim.open(dir);
    s.k.pwrite(s.fd, new Uint8Array([0x42]), 7);
    s.setConfig(0x04, [0x06, 0x00]);
    s.set(STOP);
    s.close();
    const again = Sim.open(dir);
    try {
      assertEquals([again.state(), stateFile(dir)[7], again.config(0x04, 2)], [STOP, 0x42, 0x06]);
    } finally {
      again.close();
    }
  });
});

Deno.test("family pci: a holder killed with SIGKILL never closes; the next first open starts from power-on", async () => {
  await withStore({ ...MTTY_PCI, model: "mtty-2" }, async (dir) => {
    const initial = stateFile(dir);
    const h = await Holder.start(dir);
    assertEquals(await h.ask("scr 66"), "66");
    assertEquals(await h.ask(`set ${STOP}`), String(STOP));
    await h.end("SIGKILL");
    assertEquals([metaOf(dir).state, stateFile(dir)[7]], [STOP, 66], "nothing ran at the kill");
    const s = Sim.open(dir);
    try {
      assertEquals(s.state(), RUNNING, "the first open reset it");
      assertEquals(stateFile(dir), initial);
    } finally {
      s.close();
    }
  });
});

Deno.test("VFIO_DEVICE_RESET: an mdev keeps its data; a PCI function (FLR) loses it but keeps its config", async () => {
  for (const family of ["mdev", "pci"] as const) {
    await withStore({ model: "bulk", size: 8192, family }, (dir) => {
      const initial = stateFile(dir);
      const s = Sim.open(dir);
      try {
        // Load other data: RESUMING, a whole bulk stream of zeros, STOP.
        s.set(STOP);
        const fd = s.set(RESUMING);
        const hdr = new Uint8Array(32);
        const v = new DataView(hdr.buffer);
        v.setBigUint64(0, 0x4b4c55424d494656n, true);
        v.setUint32(8, 1, true);
        v.setBigUint64(16, 8192n, true);
        const rec = new Uint8Array(16);
        new DataView(rec.buffer).setBigUint64(8, 8192n, true);
        s.writeAll(fd, hdr);
        s.writeAll(fd, rec);
        s.writeAll(fd, new Uint8Array(8192));
        s.set(STOP);
        s.closeFd(fd);
        assertEquals(stateFile(dir), new Uint8Array(8192), "loaded");
        s.setConfig(0x04, [0x06, 0x00]);
        // An mdev's emulated MSI-X control takes the write; vfio-pci arms MSI-X by SET_IRQS only.
        if (family === "pci") s.setIrqs(2, [-1]);
        else s.setConfig(CAP_MSIX_AT + 3, [0x80]);
        const sc = s.set(STOP_COPY);
        s.reset();
        expectErrno(() => s.read(sc, 10), "ENODEV", `${family}: the session ended`);
        assertEquals(s.state(), RUNNING);
        assertEquals(
          stateFile(dir),
          family === "pci" ? initial : new Uint8Array(8192),
          `${family}: data after VFIO_DEVICE_RESET`,
        );
        // pci_try_reset_function saves and restores the function's config and MSI-X state.
        assertEquals([s.config(0x04, 2), s.config(CAP_MSIX_AT + 3, 1) & 0x80], [0x06, 0x80], `${family}: config kept`);
      } finally {
        s.close();
      }
    });
  }
});

Deno.test("adopt: a borrowed fd sees the holder's state and data; no lock, no reset while the holder holds it", async () => {
  await withStore(MTTY_PCI, async (dir) => {
    const initial = stateFile(dir);
    const h = await Holder.start(dir);
    try {
      assertEquals(await h.ask("scr 66"), "66");
      assertEquals(await h.ask(`set ${STOP}`), String(STOP));
      const fd = borrow(h);
      assertEquals(SimKernel.simDeviceOf(host, fd), Deno.realPathSync(dir), "recognised by its lock file");
      const k = new SimKernel(host);
      k.adopt(fd);
      const s = new Sim(k, fd, dir);
      assertEquals(s.state(), STOP, "the holder's state");
      const scr = new Uint8Array(1);
      k.pread(fd, scr, 7);
      assertEquals(scr[0], 66, "the holder's data");
      expectErrno(() => new SimKernel(host).open(`sim:${dir}`, O.RDWR), "EBUSY", "a fresh open: the device is held");
      expectErrno(() => k.adopt(fd), "EBUSY", "adopted twice");
      s.set(RUNNING_P2P);
      assertEquals(await h.ask("state"), String(RUNNING_P2P), "the holder sees the borrower's SET");
      assertEquals(await h.ask(`set ${STOP}`), String(STOP), "and goes on from there");
      assertEquals(s.state(), STOP, "the borrower sees the holder's SET");
      s.close();
      assertEquals([metaOf(dir).state, stateFile(dir)[7]], [STOP, 66], "the borrower's close reset nothing");
      assertEquals(await h.ask("state"), String(STOP), "the holder's fd still works");
      assertEquals(await h.ask("close"), "closed");
      assertEquals([metaOf(dir).state, stateFile(dir)], [RUNNING, initial], "the holder's close was the last");
    } finally {
      await h.end();
    }
  });
});

Deno.test("adopt: when the holder closes first, the borrower's close is the last and resets a pci device", async () => {
  await withStore(MTTY_PCI, async (dir) => {
    const initial = stateFile(dir);
    const h = await Holder.start(dir);
    let fd = -1;
    try {
      assertEquals(await h.ask("scr 77"), "77");
      fd = borrow(h);
      assertEquals(await h.ask("close"), "closed");
      assertEquals(stateFile(dir)[7], 77, "the borrower still holds it: no reset");
      expectErrno(() => new SimKernel(host).open(`sim:${dir}`, O.RDWR), "EBUSY", "still held, by the borrowed fd");
    } finally {
      await h.end();
    }
    const k = new SimKernel(host);
    k.adopt(fd);
    assertEquals(new Sim(k, fd, dir).state(), RUNNING);
    k.close(fd);
    assertEquals(stateFile(dir), initial, "the last close reset it");
  });
});

Deno.test("family pci: interrupts armed by a holder process are the device's; a borrower sees and changes them; the last close drops them", async () => {
  // vfio-pci's irq_type belongs to the vfio_pci_core_device, not to an fd (vfio_pci_intrs.c
  // vfio_pci_set_msi_trigger); vfio_pci_core_disable disarms at the last close.
  await withStore({ model: "bulk", size: 8192, family: "pci" }, async (dir) => {
    const MSI_CTL = CAP_MSI_AT + 2, MSIX_CTL = CAP_MSIX_AT + 2;
    const h = await Holder.start(dir);
    let fd = -1;
    try {
      assertEquals(await h.ask(`cfg ${MSI_CTL} 129`), String(0x80), "MSI enable written, not armed: cleared");
      assertEquals(await h.ask("irq 2 1"), "ok", "the holder arms MSI-X");
      assertEquals(await h.ask(`cfg ${MSIX_CTL}`), String(0x8003));
      fd = borrow(h);
      const k = new SimKernel(host);
      k.adopt(fd);
      const s = new Sim(k, fd, dir);
      assertEquals(s.config(MSIX_CTL, 2), 0x8003, "the borrower sees MSI-X armed by the holder");
      assertEquals(s.setIrqs(2), 0, "and disarms it");
      s.setIrqs(1, [-1]);
      assertEquals(await h.ask(`cfg ${MSIX_CTL}`), String(0x0003), "the holder sees it disarmed");
      assertEquals(await h.ask(`cfg ${MSI_CTL} 129`), String(0x81), "MSI armed by the borrower, enabled by the holder");
      assertEquals(await h.ask("close"), "closed");
      assertEquals(s.config(MSI_CTL, 2), 0x81, "the holder's close was not the last");
      k.close(fd);
      fd = -1;
    } finally {
      await h.end();
      if (fd >= 0) host.close(fd);
    }
    assertEquals(metaOf(dir).irqType, undefined, "the borrower's close was the last: disarmed");
    const again = Sim.open(dir);
    try {
      assertEquals([again.config(MSI_CTL, 2), again.config(MSIX_CTL, 2)], [0x80, 0x03], "power-on config");
    } finally {
      again.close();
    }
  });
});

Deno.test("simDeviceOf and adopt refuse what is not a simulated device", async () => {
  const [r, w] = host.pipe();
  try {
    assertEquals(SimKernel.simDeviceOf(host, r), null, "a pipe");
    assertEquals(SimKernel.simDeviceOf(host, 9999), null, "no such fd");
    expectErrno(() => new SimKernel(host).adopt(r), "EBADF", "adopt of a pipe");
  } finally {
    host.close(r);
    host.close(w);
  }
  await withStore({ model: "mtty-1" }, (dir) => {
    const other = host.open(`${dir}/device.json`, O.RDONLY | O.CLOEXEC);
    try {
      assertEquals(SimKernel.simDeviceOf(host, other), null, "a file of the device folder that is not its lock");
    } finally {
      host.close(other);
    }
    const s = Sim.open(dir);
    try {
      assertEquals(SimKernel.simDeviceOf(host, s.fd), Deno.realPathSync(dir), "an fd from open(sim:...)");
    } finally {
      s.close();
    }
  });
});

// Issue 22 item 4: a device's family comes from one rule (src/sim/store.ts familyOf: the
// device's --family, else its model's), and every layer that names it agrees: the
// device layer (info), the inventory (list), and the fresh-open warnings (a pci-family
// device was reset by the first open; its loaded state is lost at the last close).
Deno.test("family: every model without --family: sim create, info, list and fresh-open warnings agree", async () => {
  const { openDevice, systemFor, freshOpenWarnings } = await import("../../src/device/open.ts");
  const { listDevices } = await import("../../src/commands/list.ts");
  const { defaultFamily, familyOf, MODEL_NAMES, SimStore } = await import("../../src/sim/mod.ts");
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-family-" });
  const sysfs = await Deno.makeTempDir({ prefix: "vfio-mig-sysfs-" });
  try {
    for (const model of MODEL_NAMES) new SimStore(host, `${dir}/${model}`).create({ model });
    const listed = listDevices({ sysfs, includeSim: [dir], noOpen: true }).devices;
    for (const model of MODEL_NAMES) {
      const spec = `sim:${dir}/${model}`;
      const kind = familyOf(new SimStore(host, `${dir}/${model}`).readMeta());
      assertEquals(kind, defaultFamily(model), `${model}: the stored device has its model's family`);
      const pci = kind === "pci";
      const d = openDevice(systemFor([spec]), spec);
      try {
        assertEquals([d.family, d.resetsOnClose], [`sim-${kind}`, pci], `${model}: the device layer`);
        const item = listed.find((x) => x.device === spec)!;
        assertEquals([item.family, item.stateSurvivesClose], [`sim-${kind}`, !pci], `${model}: list`);
        assertEquals(freshOpenWarnings(d, "save").length, pci ? 1 : 0, `${model}: fresh save warns of the reset`);
        assertEquals(freshOpenWarnings(d, "load").length, pci ? 1 : 0, `${model}: load warns of the last close`);
      } finally {
        d.close();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(sysfs, { recursive: true });
  }
});

Deno.test("family: the CLI's sim create and info say the same family for xe (pci) and mtty-2 (mdev)", async () => {
  const CLI = new URL("../../cli.ts", import.meta.url).pathname;
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-family-" });
  const run = async (...args: string[]) => {
    const o = await new Deno.Command(Deno.execPath(), { args: ["run", "--allow-ffi", CLI, ...args] }).output();
    return { code: o.code, out: new TextDecoder().decode(o.stdout), err: new TextDecoder().decode(o.stderr) };
  };
  try {
    for (const [model, kind] of [["xe", "pci"], ["mtty-2", "mdev"]]) {
      const made = await run("sim", "create", `${dir}/${model}`, "--model", model);
      assertEquals(made.code, 0, made.err);
      assertEquals(made.out.includes(`family ${kind}`), true, made.out);
      const info = await run("info", "--device", `sim:${dir}/${model}`, "--json");
      assertEquals(info.code, 0, info.err);
      const j = JSON.parse(info.out);
      assertEquals([j.family, j.stateSurvivesClose], [`sim-${kind}`, kind === "mdev"], model);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
