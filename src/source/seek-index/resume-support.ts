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
  private readonly pending: { point: SeekPoint; expected: Uint8Array; have: number }[] = [];
  readonly kept: SeekPoint[] = [];
  dropped = 0;
  private decoded = 0;
  /** points are complete only later (bzip2 learns a stream's end after its blocks): check nothing until release() */
  holding = false;

  constructor(
    private readonly codec: SeekCodec,
    private readonly raw: RandomAccessSource,
    private readonly span: number,
  ) {}

  /** A new point at the current decoded offset (the pass has produced exactly `point.decoded` bytes). */
  add(point: SeekPoint): void {
    if (point.decoded !== this.decoded) throw new Error(`seek index: point at ${point.decoded} added at ${this.decoded}`);
    this.pending.push({ point, expected: new Uint8Array(this.span), have: 0 });
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
    for (const p of this.pending) {
      const n = Math.min(bytes.length, this.span - p.have);
      if (n > 0) p.expected.set(bytes.subarray(0, n), p.have);
      p.have += n;
    }
    this.release();
  }

  /** Check the pending points whose bytes are all in (unless holding). */
  release(): void {
    if (this.holding) return;
    while (this.pending.length > 0 && this.pending[0]!.have >= this.span) this.check(this.pending.shift()!);
  }

  /** The pass has ended: check what is still pending against what it got. */
  finish(): SeekPoint[] {
    for (const p of this.pending.splice(0)) this.check(p);
    this.kept.sort((a, b) => a.decoded - b.decoded);
    return this.kept;
  }

  private check(p: { point: SeekPoint; expected: Uint8Array; have: number }): void {
    if (resumesTo(this.codec, this.raw, p.point, p.expected.subarray(0, p.have))) this.kept.push(p.point);
    else this.dropped++;
  }
}

/** True when resuming at `point` yields exactly `expected` first (errors count as a mismatch). */
export function resumesTo(codec: SeekCodec, raw: RandomAccessSource, point: SeekPoint, expected: Uint8Array): boolean {
  let source: ChunkSource | undefined;
  try {
    source = codec.resume(raw, point);
    const got = new Uint8Array(expected.length);
    let n = 0;
    while (n < got.length) {
      const k = source.read(got.subarray(n));
      if (k === 0) break;
      n += k;
    }
    return n === expected.length && Buffer.compare(got, expected) === 0;
  } catch {
    return false;
  } finally {
    source?.close();
  }
}
