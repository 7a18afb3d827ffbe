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

type NodeCrypto = typeof import("node:crypto");

/**
 * node:crypto, imported when a handshake needs it: it costs a local save or load ~3 ms
 * of start-up and ~1 MiB of memory that only tcp:// uses.
 */
function nodeCrypto(): Promise<NodeCrypto> {
  return import("node:crypto");
}

function mac(c: NodeCrypto, token: string, label: string, a: Uint8Array, b: Uint8Array): Uint8Array {
  return new Uint8Array(c.createHmac("sha256", token).update(label).update(a).update(b).digest());
}

function macEqual(c: NodeCrypto, a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && c.timingSafeEqual(a, b);
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
    try {
      await timeout(
        (async () => {
          const sh = await readExact(conn, SERVER_HELLO, url);
          checkHello(sh, url);
          const nonceS = sh.subarray(MAGIC.length + 2);
          const c = await nodeCrypto();
          const nonceC = randomBytes(NONCE);
          await writeAllConn(conn, hello(nonceC, mac(c, opts.token, "vfio-mig client", nonceS, nonceC)));
          const reply = await readExact(conn, SERVER_REPLY, url);
          if (reply[0] !== 0) throw new VfioMigError(`${url} refused the token (wrong --token?)`, "failure");
          if (!macEqual(c, reply.subarray(1), mac(c, opts.token, "vfio-mig server", nonceC, nonceS))) {
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
        "failure",
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

export interface ListenOptions {
  token: string;
  handshakeTimeoutMs?: number;
  idleTimeoutMs?: number;
  tlsCert?: string;
  tlsKey?: string;
  /** Called with each refused peer's reason (wrong token, garbage, slow). */
  onRefused?: (why: string) => void;
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

  /** Listens, authenticates peers until one succeeds, then stops listening. */
  static async accept(spec: string, opts: ListenOptions): Promise<TcpServerConn> {
    const ep = parseListen(spec);
    let listener: Deno.Listener;
    try {
      listener = opts.tlsCert && opts.tlsKey
        ? Deno.listenTls({ hostname: ep.hostname, port: ep.port, cert: opts.tlsCert, key: opts.tlsKey })
        : Deno.listen({ hostname: ep.hostname, port: ep.port });
    } catch (e) {
      throw netError(e, `cannot listen on ${ep.hostname}:${ep.port}`);
    }
    opts.onListening?.(listener.addr as Deno.NetAddr);
    const hsMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const deadline = opts.acceptTimeoutMs ? performance.now() + opts.acceptTimeoutMs : Infinity;
    let current: Deno.Conn | null = null; // the peer in its handshake
    const onAbort = () => {
      for (const c of [listener, current]) {
        try {
          c?.close();
        } catch { /* already closed */ }
      }
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        if (opts.signal?.aborted) throw opts.signal.reason;
        const left = deadline - performance.now();
        if (left <= 0) {
          throw new VfioMigError(`no authenticated peer connected within ${opts.acceptTimeoutMs} ms`, "failure");
        }
        const conn = Number.isFinite(left)
          ? await timeout(listener.accept(), left, () => listener.close(), "waiting for a peer")
          : await listener.accept();
        const peer = conn.remoteAddr as Deno.NetAddr;
        const who = `${peer.hostname}:${peer.port}`;
        current = conn;
        try {
          await timeout(serverHandshake(conn, opts.token, who), hsMs, () => conn.close(), `handshake with ${who}`);
          current = null;
          if (opts.signal?.aborted) throw opts.signal.reason;
          return new TcpServerConn(conn, who, opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS);
        } catch (e) {
          current = null;
          try {
            conn.close();
          } catch { /* closed by the timeout */ }
          if (opts.signal?.aborted) throw opts.signal.reason;
          opts.onRefused?.(`refused ${who}: ${e instanceof VfioMigError ? e.message : explainTls(e)}`);
        }
      }
    } catch (e) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw e;
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
      // Exactly one peer: nobody else can connect once we have one (or gave up).
      try {
        listener.close();
      } catch { /* already closed */ }
    }
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

async function serverHandshake(conn: Deno.Conn, token: string, who: string): Promise<void> {
  const c = await nodeCrypto();
  const nonceS = randomBytes(NONCE);
  await writeAllConn(conn, hello(nonceS));
  const ch = await readExact(conn, CLIENT_HELLO, who);
  checkHello(ch, who);
  const nonceC = ch.subarray(MAGIC.length + 2, MAGIC.length + 2 + NONCE);
  const macC = ch.subarray(MAGIC.length + 2 + NONCE);
  const ok = macEqual(c, macC, mac(c, token, "vfio-mig client", nonceS, nonceC));
  const reply = new Uint8Array(SERVER_REPLY);
  reply[0] = ok ? 0 : 1;
  if (ok) reply.set(mac(c, token, "vfio-mig server", nonceC, nonceS), 1);
  await writeAllConn(conn, reply);
  if (!ok) throw new VfioMigError("wrong token", "failure");
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

  /** Sends what is queued, ends the stream and waits for the destination's result. */
  async commit(): Promise<void> {
    while (this.#pumping) await this.#pumping;
    if (this.#error) throw this.#error;
    this.lastByteAt = performance.now();
    const r = await this.client.finish();
    this.peerDoneAt = performance.now();
    this.result = r;
    if (!r.ok) throw new VfioMigError(`the destination failed: ${r.message}`, "failure");
  }

  abort(): void {
    this.#drop();
    this.client.close();
  }
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
