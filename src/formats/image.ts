import { ImageError, type Location, withCommas } from "../errors.ts";
import type { Compression } from "../source/sniff.ts";
import type { UsedBitmap } from "./bitmap.ts";
import type { NtfscloneHeader } from "./ntfsclone.ts";
import type { PartcloneHeader } from "./partclone.ts";
import type { PartimageFsInfo, PartimageLocalHeader, PartimageMainHeader, PartimageVolumeHeader } from "./partimage.ts";

export type ImageFormat = "partclone" | "partimage" | "ntfsclone";

/** Facts every format provides; the rest of ImageInfo is what only that format knows. */
interface ImageFacts {
  /** file system type as the image names it: "EXT4", "NTFS", "BTRFS", "ext2", ... */
  fsType: string;
  blockSize: number;
  totalBlocks: number;
  /** used blocks according to the bitmap (what restore writes) */
  usedBlocks: number;
  /** size of the restored volume in bytes */
  deviceSize: number;
  /** checksum algorithm of the data ("NONE", "CRC32", "XXH64", ...) */
  checksum: string;
  compression: Compression[];
  pieces: string[];
}

export interface PartcloneInfo extends ImageFacts {
  format: "partclone";
  header: PartcloneHeader;
  /** checksum bytes stored after each strip (v1 images from old 64-bit builds stored 8, not the header's 4) */
  checksumBytes: number;
  /** bytes of the bitmap section, its crc or magic included (0 in bitmap mode NONE) */
  bitmapBytes: number;
  /** the bitmap's stored crc (bitmap mode BIT only) */
  bitmapCrc: number | undefined;
  /** stream offset of the first data block (of the decompressed stream when compressed) */
  dataStart: number;
}

export interface PartimageInfo extends ImageFacts {
  format: "partimage";
  volumeHeader: PartimageVolumeHeader;
  mainHeader: PartimageMainHeader;
  localHeader: PartimageLocalHeader;
  /** the file-system specific info block, where partimage defines one for the file system */
  fsInfo: PartimageFsInfo | undefined;
  /** the info block's stored checksum */
  fsInfoChecksum: number;
  /** offset of the first data block in the volumes joined (decompressed when compressed) */
  dataStart: number;
}

export interface NtfscloneInfo extends ImageFacts {
  format: "ntfsclone";
  header: NtfscloneHeader;
  /**
   * clusters in the image, the backup boot sector's included, from a pass over its commands;
   * undefined for a pipe until its data has been read (usedBlocks is then the header's count + 1,
   * and deviceSize an estimate)
   */
  scannedClusters: number | undefined;
}

/** What `imgtool info` reports of an image, by format: typed headers and what was computed from them. */
export type ImageInfo = PartcloneInfo | PartimageInfo | NtfscloneInfo;

/** A run of used blocks with their bytes; `data` is only valid until the iteration moves on. */
export interface DataRun {
  /** byte offset in the volume */
  offset: number;
  data: Uint8Array;
}

/** A run of used blocks, from the bitmap only. */
export interface UsedRun {
  firstBlock: number;
  blockCount: number;
}

export interface ReadOptions {
  /** verify checksums on the way (default true); a mismatch throws a ChecksumError */
  verify?: boolean;
  /** called now and then with the bytes of the image consumed so far */
  onProgress?: (imageBytes: number) => void;
}

/**
 * What every command consumes. A format opens the header and bitmap eagerly; the data is read
 * once, in ascending order, by `dataRuns`/`blockReader` (a pipe cannot go back).
 */
export interface Image {
  readonly info: ImageInfo;
  isUsed(block: number): boolean;
  /** used runs from the bitmap, ascending */
  usedRuns(): Iterable<UsedRun>;
  /**
   * The used data, ascending, checksums verified unless opts.verify is false; once per Image.
   * The runs of one batch stay valid until the next batch is asked for, so a writer can send a
   * whole batch in one writev.
   */
  dataBatches(opts?: ReadOptions): Generator<DataRun[], void, undefined>;
  /** the same, one run at a time */
  dataRuns(opts?: ReadOptions): Generator<DataRun, void, undefined>;
  /** the same as dataRuns, as a callback: fn(offset, bytes), strictly ascending */
  blockReader(fn: (offset: number, bytes: Uint8Array) => void, opts?: ReadOptions): void;
  /** header facts that disagree with what was read (e.g. a used-block count against the bitmap), each naming file, offset and field */
  consistencyProblems?(): ImageError[];
  /** random access into the volume (unused blocks read as zeros); only where the source is seekable */
  read?(offset: number, length: number): Uint8Array;
  /** the same into a buffer the caller reuses (no allocation per read); only where `read` is */
  readInto?(offset: number, into: Uint8Array): void;
  close(): void;
}

/** dataRuns and blockReader for every format, from its dataBatches; used blocks from a bitmap. */
export abstract class ImageBase implements Image {
  abstract readonly info: ImageInfo;
  abstract isUsed(block: number): boolean;
  abstract usedRuns(): Iterable<UsedRun>;
  abstract dataBatches(opts?: ReadOptions): Generator<DataRun[], void, undefined>;
  abstract close(): void;

  *dataRuns(opts?: ReadOptions): Generator<DataRun, void, undefined> {
    for (const batch of this.dataBatches(opts)) yield* batch;
  }

  blockReader(fn: (offset: number, bytes: Uint8Array) => void, opts?: ReadOptions): void {
    for (const batch of this.dataBatches(opts)) for (const run of batch) fn(run.offset, run.data);
  }
}

/** A format that stores a used-block bitmap up front (partclone, partimage). */
export abstract class BitmapImage extends ImageBase {
  abstract readonly bitmap: UsedBitmap;
  /** the header's own used-block count, where it has one that must agree with the bitmap */
  protected abstract readonly headerUsedBlocks: number | undefined;
  /** where that count is stored, and the field's name */
  protected abstract headerUsedBlocksField(): { at: Location; name: string };

  isUsed(block: number): boolean {
    return this.bitmap.isUsed(block);
  }

  usedRuns(): Iterable<UsedRun> {
    return this.bitmap.runs();
  }

  /** The header's count against the bitmap's (the real tools trust the bitmap; verify says so). */
  consistencyProblems(): ImageError[] {
    const header = this.headerUsedBlocks;
    const used = this.info.usedBlocks;
    if (header === undefined || header === used) return [];
    const { at, name } = this.headerUsedBlocksField();
    return [new ImageError(at, `${name} disagrees with the bitmap`, `the header says ${withCommas(header)} used blocks, the bitmap has ${withCommas(used)}`)];
  }
}
