import { ImageError, type Location } from "../../errors.ts";
import { type ChunkSource, PositionedSource, type RandomAccessSource } from "../chunk-source.ts";
import type { SeekCodec } from "./codec.ts";
import type { LoadedIndex, StoredPoint } from "./index-file.ts";
import { seekPointOf } from "./stored-window.ts";
import { collectIfLarge } from "./memory.ts";

/** Decoded bytes are cached in spans of this size, aligned to it. */
export const SPAN_BYTES = 1 << 20;
/** Spans kept (LRU) by each opening (the main thread and every serving thread hold one each): 8 measured no faster under nbdcopy. */
const CACHED_SPANS = 6;
/** Live decoders kept: several readers (nbdcopy's connections) each going forward in their own region. */
const CURSORS = 2;
/**
 * A decoder this close behind a wanted span decodes the spans between into the cache instead of
 * skipping them: readers with many requests in flight ask for them next.
 */
const KEEP_SKIPPED = 4 * SPAN_BYTES;
const SKIP_BYTES = 1 << 20;
const GC_EVERY_SPANS = 16;
/** What a resumed decoder reads compressed input in: several live at once, and a cold read wants little. */
const RESUME_INPUT_BYTES = 256 << 10;

/** A decoder's window and input buffers, kept from one resume to the next: a cold read allocates none. */
interface ResumeBuffers {
  window: Uint8Array;
  input: Uint8Array;
}

/**
 * The decoded spans kept, the least recently used evicted: a few entries in an array. A Map
 * refreshed on every hit (delete, then set) let a serving thread's heap grow by up to 50 MiB over
 * 120,000 reads of cached spans, and keep it through full collections (a heap snapshot showed
 * ~6,500 unreferenced 2.9 KiB cell butterflies); with the array it stays at 14 MiB.
 */
class SpanCache {
  private readonly firsts: number[] = [];
  private readonly spans: Uint8Array[] = [];
  private readonly lastUse: number[] = [];
  private clock = 0;

  constructor(private readonly capacity: number) {}

  get(first: number): Uint8Array | undefined {
    const i = this.firsts.indexOf(first);
    if (i < 0) return undefined;
    this.lastUse[i] = ++this.clock;
    return this.spans[i];
  }

  has(first: number): boolean {
    return this.firsts.includes(first);
  }

  /** Keep `bytes` as the span at `first`; the bytes of the span evicted for it, if one was. */
  add(first: number, bytes: Uint8Array): Uint8Array | undefined {
    let slot = this.firsts.length;
    let evicted: Uint8Array | undefined;
    if (slot === this.capacity) {
      slot = 0;
      for (let i = 1; i < this.capacity; i++) if (this.lastUse[i]! < this.lastUse[slot]!) slot = i;
      evicted = this.spans[slot];
    }
    this.firsts[slot] = first;
    this.spans[slot] = bytes;
    this.lastUse[slot] = ++this.clock;
    return evicted;
  }

  clear(): void {
    this.firsts.length = 0;
    this.spans.length = 0;
    this.lastUse.length = 0;
  }
}

/** A decoder resumed at a point, and how far it has got. */
interface Cursor {
  decoder: ChunkSource;
  at: number;
  /** past this decoded offset its output was not verified */
  validEnd: number;
  /** the point it started from */
  from: number;
  /** lent to its decoder until it is closed */
  buffers: ResumeBuffers;
}

/**
 * The decoded stream of a compressed file (or split set), read at any offset through its seek
 * index: from the nearest point at or before the offset, the codec resumes and decodes forward.
 * A small LRU cache of decoded spans serves repeated and neighbouring reads; one live decoder
 * serves reads that go forward (a sequential copy decodes the stream once).
 */
export class SeekableSource extends PositionedSource {
  readonly name: string;
  readonly size: number;
  private readonly cache = new SpanCache(CACHED_SPANS);
  /** least recently used first */
  private cursors: Cursor[] = [];
  /** a buffer of an evicted span, for the next one */
  private spare: Uint8Array | undefined;
  /** the buffers of closed decoders, for the next ones */
  private spareBuffers: ResumeBuffers[] = [];
  /** where a decoder's output is thrown away on its way to a wanted offset (made on first need) */
  private skip: Uint8Array | undefined;
  /** counters for the curious (bench): spans decoded, and resumes from a point */
  readonly stats = { spansDecoded: 0, resumes: 0, cacheHits: 0 };

  constructor(
    private readonly raw: RandomAccessSource,
    private readonly codec: SeekCodec,
    readonly index: LoadedIndex,
  ) {
    super();
    this.name = `${raw.name} (${codec.compression})`;
    this.size = index.decodedSize;
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
      this.stats.cacheHits++;
      return hit;
    }
    const behind = this.liveCursor(first);
    if (behind && first - behind.at <= KEEP_SKIPPED && behind.at % SPAN_BYTES === 0) {
      for (let s = behind.at; s < first; s += SPAN_BYTES) if (!this.cache.has(s)) this.decodeSpan(s);
    }
    return this.decodeSpan(first);
  }

  private decodeSpan(first: number): Uint8Array {
    const length = Math.min(SPAN_BYTES, this.size - first);
    const reuse = this.spare && this.spare.length === length ? this.spare : undefined;
    this.spare = undefined;
    const bytes = reuse ?? new Uint8Array(length);
    let at = first;
    while (at < first + length) {
      const c = this.cursorFor(at);
      const end = Math.min(first + length, c.validEnd);
      while (at < end) {
        const n = c.decoder.read(bytes.subarray(at - first, end - first));
        if (n === 0) throw this.shortStream(at);
        at += n;
        c.at = at;
      }
    }
    this.stats.spansDecoded++;
    // the decoders' and the readers' buffers are garbage soon, but a lazy collector lets tens of MiB
    // of them pile up: collect now and then so the reader's memory stays bounded
    if (this.stats.spansDecoded % GC_EVERY_SPANS === 0) collectIfLarge();
    this.spare = this.cache.add(first, bytes);
    return bytes;
  }

  /** The live decoder furthest along at or before `at` that is no further back than the best point. */
  private liveCursor(at: number): Cursor | undefined {
    const best = this.pointFor(at);
    let found: Cursor | undefined;
    for (const c of this.cursors) {
      if (c.at <= at && at < c.validEnd && c.at >= best.decoded && (!found || c.at > found.at)) found = c;
    }
    return found;
  }

  /** A decoder positioned at `at`: a live one when one is near enough, else one resumed at the best point. */
  private cursorFor(at: number): Cursor {
    let cur = this.liveCursor(at);
    if (cur) {
      this.cursors.splice(this.cursors.indexOf(cur), 1);
    } else {
      const best = this.pointFor(at);
      if (this.cursors.length >= CURSORS) this.closeCursor(this.cursors.shift()!);
      this.stats.resumes++;
      const buffers = this.spareBuffers.pop() ?? { window: new Uint8Array(0), input: new Uint8Array(RESUME_INPUT_BYTES) };
      const point = seekPointOf(this.index, best, buffers.window);
      if (point.window.length > buffers.window.length) buffers.window = point.window;
      const decoder = this.codec.resume(this.raw, point, buffers.input);
      cur = { decoder, at: best.decoded, validEnd: best.verifiedEnd ?? this.size, from: best.decoded, buffers };
    }
    this.cursors.push(cur);
    while (cur.at < at) {
      this.skip ??= new Uint8Array(SKIP_BYTES);
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

  private closeCursor(c: Cursor): void {
    c.decoder.close();
    this.spareBuffers.push(c.buffers);
  }

  private shortStream(at: number): ImageError {
    return new ImageError(this.locate(at), `truncated ${this.codec.compression} data`, `the seek index says ${this.size} decompressed bytes`);
  }

  locate(offset: number): Location {
    return { file: this.raw.name, offset, decoded: this.codec.compression };
  }

  close(): void {
    if (process.env.IMGTOOL_SEEK_STATS === "1") process.stderr.write(`imgtool: ${this.name}: seek stats ${JSON.stringify(this.stats)}\n`);
    for (const c of this.cursors) c.decoder.close();
    this.cursors = [];
    this.spareBuffers = [];
    this.cache.clear();
    this.index.close();
    this.raw.close();
  }
}
