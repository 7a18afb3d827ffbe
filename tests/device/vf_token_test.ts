// --vf-token / OpenOptions.vfToken: the name VFIO_GROUP_GET_DEVICE_FD gets, the token in
// VFIO_DEVICE_BIND_IOMMUFD, and each refusal's one line, against a fake sysfs tree (PF, VFs,
// a plain function) and a fake VFIO kernel that applies vfio-pci's VF token rules
// (drivers/vfio/pci/vfio_pci_core.c vfio_pci_validate_vf_token / vfio_pci_core_match:
// EACCES without the token or with another, EINVAL for a token where none applies, a PF's
// token set by the first open that gives one while no VF is in use). Then the CLI: usage
// errors, and the token kept out of --json, --events and stderr.

import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { libc } from "../../ffi/libc.ts";
import type { IoctlArg, Sys } from "../../ffi/sys.ts";
import { decode, encodeInto, GROUP_FLAGS, IOCTL, STRUCTS, VFIO_API_VERSION } from "../../ffi/vfio_uapi.ts";
import "../../src/sim/ops.ts"; // registers sim: (a backend's spec takes no token)
import { openDevice } from "../../src/device/open.ts";
import { Sysfs } from "../../src/device/sysfs.ts";
import { parseVfToken, releaseBefore, vfTokenBytes, vfTokenTarget } from "../../src/device/vf_token.ts";
import { VfioMigError } from "../../src/errors.ts";
import { runCli, show } from "../helpers/proc.ts";

const PF = "0000:04:00.0"; // SR-IOV PF bound to vfio-pci
const VF = "0000:04:10.0"; // its VF
const VF2 = "0000:04:10.1"; // another of its VFs
const IGB_VF = "0000:05:10.0"; // a VF whose PF (0000:05:00.0) is bound to igb
const PLAIN = "0000:06:00.0"; // neither PF nor VF
const ODD_VF = "0000:07:10.0"; // sysfs: PF on vfio-pci; the kernel: PF not vfio-pci's (EINVAL with a token)
const T = "5b1c7a9e-0f3d-4e2a-9c4b-7d6e5f4a3b2c";
const OTHER = "d8a5e2f0-1111-4222-8333-944455556666";

const GROUPS: Record<string, string> = {
  [PF]: "10",
  [VF]: "11",
  [VF2]: "12",
  [IGB_VF]: "13",
  [PLAIN]: "14",
  [ODD_VF]: "15",
  "0000:05:00.0": "16",
  "0000:07:00.0": "17",
};

async function fakeSysfs(root: string): Promise<void> {
  const fn = async (addr: string, driver: string, o: { physfn?: string; totalVfs?: number; cdev?: string } = {}) => {
    const dev = `${root}/bus/pci/devices/${addr}`;
    await Deno.mkdir(dev, { recursive: true });
    await Deno.symlink(`../../../../bus/pci/drivers/${driver}`, `${dev}/driver`);
    if (o.physfn) await Deno.symlink(`../${o.physfn}`, `${dev}/physfn`);
    if (o.totalVfs !== undefined) await Deno.writeTextFile(`${dev}/sriov_totalvfs`, `${o.totalVfs}\n`);
    const group = GROUPS[addr];
    await Deno.mkdir(`${root}/kernel/iommu_groups/${group}/devices`, { recursive: true });
    await Deno.symlink(`../../../../kernel/iommu_groups/${group}`, `${dev}/iommu_group`);
    await Deno.symlink(dev, `${root}/kernel/iommu_groups/${group}/devices/${addr}`);
    if (o.cdev) {
      await Deno.mkdir(`${dev}/vfio-dev/${o.cdev}`, { recursive: true });
      await Deno.mkdir(`${root}/class/vfio-dev/${o.cdev}`, { recursive: true });
      await Deno.symlink(dev, `${root}/class/vfio-dev/${o.cdev}/device`);
    }
  };
  await fn(PF, "vfio-pci", { totalVfs: 7, cdev: "vfio0" });
  await fn(VF, "vfio-pci", { physfn: PF, cdev: "vfio1" });
  await fn(VF2, "vfio-pci", { physfn: PF });
  await fn("0000:05:00.0", "igb", { totalVfs: 7 });
  await fn(IGB_VF, "vfio-pci", { physfn: "0000:05:00.0" });
  await fn(PLAIN, "vfio-pci", { cdev: "vfio2" });
  await fn("0000:07:00.0", "vfio-pci", { totalVfs: 7 });
  await fn(ODD_VF, "vfio-pci", { physfn: "0000:07:00.0" });
}

/**
 * vfio-pci's VF token rules for the fake tree's functions: `pfToken` is the PF's (vfio-pci
 * generates one at probe: uuid_gen), `vfUsers` the VFs open through vfio.
 */
class TokenKernel {
  pfToken = "00000000-0000-4000-8000-000000000000";
  vfUsers = 0;
  /** What vfio_pci_validate_vf_token answers (0, or the errno) for `dev` given `token`. */
  validate(dev: string, token: string | null): number {
    if (dev === VF || dev === VF2) {
      if (token === null) return Errno.EACCES; // "VF token required to access device"
      return token === this.pfToken ? 0 : Errno.EACCES; // "Incorrect VF token provided for device"
    }
    if (dev === IGB_VF || dev === ODD_VF) return token === null ? 0 : Errno.EINVAL; // PF not bound to vfio-pci
    if (dev === PF) {
      if (this.vfUsers > 0) {
        if (token === null || token !== this.pfToken) return Errno.EACCES;
      } else if (token !== null) this.pfToken = token;
      return 0;
    }
    return token === null ? 0 : Errno.EINVAL; // "not a PF or VF"
  }
}

interface Fake {
  sys: Sys;
  kernel: TokenKernel;
  /** Every name VFIO_GROUP_GET_DEVICE_FD was given. */
  names: string[];
  /** Every VFIO_DEVICE_BIND_IOMMUFD: its flags and the 16 token bytes it pointed to. */
  binds: { flags: number; token: Uint8Array | null }[];
}

/**
 * A Sys over libc whose /dev/vfio nodes are the fake kernel's: the container and groups
 * answer as a viable type1 setup, GROUP_GET_DEVICE_FD applies TokenKernel to the name it is
 * given (vfio_pci_core_match's syntax), cdev binds to it through token_uuid_ptr (`release`
 * >= 6.17) or refuse any flag (older: EINVAL). A device fd answers ENOTTY to everything.
 */
function fakeKernel(root: string, release = "6.12.117+deb12-amd64"): Fake {
  const host = libc();
  const kernel = new TokenKernel();
  const names: string[] = [], binds: Fake["binds"] = [];
  const fds = new Map<number, { kind: string; dev?: string }>();
  let next = 5000;
  const add = (kind: string, dev?: string) => {
    fds.set(next, { kind, dev });
    return next++;
  };
  const fail = (errno: number) => new SysError("ioctl", errno);
  const isVf = (dev: string) => dev === VF || dev === VF2;
  const overrides: Partial<Sys> = {
    getenv: (name: string) => (name === "VFIO_MIG_SYSFS" ? root : host.getenv(name)),
    open(path: string, flags: number, mode?: number) {
      if (path === "/dev/vfio/vfio") return add("container");
      if (path === "/dev/iommu") return add("iommufd");
      const g = /^\/dev\/vfio\/(\d+)$/.exec(path);
      if (g) return add("group");
      const c = /^\/dev\/vfio\/devices\/vfio(\d+)$/.exec(path);
      if (c) return add("cdev", [PF, VF, PLAIN][Number(c[1])]);
      if (path === "/proc/sys/kernel/osrelease") {
        const [r, w] = host.pipe();
        host.write(w, new TextEncoder().encode(release + "\n"));
        host.close(w);
        return r;
      }
      return host.open(path, flags, mode);
    },
    close(fd: number) {
      const f = fds.get(fd);
      if (!f) return host.close(fd);
      if (f.kind === "device" && f.dev && isVf(f.dev)) kernel.vfUsers--;
      fds.delete(fd);
    },
    ioctl(fd: number, request: number, arg: IoctlArg) {
      const f = fds.get(fd);
      if (!f) return host.ioctl(fd, request, arg);
      const buf = arg instanceof Uint8Array ? arg : new Uint8Array(0);
      if (f.kind === "container") {
        if (request === IOCTL.GET_API_VERSION) return VFIO_API_VERSION;
        if (request === IOCTL.CHECK_EXTENSION) return 1;
        if (request === IOCTL.SET_IOMMU) return 0;
      }
      if (f.kind === "group") {
        if (request === IOCTL.GROUP_GET_STATUS) {
          encodeInto(STRUCTS.vfio_group_status, { argsz: 8, flags: GROUP_FLAGS.VIABLE }, buf);
          return 0;
        }
        if (request === IOCTL.GROUP_SET_CONTAINER) return 0;
        if (request === IOCTL.GROUP_GET_DEVICE_FD) {
          const name = new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
          names.push(name);
          const m = /^(\S+)(?: vf_token=(\S+))?$/.exec(name)!;
          const errno = kernel.validate(m[1], m[2] ?? null);
          if (errno) throw fail(errno);
          if (isVf(m[1])) kernel.vfUsers++;
          return add("device", m[1]);
        }
      }
      if (f.kind === "cdev" && request === IOCTL.DEVICE_BIND_IOMMUFD) {
        const b = decode(STRUCTS.vfio_device_bind_iommufd, buf);
        const token = b.flags & 1
          ? new Uint8Array(
            Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(BigInt(b.token_uuid_ptr))!, 16).slice(0),
          )
          : null;
        binds.push({ flags: b.flags, token });
        if (releaseBefore(release, "6.17")) {
          if (b.flags) throw fail(Errno.EINVAL); // device_cdev.c: bind.flags must be 0; no token check
        } else {
          const hex = token && [...token].map((x) => x.toString(16).padStart(2, "0")).join("");
          const uuid = hex && `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-` +
              hex.slice(20);
          const errno = kernel.validate(f.dev!, uuid);
          if (errno) throw fail(errno);
        }
        f.kind = "device";
        if (isVf(f.dev!)) kernel.vfUsers++;
        return 0;
      }
      if (f.kind === "iommufd" && request === IOCTL.IOMMU_IOAS_ALLOC) {
        encodeInto(STRUCTS.iommu_ioas_alloc, { size: 12, out_ioas_id: 1 }, buf);
        return 0;
      }
      if (request === IOCTL.DEVICE_ATTACH_IOMMUFD_PT) return 0;
      throw fail(Errno.ENOTTY);
    },
  };
  const sys = new Proxy(host, {
    get(target, prop) {
      if (prop in overrides) return (overrides as Record<string | symbol, unknown>)[prop];
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { sys, kernel, names, binds };
}

async function withTree(fn: (root: string) => Promise<void> | void): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "vfio-mig-vftoken-" });
  try {
    await fakeSysfs(root);
    await fn(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/** The one-line message of what `f` throws, with its exit kind. */
function refusal(f: () => unknown): { message: string; kind: string } {
  const e = assertThrows(f, VfioMigError) as VfioMigError;
  assert(!e.message.includes("\n"), `one line: ${e.message}`);
  return { message: e.message, kind: e.kind };
}

Deno.test("sysfs decides which devices take the token: a VF of a vfio-pci PF, and such a PF", () =>
  withTree((root) => {
    const sysfs = new Sysfs(libc(), root);
    const t = (a: string) => vfTokenTarget(sysfs, sysfs.find(a));
    assertEquals(t(VF), { kind: "vf", pf: { name: PF, driver: "vfio-pci" }, takesToken: true });
    assertEquals(t(PF), { kind: "pf", pf: null, takesToken: true });
    assertEquals(t(IGB_VF), { kind: "vf", pf: { name: "0000:05:00.0", driver: "igb" }, takesToken: false });
    assertEquals(t(PLAIN), { kind: null, pf: null, takesToken: false });
    assertEquals(vfTokenTarget(sysfs, null).takesToken, false);
  }));

Deno.test("a VF of a vfio-pci PF: refused without the token, naming the PF; the PF's open sets it; then the VF opens", () =>
  withTree((root) => {
    const f = fakeKernel(root);
    let r = refusal(() => openDevice(f.sys, VF));
    assertEquals(f.names, [VF], "no token given: the plain name");
    assertEquals(r.kind, "device");
    assertEquals(
      r.message,
      `${VF}: VFIO_GROUP_GET_DEVICE_FD: EACCES: VF token required: the PF ${PF} is bound to vfio-pci; pass ` +
        `--vf-token UUID (the token its user set; 'vfio-mig info --device ${PF} --vf-token UUID' sets one while ` +
        `none of its VFs is in use)`,
    );

    // The operator sets the token by opening the PF with it (no VF in use).
    openDevice(f.sys, PF, { vfToken: T }).close();
    assertEquals(f.names.at(-1), `${PF} vf_token=${T}`);
    assertEquals(f.kernel.pfToken, T);

    r = refusal(() => openDevice(f.sys, VF, { vfToken: OTHER }));
    assertEquals(f.names.at(-1), `${VF} vf_token=${OTHER}`);
    assertEquals(
      r.message,
      `${VF}: VFIO_GROUP_GET_DEVICE_FD: EACCES: the VF token is not the one PF ${PF} has (the PF ${PF} is bound ` +
        `to vfio-pci): pass the token its user set (opening the PF with --vf-token sets it while none of its VFs ` +
        `is in use)`,
    );
    assert(!r.message.includes(OTHER), "the token given is not printed");

    // Upper case is the same UUID to the kernel's uuid_parse; passed lowercased.
    const vf = openDevice(f.sys, VF, { vfToken: T.toUpperCase() });
    assertEquals(f.names.at(-1), `${VF} vf_token=${T}`);
    assert(!JSON.stringify(vf.info).includes(T) && !vf.label.includes(T), "the token is not in the device's identity");

    // While the VF is in use, the PF wants the same token.
    r = refusal(() => openDevice(f.sys, PF));
    assertMatch(r.message, /^0000:04:00\.0: VFIO_GROUP_GET_DEVICE_FD: EACCES: VF token required: VFs of this PF/);
    r = refusal(() => openDevice(f.sys, PF, { vfToken: OTHER }));
    assertMatch(r.message, /EACCES: the VF token is not the one this PF has, and its VFs are in use/);
    openDevice(f.sys, PF, { vfToken: T }).close();
    assertEquals(f.kernel.pfToken, T, "a PF open with the same token while VFs are in use changes nothing");
    vf.close();
    assertEquals(f.kernel.vfUsers, 0);
  }));

Deno.test("one token for several devices: passed only where the kernel takes one (no EINVAL elsewhere)", () =>
  withTree((root) => {
    const f = fakeKernel(root);
    f.kernel.pfToken = T;
    const devs = [VF, VF2, IGB_VF, PLAIN].map((d) => openDevice(f.sys, d, { vfToken: T }));
    assertEquals(f.names, [`${VF} vf_token=${T}`, `${VF2} vf_token=${T}`, IGB_VF, PLAIN]);
    for (const d of devs) d.close();
  }));

Deno.test("EINVAL for a token the kernel does not take: its reason, one line, exit 3", () =>
  withTree((root) => {
    const f = fakeKernel(root);
    const r = refusal(() => openDevice(f.sys, ODD_VF, { vfToken: T }));
    assertEquals(f.names, [`${ODD_VF} vf_token=${T}`], "sysfs says its PF is vfio-pci's: the token is passed");
    assertEquals(r.kind, "device");
    assertEquals(
      r.message,
      `${ODD_VF}: VFIO_GROUP_GET_DEVICE_FD: EINVAL: the kernel refused the VF token: "VF token incorrectly ` +
        `provided, PF not bound to vfio-pci" (the PF 0000:07:00.0 did not create its VFs through vfio-pci); ` +
        `open it without --vf-token`,
    );
  }));

Deno.test("malformed tokens and specs that open nothing by name: usage errors (exit 2), the value not echoed", () =>
  withTree((root) => {
    const f = fakeKernel(root);
    for (const bad of ["", "not-a-uuid", T.slice(1), `${T} `, `${T}x`, T.replace(/-/g, "")]) {
      const r = refusal(() => openDevice(f.sys, VF, { vfToken: bad }));
      assertEquals(r.kind, "usage");
      assertMatch(r.message, /^--vf-token takes a UUID \(8-4-4-4-12 hex digits/);
      if (bad) assert(!r.message.includes(bad), r.message);
    }
    for (const spec of ["sim:/tmp/x", "pid:1", "fd:3"]) {
      const r = refusal(() => openDevice(f.sys, spec, { vfToken: T }));
      assertEquals(r.kind, "usage", spec);
      assertMatch(r.message, /--vf-token applies only to a device opened by name/);
    }
    assertEquals(f.names, [], "nothing reached the kernel");
    assertEquals(parseVfToken(T.toUpperCase()), T);
    assertEquals([...vfTokenBytes(T).subarray(0, 4)], [0x5b, 0x1c, 0x7a, 0x9e], "uuid_t order: the string's");
  }));

Deno.test("cdev path on Linux >= 6.17: VFIO_DEVICE_BIND_FLAG_TOKEN with token_uuid_ptr; its EACCES names the bind", () =>
  withTree((root) => {
    const f = fakeKernel(root, "6.17.0");
    f.kernel.pfToken = T;
    const r = refusal(() => openDevice(f.sys, "/dev/vfio/devices/vfio1"));
    assertEquals(f.binds, [{ flags: 0, token: null }]);
    assertMatch(r.message, /^\/dev\/vfio\/devices\/vfio1: VFIO_DEVICE_BIND_IOMMUFD: EACCES: VF token required: the PF/);
    const d = openDevice(f.sys, "/dev/vfio/devices/vfio1", { vfToken: T });
    assertEquals(f.binds[1].flags, 1);
    assertEquals(f.binds[1].token, vfTokenBytes(T), "the kernel reads the UUID's 16 bytes at token_uuid_ptr");
    d.close();
    // A function that takes no token gets no flag.
    openDevice(f.sys, "/dev/vfio/devices/vfio2", { vfToken: T }).close();
    assertEquals(f.binds[2], { flags: 0, token: null });
  }));

Deno.test("cdev path before Linux 6.17: the bind refuses the flag; the error names 6.17 and the group path", () =>
  withTree((root) => {
    const f = fakeKernel(root, "6.12.117+deb12-amd64");
    const r = refusal(() => openDevice(f.sys, "/dev/vfio/devices/vfio1", { vfToken: T }));
    assertEquals(f.binds.length, 1);
    assertEquals(f.binds[0].flags, 1);
    assertEquals(r.kind, "device");
    assertEquals(
      r.message,
      `/dev/vfio/devices/vfio1: VFIO_DEVICE_BIND_IOMMUFD: EINVAL: this kernel (6.12.117+deb12-amd64) takes no VF ` +
        `token on the cdev path (VFIO_DEVICE_BIND_FLAG_TOKEN came in Linux 6.17); open it by its PCI address ` +
        `(${VF}: the group path) with --vf-token`,
    );
    assertEquals(releaseBefore("6.12.117", "6.17"), true);
    assertEquals(releaseBefore("6.17.0-rc1", "6.17"), false);
    assertEquals(releaseBefore("7.0.1", "6.17"), false);
  }));

// The CLI: usage errors exit 2 with one line; a failing run keeps the token out of its
// --json failure object, its --events file and stderr.
const cli = (args: string[], env: Record<string, string> = {}) =>
  runCli(args, { allow: ["--allow-ffi", "--allow-read", "--allow-write"], env });

Deno.test("CLI: --vf-token validated and refused for sim:/pid:/fd: (exit 2, one line); every device command takes it", async () => {
  for (const cmd of ["save", "load", "info", "state", "reset", "check"]) {
    const help = await cli([cmd, "--help"]);
    assertEquals(help.code, 0, show(help));
    assertStringIncludes(help.stdout, "--vf-token UUID", cmd);
  }
  let r = await cli(["info", "--device", PF, "--vf-token", "nope"]);
  assertEquals(r.code, 2, show(r));
  assertEquals(r.stderr.trim().split("\n").length, 1, show(r));
  assertMatch(r.stderr, /--vf-token takes a UUID/);
  assert(!r.stderr.includes("nope"), show(r));
  r = await cli(["save", "--device", "sim:/tmp/none", "--vf-token", T, "/tmp/none.vfmig"]);
  assertEquals(r.code, 2, show(r));
  assertMatch(r.stderr, /save: --vf-token applies only to devices opened by name/);
  r = await cli(["state", "--device", "pid:1", "--vf-token", T]);
  assertEquals(r.code, 2, show(r));
  r = await cli(["check", "--torture", "--device", PF, "--vf-token", T]);
  assertEquals(r.code, 2, show(r));
  r = await cli(["info", "--device", PF, "--vf-token"]);
  assertEquals(r.code, 2, show(r));
  assertMatch(r.stderr, /--vf-token needs a value/);
  // $VFIO_MIG_VF_TOKEN: checked as the option is; ambient, so it applies to nothing for pid:/fd:/sim:.
  r = await cli(["info", "--device", PF], { VFIO_MIG_VF_TOKEN: "nope" });
  assertEquals(r.code, 2, show(r));
  assertMatch(r.stderr, /VFIO_MIG_VF_TOKEN takes a UUID/);
  r = await cli(["info", "--device", "sim:/nonexistent/x"], { VFIO_MIG_VF_TOKEN: T });
  assert(r.code !== 2 || !/vf-token|VF_TOKEN/i.test(r.stderr), `not refused for the variable:\n${show(r)}`);
});

Deno.test("CLI: the token is not in --json, --events or stderr of a run that fails", () =>
  withTree(async (root) => {
    const events = `${root}/events.jsonl`;
    const viaEnv = await cli(["save", "--json", "--device", VF, `${root}/env.vfmig`], {
      VFIO_MIG_SYSFS: root,
      VFIO_MIG_VF_TOKEN: T,
    });
    assert(viaEnv.code !== 0 && viaEnv.code !== 2, show(viaEnv));
    assert(!(viaEnv.stdout + viaEnv.stderr).toLowerCase().includes(T), show(viaEnv));
    const r = await cli(
      ["save", "--json", "--events", events, "--device", VF, "--device", PLAIN, "--vf-token", T, `${root}/o.vfmig`],
      { VFIO_MIG_SYSFS: root },
    );
    assert(r.code !== 0 && r.code !== 2, show(r));
    const out = r.stdout + r.stderr + await Deno.readTextFile(events);
    assert(JSON.parse(r.stdout), "a failure object on stdout");
    assert(!out.toLowerCase().includes(T), `the token is nowhere:\n${out}`);
    assertStringIncludes(out, VF, "the run did name the device");
  }));
