import { FFIType, type Pointer } from "bun:ffi";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { decodeMemoryLimit, LazyLibrary, NativeDecoder, NativeStruct, type StepResult, readCString, structLayout } from "./ffi.ts";

const zstd = new LazyLibrary("libzstd.so.1", "libzstd1", {
  ZSTD_createDStream: { args: [], returns: "ptr" },
  ZSTD_freeDStream: { args: ["ptr"], returns: FFIType.u64_fast },
  ZSTD_decompressStream: { args: ["ptr", "ptr", "ptr"], returns: FFIType.u64_fast },
  ZSTD_isError: { args: ["u64"], returns: "u32" },
  ZSTD_getErrorName: { args: ["u64"], returns: "ptr" },
  ZSTD_DCtx_setParameter: { args: ["ptr", "i32", "i32"], returns: FFIType.u64_fast },
});

/** ZSTD_d_windowLogMax in zstd.h */
const ZSTD_D_WINDOW_LOG_MAX = 100;

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
    // a frame header may ask for any window up to 2 GiB (3.75 TiB in theory): allow what zstd -d
    // allows without --memory, so a few bytes of input cannot take gigabytes
    const windowLog = Math.log2(decodeMemoryLimit().window);
    const rc = this.lib.ZSTD_DCtx_setParameter(d, ZSTD_D_WINDOW_LOG_MAX, Math.floor(windowLog));
    if (this.lib.ZSTD_isError(rc)) throw new Error(`ZSTD_d_windowLogMax: ${readCString(this.lib.ZSTD_getErrorName(rc))}`);
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
    this.lib.ZSTD_freeDStream(this.dstream);
  }
}
