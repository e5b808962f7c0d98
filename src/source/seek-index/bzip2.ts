// bzip2 streams ("BZh" + level, blocks each opening with the 48-bit magic 0x314159265359 at any bit
// offset, then 0x177245385090 + the combined CRC, padded to a byte): Joe Tsai, "BZip2 format specification" (2016).
import { type Pointer, ptr } from "bun:ffi";
import { ImageError, withCommas } from "../../errors.ts";
import { BZ_ERRORS, BZ_OK, BZ_STREAM_END, Bzip2Decoder, BzipStream } from "../../../native/bz2.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { BuildOptions, CodecIndex, SeekCodec, SeekPoint } from "./codec.ts";
import { PointCollector, rawFrom } from "./resume-support.ts";

const BLOCK_MAGIC = 0x314159265359;
const EOS_MAGIC = 0x177245385090;
const MAGICS = [BLOCK_MAGIC, EOS_MAGIC] as const;
const TWO24 = 2 ** 24;
/** `extra`: [level digit, kind, end-of-stream bit offset (u64 LE), combined CRC of the blocks from here (u32 LE)] */
const KIND_STREAM = 0;
const KIND_BLOCK = 1;
const EXTRA_SIZE = 14;
const BUILD_IN = 1 << 20;
const BUILD_OUT = 1 << 20;
const EMPTY = new Uint8Array(0);

/**
 * For each value of a byte, the (magic, shift) pairs whose second byte it can be: a magic starting
 * at bit `s` of byte i puts bits 8-s..15-s of itself in byte i+1. Bit 8*m + s.
 */
const SECOND_BYTE = (() => {
  const t = new Uint16Array(256);
  MAGICS.forEach((m, k) => {
    for (let s = 0; s < 8; s++) t[Math.floor(m / 2 ** (32 + s)) & 0xff]! |= 1 << (8 * k + s);
  });
  return t;
})();

/** `n` (≤ 32) bits of `b` from bit `bit` on, most significant first (bzip2's bit order). */
function bitsAt(b: Uint8Array, bit: number, n: number): number {
  let v = 0;
  for (let i = 0; i < n; i++) {
    const at = bit + i;
    v = v * 2 + ((b[at >>> 3]! >> (7 - (at & 7))) & 1);
  }
  return v;
}

/** Which magic (0 block, 1 end of stream) starts at bit `s` of byte `i`, or -1. Needs b[i..i+6]. */
function magicAt(b: Uint8Array, i: number, s: number): number {
  const w0 = ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
  const w1 = ((b[i + 3]! << 24) | (b[i + 4]! << 16) | (b[i + 5]! << 8) | b[i + 6]!) >>> 0;
  const hi = (w0 >>> (8 - s)) & 0xffffff;
  const lo = (w1 >>> (8 - s)) & 0xffffff;
  const v = hi * TWO24 + lo;
  return v === BLOCK_MAGIC ? 0 : v === EOS_MAGIC ? 1 : -1;
}

function rotl1(c: number): number {
  return ((c << 1) | (c >>> 31)) >>> 0;
}

function corrupt(raw: RandomAccessSource, offset: number, detail: string): never {
  throw new ImageError(raw.locate(offset), "corrupt bzip2 data", detail);
}

function truncated(raw: RandomAccessSource, offset: number, decoded: number): never {
  throw new ImageError(raw.locate(offset), "truncated bzip2 data", `the input ends inside a stream, after ${withCommas(decoded)} decompressed bytes`);
}

function build(raw: RandomAccessSource, opts: BuildOptions): CodecIndex {
  const spacing = Math.max(1, opts.spacing);
  const points = new PointCollector();
  const bz = new BzipStream(raw.locate(0));
  const buf = new Uint8Array(BUILD_IN);
  const bufAddress = ptr(buf);
  const out = new Uint8Array(BUILD_OUT);
  const outAddress = ptr(out);
  let inBase = 0;
  let inEnd = 0;
  let inStart = 0;
  let inputEnded = false;
  let scanI = 0;
  let scanS = 0;
  let decoded = 0;
  let lastPoint = -Infinity;

  const fill = () => {
    const keep = Math.min(inStart, scanI);
    buf.copyWithin(0, keep, inEnd);
    inBase += keep;
    inEnd -= keep;
    inStart -= keep;
    scanI -= keep;
    const n = inEnd < buf.length ? raw.readAt(buf.subarray(inEnd), inBase + inEnd) : 0;
    if (n === 0) inputEnded = true;
    inEnd += n;
    opts.onProgress?.(inBase + inEnd);
  };

  /** Decode what lies before buf[limit]; true when the stream ended on the way. */
  const feedTo = (limit: number): boolean => {
    for (;;) {
      const avail = limit - inStart;
      const rc = bz.decompress((bufAddress + inStart) as Pointer, avail, outAddress, out.length);
      const consumed = avail - bz.availIn;
      const produced = out.length - bz.availOut;
      inStart += consumed;
      if (produced > 0) {
        points.feed(out.subarray(0, produced));
        decoded += produced;
      }
      if (rc === BZ_STREAM_END) return true;
      if (rc !== BZ_OK) corrupt(raw, inBase + inStart, BZ_ERRORS[rc] ?? `BZ2_bzDecompress error ${rc}`);
      if (consumed === 0 && produced === 0) return false;
    }
  };

  try {
    for (let streams = 0; ; streams++) {
      while (inEnd - inStart < 4 && !inputEnded) fill();
      if (inStart === inEnd) {
        if (streams === 0) truncated(raw, 0, 0);
        break;
      }
      const level = buf[inStart + 3]!;
      if (inEnd - inStart < 4 || buf[inStart] !== 0x42 || buf[inStart + 1] !== 0x5a || buf[inStart + 2] !== 0x68 || level < 0x31 || level > 0x39) {
        corrupt(raw, inBase + inStart, BZ_ERRORS[-5]!);
      }
      if (decoded - lastPoint >= spacing) {
        points.add({ decoded, compressed: inBase + inStart, bits: 0, window: EMPTY, extra: Uint8Array.of(level, KIND_STREAM), trusted: true });
        lastPoint = decoded;
      }
      bz.init();
      const blockCrcs: number[] = [];
      const streamPoints: { point: SeekPoint; block: number }[] = [];
      let eosBit = -1;
      let storedCrc = 0;
      let ended = false;
      scanI = inStart + 4;
      scanS = 0;
      while (!ended) {
        // the next candidate magic at or after (scanI, scanS), with its CRC's bytes in the buffer
        const last = inputEnded ? inEnd - 7 : inEnd - 12;
        let cand = -1;
        let kind = -1;
        for (; scanI < last && cand < 0; scanI++, scanS = 0) {
          const shifts = SECOND_BYTE[buf[scanI + 1]!]!;
          if (shifts === 0) continue;
          for (; scanS < 8; scanS++) {
            if (((shifts >> scanS) | (shifts >> (scanS + 8))) & 1 && (kind = magicAt(buf, scanI, scanS)) >= 0) {
              cand = scanI;
              break;
            }
          }
          if (cand >= 0) break;
        }
        if (cand < 0) {
          if (inputEnded) {
            if (!feedTo(inEnd)) truncated(raw, inBase + inStart, decoded);
            ended = true;
            break;
          }
          if (feedTo(Math.max(inStart, scanI))) ended = true;
          else fill();
          continue;
        }
        const shift = scanS;
        // step past this candidate for the next scan
        if (++scanS === 8) {
          scanS = 0;
          scanI++;
        }
        if (feedTo(shift === 0 ? cand : cand + 1)) {
          ended = true;
          break;
        }
        if (!bz.waitsForBlockHeader()) continue;
        const bit = (inBase + cand) * 8 + shift;
        const crc = bitsAt(buf, cand * 8 + shift + 48, 32);
        if (kind === 1) {
          eosBit = bit;
          storedCrc = crc;
          while (!feedTo(inEnd)) {
            if (inputEnded) truncated(raw, inBase + inStart, decoded);
            fill();
          }
          ended = true;
          break;
        }
        blockCrcs.push(crc);
        if (blockCrcs.length > 1 && decoded - lastPoint >= spacing) {
          const point = { decoded, compressed: Math.floor(bit / 8), bits: bit % 8, window: EMPTY, extra: new Uint8Array(EXTRA_SIZE) };
          points.add(point);
          streamPoints.push({ point, block: blockCrcs.length - 1 });
          lastPoint = decoded;
        }
      }
      // the blocks found must add up to the stream's combined CRC, else their points are not trusted
      let combined = 0;
      for (const c of blockCrcs) combined = (rotl1(combined) ^ c) >>> 0;
      if (eosBit < 0 || combined !== storedCrc) points.discard(streamPoints.map((p) => p.point));
      else {
        for (const { point, block } of streamPoints) {
          let suffix = 0;
          for (let k = block; k < blockCrcs.length; k++) suffix = (rotl1(suffix) ^ blockCrcs[k]!) >>> 0;
          const v = new DataView(point.extra.buffer);
          point.extra[0] = level;
          point.extra[1] = KIND_BLOCK;
          v.setUint32(2, eosBit >>> 0, true);
          v.setUint32(6, Math.floor(eosBit / 2 ** 32), true);
          v.setUint32(10, suffix, true);
        }
      }
      scanI = inStart;
    }
  } finally {
    bz.end();
  }
  return { decodedSize: decoded, ...points.finish() };
}

/**
 * A bzip2 stream made from the rest of one: "BZh<level>", the original bits from a block's magic
 * to the end-of-stream magic shifted to byte alignment, that magic with the combined CRC of just
 * these blocks, then the original bytes after the stream (further streams).
 */
class ShiftedStream implements ChunkSource {
  readonly size = undefined;
  readonly name: string;
  private readonly header: Uint8Array;
  private readonly tail: Uint8Array;
  private readonly first: number;
  private readonly shift: number;
  private readonly bodyBytes: number;
  private readonly streamEnd: number;
  private readonly scratch = new Uint8Array(64 * 1024 + 1);
  private pos = 0;

  constructor(
    private readonly raw: RandomAccessSource,
    point: SeekPoint,
  ) {
    this.name = raw.name;
    const v = new DataView(point.extra.buffer, point.extra.byteOffset, point.extra.byteLength);
    const eosBit = v.getUint32(2, true) + v.getUint32(6, true) * 2 ** 32;
    const suffixCrc = v.getUint32(10, true);
    const startBit = point.compressed * 8 + point.bits;
    if (point.extra.length !== EXTRA_SIZE || eosBit <= startBit) throw new ImageError(raw.locate(point.compressed), "bzip2 seek point does not fit the stream");
    this.header = Uint8Array.of(0x42, 0x5a, 0x68, point.extra[0]!);
    this.first = point.compressed;
    this.shift = point.bits;
    this.bodyBytes = Math.floor((eosBit - startBit) / 8);
    this.streamEnd = Math.ceil((eosBit + 80) / 8);
    // the last (eosBit - startBit) % 8 bits of the blocks, the end-of-stream magic and the CRC
    const rest = (eosBit - startBit) % 8;
    const lastBits = new Uint8Array(2);
    raw.readAt(lastBits, Math.floor((startBit + this.bodyBytes * 8) / 8));
    const w = new BitWriter();
    w.write(bitsAt(lastBits, (startBit + this.bodyBytes * 8) % 8, rest), rest);
    w.write(Math.floor(EOS_MAGIC / TWO24), 24);
    w.write(EOS_MAGIC % TWO24, 24);
    w.write(suffixCrc >>> 16, 16);
    w.write(suffixCrc & 0xffff, 16);
    this.tail = w.bytes();
  }

  read(into: Uint8Array): number {
    const h = this.header.length;
    const bodyEnd = h + this.bodyBytes;
    const tailEnd = bodyEnd + this.tail.length;
    if (this.pos < h) return this.copy(into, this.header, this.pos);
    if (this.pos < bodyEnd) {
      const n = Math.min(into.length, bodyEnd - this.pos, this.scratch.length - 1);
      const at = this.first + (this.pos - h);
      if (this.shift === 0) {
        if (this.raw.readAt(into.subarray(0, n), at) !== n) return 0;
      } else {
        const s = this.shift;
        const src = this.scratch;
        if (this.raw.readAt(src.subarray(0, n + 1), at) !== n + 1) return 0;
        for (let i = 0; i < n; i++) into[i] = (src[i]! << s) | (src[i + 1]! >> (8 - s));
      }
      this.pos += n;
      return n;
    }
    if (this.pos < tailEnd) return this.copy(into, this.tail, this.pos - bodyEnd);
    const n = this.raw.readAt(into, this.streamEnd + (this.pos - tailEnd));
    this.pos += n;
    return n;
  }

  private copy(into: Uint8Array, from: Uint8Array, at: number): number {
    const n = Math.min(into.length, from.length - at);
    into.set(from.subarray(at, at + n));
    this.pos += n;
    return n;
  }

  locate(offset: number) {
    const h = this.header.length;
    if (offset < h) return this.raw.locate(this.first);
    if (offset < h + this.bodyBytes) return this.raw.locate(this.first + (offset - h));
    if (offset < h + this.bodyBytes + this.tail.length) return this.raw.locate(this.streamEnd - 10);
    return this.raw.locate(this.streamEnd + (offset - h - this.bodyBytes - this.tail.length));
  }

  close(): void {}
}

class BitWriter {
  private readonly out: number[] = [];
  private acc = 0;
  private n = 0;
  write(value: number, bits: number): void {
    for (let i = bits - 1; i >= 0; i--) {
      this.acc = (this.acc << 1) | (Math.floor(value / 2 ** i) & 1);
      if (++this.n === 8) {
        this.out.push(this.acc);
        this.acc = 0;
        this.n = 0;
      }
    }
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.n > 0 ? [...this.out, this.acc << (8 - this.n)] : this.out);
  }
}

export const bzip2SeekCodec: SeekCodec = {
  compression: "bzip2",
  build,
  resume: (raw, point, inputBuffer) => new Bzip2Decoder(point.extra[1] === KIND_BLOCK ? new ShiftedStream(raw, point) : rawFrom(raw, point.compressed), inputBuffer),
};
