import { ImageError, type Location } from "../../errors.ts";
import { type ChunkSource, PositionedSource, type RandomAccessSource } from "../chunk-source.ts";
import type { SeekCodec, SkimBuffers, SkimmingSource } from "./codec.ts";
import type { LoadedIndex, StoredPoint } from "./index-file.ts";
import { STRETCH_GRID, StretchChecker, isDecodeError } from "./stretch-hashes.ts";
import { seekPointOf } from "./stored-window.ts";
import { collectIfLarge } from "./memory.ts";

/** Decoded bytes are cached in spans of this size, aligned to it: whole hashed stretches. */
export const SPAN_BYTES = STRETCH_GRID;
/** Spans kept (LRU) by each opening (the main thread and every serving thread hold one each). */
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
/**
 * A decoder this far or further behind the wanted offset skims its way there where the codec can
 * (SeekCodec.skim): a read far from a point or from the last one reads little more than its own span.
 */
const SKIM_FROM = SPAN_BYTES;
/** What a resumed decoder reads compressed input in: several live at once, and a cold read wants little. */
const RESUME_INPUT_BYTES = 256 << 10;

/** A decoder's window, input and ring buffers, kept from one resume to the next: a cold read allocates none. */
interface ResumeBuffers extends SkimBuffers {
  window: Uint8Array;
}

/**
 * The decoded spans kept, the least recently used evicted: a few entries in an array, where a Map
 * refreshed on every hit (delete, then set) left the collector garbage it did not reclaim.
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
  decoder: ChunkSource | SkimmingSource;
  at: number;
  /** the point it started from */
  point: StoredPoint;
  /** lent to its decoder until it is closed */
  buffers: ResumeBuffers;
  /** it has skimmed (SkimmingSource.skimNext): every stretch it decodes is hashed, and a miss is the skimming's, not the point's */
  skimmed: boolean;
}

/** How filling a span went: done, or to be tried again because a point decoded wrongly or a skim missed. */
type Fill = "done" | "wrong point" | "skim missed";

/** Where decoding from `p` is not known to go wrong: up to the end, or to its verdict. */
function reachOf(p: StoredPoint, size: number): number {
  return p.wrongFrom ?? size;
}

/**
 * The decoded stream of a compressed file (or split set), read at any offset through its seek
 * index: from the nearest point at or before the offset, the codec resumes and decodes forward.
 * A small LRU cache of decoded spans serves repeated and neighbouring reads; one live decoder
 * serves reads that go forward (a sequential copy decodes the stream once). Every span decoded is
 * checked against the index's stretch hashes before it is cached or returned: where a resumed point
 * decodes differently, the point is marked wrong from there (kept in the index file) and the span
 * is decoded again from an earlier point.
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
  /** counters for the curious (bench): spans decoded, resumes from a point, points found to decode wrongly */
  readonly stats = { spansDecoded: 0, resumes: 0, cacheHits: 0, wrongPoints: 0, skimMisses: 0 };
  /**
   * Spans (by their first offset) that a skimming decoder got wrong, and how often: once, it keeps
   * the bytes its decoding may reach back to real (SkimmingSource.reach); twice, it does not skim.
   */
  private readonly skimMissesAt = new Map<number, number>();
  private readonly checker: StretchChecker | undefined;

  constructor(
    private readonly raw: RandomAccessSource,
    private readonly codec: SeekCodec,
    readonly index: LoadedIndex,
  ) {
    super();
    this.name = `${raw.name} (${codec.compression})`;
    this.size = index.decodedSize;
    this.checker = index.stretches && new StretchChecker(index.stretches);
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
    for (let fill = this.fillSpan(bytes, first); fill !== "done"; fill = this.fillSpan(bytes, first)) {
      if (fill === "wrong point") this.stats.wrongPoints++;
      else this.stats.skimMisses++;
    }
    this.stats.spansDecoded++;
    // the decoders' and the readers' buffers are garbage soon, but a lazy collector lets tens of MiB
    // of them pile up: collect now and then so the reader's memory stays bounded
    if (this.stats.spansDecoded % GC_EVERY_SPANS === 0) collectIfLarge();
    this.spare = this.cache.add(first, bytes);
    return bytes;
  }

  /**
   * Decode the span at `first` into `bytes` and check its stretches; not done when a resumed point
   * decoded a stretch wrongly (or failed in it): that point is marked wrong from there, try again;
   * nor when a skimming decoder did: the span is decoded in full next time.
   */
  private fillSpan(bytes: Uint8Array, first: number): Fill {
    /** which cursor's point decoded each stretch, from where */
    const used: { from: number; point: StoredPoint; skimmed: boolean }[] = [];
    let at = first;
    while (at < first + bytes.length) {
      const c = this.cursorFor(at);
      const end = Math.min(first + bytes.length, reachOf(c.point, this.size));
      used.push({ from: at, point: c.point, skimmed: c.skimmed });
      try {
        while (at < end) {
          const n = c.decoder.read(bytes.subarray(at - first, end - first));
          if (n === 0) throw this.shortStream(at);
          at += n;
          c.at = at;
        }
      } catch (e) {
        if (c.skimmed && isDecodeError(e)) return this.skimMissed([c], first);
        if (c.point.trusted || !this.checker || !isDecodeError(e)) throw e;
        // the library may fail a block ahead of the bytes it returned: the stretch these were in goes too
        this.wrong(c, Math.floor(at / SPAN_BYTES) * SPAN_BYTES);
        return "wrong point";
      }
    }
    if (!this.checker) return "done";
    const end = first + bytes.length;
    const stretchEnd = (i: number) => used[i + 1]?.from ?? end;
    this.checker.startAt(first);
    for (let from = first; from < end; ) {
      const n = this.checker.leftInStretch;
      // the points whose decoders wrote any of this stretch
      const culprits = used.filter((u, i) => u.from < from + n && stretchEnd(i) > from);
      // a stretch one point's decoding was already checked over is not hashed again
      if (culprits.length === 1 && !culprits[0]!.skimmed && culprits[0]!.point.checkedTo >= from + n) {
        this.checker.skip();
        from += n;
        continue;
      }
      if (this.checker.update(bytes.subarray(from - first, from - first + n))) {
        from += n;
        continue;
      }
      if (culprits.some((u) => u.skimmed)) {
        return this.skimMissed(
          this.cursors.filter((c) => c.skimmed && culprits.some((u) => u.point === c.point)),
          first,
        );
      }
      if (culprits.every((u) => u.point.trusted)) {
        throw new ImageError(
          this.locate(from),
          `damaged ${this.codec.compression} data`,
          "the bytes decoded here differ from those the seek index recorded: the image changed since it was indexed (run imgtool index again), or the stream is damaged",
        );
      }
      for (const u of culprits) {
        if (u.point.trusted) continue;
        const c = this.cursors.find((k) => k.point === u.point);
        if (c) this.wrong(c, Math.max(from, u.from));
        else this.index.markWrong(u.point, Math.max(from, u.from));
      }
      return "wrong point";
    }
    // a point whose checked range these stretches continue: checked further now
    for (const [i, u] of used.entries()) if (!u.skimmed && u.from <= u.point.checkedTo) this.index.markChecked(u.point, stretchEnd(i));
    return "done";
  }

  /** Skimming decoders got the span at `first` (or their way to it) wrong: drop them; the span is decoded in full. */
  private skimMissed(skimmers: Cursor[], first: number): Fill {
    for (const c of skimmers) {
      const i = this.cursors.indexOf(c);
      if (i >= 0) this.cursors.splice(i, 1);
      this.closeCursor(c);
    }
    this.skimMissesAt.set(first, (this.skimMissesAt.get(first) ?? 0) + 1);
    return "skim missed";
  }

  /** Decoding from the point of `c` went wrong from `from` on: say so, and drop the decoder. */
  private wrong(c: Cursor, from: number): void {
    this.index.markWrong(c.point, Math.max(c.point.decoded, from));
    const i = this.cursors.indexOf(c);
    if (i >= 0) this.cursors.splice(i, 1);
    this.closeCursor(c);
  }

  /** The live decoder furthest along at or before `at` that is no further back than the best point. */
  private liveCursor(at: number): Cursor | undefined {
    const best = this.pointFor(at);
    let found: Cursor | undefined;
    for (const c of this.cursors) {
      if (c.at <= at && at < reachOf(c.point, this.size) && c.at >= best.decoded && (!found || c.at > found.at)) found = c;
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
      // a skimming decoder only where what it gives is checked
      const decoder = this.checker && this.codec.skim ? this.codec.skim(this.raw, point, buffers) : this.codec.resume(this.raw, point, buffers.input);
      cur = { decoder, at: best.decoded, point: best, buffers, skimmed: false };
    }
    this.cursors.push(cur);
    const span = Math.floor(at / SPAN_BYTES) * SPAN_BYTES;
    const missed = this.skimMissesAt.get(span) ?? 0;
    if ("skimNext" in cur.decoder && missed < 2) {
      const skim = at - cur.at - (missed === 0 ? 0 : cur.decoder.reach);
      if (skim >= SKIM_FROM && cur.decoder.skimNext(skim)) cur.skimmed = true;
    }
    try {
      while (cur.at < at) {
        this.skip ??= new Uint8Array(SKIP_BYTES);
        const n = cur.decoder.read(this.skip.subarray(0, Math.min(this.skip.length, at - cur.at)));
        if (n === 0) throw this.shortStream(cur.at);
        cur.at += n;
      }
    } catch (e) {
      if (cur.skimmed && isDecodeError(e)) {
        this.skimMissed([cur], span);
        this.stats.skimMisses++;
        return this.cursorFor(at);
      }
      if (cur.point.trusted || !this.checker || !isDecodeError(e)) throw e;
      // on its way to `at` it failed: it cannot serve this span, nor any past where it failed
      this.wrong(cur, Math.floor(Math.min(cur.at, at) / SPAN_BYTES) * SPAN_BYTES);
      this.stats.wrongPoints++;
      return this.cursorFor(at);
    }
    return cur;
  }

  /** The last point at or before `at` not known to decode wrongly there (the stream's start always is). */
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
      if (p.decoded <= at && reachOf(p, this.size) > at) return p;
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
    for (const c of this.cursors) c.decoder.close();
    this.cursors = [];
    this.spareBuffers = [];
    this.cache.clear();
    this.index.close();
    this.raw.close();
  }
}
