// The TCP transport's handshake: only a peer that proves it knows the token gets to
// send a byte of state; everyone else is refused with a clear reason.

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import {
  FRAME,
  parseListen,
  parseMaxStartups,
  parseTcpUrl,
  TcpClient,
  TcpServerConn,
  TcpSink,
  type TurnedAway,
  turnedAwayLine,
} from "../../src/transport/tcp.ts";

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
  assertEquals(parseMaxStartups("10:30:100"), { start: 10, rate: 30, full: 100 });
  assertEquals(parseMaxStartups("64"), { start: 64, rate: 100, full: 64 });
  for (const bad of ["0", "10:30", "100:30:10", "1:101:2", "a"]) {
    let t = false;
    try {
      parseMaxStartups(bad);
    } catch {
      t = true;
    }
    assert(t, `--max-startups ${bad} must be refused`);
  }
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

Deno.test("tcp: garbage is refused at its first byte, a silent peer at its handshake timeout", async () => {
  const refused: string[] = [];
  let refusal = () => {};
  const { port, server } = listen("t", {
    acceptTimeoutMs: 4000,
    onRefused: (why) => {
      refused.push(why);
      refusal();
    },
  });
  const p = await port;
  const nextRefusal = () => new Promise<void>((r) => refusal = r);
  const silent = await Deno.connect({ hostname: "127.0.0.1", port: p });
  const t0 = performance.now();
  let seen = nextRefusal();
  const junk = await Deno.connect({ hostname: "127.0.0.1", port: p });
  await junk.write(new TextEncoder().encode("G")); // one byte that cannot start the greeting
  await seen;
  assert(/not a vfio-mig peer/.test(refused[0]), `refusals: ${refused}`);
  assert(performance.now() - t0 < 400, "garbage is refused before the handshake timeout");
  seen = nextRefusal();
  await seen;
  assert(/no answer within 500 ms/.test(refused[1]), `refusals: ${refused}`);
  const good = await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "t" });
  const s = await server;
  for (const c of [junk, silent, good]) closeQuietly(c);
  s.close();
});

Deno.test("tcp: handshakes run side by side: silent peers do not delay the right one, and are closed when it is in", async () => {
  const { port, server, refused } = listen("t", { handshakeTimeoutMs: 5000, acceptTimeoutMs: 8000 });
  const p = await port;
  const silent = await Promise.all(Array.from({ length: 20 }, () => Deno.connect({ hostname: "127.0.0.1", port: p })));
  const t0 = performance.now();
  const good = await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "t" });
  const s = await server;
  assert(performance.now() - t0 < 2500, `the right peer waited ${performance.now() - t0} ms`);
  assertEquals(refused, [], "nobody was refused: the silent ones were still waiting");
  // Every other connection is closed once the peer is in: each reads the greeting, then the end.
  for (const c of silent) {
    const buf = new Uint8Array(64);
    let n = 0;
    for (;;) {
      const r = await c.read(buf).catch(() => null);
      if (r === null) break;
      n += r;
    }
    assertEquals(n, 42, "a silent peer got the server's greeting and then the connection closed");
    closeQuietly(c);
  }
  good.close();
  s.close();
});

Deno.test("tcp: over MaxStartups the longest-waiting idle connection is dropped, not one mid-handshake; drops are counted", async () => {
  const turned: TurnedAway[] = [];
  const { port, server, refused } = listen("t", {
    handshakeTimeoutMs: 5000,
    acceptTimeoutMs: 8000,
    maxStartups: { start: 4, rate: 100, full: 4 },
    onTurnedAway: (t) => turned.push(t),
  });
  const p = await port;
  const conn = () => Deno.connect({ hostname: "127.0.0.1", port: p });
  const closedAt = (c: Deno.Conn) =>
    (async () => {
      const buf = new Uint8Array(64);
      while ((await c.read(buf).catch(() => null)) !== null) { /* the greeting */ }
      return performance.now();
    })();
  // One peer mid-handshake: it sent the greeting's start (magic and version), not the rest.
  const mid = await conn();
  await mid.write(new Uint8Array([...new TextEncoder().encode("VFMGAUTH"), 1, 0]));
  await new Promise((r) => setTimeout(r, 100));
  const idle: Deno.Conn[] = [];
  for (let i = 0; i < 3; i++) idle.push(await conn());
  await new Promise((r) => setTimeout(r, 100));
  const idleClosed = idle.map(closedAt);
  const midClosed = closedAt(mid);
  // Three more: each drops the oldest idle one.
  const late: Deno.Conn[] = [];
  for (let i = 0; i < 3; i++) late.push(await conn());
  const dropped = await Promise.all(idleClosed);
  let midOpen = true;
  midClosed.then(() => midOpen = false);
  await new Promise((r) => setTimeout(r, 100));
  assert(midOpen, "the connection mid-handshake was dropped for a newcomer");
  assert(dropped[0] <= dropped[1] && dropped[1] <= dropped[2], "the longest-waiting first");
  const good = await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "t" });
  const s = await server;
  assertEquals(refused, []);
  assertEquals(turned.length, 1, "one report, at the end");
  assertEquals(turned[0].dropped, 4, "the three idle ones, then the oldest late one for the real peer");
  assertMatch(turnedAwayLine(turned[0]), /^dropped 4 connections over the limit .*\(--max-startups 4:100:4\) so far$/);
  await midClosed;
  for (const c of [mid, ...idle, ...late, good]) closeQuietly(c);
  s.close();
});

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* closed by the server */ }
}

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

Deno.test("tcp: a peer that proved the token and then closed is the peer: the listener neither waits for another nor succeeds", async () => {
  // A raw client: the right proof, then gone before reading the reply (docs/reliability.md).
  const { port, server, refused } = listen("t", { acceptTimeoutMs: 5000 });
  const c = await Deno.connect({ hostname: "127.0.0.1", port: await port });
  const sh = new Uint8Array(42);
  for (let off = 0; off < 42;) off += (await c.read(sh.subarray(off))) ?? 42;
  const nonceC = crypto.getRandomValues(new Uint8Array(32));
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode("t"),
    { name: "HMAC", hash: "SHA-256" },
    false,
    [
      "sign",
    ],
  );
  const label = new TextEncoder().encode("vfio-mig client");
  const input = new Uint8Array([...label, ...sh.subarray(10), ...nonceC]);
  const proof = new Uint8Array(await crypto.subtle.sign("HMAC", key, input));
  await c.write(new Uint8Array([...sh.subarray(0, 10), ...nonceC, ...proof]));
  c.close();
  const t0 = performance.now();
  let outcome: string;
  try {
    const s = await server;
    // In: its stream is empty (or reset), never a success with bytes from anyone else.
    const buf = new Uint8Array(64);
    let n: number | string;
    try {
      n = await s.read(buf);
    } catch (e) {
      n = (e as Error).message;
    }
    s.close();
    outcome = `in, read ${n}`;
    assert(n === 0 || typeof n === "string", outcome);
  } catch (e) {
    outcome = (e as Error).message;
    assertMatch(outcome, /proved the token, then went away/);
  }
  assert(performance.now() - t0 < 4000, `settled at once (${outcome}), not at the accept timeout`);
  assertEquals(refused, [], "the peer that proved the token is not refused as a stranger");
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

Deno.test("tcp: the source says when the destination accepted but never greeted, or closed before its greeting", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  const held: Deno.Conn[] = [];
  const connectError = async () => {
    try {
      await TcpClient.connect(`tcp://127.0.0.1:${p}`, { token: "t", handshakeTimeoutMs: 300 });
    } catch (e) {
      return (e as Error).message;
    }
    return "connected";
  };
  // Accepts and says nothing.
  const mute = l.accept().then((c) => held.push(c));
  assertMatch(
    await connectError(),
    /^handshake with tcp:\/\/127\.0\.0\.1:\d+: no answer within 300 ms: the destination accepted the connection but never sent its greeting/,
  );
  await mute;
  // Accepts and closes at once (as a listener over its limit drops a connection).
  const drop = l.accept().then((c) => c.close());
  assertMatch(await connectError(), /accepted the connection and closed it before its greeting.*--max-startups/);
  await drop;
  for (const c of held) closeQuietly(c);
  l.close();
});

Deno.test("tcp: --accept-timeout ends the wait with silent connections open; the counts are reported once at the end", async () => {
  const turned: TurnedAway[] = [];
  const refused: string[] = [];
  const { port, server } = listen("t", {
    handshakeTimeoutMs: 100,
    acceptTimeoutMs: 600,
    onRefused: (why) => refused.push(why),
    onTurnedAway: (t) => turned.push(t),
  });
  const p = await port;
  // Ten silent ones: 8 refusals reported one by one, the other 2 counted.
  const silent = await Promise.all(Array.from({ length: 10 }, () => Deno.connect({ hostname: "127.0.0.1", port: p })));
  let err = "";
  try {
    await server;
  } catch (e) {
    err = (e as Error).message;
  }
  assertEquals(err, "no authenticated peer connected within 600 ms");
  assertEquals(refused.length, 8);
  assertEquals(turned.length, 1);
  assertEquals(turned[0].timedOut, 2);
  assertMatch(turnedAwayLine(turned[0]), /^refused 2 more \(2 timed out\) so far$/);
  for (const c of silent) closeQuietly(c);
  // The listener is closed.
  let refusedConnect = false;
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port: p })).close();
  } catch {
    refusedConnect = true;
  }
  assert(refusedConnect, "the listener still accepts after giving up");
});
