import { type Pointer, ptr } from "bun:ffi";
import type { Location } from "../src/errors.ts";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { LazyLibrary, NativeDecoder, NativeStruct, type StepResult, readCString, structLayout, streamCall } from "./ffi.ts";

const zlib = new LazyLibrary("libz.so.1", "zlib1g", {
  zlibVersion: { args: [], returns: "ptr" },
  inflateInit2_: { args: ["ptr", "i32", "ptr", "i32"], returns: "i32" },
  inflate: { args: ["ptr", "i32"], returns: "i32" },
  inflateReset: { args: ["ptr"], returns: "i32" },
  inflateEnd: { args: ["ptr"], returns: "i32" },
  inflateReset2: { args: ["ptr", "i32"], returns: "i32" },
  inflatePrime: { args: ["ptr", "i32", "i32"], returns: "i32" },
  inflateSetDictionary: { args: ["ptr", "ptr", "u32"], returns: "i32" },
});

// z_stream from zlib.h (uInt = unsigned int, uLong = unsigned long)
const Z_STREAM = structLayout({
  next_in: "ptr",
  avail_in: "uint",
  total_in: "ulong",
  next_out: "ptr",
  avail_out: "uint",
  total_out: "ulong",
  msg: "ptr",
  state: "ptr",
  zalloc: "ptr",
  zfree: "ptr",
  opaque: "ptr",
  data_type: "int",
  adler: "ulong",
  reserved: "ulong",
});

const Z_OK = 0;
const Z_STREAM_END = 1;
const Z_NEED_DICT = 2;
const Z_BUF_ERROR = -5;
/** 15-bit window, +16: gzip wrapper only */
const GZIP_WINDOW_BITS = 15 + 16;

/** gzip, including multi-member files (pigz, `cat a.gz b.gz`), over libz. */
export class GzipDecoder extends NativeDecoder {
  private readonly lib: ReturnType<typeof zlib.load>;
  private readonly strm = new NativeStruct(Z_STREAM);

  constructor(input: ChunkSource) {
    super(input, "gzip", "member");
    this.lib = zlib.load(input.locate(0), "gzip data");
    // inflateInit2_ checks stream_size against its own sizeof(z_stream): a wrong layout fails here.
    const rc = this.lib.inflateInit2_(this.strm.address, GZIP_WINDOW_BITS, this.lib.zlibVersion(), Z_STREAM.size);
    if (rc !== Z_OK) this.corrupt(`inflateInit2 failed (${rc}): ${readCString(this.strm.get64("msg"))}`);
  }

  protected step(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number, r: StepResult): void {
    const s = this.strm;
    const rc = streamCall(s, 32, inAddress, inLength, outAddress, outLength, r, () => this.lib.inflate(s.address, 0));
    if (rc === Z_STREAM_END) r.ended = true;
    else if (rc === Z_NEED_DICT) this.corrupt("a preset dictionary is required", r.consumed);
    else if (rc !== Z_OK && rc !== Z_BUF_ERROR) this.corrupt(readCString(s.get64("msg")) || `inflate error ${rc}`, r.consumed);
  }

  protected restart(): void {
    this.lib.inflateReset(this.strm.address);
  }

  protected release(): void {
    this.lib.inflateEnd(this.strm.address);
  }
}

/** inflate()'s flush argument: return at the end of each deflate block (zlib.h) */
export const Z_BLOCK = 5;
export const Z_NO_FLUSH = 0;
export { Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR };
/** windowBits for a raw deflate stream (no gzip header or trailer) */
export const RAW_DEFLATE_WINDOW_BITS = -15;
export { GZIP_WINDOW_BITS };

/**
 * One z_stream for callers that drive inflate themselves (the gzip seek index): the input and
 * output pointers, Z_BLOCK stops, data_type's block-boundary bits, and zran's resume calls
 * (inflatePrime for a bit offset, inflateSetDictionary for the 32 KiB window).
 */
export class Inflater {
  private readonly lib: ReturnType<typeof zlib.load>;
  private readonly strm = new NativeStruct(Z_STREAM);
  private ended = false;

  constructor(where: Location, windowBits: number) {
    this.lib = zlib.load(where, "gzip data");
    const rc = this.lib.inflateInit2_(this.strm.address, windowBits, this.lib.zlibVersion(), Z_STREAM.size);
    if (rc !== Z_OK) throw new Error(`inflateInit2 failed (${rc})`);
  }

  /** One inflate() call over `in` and `out` (addresses and lengths); returns zlib's code. */
  inflate(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number, flush: number): number {
    const s = this.strm;
    s.set64("next_in", inAddress);
    s.set32("avail_in", inLength);
    s.set64("next_out", outAddress);
    s.set32("avail_out", outLength);
    return this.lib.inflate(s.address, flush);
  }

  get availIn(): number {
    return this.strm.get32("avail_in");
  }
  get availOut(): number {
    return this.strm.get32("avail_out");
  }
  /** unused bits in the last input byte, +64 inside the last block, +128 right after a block end (zlib.h) */
  get dataType(): number {
    return this.strm.get32("data_type");
  }
  get message(): string {
    return readCString(this.strm.get64("msg"));
  }

  reset(windowBits: number): void {
    const rc = this.lib.inflateReset2(this.strm.address, windowBits);
    if (rc !== Z_OK) throw new Error(`inflateReset2 failed (${rc})`);
  }

  /** Feed the `bits` low bits of `value` ahead of the next input byte. */
  prime(bits: number, value: number): void {
    const rc = this.lib.inflatePrime(this.strm.address, bits, value);
    if (rc !== Z_OK) throw new Error(`inflatePrime failed (${rc})`);
  }

  setDictionary(window: Uint8Array): void {
    if (window.length === 0) return;
    const rc = this.lib.inflateSetDictionary(this.strm.address, ptr(window), window.length);
    if (rc !== Z_OK) throw new Error(`inflateSetDictionary failed (${rc})`);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.lib.inflateEnd(this.strm.address);
  }
}
