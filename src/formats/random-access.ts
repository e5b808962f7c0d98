import { UsageError } from "../errors.ts";
import { openImage, type OpenImageOptions } from "./detect.ts";
import type { Image } from "./image.ts";

/** An image that reads at any offset: `read` is always there. */
export interface RandomAccessImage extends Image {
  read(offset: number, length: number): Uint8Array;
}

/**
 * Open an image for reads at any offset: a plain file or split set through its block index, a
 * compressed one through its seek index (found, or built on first use unless opts.seekIndex says
 * otherwise). Throws a UsageError naming why where that cannot be (a pipe, a codec without an index).
 */
export function openRandomAccessImage(file: string, opts: OpenImageOptions = {}): RandomAccessImage {
  const image = openImage(file, { seekIndex: { mode: "build" }, ...opts });
  if (!image.read) {
    image.close();
    throw new UsageError(`${file}: cannot be read at any offset (${image.info.compression.join(" inside ") || "not a regular file"}); use restore`);
  }
  return image as RandomAccessImage;
}
