// `vfio-mig state STATE` when the kernel refuses: which step failed, the device's state
// now and the way out; `state FOO` lists the valid states.

import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { stateFailureMessage } from "../../src/commands/state_failure.ts";
import { DeviceState } from "../../src/vfio/state_machine.ts";
import { Errno, SysError } from "../../ffi/errno.ts";
import { cli, ok, simCreate, stateOf, withTemp } from "../helpers/proc.ts";

Deno.test("state: refusals from RESUMING name the failed arc, the state now and 'vfio-mig reset'", async () => {
  await withTemp(async (t) => {
    const a = `${t}/a`;
    await simCreate(a, "--model", "mtty-2");
    await ok(["state", "--device", `sim:${a}`, "RESUMING"]);
    const reset =
      `the way out: 'vfio-mig reset --device sim:${a}' \\(the device becomes RUNNING, its state is lost\\)$`;
    const cases: [string, RegExp][] = [
      [
        "RUNNING",
        /^vfio-mig: state: RESUMING -> RUNNING failed: the kernel refused the arc RESUMING -> STOP \(step 1 of 3: RESUMING -> STOP -> RUNNING_P2P -> RUNNING\), where the driver checks the data written in RESUMING .*\(EINVAL: Invalid argument\); the device is now RESUMING; /,
      ],
      [
        "STOP",
        /^vfio-mig: state: RESUMING -> STOP failed: the kernel refused the arc RESUMING -> STOP, .*now RESUMING; /,
      ],
      ["STOP_COPY", /^vfio-mig: state: RESUMING -> STOP_COPY failed: .*arc RESUMING -> STOP \(step 1 of 2: /],
      ["ERROR", /^vfio-mig: state: RESUMING -> ERROR failed: ERROR cannot be requested .*now RESUMING; /],
    ];
    for (const [target, says] of cases) {
      const r = await cli(["state", "--device", `sim:${a}`, target]);
      assertEquals(r.code, 1, r.stderr);
      const lines = r.stderr.trim().split("\n");
      assertEquals(lines.length, 1, r.stderr);
      assertMatch(lines[0], says);
      assertMatch(lines[0], new RegExp(reset));
      assertEquals(await stateOf(a), "RESUMING", "the device is where the message says");
    }
    const foo = await cli(["state", "--device", `sim:${a}`, "FOO"]);
    assertEquals(foo.code, 2);
    assertEquals(
      foo.stderr.trim(),
      "vfio-mig: state: unknown device state FOO; valid states: STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, " +
        "PRE_COPY, PRE_COPY_P2P",
    );
    // The way out works.
    await ok(["reset", "--device", `sim:${a}`]);
    assertEquals(await stateOf(a), "RUNNING");
  });
});

Deno.test("state: an unsupported target, and a failure that left the device elsewhere on the path", () => {
  const einval = new SysError("ioctl", Errno.EINVAL);
  const m1 = stateFailureMessage({
    flags: 0x1,
    from: DeviceState.RUNNING,
    target: DeviceState.PRE_COPY,
    now: DeviceState.RUNNING,
    error: einval,
    device: "D",
  });
  assertMatch(m1, /this device does not support PRE_COPY \(it supports STOP, RUNNING, STOP_COPY, RESUMING\)/);
  assertMatch(m1, /the device is now RUNNING$/);
  // RUNNING -> STOP_COPY failing on its second arc leaves STOP: the arc STOP -> STOP_COPY is named.
  const m2 = stateFailureMessage({
    flags: 0x7,
    from: DeviceState.RUNNING,
    target: DeviceState.STOP_COPY,
    now: DeviceState.STOP,
    error: new SysError("ioctl", Errno.EIO),
    device: "D",
  });
  assertMatch(m2, /refused the arc STOP -> STOP_COPY \(step 3 of 3: RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY\)/);
  assertMatch(m2, /\(EIO: .*\); the device is now STOP$/);
  const m3 = stateFailureMessage({
    flags: 0x7,
    from: DeviceState.RUNNING,
    target: DeviceState.STOP,
    now: DeviceState.ERROR,
    error: einval,
    device: "D",
  });
  assertMatch(m3, /the device is now ERROR; the way out: 'vfio-mig reset --device D'/);
});
