// Signed streams (docs/stream-format.md, "Signed streams"; README, Security): `save
// --sign-key` chains an HMAC-SHA256 over the header, every record and the trailer;
// `load --verify-key` refuses an unsigned stream, another key, and any changed, dropped,
// duplicated, reordered, truncated or foreign record — a file before the device is
// touched, a pipe at the first bad record with nothing of it written to the device's
// data_fd. Keys come from files of at least 32 bytes that only their owner may read.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../helpers/assert.ts";
import { inspectStream, type RecordInfo } from "../../src/inspect/inspect.ts";
import { openSource } from "../../src/transport/transport.ts";
import { libc } from "../../ffi/libc.ts";
import { crc32, HEADER_FIXED } from "../../src/stream/format.ts";
import { MAC_SIZE } from "../../src/stream/mac.ts";
import {
  assertUntouched,
  CLI,
  cli,
  DENO,
  jsonOf,
  listen,
  logLines,
  MiB,
  ok,
  Proc,
  type Run,
  sha,
  show,
  simCreate,
  stateOf,
  stateSets,
  withTemp,
} from "../helpers/proc.ts";

/** vfio-mig reading `bytes` from a pipe. */
function withStdinPipe(bytes: Uint8Array, args: string[], env: Record<string, string> = {}): Proc {
  const p = new Proc(DENO, ["run", "--allow-ffi", "--allow-net", CLI, ...args], { env, stdin: true });
  const w = p.child.stdin.getWriter();
  w.write(bytes).then(() => w.close()).catch(() => {/* the reader went away */});
  return p;
}

function oneLine(r: Run, code: number, what: string): string {
  assertEquals(r.code, code, `${what}: exit ${code}\n${show(r)}`);
  const lines = r.stderr.trim().split("\n");
  assertEquals(lines.length, 1, `${what}: one line on stderr\n${show(r)}`);
  return lines[0];
}

async function writeKey(path: string, bytes = crypto.getRandomValues(new Uint8Array(32)), mode = 0o600) {
  await Deno.writeFile(path, bytes, { mode });
  await Deno.chmod(path, mode);
}

/** Bytes written to the simulated device's data_fd, per its log. */
async function dataFdBytes(log: string): Promise<number> {
  return (await logLines(log)).filter((l) => l.key === "write:data_fd").reduce((a, l) => a + Number(l.ret), 0);
}

interface Layout {
  bytes: Uint8Array;
  /** Where the header's MAC ends: the first record starts here. */
  headerEnd: number;
  records: RecordInfo[];
  /** Record i spans [start(i), end(i)), its MAC included. */
  start(i: number): number;
  end(i: number): number;
}

function layout(bytes: Uint8Array, path: string): Layout {
  const rep = inspectStream(openSource(libc(), path));
  assert(rep.ok, `the stream is intact: ${JSON.stringify(rep.firstProblem)}`);
  const records = rep.records;
  return {
    bytes,
    headerEnd: records[0].offset,
    records,
    start: (i) => records[i].offset,
    end: (i) => (i + 1 < records.length ? records[i + 1].offset : bytes.length),
  };
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** The stream with a byte of record i's payload changed and the record's CRC made to match (as an attacker would). */
function tamperChunk(l: Layout, i: number): Uint8Array {
  const b = l.bytes.slice();
  const r = l.records[i];
  const payload = r.offset + 20;
  b[payload + 1000] ^= 0x40;
  new DataView(b.buffer).setUint32(r.offset + 16, crc32(b.subarray(payload, payload + r.size!)));
  return b;
}

/** The header's JSON with one character changed (its CRC made to match). */
function tamperHeader(l: Layout): Uint8Array {
  const b = l.bytes.slice();
  const v = new DataView(b.buffer);
  const n = v.getUint32(12);
  const json = new TextDecoder().decode(b.subarray(HEADER_FIXED, HEADER_FIXED + n));
  const at = json.indexOf('"mode":"offline"');
  assert(at > 0, "the header has its mode");
  // offline -> offlinf: the same length, a different header.
  b[HEADER_FIXED + at + '"mode":"offlin'.length] = "f".charCodeAt(0);
  v.setUint32(HEADER_FIXED + n, crc32(b.subarray(0, HEADER_FIXED + n)));
  return b;
}

const MSG_RECORD = (n: number, what: string) => new RegExp(`record ${n} \\(${what}\\) does not carry the MAC`);

Deno.test("signed streams: round trip through a file and a pipe; the key id is sha256sum's; unsigned streams stay version 1", async () => {
  await withTemp(async (t) => {
    const [a, b, key] = [`${t}/a`, `${t}/b`, `${t}/key`];
    await simCreate(a, "--model", "bulk", "--size", String(3 * MiB + 5), "--seed", "7");
    await simCreate(b, "--model", "bulk", "--size", String(3 * MiB + 5), "--seed", "8");
    const keyBytes = crypto.getRandomValues(new Uint8Array(32));
    await writeKey(key, keyBytes);
    const keyId = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", keyBytes)).subarray(0, 8))
      .map((x) => x.toString(16).padStart(2, "0")).join("");
    const src = await sha(a);
    await ok(["save", "--resume", "--sign-key", key, "--device", `sim:${a}`, `${t}/s.vfmig`]);
    await ok(["save", "--resume", "--device", `sim:${a}`, `${t}/u.vfmig`]);
    const s = await Deno.readFile(`${t}/s.vfmig`);
    const u = await Deno.readFile(`${t}/u.vfmig`);
    assertEquals(new DataView(s.buffer).getUint16(8), 2, "a signed stream is format version 2");
    assertEquals(new DataView(u.buffer).getUint16(8), 1, "an unsigned stream is version 1");
    const ls = layout(s, `${t}/s.vfmig`);
    const lu = layout(u, `${t}/u.vfmig`);
    // The same records, each followed by its MAC; so is the header.
    assertEquals(ls.records.map((r) => r.tag), lu.records.map((r) => r.tag));
    assertEquals(s.length - u.length, MAC_SIZE * (ls.records.length + 1) + (ls.headerEnd - MAC_SIZE - lu.headerEnd));
    assert(!new TextDecoder().decode(u.subarray(0, lu.headerEnd)).includes('"mac"'), "no mac field unsigned");
    // No key byte anywhere in the stream.
    const hex = (x: Uint8Array) => Array.from(x).map((v) => v.toString(16).padStart(2, "0")).join("");
    assert(!hex(s).includes(hex(keyBytes)), "the key is not in the stream");

    const sj = await ok(["save", "--json", "--resume", "--sign-key", key, "--device", `sim:${a}`, `${t}/s3.vfmig`]);
    const signedAs = (x: unknown) => {
      const m = x as { algorithm: string; keyId: string; nonce: string };
      assertMatch(m.nonce, /^[0-9a-f]{32}$/, "a random nonce per stream");
      assertEquals({ ...m, nonce: "" }, { algorithm: "hmac-sha256", keyId, nonce: "" });
      return m.nonce;
    };
    const n3 = signedAs(jsonOf(sj.stdout).signed);
    assert(!("signed" in jsonOf((await ok(["save", "--json", "--resume", "--device", `sim:${a}`, `${t}/u3`])).stdout)));
    const v = await ok(["verify", "--verify-key", key, `${t}/s.vfmig`]);
    assertMatch(v.stdout, new RegExp(`signed \\(hmac-sha256, key id ${keyId}\\), every MAC verified`));
    const vj = jsonOf((await ok(["verify", "--json", "--verify-key", key, `${t}/s.vfmig`])).stdout);
    const n1 = signedAs(vj.signed);
    assert(n1 !== n3, "each signed stream has its own nonce");
    assertEquals(vj.authenticated, true);
    assertEquals(jsonOf((await ok(["verify", "--json", `${t}/s.vfmig`])).stdout).authenticated, false);
    assertEquals(jsonOf((await ok(["verify", "--json", `${t}/u.vfmig`])).stdout).signed, null);
    const ins = await ok(["inspect", `${t}/s.vfmig`]);
    assertStringIncludes(ins.stdout, `signed    hmac-sha256, key id ${keyId}`);
    assertStringIncludes((await ok(["inspect", `${t}/u.vfmig`])).stdout, "signed    no");
    const ij = jsonOf((await ok(["inspect", "--json", `${t}/s.vfmig`])).stdout) as { header: { signed: unknown } };
    assertEquals(signedAs(ij.header.signed), n1);

    // A file, then a pipe, each verified while it loads.
    await ok(["load", "--verify-key", key, "--device", `sim:${b}`, `${t}/s.vfmig`]);
    assertEquals(await sha(b), src, "file: the destination holds the source's state");
    await ok(["sim", "create", "--force", b, "--model", "bulk", "--size", String(3 * MiB + 5), "--seed", "8"]);
    const p = withStdinPipe(s, ["load", "--verify-key", key, "--device", `sim:${b}`, "-"]);
    const r = await p.done();
    assertEquals(r.code, 0, show(r));
    assertEquals(await sha(b), src, "pipe: the destination holds the source's state");
    // Without --verify-key a signed stream loads as any stream (its MACs unchecked).
    await ok(["sim", "create", "--force", b, "--model", "bulk", "--size", String(3 * MiB + 5), "--seed", "8"]);
    await ok(["load", "--device", `sim:${b}`, `${t}/s.vfmig`]);
    assertEquals(await sha(b), src);
    // Nothing of the key in what load and verify print, even with --json.
    const j = await ok([
      "load",
      "--json",
      "--events",
      `${t}/load.jsonl`,
      "--verify-key",
      key,
      "--device",
      `sim:${b}`,
      `${t}/s.vfmig`,
    ]);
    const ev = await ok([
      "save",
      "--events",
      `${t}/save.jsonl`,
      "--resume",
      "--sign-key",
      key,
      "--device",
      `sim:${a}`,
      `${t}/e`,
    ]);
    const b64 = btoa(String.fromCharCode(...keyBytes));
    for (
      const text of [
        j.stdout,
        j.stderr,
        ev.stdout,
        ev.stderr,
        await Deno.readTextFile(`${t}/load.jsonl`),
        await Deno.readTextFile(`${t}/save.jsonl`),
      ]
    ) {
      assert(!text.includes(hex(keyBytes)) && !text.includes(b64), "no key in outputs, reports or events");
    }
    assertStringIncludes(ev.stderr, `(key id ${keyId})`, "save names the key id");
  });
});

Deno.test("signed streams: a multi-device stream and a protocol v1 device (mapped chunks) round-trip signed", async () => {
  await withTemp(async (t) => {
    const [a1, a2, b1, b2, key] = [`${t}/a1`, `${t}/a2`, `${t}/b1`, `${t}/b2`, `${t}/key`];
    await writeKey(key);
    for (const [d, seed] of [[a1, "1"], [a2, "2"], [b1, "3"], [b2, "4"]]) {
      await simCreate(d, "--model", "bulk", "--size", String(MiB + 3), "--seed", seed);
    }
    await ok(["save", "--sign-key", key, "--device", `sim:${a1}`, "--device", `sim:${a2}`, `${t}/m.vfmig`]);
    await ok(["load", "--verify-key", key, "--device", `sim:${b1}`, "--device", `sim:${b2}`, `${t}/m.vfmig`]);
    assertEquals(await sha(b1), await sha(a1));
    assertEquals(await sha(b2), await sha(a2));
    // A v1 device's data leaves in several parts (StreamWriter.dataParts): covered by the MAC too.
    const [v, w] = [`${t}/v1a`, `${t}/v1b`];
    await simCreate(v, "--model", "bulk", "--protocol", "v1", "--size", String(MiB + 77), "--seed", "5");
    await simCreate(w, "--model", "bulk", "--protocol", "v1", "--size", String(MiB + 77), "--seed", "6");
    await ok(["save", "--sign-key", key, "--device", `sim:${v}`, `${t}/v1.vfmig`]);
    await ok(["load", "--verify-key", key, "--device", `sim:${w}`, `${t}/v1.vfmig`]);
    assertEquals(await sha(w), await sha(v));
  });
});

Deno.test("signed streams: every forgery is refused with exit 4 naming the record and byte — a file before the device is touched, a pipe at the first bad record", async () => {
  await withTemp(async (t) => {
    const short = await Deno.makeTempDir({ dir: "/tmp", prefix: "vs" });
    const [a, b, key, other] = [`${short}/a`, `${t}/b`, `${t}/key`, `${t}/other`];
    try {
      // 4 MiB + a bit: five data chunks of 1 MiB at most.
      await simCreate(a, "--model", "bulk", "--size", String(4 * MiB + 11), "--seed", "41");
      await simCreate(b, "--model", "bulk", "--size", String(4 * MiB + 11), "--seed", "42");
      await writeKey(key);
      await writeKey(other);
      await ok(["save", "--resume", "--sign-key", key, "--device", `sim:${a}`, `${t}/s1.vfmig`]);
      // A second stream of the same state with the same key: the same record bytes, another chain.
      await ok(["save", "--resume", "--sign-key", key, "--device", `sim:${a}`, `${t}/s2.vfmig`]);
      await ok(["save", "--resume", "--device", `sim:${a}`, `${t}/u.vfmig`]);
    } finally {
      await Deno.remove(short, { recursive: true });
    }
    const s1 = layout(await Deno.readFile(`${t}/s1.vfmig`), `${t}/s1.vfmig`);
    const s2 = layout(await Deno.readFile(`${t}/s2.vfmig`), `${t}/s2.vfmig`);
    const u = await Deno.readFile(`${t}/u.vfmig`);
    const data = s1.records.map((r, i) => ({ r, i })).filter(({ r }) => r.tag === "DEV_DATA_STATE");
    assert(data.length >= 4, `several data chunks: ${data.length}`);
    const [c1, c2] = [data[1].i, data[2].i];
    const trailer = s1.records.length - 1;
    const B = s1.bytes;
    const rec = (l: Layout, i: number) => l.bytes.subarray(l.start(i), l.end(i));
    // Same bytes, different stream: only the chain tells them apart.
    assertEquals(
      rec(s2, c1).subarray(0, s1.records[c1].size! + 20),
      rec(s1, c1).subarray(0, s1.records[c1].size! + 20),
    );
    /** Payload bytes of the data records before record i: what may reach the device before it. */
    const before = (i: number) => data.filter((d) => d.i < i).reduce((n, d) => n + d.r.size!, 0);

    interface Case {
      what: string;
      bytes: Uint8Array;
      /** The message, and the record (null: the header: a pipe is refused before the device is touched too). */
      expect: RegExp;
      record: number | null;
      key?: string;
    }
    const trailerTampered = B.slice();
    trailerTampered[s1.start(trailer) + 27] ^= 0x01; // the trailer's data CRC (its own CRC follows: not fixed)
    const cases: Case[] = [
      {
        what: "a byte of the header changed",
        bytes: tamperHeader(s1),
        expect: /the stream header does not carry the MAC/,
        record: null,
      },
      {
        what: "a byte of a chunk changed (CRC fixed)",
        bytes: tamperChunk(s1, c1),
        expect: MSG_RECORD(c1, "DEV_DATA_STATE"),
        record: c1,
      },
      {
        what: "a byte of the trailer changed",
        bytes: trailerTampered,
        expect: MSG_RECORD(trailer, "STREAM_END"),
        record: trailer,
      },
      {
        what: "a chunk dropped",
        bytes: concat(B.subarray(0, s1.start(c1)), B.subarray(s1.end(c1))),
        expect: MSG_RECORD(c1, "DEV_DATA_STATE"),
        record: c1,
      },
      {
        what: "two chunks swapped",
        bytes: concat(B.subarray(0, s1.start(c1)), rec(s1, c2), rec(s1, c1), B.subarray(s1.end(c2))),
        expect: MSG_RECORD(c1, "DEV_DATA_STATE"),
        record: c1,
      },
      {
        what: "a chunk duplicated",
        bytes: concat(B.subarray(0, s1.end(c1)), rec(s1, c1), B.subarray(s1.end(c1))),
        expect: MSG_RECORD(c1 + 1, "DEV_DATA_STATE"),
        record: c1 + 1,
      },
      {
        what: "a chunk spliced from another stream signed with the same key",
        bytes: concat(B.subarray(0, s1.start(c1)), rec(s2, c1), B.subarray(s1.end(c1))),
        expect: MSG_RECORD(c1, "DEV_DATA_STATE"),
        record: c1,
      },
      {
        what: "truncated after a chunk's MAC",
        bytes: B.subarray(0, s1.end(c2)),
        expect: /truncated stream/,
        record: c2 + 1,
      },
      {
        what: "truncated inside a chunk's MAC",
        bytes: B.subarray(0, s1.end(c2) - 5),
        expect: /truncated stream: it ends inside the MAC of record/,
        record: c2,
      },
      {
        what: "another key",
        bytes: B,
        expect: /signed with another key \(key id [0-9a-f]{16}; --verify-key .* has key id/,
        record: null,
        key: other,
      },
      { what: "an unsigned stream", bytes: u, expect: /the stream is not signed/, record: null },
    ];
    const before0 = await sha(b);
    for (const c of cases) {
      const path = `${t}/bad.vfmig`;
      await Deno.writeFile(path, c.bytes);
      const k = c.key ?? key;
      const tag = c.what.replaceAll(" ", "_");

      // verify: the same problem, exit 4.
      const v = await cli(["verify", "--json", "--verify-key", k, path]);
      assertEquals(v.code, 4, `${c.what}: verify exits 4\n${show(v)}`);
      const vp = jsonOf(v.stdout).problem as { record: number | null; message: string; offset: number | null };
      assertMatch(vp.message, c.expect, c.what);
      assertEquals(vp.record, c.record, `${c.what}: verify names record ${c.record}`);

      // A file: refused before the device is touched.
      const log = `${t}/${tag}.log`;
      const r = await cli(["load", "--verify-key", k, "--device", `sim:${b}`, path], {
        env: { VFIO_MIG_SIM_LOG: log },
      });
      const line = oneLine(r, 4, `${c.what} (file)`);
      assertMatch(line, c.expect, c.what);
      assertMatch(
        line,
        new RegExp(`\\(at byte ${vp.offset}\\); sim:${b.replaceAll("/", "\\/")} was not touched$`),
        c.what,
      );
      await assertUntouched(b, log, before0, `${c.what} (file)`);

      // A pipe: refused at the first bad record, before any of its bytes reach the device.
      const plog = `${t}/${tag}-pipe.log`;
      const p = withStdinPipe(c.bytes, ["load", "--verify-key", k, "--device", `sim:${b}`, "-"], {
        VFIO_MIG_SIM_LOG: plog,
      });
      const pr = await p.done();
      const pline = oneLine(pr, 4, `${c.what} (pipe)`);
      assertMatch(pline, c.expect, `${c.what} (pipe)`);
      assertStringIncludes(pline, `(at byte ${vp.offset})`, `${c.what} (pipe): the same byte`);
      if (c.record === null) {
        // The header: nothing touched, a pipe included.
        await assertUntouched(b, plog, before0, `${c.what} (pipe)`);
        continue;
      }
      assertEquals(
        await dataFdBytes(plog),
        before(c.record),
        `${c.what} (pipe): only the records before it were written`,
      );
      const lines = await logLines(plog);
      assert(stateSets(lines).some((l) => l.to === "RESUMING"), `${c.what} (pipe): the load had started`);
      assert(lines.some((l) => l.key === "ioctl:DEVICE_RESET"), `${c.what} (pipe): the device was reset`);
      assertEquals(await stateOf(b), "RUNNING", `${c.what} (pipe): the documented state after a failed load`);
      await ok(["sim", "create", "--force", b, "--model", "bulk", "--size", String(4 * MiB + 11), "--seed", "42"]);
    }

    // --json: the failure object names the record and marks the authentication failure.
    await Deno.writeFile(`${t}/bad.vfmig`, tamperChunk(s1, c1));
    const j = await cli(["load", "--json", "--verify-key", key, "--device", `sim:${b}`, `${t}/bad.vfmig`]);
    assertEquals(j.code, 4, show(j));
    const f = jsonOf(j.stdout) as { stream: Record<string, unknown>; exitCode: number; kind: string };
    assertEquals(f.exitCode, 4);
    assertEquals(f.kind, "stream");
    assertEquals(f.stream, { offset: s1.start(c1), record: c1, authentication: true });
    // Plain damage carries no such mark.
    const damaged = B.slice();
    damaged[s1.start(c1) + 20 + 7] ^= 1; // payload changed, CRC not fixed: the MAC still finds it first
    await Deno.writeFile(`${t}/bad.vfmig`, damaged);
    const d = await cli(["load", "--json", "--device", `sim:${b}`, `${t}/bad.vfmig`]);
    assertEquals(d.code, 4, show(d));
    assertEquals((jsonOf(d.stdout) as { stream: unknown }).stream, { offset: s1.start(c1), record: c1 });
  });
});

Deno.test("signed streams: key files: at least 32 bytes, owner-only, no symlink, never on the command line; QEMU outputs refuse --sign-key", async () => {
  await withTemp(async (t) => {
    const a = `${t}/a`;
    await simCreate(a, "--model", "bulk", "--size", "4096", "--seed", "1");
    const good = `${t}/good`;
    await writeKey(good);
    await ok(["save", "--resume", "--sign-key", good, "--device", `sim:${a}`, `${t}/s.vfmig`]);
    await writeKey(`${t}/short`, crypto.getRandomValues(new Uint8Array(31)));
    await writeKey(`${t}/open`, crypto.getRandomValues(new Uint8Array(32)), 0o644);
    await writeKey(`${t}/group`, crypto.getRandomValues(new Uint8Array(32)), 0o640);
    await Deno.symlink(good, `${t}/link`);
    const cases: [string, RegExp][] = [
      [`${t}/short`, /holds 31 bytes; a key is at least 32 bytes/],
      [`${t}/open`, /permissions 0644 are too open/],
      [`${t}/group`, /permissions 0640 are too open/],
      [`${t}/link`, /is a symbolic link/],
      [`${t}/missing`, /cannot open the key file/],
      [t, /is not a regular file/],
    ];
    const before = await sha(a);
    for (const [k, why] of cases) {
      for (
        const args of [
          ["save", "--sign-key", k, "--device", `sim:${a}`, `${t}/out.vfmig`],
          ["load", "--verify-key", k, "--device", `sim:${a}`, `${t}/s.vfmig`],
          ["verify", "--verify-key", k, `${t}/s.vfmig`],
        ]
      ) {
        const r = await cli(args, { env: { VFIO_MIG_SIM_LOG: `${t}/key.log` } });
        const line = oneLine(r, 2, `${args[0]} ${k}`);
        assertMatch(line, why, `${args[0]} ${k}`);
        assertStringIncludes(line, k, "the line names the file");
      }
      await assertUntouched(a, `${t}/key.log`, before, k);
      await Deno.stat(`${t}/out.vfmig`).then(() => assert(false, "no output written"), () => {});
    }
    // QEMU-format outputs cannot carry a MAC.
    const q = await cli([
      "qemu-splice",
      `${t}/q`,
      "--device-stream",
      `${t}/s.vfmig`,
      "-o",
      `${t}/o`,
      "--sign-key",
      good,
    ]);
    assertMatch(oneLine(q, 2, "qemu-splice --sign-key"), /QEMU migration stream cannot carry a MAC/);
    // The key is a file: an option value that is not one is refused, never taken as the key.
    const r = await cli(["save", "--sign-key", "0123456789abcdef0123456789abcdef", "--device", `sim:${a}`, `${t}/x`]);
    assertMatch(oneLine(r, 2, "a key on the command line"), /cannot open the key file/);
  });
});

Deno.test("signed streams over TCP: a live save signed for a --listen --verify-key load; another key is refused before the device is touched", async () => {
  await withTemp(async (t) => {
    const [a, b, key, other] = [`${t}/a`, `${t}/b`, `${t}/key`, `${t}/other`];
    await simCreate(a, "--model", "bulk", "--size", String(2 * MiB + 9), "--seed", "3");
    await simCreate(b, "--model", "bulk", "--size", String(2 * MiB + 9), "--seed", "4");
    await writeKey(key);
    await writeKey(other);
    const TOKEN = "signed-test-token";
    const before = await sha(b);
    // Signed with another key: the listener refuses the header; the device is untouched.
    const log = `${t}/refused.log`;
    const { proc: d1, port: p1 } = await listen(b, ["--token", TOKEN, "--verify-key", key], { VFIO_MIG_SIM_LOG: log });
    const s1 = await cli([
      "save",
      "--resume",
      "--sign-key",
      other,
      "--device",
      `sim:${a}`,
      `tcp://127.0.0.1:${p1}`,
      "--token",
      TOKEN,
    ]);
    // The destination's refusal of the stream is the source's exit 4 too (its DONE frame names the kind).
    assertEquals(s1.code, 4, show(s1));
    assertMatch(s1.stderr, /refused: the stream is signed with another key/);
    const r1 = await d1.done(30_000);
    assertEquals(r1.code, 4, show(r1));
    assertMatch(r1.stderr, /signed with another key/);
    await assertUntouched(b, log, before, "another key over TCP");
    // The same key: a live, signed save loads.
    const { proc: d2, port: p2 } = await listen(b, ["--token", TOKEN, "--verify-key", key]);
    await ok([
      "save",
      "--live",
      "--resume",
      "--sign-key",
      key,
      "--device",
      `sim:${a}`,
      `tcp://127.0.0.1:${p2}`,
      "--token",
      TOKEN,
    ]);
    const r2 = await d2.done(30_000);
    assertEquals(r2.code, 0, show(r2));
    assertEquals(await sha(b), await sha(a));
  });
});

Deno.test("signed streams: save, verify, inspect and the failure object of a signed stream conform to their schemas", async () => {
  const { Ajv2020 } = await import("ajv/dist/2020.js");
  const formats = (await import("ajv-formats")).default;
  const A = new Ajv2020({ strict: true, strictRequired: false, allErrors: true, allowUnionTypes: true });
  formats.default(A);
  A.addKeyword("x-version");
  const dir = new URL("../../docs/schemas/", import.meta.url);
  const names = ["save", "load", "info", "list", "check", "inspect", "verify", "failure", "events"];
  for (const n of names) A.addSchema(JSON.parse(await Deno.readTextFile(new URL(`${n}.schema.json`, dir))));
  const conforms = (kind: string, value: unknown) => {
    const v = A.getSchema(`urn:vfio-mig:schema:${kind}`)!;
    assert(v(value), `${kind}: ${JSON.stringify(v.errors?.slice(0, 3))}`);
  };
  await withTemp(async (t) => {
    const [a, b, key, other] = [`${t}/a`, `${t}/b`, `${t}/key`, `${t}/other`];
    await simCreate(a, "--model", "mtty-1");
    await simCreate(b, "--model", "mtty-1");
    await writeKey(key);
    await writeKey(other);
    conforms(
      "save",
      jsonOf((await ok(["save", "--json", "--resume", "--sign-key", key, "--device", `sim:${a}`, `${t}/s`])).stdout),
    );
    conforms("verify", jsonOf((await ok(["verify", "--json", "--verify-key", key, `${t}/s`])).stdout));
    const bad = await cli(["verify", "--json", "--verify-key", other, `${t}/s`]);
    assertEquals(bad.code, 4, show(bad));
    const vj = jsonOf(bad.stdout) as { problem: { authentication?: boolean } };
    assertEquals(vj.problem.authentication, true);
    conforms("verify", vj);
    conforms("inspect", jsonOf((await ok(["inspect", "--json", `${t}/s`])).stdout));
    const f = await cli(["load", "--json", "--verify-key", other, "--device", `sim:${b}`, `${t}/s`]);
    assertEquals(f.code, 4, show(f));
    const fj = jsonOf(f.stdout) as { stream: { authentication?: boolean } };
    assertEquals(fj.stream.authentication, true);
    conforms("failure", fj);
  });
});
