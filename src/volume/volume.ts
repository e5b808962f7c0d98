import { ImageError } from "../errors.ts";
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
  /** data and hole runs covering [offset, offset + length) clipped to size, ascending, neighbours of one kind merged */
  extents(offset: number, length: number): Iterable<Extent>;
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

/** The restored volume of an image with random access, used blocks from its bitmap. */
export function imageVolume(image: Image, name = image.info.pieces[0] ?? "image"): Volume {
  const read = image.read;
  if (!read) throw new Error("imageVolume needs an image with random access");
  const { deviceSize: size, blockSize } = image.info;
  return {
    size,
    name,
    blockSize,
    read(offset, length) {
      checkRange(this, offset, length);
      return read.call(image, offset, length);
    },
    *extents(offset, length) {
      checkRange(this, offset, length);
      const end = offset + length;
      let pos = offset;
      let kind: boolean | undefined;
      let start = offset;
      while (pos < end) {
        const block = Math.floor(pos / blockSize);
        const next = Math.min(end, (block + 1) * blockSize);
        const used = image.isUsed(block);
        if (kind !== undefined && used !== kind) {
          yield { offset: start, length: pos - start, data: kind };
          start = pos;
        }
        kind = used;
        pos = next;
      }
      if (kind !== undefined) yield { offset: start, length: end - start, data: kind };
    },
    close: () => image.close(),
  };
}
