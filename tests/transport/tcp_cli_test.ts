// Migration over TCP through the command line: `load --listen` and `save … tcp://`, as
// two processes on loopback with simulated devices. Live migration with the downtime
// measured to the destination's RUNNING, REINIT acknowledgements, the token (right,
// wrong, missing), TLS, one peer only, slow and garbage peers, a flood of maximal
// chunks against the destination's memory, streaming on the destination, and signals.

import { assert, assertEquals, assertMatch, assertStringIncludes, fail } from "../helpers/assert.ts";
import {
  assertUntouched,
  jsonOf,
  listen,
  logLines,
  MiB,
  ok,
  sha,
  show,
  simCreate,
  sleep,
  stateOf,
  stateSets,
  vfioMig,
  vmHwm,
  withTemp,
} from "../helpers/proc.ts";
import { StreamReader, StreamWriter } from "../../src/stream/mod.ts";
import { MAX_CHUNK, type StreamHeader, TAG } from "../../src/stream/format.ts";
import { bulkHeader, bulkRecordHeader } from "../../src/sim/models.ts";
import { TcpClient, TcpSink } from "../../src/transport/tcp.ts";
import type { StreamSource } from "../../src/transport/transport.ts";

const TOKEN = "correct-horse-battery";

Deno.test("tcp: live migration converges; downtime to the last byte and to the destination's RUNNING are reported", async () => {
  await withTemp(async (t) => {
    const [a, b] = [`${t}/a`, `${t}/b`];
    await simCreate(a, "--size", "64M", "--rate", "16M", "--seed", "21");
    await simCreate(b, "--size", "64M", "--seed", "22");
    const { proc: dst, port } = await listen(b, ["--token", TOKEN, "--json"]);
    const r = await ok([
      "save",
      "--live",
      "--json",
      "--device",
      `sim:${a}`,
      `tcp://127.0.0.1:${port}`,
      "--token",
      TOKEN,
    ]);
    const l = await dst.done(30_000);
    assertEquals(l.code, 0, show(l));
    const s = jsonOf(r.stdout);
    assertEquals(s.switchReason, "converged", show(r));
    assert((s.iterations as number) >= 1);
    const [down, toRun] = [s.downtimeMs as number, s.downtimeToRunningMs as number];
    assert(down > 0 && down < 300, `downtime ${down} ms under the 300 ms limit`);
    assert(typeof toRun === "number" && toRun >= down, `to RUNNING ${toRun} ms >= downtime ${down} ms`);
    assert(toRun < 5000, `the destination ran soon after: ${toRun} ms`);
    assertEquals([s.initDataSent, s.initAcks], [1, 1], "switchover-ack");
    const ld = jsonOf(l.stdout);
    assertEquals([ld.finalState, ld.initDataLoaded, ld.bytes], ["RUNNING", 1, s.bytes]);
    assertEquals(await sha(b), await sha(a));
    assertEquals([await stateOf(a), await stateOf(b)], ["STOP", "RUNNING"]);
    // The text summary of a live save over TCP.
    await simCreate(a, "--size", "8M", "--rate", "1M", "--seed", "23", "--force");
    await simCreate(b, "--size", "8M", "--seed", "24", "--force");
    const { proc: dst2, port: port2 } = await listen(b, ["--token", TOKEN]);
    const txt = await ok(["save", "--live", "--device", `sim:${a}`, `tcp://127.0.0.1:${port2}`, "--token", TOKEN]);
    assertEquals((await dst2.done(30_000)).code, 0);
    assertMatch(
      txt.stderr,
      /^pre-copy: \d+ iterations, .* converged under the 300 ms limit; stop-copy .*; downtime [\d.]+ ms \([\d.]+ ms until the destination ran\)$/m,
    );
  });
});

Deno.test("tcp: after a REINIT the destination acknowledges the second DEV_INIT_DATA_SENT before the switchover", async () => {
  await withTemp(async (t) => {
    const [a, b] = [`${t}/a`, `${t}/b`];
    const size = 32 * MiB;
    // REINIT right after the initial data: initial_bytes 0 (marker, ack), then REINIT (again).
    await simCreate(
      a,
      "--size",
      "32M",
      "--rate",
      "4M",
      "--seed",
      "24",
      "--precopy-v2",
      "--reinit-after",
      `${size + 48}`,
    );
    await simCreate(b, "--size", "32M", "--seed", "25");
    const { proc: dst, port } = await listen(b, ["--token", TOKEN, "--json"]);
    const r = await ok([
      "save",
      "--live",
      "--json",
      "--device",
      `sim:${a}`,
      `tcp://127.0.0.1:${port}`,
      "--token",
      TOKEN,
    ]);
    const l = await dst.done(30_000);
    assertEquals(l.code, 0, show(l));
    const s = jsonOf(r.stdout);
    assertEquals(
      [s.precopyInfoV2, s.reinits, s.initDataSent, s.initAcks, s.switchReason],
      [true, 1, 2, 2, "converged"],
      show(r),
    );
    assertEquals(jsonOf(l.stdout).initDataLoaded, 2);
    assert((s.precopyBytes as number) >= size + size / 2, "the re-queued half went during pre-copy");
    assertEquals(await sha(b), await sha(a));
  });
});

Deno.test("tcp: the token: wrong is refused (exit 1, destination untouched), missing is a usage error, right works", async () => {
  await withTemp(async (t) => {
    const [a, b, blog, alog] = [`${t}/a`, `${t}/b`, `${t}/b.log`, `${t}/a.log`];
    await simCreate(a, "--size", "4M", "--seed", "26");
    await simCreate(b, "--size", "4M", "--seed", "27");
    const [shaA, shaB] = [await sha(a), await sha(b)];
    const { proc: dst, port } = await listen(b, ["--token", TOKEN], { VFIO_MIG_SIM_LOG: blog });
    const url = `tcp://127.0.0.1:${port}`;

    const wrong = await vfioMig(["save", "--device", `sim:${a}`, url, "--token", "not-the-token"], {
      env: { VFIO_MIG_SIM_LOG: alog },
    }).done(20_000);
    assertEquals(wrong.code, 1, show(wrong));
    assertMatch(wrong.stderr.trim(), /^vfio-mig: tcp:\/\/127\.0\.0\.1:\d+ refused the token \(wrong --token\?\)$/);
    await dst.waitStderr(/refused 127\.0\.0\.1:\d+: wrong token/, 5000, "the listener's refusal");
    await assertUntouched(b, blog, shaB, "destination after a wrong token");
    await assertUntouched(a, alog, shaA, "source after a wrong token (it connects before touching the device)");

    const missing = await vfioMig(["save", "--device", `sim:${a}`, url]).done(20_000);
    assertEquals(missing.code, 2, show(missing));
    assertStringIncludes(missing.stderr, "tcp:// needs the listener's token: --token T or VFIO_MIG_TOKEN");
    const short = await vfioMig(["save", "--device", `sim:${a}`, url, "--token", "abc"]).done(20_000);
    assertEquals(short.code, 2, show(short));
    await assertUntouched(b, blog, shaB, "destination after a missing token");

    // The listener kept waiting: the right token (from the environment) gets in.
    await ok(["save", "--device", `sim:${a}`, url], { env: { VFIO_MIG_TOKEN: TOKEN } });
    const l = await dst.done(30_000);
    assertEquals(l.code, 0, show(l));
    assertEquals(await sha(b), shaA);

    // Without --token the listener makes one up and prints it; it works.
    await simCreate(a, "--size", "4M", "--seed", "28", "--force");
    const gen = await listen(b, []);
    assert(gen.token && gen.token.length === 32, `printed token: ${gen.proc.stderr}`);
    await ok(["save", "--device", `sim:${a}`, `tcp://127.0.0.1:${gen.port}`, "--token", gen.token!]);
    assertEquals((await gen.proc.done(30_000)).code, 0);
    assertEquals(await sha(b), await sha(a));
  });
});

async function openssl(args: string[]): Promise<void> {
  let r: Deno.CommandOutput;
  try {
    r = await new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) fail("openssl is needed for the TLS test (apt-get install openssl)");
    throw e;
  }
  if (!r.success) fail(`openssl ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
}

/** A self-signed certificate for localhost and 127.0.0.1 (the command in the README). */
async function selfSigned(dir: string, name: string, extra: string[]): Promise<{ cert: string; key: string }> {
  const [cert, key] = [`${dir}/${name}.pem`, `${dir}/${name}.key`];
  await openssl([
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=localhost",
    "-addext",
    "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ...extra,
    "-keyout",
    key,
    "-out",
    cert,
  ]);
  return { cert, key };
}

Deno.test("tcp: TLS with --tls-ca moves the state; an untrusted or CA certificate is refused clearly, nothing touched", async () => {
  await withTemp(async (t) => {
    const [a, b, blog] = [`${t}/a`, `${t}/b`, `${t}/b.log`];
    await simCreate(a, "--size", "8M", "--rate", "1M", "--seed", "29");
    await simCreate(b, "--size", "8M", "--seed", "30");
    const good = await selfSigned(t, "server", ["-addext", "basicConstraints=critical,CA:FALSE"]);
    // openssl's default for -x509 is a CA certificate, which TLS (rustls) refuses as a server's.
    const ca = await selfSigned(t, "ca-flagged", []);
    const tlsArgs = (c: { cert: string; key: string }) => ["--token", TOKEN, "--tls-cert", c.cert, "--tls-key", c.key];

    const { proc: dst, port } = await listen(b, [...tlsArgs(good), "--json"], { VFIO_MIG_SIM_LOG: blog });
    const url = `tcp://127.0.0.1:${port}`;
    const shaB = await sha(b);
    // Not trusted (system roots only): refused before any state moves.
    const untrusted = await vfioMig(["save", "--device", `sim:${a}`, url, "--token", TOKEN, "--tls"]).done(20_000);
    assertEquals(untrusted.code, 1, show(untrusted));
    assertMatch(untrusted.stderr, /^vfio-mig: handshake with tcp:.* failed: .*UnknownIssuer.*--tls-ca FILE/);
    // A plain client gets nowhere either.
    const plain = await vfioMig(["save", "--device", `sim:${a}`, url, "--token", TOKEN, "--handshake-timeout", "1000"])
      .done(20_000);
    assertEquals(plain.code, 1, show(plain));
    await assertUntouched(b, blog, shaB, "destination after refused TLS peers");
    // Trusted: a live migration over TLS.
    const r = await ok([
      "save",
      "--live",
      "--json",
      "--device",
      `sim:${a}`,
      url,
      "--token",
      TOKEN,
      "--tls-ca",
      good.cert,
    ]);
    const l = await dst.done(30_000);
    assertEquals(l.code, 0, show(l));
    assertEquals(jsonOf(r.stdout).switchReason, "converged");
    assertEquals(await sha(b), await sha(a));

    // A CA certificate as the server's: the client says what is wrong with it.
    await simCreate(a, "--size", "8M", "--seed", "31", "--force");
    const caDst = await listen(b, tlsArgs(ca));
    const bad = await vfioMig([
      "save",
      "--device",
      `sim:${a}`,
      `tcp://127.0.0.1:${caDst.port}`,
      "--token",
      TOKEN,
      "--tls-ca",
      ca.cert,
    ]).done(20_000);
    assertEquals(bad.code, 1, show(bad));
    assertMatch(bad.stderr, /CaUsedAsEndEntity.*basicConstraints=critical,CA:FALSE/);
    caDst.proc.kill("SIGTERM");
    assertEquals((await caDst.proc.done(10_000)).code, 130);
  });
});

Deno.test("tcp: while a peer migrates, a second client is refused and its device left alone", async () => {
  await withTemp(async (t) => {
    const [a, b, c, alog, blog, clog] = [`${t}/a`, `${t}/b`, `${t}/c`, `${t}/a.log`, `${t}/b.log`, `${t}/c.log`];
    // A source that never converges holds the connection until SIGUSR2.
    await simCreate(a, "--size", "16M", "--rate", "4G", "--seed", "32");
    await simCreate(b, "--size", "16M", "--seed", "33");
    await simCreate(c, "--size", "16M", "--seed", "34");
    const shaC = await sha(c);
    const { proc: dst, port } = await listen(b, ["--token", TOKEN], { VFIO_MIG_SIM_LOG: blog });
    const url = `tcp://127.0.0.1:${port}`;
    const first = vfioMig(
      ["save", "--live", "--json", "--downtime-limit", "1", "--max-precopy", "60000", "--device", `sim:${a}`, url],
      { env: { VFIO_MIG_TOKEN: TOKEN, VFIO_MIG_SIM_LOG: alog } },
    );
    const end = performance.now() + 15_000;
    while (
      !stateSets(await logLines(blog)).some((l) => l.to === "RESUMING") ||
      !(await logLines(alog)).some((l) => l.key === "read:data_fd")
    ) {
      assert(performance.now() < end, "the first migration did not start");
      await sleep(20);
    }
    const second = await vfioMig(["save", "--device", `sim:${c}`, url, "--token", TOKEN], {
      env: { VFIO_MIG_SIM_LOG: clog },
    }).done(20_000);
    assertEquals(second.code, 1, show(second));
    assertMatch(second.stderr.trim(), /^vfio-mig: cannot connect to tcp:\/\/127\.0\.0\.1:\d+: .*refused/i);
    await assertUntouched(c, clog, shaC, "the second client's device");
    first.kill("SIGUSR2");
    const r = await first.done(30_000);
    assertEquals(r.code, 0, show(r));
    assertEquals(jsonOf(r.stdout).switchReason, "requested");
    assertEquals((await dst.done(30_000)).code, 0);
    assertEquals(await sha(b), await sha(a));
  });
});

Deno.test("tcp: slow-loris and garbage peers are dropped by the handshake timeout; the rightful peer still gets in", async () => {
  await withTemp(async (t) => {
    const [a, b, blog] = [`${t}/a`, `${t}/b`, `${t}/b.log`];
    await simCreate(a, "--size", "4M", "--seed", "35");
    await simCreate(b, "--size", "4M", "--seed", "36");
    const shaB = await sha(b);
    const { proc: dst, port } = await listen(b, ["--token", TOKEN, "--handshake-timeout", "500"], {
      VFIO_MIG_SIM_LOG: blog,
    });
    // Slow-loris: the greeting a byte every 100 ms (garbage would be refused at its first wrong byte).
    const loris = await Deno.connect({ hostname: "127.0.0.1", port });
    let dripping = true;
    const drip = (async () => {
      const greeting = new Uint8Array(74);
      greeting.set(new TextEncoder().encode("VFMGAUTH\x01"));
      for (let i = 0; dripping; i = (i + 1) % greeting.length) {
        try {
          await loris.write(greeting.subarray(i, i + 1));
        } catch {
          return; // dropped by the server
        }
        await sleep(100);
      }
    })();
    const t0 = performance.now();
    await dst.waitStderr(/refused 127\.0\.0\.1:\d+: handshake with .* no answer within 500 ms/, 5000, "slow-loris");
    assert(performance.now() - t0 < 3000, "the slow peer was dropped within the handshake timeout");
    dripping = false;
    await drip;
    try {
      loris.close();
    } catch { /* closed */ }
    // Garbage: an HTTP request.
    const junk = await Deno.connect({ hostname: "127.0.0.1", port });
    await junk.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n".padEnd(80, "x")));
    await dst.waitStderr(/refused 127\.0\.0\.1:\d+: .*not a vfio-mig peer/, 5000, "garbage");
    junk.close();
    await assertUntouched(b, blog, shaB, "destination after slow and garbage peers");
    await ok(["save", "--device", `sim:${a}`, `tcp://127.0.0.1:${port}`, "--token", TOKEN]);
    assertEquals((await dst.done(30_000)).code, 0);
    assertEquals(await sha(b), await sha(a));
  });
});

class MemSource implements StreamSource {
  readonly label = "memory";
  #pos = 0;
  constructor(readonly data: Uint8Array) {}
  read(buf: Uint8Array): number {
    const n = Math.min(buf.length, this.data.length - this.#pos);
    buf.set(this.data.subarray(this.#pos, this.#pos + n));
    this.#pos += n;
    return n;
  }
  close(): void {}
}

Deno.test("tcp: a flood of maximal (64 MiB) chunks, 1 GiB in all: the destination's memory stays bounded", async () => {
  await withTemp(async (t) => {
    // Records of exactly 4 MiB (16-byte record header + state): 16 of them fill a chunk.
    const size = 4 * MiB - 16;
    const [b, c] = [`${t}/b`, `${t}/c`];
    await simCreate(b, "--size", `${size}`, "--seed", "37");
    await simCreate(c, "--size", `${size}`, "--seed", "38");
    // A real header for this kind of device (from a save of its twin).
    await ok(["save", "--device", `sim:${c}`, `${t}/c.vfmig`]);
    const header: StreamHeader = await new StreamReader(new MemSource(await Deno.readFile(`${t}/c.vfmig`)))
      .readHeader();
    const { proc: dst, port } = await listen(b, ["--token", TOKEN, "--json"]);
    let peak = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const v = vmHwm(dst.pid);
        if (v !== null) peak = Math.max(peak, v);
        await sleep(25);
      }
    })();
    const sink = new TcpSink(await TcpClient.connect(`tcp://127.0.0.1:${port}`, { token: TOKEN }));
    const w = new StreamWriter(sink, MAX_CHUNK);
    const total = 16 * MAX_CHUNK; // 1 GiB
    try {
      w.header({ ...header, source: "flood", mode: "offline" });
      w.tag(TAG.DEV_SETUP_STATE);
      w.tag(TAG.END_OF_STATE);
      w.payload.set(bulkHeader(size));
      w.data(bulkHeader(size).length);
      const p = w.payload;
      for (let off = 0; off < MAX_CHUNK; off += 4 * MiB) {
        p.set(bulkRecordHeader(0, size), off);
        p.fill(off / (4 * MiB), off + 16, off + 4 * MiB);
      }
      for (let sent = 0; sent < total; sent += MAX_CHUNK) {
        w.data(MAX_CHUNK);
        await w.flowControl();
      }
      w.tag(TAG.SWITCHOVER);
      w.tag(TAG.END_OF_STATE);
      w.end();
      await w.flowControl();
      await sink.commit();
    } finally {
      sink.abort();
      sampling = false;
      await sampler;
    }
    const l = await dst.done(60_000);
    assertEquals(l.code, 0, show(l));
    assertEquals(jsonOf(l.stdout).bytes, total + 32);
    assert(peak > 10 * MiB, `VmHWM was sampled: ${peak}`);
    assert(peak < 200 * MiB, `the destination's peak RSS ${(peak / MiB).toFixed(0)} MiB stays under 200 MiB`);
    // The last record wrote the state: 4 MiB - 16 bytes of 15.
    const st = await Deno.readFile(`${b}/state.bin`);
    assertEquals([st.length, st[0], st[st.length - 1]], [size, 15, 15]);

    // A chunk header claiming more than 64 MiB is refused before anything is buffered.
    const { proc: dst2, port: port2 } = await listen(b, ["--token", TOKEN]);
    const sink2 = new TcpSink(await TcpClient.connect(`tcp://127.0.0.1:${port2}`, { token: TOKEN }));
    const w2 = new StreamWriter(sink2);
    w2.header({ ...header, source: "liar", mode: "offline" });
    w2.tag(TAG.DEV_SETUP_STATE);
    w2.tag(TAG.END_OF_STATE);
    const lie = new Uint8Array(20);
    new DataView(lie.buffer).setBigUint64(0, TAG.DEV_DATA_STATE);
    new DataView(lie.buffer).setBigUint64(8, 1n << 40n);
    sink2.write(lie);
    let err = "";
    try {
      await sink2.commit();
    } catch (e) {
      err = (e as Error).message;
    } finally {
      sink2.abort();
    }
    assertMatch(err, /exceeds the 67108864-byte limit/);
    const l2 = await dst2.done(30_000);
    assertEquals(l2.code, 4, show(l2));
    assertMatch(l2.stderr, /exceeds the 67108864-byte limit.*was reset and is RUNNING/);
  });
});

Deno.test("tcp: the destination writes to the device as data arrives, long before the source has read its last byte", async () => {
  await withTemp(async (t) => {
    const [a, b, log] = [`${t}/a`, `${t}/b`, `${t}/both.log`];
    const size = 256 * MiB;
    await simCreate(a, "--size", "256M", "--seed", "39");
    await simCreate(b, "--size", "256M", "--seed", "40");
    // Both ends append to one call log: its order is the order in time.
    const { proc: dst, port } = await listen(b, ["--token", TOKEN], { VFIO_MIG_SIM_LOG: log });
    const src = vfioMig(["save", "--device", `sim:${a}`, `tcp://127.0.0.1:${port}`, "--token", TOKEN], {
      env: { VFIO_MIG_SIM_LOG: log },
    });
    const r = await src.done(60_000);
    assertEquals(r.code, 0, show(r));
    assertEquals((await dst.done(30_000)).code, 0);
    const lines = await logLines(log);
    const srcReads = lines.filter((l) => l.pid === src.pid && l.key === "read:data_fd");
    assert(srcReads.length > 100, `the source read in chunks: ${srcReads.length}`);
    const lastRead = lines.lastIndexOf(srcReads[srcReads.length - 1]);
    const resuming = lines.findIndex((l) => l.pid === dst.pid && l.to === "RESUMING");
    assert(resuming >= 0 && resuming < lines.indexOf(srcReads[0]) + 50, "RESUMING as the stream starts");
    let early = 0;
    for (const l of lines.slice(0, lastRead)) {
      if (l.pid === dst.pid && l.key === "write:data_fd") early += (l.ret as number) ?? 0;
    }
    assert(
      early >= size / 2,
      `the destination had written ${(early / MiB).toFixed(0)} MiB of 256 before the source's last read`,
    );
    assertEquals(await sha(b), await sha(a));
  });
});

Deno.test("tcp: SIGTERM ends a listener that waits for a peer (exit 130), and one whose peer went silent", async () => {
  await withTemp(async (t) => {
    const [b, blog] = [`${t}/b`, `${t}/b.log`];
    await simCreate(b, "--size", "4M", "--seed", "41");
    const shaB = await sha(b);
    const { proc } = await listen(b, ["--token", TOKEN], { VFIO_MIG_SIM_LOG: blog });
    proc.kill("SIGTERM");
    const r = await proc.done(10_000);
    assertEquals(r.code, 130, show(r));
    assertMatch(r.stderr, /interrupted by SIGTERM/);
    await assertUntouched(b, blog, shaB, "after SIGTERM while listening");

    // An authenticated peer that sends nothing: SIGTERM does not wait for the idle timeout.
    const { proc: p2, port } = await listen(b, ["--token", TOKEN], { VFIO_MIG_SIM_LOG: blog });
    const client = await TcpClient.connect(`tcp://127.0.0.1:${port}`, { token: TOKEN });
    await sleep(300);
    const t0 = performance.now();
    p2.kill("SIGTERM");
    const r2 = await p2.done(10_000);
    client.close();
    assertEquals(r2.code, 130, show(r2));
    assert(performance.now() - t0 < 5000, "ended promptly");
    assertMatch(r2.stderr, /interrupted by SIGTERM; sim:.* was not touched/);
    await assertUntouched(b, blog, shaB, "after SIGTERM with a silent peer");
  });
});
