import type { ImageError, Location } from "../errors.ts";

/**
 * The lowest layer: a pull-based byte stream (a file, a pipe, a split set, a decompressor).
 * Synchronous on purpose: every source here is a blocking read or an FFI call, and a sync
 * pull loop keeps the hot path free of promise machinery.
 */
export interface ChunkSource {
  /** What to call this stream in messages: a file name, "stdin", "x.gz (zstd)". */
  readonly name: string;
  /** Fill `into` from its start with up to `into.length` bytes; returns how many. 0 = end of stream. */
  read(into: Uint8Array): number;
  /**
   * Like read, without the copy: up to `max` bytes (none only at the end) as a view of the source's
   * own memory, valid until the next call on this source. Offered by sources that decode into
   * memory of their own (the decode workers' rings).
   */
  borrow?(max: number): Uint8Array;
  /** For messages: where byte `offset` of this stream lives (e.g. piece x.ab, offset 12). */
  locate(offset: number): Location;
  /** Total length in bytes when known without reading (plain files, split sets). */
  readonly size: number | undefined;
  close(): void;
  /**
   * When these bytes come from a split set that looks cut short (see split.ts): the error naming
   * the missing piece, which explains any "truncated" error better than the truncation itself.
   */
  missingPiece?(): ImageError | undefined;
}

/** A ChunkSource that can also read at any offset (plain files and split sets, not pipes or decoders). */
export interface RandomAccessSource extends ChunkSource {
  readonly size: number;
  /** Read up to `into.length` bytes at `offset`; returns how many (short only at the end). */
  readAt(into: Uint8Array, offset: number): number;
}

/** A RandomAccessSource whose `read` goes on from where the last one stopped, through `readAt`. */
export abstract class PositionedSource implements RandomAccessSource {
  abstract readonly name: string;
  abstract readonly size: number;
  private pos = 0;

  read(into: Uint8Array): number {
    const n = this.readAt(into, this.pos);
    this.pos += n;
    return n;
  }

  abstract readAt(into: Uint8Array, offset: number): number;
  abstract locate(offset: number): Location;
  abstract close(): void;
}

export function isRandomAccess(s: ChunkSource): s is RandomAccessSource {
  return typeof (s as RandomAccessSource).readAt === "function";
}
