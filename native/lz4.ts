import { FFIType, type Pointer } from "bun:ffi";
import type { Location } from "../src/errors.ts";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { LazyLibrary, NativeDecoder, NativeStruct, type StepResult, readCString, structLayout } from "./ffi.ts";

const lz4 = new LazyLibrary("liblz4.so.1", "liblz4-1", {
  LZ4F_createDecompressionContext: { args: ["ptr", "u32"], returns: FFIType.u64_fast },
  LZ4F_freeDecompressionContext: { args: ["ptr"], returns: FFIType.u64_fast },
  LZ4F_decompress: { args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr"], returns: FFIType.u64_fast },
  LZ4F_isError: { args: ["u64"], returns: "u32" },
  LZ4F_getErrorName: { args: ["u64"], returns: "ptr" },
});

/** LZ4F_VERSION in lz4frame.h */
const LZ4F_VERSION = 100;

// the out-parameters of LZ4F_createDecompressionContext (LZ4F_dctx **) and LZ4F_decompress (size_t *)
const ARGS = structLayout({ dctx: "ptr", dstSize: "size_t", srcSize: "size_t" });

/**
 * The LZ4 frame format over liblz4's frame API: concatenated frames and skippable frames.
 * LZ4F_decompress returns 0 once a frame has been decoded and flushed.
 */
export class Lz4Decoder extends NativeDecoder {
  private readonly lib: ReturnType<typeof lz4.load>;
  private readonly args = new NativeStruct(ARGS);
  private readonly dctx: Pointer;

  constructor(input: ChunkSource, inputBuffer?: Uint8Array) {
    super(input, "lz4", "frame", inputBuffer);
    this.lib = lz4.load(input.locate(0), "lz4 data");
    const rc = this.lib.LZ4F_createDecompressionContext(this.args.fieldAddress("dctx"), LZ4F_VERSION);
    if (this.lib.LZ4F_isError(rc)) throw new Error(`LZ4F_createDecompressionContext: ${readCString(this.lib.LZ4F_getErrorName(rc))}`);
    this.dctx = this.args.get64("dctx") as Pointer;
  }

  protected step(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number, r: StepResult): void {
    const a = this.args;
    a.set64("srcSize", inLength);
    a.set64("dstSize", outLength);
    const rc = this.lib.LZ4F_decompress(this.dctx, outAddress, a.fieldAddress("dstSize"), inAddress, a.fieldAddress("srcSize"), null);
    r.consumed = a.get64("srcSize");
    r.produced = a.get64("dstSize");
    if (this.lib.LZ4F_isError(rc)) this.corrupt(readCString(this.lib.LZ4F_getErrorName(rc)), r.consumed);
    r.ended = rc === 0;
  }

  protected restart(): void {}

  protected release(): void {
    this.lib.LZ4F_freeDecompressionContext(this.dctx);
  }
}

/** One LZ4F decompression context driven by the caller (the lz4 seek index feeds it block by block). */
export class Lz4FrameStream {
  private readonly lib: ReturnType<typeof lz4.load>;
  private readonly args = new NativeStruct(ARGS);
  private readonly dctx: Pointer;
  private live = true;
  consumed = 0;
  produced = 0;

  constructor(where: Location) {
    this.lib = lz4.load(where, "lz4 data");
    const rc = this.lib.LZ4F_createDecompressionContext(this.args.fieldAddress("dctx"), LZ4F_VERSION);
    if (this.lib.LZ4F_isError(rc)) throw new Error(`LZ4F_createDecompressionContext: ${readCString(this.lib.LZ4F_getErrorName(rc))}`);
    this.dctx = this.args.get64("dctx") as Pointer;
  }

  /** One LZ4F_decompress call; sets `consumed` and `produced`; returns the error text or undefined. */
  decompress(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number): string | undefined {
    const a = this.args;
    a.set64("srcSize", inLength);
    a.set64("dstSize", outLength);
    const rc = this.lib.LZ4F_decompress(this.dctx, outAddress, a.fieldAddress("dstSize"), inAddress, a.fieldAddress("srcSize"), null);
    this.consumed = a.get64("srcSize");
    this.produced = a.get64("dstSize");
    return this.lib.LZ4F_isError(rc) ? readCString(this.lib.LZ4F_getErrorName(rc)) : undefined;
  }

  end(): void {
    if (!this.live) return;
    this.live = false;
    this.lib.LZ4F_freeDecompressionContext(this.dctx);
  }
}
