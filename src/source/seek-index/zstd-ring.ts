// A zstd stream from a seek point, decoded block by block straight into a caller's ring: the
// parallel restore's workers (parallel-decode-worker.ts) hand those bytes over where they landed,
// with no copy out of a decoder's own window.
import { INPUT_BUFFER_SIZE, decodeMemoryLimit } from "../../../native/ffi.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { SeekPoint, SkimBuffers, SkimmingSource } from "./codec.ts";
import { ImageError } from "../../errors.ts";
import { BLOCK_ROOM, InputWindow, ZstdBlocks, frameAt } from "./zstd-blocks.ts";
import { parseFrameHeader, resumeHeader, skippableFrameSize } from "./zstd-frame.ts";
import { unpackExtra, zstdCodec } from "./zstd.ts";

const EMPTY = new Uint8Array(0);
/** RFC 8878: a frame header is at most 18 bytes; a frame's checksum is 4 */
const FRAME_HEADER_MAX = 18;
const CHECKSUM_BYTES = 4;
/** Frames with larger windows are not skimmed (their ring would be as large): read as they are. */
const MAX_SKIMMED_WINDOW = 64 << 20;
/** What a frame too large for the ring is read in: by a streaming decoder, this much at a time. */
const STREAMED_PIECE = 256 << 10;

/**
 * Decodes from one seek point on, frame after frame, into `ring`. Before it writes ring[at, at + n)
 * it calls `reserve(at, n)`, which returns once the caller no longer needs those bytes. The ring is
 * written in turn, wrapping to its start, and keeps the window the library reads back from; a frame
 * whose window does not fit is decoded by libzstd's streaming decoder instead (copied into the ring).
 */
export class ZstdRingDecoder {
  private readonly input: InputWindow;
  private readonly blocks: ZstdBlocks;
  private frameOpen = false;
  /** a resumed frame's blocks end before its checksum: the next frame starts here */
  private resumedFrameEnd: number | undefined;
  /** a frame started with a synthesized header ends with the checksum it had this many bytes long */
  private resumedChecksum = 0;
  /** compressed offset of the next frame to read when no frame is open */
  private pos = 0;
  /** the rest of the stream from a frame on, when that frame's window is larger than the ring allows */
  private streamed: { source: ChunkSource; at: number } | undefined;

  constructor(
    private readonly raw: RandomAccessSource,
    private readonly ring: Uint8Array,
    private readonly reserve: (at: number, n: number) => void,
    inputBuffer?: Uint8Array,
    /** frames are opened so that skimNext can skim them (for a reader that checks what it gets) */
    private readonly skimmable = false,
  ) {
    this.input = new InputWindow(raw, inputBuffer ?? INPUT_BUFFER_SIZE);
    this.blocks = new ZstdBlocks(raw, this.input, ring);
  }

  /**
   * Where start() wants a window of `n` bytes, free for the caller to unpack it into (no copy then);
   * undefined when it cannot be kept in the ring.
   */
  windowRoom(n: number): Uint8Array | undefined {
    if (n === 0 || n > this.ring.length - 2 * BLOCK_ROOM) return undefined;
    const at = this.blocks.prefixAt(n);
    this.reserve(at, n);
    return this.ring.subarray(at, at + n);
  }

  /** the window of the frame open (or last opened) */
  windowSize = 0;

  /** Start over at `point`; false when its frame's window does not fit the ring (decode it otherwise). */
  start(point: SeekPoint): boolean {
    this.closeStream();
    this.frameOpen = false;
    this.resumedFrameEnd = undefined;
    this.resumedChecksum = 0;
    if (point.extra.length === 0) {
      this.pos = point.compressed;
      return true;
    }
    const { header, frameEnd } = unpackExtra(point, this.raw);
    const { windowSize } = parseFrameHeader(header, { file: this.raw.name });
    this.windowSize = windowSize;
    this.reserve(this.blocks.prefixAt(point.window.length), point.window.length);
    if (!this.blocks.resume(header, point.compressed, point.window, windowSize)) return false;
    this.frameOpen = true;
    this.resumedFrameEnd = frameEnd;
    return true;
  }

  /**
   * The next `n` decoded bytes are not wanted: the raw blocks among them in the open frame are not
   * read (ZstdBlocks.skimNext). Only for a decoder made `skimmable`, whose frames are opened with a
   * synthesized header (no checksum to fail); false where nothing can be skimmed.
   */
  skimNext(n: number): boolean {
    if (!this.skimmable || this.streamed) return false;
    if (!this.frameOpen && !this.openFrame()) return false;
    if (this.streamed) return false;
    this.blocks.skimNext(n);
    return true;
  }

  /** Open the next frame (past skippable ones); false at the end of the stream. */
  private openFrame(): boolean {
    for (;;) {
      if (this.pos >= this.raw.size) return false;
      const found = this.skimmable ? this.frameHeaderOnly(this.pos) : frameAt(this.raw, this.input, this.pos);
      if ("skip" in found) {
        this.pos += found.skip;
        continue;
      }
      const { frame } = found;
      this.windowSize = frame.windowSize;
      if (this.skimmable && frame.dictionaryId === 0) {
        // a header without the checksum: skimmed blocks decode to other bytes than the frame's
        if (this.blocks.resume(resumeHeader(frame.windowDescriptor), this.pos + frame.headerSize, EMPTY, frame.windowSize)) {
          this.frameOpen = true;
          this.resumedChecksum = frame.checksum ? CHECKSUM_BYTES : 0;
          return true;
        }
      } else if (this.blocks.startFrame(this.pos, frame.windowSize)) {
        this.frameOpen = true;
        return true;
      }
      const source = zstdCodec.resume(this.raw, { decoded: 0, compressed: this.pos, bits: 0, window: EMPTY, extra: EMPTY });
      this.streamed = { source, at: this.blocks.nextBlockAt() };
      return true;
    }
  }

  /** What starts at `at`, reading no more than a frame header. */
  private frameHeaderOnly(at: number): ReturnType<typeof frameAt> {
    const headAt = this.input.needOnly(at, Math.min(FRAME_HEADER_MAX, this.raw.size - at));
    const head = this.input.buf.subarray(headAt, headAt + Math.min(FRAME_HEADER_MAX, this.input.available(at)));
    const skip = skippableFrameSize(head);
    if (skip === undefined) return { frame: parseFrameHeader(head, this.raw.locate(at)) };
    if (at + skip > this.raw.size) throw new ImageError(this.raw.locate(at), "corrupt zstd data", "the stream ends inside a skippable frame");
    return { skip };
  }

  /** The next decoded bytes, a view into the ring (empty at the end of the stream). */
  next(): Uint8Array {
    for (;;) {
      if (this.streamed) return this.nextStreamed(this.streamed);
      if (!this.frameOpen && !this.openFrame()) return EMPTY;
      if (this.streamed) continue;
      this.reserve(this.blocks.nextBlockAt(), BLOCK_ROOM);
      const out = this.blocks.next();
      if (out.length > 0) return out;
      this.pos = this.resumedFrameEnd ?? this.blocks.pos + this.resumedChecksum;
      this.frameOpen = false;
      this.resumedFrameEnd = undefined;
      this.resumedChecksum = 0;
    }
  }

  private nextStreamed(s: { source: ChunkSource; at: number }): Uint8Array {
    if (s.at + STREAMED_PIECE > this.ring.length) s.at = 0;
    this.reserve(s.at, STREAMED_PIECE);
    const n = s.source.read(this.ring.subarray(s.at, s.at + STREAMED_PIECE));
    const out = this.ring.subarray(s.at, s.at + n);
    s.at += n;
    return out;
  }

  /**
   * Where a span ends: check the trailer of a frame that ends there too (its checksum), as a
   * decoder reading on would.
   */
  finishSpan(): void {
    if (this.streamed) this.streamed.source.read(new Uint8Array(1));
    else if (this.frameOpen) this.blocks.finishFrame();
  }

  close(): void {
    this.closeStream();
    this.blocks.close();
  }

  private closeStream(): void {
    this.streamed?.source.close();
    this.streamed = undefined;
  }
}

/**
 * The decoded stream from `point` on, whose reader may say that it does not want the next bytes
 * (skimNext): the raw blocks among those are not read (ZstdBlocks.skimNext), so what follows is
 * right only where no block reaches back into one of them; the reader checks it against the
 * stretch hashes. `buffers.ring` is used when it is large enough for the frame's window, else
 * replaced by one that is.
 */
export function skimZstd(raw: RandomAccessSource, point: SeekPoint, buffers: SkimBuffers): SkimmingSource {
  let windowSize: number;
  if (point.extra.length > 0) {
    windowSize = parseFrameHeader(unpackExtra(point, raw).header, raw.locate(point.compressed)).windowSize;
  } else {
    const head = new Uint8Array(Math.min(FRAME_HEADER_MAX, raw.size - point.compressed));
    raw.readAt(head, point.compressed);
    windowSize = skippableFrameSize(head) === undefined ? parseFrameHeader(head, raw.locate(point.compressed)).windowSize : 0;
  }
  const ringSize = Math.max(windowSize, 1 << 10) + 2 * BLOCK_ROOM;
  // a window past the decode memory limit goes to the streaming decoder, which refuses it
  if (windowSize > Math.min(MAX_SKIMMED_WINDOW, decodeMemoryLimit().window)) return Object.assign(zstdCodec.resume(raw, point, buffers.input), { skimNext: () => false, reach: windowSize });
  if (!buffers.ring || buffers.ring.length < ringSize) buffers.ring = new Uint8Array(ringSize);
  const decoder = new ZstdRingDecoder(raw, buffers.ring, () => {}, buffers.input, true);
  if (!decoder.start(point)) {
    decoder.close();
    return Object.assign(zstdCodec.resume(raw, point, buffers.input), { skimNext: () => false, reach: windowSize });
  }
  let out: Uint8Array = EMPTY;
  let taken = 0;
  return {
    name: `${raw.name} (zstd)`,
    size: undefined,
    read(into: Uint8Array): number {
      if (taken === out.length) {
        out = decoder.next();
        taken = 0;
        if (out.length === 0) return 0;
      }
      const n = Math.min(into.length, out.length - taken);
      into.set(out.subarray(taken, taken + n));
      taken += n;
      return n;
    },
    skimNext(n: number): boolean {
      const left = out.length - taken;
      return n <= left || decoder.skimNext(n - left);
    },
    get reach() {
      // before its first frame is opened: the point's
      return decoder.windowSize || windowSize;
    },
    locate: (offset: number) => ({ file: raw.name, offset, decoded: "zstd" }),
    close: () => decoder.close(),
  };
}
