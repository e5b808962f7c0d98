import type { Image } from "../formats/image.ts";
import { humanSize } from "../formats/units.ts";
import type { NbdExport } from "./nbd.ts";

const MIN_PREFERRED = 512;
const MAX_PREFERRED = 64 << 10;
const DEFAULT_PREFERRED = 4096;

/**
 * The restored volume of an image with random access as an NBD export. The block index is built
 * here, so that a damaged image fails before anything listens.
 */
export function imageExport(image: Image, name: string): NbdExport {
  const read = image.read;
  if (!read) throw new Error("imageExport needs an image with random access");
  const { info } = image;
  read.call(image, 0, 0);
  const bs = info.blockSize;
  const powerOfTwo = bs > 0 && (bs & (bs - 1)) === 0;
  return {
    name,
    description: `${info.format} image of ${info.fsType}, ${humanSize(info.deviceSize)}, read-only`,
    size: info.deviceSize,
    preferredBlockSize: powerOfTwo ? Math.min(MAX_PREFERRED, Math.max(MIN_PREFERRED, bs)) : DEFAULT_PREFERRED,
    read: (offset, length) => read.call(image, offset, length),
  };
}
