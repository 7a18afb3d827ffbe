// The QEMU migration stream reader (src/qemu/stream.ts) and `inspect` of QEMU streams,
// on a real stream (QEMU 10.0 in the kernel guest, a paused VM with an mtty-2 passed
// through: tests/fixtures/qemu/) and on synthetic ones: every section framed exactly
// with and without the VM description, the VFIO records and config, damage found with
// its offset, a 1 GiB RAM section read in bounded memory, and the CLI.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { StreamError } from "../../src/errors.ts";
import { inspectQemuStream } from "../../src/inspect/qemu.ts";
import { checkDescription } from "../../src/qemu/description.ts";
import { QemuStreamParser } from "../../src/qemu/stream.ts";
import { decodeVfioConfig } from "../../src/qemu/vfio_config.ts";
import { TAG } from "../../src/stream/format.ts";
import { be32, be64, counting, fixture, synthQemuStream } from "../helpers/qemu.ts";
import { cliText as vfioMig } from "../helpers/proc.ts";
import { MemorySource } from "../helpers/bytes.ts";

/** The description at the end of a stream held in memory (as readDescriptionAtEnd finds it in a file). */
function descriptionOf(bytes: Uint8Array) {
  for (let i = bytes.length - 6; i > 0; i--) {
    if (bytes[i] !== 6 || bytes[i - 1] !== 0) continue;
    const n = new DataView(bytes.buffer, bytes.byteOffset + i + 1, 4).getUint32(0);
    if (i + 5 + n === bytes.length) {
      return checkDescription(JSON.parse(new TextDecoder().decode(bytes.subarray(i + 5))), i + 5);
    }
  }
  return null;
}

const real = await fixture("qemu10-paused.mig");

Deno.test("QEMU 10 stream: every section framed, with and without the VM description", async () => {
  for (const description of [descriptionOf(real), null]) {
    const p = new QemuStreamParser(new MemorySource(real, 4093), { description });
    const h = await p.header();
    assertEquals([h.version, h.machine, h.pageBits, h.capabilities], [3, "pc-q35-10.0", 12, []]);
    const kinds: string[] = [];
    const vfioData: number[] = [];
    for (;;) {
      const it = await p.next();
      if (it.kind === "eof") break;
      if (it.kind === "command") {
        kinds.push(`cmd ${it.name}`);
        continue;
      }
      const s = it.section;
      kinds.push(`${s.kind} ${s.idstr}`);
      if (s.vfio) {
        for (;;) {
          const r = await p.vfioRecord();
          if (r.tag === TAG.DEV_DATA_STATE) await p.vfioData((b) => vfioData.push(...b));
          if (r.tag === TAG.END_OF_STATE) break;
        }
      }
      const b = await p.finishBody();
      assert(b.footer, `${s.idstr} has its footer`);
      if (s.kind === "full" && !s.vfio) assertEquals(b.framing, description ? "description" : "footer scan");
    }
    const t = await p.trailer();
    assert(t && t.description.devices.length === 30, "the description follows EOF");
    assertEquals(p.offset, real.length, "the whole stream is read");
    assertEquals(kinds.slice(0, 3), ["start ram", "start 0000:00:01.0/vfio", "part ram"]);
    assert(kinds.includes("cmd SWITCHOVER_START"), "SWITCHOVER_START");
    assertEquals(kinds.filter((k) => k.endsWith("/vfio")).length, 6, "vfio: start, 3 parts, end, full");
    assertEquals(vfioData.length, 96, "mtty-2's 24 + 72 bytes");
  }
});

Deno.test("QEMU 10 stream: inspect finds the device, its data and its config", async () => {
  const r = await inspectQemuStream(new MemorySource(real), { description: descriptionOf(real) });
  assert(r.ok, JSON.stringify(r.firstProblem));
  assertEquals(r.vfio.length, 1);
  const d = r.vfio[0];
  assertEquals([d.idstr, d.instanceId, d.version, d.sectionId], ["0000:00:01.0/vfio", 0, 1, 37]);
  assertEquals([d.dataRecords, d.dataBytes, d.precopyBytes, d.stopCopyBytes], [2, 96, 24, 72]);
  assertEquals(d.sections.map((s) => s.kind), ["start", "part", "part", "part", "end", "full"]);
  assertEquals(d.sections[0].tags, ["DEV_SETUP_STATE", "END_OF_STATE"]);
  const c = d.config!.decoded!;
  assertEquals([c.summary.vendor, c.summary.device, c.express, c.config.length], [0x4348, 0x3253, true, 4096]);
  assertEquals(c.pciVersionId, 2);
  assertEquals(d.payload?.format, "mtty");
  assertEquals(d.payload?.mtty?.ports.map((p) => p.uartRegs.SCR), [0x5a, 0xa5], "the scratch registers set before");
  assertEquals(d.payload?.mtty?.ports[0].fifo.bytes, [0x68, 0x69], "port 0's FIFO, oldest first");
  assertEquals(r.ram?.blocks?.length, 6);
  assertEquals(r.commands.map((c) => c.name), ["SWITCHOVER_START"]);
});

Deno.test("QEMU stream: each truncation is a StreamError at or before the cut, never anything else", async () => {
  const desc = descriptionOf(real);
  // Every section boundary and a spread of other points.
  const cuts = new Set<number>([0, 1, 4, 8, 9, 24, 25, 200, 246, real.length - 1]);
  for (let i = 0; i < 48; i++) cuts.add(Math.floor((real.length * i) / 48) + (i % 7));
  for (const cut of cuts) {
    const part = real.subarray(0, cut);
    for (const description of [desc, null]) {
      const r = await inspectQemuStream(new MemorySource(part), { description });
      assert(!r.ok, `a stream cut at ${cut} must not pass`);
      const q = r.firstProblem!;
      assert(q.offset <= cut, `cut at ${cut}: problem at ${q.offset} (${q.message})`);
      assertMatch(q.message, /truncated|QEMU_VM_EOF|description|no .* before|not a QEMU/);
    }
  }
});

Deno.test("QEMU stream: damage in the framing is found where it is", async () => {
  const desc = descriptionOf(real);
  const cases: { at: number; xor: number; want: RegExp }[] = [
    { at: 0, xor: 1, want: /not a QEMU migration stream/ },
    { at: 7, xor: 1, want: /version/ },
    { at: 224 + 7, xor: 0x40, want: /unknown VFIO tag/ }, // DEV_SETUP_STATE of the vfio START
    { at: 244, xor: 1, want: /section footer .* says section/ }, // vfio START's footer id
    { at: 246, xor: 0x40, want: /unknown section type|SECTION_/ }, // a PART's type byte
  ];
  for (const c of cases) {
    const bad = real.slice();
    bad[c.at] ^= c.xor;
    for (const description of [desc, null]) {
      const r = await inspectQemuStream(new MemorySource(bad), { description });
      assert(!r.ok, `byte ${c.at} flipped must be found`);
      assertMatch(r.firstProblem!.message, c.want, `byte ${c.at}`);
      assert(
        r.firstProblem!.offset <= c.at + 8 && r.firstProblem!.offset >= c.at - 32,
        `offset ${r.firstProblem!.offset}`,
      );
    }
  }
});

Deno.test("QEMU stream: a device section the description sizes differently is refused", async () => {
  const s = synthQemuStream({
    devices: [{ idstr: "0000:00:01.0/vfio", precopy: [], stopCopy: [counting(10)] }],
    others: [{ idstr: "timer", body: counting(24) }],
  });
  const desc = descriptionOf(s)!;
  desc.devices[0].fields![0].size = 23;
  const r = await inspectQemuStream(new MemorySource(s), { description: desc });
  assert(!r.ok);
  assertMatch(r.firstProblem!.message, /footer of timer says section|missing section footer/);
  // Without the description up front, the footer scan's size is checked against it at the end.
  const r2 = await inspectQemuStream(new MemorySource(s), { description: null });
  assert(r2.ok, JSON.stringify(r2.firstProblem));
});

Deno.test("QEMU stream: vfio-mig's own tags are not QEMU's", async () => {
  const s = synthQemuStream({
    devices: [{ idstr: "0000:00:01.0/vfio", precopy: [], stopCopy: [counting(4)] }],
  });
  // The END_OF_STATE that closes the device's SECTION_START, made vfio-mig's SWITCHOVER.
  const at = findFirst(s, [...be64(TAG.END_OF_STATE), 0x7e, ...be32(37)]);
  const bad = s.slice();
  bad.set(be64(TAG.SWITCHOVER), at);
  const r = await inspectQemuStream(new MemorySource(bad));
  assert(!r.ok);
  assertEquals(r.firstProblem!.offset, at);
  assertMatch(r.firstProblem!.message, /unknown VFIO tag .* \(SWITCHOVER is vfio-mig's, not QEMU's\)/);
});

Deno.test("QEMU stream: a 1 GiB RAM section is read in bounded memory", async () => {
  // A generated stream: the ram SECTION_PART holds 262144 pages of 4 KiB (1 GiB), replayed
  // from one 4 MiB block of page records; then one VFIO device's data.
  const head = synthQemuStream({
    devices: [{ idstr: "0000:00:01.0/vfio", precopy: [], stopCopy: [counting(96)] }],
    ramPages: 1,
  });
  const partAt = findFirst(head, [0x02, ...be32(1)]);
  const suffix = head.subarray(findFirst(head, [0x08, 0, 11, 0, 0], partAt)); // from SWITCHOVER_START on
  const PER = 1024;
  const block = new Uint8Array(PER * (8 + 4096));
  for (let i = 0; i < PER; i++) {
    block.set(be64(BigInt(i) * 4096n | 0x28n), i * 4104); // PAGE | CONTINUE
    block.fill(i & 0xff, i * 4104 + 8, (i + 1) * 4104);
  }
  const first = new Uint8Array([
    0x02,
    ...be32(1),
    ...be64(0x02),
    6,
    ...[..."pc.ram"].map((c) => c.charCodeAt(0)),
    0,
  ]); // a zero page naming the block
  const pieces = [
    head.subarray(0, partAt),
    first,
    ...new Array(256).fill(block),
    new Uint8Array([...be64(0x10), 0x7e, ...be32(1)]),
    suffix,
  ];
  let pi = 0, off = 0;
  const src = {
    read(buf: Uint8Array): number {
      while (pi < pieces.length && off >= pieces[pi].length) {
        pi++;
        off = 0;
      }
      if (pi >= pieces.length) return 0;
      const k = Math.min(buf.length, pieces[pi].length - off);
      buf.set(pieces[pi].subarray(off, off + k));
      off += k;
      return k;
    },
  };
  const before = Deno.memoryUsage().rss;
  const r = await inspectQemuStream(src);
  const grown = Deno.memoryUsage().rss - before;
  assert(r.ok, JSON.stringify(r.firstProblem));
  assertEquals(r.ram?.pages, 256 * PER);
  assertEquals(r.ram?.pageBytes, 1 << 30);
  assertEquals(r.vfio[0].dataBytes, 96);
  assert(grown < 64 << 20, `memory grew by ${grown} bytes reading 1 GiB of RAM pages`);
});

function findFirst(b: Uint8Array, pat: number[], from = 0): number {
  for (let i = from; i + pat.length <= b.length; i++) {
    if (pat.every((x, k) => b[i + k] === x)) return i;
  }
  throw new Error("pattern not found");
}

Deno.test("vfio-pci config vmstate: 256- and 4096-byte config spaces, and MSI-X", () => {
  const mk = (size: number, msix = 0) => {
    const cfg = new Uint8Array(size);
    cfg.set([0x86, 0x80, 0x34, 0x12], 0);
    if (msix) {
      cfg[6] = 0x10; // status: capability list
      cfg[0x34] = 0x40;
      cfg.set([0x11, 0x00, (msix - 1) & 0xff, 0x80 | ((msix - 1) >> 8)], 0x40); // MSI-X, enabled
    }
    const table = new Uint8Array(msix * 16).fill(0x01);
    const pba = new Uint8Array(Math.ceil(msix / 8));
    return new Uint8Array([...be32(2), ...cfg, ...be32(1), ...be32(0), ...be32(0), ...be32(0), ...table, ...pba]);
  };
  for (const size of [256, 4096]) {
    for (const msix of [0, 3, 9]) {
      const c = decodeVfioConfig(mk(size, msix));
      assertEquals([c.config.length, c.express, c.irqState], [size, size === 4096, [1, 0, 0, 0]]);
      assertEquals([c.summary.vendor, c.summary.device], [0x8086, 0x1234]);
      assertEquals(c.msixTable?.length ?? 0, msix * 16);
      assertEquals(c.pba?.length ?? 0, Math.ceil(msix / 8));
      if (msix) assertEquals(c.summary.msix?.enabled, true);
    }
  }
  let threw = false;
  try {
    decodeVfioConfig(new Uint8Array(300));
  } catch (e) {
    threw = e instanceof StreamError;
  }
  assert(threw, "300 bytes fit no config space");
});

Deno.test("inspect CLI: a QEMU file, the same through a pipe, JSON, and a truncated one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/vm.mig`;
    await Deno.writeFile(file, real);
    const a = await vfioMig(["inspect", file]);
    assertEquals(a.code, 0, a.err);
    assertStringIncludes(a.out, "QEMU migration stream, version 3, machine pc-q35-10.0");
    assertStringIncludes(a.out, "vfio        0000:00:01.0/vfio (section 37, instance 0, version 1)");
    assertStringIncludes(a.out, "96 bytes in 2 data records (pre-copy 24, stop-copy 72");
    assertStringIncludes(a.out, "ids 0x4348:0x3253");
    assertStringIncludes(a.out, "(read first: it gave the device sections their sizes)");
    assertStringIncludes(a.out, "result      OK: the QEMU stream is intact");
    const b = await vfioMig(["inspect", "-"], real);
    assertEquals(b.code, 0, b.err);
    assertStringIncludes(b.out, "framed by footer scan");
    const j = JSON.parse((await vfioMig(["inspect", "--json", file])).out);
    assertEquals([j.format, j.ok, j.vfio[0].dataBytes, j.vfio[0].config.decoded.summary.vendor], [
      "qemu",
      true,
      96,
      0x4348,
    ]);
    assertEquals(typeof j.vfio[0].config.decoded.config, "string", "config bytes as hex");
    await Deno.writeFile(file, real.subarray(0, 20000));
    const t = await vfioMig(["inspect", file]);
    assertEquals(t.code, 4, t.err);
    assertMatch(t.out, /result {6}DAMAGED: at byte \d+: truncated/);
    assertEquals(t.err, "", "the verdict is on stdout, as for vfio-mig streams");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
