// gzip (RFC 1952) over raw deflate (RFC 1951): resume points at deflate block boundaries, the
// idea of zlib's examples/zran.c (bit offset + the 32 KiB of history, inflatePrime + inflateSetDictionary).
import { type Pointer, ptr } from "bun:ffi";
import { ImageError, withCommas } from "../../errors.ts";
import {
  GZIP_WINDOW_BITS,
  Inflater,
  RAW_DEFLATE_WINDOW_BITS,
  Z_BLOCK,
  Z_BUF_ERROR,
  Z_NEED_DICT,
  Z_NO_FLUSH,
  Z_OK,
  Z_STREAM_END,
} from "../../../native/zlib.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { BuildOptions, CodecIndex, SeekCodec, SeekPoint } from "./codec.ts";
import { PointCollector } from "./resume-support.ts";

/** deflate's history: a block may refer back this far (RFC 1951 §3.2.5) */
const WINDOW = 32768;
/** `extra[0]` of a point at the start of a gzip member: decode it with its header, no history */
const MEMBER_START = 1;

/** Whether a gzip point is a member start (decoded with its header and no history). */
export function isMemberStart(point: { extra: Uint8Array }): boolean {
  return point.extra[0] === MEMBER_START;
}
const BUILD_IN = 1 << 20;
const BUILD_OUT = 1 << 20;
const RESUME_IN = 128 * 1024;
/** the gzip trailer after the deflate data: CRC-32 and ISIZE (RFC 1952 §2.2) */
const TRAILER = 8;

const EMPTY = new Uint8Array(0);

function corrupt(raw: RandomAccessSource, offset: number, inf: Inflater, rc: number): never {
  throw new ImageError(raw.locate(offset), "corrupt gzip data", inf.message || `inflate error ${rc}`);
}

function truncated(raw: RandomAccessSource, offset: number, decoded: number): never {
  throw new ImageError(raw.locate(offset), "truncated gzip data", `the input ends inside a member, after ${withCommas(decoded)} decompressed bytes`);
}

function build(raw: RandomAccessSource, opts: BuildOptions): CodecIndex {
  const spacing = Math.max(1, opts.spacing);
  const points = new PointCollector();
  const inf = new Inflater(raw.locate(0), GZIP_WINDOW_BITS);
  const inBuf = new Uint8Array(BUILD_IN);
  const inAddress = ptr(inBuf);
  // the last WINDOW bytes decoded stay in front of where inflate writes next
  const out = new Uint8Array(WINDOW + BUILD_OUT);
  const outAddress = ptr(out);
  let inBase = 0;
  let inStart = 0;
  let inEnd = 0;
  let inputEnded = false;
  let outPos = 0;
  let decoded = 0;
  let memberDecoded = 0;
  let lastPoint = -Infinity;
  let atMemberStart = true;
  try {
    for (;;) {
      if (inStart === inEnd && !inputEnded) {
        inBase += inEnd;
        inStart = 0;
        inEnd = raw.readAt(inBuf, inBase);
        if (inEnd === 0) inputEnded = true;
        opts.onProgress?.(inBase);
      }
      if (atMemberStart) {
        if (inStart === inEnd) break;
        if (decoded - lastPoint >= spacing) {
          points.add({ decoded, compressed: inBase + inStart, bits: 0, window: EMPTY, extra: Uint8Array.of(MEMBER_START), trusted: true });
          lastPoint = decoded;
        }
        atMemberStart = false;
      }
      if (outPos === out.length) {
        out.copyWithin(0, outPos - WINDOW, outPos);
        outPos = WINDOW;
      }
      // up to the spacing plainly, then on to the next block end
      const toSpacing = lastPoint + spacing - decoded;
      const flush = toSpacing <= 0 ? Z_BLOCK : Z_NO_FLUSH;
      const avail = inEnd - inStart;
      const room = Math.min(out.length - outPos, toSpacing > 0 ? toSpacing : Infinity);
      const rc = inf.inflate((inAddress + inStart) as Pointer, avail, (outAddress + outPos) as Pointer, room, flush);
      const consumed = avail - inf.availIn;
      const produced = room - inf.availOut;
      inStart += consumed;
      if (produced > 0) {
        points.feed(out.subarray(outPos, outPos + produced));
        outPos += produced;
        decoded += produced;
        memberDecoded += produced;
      }
      if (rc === Z_STREAM_END) {
        inf.reset(GZIP_WINDOW_BITS);
        atMemberStart = true;
        memberDecoded = 0;
        continue;
      }
      if (rc === Z_NEED_DICT) throw new ImageError(raw.locate(inBase + inStart), "corrupt gzip data", "a preset dictionary is required");
      if (rc !== Z_OK && rc !== Z_BUF_ERROR) corrupt(raw, inBase + inStart, inf, rc);
      if (consumed === 0 && produced === 0) {
        if (inputEnded) truncated(raw, inBase + inStart, decoded);
        if (avail > 0) corrupt(raw, inBase + inStart, inf, rc);
      }
      if (flush === Z_BLOCK) {
        const dt = inf.dataType;
        // right after a block's end code, not after the last block, not after the header
        if ((dt & 128) !== 0 && (dt & 64) === 0 && memberDecoded > 0) {
          const unused = dt & 7;
          const at = inBase + inStart;
          const keep = Math.min(WINDOW, memberDecoded);
          points.add({
            decoded,
            compressed: unused ? at - 1 : at,
            bits: unused ? 8 - unused : 0,
            window: out.slice(outPos - keep, outPos),
            extra: EMPTY,
          });
          lastPoint = decoded;
        }
      }
    }
  } finally {
    inf.end();
  }
  opts.onProgress?.(inBase + inEnd);
  return { decodedSize: decoded, ...points.finish() };
}

/** The decoded stream from a point on: the rest of that member raw (its trailer skipped), then whole members. */
class GzipResume implements ChunkSource {
  readonly size = undefined;
  readonly name: string;
  private readonly inf: Inflater;
  private readonly inBuf: Uint8Array;
  private readonly inAddress: Pointer;
  private inBase: number;
  private inStart = 0;
  private inEnd = 0;
  private inputEnded = false;
  /** a member (or the raw rest of one) has ended: skip its trailer, then start the next member */
  private memberEnded = false;
  private rawMode: boolean;
  private decoded = 0;
  private finished = false;

  constructor(
    private readonly raw: RandomAccessSource,
    point: SeekPoint,
    inputBuffer: Uint8Array = new Uint8Array(RESUME_IN),
  ) {
    this.inBuf = inputBuffer;
    this.inAddress = ptr(inputBuffer);
    this.name = `${raw.name} (gzip)`;
    this.rawMode = !isMemberStart(point);
    this.inf = new Inflater(raw.locate(point.compressed), this.rawMode ? RAW_DEFLATE_WINDOW_BITS : GZIP_WINDOW_BITS);
    this.inBase = point.compressed;
    try {
      if (this.rawMode) {
        if (point.bits > 0) {
          const one = new Uint8Array(1);
          if (raw.readAt(one, point.compressed) !== 1) truncated(raw, point.compressed, 0);
          this.inf.prime(8 - point.bits, one[0]! >> point.bits);
          this.inBase++;
        }
        this.inf.setDictionary(point.window);
      }
    } catch (e) {
      this.inf.end();
      throw e;
    }
  }

  private refill(): void {
    this.inBase += this.inEnd;
    this.inStart = 0;
    this.inEnd = this.raw.readAt(this.inBuf, this.inBase);
    if (this.inEnd === 0) this.inputEnded = true;
  }

  read(into: Uint8Array): number {
    if (this.finished || into.length === 0) return 0;
    const outAddress = ptr(into);
    for (;;) {
      if (this.inStart === this.inEnd && !this.inputEnded) this.refill();
      if (this.memberEnded) {
        if (this.rawMode) {
          // the trailer's CRC covers the whole member, which this resume did not see
          let skip = TRAILER;
          while (skip > 0) {
            if (this.inStart === this.inEnd) this.refill();
            if (this.inputEnded) truncated(this.raw, this.inBase + this.inStart, this.decoded);
            const n = Math.min(skip, this.inEnd - this.inStart);
            this.inStart += n;
            skip -= n;
          }
          this.rawMode = false;
          if (this.inStart === this.inEnd && !this.inputEnded) this.refill();
        }
        if (this.inStart === this.inEnd) {
          this.finished = true;
          return 0;
        }
        this.inf.reset(GZIP_WINDOW_BITS);
        this.memberEnded = false;
      }
      const avail = this.inEnd - this.inStart;
      const rc = this.inf.inflate((this.inAddress + this.inStart) as Pointer, avail, outAddress, into.length, Z_NO_FLUSH);
      const consumed = avail - this.inf.availIn;
      const produced = into.length - this.inf.availOut;
      this.inStart += consumed;
      this.decoded += produced;
      if (rc === Z_STREAM_END) this.memberEnded = true;
      else if (rc === Z_NEED_DICT) throw new ImageError(this.raw.locate(this.inBase + this.inStart), "corrupt gzip data", "a preset dictionary is required");
      else if (rc !== Z_OK && rc !== Z_BUF_ERROR) corrupt(this.raw, this.inBase + this.inStart, this.inf, rc);
      if (produced > 0) return produced;
      if (rc === Z_STREAM_END || consumed > 0) continue;
      if (this.inputEnded) truncated(this.raw, this.inBase + this.inStart, this.decoded);
      if (avail > 0) corrupt(this.raw, this.inBase + this.inStart, this.inf, rc);
    }
  }

  locate(offset: number) {
    return { file: this.raw.name, offset, decoded: "gzip" };
  }

  close(): void {
    this.finished = true;
    this.inf.end();
  }
}

export const gzipSeekCodec: SeekCodec = {
  compression: "gzip",
  build,
  resume: (raw, point, inputBuffer) => new GzipResume(raw, point, inputBuffer),
};
