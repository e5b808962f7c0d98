import fs from "node:fs";
import { ImageError } from "../errors.ts";
import { UsedBitmap } from "../formats/bitmap.ts";
import type { Image } from "../formats/image.ts";

/** A stretch of a volume that holds data, or that is a hole (reads as zeros, was never written). */
export interface Extent {
  offset: number;
  length: number;
  /** false: unused by the file system (not in the image), reads as zeros */
  data: boolean;
}

/**
 * What every random-access consumer meets: serve (NBD), mount (FUSE), cat, the file-system
 * readers, a disk's partitions and overlays. Images, split sets, compressed images through a seek
 * index, whole disks, partitions of a disk and overlays all are one.
 */
export interface Volume {
  /** in bytes */
  readonly size: number;
  /** what to call it in messages: "sda1.ext4-ptcl-img.zst", "clonezilla-dir (sda)", ... */
  readonly name: string;
  /** the granularity of `extents` (an image's block size; 512 for a disk layout) */
  readonly blockSize: number;
  /** bytes [offset, offset + length) of the volume; the caller keeps them (a fresh array) */
  read(offset: number, length: number): Uint8Array;
  /** the same into a buffer the caller reuses (no allocation per read); optional */
  readInto?(offset: number, into: Uint8Array): void;
  /** data and hole runs covering [offset, offset + length) clipped to size, ascending, neighbours of one kind merged */
  extents(offset: number, length: number): Iterable<Extent>;
  /**
   * What identifies the bytes behind the volume (sizes and mtimes of its files), so that an
   * overlay made for one volume is refused on another; absent: name and size stand for it
   */
  readonly identity?: string;
  close(): void;
}

/** A Volume that also takes writes (an overlay over a read-only one). */
export interface WritableVolume extends Volume {
  write(offset: number, data: Uint8Array): void;
  /** the range reads as zeros afterwards; `punch` lets it become a hole */
  zero(offset: number, length: number, punch: boolean): void;
  /** everything acknowledged so far survives a crash */
  flush(): void;
}

/** Throws unless [offset, offset + length) lies inside the volume. */
export function checkRange(volume: Pick<Volume, "size" | "name">, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > volume.size) {
    throw new ImageError({ file: volume.name, offset }, `read of ${length} bytes past the end of the ${volume.size}-byte volume`);
  }
}

/** `volume` whose close runs `close` instead, once however often it is called. */
export function closingWith(volume: Volume, close: () => void): Volume {
  let closed = false;
  return {
    size: volume.size,
    name: volume.name,
    blockSize: volume.blockSize,
    identity: volume.identity,
    read: (offset, length) => volume.read(offset, length),
    readInto: volume.readInto ? (offset, into) => volume.readInto!(offset, into) : undefined,
    extents: (offset, length) => volume.extents(offset, length),
    close() {
      if (closed) return;
      closed = true;
      close();
    },
  };
}

/** The restored volume of an image with random access, used blocks from its bitmap. */
export function imageVolume(image: Image, name = image.info.pieces[0] ?? "image"): Volume {
  const read = image.read;
  if (!read) throw new Error("imageVolume needs an image with random access");
  const { deviceSize: size, blockSize } = image.info;
  // ntfsclone builds its bitmap on first use; partclone and partimage hold theirs from the start
  if (image.info.totalBlocks > 0) image.isUsed(0);
  const bitmap = (image as { bitmap?: unknown }).bitmap;
  const blockUsed = bitmap instanceof UsedBitmap ? undefined : (block: number) => image.isUsed(block);
  return {
    size,
    name,
    blockSize,
    identity: imageIdentity(image),
    read(offset, length) {
      checkRange(this, offset, length);
      return read.call(image, offset, length);
    },
    readInto: image.readInto
      ? function (this: Volume, offset: number, into: Uint8Array) {
          checkRange(this, offset, into.length);
          image.readInto!(offset, into);
        }
      : undefined,
    *extents(offset, length) {
      checkRange(this, offset, length);
      const end = offset + length;
      let pos = offset;
      while (pos < end) {
        const block = Math.floor(pos / blockSize);
        const lastBlock = Math.ceil(end / blockSize);
        let used: boolean;
        let next: number;
        if (blockUsed) {
          used = blockUsed(block);
          next = block + 1;
          while (next < lastBlock && blockUsed(next) === used) next++;
        } else {
          ({ used, next } = sameRun(bitmap as UsedBitmap, block, lastBlock));
        }
        const stop = Math.min(end, next * blockSize);
        yield { offset: pos, length: stop - pos, data: used };
        pos = stop;
      }
    },
    close: () => image.close(),
  };
}

/** What an overlay records of an image: its format, sizes, and each piece's size and mtime. */
export function imageIdentity(image: Image): string {
  const { format, deviceSize: size, blockSize, pieces } = image.info;
  return JSON.stringify({
    format,
    size,
    blockSize,
    pieces: pieces.map((p) => {
      const st = fs.statSync(p);
      return { size: st.size, mtimeMs: st.mtimeMs };
    }),
  });
}

/** The run of blocks in the state of `block`, up to `limit` (blocks past the bitmap are unused). */
function sameRun(bitmap: UsedBitmap, block: number, limit: number): { used: boolean; next: number } {
  return { used: bitmap.isUsed(block), next: bitmap.runEnd(block, limit) };
}
