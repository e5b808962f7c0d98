// zstd decoded block by block with libzstd's buffer-less API (zstd.h, "Buffer-less streaming
// decompression"): each block lands straight in a ring the caller reads, with no copy out of a
// decoder's own window. The index build's pass and its verifier both decode this way.
import { type Pointer, ptr } from "bun:ffi";
import { ZSTD_INPUT, zstdError, zstdLibrary } from "../../../native/zstd.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import { BLOCK_SIZE_MAX } from "./zstd-frame.ts";

/** A structured zstd dictionary starts so; a raw prefix that does would be read as one. */
const DICTIONARY_MAGIC = 0xec30a437;

/** Compressed input read in order, handed to the library in exactly the pieces it asks for. */
export class InputWindow {
  readonly buf: Uint8Array;
  readonly address: Pointer;
  /** raw offset of buf[0] */
  base = 0;
  end = 0;
  constructor(
    private readonly raw: RandomAccessSource,
    bytes: number,
  ) {
    this.buf = new Uint8Array(bytes);
    this.address = ptr(this.buf);
  }

  /** At least `n` bytes from raw offset `at` in buf (fewer only at the end); returns the index in buf. */
  need(at: number, n: number): number {
    if (at >= this.base && at + n <= this.base + this.end) return at - this.base;
    if (n > this.buf.length) throw new Error(`zstd: ${n} bytes in one piece`);
    this.base = at;
    this.end = this.raw.readAt(this.buf, at);
    return 0;
  }
  available(at: number): number {
    return Math.max(0, this.base + this.end - at);
  }
}

/**
 * The blocks of one frame from a block boundary on, after a synthesized frame header and with the
 * bytes before the boundary as history: what a point inside a frame resumes to. Output goes to a
 * ring of the window plus a few blocks; when a block would not fit before the ring's end it goes to
 * the start, and the library takes what it wrote before as the earlier segment (the window never
 * reaches into the block being written, since the ring is the window plus two blocks and more).
 */
export class ZstdResumedBlocks {
  private readonly lib: ReturnType<typeof zstdLibrary>;
  private readonly dctx: Pointer;
  private readonly ring: Uint8Array;
  private readonly ringAddress: Pointer;
  private readonly header = new Uint8Array(32);
  private readonly headerAddress = ptr(this.header);
  private ringPos = 0;
  private pos = 0;
  /** bytes taken by next() since the boundary */
  decoded = 0;
  /** a block decoded by peek() and not yet taken */
  private pending: Uint8Array | undefined;

  constructor(
    raw: RandomAccessSource,
    private readonly input: InputWindow,
    windowSize: number,
  ) {
    this.lib = zstdLibrary({ file: raw.name });
    const d = this.lib.ZSTD_createDCtx();
    if (!d) throw new Error("ZSTD_createDCtx: out of memory");
    this.dctx = d;
    this.ring = new Uint8Array(windowSize + 4 * BLOCK_SIZE_MAX);
    this.ringAddress = ptr(this.ring);
  }

  /**
   * Start over at `compressed` (a block header) with `header` (a frame header naming the window)
   * and `prefix` as the history; false when the library cannot take this prefix as raw bytes.
   */
  start(header: Uint8Array, compressed: number, prefix: Uint8Array): boolean {
    if (prefix.length > this.ring.length - 2 * BLOCK_SIZE_MAX || header.length > this.header.length) return false;
    if (prefix.length >= 8 && new DataView(prefix.buffer, prefix.byteOffset).getUint32(0, true) === DICTIONARY_MAGIC) return false;
    this.ring.set(prefix, 0);
    this.ringPos = prefix.length;
    const rc = prefix.length > 0 ? this.lib.ZSTD_decompressBegin_usingDict(this.dctx, this.ringAddress, prefix.length) : this.lib.ZSTD_decompressBegin(this.dctx);
    if (zstdError(this.lib, rc)) return false;
    this.header.set(header);
    let fed = 0;
    while (fed < header.length) {
      const want = Number(this.lib.ZSTD_nextSrcSizeToDecompress(this.dctx));
      if (want === 0 || fed + want > header.length) return false;
      const r = this.lib.ZSTD_decompressContinue(this.dctx, this.ringAddress, 0, (this.headerAddress + fed) as Pointer, want);
      if (zstdError(this.lib, r)) return false;
      fed += want;
    }
    this.pos = compressed;
    this.decoded = 0;
    this.pending = undefined;
    return true;
  }

  /**
   * Decode the next block; its bytes, a view into the ring valid until the next call (empty at the
   * frame's end). Throws the library's error name on corrupt input or a missing history.
   */
  next(): Uint8Array {
    const out = this.pending ?? this.decodeBlock();
    this.pending = undefined;
    this.decoded += out.length;
    return out;
  }

  /**
   * The next block, decoded but not taken: libzstd's streaming decoder, which readers resume with,
   * decodes a block ahead of what it returns, so a point is only good where that block decodes too.
   */
  peek(): Uint8Array {
    this.pending ??= this.decodeBlock();
    return this.pending;
  }

  private decodeBlock(): Uint8Array {
    for (;;) {
      const want = Number(this.lib.ZSTD_nextSrcSizeToDecompress(this.dctx));
      if (want === 0) return this.ring.subarray(0, 0);
      const kind = this.lib.ZSTD_nextInputType(this.dctx);
      const at = this.input.need(this.pos, want);
      if (this.input.available(this.pos) < want) throw new Error("the stream ends inside a frame");
      if (this.ringPos + BLOCK_SIZE_MAX > this.ring.length) this.ringPos = 0;
      const rc = this.lib.ZSTD_decompressContinue(
        this.dctx,
        (this.ringAddress + this.ringPos) as Pointer,
        this.ring.length - this.ringPos,
        (this.input.address + at) as Pointer,
        want,
      );
      const err = zstdError(this.lib, rc);
      if (err) throw new Error(err);
      this.pos += want;
      const n = Number(rc);
      if (n > 0 || kind === ZSTD_INPUT.block || kind === ZSTD_INPUT.lastBlock) {
        const out = this.ring.subarray(this.ringPos, this.ringPos + n);
        this.ringPos += n;
        if (n > 0) return out;
      }
    }
  }

  close(): void {
    this.lib.ZSTD_freeDCtx(this.dctx);
  }
}
