// ffi/vfio_uapi.ts against the C compiler's view of the real headers: a C program is
// generated from STRUCTS (sizeof, offsetof, field size and signedness) and from the
// ioctl and constant tables, compiled with gcc against <linux/vfio.h> and
// <linux/iommufd.h>, run, and every number compared with the TypeScript side.
//
// Headers differ by version (Debian 12's linux-libc-dev is 6.1: no precopy_info, no
// MIG_DATA_SIZE, no iommufd): each struct or constant newer than 5.18 is guarded by a
// macro introduced with it, and skipped where the header lacks it. Structs that grew
// (bind_iommufd's token, attach_iommufd_pt's pasid) must then be a prefix of ours.
// VFIO_MIG_UAPI_INCLUDE=DIR (a raw kernel uapi dir holding linux/vfio.h, e.g. the
// kernel-VM harness's cached 6.12 headers) adds a run against those headers.

import { assert, assertEquals, fail } from "../helpers/assert.ts";
import {
  DEVICE_FLAGS,
  FEATURE,
  FEATURE_FLAGS,
  FIELD_SIZE,
  type FieldType,
  GROUP_FLAGS,
  IOCTL,
  IOMMU_TYPE,
  MIGRATION_FLAGS,
  PCI_REGION,
  PRECOPY_INFO_REINIT,
  REGION_CAP,
  REGION_FLAGS,
  REGION_SUBTYPE_MIGRATION_DEPRECATED,
  REGION_TYPE_MIGRATION_DEPRECATED,
  STRUCTS,
  VFIO_API_VERSION,
} from "../../ffi/vfio_uapi.ts";
import * as uapi from "../../ffi/vfio_uapi.ts";
import { DeviceState, STATE_COUNT } from "../../src/vfio/state_machine.ts";

const INSTALL_HINT = "install the C toolchain and kernel headers: apt-get install gcc libc6-dev linux-libc-dev";

/** A guard is a macro that must be defined ("!M": must not be); HAVE_IOMMUFD_H is ours. */
type Guard = string;

/** Kernel version each guard macro arrived in: a header with one has every older one. */
const GUARD_SINCE: Record<string, number> = {
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START: 6.01,
  VFIO_MIGRATION_PRE_COPY: 6.02,
  VFIO_MIG_GET_PRECOPY_INFO: 6.02,
  HAVE_IOMMUFD_H: 6.02,
  IOMMU_IOAS_ALLOC: 6.02,
  IOMMU_DESTROY: 6.02,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: 6.03,
  VFIO_DEVICE_FLAGS_CDX: 6.05,
  VFIO_DEVICE_BIND_IOMMUFD: 6.06,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT: 6.06,
  VFIO_DEVICE_DETACH_IOMMUFD_PT: 6.06,
  VFIO_DEVICE_ATTACH_PASID: 6.13,
  VFIO_DEVICE_BIND_FLAG_TOKEN: 6.17,
  VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2: 7.01,
  VFIO_PRECOPY_INFO_REINIT: 7.01,
};

type StructName = keyof typeof STRUCTS;

/** The guard of each struct (none: in every header since 5.18, the v2 migration uAPI). */
const STRUCT_GUARDS: Record<StructName, Guard[]> = {
  vfio_info_cap_header: [],
  vfio_group_status: [],
  vfio_device_info: [],
  vfio_region_info: [],
  vfio_region_info_cap_type: [],
  vfio_region_info_cap_sparse_mmap: [],
  vfio_region_sparse_mmap_area: [],
  vfio_device_feature: [],
  vfio_device_feature_migration: [],
  vfio_device_feature_mig_state: [],
  vfio_device_feature_mig_data_size: ["VFIO_DEVICE_FEATURE_MIG_DATA_SIZE"],
  vfio_precopy_info: ["VFIO_MIG_GET_PRECOPY_INFO"],
  vfio_device_bind_iommufd: ["VFIO_DEVICE_BIND_IOMMUFD"],
  vfio_device_attach_iommufd_pt: ["VFIO_DEVICE_ATTACH_IOMMUFD_PT"],
  // Protocol v1: still declared (deprecated) in the 6.x headers.
  vfio_device_migration_info: ["VFIO_DEVICE_STATE_V1_RUNNING"],
  iommu_ioas_alloc: ["HAVE_IOMMUFD_H", "IOMMU_IOAS_ALLOC"],
};

/** Fields added to a struct after it first appeared, with the macro that came along. */
const FIELD_EXTENSIONS: Partial<Record<StructName, Record<string, Guard>>> = {
  // "vfio: align capability structures" (a881b496941f) came in the 6.6 pull that
  // brought the cdev uAPI; it has no macro of its own.
  vfio_device_info: { pad: "VFIO_DEVICE_BIND_IOMMUFD" },
  vfio_device_bind_iommufd: { token_uuid_ptr: "VFIO_DEVICE_BIND_FLAG_TOKEN" },
  vfio_device_attach_iommufd_pt: { pasid: "VFIO_DEVICE_ATTACH_PASID" },
};

/** Members our codecs leave out on purpose: [offset, size, C member]. */
const OMITTED: Partial<Record<StructName, [number, number, string][]>> = {
  vfio_region_info_cap_type: [[0, 8, "header"]],
  vfio_region_info_cap_sparse_mmap: [[0, 8, "header"]],
};

/** Flexible array members: where the payload starts. */
const FLEXIBLE: [StructName, string, number][] = [
  ["vfio_device_feature", "data", STRUCTS.vfio_device_feature.size],
  ["vfio_region_info_cap_sparse_mmap", "areas", STRUCTS.vfio_region_info_cap_sparse_mmap.size],
];

const IOCTL_C: Record<keyof typeof IOCTL, [string, Guard[]]> = {
  GET_API_VERSION: ["VFIO_GET_API_VERSION", []],
  CHECK_EXTENSION: ["VFIO_CHECK_EXTENSION", []],
  SET_IOMMU: ["VFIO_SET_IOMMU", []],
  GROUP_GET_STATUS: ["VFIO_GROUP_GET_STATUS", []],
  GROUP_SET_CONTAINER: ["VFIO_GROUP_SET_CONTAINER", []],
  GROUP_UNSET_CONTAINER: ["VFIO_GROUP_UNSET_CONTAINER", []],
  GROUP_GET_DEVICE_FD: ["VFIO_GROUP_GET_DEVICE_FD", []],
  DEVICE_GET_INFO: ["VFIO_DEVICE_GET_INFO", []],
  DEVICE_GET_REGION_INFO: ["VFIO_DEVICE_GET_REGION_INFO", []],
  DEVICE_GET_IRQ_INFO: ["VFIO_DEVICE_GET_IRQ_INFO", []],
  DEVICE_SET_IRQS: ["VFIO_DEVICE_SET_IRQS", []],
  DEVICE_RESET: ["VFIO_DEVICE_RESET", []],
  DEVICE_FEATURE: ["VFIO_DEVICE_FEATURE", []],
  DEVICE_BIND_IOMMUFD: ["VFIO_DEVICE_BIND_IOMMUFD", ["VFIO_DEVICE_BIND_IOMMUFD"]],
  DEVICE_ATTACH_IOMMUFD_PT: ["VFIO_DEVICE_ATTACH_IOMMUFD_PT", ["VFIO_DEVICE_ATTACH_IOMMUFD_PT"]],
  DEVICE_DETACH_IOMMUFD_PT: ["VFIO_DEVICE_DETACH_IOMMUFD_PT", ["VFIO_DEVICE_DETACH_IOMMUFD_PT"]],
  MIG_GET_PRECOPY_INFO: ["VFIO_MIG_GET_PRECOPY_INFO", ["VFIO_MIG_GET_PRECOPY_INFO"]],
  IOMMU_DESTROY: ["IOMMU_DESTROY", ["HAVE_IOMMUFD_H", "IOMMU_DESTROY"]],
  IOMMU_IOAS_ALLOC: ["IOMMU_IOAS_ALLOC", ["HAVE_IOMMUFD_H", "IOMMU_IOAS_ALLOC"]],
};

/** A table of TS constants and their C names; the Record type makes a missing entry a type error. */
function table<T extends Record<string, number>>(
  ts: T,
  c: Record<keyof T, string | [string, Guard[]]>,
): [string, number, Guard[]][] {
  return Object.entries(c).map(([k, v]) => {
    const [name, guards] = typeof v === "string" ? [v, []] : v;
    return [name, ts[k], guards];
  });
}

const self = (m: string): [string, Guard[]] => [m, [m]];

/** Protocol v1's device_state bits, where vfio_uapi.ts has them (VFIO_DEVICE_STATE_V1_*, _MASK). */
const V1_BITS = (uapi as Record<string, unknown>).DEVICE_STATE_V1 as Record<string, number> | undefined;
const V1_CONSTANTS: [string, number, Guard[]][] = Object.entries(V1_BITS ?? {}).map(([k, v]) => [
  k === "MASK" ? "VFIO_DEVICE_STATE_MASK" : `VFIO_DEVICE_STATE_V1_${k}`,
  v,
  ["VFIO_DEVICE_STATE_V1_RUNNING"],
]);

const CONSTANTS: [string, number, Guard[]][] = [
  ["VFIO_API_VERSION", VFIO_API_VERSION, []],
  ...table(IOMMU_TYPE, { TYPE1: "VFIO_TYPE1_IOMMU", TYPE1v2: "VFIO_TYPE1v2_IOMMU" }),
  ...table(GROUP_FLAGS, { VIABLE: "VFIO_GROUP_FLAGS_VIABLE", CONTAINER_SET: "VFIO_GROUP_FLAGS_CONTAINER_SET" }),
  ...table(DEVICE_FLAGS, {
    RESET: "VFIO_DEVICE_FLAGS_RESET",
    PCI: "VFIO_DEVICE_FLAGS_PCI",
    PLATFORM: "VFIO_DEVICE_FLAGS_PLATFORM",
    AMBA: "VFIO_DEVICE_FLAGS_AMBA",
    CCW: "VFIO_DEVICE_FLAGS_CCW",
    AP: "VFIO_DEVICE_FLAGS_AP",
    FSL_MC: "VFIO_DEVICE_FLAGS_FSL_MC",
    CAPS: "VFIO_DEVICE_FLAGS_CAPS",
    CDX: self("VFIO_DEVICE_FLAGS_CDX"),
  }),
  ...table(REGION_FLAGS, {
    READ: "VFIO_REGION_INFO_FLAG_READ",
    WRITE: "VFIO_REGION_INFO_FLAG_WRITE",
    MMAP: "VFIO_REGION_INFO_FLAG_MMAP",
    CAPS: "VFIO_REGION_INFO_FLAG_CAPS",
  }),
  ...table(PCI_REGION, {
    BAR0: "VFIO_PCI_BAR0_REGION_INDEX",
    ROM: "VFIO_PCI_ROM_REGION_INDEX",
    CONFIG: "VFIO_PCI_CONFIG_REGION_INDEX",
    VGA: "VFIO_PCI_VGA_REGION_INDEX",
    NUM: "VFIO_PCI_NUM_REGIONS",
  }),
  ...table(FEATURE_FLAGS, {
    MASK: "VFIO_DEVICE_FEATURE_MASK",
    GET: "VFIO_DEVICE_FEATURE_GET",
    SET: "VFIO_DEVICE_FEATURE_SET",
    PROBE: "VFIO_DEVICE_FEATURE_PROBE",
  }),
  ...table(FEATURE, {
    PCI_VF_TOKEN: "VFIO_DEVICE_FEATURE_PCI_VF_TOKEN",
    MIGRATION: "VFIO_DEVICE_FEATURE_MIGRATION",
    MIG_DEVICE_STATE: "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE",
    DMA_LOGGING_START: self("VFIO_DEVICE_FEATURE_DMA_LOGGING_START"),
    DMA_LOGGING_STOP: ["VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP", ["VFIO_DEVICE_FEATURE_DMA_LOGGING_START"]],
    DMA_LOGGING_REPORT: ["VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT", ["VFIO_DEVICE_FEATURE_DMA_LOGGING_START"]],
    MIG_DATA_SIZE: self("VFIO_DEVICE_FEATURE_MIG_DATA_SIZE"),
    MIG_PRECOPY_INFOv2: self("VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2"),
  }),
  ...table(MIGRATION_FLAGS, {
    STOP_COPY: "VFIO_MIGRATION_STOP_COPY",
    P2P: "VFIO_MIGRATION_P2P",
    PRE_COPY: self("VFIO_MIGRATION_PRE_COPY"),
  }),
  ["VFIO_PRECOPY_INFO_REINIT", PRECOPY_INFO_REINIT, ["VFIO_PRECOPY_INFO_REINIT"]],
  ...table(REGION_CAP, {
    SPARSE_MMAP: "VFIO_REGION_INFO_CAP_SPARSE_MMAP",
    TYPE: "VFIO_REGION_INFO_CAP_TYPE",
    MSIX_MAPPABLE: "VFIO_REGION_INFO_CAP_MSIX_MAPPABLE",
  }),
  ["VFIO_REGION_TYPE_MIGRATION_DEPRECATED", REGION_TYPE_MIGRATION_DEPRECATED, []],
  ["VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED", REGION_SUBTYPE_MIGRATION_DEPRECATED, []],
  // enum vfio_device_mig_state: enumerators are not macros, so guard by the flag that came with them.
  ["VFIO_DEVICE_STATE_ERROR", DeviceState.ERROR, []],
  ["VFIO_DEVICE_STATE_STOP", DeviceState.STOP, []],
  ["VFIO_DEVICE_STATE_RUNNING", DeviceState.RUNNING, []],
  ["VFIO_DEVICE_STATE_STOP_COPY", DeviceState.STOP_COPY, []],
  ["VFIO_DEVICE_STATE_RESUMING", DeviceState.RESUMING, []],
  ["VFIO_DEVICE_STATE_RUNNING_P2P", DeviceState.RUNNING_P2P, []],
  ["VFIO_DEVICE_STATE_PRE_COPY", DeviceState.PRE_COPY, ["VFIO_MIGRATION_PRE_COPY"]],
  ["VFIO_DEVICE_STATE_PRE_COPY_P2P", DeviceState.PRE_COPY_P2P, ["VFIO_MIGRATION_PRE_COPY"]],
  ["VFIO_DEVICE_STATE_NR", STATE_COUNT, ["VFIO_MIGRATION_PRE_COPY"]],
  ...V1_CONSTANTS,
  ...Object.values(IOCTL_C).map(([name, guards], i): [string, number, Guard[]] => [
    name,
    Object.values(IOCTL)[i],
    guards,
  ]),
];

interface Check {
  key: string;
  expr: string;
  want: number;
  guards: Guard[];
  /** What to list as skipped when a guard is missing. */
  group: string;
}

function structChecks(): Check[] {
  const out: Check[] = [];
  for (const [name, s] of Object.entries(STRUCTS) as [StructName, (typeof STRUCTS)[StructName]][]) {
    const guards = STRUCT_GUARDS[name];
    const T = `struct ${s.name}`;
    const ext = FIELD_EXTENSIONS[name] ?? {};
    const extGuards = Object.values(ext);
    const extFields = Object.keys(ext).map((f) => `${s.name}.${f}`);
    out.push({
      key: `sizeof(${T})`,
      expr: `sizeof(${T})`,
      want: s.size,
      guards: [...guards, ...extGuards],
      group: extFields.length ? extFields.join(", ") : s.name,
    });
    for (const [field, extGuard] of Object.entries(ext)) {
      // An older header: the struct ends where the extension would start.
      const at = (s.fields as Record<string, readonly [number, FieldType]>)[field][0];
      out.push({
        key: `sizeof(${T}) without ${field}`,
        expr: `sizeof(${T})`,
        want: at,
        guards: [...guards, `!${extGuard}`],
        group: s.name,
      });
    }
    for (const [field, [off, type]] of Object.entries(s.fields) as [string, readonly [number, FieldType]][]) {
      const g = ext[field] ? [...guards, ext[field]] : guards;
      const group = ext[field] ? `${s.name}.${field}` : s.name;
      const m = `((${T} *)0)->${field}`;
      out.push({ key: `offsetof(${T}, ${field})`, expr: `offsetof(${T}, ${field})`, want: off, guards: g, group });
      out.push({ key: `sizeof(${T}.${field})`, expr: `sizeof(${m})`, want: FIELD_SIZE[type], guards: g, group });
      out.push({
        key: `${T}.${field} is signed`,
        expr: `((__typeof__(${m}))-1 < 0)`,
        want: type === "s32" ? 1 : 0,
        guards: g,
        group,
      });
    }
    for (const [at, size, member] of OMITTED[name] ?? []) {
      out.push({
        key: `offsetof(${T}, ${member})`,
        expr: `offsetof(${T}, ${member})`,
        want: at,
        guards,
        group: s.name,
      });
      out.push({
        key: `sizeof(${T}.${member})`,
        expr: `sizeof(((${T} *)0)->${member})`,
        want: size,
        guards,
        group: s.name,
      });
    }
  }
  for (const [name, member, at] of FLEXIBLE) {
    const T = `struct ${name}`;
    out.push({
      key: `offsetof(${T}, ${member}[])`,
      expr: `offsetof(${T}, ${member})`,
      want: at,
      guards: STRUCT_GUARDS[name],
      group: name,
    });
  }
  return out;
}

function constantChecks(): Check[] {
  return CONSTANTS.map(([name, want, guards]) => ({ key: name, expr: `(${name})`, want, guards, group: name }));
}

const ALL_CHECKS = [...structChecks(), ...constantChecks()];
const ALL_GUARDS = [...new Set(ALL_CHECKS.flatMap((c) => c.guards).map((g) => g.replace(/^!/, "")))];

function condition(guards: Guard[]): string {
  return guards.map((g) => (g.startsWith("!") ? `!defined(${g.slice(1)})` : `defined(${g})`)).join(" && ");
}

export function generateC(): string {
  const lines = [
    "#include <stdio.h>",
    "#include <stddef.h>",
    "#include <linux/vfio.h>",
    "#if __has_include(<linux/iommufd.h>)",
    "#include <linux/iommufd.h>",
    "#define HAVE_IOMMUFD_H 1",
    "#endif",
    '#define P(k, v) printf("%s=%llu\\n", k, (unsigned long long)(v))',
    "int main(void) {",
  ];
  for (const g of ALL_GUARDS) {
    lines.push(`#ifdef ${g}`, `  printf("guard ${g}=1\\n");`, "#else", `  printf("guard ${g}=0\\n");`, "#endif");
  }
  for (const c of ALL_CHECKS) {
    const body = `  P(${JSON.stringify(c.key)}, ${c.expr});`;
    if (c.guards.length) lines.push(`#if ${condition(c.guards)}`, body, "#endif");
    else lines.push(body);
  }
  lines.push("  return 0;", "}", "");
  return lines.join("\n");
}

async function run(cmd: string, args: string[], cwd?: string): Promise<{ code: number; out: string; err: string }> {
  let child;
  try {
    child = new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped", stdin: "null" });
  } catch (e) {
    fail(`cannot run ${cmd}: ${e}; ${INSTALL_HINT}`);
  }
  try {
    const r = await child.output();
    const dec = new TextDecoder();
    return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) fail(`${cmd} is not installed; ${INSTALL_HINT}`);
    throw e;
  }
}

/**
 * Compiles and runs the generated program with `includeDirs` first on the include
 * path; checks every number; returns the groups skipped for lack of a guard macro.
 */
async function compareWithHeaders(includeDirs: string[], label: string): Promise<string[]> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-uapi-" });
  try {
    await Deno.writeTextFile(`${dir}/layout.c`, generateC());
    const cc = await run("gcc", [
      "-std=gnu11",
      "-Wall",
      "-Werror",
      ...includeDirs.flatMap((d) => ["-I", d]),
      "-o",
      `${dir}/layout`,
      `${dir}/layout.c`,
    ]);
    if (cc.code !== 0) {
      const hint = /vfio\.h: No such file/.test(cc.err) ? ` (${INSTALL_HINT})` : "";
      fail(`gcc failed against ${label}${hint}:\n${cc.err.slice(0, 4000)}`);
    }
    const r = await run(`${dir}/layout`, []);
    assertEquals(r.code, 0, "layout program exit status");
    const got = new Map<string, number>();
    const guards = new Map<string, boolean>();
    for (const line of r.out.trim().split("\n")) {
      const eq = line.lastIndexOf("=");
      const k = line.slice(0, eq);
      const v = Number(line.slice(eq + 1));
      if (k.startsWith("guard ")) guards.set(k.slice(6), v === 1);
      else got.set(k, v);
    }
    for (const g of ALL_GUARDS) assert(guards.has(g), `guard ${g} reported`);
    const has = (g: Guard) => (g.startsWith("!") ? !guards.get(g.slice(1)) : guards.get(g)!);

    // A guard macro's presence implies every older one's (a misspelt guard would
    // otherwise skip its checks silently).
    for (const [g, since] of Object.entries(GUARD_SINCE)) {
      if (!guards.get(g)) continue;
      for (const [older, v] of Object.entries(GUARD_SINCE)) {
        if (v < since) assert(guards.get(older), `${label}: ${g} (${since}) is defined but older ${older} is not`);
      }
    }

    const problems: string[] = [];
    const skipped = new Set<string>();
    let compared = 0;
    for (const c of ALL_CHECKS) {
      if (!c.guards.every(has)) {
        if (c.guards.filter((g) => g.startsWith("!")).every(has)) skipped.add(c.group);
        continue;
      }
      const v = got.get(c.key);
      if (v === undefined) problems.push(`${c.key}: not reported by the C program`);
      else if (v !== c.want) problems.push(`${c.key}: C says ${v}, vfio_uapi.ts says ${c.want}`);
      compared++;
    }
    if (problems.length) fail(`${label}: ${problems.length} mismatches:\n  ${problems.join("\n  ")}`);
    assert(compared > 100, `${label}: only ${compared} numbers compared`);
    // "X.field" is implied when X itself is skipped.
    const shown = [...skipped].filter((g) => !skipped.has(g.split(".")[0]) || !g.includes("."));
    console.log(
      `  ${label}: ${compared} numbers match` +
        (shown.length ? `; skipped (not in this header): ${shown.join(", ")}` : "; nothing skipped"),
    );
    return [...skipped];
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("uapi: every struct's fields are in bounds, aligned, disjoint, and cover it", () => {
  for (const [name, s] of Object.entries(STRUCTS) as [StructName, (typeof STRUCTS)[StructName]][]) {
    assertEquals(s.name, name, "table key is the C name");
    const covered = new Array<string | null>(s.size).fill(null);
    for (const [at, size, member] of OMITTED[name] ?? []) {
      for (let i = at; i < at + size; i++) covered[i] = member;
    }
    for (const [field, [off, type]] of Object.entries(s.fields) as [string, readonly [number, FieldType]][]) {
      const size = FIELD_SIZE[type];
      assert(off + size <= s.size, `${name}.${field} ends at ${off + size}, past sizeof ${s.size}`);
      assertEquals(off % size, 0, `${name}.${field} at ${off} is naturally aligned`);
      for (let i = off; i < off + size; i++) {
        assert(covered[i] === null, `${name}.${field} overlaps ${covered[i]} at byte ${i}`);
        covered[i] = field;
      }
    }
    const holes = covered.map((c, i) => (c === null ? i : -1)).filter((i) => i >= 0);
    assertEquals(holes, [], `${name}: bytes described by no field`);
    assertEquals(s.size % 4, 0, `${name}: size multiple of 4`);
  }
  assertEquals(Object.keys(STRUCT_GUARDS).sort(), Object.keys(STRUCTS).sort(), "every struct has a guard entry");
});

Deno.test("uapi: ioctl numbers are the reference's (§1.1, asm-generic _IO(';', nr))", () => {
  const want: Record<keyof typeof IOCTL, number> = {
    GET_API_VERSION: 0x3b64,
    CHECK_EXTENSION: 0x3b65,
    SET_IOMMU: 0x3b66,
    GROUP_GET_STATUS: 0x3b67,
    GROUP_SET_CONTAINER: 0x3b68,
    GROUP_UNSET_CONTAINER: 0x3b69,
    GROUP_GET_DEVICE_FD: 0x3b6a,
    DEVICE_GET_INFO: 0x3b6b,
    DEVICE_GET_REGION_INFO: 0x3b6c,
    DEVICE_GET_IRQ_INFO: 0x3b6d,
    DEVICE_SET_IRQS: 0x3b6e,
    DEVICE_RESET: 0x3b6f,
    DEVICE_FEATURE: 0x3b75,
    DEVICE_BIND_IOMMUFD: 0x3b76,
    DEVICE_ATTACH_IOMMUFD_PT: 0x3b77,
    DEVICE_DETACH_IOMMUFD_PT: 0x3b78,
    MIG_GET_PRECOPY_INFO: 0x3b79,
    IOMMU_DESTROY: 0x3b80,
    IOMMU_IOAS_ALLOC: 0x3b81,
  };
  assertEquals({ ...IOCTL }, want);
  assertEquals(FEATURE_FLAGS, { MASK: 0xffff, GET: 0x10000, SET: 0x20000, PROBE: 0x40000 });
  assertEquals(MIGRATION_FLAGS, { STOP_COPY: 1, P2P: 2, PRE_COPY: 4 });
});

Deno.test("uapi: the generated C program covers every struct field and constant", () => {
  const c = generateC();
  for (const s of Object.values(STRUCTS)) {
    assert(c.includes(`sizeof(struct ${s.name})`), `sizeof ${s.name}`);
    for (const f of Object.keys(s.fields)) assert(c.includes(`offsetof(struct ${s.name}, ${f})`), `${s.name}.${f}`);
  }
  for (const [name] of CONSTANTS) assert(c.includes(`(${name})`), name);
  const states = Object.keys(DeviceState).filter((k) => isNaN(Number(k)));
  assertEquals(states.length, 8);
  for (const st of states) assert(CONSTANTS.some(([n]) => n === `VFIO_DEVICE_STATE_${st}`), `enum value ${st}`);
});

Deno.test("uapi: layouts and constants match the system's <linux/vfio.h> and <linux/iommufd.h>", async () => {
  try {
    await Deno.stat("/usr/include/linux/vfio.h");
  } catch {
    fail(`/usr/include/linux/vfio.h is missing; ${INSTALL_HINT}`);
  }
  await compareWithHeaders([], "system headers");
});

const UAPI_DIR = Deno.env.get("VFIO_MIG_UAPI_INCLUDE");

Deno.test({
  name: "uapi: layouts and constants match the headers in $VFIO_MIG_UAPI_INCLUDE",
  ignore: !UAPI_DIR,
  async fn() {
    // Accept the uapi dir (holding linux/vfio.h) or its linux/ folder.
    let linuxDir = `${UAPI_DIR}/linux`;
    try {
      await Deno.stat(`${linuxDir}/vfio.h`);
    } catch {
      linuxDir = UAPI_DIR!;
      try {
        await Deno.stat(`${linuxDir}/vfio.h`);
      } catch {
        fail(`VFIO_MIG_UAPI_INCLUDE=${UAPI_DIR}: no linux/vfio.h there`);
      }
    }
    // Raw kernel uapi headers still say __user: strip it in a copy (sed, as the
    // kernel's headers_install does), and put the copy first on the include path.
    const tmp = await Deno.makeTempDir({ prefix: "vfio-mig-uapi-hdr-" });
    try {
      await Deno.mkdir(`${tmp}/linux`);
      for (const h of ["vfio.h", "iommufd.h"]) {
        try {
          await Deno.stat(`${linuxDir}/${h}`);
        } catch {
          continue;
        }
        const r = await run("sed", ["-e", "s/\\b__user\\b//g", `${linuxDir}/${h}`]);
        assertEquals(r.code, 0, `sed on ${h}: ${r.err}`);
        await Deno.writeTextFile(`${tmp}/linux/${h}`, r.out);
      }
      const skipped = await compareWithHeaders([tmp], `headers in ${UAPI_DIR}`);
      // A kernel new enough to be worth this run has MIG_DATA_SIZE and precopy_info.
      for (const s of ["vfio_precopy_info", "vfio_device_feature_mig_data_size"]) {
        assert(!skipped.includes(s), `${UAPI_DIR} lacks ${s}: is it really a newer header than 6.1?`);
      }
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
