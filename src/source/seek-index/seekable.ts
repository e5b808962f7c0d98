import { ImageError, type Location } from "../../errors.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { SeekCodec } from "./codec.ts";
import { type LoadedIndex, type StoredPoint, seekPointOf } from "./index-file.ts";

/** Decoded bytes are cached in spans of this size, aligned to it. */
export const SPAN_BYTES = 1 << 20;
/** Spans kept (LRU): with the decoder's window and buffers, well under 128 MiB in all. */
const CACHED_SPANS = 48;
const SKIP_BYTES = 1 << 20;

/** A decoder resumed at a point, and how far it has got. */
interface Cursor {
  decoder: ChunkSource;
  at: number;
  /** past this decoded offset its output was not verified */
  validEnd: number;
  /** the point it started from */
  from: number;
}

/**
 * The decoded stream of a compressed file (or split set), read at any offset through its seek
 * index: from the nearest point at or before the offset, the codec resumes and decodes forward.
 * A small LRU cache of decoded spans serves repeated and neighbouring reads; one live decoder
 * serves reads that go forward (a sequential copy decodes the stream once).
 */
export class SeekableSource implements RandomAccessSource {
  readonly name: string;
  readonly size: number;
  private readonly cache = new Map<number, Uint8Array>();
  private cursor: Cursor | undefined;
  private readonly skip = new Uint8Array(SKIP_BYTES);
  private pos = 0;
  /** counters for the curious (bench): spans decoded, and resumes from a point */
  readonly stats = { spansDecoded: 0, resumes: 0, cacheHits: 0 };

  constructor(
    private readonly raw: RandomAccessSource,
    private readonly codec: SeekCodec,
    readonly index: LoadedIndex,
  ) {
    this.name = `${raw.name} (${codec.compression})`;
    this.size = index.decodedSize;
  }

  read(into: Uint8Array): number {
    const n = this.readAt(into, this.pos);
    this.pos += n;
    return n;
  }

  readAt(into: Uint8Array, offset: number): number {
    let done = 0;
    while (done < into.length && offset + done < this.size) {
      const at = offset + done;
      const first = Math.floor(at / SPAN_BYTES) * SPAN_BYTES;
      const span = this.span(first);
      const from = at - first;
      const n = Math.min(into.length - done, span.length - from);
      if (n <= 0) break;
      into.set(span.subarray(from, from + n), done);
      done += n;
    }
    return done;
  }

  private span(first: number): Uint8Array {
    const hit = this.cache.get(first);
    if (hit) {
      this.cache.delete(first);
      this.cache.set(first, hit);
      this.stats.cacheHits++;
      return hit;
    }
    const bytes = new Uint8Array(Math.min(SPAN_BYTES, this.size - first));
    let at = first;
    while (at < first + bytes.length) {
      const c = this.cursorFor(at);
      const end = Math.min(first + bytes.length, c.validEnd);
      while (at < end) {
        const n = c.decoder.read(bytes.subarray(at - first, end - first));
        if (n === 0) throw this.shortStream(at);
        at += n;
        c.at = at;
      }
    }
    this.stats.spansDecoded++;
    this.cache.set(first, bytes);
    if (this.cache.size > CACHED_SPANS) this.cache.delete(this.cache.keys().next().value!);
    return bytes;
  }

  /** A decoder positioned at `at`: the live one when it is no further back than the best point. */
  private cursorFor(at: number): Cursor {
    const best = this.pointFor(at);
    const c = this.cursor;
    if (!(c && c.at <= at && at < c.validEnd && c.at >= best.decoded)) {
      c?.decoder.close();
      this.stats.resumes++;
      const decoder = this.codec.resume(this.raw, seekPointOf(this.index, best));
      this.cursor = { decoder, at: best.decoded, validEnd: best.verifiedEnd ?? this.size, from: best.decoded };
    }
    const cur = this.cursor!;
    while (cur.at < at) {
      const n = cur.decoder.read(this.skip.subarray(0, Math.min(this.skip.length, at - cur.at)));
      if (n === 0) throw this.shortStream(cur.at);
      cur.at += n;
    }
    return cur;
  }

  /** The last point at or before `at` whose verified range covers it (the stream's start always does). */
  private pointFor(at: number): StoredPoint {
    const points = this.index.points;
    let lo = 0;
    let hi = points.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (points[mid]!.decoded <= at) lo = mid;
      else hi = mid - 1;
    }
    for (let i = lo; i >= 0; i--) {
      const p = points[i]!;
      if (p.decoded <= at && (p.verifiedEnd === undefined || p.verifiedEnd > at)) return p;
    }
    return points[0]!;
  }

  private shortStream(at: number): ImageError {
    return new ImageError(this.locate(at), `truncated ${this.codec.compression} data`, `the seek index says ${this.size} decompressed bytes`);
  }

  locate(offset: number): Location {
    return { file: this.raw.name, offset, decoded: this.codec.compression };
  }

  close(): void {
    this.cursor?.decoder.close();
    this.cursor = undefined;
    this.cache.clear();
    this.index.close();
    this.raw.close();
  }
}
