import type { Location } from "../../errors.ts";
import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";

/** A piece of a spliced stream: bytes made up here, or a range of the raw (compressed) source. */
export type SplicePart = Uint8Array | { from: number; to: number };

/**
 * Compressed bytes as a decoder must see them to resume: e.g. a synthesized frame header, then the
 * raw bytes from a block boundary to the end of that frame's blocks, then the rest of the stream.
 * Does not own `raw` (closing it leaves the raw source open).
 */
export class SpliceSource implements ChunkSource {
  readonly size = undefined;
  readonly name: string;
  private part = 0;
  private at = 0;
  /** raw offset of the first raw part, for messages */
  private readonly rawStart: number;

  constructor(
    private readonly raw: RandomAccessSource,
    private readonly parts: SplicePart[],
  ) {
    this.name = raw.name;
    const first = parts.find((p) => !(p instanceof Uint8Array)) as { from: number } | undefined;
    this.rawStart = first?.from ?? 0;
  }

  read(into: Uint8Array): number {
    while (this.part < this.parts.length) {
      const p = this.parts[this.part]!;
      if (p instanceof Uint8Array) {
        const n = Math.min(into.length, p.length - this.at);
        if (n > 0) {
          into.set(p.subarray(this.at, this.at + n));
          this.at += n;
          return n;
        }
      } else {
        const left = Math.min(p.to, this.raw.size) - p.from - this.at;
        if (left > 0) {
          const n = this.raw.readAt(into.subarray(0, Math.min(into.length, left)), p.from + this.at);
          if (n > 0) {
            this.at += n;
            return n;
          }
        }
      }
      this.part++;
      this.at = 0;
    }
    return 0;
  }

  locate(offset: number): Location {
    return this.raw.locate(this.rawStart + offset);
  }

  close(): void {}
}
