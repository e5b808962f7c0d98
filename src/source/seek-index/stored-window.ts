// A point's window as the .imgtool-index file stores it (the file's layout: index-file.ts): packed
// with zstd at level 3, and checked by the XXH64 of the packed bytes, kept in the table. Apart from
// index-file.ts, which needs node:fs, so that a decode worker can read windows through the index's
// descriptor without loading node:fs.
import { ImageError } from "../../errors.ts";
import { digestXxh64 } from "../../../native/xxhash.ts";
import { zstdCompress, zstdDecompress } from "../../../native/zstd.ts";
import type { SeekPoint } from "./codec.ts";
import type { LoadedIndex, StoredPoint } from "./index-file.ts";

const WINDOW_PACK_LEVEL = 3;

/** The index file is there but is not something to trust: one line saying so. */
export class CorruptIndex extends ImageError {
  override name = "CorruptIndex";
}

/** XXH64 (seed 0) of `data` as 16 hex digits. */
export function hex64(data: Uint8Array): string {
  return Buffer.from(digestXxh64(data)).toString("hex");
}

/** A window as the file stores it. */
export function packWindow(window: Uint8Array): Uint8Array {
  return window.length ? zstdCompress(window, WINDOW_PACK_LEVEL) : window;
}

/** A packed window back as it was, in `into` (a view of its start) when it fits. */
export function unpackWindow(packed: Uint8Array, size: number, where: { file: string; offset?: number }, into?: Uint8Array): Uint8Array {
  return packed.length ? zstdDecompress(packed, size, where, into) : new Uint8Array(0);
}

/**
 * The window of `p` read from the index file `file` through `readAt`, checked against its hash
 * and size; in `into` (a view of its start) when it fits.
 */
export function readStoredWindow(p: StoredPoint, readAt: (into: Uint8Array, offset: number) => number, file: string, into?: Uint8Array): Uint8Array {
  if (p.windowStored === 0) {
    if (p.windowSize !== 0) throw new CorruptIndex({ file, offset: p.windowOffset }, "corrupt seek index", "a window with no bytes");
    return new Uint8Array(0);
  }
  const stored = new Uint8Array(p.windowStored);
  if (readAt(stored, p.windowOffset) < stored.length || hex64(stored) !== p.windowHash) {
    throw new CorruptIndex({ file, offset: p.windowOffset }, "corrupt seek index", "a stored window's checksum does not match");
  }
  return unpackWindow(stored, p.windowSize, { file, offset: p.windowOffset }, into);
}

/** A stored point as a codec's resume wants it (the window read and unpacked, into `windowBuffer` when it fits). */
export function seekPointOf(index: Pick<LoadedIndex, "window">, p: StoredPoint, windowBuffer?: Uint8Array): SeekPoint {
  return { decoded: p.decoded, compressed: p.compressed, bits: p.bits, window: index.window(p, windowBuffer), extra: p.extra, trusted: p.trusted };
}
