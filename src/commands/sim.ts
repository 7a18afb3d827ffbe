import { createHash } from "node:crypto";
import { libc } from "../../ffi/libc.ts";
import { O, type Sys } from "../../ffi/sys.ts";
import { VfioMigError } from "../errors.ts";
import { stateName } from "../vfio/state_machine.ts";
import { defaultFamily, MODEL_NAMES, type ModelName, stopCopyBytes } from "../sim/models.ts";
import { familyOf, type QuirkOptions, SimStore } from "../sim/store.ts";
import { parseQuirks, QUIRK_NAMES, quirkMismatch, type QuirkName, QUIRKS } from "../sim/quirks.ts";
import { DEFAULT_READ_DELAY_MS } from "../sim/quirks/blocking_read.ts";
import { RESET_PHASES } from "../sim/quirks/reset_mid_session.ts";
import { V1_SPARSE, type V1Sparse } from "../sim/v1_device.ts";
import { v1StateName } from "../vfio/v1.ts";
import { type Command, parse, printJson } from "./command.ts";
import { examplesHelp, exitCodesHelp } from "./help.ts";
import { parseCount, parseDuration, parseSize as sizeOption } from "./options.ts";

/**
 * SHA-256 of a simulated device's state, streamed (constant memory). An xe device stores
 * no data (it is a function of its content seed): the hash is of what defines it.
 */
export function stateHash(sys: Sys, store: SimStore): string {
  const h = createHash("sha256");
  const meta = store.readMeta();
  if (meta.model === "xe") {
    return h.update(`xe:${meta.size}:${meta.contentSeed ?? meta.seed}`).digest("hex");
  }
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

/** VFIO_MIGRATION_* flag bits in the uAPI's words: "STOP_COPY P2P PRE_COPY", or "none". */
function flagWords(flags: number): string {
  return Object.entries(FLAG_NAMES).filter(([, v]) => flags & v).map(([k]) => k.toUpperCase().replace("-", "_"))
    .join(" ") || "none (not migratable)";
}

function existsPath(sys: Sys, path: string): boolean {
  try {
    sys.stat(path);
    return true;
  } catch {
    return false;
  }
}

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

/** A size option in bytes (units: options.ts parseSize). */
export function parseSize(s: string, name = "size"): number {
  return sizeOption(s, name);
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
    dataSize: dataSize === undefined ? undefined : parseSize(dataSize, "data-size"),
    sparse: sparse as V1Sparse | undefined,
  };
}

/** --quirk NAME (repeatable): driver behaviours (quirks.ts), checked against the model. */
function quirksOf(names: string[] | undefined, model: ModelName, v1: boolean): QuirkName[] | undefined {
  if (!names?.length) return undefined;
  let quirks: QuirkName[];
  try {
    quirks = parseQuirks(names.flatMap((n) => n.split(",")).map((n) => n.trim()).filter((n) => n));
  } catch (e) {
    throw new VfioMigError(`sim create: ${(e as Error).message}`, "usage");
  }
  for (const q of quirks) {
    const why = quirkMismatch(q, model, v1);
    if (why) throw new VfioMigError(`sim create: ${why}`, "usage");
  }
  return quirks;
}

/** --reset-at, --reset-to, --fail-leaves, --read-delay: each needs its quirk. */
function quirkOptionsOf(
  quirks: readonly QuirkName[],
  v: { "reset-at"?: string; "reset-to"?: string; "fail-leaves"?: string; "read-delay"?: string },
): QuirkOptions {
  const need = (opt: string, quirk: QuirkName) => {
    if (!quirks.includes(quirk)) throw new VfioMigError(`sim create: --${opt} needs --quirk ${quirk}`, "usage");
  };
  const o: QuirkOptions = {};
  if (v["reset-at"] !== undefined || v["reset-to"] !== undefined) {
    need(v["reset-at"] !== undefined ? "reset-at" : "reset-to", "reset-mid-session");
  }
  if (quirks.includes("reset-mid-session")) {
    const [phase, bytes] = (v["reset-at"] ?? "stop-copy").split(":");
    if (!RESET_PHASES.includes(phase as never)) {
      throw new VfioMigError(`sim create: --reset-at takes ${RESET_PHASES.join(", ")}[:BYTES] (not ${phase})`, "usage");
    }
    const to = v["reset-to"] ?? "error";
    if (to !== "error" && to !== "running") {
      throw new VfioMigError(`sim create: --reset-to takes error or running (not ${to})`, "usage");
    }
    o.resetAt = {
      phase: phase as "pre-copy" | "stop-copy" | "resuming",
      after: bytes === undefined ? 0 : parseSize(bytes, "reset-at"),
      to,
    };
  }
  if (v["fail-leaves"] !== undefined) {
    need("fail-leaves", "fails-mid-path");
    if (v["fail-leaves"] !== "intermediate" && v["fail-leaves"] !== "error") {
      throw new VfioMigError(
        `sim create: --fail-leaves takes intermediate or error (not ${v["fail-leaves"]})`,
        "usage",
      );
    }
    o.failLeaves = v["fail-leaves"];
  }
  if (v["read-delay"] !== undefined) {
    need("read-delay", "blocking-read");
    o.readDelay = parseDuration(v["read-delay"], "read-delay", DEFAULT_READ_DELAY_MS, { zero: true });
  }
  return o;
}

function familyOption(s: string | undefined): "pci" | "mdev" | undefined {
  if (s === undefined || s === "pci" || s === "mdev") return s;
  throw new VfioMigError(`sim create: --family takes pci or mdev (not ${s})`, "usage");
}

function show(sys: Sys, path: string) {
  const store = new SimStore(sys, path);
  const m = store.readMeta();
  return {
    device: `sim:${path}`,
    model: m.model,
    family: familyOf(m),
    migrationFlags: m.flags,
    /** Bytes of device state (state.bin; xe: generated, never stored). */
    size: m.model === "xe" ? m.size : sys.stat(store.statePath).size,
    /** Bytes a STOP_COPY session produces (mtty: the 24-byte header and the ports). */
    migrationData: stopCopyBytes(m.model, m.size),
    seed: m.seed,
    ...(m.contentSeed !== undefined ? { contentSeed: m.contentSeed } : {}),
    rate: m.rate,
    ...(m.yieldRate ? { yieldRate: m.yieldRate } : {}),
    state: m.v1 ? v1StateName(m.v1.state) : stateName(m.state),
    ...(m.v1 ? { protocol: "v1", dataSection: m.v1.dataSize, sparse: m.v1.sparse } : {}),
    ...(m.quirks?.length ? { quirks: m.quirks.join(",") } : {}),
    ...(m.quirkOptions ? { quirkOptions: JSON.stringify(m.quirkOptions) } : {}),
    ...(m.precopyV2 ? { precopyInfoV2: true } : {}),
    ...(m.reinitAfter !== undefined ? { reinitAfter: m.reinitAfter } : {}),
    sha256: stateHash(sys, store),
  };
}

const HELP = `Usage:
  vfio-mig sim create PATH [--force] [--model mtty-1|mtty-2|bulk|xe] [--family pci|mdev] [--size N]
                           [--flags LIST] [--seed S] [--rate BYTES_PER_SEC]
                           [--yield-rate BYTES_PER_SEC] [--precopy-v2] [--reinit-after BYTES]
                           [--quirk NAME]... [--reset-at PHASE[:BYTES]] [--reset-to error|running]
                           [--fail-leaves intermediate|error] [--read-delay TIME]
                           [--protocol v1|v2 [--data-size N] [--sparse full|partial|none]]
  vfio-mig sim show PATH [--json]
  vfio-mig sim compare A B [--json]

Simulated VFIO devices for tests, demos and benchmarks. A device is a folder (PATH)
that any process can open as --device sim:PATH; one process at a time holds it (EBUSY
otherwise), and another may borrow the holder's fd. Its migration state persists like a
real device's. 'create' refuses a PATH that already holds a device unless --force
says to replace it (its state is lost). Sizes take K, M, G (64M); durations ms, s, m.

Models (drivers, src/sim/drivers/):
  mtty-1, mtty-2  the kernel's mtty sample: 36 / 72 bytes of device state (one or two
                  ports of UART registers); its migration data, and its MIG_DATA_SIZE,
                  is 60 / 96 bytes: a 24-byte header plus the ports. PRE_COPY offers the
                  header, then read() returns 0.
  bulk            --size bytes of seeded state (default 1M) that changes at --rate
                  bytes/s while running; migration data is a 32-byte header, a 16-byte
                  record header and the state, then dirty pages as further records.
  xe              an Intel xe GPU VF: no PRE_COPY (flags stop-copy,p2p), --size bytes
                  of state (default 256M, any size: generated from the seed as it is
                  read, verified as it is written back, never stored), a MIG_DATA_SIZE
                  that under-estimates (15/16 of the data). Family pci.

--family pci: as vfio-pci-core does, the device is reset to its power-on state
(RUNNING, its data back to its seeded content, command register and MSI/MSI-X
enables cleared) at the first open and at the last close, and VFIO_DEVICE_RESET
(an FLR) loses its data. --family mdev: the state is kept across opens and resets
(mtty's reset only ends the session). Default: pci for xe, mdev for the others.
--yield-rate: the device yields its migration data at most this fast (e.g. 256M):
data_fd reads block until data is due, or fail with EAGAIN when the reader set
O_NONBLOCK (as mlx5's do). Default: as fast as it is read.
--flags: comma list of stop-copy, p2p, pre-copy, or none (not migratable: ENOTTY).
Default stop-copy,p2p,pre-copy (xe: stop-copy,p2p). 'show' prints the state and a
SHA-256 of the device's state; 'compare' exits 0 when two devices hold equal state, 1
otherwise.
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

Driver behaviours (--quirk NAME, repeatable; src/sim/quirks/, each from a real driver's
fix or documented behaviour). Conformant ones are real, allowed behaviours a tool must
cope with; the others are bugs 'vfio-mig check' must catch:
${quirkHelp()}
Settings: --reset-at PHASE[:BYTES] (reset-mid-session: pre-copy, stop-copy or resuming,
after BYTES of that phase moved; default stop-copy:0), --reset-to error|running (the
state it leaves; default error, as pds's device-initiated reset; a v1 device reads
RUNNING), --fail-leaves intermediate|error (fails-mid-path; default intermediate),
--read-delay TIME (blocking-read: a phase's data is ready TIME after it starts; default
${DEFAULT_READ_DELAY_MS}ms).

${
  examplesHelp([
    "vfio-mig sim create /tmp/a --model mtty-2 && vfio-mig info --device sim:/tmp/a",
    "vfio-mig sim create /tmp/big --model bulk --size 256M --rate 64M --force",
    "vfio-mig sim compare /tmp/a /tmp/b",
  ])
}

${exitCodesHelp([0, 1, 2], { 1: "failure; for compare: the devices differ" })}`;

function quirkHelp(): string {
  const width = Math.max(...QUIRK_NAMES.map((n) => n.length));
  const indent = " ".repeat(width + 4);
  return QUIRK_NAMES.map((n) => {
    const q = QUIRKS[n];
    const models = "models" in q && q.models ? `, ${q.models.join(", ")} only` : "";
    const head = `  ${n.padEnd(width)}  ${q.conformant ? "conformant" : "NOT conformant"}${models} (${q.source})`;
    return [head, ...wrap(q.summary, 88 - indent.length).map((l) => indent + l)].join("\n");
  }).join("\n");
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

export const simCommand: Command = {
  name: "sim",
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
      family: { type: "string" },
      "reset-at": { type: "string" },
      "reset-to": { type: "string" },
      "fail-leaves": { type: "string" },
      "read-delay": { type: "string" },
      protocol: { type: "string" },
      "data-size": { type: "string" },
      sparse: { type: "string" },
      "precopy-v2": { type: "boolean" },
      "reinit-after": { type: "string" },
      json: { type: "boolean" },
      force: { type: "boolean" },
    });
    if (sub === undefined) {
      console.error(HELP); // a usage error: the help goes to stderr
      return Promise.resolve(2);
    }
    if (values.help || sub === "--help" || sub === "-h") {
      console.log(HELP);
      return Promise.resolve(0);
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
        if (!values.force && existsPath(sys, store.metaPath)) {
          throw new VfioMigError(
            `sim create: ${positionals[0]} already holds a device: give --force to replace it (its state is lost)`,
            "usage",
          );
        }
        const v1 = v1Options(values.protocol, values["data-size"], values.sparse);
        const quirks = quirksOf(values.quirk, model, v1.protocol === "v1");
        store.create({
          model,
          family: familyOption(values.family),
          flags: values.flags === undefined ? undefined : parseFlags(values.flags),
          size: values.size === undefined ? undefined : parseSize(values.size),
          seed: values.seed === undefined ? undefined : parseCount(values.seed, "seed", 0),
          rate: values.rate === undefined ? undefined : parseSize(values.rate, "rate"),
          yieldRate: values["yield-rate"] === undefined ? undefined : parseSize(values["yield-rate"], "yield-rate"),
          quirks,
          quirkOptions: quirkOptionsOf(quirks ?? [], values),
          precopyV2: values["precopy-v2"],
          reinitAfter: values["reinit-after"] === undefined
            ? undefined
            : parseSize(values["reinit-after"], "reinit-after"),
          ...v1,
        });
        const s = show(sys, positionals[0]);
        if (values.json) printJson(s);
        else {
          console.log(
            `created ${s.device}: ${s.model}, ${s.size} bytes of state (${s.migrationData} bytes of migration ` +
              `data), migration flags 0x${s.migrationFlags.toString(16)} (${
                flagWords(s.migrationFlags)
              }), family ${s.family}` +
              `${s.family === defaultFamily(model) ? "" : " (not the model's default)"}`,
          );
        }
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
