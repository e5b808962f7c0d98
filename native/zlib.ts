import type { Pointer } from "bun:ffi";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { LazyLibrary, NativeDecoder, NativeStruct, type StepResult, readCString, structLayout, streamCall } from "./ffi.ts";

const zlib = new LazyLibrary("libz.so.1", "zlib1g", {
  zlibVersion: { args: [], returns: "ptr" },
  inflateInit2_: { args: ["ptr", "i32", "ptr", "i32"], returns: "i32" },
  inflate: { args: ["ptr", "i32"], returns: "i32" },
  inflateReset: { args: ["ptr"], returns: "i32" },
  inflateEnd: { args: ["ptr"], returns: "i32" },
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
