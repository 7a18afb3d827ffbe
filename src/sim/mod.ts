/**
 * The simulated VFIO kernel as a library: a `Sys` that answers the VFIO uAPI for devices
 * kept in folders (`sim:PATH`), its models and quirks. Importing this entry registers the
 * simulator as the device layer's "sim" backend (src/sim/ops.ts), so `openDevice` and
 * `systemFor` reach `sim:PATH` devices and the fds that hold them.
 *
 * @example
 * ```ts
 * import { openDevice, save } from "../../mod.ts";
 * import { SimStore } from "./mod.ts";
 * import { libc } from "../../ffi/libc.ts";
 *
 * const dir = await Deno.makeTempDir();
 * new SimStore(libc(), `${dir}/a`).create({ model: "mtty-2" });
 * const dev = openDevice(`sim:${dir}/a`);
 * await save(dev, `${dir}/a.vfmig`);
 * dev.close();
 * ```
 *
 * @module
 */

export { type Fault, parseFaults, SimKernel, type SimKernelOptions } from "./kernel.ts";
export { familyOf, type QuirkOptions, type SimDeviceMeta, SimStore } from "./store.ts";
export { defaultFamily, MODEL_NAMES, type ModelInfo, modelInfo, type ModelName } from "./models.ts";
export { parseQuirks, QUIRK_NAMES, type QuirkName, QUIRKS } from "./quirks.ts";
export { SIM_OPS } from "./ops.ts";
