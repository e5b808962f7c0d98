// zstd decoded block by block with libzstd's buffer-less API (zstd.h, "Buffer-less streaming
// decompression"): each block lands straight in a ring the caller reads, with no copy out of a
// decoder's own window. The index build's pass and its verifier both decode this way.
import { type Pointer, ptr } from "bun:ffi";
import { ImageError, withCommas } from "../../errors.ts";
import { ZSTD_INPUT, zstdError, zstdLibrary } from "../../../native/zstd.ts";
import { decodeMemoryLimit } from "../../../native/ffi.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import { BLOCK_SIZE_MAX, type FrameHeader, parseFrameHeader, skippableFrameSize } from "./zstd-frame.ts";

/**
 * What a block may write, from where it lands: libzstd (1.5) may keep a block's literals in the
 * output buffer past the block's own end, so each block is given exactly this much room, and a
 * caller's ring must not need any byte of it.
 */
export const BLOCK_ROOM = 2 * BLOCK_SIZE_MAX + 64;

/** Block_Type values (RFC 8878 3.1.1.2) */
const RAW_BLOCK = 0;
const RLE_BLOCK = 1;

/** A structured zstd dictionary starts so; a raw prefix that does would be read as one. */
const DICTIONARY_MAGIC = 0xec30a437;

/** Compressed input as the library is handed it: `need` puts bytes in `buf` (at `address`) and says where. */
export interface CompressedInput {
  readonly buf: Uint8Array;
  readonly address: Pointer;
  /** At least `n` bytes from raw offset `at` in buf (fewer only at the end); returns the index in buf. */
  need(at: number, n: number): number;
  /** Like need, reading no more than the `n` bytes asked for (where the input after them may not be wanted). */
  needOnly(at: number, n: number): number;
  /** bytes in buf from raw offset `at` on, after need(at, ...) */
  available(at: number): number;
}

/** Compressed input read in order, handed to the library in exactly the pieces it asks for. */
export class InputWindow implements CompressedInput {
  readonly buf: Uint8Array;
  readonly address: Pointer;
  /** raw offset of buf[0] */
  base = 0;
  end = 0;
  constructor(
    private readonly raw: RandomAccessSource,
    bytes: number | Uint8Array,
  ) {
    this.buf = typeof bytes === "number" ? new Uint8Array(bytes) : bytes;
    this.address = ptr(this.buf);
  }

  /** At least `n` bytes from raw offset `at` in buf (fewer only at the end); returns the index in buf. */
  need(at: number, n: number): number {
    if (at >= this.base && at + n <= this.base + this.end) return at - this.base;
    if (n > this.buf.length) throw new Error(`zstd: ${n} bytes in one piece`);
    // what is already here of it moves to the start, and is not read again
    const kept = at >= this.base && at < this.base + this.end ? this.base + this.end - at : 0;
    if (kept > 0) this.buf.copyWithin(0, at - this.base, this.end);
    this.base = at;
    this.end = kept + this.raw.readAt(this.buf.subarray(kept), at + kept);
    return 0;
  }
  /** Like need, reading no more than the `n` bytes asked for (where the input after them may not be wanted). */
  needOnly(at: number, n: number): number {
    if (at >= this.base && at + n <= this.base + this.end) return at - this.base;
    if (n > this.buf.length) throw new Error(`zstd: ${n} bytes in one piece`);
    this.base = at;
    this.end = this.raw.readAt(this.buf.subarray(0, n), at);
    return 0;
  }

  available(at: number): number {
    return Math.max(0, this.base + this.end - at);
  }
}

/** What starts at raw offset `pos`: a skippable frame (its whole size) or a frame (its header). */
export function frameAt(raw: RandomAccessSource, input: CompressedInput, pos: number): { skip: number } | { frame: FrameHeader } {
  const headAt = input.need(pos, 18);
  const head = input.buf.subarray(headAt, headAt + Math.min(18, input.available(pos)));
  const skip = skippableFrameSize(head);
  if (skip === undefined) return { frame: parseFrameHeader(head, raw.locate(pos)) };
  if (pos + skip > raw.size) throw new ImageError(raw.locate(pos), "corrupt zstd data", "the stream ends inside a skippable frame");
  return { skip };
}

/**
 * The blocks of one zstd frame, from its start or from a block boundary inside it (after a
 * synthesized frame header, with the bytes before the boundary as history: what a point inside a
 * frame resumes to). Output goes to a ring of the window plus a few blocks, its own or the caller's;
 * when a block would not fit before the ring's end it goes to the start, and the library takes what
 * it wrote before as the earlier segment. The window never reaches into the room a block is written
 * in: the last pass ended less than BLOCK_ROOM before the ring's end, and the ring is the window plus
 * twice BLOCK_ROOM. A frame or a prefix starts where the last one stopped, so a caller's ring is
 * written strictly in turn.
 */
export class ZstdBlocks {
  private readonly lib: ReturnType<typeof zstdLibrary>;
  private readonly dctx: Pointer;
  private ring: Uint8Array;
  private ringAddress: Pointer;
  private readonly header = new Uint8Array(32);
  private readonly headerAddress = ptr(this.header);
  private ringPos = 0;
  /** where the ring's last pass ended before it went back to its start */
  private prevEnd = 0;
  /** compressed offset of the next input the library takes */
  pos = 0;
  /** where the frame's blocks end (its checksum, if any, follows) */
  blocksEnd = 0;
  /** bytes taken by next() since the start */
  decoded = 0;
  /** a block decoded by peek() and not yet taken */
  private pending: Uint8Array | undefined;
  /** bytes the library has put out since the start (taken or not) */
  private produced = 0;
  /** raw blocks that end within this many bytes produced are not read but decoded as zeros (see skimNext) */
  private skimTo = 0;
  /** the body of the block whose header was made into an RLE block's: its real size, to pass over */
  private skimmedBody: number | undefined;
  /** a block header read on its own (3 bytes), then rewritten, and the RLE block's one byte (zero) */
  private readonly blockHeader = new Uint8Array(4);

  constructor(
    private readonly raw: RandomAccessSource,
    private readonly input: CompressedInput,
    /** the caller's ring, written in turn (see nextBlockAt); else one of its own, sized by each frame's window */
    private readonly callersRing?: Uint8Array,
  ) {
    this.ring = callersRing ?? new Uint8Array(0);
    this.ringAddress = ptr(callersRing ?? new Uint8Array(1));
    this.lib = zstdLibrary(raw.locate(0));
    const d = this.lib.ZSTD_createDCtx();
    if (!d) throw new Error("ZSTD_createDCtx: out of memory");
    this.dctx = d;
  }

  /**
   * A ring for frames of this window (kept while later frames need no more); false when the caller's
   * is too small, or the window is past the decode memory limit (the streaming decoder the caller
   * falls back to refuses it, in one line).
   */
  private fit(windowSize: number): boolean {
    if (windowSize > decodeMemoryLimit().window) return false;
    const size = Math.max(windowSize, 1 << 10) + 2 * BLOCK_ROOM;
    if (this.ring.length >= size) return true;
    if (this.callersRing) return false;
    this.ring = new Uint8Array(size);
    this.ringAddress = ptr(this.ring);
    this.ringPos = 0;
    return true;
  }

  /** Where the next block lands in the ring (it may write BLOCK_ROOM bytes from there). */
  nextBlockAt(): number {
    return this.ringPos + BLOCK_ROOM > this.ring.length ? 0 : this.ringPos;
  }

  /** Where resume() puts a prefix of `n` bytes. */
  prefixAt(n: number): number {
    return this.ringPos + n > this.ring.length ? 0 : this.ringPos;
  }

  private reset(at: number, historyStart: number, historyLength: number): void {
    this.ringPos = historyStart + historyLength;
    this.prevEnd = 0;
    this.pos = at;
    this.blocksEnd = at;
    this.decoded = 0;
    this.pending = undefined;
    this.produced = 0;
    this.skimTo = 0;
    this.skimmedBody = undefined;
  }

  /**
   * The next `n` decoded bytes are not wanted: a raw (stored) block that ends within them is not
   * read; its header alone is, and the block is decoded as zeros of its size (an RLE block put in
   * its place), so the library's state goes on as before. Until then, input is read no further than
   * each step needs. The bytes after are right only where no later block reaches back into a
   * skimmed one, which the caller checks.
   */
  skimNext(n: number): void {
    this.skimTo = this.produced + n;
  }

  /**
   * Start at the frame whose header is at `at` (a window of `windowSize`, from parseFrameHeader);
   * false when the caller's ring cannot hold that window.
   */
  startFrame(at: number, windowSize: number): boolean {
    if (!this.fit(windowSize)) return false;
    this.reset(at, this.ringPos, 0);
    this.lib.ZSTD_decompressBegin(this.dctx);
    return true;
  }

  /**
   * Start over at `compressed` (a block header) with `header` (a synthesized frame header naming the
   * window) and `prefix` as the history; false when the library cannot take this prefix as raw bytes.
   * A prefix already in the ring where prefixAt puts it is not copied.
   */
  resume(header: Uint8Array, compressed: number, prefix: Uint8Array, windowSize: number): boolean {
    if (!this.fit(windowSize)) return false;
    if (prefix.length > this.ring.length - 2 * BLOCK_ROOM || header.length > this.header.length) return false;
    if (prefix.length >= 8 && new DataView(prefix.buffer, prefix.byteOffset).getUint32(0, true) === DICTIONARY_MAGIC) return false;
    const at = this.prefixAt(prefix.length);
    if (prefix.buffer !== this.ring.buffer || prefix.byteOffset !== this.ring.byteOffset + at) this.ring.set(prefix, at);
    this.reset(compressed, at, prefix.length);
    const rc = prefix.length > 0 ? this.lib.ZSTD_decompressBegin_usingDict(this.dctx, (this.ringAddress + at) as Pointer, prefix.length) : this.lib.ZSTD_decompressBegin(this.dctx);
    if (zstdError(this.lib, rc)) return false;
    this.header.set(header);
    let fed = 0;
    while (fed < header.length) {
      const want = Number(this.lib.ZSTD_nextSrcSizeToDecompress(this.dctx));
      if (want === 0 || fed + want > header.length) return false;
      const r = this.lib.ZSTD_decompressContinue(this.dctx, (this.ringAddress + this.ringPos) as Pointer, 0, (this.headerAddress + fed) as Pointer, want);
      if (zstdError(this.lib, r)) return false;
      fed += want;
    }
    return true;
  }

  /** The library waits for a block header: between two blocks of the frame (not before its first, not after its last). */
  atBlockBoundary(): boolean {
    return this.pending === undefined && this.decoded > 0 && this.lib.ZSTD_nextInputType(this.dctx) === ZSTD_INPUT.blockHeader;
  }

  /** Copy the last `w.length` bytes taken into `w` (at most the window and what was decoded since the start). */
  historyInto(w: Uint8Array): Uint8Array {
    const n = w.length;
    if (this.ringPos >= n) w.set(this.ring.subarray(this.ringPos - n, this.ringPos));
    else {
      w.set(this.ring.subarray(this.prevEnd - (n - this.ringPos), this.prevEnd), 0);
      w.set(this.ring.subarray(0, this.ringPos), n - this.ringPos);
    }
    return w;
  }

  /**
   * Decode the next block; its bytes, a view into the ring valid until the next call (empty at the
   * frame's end). Throws an ImageError at the compressed offset on corrupt or truncated input.
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
      const skimming = this.produced < this.skimTo;
      let source: Pointer;
      /** compressed bytes this step passes over */
      let advance = want;
      if (this.skimmedBody !== undefined) {
        source = (ptr(this.blockHeader) + 3) as Pointer;
        advance = this.skimmedBody;
        this.skimmedBody = undefined;
      } else if (skimming && kind === ZSTD_INPUT.blockHeader) {
        if (this.raw.readAt(this.blockHeader.subarray(0, 3), this.pos) < 3) throw this.truncated();
        const h = this.blockHeader;
        const word = h[0]! | (h[1]! << 8) | (h[2]! << 16);
        const size = word >>> 3;
        // a size no block can have, or past the input, is decoded as it is, for the library to refuse
        if (((word >>> 1) & 3) === RAW_BLOCK && size <= BLOCK_SIZE_MAX && this.pos + 3 + size <= this.raw.size && this.produced + size <= this.skimTo) {
          const rle = (word & 1) | (RLE_BLOCK << 1) | (size << 3);
          h[0] = rle & 0xff;
          h[1] = (rle >>> 8) & 0xff;
          h[2] = rle >>> 16;
          h[3] = 0;
          this.skimmedBody = size;
        }
        source = ptr(this.blockHeader);
      } else {
        const at = skimming ? this.input.needOnly(this.pos, want) : this.input.need(this.pos, want);
        if (this.input.available(this.pos) < want) throw this.truncated();
        source = (this.input.address + at) as Pointer;
      }
      if (this.nextBlockAt() !== this.ringPos) {
        this.prevEnd = this.ringPos;
        this.ringPos = 0;
      }
      const rc = this.lib.ZSTD_decompressContinue(this.dctx, (this.ringAddress + this.ringPos) as Pointer, BLOCK_ROOM, source, want);
      const err = zstdError(this.lib, rc);
      if (err) throw new ImageError(this.raw.locate(this.pos), "corrupt zstd data", err);
      this.pos += advance;
      if (kind !== ZSTD_INPUT.checksum) this.blocksEnd = this.pos;
      const n = Number(rc);
      if (n > 0) {
        const out = this.ring.subarray(this.ringPos, this.ringPos + n);
        this.ringPos += n;
        this.produced += n;
        return out;
      }
    }
  }

  private truncated(): ImageError {
    return new ImageError(this.raw.locate(this.pos), "truncated zstd data", `the stream ends inside a frame, after ${withCommas(this.decoded)} decompressed bytes of it`);
  }

  /** At the end of a frame's last block: check its checksum, if it has one, without decoding further. */
  finishFrame(): void {
    if (this.pending === undefined && this.lib.ZSTD_nextInputType(this.dctx) === ZSTD_INPUT.checksum) this.decodeBlock();
  }

  close(): void {
    this.lib.ZSTD_freeDCtx(this.dctx);
  }
}
