import { FFIType, type Pointer } from "bun:ffi";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { LazyLibrary, NativeDecoder, NativeStruct, type StepResult, readCString, structLayout } from "./ffi.ts";

const zstd = new LazyLibrary("libzstd.so.1", "libzstd1", {
  ZSTD_createDStream: { args: [], returns: "ptr" },
  ZSTD_freeDStream: { args: ["ptr"], returns: FFIType.u64_fast },
  ZSTD_decompressStream: { args: ["ptr", "ptr", "ptr"], returns: FFIType.u64_fast },
  ZSTD_isError: { args: ["u64"], returns: "u32" },
  ZSTD_getErrorName: { args: ["u64"], returns: "ptr" },
});

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

  constructor(input: ChunkSource) {
    super(input, "zstd", "frame");
    this.lib = zstd.load(input.locate(0), "zstd data");
    const d = this.lib.ZSTD_createDStream();
    if (!d) throw new Error("ZSTD_createDStream: out of memory");
    this.dstream = d;
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
    if (this.lib.ZSTD_isError(rc)) this.corrupt(readCString(this.lib.ZSTD_getErrorName(rc)), r.consumed);
    r.ended = rc === 0;
  }

  protected restart(): void {}

  protected release(): void {
    this.lib.ZSTD_freeDStream(this.dstream);
  }
}
