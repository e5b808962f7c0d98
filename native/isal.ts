import type { Pointer } from "bun:ffi";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { LazyLibrary, NativeDecoder, NativeStruct, type StepResult, type StructLayout, streamCall } from "./ffi.ts";

// Intel ISA-L's inflate, about twice as fast as zlib's. Its struct inflate_state is large and only
// its first fields are stable across releases, so the layout below is that of ISA-L 2.30
// (isa-l/igzip_lib.h, Debian 12's libisal2) and is proven by a self-test before first use; any
// other layout falls back to zlib.
const isal = new LazyLibrary("libisal.so.2", "libisal2", {
  isal_inflate_init: { args: ["ptr"], returns: "void" },
  isal_inflate_reset: { args: ["ptr"], returns: "void" },
  isal_inflate: { args: ["ptr"], returns: "i32" },
});

type Field = "next_out" | "avail_out" | "total_out" | "next_in" | "avail_in" | "block_state" | "crc_flag";
const INFLATE_STATE: StructLayout<Field> = {
  size: 87368,
  offset: { next_out: 0, avail_out: 8, total_out: 12, next_in: 16, avail_in: 32, block_state: 21160, crc_flag: 21172 },
};
const ISAL_GZIP = 1;
const ISAL_BLOCK_FINISH = 5;
const ISAL_DECOMP_OK = 0;
const ISAL_END_INPUT = 1;
const ISAL_OUT_OVERFLOW = 2;
const ERRORS: Record<number, string> = {
  [-1]: "invalid deflate block",
  [-2]: "invalid deflate symbol",
  [-3]: "invalid lookback distance",
  [-4]: "invalid gzip header",
  [-6]: "crc32 or length mismatch in the gzip trailer",
};

/** gzip (multi-member) over ISA-L. */
export class IsalGzipDecoder extends NativeDecoder {
  private readonly lib: ReturnType<typeof isal.load>;
  private readonly state = new NativeStruct(INFLATE_STATE);

  constructor(input: ChunkSource) {
    super(input, "gzip", "member");
    this.lib = isal.load(input.locate(0), "gzip data");
    this.lib.isal_inflate_init(this.state.address);
    this.state.set32("crc_flag", ISAL_GZIP);
  }

  protected step(inAddress: Pointer, inLength: number, outAddress: Pointer, outLength: number, r: StepResult): void {
    const s = this.state;
    const rc = streamCall(s, 32, inAddress, inLength, outAddress, outLength, r, () => this.lib.isal_inflate(s.address));
    if (rc !== ISAL_DECOMP_OK && rc !== ISAL_END_INPUT && rc !== ISAL_OUT_OVERFLOW) {
      this.corrupt(ERRORS[rc] ?? `isal_inflate error ${rc}`, r.consumed);
    }
    if (s.get32("block_state") === ISAL_BLOCK_FINISH) r.ended = true;
  }

  protected restart(): void {
    this.lib.isal_inflate_reset(this.state.address);
    this.state.set32("crc_flag", ISAL_GZIP);
  }

  protected release(): void {}
}

let proven: boolean | undefined;

/** True when libisal is here and decodes a two-member gzip exactly with the layout above. */
export function isalUsable(): boolean {
  if (proven !== undefined) return proven;
  proven = false;
  if (!isal.tryLoad()) return false;
  try {
    const text = new TextEncoder().encode("imgtool: ISA-L self-test. ".repeat(200));
    const twoMembers = new Uint8Array([...Bun.gzipSync(text), ...Bun.gzipSync(text.subarray(0, 100))]);
    let fed = false;
    const input: ChunkSource = {
      name: "self-test",
      size: twoMembers.length,
      read(into) {
        if (fed) return 0;
        fed = true;
        into.set(twoMembers);
        return twoMembers.length;
      },
      locate: (offset) => ({ file: "self-test", offset }),
      close() {},
    };
    const decoder = new IsalGzipDecoder(input);
    const out = new Uint8Array(text.length + 200);
    let n = 0;
    for (let got; (got = decoder.read(out.subarray(n))) > 0; ) n += got;
    decoder.close();
    const expected = new Uint8Array([...text, ...text.subarray(0, 100)]);
    proven = n === expected.length && out.subarray(0, n).every((b, i) => b === expected[i]);
  } catch {
    proven = false;
  }
  return proven;
}
