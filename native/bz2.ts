import { type Pointer, read } from "bun:ffi";
import type { Location } from "../src/errors.ts";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { LazyLibrary, NativeDecoder, NativeStruct, type StepResult, structLayout, streamCall } from "./ffi.ts";

const bz2 = new LazyLibrary("libbz2.so.1.0", "libbz2-1.0", {
  BZ2_bzDecompressInit: { args: ["ptr", "i32", "i32"], returns: "i32" },
  BZ2_bzDecompress: { args: ["ptr"], returns: "i32" },
  BZ2_bzDecompressEnd: { args: ["ptr"], returns: "i32" },
});

// bz_stream from bzlib.h
const BZ_STREAM = structLayout({
  next_in: "ptr",
  avail_in: "uint",
  total_in_lo32: "uint",
  total_in_hi32: "uint",
  next_out: "ptr",
  avail_out: "uint",
  total_out_lo32: "uint",
  total_out_hi32: "uint",
  state: "ptr",
  bzalloc: "ptr",
  bzfree: "ptr",
  opaque: "ptr",
});

const BZ_OK = 0;
const BZ_STREAM_END = 4;
/** libbz2 has no message function for these; the texts follow bzip2's own messages */
const BZ_ERRORS: Record<number, string> = {
  [-2]: "BZ_PARAM_ERROR",
  [-3]: "BZ_MEM_ERROR: out of memory",
  [-4]: "BZ_DATA_ERROR: data integrity (CRC) error in data",
  [-5]: "BZ_DATA_ERROR_MAGIC: bad magic number (not a bzip2 stream)",
};

/** bzip2, including multi-stream files (pbzip2, `cat a.bz2 b.bz2`), over libbz2. */
export class Bzip2Decoder extends NativeDecoder {
  private readonly lib: ReturnType<typeof bz2.load>;
  private readonly strm = new NativeStruct(BZ_STREAM);

  constructor(input: ChunkSource, inputBuffer?: Uint8Array) {
    super(input, "bzip2", "stream", inputBuffer);
    this.lib = bz2.load(input.locate(0), "bzip2 data");
    this.init();
  }

  private init(): void {
    this.strm.clear();
    const rc = this.lib.BZ2_bzDecompressInit(this.strm.address, 0, 0);
    if (rc !== BZ_OK) throw new Error(`BZ2_bzDecompressInit: ${BZ_ERRORS[rc] ?? rc}`);
  }

  protected step(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number, r: StepResult): void {
    const s = this.strm;
    const rc = streamCall(s, 32, inAddress, inLength, outAddress, outLength, r, () => this.lib.BZ2_bzDecompress(s.address));
    if (rc === BZ_STREAM_END) r.ended = true;
    else if (rc !== BZ_OK) this.corrupt(BZ_ERRORS[rc] ?? `BZ2_bzDecompress error ${rc}`, r.consumed);
  }

  protected restart(): void {
    this.lib.BZ2_bzDecompressEnd(this.strm.address);
    this.init();
  }

  protected release(): void {
    this.lib.BZ2_bzDecompressEnd(this.strm.address);
  }
}

/**
 * libbz2's decoder state while it waits for the first byte of a block header (bzlib_private.h:
 * BZ_X_BLKHDR_1). The state is the second field of its DState (after a pointer), unchanged
 * across libbz2 1.0.x; the seek index uses it only to confirm a block start that its own
 * verification then decodes.
 */
const BZ_X_BLKHDR_1 = 14;
const DSTATE_STATE_OFFSET = 8;
export { BZ_OK, BZ_STREAM_END, BZ_ERRORS };

/** One bz_stream driven by the caller (the bzip2 seek index): decompress calls and a look at where the decoder waits. */
export class BzipStream {
  private readonly lib: ReturnType<typeof bz2.load>;
  private readonly strm = new NativeStruct(BZ_STREAM);
  private live = false;

  constructor(where: Location) {
    this.lib = bz2.load(where, "bzip2 data");
    this.init();
  }

  init(): void {
    if (this.live) this.lib.BZ2_bzDecompressEnd(this.strm.address);
    this.strm.clear();
    const rc = this.lib.BZ2_bzDecompressInit(this.strm.address, 0, 0);
    if (rc !== BZ_OK) throw new Error(`BZ2_bzDecompressInit: ${BZ_ERRORS[rc] ?? rc}`);
    this.live = true;
  }

  decompress(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number): number {
    const s = this.strm;
    s.set64("next_in", inAddress);
    s.set32("avail_in", inLength);
    s.set64("next_out", outAddress);
    s.set32("avail_out", outLength);
    return this.lib.BZ2_bzDecompress(s.address);
  }

  get availIn(): number {
    return this.strm.get32("avail_in");
  }
  get availOut(): number {
    return this.strm.get32("avail_out");
  }

  /** The decoder has finished a block's output and waits for the next block (or end-of-stream) magic. */
  waitsForBlockHeader(): boolean {
    const state = this.strm.get64("state");
    return state !== 0 && read.i32(state as Pointer, DSTATE_STATE_OFFSET) === BZ_X_BLKHDR_1;
  }

  end(): void {
    if (!this.live) return;
    this.live = false;
    this.lib.BZ2_bzDecompressEnd(this.strm.address);
  }
}
