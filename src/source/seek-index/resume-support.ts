import type { Location } from "../../errors.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { SeekCodec, SeekPoint } from "./codec.ts";

/**
 * What a codec's resume feeds its decoder: synthesized bytes (a stream header, an index, a
 * trailer) and ranges of the compressed stream, one after another. Messages point into the
 * compressed stream (a synthesized part reports the raw offset it stands for). Closing it leaves
 * `raw` open: the seekable source owns that.
 */
export type Part = { bytes: Uint8Array; at: number } | { start: number; end: number };

export class PartsSource implements ChunkSource {
  readonly size = undefined;
  readonly name: string;
  private index = 0;
  /** bytes of the current part already handed out */
  private done = 0;
  /** offset in this stream where the current part starts */
  private partBase = 0;
  private readonly starts: number[] = [];
  /** bytes read so far (the build's progress) */
  handedOut = 0;

  constructor(
    private readonly raw: RandomAccessSource,
    private readonly parts: Part[],
  ) {
    this.name = raw.name;
    let at = 0;
    for (const p of parts) {
      this.starts.push(at);
      at += "bytes" in p ? p.bytes.length : p.end - p.start;
    }
  }

  read(into: Uint8Array): number {
    while (this.index < this.parts.length) {
      const p = this.parts[this.index]!;
      const length = "bytes" in p ? p.bytes.length : p.end - p.start;
      const n = Math.min(into.length, length - this.done);
      if (n > 0) {
        if ("bytes" in p) into.set(p.bytes.subarray(this.done, this.done + n));
        else if (this.raw.readAt(into.subarray(0, n), p.start + this.done) !== n) return 0;
        this.done += n;
        this.handedOut += n;
        return n;
      }
      this.partBase += length;
      this.index++;
      this.done = 0;
    }
    return 0;
  }

  locate(offset: number): Location {
    let i = this.starts.length - 1;
    while (i > 0 && this.starts[i]! > offset) i--;
    const p = this.parts[i];
    if (!p) return this.raw.locate(0);
    return this.raw.locate("bytes" in p ? p.at : p.start + (offset - this.starts[i]!));
  }

  close(): void {}
}

/** The compressed stream from `start` on, as a ChunkSource (raw stays open on close). */
export function rawFrom(raw: RandomAccessSource, start: number): PartsSource {
  return new PartsSource(raw, [{ start, end: raw.size }]);
}

/**
 * Verification of points during a build: the pass hands over what it decodes; once the first
 * `span` bytes after a point (or all that follow it) are in, the point is resumed through the
 * codec's own `resume` and the bytes compared. Points that fail are dropped.
 */
export class PointVerifier {
  /**
   * Points whose span is still coming in hold its bytes; once complete only a hash of them is
   * kept, so that points held until their stream ends (bzip2, lz4) cost no memory to speak of.
   */
  private readonly pending: { point: SeekPoint; expected: Uint8Array | null; have: number; hash: bigint }[] = [];
  readonly kept: SeekPoint[] = [];
  dropped = 0;
  private decoded = 0;
  /** points are complete only later (bzip2 learns a stream's end after its blocks): check nothing until release() */
  holding = false;

  constructor(
    private readonly codec: SeekCodec,
    private readonly raw: RandomAccessSource,
    private readonly span: number,
    /**
     * A cheaper form of a point to try first (gzip: the same point without its window). Kept
     * when it resumes to the same bytes: a stream that referred back past the point would fail
     * or differ within the span.
     */
    private readonly lighter?: (point: SeekPoint) => SeekPoint | undefined,
  ) {}

  /** A new point at the current decoded offset (the pass has produced exactly `point.decoded` bytes). */
  add(point: SeekPoint): void {
    if (point.decoded !== this.decoded) throw new Error(`seek index: point at ${point.decoded} added at ${this.decoded}`);
    this.pending.push({ point, expected: new Uint8Array(this.span), have: 0, hash: 0n });
  }

  /** Forget pending points that turned out unusable (counted as dropped). */
  discard(points: SeekPoint[]): void {
    const before = this.pending.length;
    const gone = new Set(points);
    this.pending.splice(0, this.pending.length, ...this.pending.filter((p) => !gone.has(p.point)));
    this.dropped += before - this.pending.length;
  }

  /** The next decoded bytes of the pass. */
  feed(bytes: Uint8Array): void {
    this.decoded += bytes.length;
    if (this.pending.length === 0) return;
    for (let i = this.pending.length - 1; i >= 0; i--) {
      const p = this.pending[i]!;
      if (!p.expected) break;
      const n = Math.min(bytes.length, this.span - p.have);
      if (n > 0) p.expected.set(bytes.subarray(0, n), p.have);
      p.have += n;
      if (p.have >= this.span) this.seal(p);
    }
    this.release();
  }

  private seal(p: { expected: Uint8Array | null; have: number; hash: bigint }): void {
    if (!p.expected) return;
    p.hash = BigInt(Bun.hash(p.expected.subarray(0, p.have)));
    p.expected = null;
  }

  /** Check the pending points whose bytes are all in (unless holding). */
  release(): void {
    if (this.holding) return;
    while (this.pending.length > 0 && this.pending[0]!.expected === null) this.check(this.pending.shift()!);
  }

  /** The pass has ended: check what is still pending against what it got. */
  finish(): SeekPoint[] {
    for (const p of this.pending.splice(0)) {
      this.seal(p);
      this.check(p);
    }
    this.kept.sort((a, b) => a.decoded - b.decoded);
    return this.kept;
  }

  private check(p: { point: SeekPoint; have: number; hash: bigint }): void {
    const light = this.lighter?.(p.point);
    if (light && resumesToHash(this.codec, this.raw, light, p.have, p.hash)) this.kept.push(light);
    else if (resumesToHash(this.codec, this.raw, p.point, p.have, p.hash)) this.kept.push(p.point);
    else this.dropped++;
  }
}

function resumeBytes(codec: SeekCodec, raw: RandomAccessSource, point: SeekPoint, length: number): Uint8Array | undefined {
  let source: ChunkSource | undefined;
  try {
    source = codec.resume(raw, point);
    const got = new Uint8Array(length);
    let n = 0;
    while (n < got.length) {
      const k = source.read(got.subarray(n));
      if (k === 0) break;
      n += k;
    }
    return n === length ? got : undefined;
  } catch {
    return undefined;
  } finally {
    source?.close();
  }
}

function resumesToHash(codec: SeekCodec, raw: RandomAccessSource, point: SeekPoint, length: number, hash: bigint): boolean {
  const got = resumeBytes(codec, raw, point, length);
  return got !== undefined && BigInt(Bun.hash(got)) === hash;
}

/** True when resuming at `point` yields exactly `expected` first (errors count as a mismatch). */
export function resumesTo(codec: SeekCodec, raw: RandomAccessSource, point: SeekPoint, expected: Uint8Array): boolean {
  const got = resumeBytes(codec, raw, point, expected.length);
  return got !== undefined && Buffer.compare(got, expected) === 0;
}
