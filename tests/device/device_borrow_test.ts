// Borrowing and inheriting device fds, naming the holder of a busy device, and the reset
// family, against fake /proc and sysfs trees (symlinks that read as the kernel's) and
// real processes for the refusals. What needs a real VFIO device is in
// tests/kernel/groups/borrow.ts.

import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import type { Sys } from "../../ffi/sys.ts";
import { DEVICE_FLAGS } from "../../ffi/vfio_uapi.ts";
import { borrowDevice, identify, parseFdSpec, selectHolderFd } from "../../src/device/borrow.ts";
import { borrowHint, busyError, DeviceBusyError, findHolders } from "../../src/device/busy.ts";
import { freshOpenWarnings, realResetBehaviour, survivesCloseText } from "../../src/device/family.ts";
import { Procfs } from "../../src/device/procfs.ts";
import { Sysfs } from "../../src/device/sysfs.ts";
import { VfioMigError } from "../../src/errors.ts";
import { describeAccess } from "../../src/commands/info.ts";
import type { DeviceReport } from "../../src/device/describe.ts";
import { BASE_ENV, CLI, DENO, euid, ROOT } from "../helpers/proc.ts";

const MDEV_A = "b1a2c3d4-0000-4000-8000-00000000000a";
const MDEV_B = "b1a2c3d4-0000-4000-8000-00000000000b";

/** A Sys whose environment is `env` over the real one (VFIO_MIG_PROCFS, VFIO_MIG_SYSFS), with overrides. */
function fakeSys(env: Record<string, string>, overrides: Partial<Sys> = {}): Sys {
  const host = libc();
  return new Proxy(host, {
    get(target, prop) {
      if (prop === "getenv") return (name: string) => (name in env ? env[name] : target.getenv(name));
      if (prop in overrides) return (overrides as Record<string | symbol, unknown>)[prop];
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

async function link(target: string, path: string): Promise<void> {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  await Deno.symlink(target, path);
}

/** A fake /proc: each process's comm and fd links. */
async function fakeProc(root: string, procs: Record<number, { comm: string; fds: Record<number, string> }>) {
  for (const [pid, p] of Object.entries(procs)) {
    await Deno.mkdir(`${root}/${pid}/fd`, { recursive: true });
    await Deno.writeTextFile(`${root}/${pid}/comm`, p.comm + "\n");
    for (const [fd, target] of Object.entries(p.fds)) await link(target, `${root}/${pid}/fd/${fd}`);
  }
}

async function pciDevice(
  root: string,
  addr: string,
  o: { driver: string; group: string; ids: [number, number, number, number]; reset?: string | null; cdev?: string },
) {
  const dev = `${root}/bus/pci/devices/${addr}`;
  await Deno.mkdir(dev, { recursive: true });
  await Deno.symlink(`../../../../bus/pci/drivers/${o.driver}`, `${dev}/driver`);
  const hex = (n: number) => `0x${n.toString(16).padStart(4, "0")}\n`;
  await Deno.writeTextFile(`${dev}/vendor`, hex(o.ids[0]));
  await Deno.writeTextFile(`${dev}/device`, hex(o.ids[1]));
  await Deno.writeTextFile(`${dev}/subsystem_vendor`, hex(o.ids[2]));
  await Deno.writeTextFile(`${dev}/subsystem_device`, hex(o.ids[3]));
  if (o.reset !== null && o.reset !== undefined) {
    await Deno.writeTextFile(`${dev}/reset`, "");
    await Deno.writeTextFile(`${dev}/reset_method`, o.reset + "\n");
  }
  await joinGroup(root, dev, addr, o.group);
  if (o.cdev) {
    await Deno.mkdir(`${dev}/vfio-dev/${o.cdev}`, { recursive: true });
    await link(dev, `${root}/class/vfio-dev/${o.cdev}/device`);
  }
}

async function joinGroup(root: string, dev: string, name: string, group: string) {
  await Deno.mkdir(`${root}/kernel/iommu_groups/${group}/devices`, { recursive: true });
  await Deno.symlink(`../../../../kernel/iommu_groups/${group}`, `${dev}/iommu_group`);
  await Deno.symlink(dev, `${root}/kernel/iommu_groups/${group}/devices/${name}`);
}

async function mdev(root: string, uuid: string, type: string, group: string) {
  const dev = `${root}/bus/mdev/devices/${uuid}`;
  await Deno.mkdir(dev, { recursive: true });
  await Deno.symlink("../../../../bus/mdev/drivers/mtty", `${dev}/driver`);
  await Deno.symlink(`../../../../devices/virtual/mtty/mtty/mdev_supported_types/${type}`, `${dev}/mdev_type`);
  await joinGroup(root, dev, uuid, group);
}

/**
 * sysfs: 0000:3b:00.1 (mlx5_vfio_pci, group 11, flr, cdev vfio3); 0000:3b:00.2 and
 * 0000:3b:00.3 share group 12 with different device ids; 0000:5e:00.0 vfio-pci without
 * a reset method (group 13); two mtty-2 mdevs (groups 20, 21).
 */
async function fakeSysfs(root: string) {
  await pciDevice(root, "0000:3b:00.1", {
    driver: "mlx5_vfio_pci",
    group: "11",
    ids: [0x15b3, 0x101e, 0x15b3, 0x0042],
    reset: "flr",
    cdev: "vfio3",
  });
  await pciDevice(root, "0000:3b:00.2", { driver: "vfio-pci", group: "12", ids: [0x8086, 0x1889, 0x8086, 1] });
  await pciDevice(root, "0000:3b:00.3", { driver: "vfio-pci", group: "12", ids: [0x8086, 0x188a, 0x8086, 1] });
  await pciDevice(root, "0000:5e:00.0", { driver: "vfio-pci", group: "13", ids: [0x1af4, 0x1041, 0, 0], reset: null });
  await mdev(root, MDEV_A, "mtty-2", "20");
  await mdev(root, MDEV_B, "mtty-2", "21");
}

async function withTrees(fn: (proc: string, sys: string) => Promise<void> | void) {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-borrow-" });
  try {
    await Deno.mkdir(`${dir}/proc`);
    await Deno.mkdir(`${dir}/sys`);
    await fakeSysfs(`${dir}/sys`);
    await fn(`${dir}/proc`, `${dir}/sys`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A config space whose first 0x30 bytes carry these ids. */
function config(vendor: number, device: number, subVendor: number, subDevice: number): Uint8Array {
  const c = new Uint8Array(0x40);
  const v = new DataView(c.buffer);
  v.setUint16(0, vendor, true);
  v.setUint16(2, device, true);
  v.setUint16(0x2c, subVendor, true);
  v.setUint16(0x2e, subDevice, true);
  return c;
}

Deno.test("device specs: pid:PID, pid:PID:FD and fd:N parse; malformed ones are usage errors", () => {
  assertEquals(parseFdSpec("pid:4242"), { kind: "pid", pid: 4242, fd: null });
  assertEquals(parseFdSpec("pid:4242:31"), { kind: "pid", pid: 4242, fd: 31 });
  assertEquals(parseFdSpec("fd:7"), { kind: "fd", fd: 7 });
  assertEquals(parseFdSpec("0000:3b:00.1"), null);
  assertEquals(parseFdSpec("sim:/tmp/a"), null);
  for (const bad of ["pid:", "pid:x", "pid:0", "pid:1:x", "fd:", "fd:-1", "pid:1:2:3"]) {
    const e = assertThrows(() => parseFdSpec(bad), VfioMigError, bad);
    assertEquals(e.exitCode, 2, bad);
  }
});

Deno.test("/proc: a process's VFIO fds are classified from their links, other fds ignored", async () => {
  await withTrees(async (proc) => {
    await fakeProc(proc, {
      4242: {
        comm: "qemu-system-x86",
        fds: {
          3: "socket:[12345]",
          20: "/dev/vfio/vfio",
          21: "/dev/vfio/11",
          22: "anon_inode:[vfio-device]",
          23: "/dev/vfio/devices/vfio3",
          24: "/dev/iommu",
          25: "anon_inode:[eventfd]",
          26: "/var/lib/x/lock", // a file named lock without a device.json: not a sim device
        },
      },
    });
    const p = new Procfs(libc(), proc);
    assertEquals(p.command(4242), "qemu-system-x86");
    assertEquals(p.vfioFds(4242).map((f) => [f.fd, f.kind]), [
      [20, "container"],
      [21, "group"],
      [22, "device"],
      [23, "cdev"],
      [24, "iommufd"],
    ]);
    assertEquals(p.pids(), [4242]);
    const gone = assertThrows(() => p.vfioFds(4343), VfioMigError, "no such process");
    assertEquals(gone.exitCode, 3);
  });
});

Deno.test("pid:PID picks the holder's only device fd; several need :FD; a non-device fd is refused", async () => {
  await withTrees(async (proc) => {
    await fakeProc(proc, {
      100: { comm: "qemu", fds: { 5: "/dev/vfio/vfio", 6: "/dev/vfio/11", 7: "anon_inode:[vfio-device]" } },
      200: {
        comm: "dpdk",
        fds: { 9: "/dev/vfio/12", 10: "anon_inode:[vfio-device]", 11: "anon_inode:[vfio-device]", 0: "/dev/null" },
      },
      300: { comm: "waiting", fds: { 4: "/dev/vfio/vfio", 5: "/dev/vfio/13" } },
      400: { comm: "idle", fds: { 0: "/dev/null" } },
    });
    const p = new Procfs(libc(), proc);
    assertEquals(selectHolderFd(p, { pid: 100, fd: null }, "pid:100").chosen.fd, 7);
    assertEquals(selectHolderFd(p, { pid: 200, fd: 11 }, "pid:200:11").chosen.fd, 11);

    const several = assertThrows(() => selectHolderFd(p, { pid: 200, fd: null }, "pid:200"), VfioMigError);
    assertEquals(several.exitCode, 3, "a borrow problem (docs/device-state.md): exit 3, as the others");
    assertEquals(
      several.message,
      "pid:200: pid 200 (dpdk) holds 2 VFIO device fds (10, 11): choose one with pid:200:FD",
    );

    const notDevice = assertThrows(() => selectHolderFd(p, { pid: 200, fd: 0 }, "pid:200:0"), VfioMigError);
    assertEquals(notDevice.exitCode, 3);
    assertEquals(
      notDevice.message,
      "pid:200:0: fd 0 of pid 200 (dpdk) is /dev/null, not a VFIO device (its VFIO device fds: 10, 11)",
    );
    const group = assertThrows(() => selectHolderFd(p, { pid: 200, fd: 9 }, "pid:200:9"), VfioMigError);
    assertStringIncludes(group.message, "is the VFIO group /dev/vfio/12, not a VFIO device");
    const noFd = assertThrows(() => selectHolderFd(p, { pid: 200, fd: 99 }, "pid:200:99"), VfioMigError);
    assertEquals(noFd.message, "pid:200:99: pid 200 (dpdk) has no fd 99");

    const waiting = assertThrows(() => selectHolderFd(p, { pid: 300, fd: null }, "pid:300"), VfioMigError);
    assertMatch(waiting.message, /holds no VFIO device fd \(only a VFIO container .*, the VFIO group \/dev\/vfio\/13/);
    const idle = assertThrows(() => selectHolderFd(p, { pid: 400, fd: null }, "pid:400"), VfioMigError);
    assertEquals(idle.message, "pid:400: pid 400 (idle) holds no VFIO device fd");
  });
});

Deno.test("EBUSY names the holder: group, cdev and several holders; none visible says so", async () => {
  await withTrees(async (proc) => {
    await fakeProc(proc, {
      4242: {
        comm: "qemu-system-x86",
        fds: { 20: "/dev/vfio/vfio", 21: "/dev/vfio/11", 22: "anon_inode:[vfio-device]" },
      },
      5000: { comm: "cloud-hypervisor", fds: { 8: "/dev/iommu", 9: "/dev/vfio/devices/vfio3", 10: "/dev/vfio/12" } },
      5001: {
        comm: "dpdk-testpmd",
        fds: { 3: "/dev/vfio/13", 4: "anon_inode:[vfio-device]", 5: "anon_inode:[vfio-device]" },
      },
    });
    const sys = fakeSys({ VFIO_MIG_PROCFS: proc });
    const e = busyError(sys, "0000:3b:00.1", { group: "11" });
    assert(e instanceof DeviceBusyError);
    assertEquals(e.exitCode, 3);
    assertEquals(
      e.message,
      "0000:3b:00.1 is held by qemu-system-x86 (pid 4242); to save its state while it is paused: --device pid:4242",
    );
    // Through its cdev: the cdev fd is the device fd to borrow.
    const cdev = busyError(sys, "/dev/vfio/devices/vfio3", { group: "11", cdev: "vfio3" });
    assertEquals(cdev.holders.map((h) => [h.pid, h.deviceFds]), [[4242, [22]], [5000, [9]]]);
    assertStringIncludes(cdev.message, "is held by qemu-system-x86 (pid 4242) and cloud-hypervisor (pid 5000);");
    // A holder with several device fds: the hint says which to choose from.
    const h = findHolders(new Procfs(libc(), proc), { group: "13" }, 1);
    assertEquals(borrowHint(h[0]), "--device pid:5001:FD (its VFIO device fds: 4, 5)");
    const none = busyError(sys, "0000:5e:00.0", { group: "99" });
    // A process handed the device fd alone (its group and container closed at exec) may be it.
    await fakeProc(proc, { 6000: { comm: "sh", fds: { 0: "/dev/null", 7: "anon_inode:[vfio-device]" } } });
    const handed = busyError(sys, "0000:5e:00.0", { group: "99" });
    assertEquals(handed.holders.map((h) => [h.pid, h.certain]), [[6000, false]]);
    assertEquals(
      handed.message,
      "0000:5e:00.0 is probably held by sh (pid 6000); to save its state while it is paused: --device pid:6000",
    );
    assertEquals(none.holders, [], "every process with a device fd also holds a group");
    assertMatch(none.message, /^0000:5e:00\.0 is busy: another process has it open, and none .* holds it/);
  });
});

Deno.test("a group-path device fd is told by its holder's groups and its PCI ids; like mdevs share an identity", async () => {
  await withTrees((_proc, sysRoot) => {
    const sysfs = new Sysfs(libc(), sysRoot);
    const dev = { fd: 22, kind: "device" as const, target: "anon_inode:[vfio-device]" };
    const group = (g: string, fd = 21) => ({ fd, kind: "group" as const, target: `/dev/vfio/${g}`, group: g });
    // Alone in its group.
    let r = identify(sysfs, dev, [group("11")], config(0x15b3, 0x101e, 0x15b3, 0x0042));
    assertEquals(r.dev?.name, "0000:3b:00.1");
    // Two functions in one group: the config space's device id picks one.
    r = identify(sysfs, dev, [group("12")], config(0x8086, 0x188a, 0x8086, 1));
    assertEquals([r.dev?.name, r.candidates.length], ["0000:3b:00.3", 1]);
    // Ids that match nothing in the groups held: no candidate.
    r = identify(sysfs, dev, [group("12")], config(0x1234, 0x5678, 0, 0));
    assertEquals([r.dev, r.candidates.length], [null, 0]);
    // An inherited fd whose groups were closed at exec: every vfio device is a candidate;
    // two mtty-2 mdevs stay (sysfs has no ids for mdevs), the PCI ones do not match.
    r = identify(sysfs, dev, [], config(0x4348, 0x3253, 0x4348, 0x3253));
    assertEquals(r.dev, null);
    assertEquals(r.candidates.map((c) => c.name).sort(), [MDEV_A, MDEV_B]);
    // ... unless the caller knows the name (VFIO_MIG_DEVICE_NAME from execWithDeviceFd).
    r = identify(sysfs, dev, [], config(0x4348, 0x3253, 0x4348, 0x3253), MDEV_B.toUpperCase());
    assertEquals(r.dev?.name, MDEV_B);
    // A name that is not a candidate is not believed.
    r = identify(sysfs, dev, [], config(0x4348, 0x3253, 0x4348, 0x3253), "0000:3b:00.1");
    assertEquals(r.dev, null);
    // A cdev fd says which device it is.
    r = identify(sysfs, { fd: 9, kind: "cdev", target: "/dev/vfio/devices/vfio3", node: "vfio3" }, [], null);
    assertEquals(r.dev?.name, "0000:3b:00.1");
  });
});

Deno.test("reset family from sysfs: vfio-pci with a reset method resets at close; none, or an mdev, keeps state", async () => {
  await withTrees((_proc, sysRoot) => {
    const sysfs = new Sysfs(libc(), sysRoot);
    const mlx = sysfs.find("0000:3b:00.1")!;
    const virtio = sysfs.find("0000:5e:00.0")!;
    const mtty = sysfs.find(MDEV_A)!;
    assertEquals(sysfs.resetMethods(mlx), ["flr"]);
    assertEquals(sysfs.resetMethods(virtio), []);
    assertEquals(sysfs.pciIds(mlx), {
      vendor: 0x15b3,
      device: 0x101e,
      subsystemVendor: 0x15b3,
      subsystemDevice: 0x0042,
      classCode: null,
    });
    const r = realResetBehaviour(sysfs, mlx);
    assertEquals([r.family, r.resetsOnClose], ["vfio-pci", true]);
    assertEquals(survivesCloseText(r), "no (vfio-pci resets the function)");
    assertEquals(realResetBehaviour(sysfs, virtio).resetsOnClose, false);
    assertEquals(realResetBehaviour(sysfs, mtty), {
      family: "mdev",
      resetsOnClose: false,
      reason: "mdev: its parent driver keeps it",
    });
    // An open device's VFIO_DEVICE_GET_INFO flags override sysfs: RESET set exactly when
    // vfio-pci-core's first-open reset worked.
    assertEquals(realResetBehaviour(sysfs, virtio, DEVICE_FLAGS.PCI | DEVICE_FLAGS.RESET).resetsOnClose, true);
    assertEquals(realResetBehaviour(sysfs, mlx, DEVICE_FLAGS.PCI).resetsOnClose, false);
    assertEquals(realResetBehaviour(sysfs, null).family, "unknown");
  });
});

Deno.test("fresh-open warnings: save and load on a fresh vfio-pci open; none when borrowed, inherited or mdev", () => {
  const d = { label: "0000:3b:00.1", access: "group", resetsOnClose: true, openedFresh: true };
  const [save] = freshOpenWarnings(d, "save");
  assertMatch(save, /saved post-reset state.*to save the state a process holds, borrow it: --device pid:PID/);
  const [load] = freshOpenWarnings(d, "load");
  assertMatch(load, /the loaded state is lost when vfio-mig exits unless the fd is handed on: --exec CMD/);
  assertEquals(freshOpenWarnings({ ...d, access: "borrowed", openedFresh: false }, "save"), []);
  assertEquals(freshOpenWarnings({ ...d, access: "inherited", openedFresh: false }, "load"), []);
  // An unbound cdev handed down and bound here: the bind reset it, but the parent still holds the file.
  assertEquals(freshOpenWarnings({ ...d, access: "inherited" }, "save").length, 1);
  assertEquals(freshOpenWarnings({ ...d, access: "inherited" }, "load"), []);
  assertEquals(freshOpenWarnings({ ...d, resetsOnClose: false }, "save"), []);
});

Deno.test("borrowing: a refused pidfd_getfd (EPERM) is one line naming ptrace rights; ESRCH says the process exited", async () => {
  await withTrees(async (proc) => {
    const sleeper = new Deno.Command("sleep", { args: ["30"], stdin: "null" }).spawn();
    try {
      await fakeProc(proc, {
        [sleeper.pid]: { comm: "qemu", fds: { 5: "/dev/vfio/11", 7: "anon_inode:[vfio-device]" } },
      });
      const refuse = (errno: number) =>
        fakeSys({ VFIO_MIG_PROCFS: proc }, {
          pidfdGetfd: () => {
            throw new SysError("pidfd_getfd", errno, "fd 7");
          },
        });
      const spec = `pid:${sleeper.pid}`;
      const eperm = assertThrows(() => borrowDevice(refuse(Errno.EPERM), spec), VfioMigError);
      assertEquals(eperm.exitCode, 3);
      assertMatch(
        eperm.message,
        new RegExp(
          `^${spec}: not permitted to take fd 7 from pid ${sleeper.pid} \\(pidfd_getfd: EPERM\\): ` +
            `borrowing needs ptrace rights over the holder: run as root, or as its user`,
        ),
      );
      assert(!eperm.message.includes("\n"), "one line");
      assertEquals(
        assertThrows(() => borrowDevice(refuse(Errno.ESRCH), spec), VfioMigError).message,
        `${spec}: pid ${sleeper.pid} exited`,
      );
      assertStringIncludes(
        assertThrows(() => borrowDevice(refuse(Errno.ENOSYS), spec), VfioMigError).message,
        "needs Linux >= 5.6",
      );
      // The fake table says fd 7 is a device; the real fd 7 of `sleep` is not open (or is
      // something else): the borrowed fd is checked against what was looked at.
      const real = assertThrows(() => borrowDevice(fakeSys({ VFIO_MIG_PROCFS: proc }), spec), VfioMigError);
      assertEquals(real.exitCode, 3);
      assertMatch(real.message, /closed meanwhile|changed while it was being taken/);
    } finally {
      sleeper.kill("SIGKILL");
      await sleeper.status;
    }
  });
});

Deno.test("info's device line says how the fd was reached", () => {
  const base = {
    device: "pid:4242",
    access: "borrowed",
    path: "group",
    name: "0000:3b:00.1",
    candidates: [],
    holder: { pid: 4242, fd: 31, command: "qemu-system-x86" },
    kind: "pci",
  } as unknown as DeviceReport;
  assertEquals(
    describeAccess(base),
    "pid:4242 = 0000:3b:00.1 (pci, borrowed from qemu-system-x86 (pid 4242) fd 31, opened there via group)",
  );
  assertEquals(
    describeAccess({ ...base, device: "fd:7", access: "inherited", name: "fd:7", candidates: [MDEV_A, MDEV_B] }),
    `fd:7 = one of ${MDEV_A}, ${MDEV_B} (pci, inherited fd, opened via group)`,
  );
  assertEquals(
    describeAccess({ ...base, device: "0000:3b:00.1", access: "group", holder: null }),
    "0000:3b:00.1 (pci, opened via group)",
  );
});

// ---------------------------------------------------------------------------
// The CLI against real processes: each refusal is one line, exit 3, nothing touched.

async function run(args: string[], opts: { env?: Record<string, string>; uid?: number } = {}) {
  const argv = [DENO, "run", "--allow-ffi", CLI, ...args];
  const cmd = opts.uid === undefined
    ? new Deno.Command(argv[0], { args: argv.slice(1), cwd: ROOT, env: { ...BASE_ENV, ...opts.env }, stdin: "null" })
    : new Deno.Command("setpriv", {
      args: [`--reuid=${opts.uid}`, `--regid=${opts.uid}`, "--clear-groups", ...argv],
      cwd: ROOT,
      env: { ...BASE_ENV, ...opts.env },
      stdin: "null",
    });
  const out = await cmd.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function oneLine(r: { stderr: string }): string {
  const lines = r.stderr.trim().split("\n");
  assertEquals(lines.length, 1, `one line on stderr: ${r.stderr}`);
  return lines[0];
}

Deno.test("CLI: pid:/fd: refusals are one line and exit 3 (gone, not a VFIO fd, no device fd, not open)", async () => {
  const sleeper = new Deno.Command("sleep", { args: ["30"], stdin: "null" }).spawn();
  try {
    let r = await run(["info", "--device", "pid:999999999"]);
    assertEquals([r.code, oneLine(r)], [3, "vfio-mig: pid:999999999: no such process"]);
    r = await run(["state", "--device", `pid:${sleeper.pid}:0`]);
    assertEquals(r.code, 3);
    assertMatch(
      oneLine(r),
      new RegExp(`^vfio-mig: pid:${sleeper.pid}:0: fd 0 of pid ${sleeper.pid} \\(sleep\\) is .*, not a VFIO device$`),
    );
    r = await run(["info", "--device", `pid:${sleeper.pid}`]);
    assertEquals([r.code, oneLine(r)], [
      3,
      `vfio-mig: pid:${sleeper.pid}: pid ${sleeper.pid} (sleep) holds no VFIO device fd`,
    ]);
    r = await run(["info", "--device", "fd:0"]);
    assertEquals(r.code, 3);
    assertMatch(oneLine(r), /^vfio-mig: fd:0: fd 0 is .*, not a VFIO device$/);
    r = await run(["state", "--device", "fd:57"]);
    assertEquals(r.code, 3);
    assertMatch(oneLine(r), /^vfio-mig: fd:57: fd 57 is not open in this process/);
    r = await run(["info", "--device", "pid:abc"]);
    assertEquals(r.code, 2);
  } finally {
    sleeper.kill("SIGKILL");
    await sleeper.status;
  }
});

Deno.test({
  name: "CLI: borrowing from another user's process without ptrace rights is one line, exit 3",
  ignore: euid() !== 0, // needs root to run vfio-mig as another user
  async fn() {
    const sleeper = new Deno.Command("sleep", { args: ["30"], stdin: "null" }).spawn();
    const denoDir = await Deno.makeTempDir({ prefix: "vfio-mig-deno-" });
    await Deno.chmod(denoDir, 0o777);
    try {
      for (const spec of [`pid:${sleeper.pid}`, `pid:${sleeper.pid}:0`]) {
        const r = await run(["info", "--device", spec], { uid: 65534, env: { DENO_DIR: denoDir } });
        assertEquals(r.code, 3, r.stderr);
        assertMatch(
          oneLine(r),
          new RegExp(
            `^vfio-mig: ${spec}: permission denied reading /proc/${sleeper.pid}/fd: borrowing a device ` +
              `needs ptrace rights over the process that holds it`,
          ),
        );
      }
    } finally {
      sleeper.kill("SIGKILL");
      await sleeper.status;
      await Deno.remove(denoDir, { recursive: true });
    }
  },
});

Deno.test("list and info show the family and whether state survives a close, in text and --json", async () => {
  await withTrees(async (_proc, sysRoot) => {
    const r = await run(["list", "--sysfs", sysRoot, "--no-open", "--json"]);
    assertEquals(r.code, 0, r.stderr);
    const by = Object.fromEntries(
      JSON.parse(r.stdout).devices.map((d: { device: string }) => [d.device, d]),
    );
    const facts = (n: string) => [by[n].family, by[n].stateSurvivesClose, by[n].resetReason];
    assertEquals(facts("0000:3b:00.1"), ["vfio-pci", false, "vfio-pci resets the function"]);
    assertEquals(facts("0000:5e:00.0"), [
      "vfio-pci",
      true,
      "vfio-pci, but the function has no reset method: its state is kept",
    ]);
    assertEquals(facts(MDEV_A), ["mdev", true, "mdev: its parent driver keeps it"]);
    const text = await run(["list", "--sysfs", sysRoot, "--no-open"]);
    assertMatch(
      text.stdout,
      /0000:3b:00\.1 .*\n(.*\n)*? {2}close {8}state survives close: no \(vfio-pci resets the function\)/,
    );
    assertMatch(text.stdout, new RegExp(`${MDEV_A} .*\\n(.*\\n)*?  close {8}state survives close: yes \\(mdev`));
  });
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-family-" });
  try {
    const mk = await run(["sim", "create", `${dir}/a`, "--model", "mtty-2"]);
    assertEquals(mk.code, 0, mk.stderr);
    const info = JSON.parse((await run(["info", "--json", "--device", `sim:${dir}/a`])).stdout);
    assertEquals(
      [info.access, info.path, info.holder, info.openedFresh, info.family, info.stateSurvivesClose],
      ["sim", "sim", null, true, "sim-mdev", true],
    );
    const text = (await run(["info", "--device", `sim:${dir}/a`])).stdout;
    assertStringIncludes(text, "family:          sim-mdev; state survives close: yes (simulated mdev: state kept)");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
