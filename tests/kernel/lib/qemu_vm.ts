// A nested QEMU inside the test guest (the QEMU judge, groups/qemu.ts): starts one of
// the QEMU roots exported at /opt/qemu (lib/qemu.sh) with mtty devices passed through
// (vfio-pci sysfsdev=), speaks QMP over its stdio, migrates to a file and back.
// No guest OS: SeaBIOS is enough for QEMU to migrate the VM (TCG, 32 MiB).
//
// QEMU 10 (bookworm-backports): enable-migration=on, and x-device-dirty-page-tracking=off
// (mtty registers DMA-logging ops, which QEMU would prefer, but Debian's 6.12 has no
// IOMMUFD, so every dirty report would be EOPNOTSUPP): the type1 container's tracking
// is used. file: URIs.
// QEMU 7.2 (Debian 12): x-enable-migration=on (off by default in 7.2), protocol v1 only;
// it has no file: URI, so exec:cat is used.

export type QemuVersion = "10" | "7.2";
export const QEMU_ROOT = "/opt/qemu";

export function qemuAvailable(v: QemuVersion): boolean {
  try {
    return Deno.statSync(`${QEMU_ROOT}/${v}/qemu`).isFile;
  } catch {
    return false;
  }
}

export interface QemuOptions {
  version: QemuVersion;
  /** mdev UUIDs or PCI addresses, passed through in order (the first gets 0000:00:01.0, …). */
  devices: string[];
  /** -S: the VM does not run (a paused source). */
  paused?: boolean;
  /** -incoming defer: a destination. */
  incoming?: boolean;
}

// deno-lint-ignore no-explicit-any
type Json = any;

export class QemuVm {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  /** Events QEMU sent while we waited for replies (name, data). */
  readonly events: { event: string; data?: Json }[] = [];
  #stderr: Promise<string>;
  readonly started = performance.now();

  private constructor(readonly opts: QemuOptions, child: Deno.ChildProcess) {
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#lines = lines(child.stdout)[Symbol.asyncIterator]();
    this.#stderr = new Response(child.stderr).text();
  }

  /** The qemu command line (the launcher of the root, then QEMU's options). */
  static args(o: QemuOptions): string[] {
    const props = o.version === "10" ? "enable-migration=on,x-device-dirty-page-tracking=off" : "x-enable-migration=on";
    const args = [
      "-accel",
      "tcg,tb-size=16",
      "-m",
      "32",
      "-machine",
      "q35",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-qmp",
      "stdio",
    ];
    if (o.paused) args.push("-S");
    if (o.incoming) args.push("-incoming", "defer");
    o.devices.forEach((dev, i) => {
      // An mdev UUID, or a PCI address (a function bound to a vfio variant driver: groups/pci.ts).
      const sysfs = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(dev)
        ? "/sys/bus/pci/devices"
        : "/sys/bus/mdev/devices";
      args.push("-device", `vfio-pci,sysfsdev=${sysfs}/${dev},addr=0x${(i + 1).toString(16)},${props}`);
    });
    return args;
  }

  static async start(o: QemuOptions): Promise<QemuVm> {
    const child = new Deno.Command(`${QEMU_ROOT}/${o.version}/qemu`, {
      args: QemuVm.args(o),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const vm = new QemuVm(o, child);
    const greeting = await vm.#next();
    if (!greeting?.QMP) throw new Error(`QEMU ${o.version} did not greet: ${JSON.stringify(greeting)}`);
    await vm.qmp("qmp_capabilities");
    return vm;
  }

  async #next(): Promise<Json | null> {
    const r = await this.#lines.next();
    if (r.done) {
      const status = await this.#child.status;
      throw new Error(`QEMU exited (${status.code}): ${(await this.#stderr).trim()}`);
    }
    return JSON.parse(r.value);
  }

  /** One QMP command; its "return", or an Error with QEMU's "error" description. */
  async qmp(execute: string, args?: Json): Promise<Json> {
    const msg = JSON.stringify(args === undefined ? { execute } : { execute, arguments: args }) + "\n";
    await this.#writer.write(new TextEncoder().encode(msg));
    for (;;) {
      const m = await this.#next();
      if (m.event) {
        this.events.push({ event: m.event, data: m.data });
        continue;
      }
      if (m.error) throw new Error(`QMP ${execute}: ${m.error.class}: ${m.error.desc}`);
      return m.return;
    }
  }

  /** Polls query-migrate until the migration leaves setup/active; throws unless completed. */
  async waitMigration(what: string, timeoutMs = 900_000): Promise<Json> {
    const t0 = performance.now();
    for (;;) {
      const q = await this.qmp("query-migrate");
      if (q.status === "completed") return q;
      if (q.status === "failed" || q.status === "cancelled") {
        throw new Error(`${what}: migration ${q.status}: ${q["error-desc"] ?? ""}`);
      }
      if (performance.now() - t0 > timeoutMs) throw new Error(`${what}: migration still ${q.status}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  #uri(path: string, out: boolean): string {
    if (this.opts.version === "10") return `file:${path}`;
    return out ? `exec:cat > ${path}` : `exec:cat ${path}`;
  }

  /**
   * migrate to a file and wait for it; query-migrate's final answer. A running guest
   * (even SeaBIOS) dirties RAM while it is sent: a downtime limit of 10 s lets the
   * migration converge on a slow, busy machine (QEMU's default is 300 ms).
   */
  async migrateTo(path: string): Promise<Json> {
    if (!this.opts.paused) await this.qmp("migrate-set-parameters", { "downtime-limit": 10_000 });
    await this.qmp("migrate", { uri: this.#uri(path, true) });
    return await this.waitMigration(`QEMU ${this.opts.version} migrate to ${path}`);
  }

  /** migrate-incoming from a file and wait for it; query-migrate's final answer. */
  async incomingFrom(path: string): Promise<Json> {
    await this.qmp("migrate-incoming", { uri: this.#uri(path, false) });
    return await this.waitMigration(`QEMU ${this.opts.version} migrate-incoming from ${path}`);
  }

  /** quit, and QEMU's stderr (its warnings). */
  async quit(): Promise<string> {
    try {
      await this.qmp("quit");
    } catch { /* QEMU may close stdout before answering */ }
    await this.#writer.close().catch(() => {});
    const status = await this.#child.status;
    const err = await this.#stderr;
    if (!status.success && status.signal === null && status.code !== 0) {
      throw new Error(`QEMU ${this.opts.version} exited ${status.code}: ${err.trim()}`);
    }
    return err;
  }

  /** QEMU's process id (the launcher execs QEMU: the same process), for --device pid:PID. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Ends QEMU whatever its state (cleanup after a failure). */
  kill(): void {
    try {
      this.#child.kill("SIGKILL");
    } catch { /* already gone */ }
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += dec.decode(chunk, { stream: true });
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) yield line;
    }
  }
}
