import type { Pointer } from "bun:ffi";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { decodeMemoryLimit, LazyLibrary, NativeDecoder, NativeStruct, type StepResult, structLayout, streamCall } from "./ffi.ts";

const lzma = new LazyLibrary("liblzma.so.5", "liblzma5", {
  lzma_stream_decoder: { args: ["ptr", "u64", "u32"], returns: "i32" },
  lzma_alone_decoder: { args: ["ptr", "u64"], returns: "i32" },
  lzma_code: { args: ["ptr", "i32"], returns: "i32" },
  lzma_end: { args: ["ptr"], returns: "void" },
});

// lzma_stream from lzma/base.h
const LZMA_STREAM = structLayout({
  next_in: "ptr",
  avail_in: "size_t",
  total_in: "u64",
  next_out: "ptr",
  avail_out: "size_t",
  total_out: "u64",
  allocator: "ptr",
  internal: "ptr",
  reserved_ptr: ["ptr", 4],
  reserved_int1: "u64",
  reserved_int2: "u64",
  reserved_int3: "size_t",
  reserved_int4: "size_t",
  reserved_enum1: "int",
  reserved_enum2: "int",
});

const LZMA_OK = 0;
const LZMA_STREAM_END = 1;
const LZMA_BUF_ERROR = 10;
const LZMA_MEMLIMIT_ERROR = 6;
/** liblzma's state besides the dictionary (lzma_raw_decoder_memusage adds about this much) */
const DECODER_OVERHEAD = 1 << 20;
const LZMA_RUN = 0;
const LZMA_FINISH = 3;
/** decode .xz streams one after another until the input ends (as xz -d does) */
const LZMA_CONCATENATED = 0x08;
/** lzma_ret values from lzma/base.h, as xz words them */
const LZMA_ERRORS: Record<number, string> = {
  2: "LZMA_NO_CHECK",
  3: "LZMA_UNSUPPORTED_CHECK: cannot verify the integrity check",
  5: "LZMA_MEM_ERROR: out of memory",
  6: "LZMA_MEMLIMIT_ERROR: memory usage limit reached",
  7: "LZMA_FORMAT_ERROR: file format not recognized",
  8: "LZMA_OPTIONS_ERROR: unsupported options",
  9: "LZMA_DATA_ERROR: compressed data is corrupt",
  11: "LZMA_PROG_ERROR",
};

/**
 * .xz (every stream of a multi-stream file, padding included) or legacy .lzma, over liblzma.
 * The xz decoder ends only when told the input is finished (LZMA_FINISH), so a missing end of
 * stream shows as LZMA_BUF_ERROR then.
 */
export class LzmaDecoder extends NativeDecoder {
  private readonly lib: ReturnType<typeof lzma.load>;
  private readonly strm = new NativeStruct(LZMA_STREAM);

  constructor(
    input: ChunkSource,
    private readonly format: "xz" | "lzma",
    inputBuffer?: Uint8Array,
  ) {
    super(input, format, "stream", inputBuffer);
    this.lib = lzma.load(input.locate(0), `${format} data`);
    // the dictionary size comes from the input: bound what a header can make liblzma allocate
    const memlimit = BigInt(decodeMemoryLimit().window + DECODER_OVERHEAD);
    const rc =
      format === "xz"
        ? this.lib.lzma_stream_decoder(this.strm.address, memlimit, LZMA_CONCATENATED)
        : this.lib.lzma_alone_decoder(this.strm.address, memlimit);
    if (rc !== LZMA_OK) throw new Error(`liblzma decoder init: ${LZMA_ERRORS[rc] ?? rc}`);
  }

  protected step(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number, r: StepResult): void {
    const s = this.strm;
    const rc = streamCall(s, 64, inAddress, inLength, outAddress, outLength, r, () => this.lib.lzma_code(s.address, this.inputEnded ? LZMA_FINISH : LZMA_RUN));
    if (rc === LZMA_STREAM_END) r.ended = true;
    else if (rc === LZMA_BUF_ERROR && this.inputEnded) this.truncated();
    else if (rc === LZMA_MEMLIMIT_ERROR) this.tooLarge(`the ${this.format} dictionary needs more than ${decodeMemoryLimit().text}`, r.consumed);
    else if (rc !== LZMA_OK && rc !== LZMA_BUF_ERROR) this.corrupt(LZMA_ERRORS[rc] ?? `lzma_code error ${rc}`, r.consumed);
  }

  protected restart(): void {
    // only .lzma gets here (the xz decoder takes every stream itself): .lzma has no concatenation
    this.corrupt(`data follows the end of the ${this.format} stream`);
  }

  protected release(): void {
    this.lib.lzma_end(this.strm.address);
  }
}
