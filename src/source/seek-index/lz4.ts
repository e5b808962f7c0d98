// The LZ4 frame format (github.com/lz4/lz4 doc/lz4_Frame_format.md): a frame descriptor, blocks
// each behind a 4-byte size, an end mark; blocks are independent when the descriptor says so.
import { type Pointer, ptr } from "bun:ffi";
import { ImageError, withCommas } from "../../errors.ts";
import { Lz4Decoder, Lz4FrameStream } from "../../../native/lz4.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import type { BuildOptions, CodecIndex, SeekCodec, SeekPoint } from "./codec.ts";
import { type Part, PartsSource, PointCollector, rawFrom } from "./resume-support.ts";

const FRAME_MAGIC = 0x184d2204;
const SKIPPABLE_MAGIC = 0x184d2a50;
const FLG_INDEPENDENT = 0x20;
const FLG_BLOCK_CHECKSUM = 0x10;
const FLG_CONTENT_SIZE = 0x08;
const FLG_CONTENT_CHECKSUM = 0x04;
const FLG_DICT_ID = 0x01;
const BLOCK_MAX: Record<number, number> = { 4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20 };
/** `extra` of a block point: FLG, BD, the end mark's offset (u64), the frame's end (u64) */
const EXTRA_SIZE = 18;
const OUT = 4 << 20;
const EMPTY = new Uint8Array(0);

function corrupt(raw: RandomAccessSource, offset: number, detail: string): never {
  throw new ImageError(raw.locate(offset), "corrupt lz4 data", detail);
}

function truncated(raw: RandomAccessSource, offset: number, decoded: number): never {
  throw new ImageError(raw.locate(offset), "truncated lz4 data", `the input ends inside a frame, after ${withCommas(decoded)} decompressed bytes`);
}

function u32At(raw: RandomAccessSource, offset: number, decoded: number): number {
  const b = new Uint8Array(4);
  if (raw.readAt(b, offset) !== 4) truncated(raw, offset, decoded);
  return new DataView(b.buffer).getUint32(0, true);
}

function build(raw: RandomAccessSource, opts: BuildOptions): CodecIndex {
  const spacing = Math.max(1, opts.spacing);
  const points = new PointCollector();
  const lz = new Lz4FrameStream(raw.locate(0));
  let inBuf = new Uint8Array(64 * 1024);
  const out = new Uint8Array(OUT);
  const outAddress = ptr(out);
  let decoded = 0;
  let lastPoint = -Infinity;
  let frames = 0;
  let independentPoints = 0;
  let linked = false;

  /** Hand raw[start, end) to LZ4F and drain what it decodes. */
  const feed = (start: number, end: number) => {
    const length = end - start;
    if (inBuf.length < length) inBuf = new Uint8Array(length);
    if (raw.readAt(inBuf.subarray(0, length), start) !== length) truncated(raw, raw.size, decoded);
    const inAddress = ptr(inBuf);
    let at = 0;
    for (;;) {
      const err = lz.decompress((inAddress + at) as Pointer, length - at, outAddress, out.length);
      if (err) corrupt(raw, start + at + lz.consumed, err);
      at += lz.consumed;
      if (lz.produced > 0) {
        points.feed(out.subarray(0, lz.produced));
        decoded += lz.produced;
      }
      if (lz.consumed === 0 && lz.produced === 0) break;
    }
    if (at !== length) corrupt(raw, start + at, "the decoder stopped inside a block");
  };

  try {
    let pos = 0;
    while (pos < raw.size) {
      opts.onProgress?.(pos);
      const magic = u32At(raw, pos, decoded);
      if ((magic & 0xfffffff0) === SKIPPABLE_MAGIC) {
        const size = u32At(raw, pos + 4, decoded);
        if (pos + 8 + size > raw.size) truncated(raw, pos + 4, decoded);
        // nothing for the decoder: it expects the next frame either way
        pos += 8 + size;
        continue;
      }
      if (magic !== FRAME_MAGIC) corrupt(raw, pos, frames === 0 ? "not an lz4 frame" : "data after the last frame is not an lz4 frame");
      frames++;
      const desc = new Uint8Array(2);
      if (raw.readAt(desc, pos + 4) !== 2) truncated(raw, pos + 4, decoded);
      const flg = desc[0]!;
      const blockMax = BLOCK_MAX[(desc[1]! >> 4) & 7];
      if (blockMax === undefined) corrupt(raw, pos + 5, "block maximum size not 4..7");
      const headerLength = 4 + 2 + (flg & FLG_CONTENT_SIZE ? 8 : 0) + (flg & FLG_DICT_ID ? 4 : 0) + 1;
      const independent = (flg & FLG_INDEPENDENT) !== 0 && (flg & FLG_DICT_ID) === 0;
      if (!independent) linked = true;
      if (decoded - lastPoint >= spacing) {
        points.add({ decoded, compressed: pos, bits: 0, window: EMPTY, extra: EMPTY, trusted: true });
        lastPoint = decoded;
      }
      feed(pos, pos + headerLength);
      const framePoints: SeekPoint[] = [];
      let p = pos + headerLength;
      for (let block = 0; ; block++) {
        const word = u32At(raw, p, decoded);
        if (word === 0) break;
        const length = word & 0x7fffffff;
        if (length > blockMax) corrupt(raw, p, `block of ${withCommas(length)} bytes, above the frame's maximum of ${withCommas(blockMax)}`);
        const end = p + 4 + length + (flg & FLG_BLOCK_CHECKSUM ? 4 : 0);
        if (end > raw.size) truncated(raw, raw.size, decoded);
        if (independent && block > 0 && decoded - lastPoint >= spacing) {
          const point = { decoded, compressed: p, bits: 0, window: EMPTY, extra: new Uint8Array(EXTRA_SIZE) };
          points.add(point);
          framePoints.push(point);
          lastPoint = decoded;
        }
        feed(p, end);
        p = end;
      }
      const frameEnd = p + 4 + (flg & FLG_CONTENT_CHECKSUM ? 4 : 0);
      if (frameEnd > raw.size) truncated(raw, raw.size, decoded);
      for (const point of framePoints) {
        const v = new DataView(point.extra.buffer);
        point.extra[0] = flg & ~(FLG_CONTENT_SIZE | FLG_CONTENT_CHECKSUM);
        point.extra[1] = desc[1]!;
        v.setUint32(2, p >>> 0, true);
        v.setUint32(6, Math.floor(p / 2 ** 32), true);
        v.setUint32(10, frameEnd >>> 0, true);
        v.setUint32(14, Math.floor(frameEnd / 2 ** 32), true);
      }
      independentPoints += framePoints.length;
      feed(p, frameEnd);
      pos = frameEnd;
    }
    if (frames === 0) corrupt(raw, 0, "no lz4 frame");
  } finally {
    lz.end();
  }
  opts.onProgress?.(raw.size);
  const index: CodecIndex = { decodedSize: decoded, ...points.finish() };
  if (frames === 1 && independentPoints === 0) {
    index.notResumable = linked
      ? "the lz4 frame's blocks are linked (lz4 -BD): reads decode it from the start"
      : "the lz4 frame has a single block: reads decode it from the start";
  }
  return index;
}

/** A frame of the blocks from one on: its descriptor without content size or checksum, those blocks, the end mark, then the frames after. */
function resumeBlock(raw: RandomAccessSource, point: SeekPoint): PartsSource {
  const v = new DataView(point.extra.buffer, point.extra.byteOffset, point.extra.byteLength);
  const endMark = v.getUint32(2, true) + v.getUint32(6, true) * 2 ** 32;
  const frameEnd = v.getUint32(10, true) + v.getUint32(14, true) * 2 ** 32;
  if (endMark < point.compressed || frameEnd < endMark + 4 || frameEnd > raw.size) corrupt(raw, point.compressed, "lz4 seek point does not fit the frame");
  const header = new Uint8Array(7);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, FRAME_MAGIC, true);
  header[4] = point.extra[0]!;
  header[5] = point.extra[1]!;
  header[6] = (Bun.hash.xxHash32(header.subarray(4, 6), 0) >>> 8) & 0xff;
  const parts: Part[] = [
    { bytes: header, at: point.compressed },
    { start: point.compressed, end: endMark + 4 },
    { start: frameEnd, end: raw.size },
  ];
  return new PartsSource(raw, parts);
}

export const lz4SeekCodec: SeekCodec = {
  compression: "lz4",
  build,
  resume: (raw, point, inputBuffer) => new Lz4Decoder(point.extra.length === EXTRA_SIZE ? resumeBlock(raw, point) : rawFrom(raw, point.compressed), inputBuffer),
};
