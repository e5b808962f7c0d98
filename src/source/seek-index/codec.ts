import type { ChunkSource, RandomAccessSource } from "../chunk-source.ts";
import type { Compression } from "../sniff.ts";
import type { StretchHashes } from "./stretch-hashes.ts";

/**
 * A place in a compressed stream where decoding can start again: the decoded offset it yields,
 * and what a decoder needs to start there. One codec module per compression builds these in its
 * single sequential pass and knows how to resume from them; the index file, the cache of decoded
 * spans and the random-access source over them are shared (seek-index/*.ts).
 */
export interface SeekPoint {
  /** offset in the decoded stream */
  decoded: number;
  /** byte offset in the compressed stream (a split set counts as one stream) */
  compressed: number;
  /** bits of the byte at `compressed` already consumed (gzip, bzip2: 0..7) */
  bits: number;
  /** the history the decoder needs (gzip's 32 KiB, zstd's window); empty when none */
  window: Uint8Array;
  /** codec-specific state (a zstd frame header to synthesize, a bzip2 block size, ...) */
  extra: Uint8Array;
  /**
   * When set, `window` holds the zstd-compressed form of this many bytes (a codec that packs its
   * windows as it goes keeps the build's memory small); unset: `window` is the raw history.
   */
  packedWindowSize?: number;
  /**
   * The point starts a stream, frame or member that decodes on its own (the stream's own decoding
   * from there): its output is the stream's, and a difference from the stretch hashes is damage.
   * Unset: a point resumed with synthesized state, whose output counts only where it matches them.
   */
  trusted?: boolean;
}

/** What one codec's build pass hands back. */
export interface CodecIndex {
  decodedSize: number;
  /** ascending by `decoded`; the first is always at decoded 0 */
  points: SeekPoint[];
  /** set when the stream has no resumable point past the start (one-block xz, linked lz4 blocks) */
  notResumable?: string;
  /** candidate points dropped because a probe decode from them went wrong */
  rejected?: number;
  /** the hashes readers check decoded bytes against; unset only when every point is trusted */
  stretches?: StretchHashes;
  /** the points were read from the stream's own seek table (zstd's seekable format), not found by decoding it */
  fromSeekTable?: boolean;
}

export interface BuildOptions {
  /** aim for a point every this many decoded bytes (fewer where the stream allows fewer) */
  spacing: number;
  /** called now and then with the compressed bytes consumed */
  onProgress?: (compressedBytes: number) => void;
  /** the files `raw` was opened from, so that a codec may work on its points in a worker thread */
  pieces?: string[];
}

/** One per compression (zstd.ts, gzip.ts, bzip2.ts, xz.ts, lz4.ts in this folder). */
export interface SeekCodec {
  readonly compression: Compression;
  /**
   * decode the whole stream once, keeping points and the stretch hashes of what it decoded; errors as
   * the streaming decoder gives them (a stream carrying its own seek table may be indexed from it instead)
   */
  build(raw: RandomAccessSource, opts: BuildOptions): CodecIndex;
  /**
   * the decoded bytes from `point` on (to the end of the stream, or until the caller stops reading);
   * `window` is raw here. Compressed input is read into `inputBuffer` when one is lent (a reader
   * that resumes for each cold read keeps one per decoder), else into the decoder's own.
   */
  resume(raw: RandomAccessSource, point: SeekPoint, inputBuffer?: Uint8Array): ChunkSource;
  /**
   * Like resume, for a reader that checks what it gets against the stretch hashes and may say it
   * does not want the next bytes (SkimmingSource.skimNext). `buffers` are lent (kept from one
   * resume to the next); the codec may replace `ring` by a larger one.
   */
  skim?(raw: RandomAccessSource, point: SeekPoint, buffers: SkimBuffers): SkimmingSource;
}

/** A resumed decoder's buffers, lent by a reader that resumes for each cold read. */
export interface SkimBuffers {
  input: Uint8Array;
  ring?: Uint8Array;
}

/** The decoded stream from a point, which can pass over bytes its reader does not want. */
export interface SkimmingSource extends ChunkSource {
  /**
   * The next `n` bytes are not wanted: input the codec can pass over without decoding (zstd's raw
   * blocks, by their headers) is not read; those bytes come out as other bytes (zeros), and the bytes
   * after them are right only where they match the stretch hashes (a miss is the skimming's, not the
   * point's). False when nothing can be passed over here: the bytes stay the point's decoding.
   */
  skimNext(n: number): boolean;
  /** how far back the next bytes may reach for what they decode from (zstd: the frame's window) */
  readonly reach: number;
}
