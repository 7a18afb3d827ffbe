// Limits a hostile or broken peer cannot get past: a length field never makes the
// reader (or inspect) allocate what the stream claims, only what actually arrived;
// a listener gives up on a silent peer (idle timeout) before and after RESUMING; a
// save gives up on a listener that never answers the handshake. The header and chunk
// size limits themselves are in stream_test.ts, the one-peer listener and server-side
// handshake timeouts in tcp_test.ts and tcp_cli_test.ts.

import { crc32 } from "node:zlib";
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { libc } from "../../ffi/libc.ts";
import { openDevice } from "../../src/device/open.ts";
import { StreamError } from "../../src/errors.ts";
import { inspectStream } from "../../src/inspect/inspect.ts";
import { save } from "../../src/migrate/save.ts";
import { DeviceState } from "../../src/vfio/state_machine.ts";
import { SimKernel } from "../../src/sim/kernel.ts";
import { SimStore } from "../../src/sim/store.ts";
import { encodeHeader, MAX_CHUNK, type StreamHeader, TAG } from "../../src/stream/format.ts";
import { StreamReader } from "../../src/stream/reader.ts";
import { TcpClient } from "../../src/transport/tcp.ts";
import { openSink } from "../../src/transport/transport.ts";
import { concat, MemorySource } from "../helpers/bytes.ts";
import { bareRecord, sizedRecord } from "../helpers/stream.ts";

const host = libc();
const CLI = new URL("../../cli.ts", import.meta.url).pathname;
const ROOT = new URL("../..", import.meta.url).pathname;
const MiB = 1 << 20;
const TOKEN = "limits-test-token";

const HEADER: StreamHeader = {
  format: "vfio-mig",
  version: 1,
  tool: "vfio-mig test",
  protocol: "v2",
  created: new Date(0).toISOString(),
  source: "sim:/nowhere",
  device: {
    kind: "sim",
    driver: "x",
    mdevType: null,
    vendor: 1,
    device: 2,
    subsystemVendor: 3,
    subsystemDevice: 4,
  },
  migrationFlags: 7,
  sizeEstimate: null,
  mode: "offline",
};

/** Hands out at most 4 KiB a read, as a slow pipe does. */
const slowSource = (data: Uint8Array) => new MemorySource(data, 4096);

/** A stream whose data record claims `claim` bytes and carries `carry` of them. */
function lyingStream(claim: number, carry: number): Uint8Array {
  return concat([
    encodeHeader(HEADER),
    bareRecord(TAG.DEV_SETUP_STATE),
    bareRecord(TAG.END_OF_STATE),
    sizedRecord(TAG.DEV_DATA_STATE, new Uint8Array(carry).fill(0x5a), { claim, crc: 0 }),
  ]);
}

Deno.test("a length field claiming the 64 MiB maximum allocates nothing by itself, in the reader and in inspect", async () => {
  for (const carry of [0, 100, 3 * MiB, 5 * MiB]) {
    const bytes = lyingStream(MAX_CHUNK, carry);
    const before = Deno.memoryUsage().external;
    const r = new StreamReader(slowSource(bytes));
    await r.readHeader();
    let err: unknown = null;
    try {
      for (;;) if ((await r.next()).kind === "end") break;
    } catch (e) {
      err = e;
    }
    const grew = Deno.memoryUsage().external - before;
    assert(err instanceof StreamError && /truncated/.test(err.message), `carry ${carry}: ${err}`);
    // The 4 MiB read buffer only, until a buffer's worth of the record has arrived; then
    // the record's size, which the 64 MiB limit bounds.
    const limit = carry > 4 * MiB ? MAX_CHUNK + 5 * MiB : 5 * MiB;
    assert(grew < limit, `carry ${carry}: the reader's buffers grew by ${(grew / MiB).toFixed(1)} MiB`);

    const before2 = Deno.memoryUsage().external;
    const rep = inspectStream(slowSource(bytes));
    const grew2 = Deno.memoryUsage().external - before2;
    assert(!rep.ok && /truncated/.test(rep.firstProblem!.message), `inspect: ${rep.firstProblem?.message}`);
    assert(grew2 < 3 * MiB, `inspect grew by ${(grew2 / MiB).toFixed(1)} MiB`);
  }
});

Deno.test("a record of exactly the maximum size still loads through the growing buffer", async () => {
  const payload = new Uint8Array(MAX_CHUNK).map((_, i) => (i * 31) & 0xff);
  const r = new StreamReader(slowSource(concat([encodeHeader(HEADER), sizedRecord(TAG.DEV_DATA_STATE, payload)])));
  await r.readHeader();
  const rec = await r.next();
  assert(rec.kind === "data" && rec.bytes.length === MAX_CHUNK, "the whole record");
  assertEquals(crc32(rec.kind === "data" ? rec.bytes : new Uint8Array()) >>> 0, crc32(payload) >>> 0);
  await assertRejects(() => r.next(), StreamError, "truncated");
});

// ---------------------------------------------------------------------------
// Network timeouts, through the command line

interface Proc {
  child: Deno.ChildProcess;
  stderr(): string;
  done: Promise<{ code: number; stderr: string }>;
}

function spawn(args: string[], env: Record<string, string> = {}): Proc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-ffi", "--allow-net", CLI, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", VFIO_MIG_SIM_FAULTS: "", VFIO_MIG_SIM_LOG: "", VFIO_MIG_PAUSE_AT: "", ...env },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let err = "";
  const dec = new TextDecoder();
  const reading = (async () => {
    for await (const c of child.stderr) err += dec.decode(c, { stream: true });
  })();
  return {
    child,
    stderr: () => err,
    done: (async () => {
      const st = await child.status;
      await reading;
      return { code: st.code, stderr: err };
    })(),
  };
}

async function listening(p: Proc): Promise<string> {
  const end = Date.now() + 20_000;
  for (;;) {
    const m = p.stderr().match(/listening on ([0-9.]+:\d+)/);
    if (m) return m[1];
    if (Date.now() > end) throw new Error(`no "listening on" line:\n${p.stderr()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function lastLine(stderr: string): string {
  const lines = stderr.split("\n").filter((l) => l.trim() && !/listening on /.test(l));
  assertEquals(lines.length, 1, `one line on stderr:\n${stderr}`);
  assert(!/^\s+at /m.test(stderr), `no stack trace:\n${stderr}`);
  return lines[0];
}

function logOf(path: string): Record<string, unknown>[] {
  try {
    return Deno.readTextFileSync(path).split("\n").filter((l) => l).map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

const isSet = (l: Record<string, unknown>) => l.key === "ioctl:DEVICE_FEATURE:MIG_DEVICE_STATE:SET" && "from" in l;

Deno.test("the listener's idle timeout: a peer silent before or after RESUMING is dropped, the device left or reset", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-limits-" });
  try {
    const [a, b] = [`${t}/a`, `${t}/b`];
    new SimStore(host, a).create({ model: "bulk", size: MiB, seed: 1 });
    new SimStore(host, b).create({ model: "bulk", size: MiB, seed: 2 });
    const k = new SimKernel(host);
    const d = openDevice(k, `sim:${a}`);
    try {
      await save(d, openSink(k, `${t}/a.vfmig`), { resume: true });
    } finally {
      d.close();
    }
    const stream = Deno.readFileSync(`${t}/a.vfmig`);
    const header = new StreamReader(slowSource(stream));
    await header.readHeader();
    const setupEnd = header.offset + 16; // DEV_SETUP_STATE, END_OF_STATE: the load enters RESUMING
    const crcB = crc32(Deno.readFileSync(`${b}/state.bin`));

    for (const [what, send] of [["silent from the start", 0], ["silent after RESUMING", setupEnd]] as const) {
      const log = `${t}/${send}.log`;
      const load = spawn(
        ["load", "-q", "--device", `sim:${b}`, "--listen", "127.0.0.1:0", "--token", TOKEN, "--idle-timeout", "300"],
        { VFIO_MIG_SIM_LOG: log },
      );
      const addr = await listening(load);
      const client = await TcpClient.connect(`tcp://${addr}`, { token: TOKEN });
      const t0 = performance.now();
      if (send > 0) await client.write(stream.subarray(0, send));
      const r = await load.done;
      const waited = performance.now() - t0;
      client.close();
      assertEquals(r.code, 1, `${what}: exit code\n${r.stderr}`);
      assertMatch(lastLine(r.stderr), /idle.*no answer within 300 ms/, what);
      assert(waited < 5000, `${what}: dropped after ${waited.toFixed(0)} ms`);
      assertEquals(new SimStore(host, b).readMeta().state, DeviceState.RUNNING, `${what}: destination RUNNING`);
      assertEquals(crc32(Deno.readFileSync(`${b}/state.bin`)), crcB, `${what}: destination state kept`);
      const lines = logOf(log);
      const touched = lines.some(isSet);
      assertEquals(touched, send > 0, `${what}: RESUMING reached only once the setup section came`);
      assertEquals(lines.some((l) => l.key === "ioctl:DEVICE_RESET"), touched, `${what}: reset iff touched`);
    }
  } finally {
    await Deno.remove(t, { recursive: true });
  }
});

Deno.test("save's handshake timeout: a listener that never answers is given up on, the device never opened", async () => {
  const t = await Deno.makeTempDir({ prefix: "vfio-mig-limits-" });
  const mute = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of mute) held.push(c); // accepts, then says nothing
  })();
  try {
    const a = `${t}/a`;
    new SimStore(host, a).create({ model: "bulk", size: MiB, seed: 1 });
    const log = `${t}/a.log`;
    const port = (mute.addr as Deno.NetAddr).port;
    const t0 = performance.now();
    const r = await spawn(
      ["save", "-q", "--device", `sim:${a}`, `tcp://127.0.0.1:${port}`, "--token", TOKEN, "--handshake-timeout", "300"],
      { VFIO_MIG_SIM_LOG: log },
    ).done;
    assertEquals(r.code, 1, r.stderr);
    assertMatch(lastLine(r.stderr), /handshake with tcp:\/\/127\.0\.0\.1:\d+: no answer within 300 ms/);
    assert(performance.now() - t0 < 5000, "given up promptly");
    assertEquals(logOf(log).filter((l) => l.key === "open:device"), [], "the device was never opened");
    assertEquals(new SimStore(host, a).readMeta().state, DeviceState.RUNNING);
  } finally {
    mute.close();
    await accepting.catch(() => {});
    for (const c of held) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await Deno.remove(t, { recursive: true });
  }
});
