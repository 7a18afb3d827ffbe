// Know where a state came from (issue 13 item 7): the stream header records the
// source's kernel release and the driver module's version and srcversion; a load warns
// (not refuses) when the destination's differ, before it touches the device.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { cli, ok, withTemp } from "../helpers/proc.ts";
import { encodeHeader, HEADER_FIXED } from "../../src/stream/format.ts";
import { libc } from "../../ffi/libc.ts";
import { readSmallFile } from "../../src/io.ts";

function headerOf(bytes: Uint8Array): { json: Record<string, unknown>; end: number } {
  const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(12);
  return {
    json: JSON.parse(new TextDecoder().decode(bytes.subarray(HEADER_FIXED, HEADER_FIXED + n))),
    end: HEADER_FIXED + n + 4,
  };
}

Deno.test("origin: the header records kernel and driver module; a load from another kernel or driver warns, then loads", async () => {
  await withTemp(async (t) => {
    // A fake sysfs that has the simulated device's driver as a module, with a version.
    const sysfs = (v: string) => {
      Deno.mkdirSync(`${t}/sys-${v}/module/mtty`, { recursive: true });
      Deno.writeTextFileSync(`${t}/sys-${v}/module/mtty/version`, `${v}\n`);
      Deno.writeTextFileSync(`${t}/sys-${v}/module/mtty/srcversion`, `SRC${v}\n`);
      return `${t}/sys-${v}`;
    };
    await ok(["sim", "create", `${t}/a`, "--model", "mtty-2", "--seed", "1"]);
    await ok(["sim", "create", `${t}/b`, "--model", "mtty-2", "--seed", "2"]);
    await ok(["save", "--resume", "--device", `sim:${t}/a`, `${t}/s.vfmig`], { env: { VFIO_MIG_SYSFS: sysfs("1.0") } });
    const bytes = Deno.readFileSync(`${t}/s.vfmig`);
    const { json, end } = headerOf(bytes);
    const origin = json.origin as Record<string, string | null>;
    assertEquals([origin.driverModule, origin.driverVersion, origin.driverSrcversion], ["mtty", "1.0", "SRC1.0"]);
    // Through libc: Deno asks for --allow-all to read /proc/sys.
    const release = new TextDecoder().decode(readSmallFile(libc(), "/proc/sys/kernel/osrelease", 4096)).trim();
    assertEquals(origin.kernel, release);
    // inspect shows it.
    const shown = await ok(["inspect", `${t}/s.vfmig`]);
    assertStringIncludes(shown.stdout, `saved on kernel ${release}, driver module mtty version 1.0 srcversion SRC1.0`);

    // The same driver: no warning.
    const same = await ok(["load", "--device", `sim:${t}/b`, `${t}/s.vfmig`], {
      env: { VFIO_MIG_SYSFS: sysfs("1.0") },
    });
    assert(!same.stderr.includes("warning"), same.stderr);
    // Another driver version: a warning naming both, and the load goes on.
    const other = await ok(["load", "--device", `sim:${t}/b`, `${t}/s.vfmig`], {
      env: { VFIO_MIG_SYSFS: sysfs("2.0") },
    });
    assertMatch(other.stderr, /warning: sim:.*\/b: its driver mtty was version 1\.0; here it is 2\.0/);
    assertStringIncludes(other.stderr, "loaded");

    // Another kernel: the header says so (re-encoded, as a stream from elsewhere would be).
    const moved = { ...json, origin: { ...origin, kernel: "5.15.0-elsewhere" } };
    const h = encodeHeader(moved as never);
    const out = new Uint8Array(h.length + bytes.length - end);
    out.set(h);
    out.set(bytes.subarray(end), h.length);
    Deno.writeFileSync(`${t}/moved.vfmig`, out);
    const k = await cli(["load", "--json", "--device", `sim:${t}/b`, `${t}/moved.vfmig`], {
      env: { VFIO_MIG_SYSFS: sysfs("1.0") },
    });
    assertEquals(k.code, 0, k.stderr);
    assertMatch(k.stderr, /warning: .*saved on kernel 5\.15\.0-elsewhere; this host runs /);
  });
});
