// `vfio-mig state` and `vfio-mig reset`: read or request a device's migration state
// through its protocol's control (src/device/control.ts), and VFIO_DEVICE_RESET.

import { findV1, migrationControl } from "../device/control.ts";
import { VfioMigError } from "../errors.ts";
import { recoverDevice, tryGetState } from "../migrate/session.ts";
import { chooseProtocol } from "../migrate/protocol.ts";
import { type DeviceState, parseState } from "../vfio/state_machine.ts";
import { v1StateName } from "../vfio/v1.ts";
import { SysError } from "../../ffi/errno.ts";
import { type Command, parse } from "./command.ts";
import { examplesHelp, exitCodesHelp } from "./help.ts";
import { stateFailureMessage, unknownStateMessage } from "./state_failure.ts";
import { DEVICE_OPTION_HELP, openNamedDevice, VF_TOKEN_OPTION, VF_TOKEN_OPTION_HELP } from "./devices.ts";

export const stateCommand: Command = {
  name: "state",
  help: `Usage: vfio-mig state [--device D] [--vf-token UUID] [STATE]

Without STATE, prints the current migration state. With STATE (STOP, RUNNING,
RUNNING_P2P, STOP_COPY, RESUMING, PRE_COPY, PRE_COPY_P2P) requests it with
MIG_DEVICE_STATE SET and prints the state reached; a data_fd the kernel hands out is
closed at once (its session is then abandoned). STOP_COPY -> PRE_COPY* is refused
without asking the kernel: Linux 6.2 and later spin forever on that request (a soft
lockup in vfio_mig_get_next_state()) until the fix "vfio: prevent infinite loop in
vfio_mig_get_next_state() on blocked arc" (2026, Linux 7.1 and stable kernels).

A device with the v1 migration region (QEMU 7.2's protocol) shows its device_state
bits, e.g. "running (001b)"; STATE then sets them as QEMU does for that state: STOP
000b, RUNNING 001b, STOP_COPY 010b (_SAVING), PRE_COPY 011b, RESUMING 100b. A device
that speaks neither protocol is refused (exit 3).

Options:
  -d, --device D   ${DEVICE_OPTION_HELP}
${VF_TOKEN_OPTION_HELP}
  -h, --help       this help

${
    examplesHelp([
      "vfio-mig state --device 0000:3b:00.1",
      "vfio-mig state --device 0000:3b:00.1 STOP",
      "vfio-mig state --device sim:/tmp/a RUNNING",
    ])
  }

${exitCodesHelp([0, 1, 2, 3], { 1: "the kernel refused the request (the device's state is then printed)" })}`,
  async run(args) {
    const { values, positionals } = parse("state", args, {
      device: { type: "string", short: "d" },
      ...VF_TOKEN_OPTION,
    });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    const dev = await openNamedDevice("state", values.device, values["vf-token"]);
    try {
      if (positionals.length > 1) throw new VfioMigError("state: give at most one STATE", "usage");
      let target: DeviceState | null = null;
      if (positionals.length === 1) {
        try {
          target = parseState(positionals[0]);
        } catch {
          throw new VfioMigError(`state: ${unknownStateMessage(positionals[0])}`, "usage");
        }
      }
      // Either protocol; neither is a device refusal (exit 3) that says why.
      const control = migrationControl(dev, chooseProtocol(dev, "auto"))!;
      if (target !== null && control.protocol === "v2") {
        // A refused request: which step failed, the state now, the way out.
        const from = tryGetState(dev);
        try {
          console.log(control.setState(target));
        } catch (e) {
          if (!(e instanceof SysError)) throw e;
          const flags = dev.migration.migrationFlags();
          const now = tryGetState(dev);
          const device = values.device ?? dev.label;
          throw new VfioMigError(stateFailureMessage({ flags, from, target, now, error: e, device }), "failure");
        }
        return 0;
      }
      console.log(target !== null ? control.setState(target) : control.state());
      return 0;
    } finally {
      dev.close();
    }
  },
};

export const resetCommand: Command = {
  name: "reset",
  help: `Usage: vfio-mig reset [--device D] [--vf-token UUID]

Issues VFIO_DEVICE_RESET. The migration state becomes RUNNING and any open migration
data_fd stops working; the device's internal state is lost (for a borrowed device,
the state of the process holding it).

Options:
  -d, --device D   ${DEVICE_OPTION_HELP}
${VF_TOKEN_OPTION_HELP}
  -h, --help       this help

${
    examplesHelp([
      "vfio-mig reset --device 0000:3b:00.1",
      "vfio-mig reset --device pid:4242",
    ])
  }

${exitCodesHelp([0, 1, 2, 3])}`,
  async run(args) {
    const { values } = parse("reset", args, { device: { type: "string", short: "d" }, ...VF_TOKEN_OPTION });
    if (values.help) {
      console.log(this.help);
      return 0;
    }
    const dev = await openNamedDevice("reset", values.device, values["vf-token"]);
    try {
      // A v1 device has no v2 state to read back: name its device_state bits.
      const v1 = tryGetState(dev) === null ? findV1(dev) : null;
      if (v1) {
        dev.migration.reset();
        console.log(`${dev.label} was reset and is ${v1StateName(v1.readState())}`);
      } else console.log(recoverDevice(dev, parseState("RUNNING"), true));
      return 0;
    } finally {
      dev.close();
    }
  },
};
