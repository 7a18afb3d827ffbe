// The DEV_CONFIG_STATE section, for both protocols: what is read (config space through
// the config region, the MSI-X table and PBA through their BAR), its codec and decoded
// fields, and the restore on load (command register, MSI/MSI-X enable state, MSI-X
// table), which --no-config skips; the vendor/device ids in it are checked.

import { assert, assertEquals, assertStringIncludes, assertThrows } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { PCI_REGION } from "../../ffi/vfio_uapi.ts";
import { openDevice, type VfioDevice } from "../../src/device/open.ts";
import { StreamError, VfioMigError } from "../../src/errors.ts";
import {
  checkConfigIdentity,
  decodeConfigState,
  describeConfig,
  encodeConfigState,
  readConfigState,
  summarizeConfig,
} from "../../src/migrate/config_state.ts";
import { load, type LoadOptions } from "../../src/migrate/load.ts";
import { save } from "../../src/migrate/save.ts";
import { getRegionInfo } from "../../src/vfio/regions.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { CAP_MSI_AT, CAP_MSIX_AT } from "../../src/sim/models.ts";
import { SimStore } from "../../src/sim/store.ts";
import { openSink, openSource } from "../../src/transport/transport.ts";

const host = libc();

function create(dir: string, protocol: "v1" | "v2", model: "bulk" | "mtty-1" | "mtty-2" = "bulk", seed = 1): void {
  new SimStore(host, dir).create({
    model,
    size: 64 * 1024,
    seed,
    protocol,
    dataSize: protocol === "v1" ? 16384 : undefined,
  });
}

async function withDevice<T>(dir: string, fn: (d: VfioDevice) => Promise<T> | T): Promise<T> {
  const d = openDevice(new SimKernel(host), `sim:${dir}`);
  try {
    return await fn(d);
  } finally {
    d.close();
  }
}

function configWrite(d: VfioDevice, at: number, bytes: number[]): void {
  const r = getRegionInfo(d.sys, d.fd, PCI_REGION.CONFIG);
  d.sys.pwrite(d.fd, new Uint8Array(bytes), r.offset + at);
}

/** Programs what a guest driver would: memory + bus master, MSI address/data and enable, MSI-X. */
function program(d: VfioDevice): Uint8Array {
  configWrite(d, 0x04, [0x06, 0x00]);
  configWrite(d, CAP_MSI_AT + 4, [0x00, 0x10, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0x00]);
  configWrite(d, CAP_MSI_AT + 2, [0x81, 0x00]);
  configWrite(d, CAP_MSIX_AT + 3, [0xc0]); // enable + function mask
  const table = new Uint8Array(4 * 16).map((_, i) => (i * 7 + 3) & 0xff);
  const bar2 = getRegionInfo(d.sys, d.fd, 2);
  d.sys.pwrite(d.fd, table, bar2.offset);
  return table;
}

async function roundTrip(t: string, protocol: "v1" | "v2", opts: LoadOptions = {}) {
  create(`${t}/a`, protocol, "bulk", 1);
  create(`${t}/b`, protocol, "bulk", 2);
  const table = await withDevice(`${t}/a`, program);
  await withDevice(`${t}/a`, async (d) => {
    const r = await save(d, openSink(d.sys, `${t}/s.bin`), {});
    assertEquals(r.configBytes, 256);
  });
  const result = await withDevice(`${t}/b`, async (d) => {
    const src = openSource(d.sys, `${t}/s.bin`);
    try {
      return await load(d, src, opts);
    } finally {
      src.close();
    }
  });
  const after = await withDevice(`${t}/b`, (d) => readConfigState(d)!);
  return { table, result, after };
}

for (const protocol of ["v2", "v1"] as const) {
  Deno.test(`config section round trip (${protocol}): command register, MSI and MSI-X state, MSI-X table`, async () => {
    const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
    try {
      const { table, result, after } = await roundTrip(t, protocol);
      const s = summarizeConfig(after.config);
      assertEquals(s.command, 0x0006, "command register restored");
      assertEquals(s.msi?.enabled, true, "MSI enable restored");
      assertEquals(
        after.config.subarray(CAP_MSI_AT + 4, CAP_MSI_AT + 14),
        new Uint8Array([0x00, 0x10, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0x00]),
      );
      assertEquals([s.msix?.enabled, s.msix?.functionMask, s.msix?.entries], [true, true, 4], "MSI-X control restored");
      assertEquals(after.msixTable, table, "MSI-X table restored");
      assertEquals(after.pba?.length, 1, "PBA of (4 + 7) / 8 bytes");
      assertEquals(result.config, {
        command: 0x0006,
        msiEnabled: true,
        msixEnabled: true,
        msixTable: true,
        notRestored: [],
      });
      assertEquals(result.protocol, protocol);
    } finally {
      await Deno.remove(t, { recursive: true });
    }
  });
}

Deno.test("config section: --no-config loads the device state but leaves config space alone", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    const { result, after } = await roundTrip(t, "v2", { noConfig: true });
    assertEquals(result.config, null);
    const s = summarizeConfig(after.config);
    assertEquals([s.command, s.msi?.enabled, s.msix?.enabled], [0, false, false]);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("config section of mtty: the 255-byte config region, no capabilities, codec round trip", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    create(`${t}/m`, "v2", "mtty-2");
    const c = await withDevice(`${t}/m`, (d) => readConfigState(d)!);
    assertEquals(c.config.length, 255);
    assertEquals([c.msixTable, c.pba], [null, null]);
    const s = summarizeConfig(c.config);
    assertEquals([s.vendor, s.device, s.capabilities.length], [0x4348, 0x3253, 0]);
    const enc = encodeConfigState(c);
    assertEquals(enc.length, 24 + 255);
    assertEquals(decodeConfigState(enc), c);
    assertStringIncludes(describeConfig(s)[0], "0x4348:0x3253");
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("config section: damaged sections and another device's ids are refused", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-cfg-" });
  try {
    create(`${t}/b`, "v2", "bulk");
    create(`${t}/m`, "v2", "mtty-1");
    const mtty = await withDevice(`${t}/m`, (d) => readConfigState(d)!);
    await withDevice(`${t}/b`, (d) => {
      const e = assertThrows(() => checkConfigIdentity(mtty, d), VfioMigError);
      assertStringIncludes(e.message, "0x4348:0x3253");
      checkConfigIdentity(readConfigState(d)!, d);
    });
    const enc = encodeConfigState(mtty);
    assertThrows(() => decodeConfigState(enc.subarray(0, 30)), StreamError);
    const bad = enc.slice();
    bad[0] = 0x58;
    assertThrows(() => decodeConfigState(bad), StreamError);
    const longer = new Uint8Array(enc.length + 1);
    longer.set(enc);
    assertThrows(() => decodeConfigState(longer), StreamError);
    assert(describeConfig(summarizeConfig(mtty.config)).length >= 2);
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});
