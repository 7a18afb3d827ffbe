// The command table: each command's name and one-line summary, and how to load it.
// cli.ts imports this alone, so a command's modules are loaded only when it runs
// (a Deno start costs what it imports: tens of seconds in a TCG guest).

import type { Command } from "./command.ts";

export interface CommandEntry {
  name: string;
  /** The line `vfio-mig --help` shows. */
  summary: string;
  load(): Promise<Command>;
}

export const COMMANDS: CommandEntry[] = [
  {
    name: "save",
    summary: "save a device's migration state to a file, standard output or a listening load",
    load: async () => (await import("./save.ts")).saveCommand,
  },
  {
    name: "load",
    summary: "load migration state from a file, standard input or one TCP peer into a device",
    load: async () => (await import("./load.ts")).loadCommand,
  },
  {
    name: "info",
    summary: "show a device's identity, migration flags, data size and state",
    load: async () => (await import("./info.ts")).infoCommand,
  },
  {
    name: "state",
    summary: "print a device's migration state, or request a new one",
    load: async () => (await import("./state.ts")).stateCommand,
  },
  {
    name: "reset",
    summary: "reset a device (VFIO_DEVICE_RESET): recovers ERROR and aborts RESUMING",
    load: async () => (await import("./state.ts")).resetCommand,
  },
  {
    name: "sim",
    summary: "create, show and compare simulated VFIO devices",
    load: async () => (await import("./sim.ts")).simCommand,
  },
  {
    name: "list",
    summary: "list VFIO devices: IOMMU group, cdev, migration flags, state, dirty tracking",
    load: async () => (await import("./list.ts")).listCommand,
  },
  {
    name: "check",
    summary: "driver conformance report: every arc, data_fd, PRECOPY_INFO, round trip",
    load: async () => (await import("./check.ts")).checkCommand,
  },
  {
    name: "inspect",
    summary: "show what a saved stream holds, check it, and find where it is damaged (no device)",
    load: async () => (await import("./inspect.ts")).inspectCommand,
  },
  {
    name: "verify",
    summary: "check a saved stream whole (every checksum, the order, the trailer) without a device; exit 0 or 4",
    load: async () => (await import("./verify.ts")).verifyCommand,
  },
  {
    name: "report",
    summary: "draw an events file (save/load --events) as an HTML page or SVG picture",
    load: async () => (await import("./report.ts")).reportCommand,
  },
  {
    name: "qemu-splice",
    summary: "put a vfio-mig stream's device data into a QEMU migration stream (for QEMU's migrate-incoming)",
    load: async () => (await import("./qemu_splice.ts")).qemuSpliceCommand,
  },
];
