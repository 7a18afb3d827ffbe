// The TCP transport's handshake: only a peer that proves it knows the token gets to
// send a byte of state; everyone else is refused with a clear reason.

import { assert, assertEquals } from "./assert.ts";
import { FRAME, parseListen, parseTcpUrl, TcpClient, TcpServerConn, TcpSink } from "../src/transport/tcp.ts";

function listen(token: string, extra: Partial<Parameters<typeof TcpServerConn.accept>[1]> = {}) {
  let resolvePort!: (p: number) => void;
  const port = new Promise<number>((r) => resolvePort = r);
  const refused: string[] = [];
  const server = TcpServerConn.accept("127.0.0.1:0", {
    token,
    handshakeTimeoutMs: 500,
    onListening: (a) => resolvePort(a.port),
    onRefused: (why) => refused.push(why),
    ...extra,
  });
  return { port, server, refused };
}

async function readAll(s: TcpServerConn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  for (;;) {
    const n = await s.read(buf);
    if (n === 0) break;
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

Deno.test("tcp: addresses parse, the listener defaults to loopback", () => {
  assertEquals(parseListen("7000"), { hostname: "127.0.0.1", port: 7000 });
  assertEquals(parseListen("0.0.0.0:7000"), { hostname: "0.0.0.0", port: 7000 });
  assertEquals(parseListen("[::1]:7000"), { hostname: "::1", port: 7000 });
  assertEquals(parseTcpUrl("tcp://dst:7000"), { hostname: "dst", port: 7000 });
  let threw = false;
  try {
    parseTcpUrl("http://x:1");
  } catch {
    threw = true;
  }
  assert(threw, "http:// must be refused");
});

Deno.test("tcp: the right token connects; bytes and the result frame flow", async () => {
  const { port, server } = listen("s3cret");
  const client = await TcpClient.connect(`tcp://127.0.0.1:${await port}`, { token: "s3cret" });
  const s = await server;
  const payload = new Uint8Array(200_000).map((_, i) => (i * 7919) & 0xff);
  const got = readAll(s);
  await client.write(payload);
  const finished = client.finish(5000);
  assertEquals(await got, payload);
  await s.sendFrame(FRAME.DONE, new TextEncoder().encode(JSON.stringify({ ok: true, message: "loaded" })));
  s.close();
  assertEquals((await finished).ok, true);
});

Deno.test("tcp: a wrong token is refused on both sides, and the listener keeps waiting", async () => {
  const { port, server, refused } = listen("right", { acceptTimeoutMs: 3000 });
  const p = await port;
  let err = "";
  try {
    await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "wrong" });
  } catch (e) {
    err = (e as Error).message;
  }
  assert(/refused the token/.test(err), `client message: ${err}`);
  // The rightful peer still gets in afterwards.
  const good = await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "right" });
  const s = await server;
  assertEquals(refused.length, 1);
  assert(/wrong token/.test(refused[0]), refused[0]);
  good.close();
  s.close();
});

Deno.test("tcp: garbage and a silent (slow-loris) peer are refused by the handshake timeout", async () => {
  const { port, server, refused } = listen("t", { acceptTimeoutMs: 4000 });
  const p = await port;
  const junk = await Deno.connect({ hostname: "127.0.0.1", port: p });
  await junk.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n".padEnd(74, "x")));
  const silent = await Deno.connect({ hostname: "127.0.0.1", port: p });
  const t0 = performance.now();
  const good = await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "t" });
  const s = await server;
  assert(refused.some((r) => /not a vfio-mig peer/.test(r)), `refusals: ${refused}`);
  assert(refused.some((r) => /no answer within 500 ms/.test(r)), `refusals: ${refused}`);
  assert(performance.now() - t0 < 3000, "the silent peer held the listener too long");
  for (const c of [junk, silent, good]) {
    try {
      c.close();
    } catch { /* closed by the server */ }
  }
  s.close();
});

Deno.test("tcp: once a peer is in, a second client cannot connect", async () => {
  const { port, server } = listen("t");
  const p = await port;
  const first = await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "t" });
  const s = await server;
  let err = "";
  try {
    await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "t" });
  } catch (e) {
    err = (e as Error).message;
  }
  assert(/cannot connect|refused/i.test(err), `second client: ${err}`);
  first.close();
  s.close();
});

Deno.test("tcp: a client facing a peer that does not know the token refuses it", async () => {
  // A fake server that answers status 0 but cannot produce the server MAC.
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  const fake = (async () => {
    const c = await l.accept();
    const hello = new Uint8Array(42);
    hello.set(new TextEncoder().encode("VFMGAUTH"));
    hello[8] = 1;
    await c.write(hello);
    const buf = new Uint8Array(74);
    let off = 0;
    while (off < 74) off += (await c.read(buf.subarray(off))) ?? 74;
    await c.write(new Uint8Array(33)); // status 0, MAC of zeros
    return c;
  })();
  let err = "";
  try {
    await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "t" });
  } catch (e) {
    err = (e as Error).message;
  }
  assert(/did not prove it knows the token/.test(err), err);
  (await fake).close();
  l.close();
});

Deno.test("tcp: a kept data chunk is sent from its own buffer, and flowControl waits until it was sent", async () => {
  const sent: { bytes: Uint8Array; sameBuffer: boolean }[] = [];
  const releases: (() => void)[] = [];
  const chunk = new Uint8Array(1 << 20).fill(7);
  const client = {
    label: "fake peer",
    async write(b: Uint8Array) {
      await new Promise<void>((r) => releases.push(r)); // the socket takes it when the test says so
      sent.push({ bytes: b.slice(), sameBuffer: b.buffer === chunk.buffer });
    },
    close() {},
  };
  const sink = new TcpSink(client as unknown as TcpClient);
  const turn = () => new Promise((r) => setTimeout(r, 0));
  sink.write(new Uint8Array([1, 2, 3])); // a tag: copied into a send buffer
  sink.write(chunk, true);
  let resolved = false;
  const fc = sink.flowControl()!.then(() => resolved = true);
  await turn();
  assertEquals(releases.length, 1); // the tag's send is in progress
  releases[0]();
  await turn();
  assertEquals(releases.length, 2); // now the chunk's
  assert(!resolved, "flowControl resolved while the kept chunk was still being sent");
  releases[1]();
  await fc;
  chunk.fill(9); // the caller reuses its buffer: what was sent must not change
  assertEquals(sent.map((s) => s.bytes.length), [3, 1 << 20]);
  assert(sent[1].sameBuffer, "the kept chunk was copied");
  assert(sent[1].bytes.every((b) => b === 7));
});
