import { FFIType, type Pointer, ptr } from "bun:ffi";
import { ImageError, type Location } from "../src/errors.ts";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { decodeMemoryLimit, LazyLibrary, NativeDecoder, NativeStruct, type StepResult, readCString, structLayout } from "./ffi.ts";

const zstd = new LazyLibrary("libzstd.so.1", "libzstd1", {
  ZSTD_createDStream: { args: [], returns: "ptr" },
  ZSTD_freeDStream: { args: ["ptr"], returns: FFIType.u64_fast },
  ZSTD_decompressStream: { args: ["ptr", "ptr", "ptr"], returns: FFIType.u64_fast },
  ZSTD_isError: { args: ["u64"], returns: "u32" },
  ZSTD_getErrorName: { args: ["u64"], returns: "ptr" },
  ZSTD_DCtx_setParameter: { args: ["ptr", "i32", "i32"], returns: FFIType.u64_fast },
  ZSTD_DCtx_reset: { args: ["ptr", "i32"], returns: FFIType.u64_fast },
  ZSTD_sizeof_DStream: { args: ["ptr"], returns: FFIType.u64_fast },
  // the buffer-less API, to see block boundaries while decoding (seek-index/zstd.ts)
  ZSTD_createDCtx: { args: [], returns: "ptr" },
  ZSTD_freeDCtx: { args: ["ptr"], returns: FFIType.u64_fast },
  ZSTD_decompressBegin: { args: ["ptr"], returns: FFIType.u64_fast },
  ZSTD_decompressBegin_usingDict: { args: ["ptr", "ptr", "u64"], returns: FFIType.u64_fast },
  ZSTD_nextSrcSizeToDecompress: { args: ["ptr"], returns: FFIType.u64_fast },
  ZSTD_nextInputType: { args: ["ptr"], returns: "u32" },
  ZSTD_decompressContinue: { args: ["ptr", "ptr", "u64", "ptr", "u64"], returns: FFIType.u64_fast },
  // resuming inside a frame: the bytes before the resume point as a raw-content prefix
  ZSTD_DCtx_refPrefix: { args: ["ptr", "ptr", "u64"], returns: FFIType.u64_fast },
  // one-shot, for the windows an index stores
  ZSTD_compress: { args: ["ptr", "u64", "ptr", "u64", "i32"], returns: FFIType.u64_fast },
  ZSTD_compressBound: { args: ["u64"], returns: FFIType.u64_fast },
  ZSTD_decompress: { args: ["ptr", "u64", "ptr", "u64"], returns: FFIType.u64_fast },
});

/** ZSTD_d_windowLogMax in zstd.h */
const ZSTD_D_WINDOW_LOG_MAX = 100;
/** ZSTD_reset_session_and_parameters in zstd.h: as new, its buffers kept */
const ZSTD_RESET_SESSION_AND_PARAMETERS = 3;
/**
 * Contexts of closed decoders, reset, taken by the next ones: a reader that resumes at a point for
 * each cold read would otherwise make and free a window-sized context every time.
 */
const spareDStreams: Pointer[] = [];
const SPARE_DSTREAMS = 2;
/** A context grown larger than this (a frame with a large window) is freed, not kept. */
const SPARE_DSTREAM_BYTES = 8 << 20;

/** libzstd's symbols, or an ImageError at `where` naming the package to install. */
export function zstdLibrary(where: Location): ReturnType<typeof zstd.load> {
  return zstd.load(where, "zstd data");
}

/** ZSTD_nextInputType's answers (zstd.h, ZSTD_nextInputType_e). */
export const ZSTD_INPUT = { frameHeader: 0, blockHeader: 1, block: 2, lastBlock: 3, checksum: 4, skippableFrame: 5 } as const;

/** The library's error name when `rc` is an error code, else undefined. */
export function zstdError(lib: ReturnType<typeof zstd.load>, rc: number | bigint): string | undefined {
  return lib.ZSTD_isError(rc) ? readCString(lib.ZSTD_getErrorName(rc)) : undefined;
}

/** zstd-compress `data` in one call (for small blobs such as an index's windows). */
export function zstdCompress(data: Uint8Array, level: number): Uint8Array {
  return new ZstdCompressor().compress(data, level).slice();
}

/** One-call zstd compression into an output buffer kept for the next call. */
export class ZstdCompressor {
  private out = new Uint8Array(0);
  private readonly lib = zstd.load({ file: "libzstd" }, "zstd compression");

  /** `data` compressed: a view valid until the next call. */
  compress(data: Uint8Array, level: number): Uint8Array {
    const bound = Number(this.lib.ZSTD_compressBound(data.length));
    if (this.out.length < bound) this.out = new Uint8Array(bound);
    const rc = this.lib.ZSTD_compress(ptr(this.out), this.out.length, data.length ? ptr(data) : null, data.length, level);
    const err = zstdError(this.lib, rc);
    if (err) throw new Error(`ZSTD_compress: ${err}`);
    return this.out.subarray(0, Number(rc));
  }
}

/**
 * Undo zstdCompress: exactly `size` bytes, or an error naming what went wrong; in `into` (a view of
 * its start) when it is large enough.
 */
export function zstdDecompress(packed: Uint8Array, size: number, where: Location, into?: Uint8Array): Uint8Array {
  const lib = zstd.load(where, "zstd data");
  const out = into && into.length >= size ? into.subarray(0, size) : new Uint8Array(size);
  if (size === 0 && packed.length === 0) return out;
  const rc = lib.ZSTD_decompress(size ? ptr(out) : null, size, packed.length ? ptr(packed) : null, packed.length);
  const err = zstdError(lib, rc);
  if (err) throw new ImageError(where, "corrupt stored window", err);
  if (Number(rc) !== size) throw new ImageError(where, "corrupt stored window", `${rc} bytes instead of ${size}`);
  return out;
}

// ZSTD_inBuffer and ZSTD_outBuffer from zstd.h, both { buffer pointer, size_t size, size_t pos }
const BUFFER = structLayout({ ptr: "ptr", size: "size_t", pos: "size_t" });

/**
 * zstd over libzstd's streaming decoder, which also steps over skippable frames and goes on to
 * the next frame by itself; a return of 0 means a frame has been decoded and flushed.
 */
export class ZstdDecoder extends NativeDecoder {
  private readonly lib: ReturnType<typeof zstd.load>;
  private readonly dstream: Pointer;
  private readonly inDesc = new NativeStruct(BUFFER);
  private readonly outDesc = new NativeStruct(BUFFER);

  /**
   * `prefix`: the bytes that came before `input` in the original stream, which the first frame's
   * matches may reach into (resuming inside a frame); kept referenced for the decoder's lifetime.
   */
  constructor(
    input: ChunkSource,
    readonly prefix?: Uint8Array,
    inputBuffer?: Uint8Array,
  ) {
    super(input, "zstd", "frame", inputBuffer);
    this.lib = zstd.load(input.locate(0), "zstd data");
    const d = spareDStreams.pop() ?? this.lib.ZSTD_createDStream();
    if (!d) throw new Error("ZSTD_createDStream: out of memory");
    this.dstream = d;
    // a frame header may ask for any window up to 2 GiB (3.75 TiB in theory): allow what zstd -d
    // allows without --memory, so a few bytes of input cannot take gigabytes
    const windowLog = Math.log2(decodeMemoryLimit().window);
    const rc = this.lib.ZSTD_DCtx_setParameter(d, ZSTD_D_WINDOW_LOG_MAX, Math.floor(windowLog));
    if (this.lib.ZSTD_isError(rc)) throw new Error(`ZSTD_d_windowLogMax: ${readCString(this.lib.ZSTD_getErrorName(rc))}`);
    if (prefix && prefix.length > 0) {
      const rc = this.lib.ZSTD_DCtx_refPrefix(d, ptr(prefix), prefix.length);
      if (this.lib.ZSTD_isError(rc)) throw new Error(`ZSTD_DCtx_refPrefix: ${readCString(this.lib.ZSTD_getErrorName(rc))}`);
    }
  }

  protected step(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number, r: StepResult): void {
    const i = this.inDesc;
    const o = this.outDesc;
    i.set64("ptr", inAddress);
    i.set64("size", inLength);
    i.set64("pos", 0);
    o.set64("ptr", outAddress);
    o.set64("size", outLength);
    o.set64("pos", 0);
    const rc = this.lib.ZSTD_decompressStream(this.dstream, o.address, i.address);
    r.consumed = i.get64("pos");
    r.produced = o.get64("pos");
    if (this.lib.ZSTD_isError(rc)) {
      const name = readCString(this.lib.ZSTD_getErrorName(rc));
      if (/too much memory/i.test(name)) this.tooLarge(`the frame's window is larger than ${decodeMemoryLimit().text}`, r.consumed);
      this.corrupt(name, r.consumed);
    }
    r.ended = rc === 0;
  }

  protected restart(): void {}

  protected release(): void {
    const reset = this.lib.ZSTD_DCtx_reset(this.dstream, ZSTD_RESET_SESSION_AND_PARAMETERS);
    const keep = spareDStreams.length < SPARE_DSTREAMS && !this.lib.ZSTD_isError(reset) && Number(this.lib.ZSTD_sizeof_DStream(this.dstream)) <= SPARE_DSTREAM_BYTES;
    if (keep) spareDStreams.push(this.dstream);
    else this.lib.ZSTD_freeDStream(this.dstream);
  }
}
