// A zstd stream from a seek point, decoded block by block straight into a caller's ring: the
// parallel restore's workers (parallel-decode-worker.ts) hand those bytes over where they landed,
// with no copy out of a decoder's own window.
import { INPUT_BUFFER_SIZE } from "../../../native/ffi.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { SeekPoint } from "./codec.ts";
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

  /**
   * Start over at `point`; false when its frame's window does not fit the ring (decode it otherwise).
   * With `skimTo`, the raw blocks of the point's frame that end within that many decoded bytes are
   * not read (ZstdBlocks.skimUntil): a frame start is then resumed with a synthesized header, whose
   * frame has no checksum to fail.
   */
  start(point: SeekPoint, skimTo = 0): boolean {
    this.closeStream();
    this.frameOpen = false;
    this.resumedFrameEnd = undefined;
    this.resumedChecksum = 0;
    if (point.extra.length === 0) {
      this.pos = point.compressed;
      if (skimTo > 0) this.startSkimming(point.compressed, skimTo);
      return true;
    }
    const { header, frameEnd } = unpackExtra(point, this.raw);
    const { windowSize } = parseFrameHeader(header, { file: this.raw.name });
    this.reserve(this.blocks.prefixAt(point.window.length), point.window.length);
    if (!this.blocks.resume(header, point.compressed, point.window, windowSize)) return false;
    this.frameOpen = true;
    this.resumedFrameEnd = frameEnd;
    this.blocks.skimUntil(skimTo);
    return true;
  }

  /** Open the frame at `at` with a synthesized header, skimming; left closed (read as it is) where that cannot be. */
  private startSkimming(at: number, skimTo: number): void {
    const headAt = this.input.needOnly(at, Math.min(FRAME_HEADER_MAX, this.raw.size - at));
    const head = this.input.buf.subarray(headAt, headAt + this.input.available(at));
    if (skippableFrameSize(head) !== undefined) return;
    const frame = parseFrameHeader(head, this.raw.locate(at));
    if (frame.dictionaryId !== 0) return;
    if (!this.blocks.resume(resumeHeader(frame.windowDescriptor), at + frame.headerSize, EMPTY, frame.windowSize)) return;
    this.frameOpen = true;
    this.resumedChecksum = frame.checksum ? CHECKSUM_BYTES : 0;
    this.blocks.skimUntil(skimTo);
  }

  /** The next decoded bytes, a view into the ring (empty at the end of the stream). */
  next(): Uint8Array {
    for (;;) {
      if (this.streamed) return this.nextStreamed(this.streamed);
      if (!this.frameOpen) {
        if (this.pos >= this.raw.size) return EMPTY;
        const found = frameAt(this.raw, this.input, this.pos);
        if ("skip" in found) {
          this.pos += found.skip;
          continue;
        }
        if (!this.blocks.startFrame(this.pos, found.frame.windowSize)) {
          const source = zstdCodec.resume(this.raw, { decoded: 0, compressed: this.pos, bits: 0, window: EMPTY, extra: EMPTY });
          this.streamed = { source, at: this.blocks.nextBlockAt() };
          continue;
        }
        this.frameOpen = true;
      }
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
 * The decoded stream from `point` on for a reader that wants nothing of its first `skimTo` bytes: the
 * raw blocks among those are not read (ZstdBlocks.skimUntil), so what follows is right only where
 * no block reaches back into one of them; the reader checks it against the stretch hashes.
 */
export function skimZstd(raw: RandomAccessSource, point: SeekPoint, skimTo: number, inputBuffer?: Uint8Array): ChunkSource {
  let windowSize: number;
  if (point.extra.length > 0) {
    windowSize = parseFrameHeader(unpackExtra(point, raw).header, raw.locate(point.compressed)).windowSize;
  } else {
    const head = new Uint8Array(Math.min(FRAME_HEADER_MAX, raw.size - point.compressed));
    raw.readAt(head, point.compressed);
    windowSize = skippableFrameSize(head) === undefined ? parseFrameHeader(head, raw.locate(point.compressed)).windowSize : 0;
  }
  if (windowSize > MAX_SKIMMED_WINDOW) return zstdCodec.resume(raw, point, inputBuffer);
  const decoder = new ZstdRingDecoder(raw, new Uint8Array(Math.max(windowSize, 1 << 10) + 2 * BLOCK_ROOM), () => {}, inputBuffer);
  if (!decoder.start(point, skimTo)) {
    decoder.close();
    return zstdCodec.resume(raw, point, inputBuffer);
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
    locate: (offset: number) => ({ file: raw.name, offset, decoded: "zstd" }),
    close: () => decoder.close(),
  };
}
