// The zstd frame layout as RFC 8878 section 3.1 defines it (frame header, block headers, skippable frames).
import { ImageError, type Location } from "../../errors.ts";

export const ZSTD_MAGIC = 0xfd2fb528;
export const BLOCK_SIZE_MAX = 128 << 10;

export interface FrameHeader {
  /** bytes of the header, magic included */
  headerSize: number;
  windowSize: number;
  /** the Window_Descriptor byte to put in a synthesized header */
  windowDescriptor: number;
  contentSize: number | undefined;
  checksum: boolean;
  dictionaryId: number;
}

/** A skippable frame's total size (magic 0x184D2A5?, then a 4-byte length), or undefined when `b` starts with none. */
export function skippableFrameSize(b: Uint8Array): number | undefined {
  if (b.length < 8 || (b[0]! & 0xf0) !== 0x50 || b[1] !== 0x2a || b[2] !== 0x4d || b[3] !== 0x18) return undefined;
  return 8 + ((b[4]! | (b[5]! << 8) | (b[6]! << 16) | (b[7]! << 24)) >>> 0);
}

/** Parse a frame header from `b` (at least 18 bytes unless the stream ends sooner). */
export function parseFrameHeader(b: Uint8Array, where: Location): FrameHeader {
  const fail = (what: string): never => {
    throw new ImageError(where, "corrupt zstd data", what);
  };
  if (b.length < 6) fail("the stream ends inside a frame header");
  const magic = (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  if (magic !== ZSTD_MAGIC) fail(`no frame magic (${magic.toString(16).padStart(8, "0")})`);
  const fhd = b[4]!;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd & 0x20) !== 0;
  if (fhd & 0x08) fail("reserved bit set in the frame header");
  const checksum = (fhd & 0x04) !== 0;
  const didFlag = fhd & 3;
  let p = 5;
  let windowDescriptor = -1;
  let windowSize = 0;
  if (!singleSegment) {
    windowDescriptor = b[p++]!;
    const exponent = windowDescriptor >> 3;
    const windowLog = 10 + exponent;
    const base = 2 ** windowLog;
    windowSize = base + (base / 8) * (windowDescriptor & 7);
  }
  const didSize = [0, 1, 2, 4][didFlag]!;
  const fcsSize = fcsFlag === 0 ? (singleSegment ? 1 : 0) : [0, 2, 4, 8][fcsFlag]!;
  const headerSize = p + didSize + fcsSize;
  if (b.length < headerSize) fail("the stream ends inside a frame header");
  let dictionaryId = 0;
  for (let i = didSize - 1; i >= 0; i--) dictionaryId = dictionaryId * 256 + b[p + i]!;
  p += didSize;
  let contentSize: number | undefined;
  if (fcsSize > 0) {
    let v = 0;
    for (let i = fcsSize - 1; i >= 0; i--) v = v * 256 + b[p + i]!;
    contentSize = fcsSize === 2 ? v + 256 : v;
  }
  if (singleSegment) {
    windowSize = contentSize!;
    windowDescriptor = descriptorFor(Math.max(windowSize, 1024));
  }
  return { headerSize, windowSize, windowDescriptor, contentSize, checksum, dictionaryId };
}

/** The smallest Window_Descriptor whose window holds `size` bytes. */
function descriptorFor(size: number): number {
  for (let exponent = 0; exponent < 32; exponent++) {
    const base = 2 ** (10 + exponent);
    for (let mantissa = 0; mantissa < 8; mantissa++) if (base + (base / 8) * mantissa >= size) return (exponent << 3) | mantissa;
  }
  return 0xff;
}

/**
 * A frame header that starts decoding at a block boundary: the original window descriptor, and
 * no content size, checksum or dictionary (the decoder is handed the window as a prefix instead).
 */
export function resumeHeader(windowDescriptor: number): Uint8Array {
  return Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, 0x00, windowDescriptor);
}
