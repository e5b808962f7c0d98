import { UsageError, withCommas } from "../../errors.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import type { Compression } from "../sniff.ts";
import type { SeekCodec } from "./codec.ts";
import { seekCodecOf } from "./codecs.ts";
import { currentKey, indexPaths, type LoadedIndex, memoryIndex, readIndex, writeIndex } from "./index-file.ts";
import { SeekableSource } from "./seekable.ts";

/** build: use the index or build it; use-if-present: only an index already there; never: read in order. */
export type SeekIndexMode = "build" | "use-if-present" | "never";

/** Decoded bytes between points unless told otherwise (`--spacing`): the README gives the trade-off. */
export const DEFAULT_SPACING = 16 << 20;

/**
 * Told how a build goes: the compressed bytes read so far of `total`, now and then, and once more
 * with `done` equal to `total` when the pass has ended.
 */
export type IndexProgress = (done: number, total: number, compression: Compression) => void;

export interface SeekIndexOptions {
  mode: SeekIndexMode;
  /** decoded bytes between points when building */
  spacing?: number;
  /** told how a build goes */
  onProgress?: IndexProgress;
  /** false: the build does all its work in this thread (default: a worker thread helps where a codec can use one) */
  threads?: boolean;
  /** build anew even when a valid index is there (`imgtool index`) */
  rebuild?: boolean;
}

export interface BuiltIndex {
  path: string;
  bytes: number;
  checkpoints: number;
  /** candidate points dropped because their probe decoded wrongly */
  rejected: number;
  seconds: number;
  decodedSize: number;
  compressedSize: number;
  notResumable?: string;
  /** read from the stream's own seek table, nothing decoded */
  fromSeekTable: boolean;
}

/** Build the index of `raw` and write it where it belongs; what was built. */
export function buildSeekIndex(raw: RandomAccessSource, pieces: string[], codec: SeekCodec, opts: Omit<SeekIndexOptions, "mode" | "rebuild">): BuiltIndex {
  return buildAndKeep(raw, pieces, codec, opts).built;
}

/** Build the index and write it beside the image, else in the cache; `kept` when neither can be written. */
function buildAndKeep(
  raw: RandomAccessSource,
  pieces: string[],
  codec: SeekCodec,
  opts: Omit<SeekIndexOptions, "mode" | "rebuild"> & { keepInMemory?: boolean },
): { built: BuiltIndex; kept?: LoadedIndex } {
  const spacing = opts.spacing ?? DEFAULT_SPACING;
  const started = performance.now();
  const key = currentKey(raw, pieces);
  const tell = opts.onProgress;
  const index = codec.build(raw, { spacing, pieces: opts.threads === false ? undefined : pieces, onProgress: tell && ((n) => tell(Math.min(n, raw.size - 1), raw.size, codec.compression)) });
  tell?.(raw.size, raw.size, codec.compression);
  const paths = indexPaths(pieces[0]!);
  const targets = [...new Set([paths.preferred, paths.cache])];
  let written: { path: string; bytes: number } | undefined;
  for (const [i, target] of targets.entries()) {
    try {
      written = { path: target, bytes: writeIndex(target, codec.compression, index, key, raw.size, spacing) };
      break;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const cannotWrite = code === "EACCES" || code === "EROFS" || code === "EPERM" || code === "ENOENT";
      if (!cannotWrite || (i === targets.length - 1 && !opts.keepInMemory)) throw e;
    }
  }
  const kept = written ? undefined : memoryIndex(index, codec.compression, raw.size, spacing);
  const built: BuiltIndex = {
    path: written?.path ?? kept!.path,
    bytes: written?.bytes ?? kept!.bytes,
    checkpoints: index.points.length,
    rejected: index.rejected ?? 0,
    seconds: (performance.now() - started) / 1000,
    decodedSize: index.decodedSize,
    compressedSize: raw.size,
    notResumable: index.notResumable,
    fromSeekTable: index.fromSeekTable === true,
  };
  return { built, kept };
}

/** A valid index of `raw` as it is now, beside the image or in the cache; undefined when there is none (or it is stale). */
export function findSeekIndex(raw: RandomAccessSource, pieces: string[], compression: Compression): LoadedIndex | undefined {
  const key = currentKey(raw, pieces);
  const paths = indexPaths(pieces[0]!);
  for (const p of [paths.beside, paths.cache]) {
    const found = readIndex(p, raw, key, compression);
    if (found) return found;
  }
  return undefined;
}

/**
 * The decoded stream of `raw` read at any offset, through its index (found, or built when
 * `mode` is "build"); undefined when there is no codec or no index to use. Refuses, in one line,
 * a stream whose index has no point to resume from but its start.
 */
export function openSeekable(raw: RandomAccessSource, pieces: string[], compression: Compression, opts: SeekIndexOptions): SeekableSource | undefined {
  const codec = seekCodecOf(compression);
  if (!codec || opts.mode === "never") return undefined;
  let index = opts.rebuild ? undefined : findSeekIndex(raw, pieces, compression);
  if (!index) {
    if (opts.mode !== "build") return undefined;
    // where it can be written nowhere, it lives as long as this run
    index = buildAndKeep(raw, pieces, codec, { ...opts, keepInMemory: true }).kept ?? findSeekIndex(raw, pieces, compression);
    if (!index) throw new Error(`the seek index of ${pieces[0]} was written but cannot be read back`);
  }
  if (index.notResumable && index.points.length === 1 && index.decodedSize > (index.spacing || DEFAULT_SPACING)) {
    index.close();
    throw new UsageError(
      `${pieces[0]}: no point to resume ${compression} decoding from but its start (${index.notResumable}; ${withCommas(index.decodedSize)} bytes); use imgtool restore`,
    );
  }
  return new SeekableSource(raw, codec, index);
}
