// The client side of tests/kernel/guest/holder.ts, for the groups that need a process
// holding a device open (borrow, pci): it starts the holder, reads its JSON lines and
// asks it to act on its own fd.

import { assert, ROOT } from "./guest.ts";

/** tests/kernel/guest/holder.ts: opens SPEC and answers commands on stdin, a JSON line each. */
export const HOLDER = `${ROOT}tests/kernel/guest/holder.ts`;
const dec = new TextDecoder();
const enc = new TextEncoder();

/** A process holding a device open (a fresh open of SPEC, or fd:N); it answers holder.ts commands on its own fd. */
export class Holder {
  readonly child: Deno.ChildProcess;
  readonly #w: WritableStreamDefaultWriter<Uint8Array>;
  readonly #r: ReadableStreamDefaultReader<Uint8Array>;
  #buf = "";
  /** The holder's pid and its device fd, once ready() answered. */
  pid = 0;
  fd = -1;

  constructor(readonly spec: string) {
    this.child = new Deno.Command("deno", {
      args: ["run", "--allow-ffi", HOLDER, spec],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#w = this.child.stdin.getWriter();
    this.#r = this.child.stdout.getReader();
  }

  async #line(): Promise<Record<string, unknown>> {
    for (;;) {
      const nl = this.#buf.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buf.slice(0, nl);
        this.#buf = this.#buf.slice(nl + 1);
        return JSON.parse(line);
      }
      const { value, done } = await this.#r.read();
      if (done) throw new Error(`holder of ${this.spec} exited`);
      this.#buf += dec.decode(value, { stream: true });
    }
  }

  /** Waits for the holder's first line (the device is open); throws if it did not open it. */
  async ready(): Promise<this> {
    const r = await this.#line();
    assert(r.ready === true, `holder not ready: ${JSON.stringify(r)}`);
    this.pid = r.pid as number;
    this.fd = r.fd as number;
    return this;
  }

  /** One command; its JSON answer. Throws the holder's error. */
  async ask(cmd: string): Promise<Record<string, unknown>> {
    await this.#w.write(enc.encode(cmd + "\n"));
    const r = await this.#line();
    if (r.error) throw new Error(`holder: ${cmd}: ${r.error}`);
    return r;
  }

  /** Several commands in order; each answer's `hex` ("" when it has none). */
  async all(cmds: string[]): Promise<string[]> {
    const out: string[] = [];
    for (const c of cmds) out.push(((await this.ask(c)).hex as string | undefined) ?? "");
    return out;
  }

  /** Tells the holder to close the device and exit; waits for it. */
  async quit(): Promise<void> {
    try {
      await this.#w.write(enc.encode("quit\n"));
      await this.#w.close();
    } catch { /* already gone */ }
    this.#r.releaseLock();
    await this.child.stdout.cancel();
    await this.child.status;
  }
}
