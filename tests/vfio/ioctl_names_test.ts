// Every ioctl error names the ioctl (VFIO_SET_IOMMU, VFIO_DEVICE_FEATURE, ...), never a
// raw request number; VFIO_SET_IOMMU's EPERM (no interrupt remapping) says the cause and
// the way out, exit 3. The EPERM is simulated through the Sys seam over a fake sysfs:
// what the real kernel does is in ../shared/docs/pci-in-guest.md ("What failed first").

import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import { GROUP_FLAGS, IOCTL, ioctlName } from "../../ffi/vfio_uapi.ts";
import { openDevice } from "../../src/device/open.ts";
import { describeError, VfioMigError } from "../../src/errors.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";

Deno.test("ioctlName: every VFIO and iommufd request has the kernel's name; an unknown one is hex", () => {
  assertEquals(ioctlName(0x3b66), "VFIO_SET_IOMMU");
  assertEquals(ioctlName(IOCTL.DEVICE_FEATURE), "VFIO_DEVICE_FEATURE");
  assertEquals(ioctlName(IOCTL.MIG_GET_PRECOPY_INFO), "VFIO_MIG_GET_PRECOPY_INFO");
  assertEquals(ioctlName(IOCTL.IOMMU_IOAS_ALLOC), "IOMMU_IOAS_ALLOC");
  assertEquals(ioctlName(0x5401), "0x5401");
  for (const v of Object.values(IOCTL)) assertMatch(ioctlName(v), /^(VFIO|IOMMU)_[A-Z_0-9]+$/);
});

Deno.test("libc: a failing ioctl's error names it (ENOTTY on /dev/null)", () => {
  const sys = libc();
  const fd = sys.open("/dev/null", O.RDWR | O.CLOEXEC);
  try {
    const e = assertThrows(() => sys.ioctl(fd, IOCTL.SET_IOMMU, 3), SysError);
    assertEquals(e.errno, Errno.ENOTTY);
    assertEquals(e.message, "ioctl (VFIO_SET_IOMMU): ENOTTY (Inappropriate ioctl for device)");
  } finally {
    sys.close(fd);
  }
});

Deno.test("simulator: an ioctl refused by the simulated kernel names the ioctl too", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-ioctl-" });
  try {
    const sim = new SimKernel(libc());
    new SimStore(sim, `${dir}/d`).create({ model: "mtty-2" });
    const dev = openDevice(sim, `sim:${dir}/d`);
    try {
      // An argsz below the header's 8 bytes: EINVAL (vfio_ioctl_device_feature).
      const e = assertThrows(() => sim.ioctl(dev.fd, IOCTL.DEVICE_FEATURE, new Uint8Array(8)), SysError);
      assertEquals(e.errno, Errno.EINVAL);
      assertStringIncludes(e.message, "ioctl (VFIO_DEVICE_FEATURE): EINVAL");
    } finally {
      dev.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** sysfs with one vfio-pci function, 0000:01:00.0, alone in IOMMU group 7. */
async function fakeSysfs(root: string): Promise<void> {
  const dev = `${root}/bus/pci/devices/0000:01:00.0`;
  await Deno.mkdir(dev, { recursive: true });
  await Deno.mkdir(`${root}/bus/pci/drivers/vfio-pci`, { recursive: true });
  await Deno.symlink("../../../../bus/pci/drivers/vfio-pci", `${dev}/driver`);
  for (
    const [f, v] of [["vendor", 0x1234], ["device", 0x11e8], ["subsystem_vendor", 0x1af4], ["subsystem_device", 0x1100]]
  ) {
    await Deno.writeTextFile(`${dev}/${f}`, `0x${(v as number).toString(16).padStart(4, "0")}\n`);
  }
  await Deno.writeTextFile(`${dev}/reset_method`, "bus\n");
  await Deno.mkdir(`${root}/kernel/iommu_groups/7/devices`, { recursive: true });
  await Deno.symlink("../../../../kernel/iommu_groups/7", `${dev}/iommu_group`);
  await Deno.symlink(dev, `${root}/kernel/iommu_groups/7/devices/0000:01:00.0`);
}

/**
 * A Sys over libc whose /dev/vfio/vfio and /dev/vfio/7 are /dev/null fds answering the
 * container and group ioctls as vfio does, except VFIO_SET_IOMMU: `setIommuErrno`.
 */
function fakeVfio(sysRoot: string, setIommuErrno: number): { sys: Sys; closed: () => boolean; calls: string[] } {
  const host = libc();
  const ours = new Set<number>();
  const calls: string[] = [];
  const sys = new Proxy(host, {
    get(target, prop) {
      if (prop === "getenv") return (n: string) => (n === "VFIO_MIG_SYSFS" ? sysRoot : target.getenv(n));
      if (prop === "open") {
        return (path: string, flags: number, mode?: number) => {
          if (path !== "/dev/vfio/vfio" && path !== "/dev/vfio/7") return target.open(path, flags, mode);
          const fd = target.open("/dev/null", O.RDWR | O.CLOEXEC);
          ours.add(fd);
          return fd;
        };
      }
      if (prop === "close") {
        return (fd: number) => {
          ours.delete(fd);
          target.close(fd);
        };
      }
      if (prop === "ioctl") {
        return (fd: number, request: number, arg: Uint8Array | number | null) => {
          if (!ours.has(fd)) return target.ioctl(fd, request, arg);
          calls.push(ioctlName(request));
          switch (request) {
            case IOCTL.GET_API_VERSION:
              return 0;
            case IOCTL.GROUP_GET_STATUS:
              new DataView((arg as Uint8Array).buffer).setUint32(4, GROUP_FLAGS.VIABLE, true);
              return 0;
            case IOCTL.GROUP_SET_CONTAINER:
              return 0;
            case IOCTL.CHECK_EXTENSION:
              return 1;
            case IOCTL.SET_IOMMU:
              throw new SysError("ioctl", setIommuErrno, ioctlName(request));
            default:
              throw new SysError("ioctl", Errno.ENOTTY, ioctlName(request));
          }
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { sys, closed: () => ours.size === 0, calls };
}

Deno.test("VFIO_SET_IOMMU EPERM: the cause (no interrupt remapping) and the way out, exit 3, fds closed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-ioctl-" });
  try {
    await fakeSysfs(dir);
    const f = fakeVfio(dir, Errno.EPERM);
    const e = assertThrows(() => openDevice(f.sys, "0000:01:00.0"), VfioMigError);
    const d = describeError(e);
    assertEquals(d.exitCode, 3);
    assertStringIncludes(d.message, "0000:01:00.0: VFIO_SET_IOMMU: EPERM");
    assertStringIncludes(d.message, "no interrupt remapping");
    assertStringIncludes(d.message, "allow_unsafe_interrupts=1");
    assertStringIncludes(d.message, "at your own risk");
    assert(!/0x3b66/.test(d.message), d.message);
    assertEquals(d.message.split("\n").length, 1);
    assert(f.closed(), "the container and group fds were left open");
    assertEquals(f.calls.at(-1), "VFIO_SET_IOMMU");

    // Another errno from VFIO_SET_IOMMU is not explained as interrupt remapping, but named.
    const g = fakeVfio(dir, Errno.EINVAL);
    const e2 = assertThrows(() => openDevice(g.sys, "0000:01:00.0"), SysError);
    assertEquals(describeError(e2).message, "ioctl (VFIO_SET_IOMMU): EINVAL (Invalid argument)");
    assert(g.closed(), "fds left open after EINVAL");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
