// TCP transport: `save … tcp://HOST:PORT` connects, `load --listen [HOST:]PORT`
// accepts exactly one authenticated peer. Secure by default: the listener binds
// 127.0.0.1 unless told otherwise, and no byte of state is accepted before a
// challenge-response over a shared token proved the peer knows it (both ways).
// Optional TLS uses Deno's built-in TLS.
//
// Handshake (all sizes fixed, so a garbage peer cannot make us buffer):
//   server -> client  "VFMGAUTH" u8 1 u8 0 nonce_s[32]
//   client -> server  "VFMGAUTH" u8 1 u8 0 nonce_c[32] HMAC(token, "vfio-mig client"|nonce_s|nonce_c)
//   server -> client  u8 status (0 ok, 1 refused) HMAC(token, "vfio-mig server"|nonce_c|nonce_s)
// Then the stream flows client -> server; the server sends small frames back
// (u8 type, be32 length, payload): INIT_ACK when the initial pre-copy data is loaded
// (switchover-ack), and DONE with a JSON result when the load finished.

import { VfioMigError } from "../errors.ts";

const MAGIC = new TextEncoder().encode("VFMGAUTH");
const VERSION = 1;
const NONCE = 32;
const MAC = 32;
const SERVER_HELLO = MAGIC.length + 2 + NONCE;
const CLIENT_HELLO = MAGIC.length + 2 + NONCE + MAC;
const SERVER_REPLY = 1 + MAC;

export const FRAME = { INIT_ACK: 1, DONE: 2 } as const;
const MAX_FRAME = 64 * 1024;

export const DEFAULT_PORT = 7707;
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;

export interface TcpEndpoint {
  hostname: string;
  port: number;
}

/** Parses "tcp://HOST:PORT" (IPv6 as [::1]). */
export function parseTcpUrl(url: string): TcpEndpoint {
  const m = /^tcp:\/\/(\[[^\]]+\]|[^:/]+):(\d+)\/?$/.exec(url);
  if (!m) throw new VfioMigError(`${url}: expected tcp://HOST:PORT`, "usage");
  return { hostname: m[1].replace(/^\[|\]$/g, ""), port: checkPort(m[2], url) };
}

/** Parses "--listen [HOST:]PORT"; the host defaults to loopback. */
export function parseListen(spec: string): TcpEndpoint {
  const m = /^(?:(\[[^\]]+\]|[^:]+):)?(\d+)$/.exec(spec);
  if (!m) throw new VfioMigError(`--listen ${spec}: expected [HOST:]PORT`, "usage");
  return { hostname: (m[1] ?? "127.0.0.1").replace(/^\[|\]$/g, ""), port: checkPort(m[2], spec) };
}

/** Deno's network permission is separate from --allow-ffi: say so plainly. */
function netError(e: unknown, what: string): VfioMigError {
  if (e instanceof Error && (e.name === "NotCapable" || e.name === "PermissionDenied")) {
    return new VfioMigError(
      "network transfers need deno's --allow-net permission (deno run --allow-ffi --allow-net cli.ts …)",
      "usage",
    );
  }
  return new VfioMigError(`${what}: ${e instanceof Error ? e.message : e}`, "failure");
}

/** A TLS (rustls) error message, with what to do about the common ones. */
export function explainTls(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  if (/CaUsedAsEndEntity/.test(msg)) {
    return `${msg}: the listener's certificate is a CA certificate; a self-signed server certificate must ` +
      `say CA:FALSE (openssl req -x509 … -addext basicConstraints=critical,CA:FALSE)`;
  }
  if (/UnknownIssuer/.test(msg)) return `${msg}: trust the listener's certificate (or its CA) with --tls-ca FILE`;
  if (/NotValidForName/.test(msg)) {
    return `${msg}: the certificate does not name the host in the tcp:// address (see its subjectAltName)`;
  }
  if (/InvalidContentType|corrupt message/i.test(msg)) {
    return `${msg}: the peer does not speak TLS (the listener needs --tls-cert and --tls-key)`;
  }
  return msg;
}

function checkPort(s: string, ctx: string): number {
  const p = Number(s);
  if (!Number.isInteger(p) || p < 0 || p > 65535) throw new VfioMigError(`${ctx}: bad port ${s}`, "usage");
  return p;
}

/** 16 random bytes (the Web Crypto CSPRNG) as 32 hex digits. */
export function newToken(): string {
  return Array.from(randomBytes(16), (b) => b.toString(16).padStart(2, "0")).join("");
}

function randomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}

/**
 * The token as an HMAC-SHA256 key (Web Crypto: node:crypto would cost the process ~10 MiB
 * of resident memory, measured on deno 2.9.6; Web Crypto ~3 MiB).
 */
function macKey(token: string): Promise<CryptoKey> {
  return crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(token),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
}

/** HMAC(token, label | a | b): the bytes the handshake's proofs are made of. */
function macInput(label: string, a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const l = new TextEncoder().encode(label);
  const out = new Uint8Array(l.length + a.length + b.length);
  out.set(l, 0);
  out.set(a, l.length);
  out.set(b, l.length + a.length);
  return out;
}

async function mac(key: CryptoKey, label: string, a: Uint8Array, b: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, macInput(label, a, b)));
}

/** Whether `proof` is HMAC(token, label | a | b); compared in constant time (Web Crypto's verify). */
function macVerify(key: CryptoKey, proof: Uint8Array, label: string, a: Uint8Array, b: Uint8Array): Promise<boolean> {
  return crypto.subtle.verify("HMAC", key, proof.slice(), macInput(label, a, b));
}

function timeout<T>(p: Promise<T>, ms: number, onTimeout: () => void, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => {
        onTimeout();
        reject(new VfioMigError(`${what}: no answer within ${ms} ms`, "failure"));
      }, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function readExact(conn: Deno.Conn, n: number, what: string): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    const r = await conn.read(buf.subarray(off));
    if (r === null) throw new VfioMigError(`${what}: the peer closed the connection`, "failure");
    off += r;
  }
  return buf;
}

async function writeAllConn(conn: Deno.Conn, buf: Uint8Array): Promise<void> {
  let off = 0;
  while (off < buf.length) off += await conn.write(buf.subarray(off));
}

function hello(nonce: Uint8Array, extra?: Uint8Array): Uint8Array {
  const out = new Uint8Array(MAGIC.length + 2 + NONCE + (extra?.length ?? 0));
  out.set(MAGIC, 0);
  out[MAGIC.length] = VERSION;
  out.set(nonce, MAGIC.length + 2);
  if (extra) out.set(extra, MAGIC.length + 2 + NONCE);
  return out;
}

function checkHello(b: Uint8Array, who: string): void {
  for (let i = 0; i < MAGIC.length; i++) {
    if (b[i] !== MAGIC[i]) throw new VfioMigError(`${who} is not a vfio-mig peer (bad greeting)`, "failure");
  }
  if (b[MAGIC.length] !== VERSION) {
    throw new VfioMigError(`${who} speaks handshake version ${b[MAGIC.length]}, not ${VERSION}`, "failure");
  }
}

export interface ConnectOptions {
  token: string;
  handshakeTimeoutMs?: number;
  /** PEM of a CA to trust: connect with TLS. */
  tlsCa?: string;
  tls?: boolean;
}

/** The source's end: an authenticated connection to a listening load. */
export class TcpClient {
  #frames: Promise<void>;
  #initAck = false;
  #initAcks = 0;
  #done: { ok: boolean; message: string; [k: string]: unknown } | null = null;
  #doneWaiters: (() => void)[] = [];
  #closed = false;

  private constructor(readonly conn: Deno.Conn, readonly label: string) {
    this.#frames = this.#readFrames();
  }

  static async connect(url: string, opts: ConnectOptions): Promise<TcpClient> {
    const ep = parseTcpUrl(url);
    // Before connecting, so our proof follows the listener's greeting at once: a listener
    // under a flood drops connections that stay silent (MaxStartups).
    const key = await macKey(opts.token);
    let conn: Deno.Conn;
    try {
      conn = opts.tls || opts.tlsCa
        ? await Deno.connectTls({
          hostname: ep.hostname,
          port: ep.port,
          caCerts: opts.tlsCa ? [opts.tlsCa] : undefined,
        })
        : await Deno.connect({ hostname: ep.hostname, port: ep.port });
    } catch (e) {
      throw netError(e, `cannot connect to ${url}`);
    }
    const ms = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    // How far the destination got: what a timeout or a close means depends on it.
    let greeted = false;
    try {
      await timeout(
        (async () => {
          const sh = await readExact(conn, SERVER_HELLO, url).catch((e) => {
            if (!(e instanceof VfioMigError)) throw e; // TLS errors: explained below
            throw new VfioMigError(
              `${url} accepted the connection and closed it before its greeting: a listener that dropped ` +
                `it (over its --max-startups limit: try again) or not a vfio-mig listener`,
              "failure",
            );
          });
          greeted = true;
          checkHello(sh, url);
          const nonceS = sh.subarray(MAGIC.length + 2);
          const nonceC = randomBytes(NONCE);
          await writeAllConn(conn, hello(nonceC, await mac(key, "vfio-mig client", nonceS, nonceC)));
          const reply = await readExact(conn, SERVER_REPLY, url);
          if (reply[0] !== 0) throw new VfioMigError(`${url} refused the token (wrong --token?)`, "failure");
          if (!(await macVerify(key, reply.subarray(1), "vfio-mig server", nonceC, nonceS))) {
            throw new VfioMigError(`${url} did not prove it knows the token: not the expected peer`, "failure");
          }
        })(),
        ms,
        () => conn.close(),
        `handshake with ${url}`,
      );
    } catch (e) {
      try {
        conn.close();
      } catch { /* already closed */ }
      if (e instanceof VfioMigError && /: no answer within \d+ ms$/.test(e.message)) {
        throw new VfioMigError(
          e.message +
            (greeted
              ? ": the destination greeted us but did not answer our proof of the token"
              : ": the destination accepted the connection but never sent its greeting (not a vfio-mig " +
                "listener, one busy with another peer, or one that cannot keep up)"),
          "failure",
        );
      }
      if (e instanceof VfioMigError) throw e;
      // TLS errors surface on the first read: say what they mean.
      throw new VfioMigError(`handshake with ${url} failed: ${explainTls(e)}`, "failure");
    }
    return new TcpClient(conn, url);
  }

  async #readFrames(): Promise<void> {
    try {
      for (;;) {
        const h = await readExact(this.conn, 5, this.label);
        const type = h[0];
        const len = new DataView(h.buffer).getUint32(1);
        if (len > MAX_FRAME) throw new Error("frame too large");
        const payload = await readExact(this.conn, len, this.label);
        if (type === FRAME.INIT_ACK) {
          this.#initAck = true;
          this.#initAcks++;
        } else if (type === FRAME.DONE) {
          this.#done = JSON.parse(new TextDecoder().decode(payload));
          break;
        }
        this.#wake();
      }
    } catch {
      // The peer went away; waiters see #done === null.
    }
    this.#wake();
  }

  #wake(): void {
    const w = this.#doneWaiters;
    this.#doneWaiters = [];
    for (const f of w) f();
  }

  get initAcked(): boolean {
    return this.#initAck;
  }

  /** INIT_ACK frames received: one per DEV_INIT_DATA_SENT the destination loaded. */
  get initAcks(): number {
    return this.#initAcks;
  }

  async write(bytes: Uint8Array): Promise<void> {
    try {
      await writeAllConn(this.conn, bytes);
    } catch (e) {
      // A destination that failed says why in its DONE frame just before it closes:
      // give that frame a moment to arrive, so the error names the cause.
      if (!this.#closed && this.#done === null) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([this.#frames, new Promise((r) => timer = setTimeout(r, 1000))]);
        clearTimeout(timer);
      }
      const why = this.#done && !this.#done.ok ? `: ${this.#done.message}` : "";
      throw new VfioMigError(
        `${this.label}: the destination closed the connection${why || ` (${e instanceof Error ? e.message : e})`}`,
        this.#done ? destinationKind(this.#done) : "failure",
      );
    }
  }

  /** Waits until the destination acknowledged the initial data, up to ms. */
  async waitInitAck(ms: number): Promise<boolean> {
    const end = performance.now() + ms;
    while (!this.#initAck && this.#done === null && performance.now() < end) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, end - performance.now()));
        this.#doneWaiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.#initAck;
  }

  /** Ends our direction and waits for the destination's result. */
  async finish(ms = 120_000): Promise<{ ok: boolean; message: string; [k: string]: unknown }> {
    try {
      await this.conn.closeWrite();
    } catch { /* TLS conns may not support half-close; the trailer already ended the stream */ }
    await timeout(this.#frames, ms, () => this.close(), `waiting for ${this.label} to finish loading`);
    this.close();
    if (!this.#done) throw new VfioMigError(`${this.label}: the destination closed without a result`, "failure");
    return this.#done;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

/**
 * How many unauthenticated connections the listener holds at once, as sshd's MaxStartups
 * (sshd_config(5) "MaxStartups start:rate:full"): with `start` of them open, a new
 * connection makes the listener drop one with probability `rate`%, rising linearly to 100%
 * at `full`, so never more than `full` are open. Unlike sshd, the one dropped is not
 * the newcomer but the longest-waiting connection that has not yet sent a byte of a
 * well-formed greeting (for TLS: first one whose TLS handshake is not done, then one that
 * finished TLS but sent nothing since); one that has sent the greeting's first bytes is
 * never dropped for a newcomer: it keeps its handshake timeout. Only when every open
 * connection has is the newcomer closed.
 */
export interface MaxStartups {
  start: number;
  /** Percent, 0-100. */
  rate: number;
  full: number;
}

/**
 * 1024 unauthenticated connections at most, drops from 768 on: each costs the listener a
 * descriptor and ~8 KiB (README's TCP section; measured by tests/transport/tcp_flood_test.ts).
 */
export const DEFAULT_MAX_STARTUPS: MaxStartups = { start: 768, rate: 30, full: 1024 };

/** Parses sshd's syntax "START:RATE:FULL" (or a lone "FULL": drops only at FULL). */
export function parseMaxStartups(spec: string): MaxStartups {
  const m = /^(\d+)(?::(\d+):(\d+))?$/.exec(spec);
  const bad = () =>
    new VfioMigError(`--max-startups ${spec}: expected START:RATE:FULL (e.g. 512:30:1024) or FULL`, "usage");
  if (!m) throw bad();
  const [start, rate, full] = m[2] === undefined ? [Number(m[1]), 100, Number(m[1])] : [m[1], m[2], m[3]].map(Number);
  if (!(start >= 1 && start <= full && rate <= 100 && full <= 65536)) throw bad();
  return { start, rate, full };
}

/**
 * Connections a TLS listener accepts per second at most, after a burst of as many: deno
 * runs the TLS handshake of each connection it accepts (a key exchange and a signature,
 * ~1 ms of CPU here), so a flood of ClientHellos costs a bounded share of a CPU. Past the
 * rate, connections wait in the kernel's accept queue, in arrival order.
 */
export const TLS_HANDSHAKES_PER_S = 200;
export const TLS_HANDSHAKE_BURST = 200;
/** Refused peers reported one by one (onRefused); the ones after are only counted (onTurnedAway). */
export const REFUSALS_SHOWN = 8;
/** How often, at most, onTurnedAway reports counts while the listener waits. */
export const TURNED_AWAY_EVERY_MS = 30_000;

/** Connections the listener turned away without reporting each: totals since it started listening. */
export interface TurnedAway {
  /** Closed unread over MaxStartups (or while descriptors ran out). */
  dropped: number;
  /** Refused by the handshake beyond the first REFUSALS_SHOWN, by reason. */
  wrongToken: number;
  notVfioMig: number;
  timedOut: number;
  closed: number;
  tls: number;
  /** The MaxStartups in force. */
  limits: MaxStartups;
}

/** The one line that reports a TurnedAway (stderr and the `dropped` event's message). */
export function turnedAwayLine(t: TurnedAway): string {
  const refused = [
    [t.wrongToken, "wrong token"],
    [t.notVfioMig, "not vfio-mig"],
    [t.timedOut, "timed out"],
    [t.closed, "closed by the peer"],
    [t.tls, "TLS failed"],
  ].filter(([n]) => n) as [number, string][];
  const parts = [];
  if (t.dropped) {
    parts.push(
      `dropped ${t.dropped} connection${t.dropped === 1 ? "" : "s"} over the limit of unauthenticated ones ` +
        `(--max-startups ${t.limits.start}:${t.limits.rate}:${t.limits.full})`,
    );
  }
  if (refused.length) {
    const n = refused.reduce((a, [k]) => a + k, 0);
    parts.push(`refused ${n} more (${refused.map(([k, w]) => `${k} ${w}`).join(", ")})`);
  }
  return `${parts.join("; ")} so far`;
}

export interface ListenOptions {
  token: string;
  handshakeTimeoutMs?: number;
  idleTimeoutMs?: number;
  tlsCert?: string;
  tlsKey?: string;
  /** Unauthenticated connections at once (default DEFAULT_MAX_STARTUPS). */
  maxStartups?: MaxStartups;
  /** Called with each refused peer's reason (wrong token, garbage, slow), for the first REFUSALS_SHOWN. */
  onRefused?: (why: string) => void;
  /** Called with the counts of those not reported one by one: every TURNED_AWAY_EVERY_MS while they grow, and at the end. */
  onTurnedAway?: (t: TurnedAway) => void;
  /** Called once listening, with the bound address. */
  onListening?: (addr: Deno.NetAddr) => void;
  /** Give up waiting for a valid peer after this long. */
  acceptTimeoutMs?: number;
  /** Aborting stops listening at once (SIGINT/SIGTERM); accept rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** The destination's end: one authenticated peer, then a byte source. */
export class TcpServerConn {
  #closed = false;
  readonly #idleMs: number;

  private constructor(readonly conn: Deno.Conn, readonly label: string, idleMs: number) {
    this.#idleMs = idleMs;
  }

  /**
   * Listens and runs the handshakes of every connection side by side, each with its own
   * deadline (handshakeTimeoutMs); the first peer that proves it knows the token wins, the
   * listener is closed and so is every other connection. What unauthenticated connections
   * cost is bounded by MaxStartups (a descriptor and ~8 KiB each) and, with TLS, by
   * TLS_HANDSHAKES_PER_S. Throws VfioMigError "failure" when acceptTimeoutMs passes or the
   * address cannot be bound ("usage" without --allow-net), the signal's reason on abort.
   */
  static async accept(spec: string, opts: ListenOptions): Promise<TcpServerConn> {
    const ep = parseListen(spec);
    if (opts.signal?.aborted) throw opts.signal.reason;
    const key = await macKey(opts.token); // before listening: every handshake needs it
    const tls = !!(opts.tlsCert && opts.tlsKey);
    let listener: Deno.Listener;
    try {
      listener = tls
        ? Deno.listenTls({ hostname: ep.hostname, port: ep.port, cert: opts.tlsCert!, key: opts.tlsKey! })
        : Deno.listen({ hostname: ep.hostname, port: ep.port });
    } catch (e) {
      throw netError(e, `cannot listen on ${ep.hostname}:${ep.port}`);
    }
    opts.onListening?.(listener.addr as Deno.NetAddr);
    const won = await new Gate(listener, opts, key, tls).run();
    return new TcpServerConn(won.conn, won.who, opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS);
  }

  /** Reads stream bytes; 0 at end. Fails when the peer is silent for the idle timeout. */
  async read(buf: Uint8Array): Promise<number> {
    const r = await timeout(this.conn.read(buf), this.#idleMs, () => this.close(), `${this.label} (idle)`);
    return r ?? 0;
  }

  async sendFrame(type: number, payload: Uint8Array = new Uint8Array(0)): Promise<void> {
    const f = new Uint8Array(5 + payload.length);
    f[0] = type;
    new DataView(f.buffer).setUint32(1, payload.length);
    f.set(payload, 5);
    try {
      await writeAllConn(this.conn, f);
    } catch { /* the source went away; its own error tells the story */ }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

/** The greeting's fixed part: magic and version; a peer that sent it is mid-handshake. */
const GREETING = MAGIC.length + 2;

type Reason = "wrongToken" | "notVfioMig" | "timedOut" | "closed" | "tls";

/** Why a peer was refused; the words are made (with its address) only when it is reported. */
class Refusal {
  constructor(readonly reason: Reason, readonly words: (who: string) => string) {}
}

/** One unauthenticated connection (kept small: a flood makes many). */
interface Startup {
  conn: Deno.Conn;
  /** 0: nothing yet (TLS not done, no byte); 1: TLS done, no byte since; 2: sent the greeting's start. */
  stage: 0 | 1 | 2;
  /** performance.now() when its handshake timeout ends. */
  deadline: number;
  /** Refused, dropped, timed out, or the listener is done: nothing more is done with it. */
  over: boolean;
  /** Ended while its handshake was pending: its descriptor is freed when that settles. */
  closing?: boolean;
}

/**
 * The listener's gate: accepts while handshakes run side by side, bounds the
 * unauthenticated ones (MaxStartups, TLS handshake rate), counts what it turned away.
 */
class Gate {
  readonly #startups = new Map<Deno.Conn, Startup>(); // in arrival order
  readonly #max: MaxStartups;
  readonly #hsMs: number;
  #tlsBudget = TLS_HANDSHAKE_BURST;
  #tlsAt = performance.now();
  #over = false;
  /** Connections closed whose pending read still holds the descriptor (freed at the loop's next turn). */
  #closing = 0;
  #shown = 0;
  #counts = { dropped: 0, wrongToken: 0, notVfioMig: 0, timedOut: 0, closed: 0, tls: 0 };
  #reported = 0;
  #timers: ReturnType<typeof setTimeout>[] = [];
  /** One timer for every handshake deadline: the oldest connection's (all have the same timeout). */
  #sweep: ReturnType<typeof setTimeout> | undefined;
  #resolve!: (w: { conn: Deno.Conn; who: string }) => void;
  #reject!: (e: unknown) => void;

  constructor(
    readonly listener: Deno.Listener,
    readonly opts: ListenOptions,
    readonly key: CryptoKey,
    readonly tls: boolean,
  ) {
    this.#max = opts.maxStartups ?? DEFAULT_MAX_STARTUPS;
    this.#hsMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  }

  run(): Promise<{ conn: Deno.Conn; who: string }> {
    const won = new Promise<{ conn: Deno.Conn; who: string }>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    const onAbort = () => this.#fail(this.opts.signal!.reason);
    this.opts.signal?.addEventListener("abort", onAbort, { once: true });
    if (this.opts.acceptTimeoutMs) {
      const ms = this.opts.acceptTimeoutMs;
      this.#timers.push(setTimeout(
        () => this.#fail(new VfioMigError(`no authenticated peer connected within ${ms} ms`, "failure")),
        ms,
      ));
    }
    this.#timers.push(setInterval(() => this.#report(), TURNED_AWAY_EVERY_MS));
    this.#acceptLoop();
    return won.finally(() => {
      this.opts.signal?.removeEventListener("abort", onAbort);
      this.#stop();
    });
  }

  /** Everything counted so far. */
  get #total(): number {
    return Object.values(this.#counts).reduce((a, b) => a + b, 0);
  }

  #report(): void {
    const total = this.#total;
    if (total === this.#reported) return;
    this.#reported = total;
    this.opts.onTurnedAway?.({ ...this.#counts, limits: this.#max });
  }

  #fail(e: unknown): void {
    if (this.#over) return;
    this.#reject(e);
    this.#stop();
  }

  /** No more connections: the listener, the handshakes and the timers end; the counts are reported. */
  #stop(): void {
    if (this.#over) return;
    this.#over = true;
    try {
      this.listener.close();
    } catch { /* already closed */ }
    for (const s of this.#startups.values()) this.#end(s);
    clearTimeout(this.#sweep);
    for (const t of this.#timers) clearTimeout(t);
    this.#report();
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#over) {
      let conn: Deno.Conn;
      try {
        if (this.tls) await this.#tlsTurn();
        if (this.#over) return;
        conn = await this.listener.accept();
      } catch (e) {
        if (this.#over) return;
        // EMFILE/ENFILE: the connection waits in the kernel's queue; make room for it.
        if (e instanceof Error && /os error 2[34]\b/.test(e.message)) {
          if (!this.#evict()) await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        this.#fail(netError(e, "accepting a connection"));
        return;
      }
      if (this.#over) {
        closeQuietly(conn);
        return;
      }
      this.#admit(conn);
      // Descriptors: a closed connection's is freed once its pending read ends, at the
      // loop's next turn; wait for that (a few turns at most) rather than hold more than `full`.
      for (
        let turn = 0;
        turn < 20 && this.#closing > 0 && this.#startups.size + this.#closing >= this.#max.full;
        turn++
      ) {
        await new Promise((r) => setTimeout(r, 0));
      }
    }
  }

  /** MaxStartups: past `start`, a newcomer drops the longest-waiting idle connection with rising probability. */
  #admit(conn: Deno.Conn): void {
    const n = this.#startups.size;
    const { start, rate, full } = this.#max;
    if (n >= start) {
      const p = n >= full ? 1 : (rate + (100 - rate) * (n - start) / (full - start)) / 100;
      if (Math.random() < p && !this.#evict()) {
        this.#counts.dropped++;
        closeQuietly(conn);
        return;
      }
    }
    const s: Startup = { conn, stage: 0, over: false, deadline: performance.now() + this.#hsMs };
    this.#startups.set(conn, s);
    this.#sweep ??= setTimeout(() => this.#timeOut(), this.#hsMs);
    this.#handshake(s);
  }

  /** Refuses the connections whose handshake timeout passed (the oldest first), and waits for the next one's. */
  #timeOut(): void {
    this.#sweep = undefined;
    const now = performance.now();
    for (const s of this.#startups.values()) {
      if (s.deadline > now) {
        this.#sweep = setTimeout(() => this.#timeOut(), s.deadline - now);
        return;
      }
      const ms = this.#hsMs;
      this.#refuse(s, new Refusal("timedOut", (who) => `handshake with ${who}: no answer within ${ms} ms`));
    }
  }

  /** Drops the longest-waiting connection that sent nothing (stage 0, then 1); false when there is none. */
  #evict(): boolean {
    for (const stage of [0, 1]) {
      for (const s of this.#startups.values()) {
        if (s.stage === stage) {
          this.#counts.dropped++;
          this.#end(s);
          return true;
        }
      }
    }
    return false;
  }

  #end(s: Startup): void {
    if (s.over) return;
    s.over = true;
    this.#startups.delete(s.conn);
    s.closing = true;
    this.#closing++;
    closeQuietly(s.conn);
  }

  #refuse(s: Startup, r: Refusal): void {
    if (s.over || this.#over) return;
    this.#end(s);
    if (this.#shown < REFUSALS_SHOWN) {
      this.#shown++;
      const who = whoOf(s.conn);
      this.opts.onRefused?.(`refused ${who}: ${r.words(who)}`);
    } else this.#counts[r.reason]++;
  }

  /** The server's side of the handshake (the file's header); resolves the gate when the peer proved the token. */
  async #handshake(s: Startup): Promise<void> {
    try {
      await this.#serverHandshake(s);
    } catch (e) {
      if (s.over) return; // timed out, dropped, or another peer won: its own account
      const why = e instanceof Error ? e.message : String(e);
      this.#refuse(s, e instanceof Refusal ? e : new Refusal("closed", () => why));
    } finally {
      if (s.closing) {
        s.closing = false;
        this.#closing--;
      }
    }
  }

  async #serverHandshake(s: Startup): Promise<void> {
    const conn = s.conn;
    if (this.tls) {
      try {
        await (conn as Deno.TlsConn).handshake();
      } catch (e) {
        if (s.over) return;
        const why = explainTls(e);
        throw new Refusal("tls", () => `TLS handshake failed: ${why}`);
      }
      if (s.over) return;
      s.stage = 1;
    }
    // One buffer: our greeting (with its nonce), then the peer's.
    const buf = new Uint8Array(SERVER_HELLO + CLIENT_HELLO);
    const sh = buf.subarray(0, SERVER_HELLO);
    sh.set(MAGIC);
    sh[MAGIC.length] = VERSION;
    crypto.getRandomValues(sh.subarray(GREETING));
    const nonceS = sh.subarray(GREETING);
    await writeAllConn(conn, sh);
    const ch = buf.subarray(SERVER_HELLO);
    let off = 0;
    while (off < CLIENT_HELLO) {
      const r = await conn.read(ch.subarray(off));
      if (s.over) return;
      if (r === null) throw new Refusal("closed", (who) => `${who}: the peer closed the connection`);
      // The greeting is checked byte by byte as it comes: garbage is refused at once.
      for (let i = off; i < Math.min(off + r, GREETING); i++) {
        if (i < MAGIC.length && ch[i] !== MAGIC[i]) {
          throw new Refusal("notVfioMig", (who) => `${who} is not a vfio-mig peer (bad greeting)`);
        }
        if (i === MAGIC.length && ch[i] !== VERSION) {
          const v = ch[i];
          throw new Refusal("notVfioMig", (who) => `${who} speaks handshake version ${v}, not ${VERSION}`);
        }
      }
      off += r;
      if (off >= GREETING) s.stage = 2;
    }
    const nonceC = ch.subarray(GREETING, GREETING + NONCE);
    const ok = await macVerify(this.key, ch.subarray(GREETING + NONCE), "vfio-mig client", nonceS, nonceC);
    if (s.over) return;
    const reply = new Uint8Array(SERVER_REPLY);
    reply[0] = ok ? 0 : 1;
    if (ok) reply.set(await mac(this.key, "vfio-mig server", nonceC, nonceS), 1);
    if (s.over) return;
    if (!ok) {
      await writeAllConn(conn, reply);
      if (s.over) return;
      throw new Refusal("wrongToken", () => "wrong token");
    }
    if (this.#over) return;
    // The peer proved the token: THE peer from now on, whatever becomes of its connection.
    // Out of the startups (so #stop leaves it open), then the listener and everyone else go.
    s.over = true;
    this.#startups.delete(conn);
    this.#stop();
    const who = whoOf(conn);
    try {
      await writeAllConn(conn, reply);
    } catch (e) {
      // Gone before our proof reached it: the load fails (nothing touched), it does not wait for another.
      closeQuietly(conn);
      const why = e instanceof Error ? e.message : String(e);
      this.#reject(
        new VfioMigError(`${who} proved the token, then went away before sending its stream (${why})`, "failure"),
      );
      return;
    }
    this.#resolve({ conn, who });
  }

  /**
   * Waits until the TLS listener may accept once more: deno's TLS listener runs the
   * handshake of every connection it accepts, so each accept takes one of
   * TLS_HANDSHAKE_BURST turns, given back at TLS_HANDSHAKES_PER_S (a token bucket), and the
   * handshakes' CPU is bounded whatever the peers do. Connections past the rate wait in the
   * kernel's accept queue, unread.
   */
  async #tlsTurn(): Promise<void> {
    for (;;) {
      const now = performance.now();
      this.#tlsBudget = Math.min(
        TLS_HANDSHAKE_BURST,
        this.#tlsBudget + (now - this.#tlsAt) * TLS_HANDSHAKES_PER_S / 1000,
      );
      this.#tlsAt = now;
      if (this.#tlsBudget >= 1 || this.#over) break;
      await new Promise((r) => setTimeout(r, Math.ceil((1 - this.#tlsBudget) * 1000 / TLS_HANDSHAKES_PER_S)));
    }
    this.#tlsBudget--;
  }
}

function whoOf(conn: Deno.Conn): string {
  const peer = conn.remoteAddr as Deno.NetAddr;
  return `${peer.hostname}:${peer.port}`;
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

// ---------------------------------------------------------------------------
// Sink and source over the authenticated connections

const HIGH_WATER = 8 << 20;
const LOW_WATER = 2 << 20;
/** Send buffers: a 1 MiB data chunk with its header fits one; small records share one. */
const SEND_BUFFER = (1 << 20) + 4096;
const POOL_MAX = 12;
/** A kept write at least this long is sent in place; shorter ones are copied (and may share a send). */
const KEPT_MIN = 64 << 10;

interface Outgoing {
  buf: Uint8Array;
  len: number;
  pooled: boolean;
  /** The caller's own bytes (write(bytes, kept)): sent from where they are, not copied. */
  kept?: boolean;
}

/**
 * The source side: sends the stream's bytes in order. A data chunk the caller keeps
 * unchanged until flowControl() resolves (write(bytes, true)) is sent from where it
 * is, and flowControl() waits until it was; other bytes are copied into send buffers
 * (pooled, so a GiB stream allocates a dozen, not a thousand), and small records
 * written while a send is in progress share the next buffer: one write for them all.
 */
export class TcpSink {
  readonly label: string;
  #queue: Outgoing[] = [];
  #queued = 0;
  #cur: Uint8Array | null = null;
  #curLen = 0;
  #pool: Uint8Array[] = [];
  #pumping: Promise<void> | null = null;
  #error: unknown = null;
  #waiters: (() => void)[] = [];
  /** Kept views queued and not yet sent. */
  #keptQueued = 0;
  peerDoneAt: number | null = null;
  lastByteAt: number | null = null;
  result: { ok: boolean; message: string; [k: string]: unknown } | null = null;

  constructor(readonly client: TcpClient) {
    this.label = client.label;
  }

  get initAcked(): boolean {
    return this.client.initAcked;
  }

  get initAcks(): number {
    return this.client.initAcks;
  }

  get queuedBytes(): number {
    return this.#queued;
  }

  write(bytes: Uint8Array, kept = false): void {
    if (this.#error) throw this.#error;
    if (kept && bytes.length >= KEPT_MIN) {
      this.#seal();
      this.#queue.push({ buf: bytes, len: bytes.length, pooled: false, kept: true });
      this.#keptQueued++;
    } else if (bytes.length > SEND_BUFFER) {
      this.#seal();
      this.#queue.push({ buf: bytes.slice(), len: bytes.length, pooled: false });
    } else {
      if (this.#cur && this.#curLen + bytes.length > SEND_BUFFER) this.#seal();
      if (!this.#cur) {
        this.#cur = this.#pool.pop() ?? new Uint8Array(SEND_BUFFER);
        this.#curLen = 0;
      }
      this.#cur.set(bytes, this.#curLen);
      this.#curLen += bytes.length;
    }
    this.#queued += bytes.length;
    this.#pumping ??= this.#pump();
  }

  /** The buffer being filled joins the queue (the next write takes another). */
  #seal(): void {
    if (this.#cur && this.#curLen > 0) this.#queue.push({ buf: this.#cur, len: this.#curLen, pooled: true });
    else if (this.#cur) this.#pool.push(this.#cur);
    this.#cur = null;
    this.#curLen = 0;
  }

  async #pump(): Promise<void> {
    try {
      for (;;) {
        if (this.#queue.length === 0) this.#seal();
        const o = this.#queue.shift();
        if (!o) break;
        await this.client.write(o.buf.subarray(0, o.len));
        this.#queued -= o.len;
        if (o.pooled && this.#pool.length < POOL_MAX) this.#pool.push(o.buf);
        if (o.kept) this.#keptQueued--;
        if (this.#queued <= LOW_WATER || (o.kept && this.#keptQueued === 0)) this.#wake();
      }
    } catch (e) {
      this.#error = e;
      this.#drop();
    } finally {
      this.#pumping = null;
      this.#wake();
    }
  }

  #drop(): void {
    this.#queue = [];
    this.#cur = null;
    this.#curLen = 0;
    this.#queued = 0;
    this.#keptQueued = 0;
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  /** Waits while too much is queued, and until every kept view was sent (the caller reuses them next). */
  async flowControl(): Promise<void> {
    while ((this.#queued > HIGH_WATER || this.#keptQueued > 0) && !this.#error) {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    if (this.#error) throw this.#error;
  }

  /**
   * Resolves once every byte taken by write() was handed to the kernel (the socket's send
   * buffer): a process killed after that loses none of them. Throws the send's error when
   * the destination went away.
   */
  async drain(): Promise<void> {
    while (this.#pumping) await this.#pumping;
    if (this.#error) throw this.#error;
  }

  /** Sends what is queued, ends the stream and waits for the destination's result. */
  async commit(): Promise<void> {
    await this.drain();
    this.lastByteAt = performance.now();
    const r = await this.client.finish();
    this.peerDoneAt = performance.now();
    this.result = r;
    if (!r.ok) throw new VfioMigError(`the destination failed: ${r.message}`, destinationKind(r));
  }

  abort(): void {
    this.#drop();
    this.client.close();
  }
}

/**
 * The exit class of a destination's failure, from its DONE frame's `kind` (load's error
 * kind): a stream the destination refused (damaged, unsigned, a MAC that fails) is "stream"
 * (exit 4, as `save --help` says); anything else, or a peer that sends no kind, "failure".
 */
function destinationKind(done: { ok: boolean; kind?: unknown }): "stream" | "failure" {
  return !done.ok && done.kind === "stream" ? "stream" : "failure";
}

/** The destination side: stream bytes from the one authenticated peer. */
export class TcpSource {
  readonly label: string;
  constructor(readonly server: TcpServerConn) {
    this.label = `tcp peer ${server.label}`;
  }
  read(buf: Uint8Array): Promise<number> {
    return this.server.read(buf);
  }
  async notify(e: { event: "init-loaded" } | { event: "done"; [k: string]: unknown }): Promise<void> {
    if (e.event === "init-loaded") await this.server.sendFrame(FRAME.INIT_ACK);
    else {
      const { event: _, ...rest } = e;
      await this.server.sendFrame(FRAME.DONE, new TextEncoder().encode(JSON.stringify(rest)));
    }
  }
  /** A signal came: a pending read ends (the connection is closed: nothing more will be read). */
  interrupt(): void {
    this.server.close();
  }
  close(): void {
    this.server.close();
  }
}
