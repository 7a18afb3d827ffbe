// The JSON-lines writer of --events (src/events/jsonl.ts): a file or an inherited fd,
// each event on disk as it is emitted (none lost when the process is killed), targets
// checked up front (usage errors), and a failing target costing one warning, never the
// migration.

import { assert, assertEquals, assertMatch, assertThrows } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { O } from "../../ffi/sys.ts";
import { type DeviceRef, Events } from "../../src/events/events.ts";
import { JsonLinesWriter, parseEventsTarget } from "../../src/events/jsonl.ts";
import { migrationEvents } from "../../src/events/cli.ts";
import { validateEventLines } from "../../src/events/schema.ts";
import { VfioMigError } from "../../src/errors.ts";
import type { BarOutput } from "../../src/events/progress_bar.ts";

const A: DeviceRef = { index: 0, label: "sim:/tmp/a" };
const sys = libc();

async function withDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vfio-mig-events-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function lines(text: string): Record<string, unknown>[] {
  return text.split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

Deno.test("jsonl: each event is in the file as soon as it is emitted, one JSON object per line", () =>
  withDir((dir) => {
    const path = `${dir}/ev.jsonl`;
    Deno.writeTextFileSync(path, "old content that must go\n".repeat(10));
    const ev = new Events().on(JsonLinesWriter.open(sys, path));
    ev.start({ command: "save", mode: "offline", target: `${dir}/state.bin` });
    assertEquals(lines(Deno.readTextFileSync(path)).map((e) => e.type), ["start"], "truncated, then the start");
    ev.devices([A]);
    ev.stateChange(A, "v2", "RUNNING", "STOP_COPY", 0.2);
    const now = lines(Deno.readTextFileSync(path));
    assertEquals(now.map((e) => e.type), ["start", "devices", "state"], "written before close()");
    ev.result({ command: "save", bytes: 0 });
    ev.close();
    const text = Deno.readTextFileSync(path);
    assert(text.endsWith("}\n"), "every line ends with a newline");
    assertEquals(validateEventLines(text), null);
    assertEquals((Deno.statSync(path).mode ?? 0) & 0o777 & ~0o022, 0o644 & ~0o022, "mode 0644 less the umask");
  }));

Deno.test("jsonl: fd:N writes to an inherited descriptor and leaves it open", () => {
  const [r, w] = sys.pipe(O.CLOEXEC);
  try {
    const writer = JsonLinesWriter.open(sys, `fd:${w}`);
    const ev = new Events().on(writer);
    ev.start({ command: "load" });
    ev.note("hello");
    ev.close();
    sys.write(w, new TextEncoder().encode("still open\n")); // close() left it open
    const buf = new Uint8Array(4096);
    const n = sys.read(r, buf);
    const text = new TextDecoder().decode(buf.subarray(0, n));
    const [a, b, c] = text.split("\n");
    assertEquals([JSON.parse(a).type, JSON.parse(b).message, c], ["start", "hello", "still open"]);
  } finally {
    sys.close(r);
    sys.close(w);
  }
});

Deno.test("jsonl: targets are checked before anything happens: usage errors (exit 2)", () =>
  withDir((dir) => {
    const usage = (spec: string, re: RegExp, reserved?: number[]) => {
      const e = assertThrows(() => JsonLinesWriter.open(sys, spec, { reservedFds: reserved }), VfioMigError);
      assertEquals(e.exitCode, 2, spec);
      assertMatch(e.message, re);
    };
    usage("", /--events takes a FILE or fd:N/);
    usage("fd:", /fd:N takes a descriptor number/);
    usage("fd:three", /fd:N takes a descriptor number/);
    usage("fd:-1", /fd:N takes a descriptor number/);
    usage("fd:987654", /descriptor 987654 is not open \(EBADF\)/);
    usage("fd:1", /that descriptor carries the stream/, [1]);
    usage(
      `${dir}/no/such/folder/ev.jsonl`,
      /--events: cannot create .*ev\.jsonl: its folder .* does not exist \(create it first\)/,
    );
    const fd = sys.open(`${dir}/ro`, O.RDONLY | O.CREAT | O.CLOEXEC, 0o644);
    try {
      usage(`fd:${fd}`, new RegExp(`descriptor ${fd} is open for reading only`));
    } finally {
      sys.close(fd);
    }
    assertEquals(parseEventsTarget("fd:3"), { kind: "fd", fd: 3 });
    assertEquals(parseEventsTarget("./fd:3"), { kind: "file", path: "./fd:3" });
  }));

Deno.test("jsonl: a write that fails (disk full) is one warning; the events stop, nothing throws", () => {
  const warnings: string[] = [];
  const w = JsonLinesWriter.open(sys, "/dev/full", { warn: (l) => warnings.push(l) });
  const ev = new Events().on(w);
  ev.start({ command: "save" });
  for (let i = 0; i < 50; i++) ev.note(`event ${i}`);
  ev.result({});
  ev.close();
  assertEquals(w.healthy, false);
  assertEquals(warnings.length, 1, warnings.join("\n"));
  assertMatch(
    warnings[0],
    /^vfio-mig: warning: --events \/dev\/full: write failed: ENOSPC \(No space left on device\); no more events are written \(the migration goes on\)$/,
  );
});

Deno.test("jsonl: a pipe whose reader went away (EPIPE) is one warning too", () => {
  const [r, w] = sys.pipe(O.CLOEXEC);
  sys.close(r);
  const warnings: string[] = [];
  try {
    const ev = new Events().on(JsonLinesWriter.open(sys, `fd:${w}`, { warn: (l) => warnings.push(l) }));
    ev.start({ command: "save" });
    ev.note("nobody reads this");
    ev.close();
  } finally {
    sys.close(w);
  }
  assertEquals(warnings.length, 1);
  assertMatch(warnings[0], /--events fd:\d+: write failed: EPIPE/);
});

Deno.test("jsonl: a process killed (SIGKILL) mid-run leaves every event it emitted, each line whole", () =>
  withDir(async (dir) => {
    const path = `${dir}/ev.jsonl`;
    const script = `${dir}/emit.ts`;
    const url = (p: string) => new URL(p, import.meta.url).href;
    Deno.writeTextFileSync(
      script,
      `import { libc } from "${url("../../ffi/libc.ts")}";
import { Events } from "${url("../../src/events/events.ts")}";
import { JsonLinesWriter } from "${url("../../src/events/jsonl.ts")}";
const ev = new Events().on(JsonLinesWriter.open(libc(), ${JSON.stringify(path)}));
ev.start({ command: "save", mode: "live" });
ev.devices([{ index: 0, label: "a" }]);
for (let n = 1; n <= 500; n++) {
  ev.iterationStart(n);
  ev.iterationEnd({ n, ms: 1, bytes: n, totalBytes: n * (n + 1) / 2, estimate: 1, threshold: null, bandwidth: null,
    devices: [{ device: { index: 0, label: "a" }, bytes: n, initialBytes: 0, dirtyBytes: 1 }] });
}
Deno.kill(Deno.pid, "SIGKILL");
`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", "--allow-read", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(out.signal, "SIGKILL", new TextDecoder().decode(out.stderr));
    const text = Deno.readTextFileSync(path);
    assertEquals(validateEventLines(text), null, "every line a whole event");
    const evs = lines(text);
    assertEquals(evs.length, 2 + 1000, "nothing lost at the kill");
    assertEquals(evs.at(-1)!.n, 500);
  }));

Deno.test("jsonl: migrationEvents builds the writer and the bar; a write warning clears the bar's line first", () => {
  const out: string[] = [];
  const bar: BarOutput = { write: (s) => out.push(s), columns: () => 100 };
  // Without FD_CLOEXEC, as a descriptor handed down through exec is (migrationEvents refuses the others).
  const [r, w] = sys.pipe(0);
  let readerOpen = true;
  try {
    const { events, bar: b } = migrationEvents(sys, {
      events: `fd:${w}`,
      progress: true,
      barOutput: bar,
      warn: (l) => out.push(`WARN ${l}`),
      now: (() => {
        let t = 0;
        return () => t += 60;
      })(),
    });
    assert(b !== null, "a bar");
    events.start({ command: "save" });
    events.setTotal(100);
    events.progress("stop-copy", 10);
    assert(out.length > 0 && out.at(-1)!.includes("10 B / ~100 B"), `the bar is drawn: ${JSON.stringify(out)}`);
    sys.close(r); // the reader goes away: the next write fails
    readerOpen = false;
    events.progress("stop-copy", 20);
    events.progress("stop-copy", 30);
    const warns = out.filter((s) => s.startsWith("WARN"));
    assertEquals(warns.length, 1);
    const at = out.indexOf(warns[0]);
    assertEquals(out[at - 1], "\r\x1b[K", `the line was cleared just before the warning: ${JSON.stringify(out)}`);
    events.close();
  } finally {
    if (readerOpen) sys.close(r);
    sys.close(w);
  }
  // Without --events and with progress off: nobody listens.
  const quiet = migrationEvents(sys, { progress: false, barOutput: bar });
  assertEquals([quiet.events.active, quiet.bar], [false, null]);
});
