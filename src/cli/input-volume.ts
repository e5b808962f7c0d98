import fs from "node:fs";
import path from "node:path";
import { openImage } from "../formats/detect.ts";
import { imageDescription, openImageVolume } from "../serve/image-export.ts";
import { closingWith, type Volume } from "../volume/volume.ts";
import { diskInputOf, openDiskVolume } from "./disk-input.ts";
import { BUILD_SEEK_INDEX, refuseWithoutRandomAccess } from "./run.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";

/**
 * What serve, mount and ls/get/extract read at any offset: a partition image (plain, split, or
 * compressed through its seek index), a whole disk (a Clonezilla folder or a raw disk image) or one
 * partition of a disk, as one Volume.
 */
export interface InputVolume {
  volume: Volume;
  /** the input's own name, for a default export or file name */
  baseName: string;
  /** what it is, for NBD_INFO_DESCRIPTION: "partclone image of EXT4", "disk sda" */
  description: string;
  /** the files read (an overlay must not be one of them) */
  inputs: string[];
  /** the path a mount is named after and takes its mtime from */
  source: string;
  mtimeMs: number;
  /** closes the volume and everything opened for it (the same as volume.close) */
  close(): void;
}

/** `opts.seekIndex`: how a compressed image is read at random (default: its index built on first use). */
export function openInputVolume(arg: string, command: string, opts: { partition?: string; disk?: string; seekIndex?: SeekIndexOptions } = {}): InputVolume {
  const disk = diskInputOf(arg, opts.partition);
  if (disk) {
    const { volume: inDisk, opened, label } = openDiskVolume(disk, opts.disk, opts.seekIndex ?? BUILD_SEEK_INDEX.seekIndex);
    const volume = closingWith(inDisk, () => {
      inDisk.close();
      opened.close();
    });
    const source = path.resolve(disk.path);
    return {
      volume,
      baseName: `${path.basename(disk.path)}${disk.partition ? `@${disk.partition}` : ""}`,
      description: label,
      inputs: [disk.path],
      source,
      mtimeMs: fs.statSync(source).mtimeMs,
      close: () => volume.close(),
    };
  }
  const image = openImage(arg, arg === "-" ? {} : opts.seekIndex ? { seekIndex: opts.seekIndex } : BUILD_SEEK_INDEX);
  try {
    refuseWithoutRandomAccess(image, arg, command);
    const baseName = imageBaseName(image.info.format, image.info.pieces);
    // builds the block index now, so that a damaged image fails before anything starts
    // messages name the image as it lies on disk
    const volume = closingWith(openImageVolume(image, image.info.pieces[0]!), () => image.close());
    const source = path.resolve(image.info.pieces[0]!);
    return {
      volume,
      baseName,
      description: imageDescription(image),
      inputs: image.info.pieces,
      source,
      mtimeMs: fs.statSync(source).mtimeMs,
      close: () => volume.close(),
    };
  } catch (e) {
    image.close();
    throw e;
  }
}

/** The first piece's name without a split or partimage volume suffix. */
function imageBaseName(format: string, pieces: string[]): string {
  const first = path.basename(pieces[0]!);
  const pieceSuffix = format === "partimage" ? /\.\d{3}$/ : pieces.length > 1 ? /\.[a-z]+$/ : undefined;
  return pieceSuffix ? first.replace(pieceSuffix, "") : first;
}
