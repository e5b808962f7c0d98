import type { Location } from "../../errors.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { SeekPoint } from "./codec.ts";
import { StretchHasher, type StretchHashes } from "./stretch-hashes.ts";

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
 * The points of a build and the stretch hashes of what its pass decodes: each point cuts a stretch
 * there, so that a reader resumed at it checks whole stretches from its first byte on. Nothing is
 * decoded twice: a point is checked by the readers that use it (stretch-hashes.ts).
 */
export class PointCollector {
  private readonly hasher = new StretchHasher();
  private readonly points: SeekPoint[] = [];

  /** A new point at the current decoded offset (the pass has produced exactly `point.decoded` bytes). */
  add(point: SeekPoint): void {
    if (point.decoded !== this.hasher.decoded) throw new Error(`seek index: point at ${point.decoded} added at ${this.hasher.decoded}`);
    this.hasher.cut();
    this.points.push(point);
  }

  /** Forget points that turned out unusable. */
  discard(points: SeekPoint[]): void {
    const gone = new Set(points);
    this.points.splice(0, this.points.length, ...this.points.filter((p) => !gone.has(p)));
  }

  /** The next decoded bytes of the pass. */
  feed(bytes: Uint8Array): void {
    this.hasher.feed(bytes);
  }

  /** The pass has ended: the points (the stream's start trusted) and the stretch hashes. */
  finish(): { points: SeekPoint[]; stretches: StretchHashes } {
    this.points.sort((a, b) => a.decoded - b.decoded);
    if (this.points[0]?.decoded === 0) this.points[0].trusted = true;
    return { points: this.points, stretches: this.hasher.finish() };
  }
}
