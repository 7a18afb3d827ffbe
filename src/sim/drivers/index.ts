// The driver of each model: one file per driver (mtty.ts, bulk.ts, xe.ts); a new model
// is a new file and a line here.

import type { SimDevice, SimDriver } from "../driver.ts";
import type { ModelName } from "../models.ts";
import { BulkDriver } from "./bulk.ts";
import { MttyDriver } from "./mtty.ts";
import { XeDriver } from "./xe.ts";

const DRIVERS: Record<ModelName, (dev: SimDevice) => SimDriver> = {
  "mtty-1": (dev) => new MttyDriver(dev),
  "mtty-2": (dev) => new MttyDriver(dev),
  "bulk": (dev) => new BulkDriver(dev),
  "xe": (dev) => new XeDriver(dev),
};

/** A new instance of the driver of `dev`'s model, for one open of it. */
export function driverFor(dev: SimDevice): SimDriver {
  return DRIVERS[dev.meta.model](dev);
}
