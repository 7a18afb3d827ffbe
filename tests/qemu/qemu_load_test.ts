// `vfio-mig load` of a QEMU migration stream (picked by its magic; src/qemu/reader.ts
// wired into load): the real QEMU 10 stream (tests/fixtures/qemu/) into simulated
// mtty-2 devices, from a file and from a pipe, gives the same device state as loading
// vfio-mig's own save of that state; refusals before the device is touched (another
// device kind, a damaged file, an unknown --qemu-id), and a reset after a failure.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { fixture, FIXTURES, synthQemuStream } from "../helpers/qemu.ts";
import { cliText as vfioMig } from "../helpers/proc.ts";
import { MemorySource } from "../helpers/bytes.ts";

async function sim(dir: string, name: string, ...args: string[]): Promise<string> {
  const path = `${dir}/${name}`;
  const r = await vfioMig(["sim", "create", path, ...args]);
  assertEquals(r.code, 0, r.err);
  return path;
}

/** The device data of a vfio-mig stream, joined. */
async function vmigData(path: string): Promise<number[]> {
  const { StreamReader } = await import("../../src/stream/reader.ts");
  const r = new StreamReader(new MemorySource(await Deno.readFile(path)));
  await r.readHeader();
  const out: number[] = [];
  for (;;) {
    const rec = await r.next();
    if (rec.kind === "end") return out;
    if (rec.kind === "data" && rec.tag === "DEV_DATA_STATE") out.push(...rec.bytes);
  }
}

async function simState(path: string): Promise<{ state: string; sha256: string }> {
  return JSON.parse((await vfioMig(["sim", "show", "--json", path])).out);
}

const real = await fixture("qemu10-paused.mig");

Deno.test("load of a QEMU stream: the device gets the state vfio-mig's own save of it gives", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const q = `${dir}/vm.mig`;
    await Deno.writeFile(q, real);
    const [x, z] = [await sim(dir, "x", "--model", "mtty-2"), await sim(dir, "z", "--model", "mtty-2")];
    const a = await vfioMig(["load", "--json", "--device", `sim:${x}`, q]);
    assertEquals(a.code, 0, a.err);
    const j = JSON.parse(a.out);
    assertEquals([j.bytes, j.protocol, j.finalState, j.source], [96, "v2", "RUNNING", `${q} 0000:00:01.0/vfio`]);
    assertEquals(j.statesVisited, ["RESUMING", "STOP", "RUNNING"]);
    assert(j.config !== null, "the config section was restored");
    const c = await vfioMig(["load", "--device", `sim:${z}`, "-"], real);
    assertEquals(c.code, 0, c.err);
    assertEquals((await simState(z)).sha256, (await simState(x)).sha256, "from a pipe too");
    // vfio-mig's save of the loaded state has the data of vfio-mig's save of the real mtty
    // whose state QEMU saved (the fixture's twin).
    const s = await vfioMig(["save", "--device", `sim:${x}`, `${dir}/x.vmig`]);
    assertEquals(s.code, 0, s.err);
    assertEquals(await vmigData(`${dir}/x.vmig`), await vmigData(`${FIXTURES}qemu10-paused.vmig`));
    assertEquals((await vmigData(`${dir}/x.vmig`)).length, 96);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("load of a QEMU stream: refusals, and a reset after a failure", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const q = `${dir}/vm.mig`;
    await Deno.writeFile(q, real);
    const bulk = await sim(dir, "bulk", "--model", "bulk", "--size", "4096");
    const before = await simState(bulk);
    // Another kind of device (its PCI ids differ): refused from the pre-scan, untouched.
    const w = await vfioMig(["load", "--device", `sim:${bulk}`, q]);
    assertEquals(w.code, 4, w.err);
    assertMatch(w.err, /wrong device: the stream is from a 0x4348:0x3253 device, the destination is 0x1b36:/);
    assertStringIncludes(w.err, "was not touched");
    assertEquals((await simState(bulk)).sha256, before.sha256);
    // A damaged file: refused before the device is touched.
    const m2 = await sim(dir, "m2", "--model", "mtty-2");
    const m2before = await simState(m2);
    await Deno.writeFile(`${dir}/cut.mig`, real.subarray(0, 300000));
    const d = await vfioMig(["load", "--device", `sim:${m2}`, `${dir}/cut.mig`]);
    assertEquals(d.code, 4, d.err);
    assertMatch(d.err, /damaged QEMU stream: truncated.*was not touched/);
    assertEquals((await simState(m2)).sha256, m2before.sha256);
    // The same through a pipe: found after the data went in; the device is reset.
    const p = await vfioMig(["load", "--device", `sim:${m2}`, "-"], real.subarray(0, 300000));
    assertEquals(p.code, 4, p.err);
    assertMatch(p.err, /truncated/);
    assertEquals((await simState(m2)).state, "RUNNING");
    // --qemu-id that is not there.
    const u = await vfioMig(["load", "--device", `sim:${m2}`, "--qemu-id", "0000:00:09.0/vfio", q]);
    assertEquals(u.code, 2, u.err);
    assertStringIncludes(u.err, "no VFIO device 0000:00:09.0/vfio (it has: 0000:00:01.0/vfio)");
    // --qemu-id for a vfio-mig stream.
    const v = await vfioMig(["load", "--device", `sim:${m2}`, "--qemu-id", "x", `${FIXTURES}qemu10-paused.vmig`]);
    assertEquals(v.code, 2, v.err);
    // A one-port mtty refuses two ports' data: the driver's refusal resets it.
    const m1 = await sim(dir, "m1", "--model", "mtty-1");
    const r = await vfioMig(["load", "--device", `sim:${m1}`, q]);
    assert(r.code !== 0, "mtty-1 cannot take mtty-2's state");
    assertEquals((await simState(m1)).state, "RUNNING");
    assertEquals(r.err.trim().split("\n").length, 1, `one line: ${r.err}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("load of a QEMU stream with two VFIO devices: --qemu-id picks one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Device data of the fixture's twin (a real mtty-2 state) for the second device.
    const { QemuStreamParser } = await import("../../src/qemu/stream.ts");
    const { TAG } = await import("../../src/stream/format.ts");
    const p = new QemuStreamParser(new MemorySource(real));
    await p.header();
    const chunks: Uint8Array[] = [];
    for (;;) {
      const it = await p.next();
      if (it.kind === "eof") break;
      if (it.kind !== "section" || !it.section.vfio || it.section.kind === "full") continue;
      for (;;) {
        const rec = await p.vfioRecord();
        if (rec.tag === TAG.END_OF_STATE) break;
        const parts: number[] = [];
        if (rec.tag === TAG.DEV_DATA_STATE) await p.vfioData((b) => parts.push(...b));
        if (parts.length) chunks.push(new Uint8Array(parts));
      }
    }
    const s = synthQemuStream({
      devices: [
        { idstr: "0000:00:01.0/vfio", precopy: [], stopCopy: [new Uint8Array(96)] },
        { idstr: "0000:00:02.0/vfio", precopy: [[chunks[0]]], stopCopy: [chunks[1]] },
      ],
    });
    await Deno.writeFile(`${dir}/two.mig`, s);
    const m = await sim(dir, "m", "--model", "mtty-2");
    const n = await vfioMig(["load", "--device", `sim:${m}`, `${dir}/two.mig`]);
    assertEquals(n.code, 2, n.err);
    assertStringIncludes(
      n.err,
      "holds 2 VFIO devices (0000:00:01.0/vfio, 0000:00:02.0/vfio): choose one with --qemu-id",
    );
    const ok = await vfioMig(["load", "--device", `sim:${m}`, "--qemu-id", "0000:00:02.0/vfio", `${dir}/two.mig`]);
    assertEquals(ok.code, 0, ok.err);
    const twin = await sim(dir, "twin", "--model", "mtty-2");
    await Deno.writeFile(`${dir}/one.mig`, real);
    assertEquals((await vfioMig(["load", "--device", `sim:${twin}`, `${dir}/one.mig`])).code, 0);
    assertEquals((await vfioMig(["sim", "compare", m, twin])).code, 0, "the second device's state");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("QEMU 7.2's v1 stream: inspect, load into a simulated v1 mtty-2, and its v1 save spliced back", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const v1 = await fixture("qemu72-v1-paused.mig");
    const q = `${dir}/v1.mig`;
    await Deno.writeFile(q, v1);
    const i = JSON.parse((await vfioMig(["inspect", "--json", q])).out);
    assertEquals([i.ok, i.header.machine, i.vfio[0].precopyBytes, i.vfio[0].stopCopyBytes], [
      true,
      "pc-q35-7.2",
      24,
      72,
    ]);
    const m = await sim(dir, "m", "--model", "mtty-2", "--protocol", "v1", "--data-size", "4096");
    const l = JSON.parse((await vfioMig(["load", "--json", "--device", `sim:${m}`, q])).out);
    assertEquals([l.protocol, l.bytes, l.finalState], ["v1", 96, "running (001b)"]);
    // The state went in whole: vfio-mig's v1 save of it has QEMU's data.
    assertEquals((await vfioMig(["save", "--device", `sim:${m}`, `${dir}/m.vmig`])).code, 0);
    const { QemuStreamParser } = await import("../../src/qemu/stream.ts");
    const { TAG } = await import("../../src/stream/format.ts");
    const qemuData: number[] = [];
    const p = new QemuStreamParser(new MemorySource(v1));
    await p.header();
    for (;;) {
      const it = await p.next();
      if (it.kind === "eof") break;
      if (it.kind !== "section" || !it.section.vfio || it.section.kind === "full") continue;
      for (;;) {
        const r = await p.vfioRecord();
        if (r.tag === TAG.END_OF_STATE) break;
        if (r.tag === TAG.DEV_DATA_STATE) await p.vfioData((b) => qemuData.push(...b));
      }
    }
    assertEquals(await vmigData(`${dir}/m.vmig`), qemuData);
    const s = await vfioMig(["qemu-splice", q, "--device-stream", `${dir}/m.vmig`, "-o", `${dir}/s.mig`, "--json"]);
    assertEquals(s.code, 0, s.err);
    assertEquals(JSON.parse(s.out).protocol, "v1");
    const back = JSON.parse((await vfioMig(["inspect", "--json", `${dir}/s.mig`])).out);
    assertEquals([back.ok, back.vfio[0].stopCopyBytes], [true, 96]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
