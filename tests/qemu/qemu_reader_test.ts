// QemuRecordReader (src/qemu/reader.ts): one VFIO device's sections of a QEMU stream
// as the records vfio-mig's loader consumes, from a file (pre-scanned: the identity
// known, the stream checked before the first record) and from a pipe; the device
// chosen by --qemu-id; v2 data in pieces of at most 1 MiB, v1 chunks whole.

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { decodeConfigState } from "../../src/migrate/config_state.ts";
import { openQemuRecordReader, QEMU_PIECE, QemuRecordReader } from "../../src/qemu/reader.ts";
import type { StreamRecord } from "../../src/stream/reader.ts";
import { openSource } from "../../src/transport/transport.ts";
import { counting, fixture, synthQemuStream } from "../helpers/qemu.ts";
import { MemorySource } from "../helpers/bytes.ts";

async function all(r: QemuRecordReader): Promise<StreamRecord[]> {
  const out: StreamRecord[] = [];
  for (;;) {
    const rec = await r.next();
    out.push(rec.kind === "data" ? { ...rec, bytes: rec.bytes.slice() } : rec);
    if (rec.kind === "end") return out;
  }
}

const shape = (recs: StreamRecord[]) =>
  recs.map((r) => (r.kind === "tag" ? r.tag : r.kind === "data" ? `${r.tag}(${r.bytes.length})` : "end"));

const real = await fixture("qemu10-paused.mig");

Deno.test("QemuRecordReader: QEMU 10's sections as the loader's records", async () => {
  const r = new QemuRecordReader(new MemorySource(real, 7000));
  const h = await r.readHeader();
  assertEquals([h.protocol, h.qemu.idstr, h.qemu.machine, h.device.vendor], [
    "v2",
    "0000:00:01.0/vfio",
    "pc-q35-10.0",
    null,
  ]);
  assertEquals(h.qemu.identity, "unknown until DEV_CONFIG_STATE (pipe)");
  const recs = await all(r);
  assertEquals(shape(recs), [
    "DEV_SETUP_STATE",
    "END_OF_STATE",
    "DEV_DATA_STATE(24)",
    "END_OF_STATE",
    "END_OF_STATE",
    "END_OF_STATE",
    "SWITCHOVER",
    "DEV_DATA_STATE(72)",
    "END_OF_STATE",
    "DEV_CONFIG_STATE(4120)",
    "END_OF_STATE",
    "end",
  ]);
  const cfg = recs.find((x) => x.kind === "data" && x.tag === "DEV_CONFIG_STATE") as { bytes: Uint8Array };
  const c = decodeConfigState(cfg.bytes);
  assertEquals([c.config[0] | (c.config[1] << 8), c.config.length, c.msixTable], [0x4348, 4096, null]);
  assertEquals([r.dataBytes, r.offset], [96, real.length]);
});

Deno.test("QemuRecordReader: a file is walked first; its header has the device's ids", async () => {
  const dir = await Deno.makeTempDir();
  const sys = libc();
  try {
    const f = `${dir}/vm.mig`;
    await Deno.writeFile(f, real);
    const src = openSource(sys, f);
    const r = await openQemuRecordReader(sys, f, src, { protocol: "v2" });
    const h = await r.readHeader();
    assertEquals([h.device.vendor, h.device.device, h.device.subsystemVendor, h.device.subsystemDevice], [
      0x4348,
      0x3253,
      0x4348,
      0x3253,
    ]);
    assertEquals([h.sizeEstimate, h.mode, h.qemu.identity], [96, "live", "config section (pre-scan)"]);
    assertEquals(shape(await all(r)).length, 12);
    src.close();
    // A damaged file is refused before the first record.
    await Deno.writeFile(f, real.subarray(0, 300000));
    const src2 = openSource(sys, f);
    let err: unknown = null;
    try {
      await openQemuRecordReader(sys, f, src2);
    } catch (e) {
      err = e;
    } finally {
      src2.close();
    }
    assertMatch(String(err), /damaged QEMU stream: truncated.*\(at byte \d+\)/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("QemuRecordReader: several devices need a choice, and --qemu-id picks one", async () => {
  const s = synthQemuStream({
    devices: [
      { idstr: "0000:00:01.0/vfio", precopy: [[counting(8)]], stopCopy: [counting(16)] },
      { idstr: "0000:00:02.0/vfio", precopy: [[counting(5, 9)]], stopCopy: [counting(7, 9)] },
    ],
  });
  let err: unknown = null;
  try {
    await new QemuRecordReader(new MemorySource(s)).readHeader();
  } catch (e) {
    err = e;
  }
  assertMatch(
    String(err),
    /holds 2 VFIO devices \(0000:00:01.0\/vfio, 0000:00:02.0\/vfio\): choose one with --qemu-id/,
  );
  err = null;
  try {
    await new QemuRecordReader(new MemorySource(s), { qemuId: "0000:00:03.0/vfio" }).readHeader();
  } catch (e) {
    err = e;
  }
  assertMatch(String(err), /no VFIO device 0000:00:03.0\/vfio \(it has: 0000:00:01.0\/vfio, 0000:00:02.0\/vfio\)/);
  const r = new QemuRecordReader(new MemorySource(s), { qemuId: "0000:00:02.0/vfio" });
  await r.readHeader();
  const recs = await all(r);
  const data = recs.filter((x) => x.kind === "data" && x.tag === "DEV_DATA_STATE") as { bytes: Uint8Array }[];
  assertEquals(data.map((d) => [...d.bytes]), [[...counting(5, 9)], [...counting(7, 9)]]);
});

Deno.test("QemuRecordReader: v2 data in pieces of at most 1 MiB, a v1 chunk whole", async () => {
  const big = counting(3 * QEMU_PIECE + 5, 3);
  const s = synthQemuStream({ devices: [{ idstr: "vfio", precopy: [], stopCopy: [big] }] });
  const v2 = new QemuRecordReader(new MemorySource(s));
  await v2.readHeader();
  const sizes = (await all(v2)).filter((x) => x.kind === "data" && x.tag === "DEV_DATA_STATE").map((x) =>
    (x as { bytes: Uint8Array }).bytes.length
  );
  assertEquals(sizes, [QEMU_PIECE, QEMU_PIECE, QEMU_PIECE, 5]);
  const v1 = new QemuRecordReader(new MemorySource(s), { protocol: "v1" });
  const h = await v1.readHeader();
  assertEquals(h.protocol, "v1");
  const recs = await all(v1);
  assert(!shape(recs).includes("SWITCHOVER"), "protocol v1 has no SWITCHOVER");
  const one = recs.filter((x) => x.kind === "data" && x.tag === "DEV_DATA_STATE") as { bytes: Uint8Array }[];
  assertEquals(one.length, 1);
  assertEquals(one[0].bytes, big);
});

Deno.test("QemuRecordReader: a stream without the device's config section is refused at its end", async () => {
  const s = synthQemuStream({ devices: [{ idstr: "vfio", precopy: [], stopCopy: [counting(4)], config: false }] });
  const r = new QemuRecordReader(new MemorySource(s));
  await r.readHeader();
  let err: unknown = null;
  try {
    await all(r);
  } catch (e) {
    err = e;
  }
  assertMatch(String(err), /ends without vfio's config section/);
});
