import type { Image } from "../formats/image.ts";
import { humanSize } from "../formats/units.ts";
import { imageVolume, type Volume, type WritableVolume } from "../volume/volume.ts";
import type { NbdExport } from "./nbd-connection.ts";

const MIN_PREFERRED = 512;
const MAX_PREFERRED = 64 << 10;
const DEFAULT_PREFERRED = 4096;

/**
 * A volume as an NBD export: read-only, or writable through `writable` (an overlay over it).
 * `what` says what it is in NBD_INFO_DESCRIPTION ("partclone image of EXT4").
 */
export function volumeExport(volume: Volume, name: string, what: string, writable?: WritableVolume): NbdExport {
  const bs = volume.blockSize;
  const powerOfTwo = bs > 0 && (bs & (bs - 1)) === 0;
  return {
    name,
    description: `${what}, ${humanSize(volume.size)}, ${writable ? "writable through an overlay" : "read-only"}`,
    volume: writable ?? volume,
    writable,
    preferredBlockSize: powerOfTwo ? Math.min(MAX_PREFERRED, Math.max(MIN_PREFERRED, bs)) : DEFAULT_PREFERRED,
  };
}

/**
 * The restored volume of an image with random access as an export. The block index is built
 * here, so that a damaged image fails before anything listens.
 */
export function imageExport(image: Image, name: string): NbdExport {
  return volumeExport(openImageVolume(image, name), name, imageDescription(image));
}

/** The image's volume, its block index built (a damaged image fails here). */
export function openImageVolume(image: Image, name: string): Volume {
  if (!image.read) throw new Error("an image with random access is needed");
  image.read(0, 0);
  return imageVolume(image, name);
}

export function imageDescription(image: Image): string {
  return `${image.info.format} image of ${image.info.fsType}`;
}
