// Authenticated vfio-mig streams (docs/stream-format.md, "Signed streams"): a keyed MAC,
// HMAC-SHA256 (RFC 2104, FIPS 180-4), over the header, every record and the trailer,
// chained so that a reader can refuse a stream at its first bad record:
//
//   mac(header)  = HMAC(K, header bytes, magic through the header CRC)
//   mac(record i) = HMAC(K, be64 i | mac(record i-1, or the header for i = 0) | record i's bytes)
//
// Records are numbered as the grammar numbers them (src/stream/grammar.ts: 0 is the first
// after the header, DEVICE tags and the trailer counted), and each record's 32-byte MAC
// follows its bytes. A changed, dropped, duplicated, reordered or foreign record (one from
// another stream, even one signed with the same key) breaks the chain where it is; the
// trailer's MAC covers the whole stream; a stream cut anywhere lacks its trailer.
//
// The key comes from a file only (StreamKey.fromFile), never from the command line or the
// environment, and is never printed: errors and reports name its file and its key id (the
// first 8 bytes of its SHA-256, what `sha256sum KEY | cut -c1-16` prints). node:crypto is
// loaded here only when a key is given (its HMAC is synchronous and streams: a chunk is
// authenticated before any of its bytes reach the device, with no await in between).

import { O, type Sys } from "../../ffi/sys.ts";
import { StreamError, VfioMigError } from "../errors.ts";

/** The MAC every signed record carries: HMAC-SHA256, 32 bytes. */
export const MAC_ALGORITHM = "hmac-sha256";
export const MAC_SIZE = 32;
/** Shortest key accepted: HMAC-SHA256's output size (RFC 2104 section 3: less is weaker). */
export const MIN_KEY_BYTES = 32;
/** Longest key file read (a key file is a few bytes; anything bigger is the wrong file). */
export const MAX_KEY_BYTES = 4096;
/** Hex digits of the key id (8 bytes of SHA-256). */
export const KEY_ID_HEX = 16;

/** O_NOFOLLOW (x86-64 and arm64 Linux, include/uapi/asm-generic/fcntl.h): a symlink is refused (ELOOP). */
const O_NOFOLLOW = 0o400000;

/** The header's `mac` field of a signed stream (format version 2). */
export interface StreamMacInfo {
  algorithm: typeof MAC_ALGORITHM;
  /** Hex, KEY_ID_HEX digits: the first 8 bytes of SHA-256 of the key. */
  keyId: string;
  /**
   * Hex, NONCE_HEX digits: random, per stream. It makes every signed stream's chain its
   * own, even two saves with the same header otherwise (a fixed `created`).
   */
  nonce: string;
}

/** Hex digits of a signed stream's nonce (16 random bytes). */
export const NONCE_HEX = 32;

type Crypto = typeof import("node:crypto");
type Hmac = ReturnType<Crypto["createHmac"]>;

/**
 * A stream failed authentication (--verify-key): it is unsigned, signed with another key,
 * or a MAC does not match. A StreamError (exit 4) that the --json failure object marks.
 */
export class StreamAuthError extends StreamError {
  readonly authentication = true;
  constructor(message: string, offset?: number, record?: number) {
    super(message, offset, record);
    this.name = "StreamAuthError";
  }
}

/**
 * A MAC key, read from a file. The bytes stay in a private field: the object prints,
 * logs and serialises (JSON) without them.
 */
export class StreamKey {
  readonly #key: Uint8Array;
  readonly #crypto: Crypto;
  /** Hex, KEY_ID_HEX digits: the first 8 bytes of SHA-256 of the key. */
  readonly id: string;

  private constructor(key: Uint8Array, crypto: Crypto, readonly path: string) {
    this.#key = key;
    this.#crypto = crypto;
    this.id = crypto.createHash("sha256").update(key).digest("hex").slice(0, KEY_ID_HEX);
  }

  /**
   * Reads a key file: the key is the file's bytes, exactly (no trailing newline is
   * stripped), MIN_KEY_BYTES to MAX_KEY_BYTES of them, e.g. `head -c 32 /dev/urandom`.
   * Opened with O_NOFOLLOW and O_NONBLOCK; it must be a regular file that neither its
   * group nor others may read or write (mode & 077 == 0, as ssh asks of private keys).
   * `option` names the option in messages (--sign-key, --verify-key).
   * Throws VfioMigError (usage, exit 2) naming the file, never its bytes.
   */
  static async fromFile(sys: Sys, path: string, option: string): Promise<StreamKey> {
    const bad = (why: string) => new VfioMigError(`${option} ${path}: ${why}`, "usage");
    let fd: number;
    try {
      fd = sys.open(path, O.RDONLY | O.CLOEXEC | O.NONBLOCK | O_NOFOLLOW);
    } catch (e) {
      const code = (e as { code?: string }).code;
      throw bad(
        code === "ELOOP"
          ? "is a symbolic link; give the key file itself"
          : `cannot open the key file: ${e instanceof Error ? e.message : e}`,
      );
    }
    let key: Uint8Array;
    try {
      const st = sys.fstat(fd);
      if (!st.isRegular) throw bad("is not a regular file");
      if ((st.mode & 0o077) !== 0) {
        throw bad(
          `permissions 0${(st.mode & 0o777).toString(8)} are too open: a key must not be readable or writable ` +
            `by group or others (chmod 600 ${path})`,
        );
      }
      if (st.size > MAX_KEY_BYTES) {
        throw bad(`is ${st.size} bytes; a key file holds ${MIN_KEY_BYTES} to ${MAX_KEY_BYTES}`);
      }
      const buf = new Uint8Array(MAX_KEY_BYTES + 1);
      let n = 0;
      for (;;) {
        let got: number;
        try {
          got = sys.pread(fd, buf.subarray(n), n);
        } catch (e) {
          if ((e as { code?: string }).code === "EINTR") continue;
          throw bad(`cannot read the key file: ${e instanceof Error ? e.message : e}`);
        }
        if (got === 0 || n + got > MAX_KEY_BYTES) {
          n += got;
          break;
        }
        n += got;
      }
      if (n > MAX_KEY_BYTES) throw bad(`holds more than ${MAX_KEY_BYTES} bytes; a key file holds the key alone`);
      if (n < MIN_KEY_BYTES) {
        throw bad(
          `holds ${n} bytes; a key is at least ${MIN_KEY_BYTES} bytes ` +
            `(make one: (umask 077; head -c 32 /dev/urandom > ${path}))`,
        );
      }
      key = buf.slice(0, n);
      buf.fill(0);
    } finally {
      sys.close(fd);
    }
    return new StreamKey(key, await import("node:crypto"), path);
  }

  /** The header's `mac` field for a new stream signed with this key (a fresh nonce each call). */
  info(): StreamMacInfo {
    const nonce = Array.from(crypto.getRandomValues(new Uint8Array(NONCE_HEX / 2)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    return { algorithm: MAC_ALGORITHM, keyId: this.id, nonce };
  }

  /** A MAC chain for one stream (one per stream: it counts records). */
  chain(): MacChain {
    return new MacChain(() => this.#crypto.createHmac("sha256", this.#key), this.#crypto);
  }

  toJSON(): { path: string; keyId: string } {
    return { path: this.path, keyId: this.id };
  }
}

/**
 * One stream's chain of MACs: header() first, then for each record begin(), update()
 * with its bytes in order, and finish() (the MAC to write, or to compare with
 * matches()). Synchronous throughout.
 */
export class MacChain {
  #prev: Uint8Array | null = null;
  #seq = 0n;
  #open: Hmac | null = null;
  readonly #seqBytes = new Uint8Array(8);

  constructor(readonly newHmac: () => Hmac, readonly crypto: Crypto) {}

  /** The number of the record begin() starts next (grammar numbering). */
  get record(): number {
    return Number(this.#seq);
  }

  /** The header's MAC, over its bytes (magic through the header CRC, concatenated in order). */
  header(...parts: Uint8Array[]): Uint8Array {
    const h = this.newHmac();
    for (const p of parts) h.update(p);
    this.#prev = new Uint8Array(h.digest());
    return this.#prev;
  }

  begin(): void {
    if (!this.#prev) throw new Error("MacChain: a record before the header");
    const h = this.newHmac();
    new DataView(this.#seqBytes.buffer).setBigUint64(0, this.#seq);
    h.update(this.#seqBytes);
    h.update(this.#prev);
    this.#open = h;
  }

  update(b: Uint8Array): void {
    if (b.length) this.#open!.update(b);
  }

  /** The record's MAC; the chain moves on to the next record. */
  finish(): Uint8Array {
    const mac = new Uint8Array(this.#open!.digest());
    this.#open = null;
    this.#prev = mac;
    this.#seq++;
    return mac;
  }

  /** Whether a stored MAC equals a computed one (constant time). */
  matches(stored: Uint8Array, computed: Uint8Array): boolean {
    return stored.length === computed.length && this.crypto.timingSafeEqual(stored, computed);
  }
}

/**
 * What a signed header's `mac` field must be; the problem in words, or null.
 * (`fields` is the parsed header JSON, which may hold anything.)
 */
export function macInfoProblem(fields: unknown): string | null {
  const m = (fields as { mac?: unknown } | null)?.mac as Partial<StreamMacInfo> | undefined;
  if (typeof m !== "object" || m === null) return "the signed stream's header lacks its mac field";
  if (m.algorithm !== MAC_ALGORITHM) {
    return `the stream is signed with ${JSON.stringify(m.algorithm)}; this vfio-mig verifies ${MAC_ALGORITHM}`;
  }
  if (typeof m.keyId !== "string" || !new RegExp(`^[0-9a-f]{${KEY_ID_HEX}}$`).test(m.keyId)) {
    return "the signed stream's header has no valid key id";
  }
  if (typeof m.nonce !== "string" || !new RegExp(`^[0-9a-f]{${NONCE_HEX}}$`).test(m.nonce)) {
    return "the signed stream's header has no valid nonce";
  }
  return null;
}
