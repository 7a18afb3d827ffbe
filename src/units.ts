// How vfio-mig writes an amount of bytes for people: one formatter for every command,
// progress line and report ("1.50 GiB"). A leaf module.

/** Binary units (IEC 80000-13), 1024 apart. */
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** The binary unit that suits `n` bytes: [divisor, name]. */
export function byteUnit(n: number): [number, string] {
  let i = 0;
  let d = 1;
  while (Math.abs(n) >= 1024 * d && i < UNITS.length - 1) {
    d *= 1024;
    i++;
  }
  return [d, UNITS[i]];
}

/** "512 B", "14.1 MiB", "256 MiB", "1.50 GiB": three significant digits, whole numbers without decimals. */
export function fmtBytes(n: number): string {
  const [d, u] = byteUnit(n);
  const v = n / d;
  if (d === 1 || Number.isInteger(v)) return `${Math.round(v)} ${u}`;
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${u}`;
}
