// The progress bar of save and load on a terminal: one line on stderr, redrawn in place
// from the events (bytes, rate, ETA; when live, the pre-copy iteration and what is left
// against what fits the downtime limit), cleared before the command's summary line.
// None when stderr is not a terminal.

import type { Sys } from "../../ffi/sys.ts";
import { fmtBytes as formatBytes } from "../report/format.ts";
import type { EventSubscriber, MigrationEvent } from "./events.ts";

/** Where the bar draws: a terminal's write and its width. */
export interface BarOutput {
  write(text: string): void;
  /** Terminal columns (the bar keeps one free so the line never wraps). */
  columns(): number;
}

const enc = new TextEncoder();

/** stderr as a bar output (its width from the terminal, 80 when it cannot say). */
export function stderrOutput(): BarOutput {
  return {
    write(text) {
      const b = enc.encode(text);
      let off = 0;
      while (off < b.length) off += Deno.stderr.writeSync(b.subarray(off));
    },
    columns() {
      try {
        const c = Deno.consoleSize().columns;
        return c > 0 ? c : 80;
      } catch {
        return 80;
      }
    },
  };
}

function readlinkOr(sys: Sys, path: string): string | null {
  try {
    return sys.readlink(path);
  } catch {
    return null;
  }
}

function cmdlineOf(sys: Sys, path: string): string[] {
  let fd: number;
  try {
    fd = sys.open(path, 0 /* O_RDONLY */);
  } catch {
    return [];
  }
  try {
    const b = new Uint8Array(4096);
    const n = sys.read(fd, b);
    return new TextDecoder().decode(b.subarray(0, n)).split("\0").filter((a) => a);
  } catch {
    return [];
  } finally {
    sys.close(fd);
  }
}

/**
 * Whether the pipe at this process's `fd` has at its other end another vfio-mig running
 * `peerCommand` whose standard error is this process's terminal: a `save - | load -` on
 * one terminal, where two bars would overwrite each other on the one line, so one of
 * them stays silent. Read from /proc (a pipe's fd links read "pipe:[INODE]",
 * fs/pipe.c; /proc/PID/cmdline): processes whose fds we may not read do not count.
 */
export function pipePeerSharesTerminal(sys: Sys, fd: number, peerCommand: "save" | "load", proc = "/proc"): boolean {
  const self = sys.getpid();
  const pipe = readlinkOr(sys, `${proc}/${self}/fd/${fd}`);
  const tty = readlinkOr(sys, `${proc}/${self}/fd/2`);
  if (!pipe?.startsWith("pipe:") || !tty?.startsWith("/dev/")) return false;
  let pids: string[];
  try {
    pids = sys.readdir(proc).filter((n) => /^\d+$/.test(n) && Number(n) !== self);
  } catch {
    return false;
  }
  for (const pid of pids) {
    if (readlinkOr(sys, `${proc}/${pid}/fd/2`) !== tty) continue;
    const argv = cmdlineOf(sys, `${proc}/${pid}/cmdline`);
    const at = argv.findIndex((a) => /(^|\/)(vfio-mig|cli\.ts)$/.test(a));
    if (at < 0 || !argv.slice(at + 1).includes(peerCommand)) continue;
    let fds: string[];
    try {
      fds = sys.readdir(`${proc}/${pid}/fd`);
    } catch {
      continue;
    }
    if (fds.some((n) => readlinkOr(sys, `${proc}/${pid}/fd/${n}`) === pipe)) return true;
  }
  return false;
}

/** "4.2s", "3m05s", "1h02m". */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  if (s < 60) return `${s.toFixed(1)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

const REDRAW_MS = 50;
const CLEAR = "\r\x1b[K";

/**
 * The bar, as an events subscriber. It draws on progress, phase, iteration and
 * switchover events (at most 20 times a second), and clears its line on result,
 * error, note, and close(): whoever prints to stderr while it is shown calls clear().
 */
export class ProgressBar implements EventSubscriber {
  #shown = false;
  #lastDraw = -Infinity;
  #command = "";
  #phase = "setup";
  #bytes = 0;
  #rate = 0;
  /** save --max-bandwidth, bytes/s (the start event), or null. */
  #maxBandwidth: number | null = null;
  #total: number | null = null;
  #iteration = 0;
  #estimate: number | null = null;
  #threshold: number | null = null;
  #live = false;
  #t = 0;

  constructor(readonly out: BarOutput) {}

  /** A bar on stderr when it is a terminal (and `enabled`), else null. */
  static forStderr(enabled = true): ProgressBar | null {
    if (!enabled || !Deno.stderr.isTerminal()) return null;
    return new ProgressBar(stderrOutput());
  }

  event(e: MigrationEvent): void {
    this.#t = e.t;
    let force = false;
    switch (e.type) {
      case "start":
        this.#command = e.command as string;
        this.#live = e.mode === "live";
        this.#maxBandwidth = (e.maxBandwidth as number | undefined) ?? null;
        return;
      case "header":
        this.#live = e.mode === "live";
        this.#total = e.sizeEstimate as number | null;
        return;
      case "phase":
        if (e.device !== undefined) return;
        if (e.edge === "end") {
          // The data's end (save: the trailer's, the stream's whole length; load: resume's):
          // the last bytes no progress event counted.
          if ((e.phase === "trailer" || e.phase === "resume") && typeof e.bytes === "number") {
            this.#bytes = Math.max(this.#bytes, e.bytes);
          }
          return;
        }
        force = this.#phase !== e.phase;
        this.#phase = e.phase as string;
        // Everything has moved: what moved is the total (the size was an estimate), the bar full.
        if (e.phase === "finish" && this.#bytes > 0) this.#total = this.#bytes;
        break;
      case "progress":
        this.#phase = e.phase as string;
        this.#bytes = e.bytes as number;
        this.#rate = e.rate as number;
        if (this.#phase !== "finish") this.#total = e.total as number | null;
        break;
      case "iteration":
        this.#iteration = e.n as number;
        if (e.edge === "end") {
          this.#bytes = Math.max(this.#bytes, e.totalBytes as number);
          this.#estimate = e.estimate as number;
          this.#threshold = e.threshold as number | null;
        }
        break;
      case "switchover":
        this.#phase = "stop-copy";
        force = true;
        break;
      case "note":
      case "result":
      case "error":
        this.clear();
        return;
      default:
        return;
    }
    if (force || this.#t - this.#lastDraw >= REDRAW_MS) this.#draw();
  }

  /** The line as it would be drawn `width` columns wide (tests read it). */
  render(width: number): string {
    const max = Math.max(width - 1, 10);
    const label = `${this.#command ? `${this.#command} ` : ""}${this.#phase}` +
      (this.#live && this.#iteration > 0 && this.#phase === "pre-copy" ? ` #${this.#iteration}` : "");
    const total = this.#total !== null && this.#total > 0 ? this.#total : null;
    const within = total !== null && this.#bytes <= total;
    const amount = formatBytes(this.#bytes) + (within ? ` / ~${formatBytes(total!)}` : "");
    // The limit while it applies (a live save's stop-copy runs unlimited, as QEMU's).
    const paced = this.#maxBandwidth !== null && !(this.#live && this.#phase !== "pre-copy");
    const extras: string[] = [
      `${formatBytes(this.#rate)}/s${paced ? ` (max ${formatBytes(this.#maxBandwidth!)}/s)` : ""}`,
    ];
    if (this.#phase === "pre-copy" && this.#estimate !== null) {
      extras.push(
        `left ~${formatBytes(this.#estimate)}` +
          (this.#threshold !== null ? ` (fits ${formatBytes(this.#threshold)})` : ""),
      );
    } else if (within && this.#rate > 0 && this.#phase !== "finish" && this.#phase !== "pre-copy") {
      // (Pre-copy has no end to count down to: it ends when what is left fits.)
      extras.push(`ETA ${formatDuration((total! - this.#bytes) / this.#rate)}`);
    }
    extras.push(formatDuration(this.#t / 1000));
    // Drop the least useful parts until the text fits; the bar takes what is left.
    const parts = [label, amount, ...extras];
    let text = parts.join("  ");
    while (text.length > max && parts.length > 2) {
      parts.pop();
      text = parts.join("  ");
    }
    if (text.length > max) return text.slice(0, max);
    const room = max - text.length - 4;
    if (within && room >= 10) {
      const width = Math.min(room, 30);
      const fill = Math.round((this.#bytes / total!) * width);
      const bar = `[${"#".repeat(fill)}${".".repeat(width - fill)}]`;
      return [parts[0], bar, ...parts.slice(1)].join("  ");
    }
    return text;
  }

  #draw(): void {
    this.#lastDraw = this.#t;
    this.out.write(`${CLEAR}${this.render(this.out.columns())}`);
    this.#shown = true;
  }

  /** Clears the line (before anything else is printed on stderr); the next event draws again. */
  clear(): void {
    if (!this.#shown) return;
    this.out.write(CLEAR);
    this.#shown = false;
    this.#lastDraw = -Infinity;
  }

  close(): void {
    this.clear();
  }
}
