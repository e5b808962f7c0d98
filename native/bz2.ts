import type { Pointer } from "bun:ffi";
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

  constructor(input: ChunkSource) {
    super(input, "bzip2", "stream");
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
