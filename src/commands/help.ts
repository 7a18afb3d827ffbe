// The parts of --help every command shares, written once: the device forms --device
// takes, the exit codes (each command lists only those it can end with), and examples.

/**
 * The --device option's lines, aligned at `column` (the column the other options'
 * descriptions start at). Every form openDevice (src/device/open.ts) takes.
 */
export function deviceHelp(column: number, extra = ""): string {
  const pad = " ".repeat(column);
  const head = "  -d, --device D".padEnd(column);
  return `${head}PCI address (0000:3b:00.1), mdev UUID, sysfs path,
${pad}/dev/vfio/devices/vfioN, sim:PATH (a simulated device);
${pad}pid:PID[:FD] borrows the device fd process PID holds (needs ptrace
${pad}rights over it: root, or its user); fd:N uses descriptor N this
${pad}process inherited. Default: $VFIO_MIG_DEVICE, else the only
${pad}migration-capable VFIO device.${extra}`;
}

/**
 * The --vf-token option's lines, aligned at `column` as deviceHelp's (src/device/vf_token.ts
 * says which devices take the token, and how the kernel checks it).
 */
export function vfTokenHelp(column: number): string {
  const pad = " ".repeat(column);
  return `      --vf-token UUID  the SR-IOV VF token, to open a VF whose PF is bound to
${pad}vfio-pci (the token the PF's user set); opening such a PF with one
${pad}sets it while none of its VFs is in use. Passed only to devices
${pad}that take one (sysfs says which); not with sim:, pid:, fd:. Also
${pad}$VFIO_MIG_VF_TOKEN (keeps it off the command line, which ps shows)`;
}

/** What each exit code means, as the README's table says. */
export const EXIT_MEANING: Record<number, string> = {
  0: "success",
  1: "failure (a device step or I/O failed)",
  2: "usage error",
  3: "device not found, not openable (permission) or not migratable",
  4: "stream damaged, truncated or for another device",
  130: "interrupted (SIGINT/SIGTERM)",
};

/**
 * "Exit codes: ..." for the codes a command can end with; `meaning` overrides the
 * README's words for a code where the command's are more precise.
 */
export function exitCodesHelp(codes: number[], meaning: Record<number, string> = {}): string {
  const parts = codes.map((c) => `${c} ${meaning[c] ?? EXIT_MEANING[c]}`);
  const words = `Exit codes: ${parts.join(", ")}.`.split(" ");
  const lines: string[] = [];
  let line = "";
  for (const w of words) {
    if (line && line.length + 1 + w.length > 84) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  lines.push(line);
  return lines.join("\n");
}

/** "Examples:" and one command per line (each `vfio-mig …`, or a pipe of them). */
export function examplesHelp(lines: string[]): string {
  return `Examples:\n${lines.map((l) => `  ${l}`).join("\n")}`;
}
