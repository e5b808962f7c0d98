import { type Pointer, cc, ptr } from "bun:ffi";
import { LazyLibrary, symbolAddress } from "./ffi.ts";

const xxh = new LazyLibrary("libxxhash.so.0", "libxxhash0", {
  XXH64_createState: { args: [], returns: "ptr" },
  XXH64_freeState: { args: ["ptr"], returns: "i32" },
  XXH64_reset: { args: ["ptr", "u64"], returns: "i32" },
  XXH64_update: { args: ["ptr", "ptr", "u64"], returns: "i32" },
  XXH64_digest: { args: ["ptr"], returns: "u64" },
  XXH3_createState: { args: [], returns: "ptr" },
  XXH3_freeState: { args: ["ptr"], returns: "i32" },
  XXH3_128bits_reset: { args: ["ptr"], returns: "i32" },
  XXH3_128bits_update: { args: ["ptr", "ptr", "u64"], returns: "i32" },
});

function lib() {
  const s = xxh.tryLoad();
  if (!s) throw new Error(`XXH64/XXH128 checksums need ${xxh.soname} (apt-get install ${xxh.aptPackage})`);
  return s;
}

/** Native states are freed when their JS object is collected. */
const freeXxh64 = new FinalizationRegistry<Pointer>((p) => xxh.tryLoad()?.XXH64_freeState(p));
const freeXxh3 = new FinalizationRegistry<Pointer>((p) => xxh.tryLoad()?.XXH3_freeState(p));

/** XXH64 with seed 0, as partclone computes it; the digest is the u64 in little-endian byte order. */
export class Xxh64State {
  private readonly lib = lib();
  private readonly state: Pointer;
  private readonly view = new DataView(new ArrayBuffer(8));
  constructor() {
    const s = this.lib.XXH64_createState();
    if (!s) throw new Error("XXH64_createState: out of memory");
    this.state = s;
    freeXxh64.register(this, s);
    this.reset();
  }
  reset(): void {
    this.lib.XXH64_reset(this.state, 0);
  }
  update(data: Uint8Array): void {
    if (data.length > 0) this.lib.XXH64_update(this.state, ptr(data), data.length);
  }
  /** The 8 digest bytes into out[0..8); the state stays usable (more updates continue the same hash). */
  digestInto(out: Uint8Array): void {
    this.view.setBigUint64(0, this.lib.XXH64_digest(this.state), true);
    out.set(new Uint8Array(this.view.buffer));
  }
}

/** A native XXH3 state (the 64- and 128-bit variants share the type), freed when `owner` is collected. */
function newXxh3State(owner: object): Pointer {
  const s = lib().XXH3_createState();
  if (!s) throw new Error("XXH3_createState: out of memory");
  freeXxh3.register(owner, s);
  return s;
}

/**
 * XXH128_hash_t is returned by value in two registers, which bun:ffi cannot receive: a two-line C
 * shim (compiled once by Bun's built-in TinyCC) calls the digest through a pointer and stores
 * { low64, high64 } to memory, as partclone's memcpy of the struct does.
 */
const DIGEST128_SHIM = `
typedef unsigned long long u64;
typedef struct { u64 low64, high64; } h128;
void digest128(void *fn, void *state, u64 *out) { h128 h = ((h128 (*)(void *))fn)(state); out[0] = h.low64; out[1] = h.high64; }
`;

let digest128: ((fn: Pointer, state: Pointer, out: Uint8Array) => void) | undefined;
let digest128Fn: Pointer | undefined;

function loadDigest128(): void {
  if (digest128) return;
  lib();
  const fn = symbolAddress(xxh.soname, "XXH3_128bits_digest");
  if (!fn) throw new Error(`XXH3_128bits_digest not found in ${xxh.soname}`);
  const fs = require("node:fs") as typeof import("node:fs");
  const os = require("node:os") as typeof import("node:os");
  const path = require("node:path") as typeof import("node:path");
  // cc() compiles a file: write the shim to a private temporary directory
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "imgtool-xxh128-"));
  try {
    const source = path.join(dir, "digest128.c");
    fs.writeFileSync(source, DIGEST128_SHIM);
    digest128 = cc({ source, symbols: { digest128: { args: ["ptr", "ptr", "ptr"], returns: "void" } } }).symbols.digest128;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  digest128Fn = fn;
}

/** XXH3 128-bit (seed 0); the digest is low64 then high64, each little-endian. */
export class Xxh128State {
  private readonly lib = lib();
  private readonly state = newXxh3State(this);
  constructor() {
    loadDigest128();
    this.reset();
  }
  reset(): void {
    this.lib.XXH3_128bits_reset(this.state);
  }
  update(data: Uint8Array): void {
    if (data.length > 0) this.lib.XXH3_128bits_update(this.state, ptr(data), data.length);
  }
  /** The 16 digest bytes into out[0..16). */
  digestInto(out: Uint8Array): void {
    if (out.length < 16) throw new RangeError("XXH128 digest needs 16 bytes");
    digest128!(digest128Fn!, this.state, out);
  }
}

/** One-shot XXH64 (seed 0) of `data`: 8 bytes, little-endian. The runtime's own, so that a one-shot hash does not load the library. */
export function digestXxh64(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, Bun.hash.xxHash64(data, 0n), true);
  return out;
}

/** One-shot XXH3 128-bit of `data`: 16 bytes, low64 LE then high64 LE. */
export function digestXxh128(data: Uint8Array): Uint8Array {
  const s = new Xxh128State();
  s.update(data);
  const out = new Uint8Array(16);
  s.digestInto(out);
  return out;
}
