import { createHash } from "node:crypto";
import { libc } from "../../ffi/libc.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { stateName } from "../migration/state_machine.ts";
import { MODEL_NAMES, type ModelName } from "../sim/models.ts";
import { SimStore } from "../sim/store.ts";
import { parseQuirks, QUIRK_NAMES } from "../sim/quirks.ts";
import { V1_SPARSE, type V1Sparse } from "../sim/v1_device.ts";
import { v1StateName } from "../migration/v1.ts";
import { type Command, parse, printJson } from "./command.ts";

/** SHA-256 of a simulated device's state, streamed (constant memory). */
export function stateHash(sys: Sys, store: SimStore): string {
  const h = createHash("sha256");
  const fd = sys.open(store.statePath, O.RDONLY | O.CLOEXEC);
  try {
    const buf = new Uint8Array(1 << 20);
    for (;;) {
      const n = sys.read(fd, buf);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    sys.close(fd);
  }
  return h.digest("hex");
}

const FLAG_NAMES: Record<string, number> = { "stop-copy": 1, p2p: 2, "pre-copy": 4 };

export function parseFlags(s: string): number {
  if (s === "none" || s === "0") return 0;
  let f = 0;
  for (const part of s.split(",")) {
    const v = FLAG_NAMES[part.trim()];
    if (v === undefined) {
      throw new VfioMigError(`sim create: unknown flag ${part} (stop-copy, p2p, pre-copy, none)`, "usage");
    }
    f |= v;
  }
  if (f && !(f & 1)) throw new VfioMigError("sim create: a migratable device must have stop-copy", "usage");
  return f;
}

export function parseSize(s: string): number {
  const m = /^(\d+)([kKmMgG]?)(i?[bB])?$/.exec(s.trim());
  if (!m) throw new VfioMigError(`bad size ${s} (e.g. 4096, 64M, 2G)`, "usage");
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase()]!;
  return Number(m[1]) * mult;
}

/** --protocol, --data-size, --sparse of sim create. */
function v1Options(protocol?: string, dataSize?: string, sparse?: string) {
  if (protocol !== undefined && protocol !== "v1" && protocol !== "v2") {
    throw new VfioMigError(`sim create: --protocol takes v1 or v2 (not ${protocol})`, "usage");
  }
  if (protocol !== "v1") {
    if (dataSize !== undefined || sparse !== undefined) {
      throw new VfioMigError("sim create: --data-size and --sparse need --protocol v1", "usage");
    }
    return {};
  }
  if (sparse !== undefined && !V1_SPARSE.includes(sparse as V1Sparse)) {
    throw new VfioMigError(`sim create: --sparse takes ${V1_SPARSE.join(", ")} (not ${sparse})`, "usage");
  }
  return {
    protocol: "v1" as const,
    dataSize: dataSize === undefined ? undefined : parseSize(dataSize),
    sparse: sparse as V1Sparse | undefined,
  };
}

/** --quirk NAME (repeatable): deliberate non-conformance for `vfio-mig check` tests. */
function quirksOf(names: string[] | undefined): string[] | undefined {
  if (!names?.length) return undefined;
  try {
    return parseQuirks(names.flatMap((n) => n.split(",")).map((n) => n.trim()).filter((n) => n));
  } catch (e) {
    throw new VfioMigError(`sim create: ${(e as Error).message}`, "usage");
  }
}

function show(sys: Sys, path: string) {
  const store = new SimStore(sys, path);
  const m = store.readMeta();
  return {
    device: `sim:${path}`,
    model: m.model,
    migrationFlags: m.flags,
    size: sys.stat(store.statePath).size,
    seed: m.seed,
    rate: m.rate,
    ...(m.yieldRate ? { yieldRate: m.yieldRate } : {}),
    state: m.v1 ? v1StateName(m.v1.state) : stateName(m.state),
    ...(m.v1 ? { protocol: "v1", dataSection: m.v1.dataSize, sparse: m.v1.sparse } : {}),
    ...(m.quirks?.length ? { quirks: m.quirks.join(",") } : {}),
    ...(m.precopyV2 ? { precopyInfoV2: true } : {}),
    ...(m.reinitAfter !== undefined ? { reinitAfter: m.reinitAfter } : {}),
    sha256: stateHash(sys, store),
  };
}

const HELP = `Usage:
  vfio-mig sim create PATH [--model mtty-1|mtty-2|bulk] [--size N] [--flags LIST]
                           [--seed S] [--rate BYTES_PER_SEC] [--yield-rate BYTES_PER_SEC]
                           [--quirk NAME]... [--precopy-v2] [--reinit-after BYTES]
                           [--protocol v1|v2 [--data-size N] [--sparse full|partial|none]]
  vfio-mig sim show PATH [--json]
  vfio-mig sim compare A B [--json]

Simulated VFIO devices for tests, demos and benchmarks. A device is a folder (PATH)
that any process can open as --device sim:PATH; its migration state persists like a
real device's. Models: mtty-1 / mtty-2 (the kernel's mtty sample: 60 / 96 bytes of
state, 0-byte read at the end of pre-copy data) and bulk (--size bytes of seeded
state, default 1M, that changes at --rate bytes/s while running).
--yield-rate: the device yields its migration data at most this fast (e.g. 256M):
data_fd reads block until data is due, or fail with EAGAIN when the reader set
O_NONBLOCK (as mlx5's do). Default: as fast as it is read.
--flags: comma list of stop-copy, p2p, pre-copy, or none (not migratable: ENOTTY).
Default stop-copy,p2p,pre-copy. 'show' prints the state and a SHA-256 of the device's
state; 'compare' exits 0 when two devices hold equal state, 1 otherwise.
--protocol v1: a device speaking the deprecated v1 region protocol (docs/protocol-v1.md)
instead of uAPI v2: region 9 holds the migration registers and a --data-size data
section (default 1M, a multiple of 4096) backed by a memfd; --sparse says what of it
may be mmap'd: full (default), partial (two areas with holes) or none.
Faults for v1: v1:device_state:write, v1:device_state:error (the write fails and the
device enters the error state), v1:pending_bytes, v1:data_offset, v1:data_size,
mmap:device.

Fault injection (for tests): VFIO_MIG_SIM_FAULTS="KEY@N=ERRNO,..." makes the Nth call
matching KEY fail, e.g. read:data_fd@2=EIO, write:host@3=ENOSPC,
ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET@2=EINVAL, write:data_fd@1=short.
VFIO_MIG_SIM_LOG=FILE appends every simulated call as a JSON line.

Linux 7.1 precopy-info v2: --precopy-v2 makes the driver accept the opt-in (SET of
feature 12, MIG_PRECOPY_INFOv2; without it: EINVAL, and PRECOPY_INFO echoes the flags
it is given, as pre-7.1 drivers do). After the opt-in PRECOPY_INFO zeroes flags on
entry. --reinit-after BYTES (bulk): once a pre-copy session has read BYTES, the device
re-queues the first half of its state as new initial data, right after the
PRECOPY_INFO that finds so (that one still reports the old numbers); the next reports
VFIO_PRECOPY_INFO_REINIT once (initial_bytes grows, dirty_bytes drops to 0). Without
the opt-in those bytes show as dirty_bytes instead. With BYTES = the initial data's
size (--size + 48) the reader first sees initial_bytes 0, then REINIT.

Non-conformant drivers (for 'vfio-mig check' tests): --quirk NAME, repeatable, one of
${QUIRK_NAMES.join(", ")} (src/sim/quirks.ts). Default: none.`;

export const simCommand: Command = {
  name: "sim",
  summary: "create, show and compare simulated VFIO devices",
  help: HELP,
  run(args) {
    const [sub, ...rest] = args;
    const { values, positionals } = parse(`sim${sub ? " " + sub : ""}`, rest, {
      model: { type: "string" },
      size: { type: "string" },
      flags: { type: "string" },
      seed: { type: "string" },
      rate: { type: "string" },
      "yield-rate": { type: "string" },
      quirk: { type: "string", multiple: true },
      protocol: { type: "string" },
      "data-size": { type: "string" },
      sparse: { type: "string" },
      "precopy-v2": { type: "boolean" },
      "reinit-after": { type: "string" },
      json: { type: "boolean" },
    });
    if (values.help || sub === undefined || sub === "--help" || sub === "-h") {
      console.log(HELP);
      return Promise.resolve(sub === undefined ? 2 : 0);
    }
    const sys = libc();
    switch (sub) {
      case "create": {
        if (positionals.length !== 1) throw new VfioMigError("sim create: give one PATH", "usage");
        const model = (values.model ?? "bulk") as ModelName;
        if (!MODEL_NAMES.includes(model)) {
          throw new VfioMigError(`sim create: unknown model ${model} (${MODEL_NAMES.join(", ")})`, "usage");
        }
        const store = new SimStore(sys, positionals[0]);
        store.create({
          model,
          flags: values.flags === undefined ? undefined : parseFlags(values.flags),
          size: values.size === undefined ? undefined : parseSize(values.size),
          seed: values.seed === undefined ? undefined : Number(values.seed),
          rate: values.rate === undefined ? undefined : parseSize(values.rate),
          yieldRate: values["yield-rate"] === undefined ? undefined : parseSize(values["yield-rate"]),
          quirks: quirksOf(values.quirk),
          precopyV2: values["precopy-v2"],
          reinitAfter: values["reinit-after"] === undefined ? undefined : parseSize(values["reinit-after"]),
          ...v1Options(values.protocol, values["data-size"], values.sparse),
        });
        const s = show(sys, positionals[0]);
        if (values.json) printJson(s);
        else {console.log(
            `created ${s.device}: ${s.model}, ${s.size} bytes of state, flags 0x${s.migrationFlags.toString(16)}`,
          );}
        return Promise.resolve(0);
      }
      case "show": {
        if (positionals.length !== 1) throw new VfioMigError("sim show: give one PATH", "usage");
        const s = show(sys, positionals[0]);
        if (values.json) printJson(s);
        else {
          for (const [k, v] of Object.entries(s)) console.log(`${(k + ":").padEnd(16)}${v}`);
        }
        return Promise.resolve(0);
      }
      case "compare": {
        if (positionals.length !== 2) throw new VfioMigError("sim compare: give two PATHs", "usage");
        const [a, b] = positionals.map((p) => show(sys, p));
        const equal = a.model === b.model && a.size === b.size && a.sha256 === b.sha256;
        if (values.json) printJson({ equal, a, b });
        else {
          console.log(
            equal
              ? `equal: ${a.device} and ${b.device} hold the same ${a.model} state (sha256 ${a.sha256.slice(0, 16)}…)`
              : `different: ${a.device} (${a.model}, ${a.sha256.slice(0, 16)}…) vs ${b.device} (${b.model}, ${
                b.sha256.slice(0, 16)
              }…)`,
          );
        }
        return Promise.resolve(equal ? 0 : 1);
      }
      default:
        throw new VfioMigError(`sim: unknown subcommand ${sub} (create, show, compare)`, "usage");
    }
  },
};
