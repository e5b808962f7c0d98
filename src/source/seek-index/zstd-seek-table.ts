// The seek table of zstd's seekable format (facebook/zstd contrib/seekable_format/
// zstd_seekable_compression_format.md): the last skippable frame lists every frame's compressed and
// decompressed size, so each frame start is a point without decoding anything.
import type { RandomAccessSource } from "../chunk-source.ts";
import { parseFrameHeader, skippableFrameSize, ZSTD_MAGIC } from "./zstd-frame.ts";

const SEEKABLE_MAGIC = 0x8f92eab1;
const SKIPPABLE_SEEK_TABLE_MAGIC = 0x184d2a5e;
const FOOTER_BYTES = 9;
const SKIPPABLE_HEADER_BYTES = 8;
const CHECKSUM_FLAG = 0x80;
const RESERVED_BITS = 0x7c;
/** A table larger than this is not read whole (2^27 frames is the format's own limit, 1.5 GiB of table). */
const MAX_TABLE_BYTES = 64 << 20;
const FRAME_HEADER_PEEK = 18;

export interface SeekTableFrame {
  compressed: number;
  decoded: number;
}

/**
 * The frame starts the file's seek table gives, with their decoded offsets; undefined where the
 * file ends with no seek table, or with one that does not describe it: sizes that do not add up to
 * the file, a frame start that is not a frame, a frame whose header states another content size.
 * (Then the file is indexed by decoding it, as any other.)
 */
export function readSeekTable(raw: RandomAccessSource): { frames: SeekTableFrame[]; decodedSize: number } | undefined {
  if (raw.size < SKIPPABLE_HEADER_BYTES + FOOTER_BYTES) return undefined;
  const footer = readExactly(raw, raw.size - FOOTER_BYTES, FOOTER_BYTES);
  const fv = new DataView(footer.buffer);
  if (fv.getUint32(5, true) !== SEEKABLE_MAGIC) return undefined;
  const count = fv.getUint32(0, true);
  const descriptor = footer[4]!;
  if (descriptor & RESERVED_BITS) return undefined;
  const entryBytes = descriptor & CHECKSUM_FLAG ? 12 : 8;
  const tableBytes = count * entryBytes + FOOTER_BYTES;
  const frameBytes = SKIPPABLE_HEADER_BYTES + tableBytes;
  if (tableBytes > MAX_TABLE_BYTES || frameBytes > raw.size) return undefined;
  const tableFrameAt = raw.size - frameBytes;
  const table = readExactly(raw, tableFrameAt, frameBytes - FOOTER_BYTES);
  const tv = new DataView(table.buffer);
  if (tv.getUint32(0, true) !== SKIPPABLE_SEEK_TABLE_MAGIC || tv.getUint32(4, true) !== tableBytes) return undefined;
  const frames: SeekTableFrame[] = [];
  const head = new Uint8Array(FRAME_HEADER_PEEK);
  let compressed = 0;
  let decoded = 0;
  for (let i = 0; i < count; i++) {
    const at = SKIPPABLE_HEADER_BYTES + i * entryBytes;
    const compressedSize = tv.getUint32(at, true);
    const decodedSize = tv.getUint32(at + 4, true);
    if (compressedSize === 0 || compressed + compressedSize > tableFrameAt) return undefined;
    if (!frameAgrees(raw, compressed, decodedSize, head)) return undefined;
    if (decodedSize > 0) frames.push({ compressed, decoded });
    compressed += compressedSize;
    decoded += decodedSize;
    if (decoded > Number.MAX_SAFE_INTEGER) return undefined;
  }
  if (compressed !== tableFrameAt) return undefined;
  return { frames, decodedSize: decoded };
}

/** A zstd frame (its content size, where stated, the table's) or a skippable frame of no content at `at`. */
function frameAgrees(raw: RandomAccessSource, at: number, decodedSize: number, buffer: Uint8Array): boolean {
  const head = buffer.subarray(0, Math.min(FRAME_HEADER_PEEK, raw.size - at));
  if (raw.readAt(head, at) < head.length) return false;
  if (skippableFrameSize(head) !== undefined) return decodedSize === 0;
  if (head.length < 4 || new DataView(head.buffer, head.byteOffset, head.length).getUint32(0, true) !== ZSTD_MAGIC) return false;
  try {
    const header = parseFrameHeader(head, raw.locate(at));
    return header.contentSize === undefined || header.contentSize === decodedSize;
  } catch {
    return false;
  }
}

function readExactly(raw: RandomAccessSource, at: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  return raw.readAt(bytes, at) === length ? bytes : new Uint8Array(length);
}
