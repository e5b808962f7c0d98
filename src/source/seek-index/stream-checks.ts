// Whole-frame and whole-member checks that a decoder resumed in the middle of a frame cannot make:
// the zstd content checksum (RFC 8878 §3.1.1: low 32 bits of XXH64 of the frame's content, after its
// last block) and the gzip trailer (RFC 1952 §2.2: CRC-32 and ISIZE). Parallel decoding feeds the
// spans' bytes through these in order, so a damaged frame is refused as one decoder refuses it.
import { Xxh64State } from "../../../native/xxhash.ts";
import { ImageError, withCommas } from "../../errors.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import type { Compression } from "../sniff.ts";
import type { LoadedIndex, StoredPoint } from "./index-file.ts";
import { isMemberStart } from "./gzip.ts";
import { unpackExtra } from "./zstd.ts";
import { parseFrameHeader } from "./zstd-frame.ts";

/** One frame or member of the decoded stream whose check a parallel decode has to make itself. */
export interface StreamCheck {
  /** decoded offsets [start, end) */
  start: number;
  end: number;
  update(bytes: Uint8Array): void;
  /** throws the decoder's error when the content does not match */
  finish(): void;
}


/**
 * The checks to make for spans starting at `starts`: one per frame (zstd) or member (gzip) that a span
 * starts inside of. Undefined when such a frame cannot be checked here (then decode in order).
 */
export function streamChecks(raw: RandomAccessSource, compression: Compression, index: LoadedIndex, starts: readonly number[]): StreamCheck[] | undefined {
  const byDecoded = new Map(index.points.map((p) => [p.decoded, p]));
  const startsAt = (p: StoredPoint) => (compression === "zstd" ? p.extra.length === 0 : compression === "gzip" ? isMemberStart(p) || p.decoded === 0 : true);
  const frameStarts = index.points.filter(startsAt);
  const checks: StreamCheck[] = [];
  for (const s of starts) {
    const point = byDecoded.get(s)!;
    if (startsAt(point)) continue;
    // bzip2 and xz check every block, and lz4 spans start at independent blocks of frames whose
    // content checksum only one decoder from the frame start can make
    if (compression !== "zstd" && compression !== "gzip") {
      if (compression === "lz4") return undefined;
      continue;
    }
    const i = frameStarts.findLastIndex((f) => f.decoded <= s);
    const frame = frameStarts[i]!;
    if (checks.some((c) => c.start === frame.decoded)) continue;
    const end = frameStarts[i + 1]?.decoded ?? index.decodedSize;
    const check = compression === "zstd" ? zstdCheck(raw, frame, point, end) : gzipCheck(raw, frame, frameStarts[i + 1], end);
    if (check === undefined) return undefined;
    if (check !== null) checks.push(check);
  }
  return checks.sort((a, b) => a.start - b.start);
}

/** null: the frame has no checksum to make */
function zstdCheck(raw: RandomAccessSource, frame: StoredPoint, inside: StoredPoint, end: number): StreamCheck | null | undefined {
  const head = new Uint8Array(18);
  const header = parseFrameHeader(head.subarray(0, raw.readAt(head, frame.compressed)), raw.locate(frame.compressed));
  if (!header.checksum) return null;
  const { frameEnd } = unpackExtra(inside, raw);
  const stored = new Uint8Array(4);
  if (frameEnd < 4 || raw.readAt(stored, frameEnd - 4) !== 4) return undefined;
  const hash = new Xxh64State();
  const digest = new Uint8Array(8);
  return {
    start: frame.decoded,
    end,
    update: (b) => hash.update(b),
    finish() {
      hash.digestInto(digest);
      if (digest[0] !== stored[0] || digest[1] !== stored[1] || digest[2] !== stored[2] || digest[3] !== stored[3]) {
        throw new ImageError(raw.locate(frameEnd), "corrupt zstd data", "Restored data doesn't match checksum");
      }
    },
  };
}

function gzipCheck(raw: RandomAccessSource, member: StoredPoint, next: StoredPoint | undefined, end: number): StreamCheck | undefined {
  const trailerAt = (next ? next.compressed : raw.size) - 8;
  const trailer = new Uint8Array(8);
  if (trailerAt < member.compressed || raw.readAt(trailer, trailerAt) !== 8) return undefined;
  const view = new DataView(trailer.buffer);
  const crc = view.getUint32(0, true);
  const isize = view.getUint32(4, true);
  if (isize !== (end - member.decoded) % 2 ** 32) return undefined;
  let running = 0;
  return {
    start: member.decoded,
    end,
    update: (b) => {
      running = Bun.hash.crc32(b, running);
    },
    finish() {
      if (running >>> 0 !== crc) {
        throw new ImageError(raw.locate(trailerAt + 8), "corrupt gzip data", `CRC-32 of the member is ${withCommas(running >>> 0)}, its trailer says ${withCommas(crc)}`);
      }
    },
  };
}
