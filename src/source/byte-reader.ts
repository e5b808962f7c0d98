import { ImageError, type Location } from "../errors.ts";
import type { ChunkSource } from "./chunk-source.ts";

const DEFAULT_CAPACITY = 4 << 20;
/** No single view may exceed this; callers check lengths from a file against it before asking. */
export const MAX_VIEW = 1 << 30;

/**
 * Every format parser reads through this and nothing else: sequential views over a ChunkSource,
 * copied only when a view straddles the end of what was read so far (then compacted in place).
 * A view stays valid until the next call on the reader.
 */
export class ByteReader {
  private buf: Uint8Array;
  private start = 0;
  private end = 0;
  /** absolute stream offset of buf[0] */
  private base = 0;
  private ended = false;

  constructor(
    readonly source: ChunkSource,
    capacity = DEFAULT_CAPACITY,
  ) {
    this.buf = new Uint8Array(capacity);
  }

  get name(): string {
    return this.source.name;
  }

  /** Absolute offset of the next unread byte. */
  get position(): number {
    return this.base + this.start;
  }

  /** Bytes buffered and not yet consumed. */
  get buffered(): number {
    return this.end - this.start;
  }

  /** Exactly n bytes, consumed. Throws an ImageError naming `field` if the stream ends first. */
  view(n: number, field: string): Uint8Array {
    if (this.end - this.start < n) this.fill(n, field);
    const v = this.buf.subarray(this.start, this.start + n);
    this.start += n;
    return v;
  }

  /**
   * Up to n bytes (at least 1 unless the stream has ended), consumed; reads at most once. With
   * nothing buffered, straight from a source that lends its memory (see ChunkSource.borrow).
   */
  chunk(max: number): Uint8Array {
    if (this.start === this.end) {
      if (this.ended) return this.buf.subarray(0, 0);
      if (this.source.borrow && max > 0) {
        const lent = this.source.borrow(max);
        if (lent.length === 0) this.ended = true;
        // buf holds nothing unread: moving its stream offset on is all the bookkeeping
        this.base += lent.length;
        return lent;
      }
      this.refill(1);
    }
    const n = Math.min(max, this.end - this.start);
    const v = this.buf.subarray(this.start, this.start + n);
    this.start += n;
    return v;
  }

  /** Up to n bytes without consuming them (fewer only at the end of the stream). */
  peek(n: number): Uint8Array {
    if (this.end - this.start < n && !this.ended) this.refill(n);
    return this.buf.subarray(this.start, Math.min(this.end, this.start + n));
  }

  /** Skip n bytes; throws naming `field` if the stream ends first. */
  skip(n: number, field: string): void {
    while (n > 0) {
      if (this.start === this.end) {
        if (this.ended) this.truncated(field, n);
        this.refill(1);
        if (this.start === this.end) this.truncated(field, n);
      }
      const k = Math.min(n, this.end - this.start);
      this.start += k;
      n -= k;
    }
  }

  /** True when every byte has been consumed. */
  atEnd(): boolean {
    if (this.start < this.end) return false;
    if (!this.ended) this.refill(1);
    return this.start === this.end;
  }

  /** Where absolute offset `offset` is, for messages. */
  locate(offset = this.position): Location {
    return this.source.locate(offset);
  }

  /** Throw an ImageError at `offset` (default: the next unread byte). */
  fail(field: string, detail?: string, offset = this.position): never {
    if (field.startsWith("truncated")) {
      // the bytes end early because a piece of the split set is missing: say that instead
      const missing = this.source.missingPiece?.();
      if (missing) throw missing;
    }
    throw new ImageError(this.locate(offset), field, detail);
  }

  close(): void {
    this.source.close();
  }

  private fill(n: number, field: string): void {
    if (n > MAX_VIEW) this.fail(field, `length ${n} is beyond any sane size`);
    // a length the input cannot hold fails before anything is read or allocated
    const size = this.source.size;
    if (size !== undefined && this.position + n > size) this.truncated(field, n, size - this.position);
    this.refill(n);
    if (this.end - this.start < n) this.truncated(field, n);
  }

  private truncated(field: string, wanted: number, have = this.end - this.start): never {
    this.fail(`truncated ${field}`, `needed ${wanted} bytes, the stream ends after ${have}`);
  }

  /**
   * Make at least n bytes available unless the stream ends first. The buffer grows as bytes
   * arrive (doubling), never to n at once: a length from a header costs memory only as far as
   * the stream really goes.
   */
  private refill(n: number): void {
    const have = this.end - this.start;
    const tailRoom = this.buf.length - this.end;
    if (this.start + n > this.buf.length || (this.start > 0 && tailRoom < this.buf.length >> 2)) {
      if (have > 0) this.buf.copyWithin(0, this.start, this.end);
      this.base += this.start;
      this.start = 0;
      this.end = have;
    }
    while (this.end - this.start < n && !this.ended) {
      if (this.end === this.buf.length) {
        const bigger = new Uint8Array(Math.min(Math.max(n, this.buf.length), this.buf.length * 2));
        bigger.set(this.buf.subarray(0, this.end));
        this.buf = bigger;
      }
      // from a lending source only what is asked for: the rest is lent to chunk() without a copy
      const room = this.source.borrow ? this.start + n : this.buf.length;
      const got = this.source.read(this.buf.subarray(this.end, room));
      if (got === 0) this.ended = true;
      this.end += got;
    }
  }
}
