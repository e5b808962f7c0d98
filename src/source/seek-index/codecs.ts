import type { Compression } from "../sniff.ts";
import type { SeekCodec } from "./codec.ts";

/** The compressions that can be read at any offset through a seek index, one module each, loaded when first used. */
const CODECS: Partial<Record<Compression, () => SeekCodec>> = {
  zstd: () => (require("./zstd.ts") as typeof import("./zstd.ts")).zstdCodec,
  gzip: () => (require("./gzip.ts") as typeof import("./gzip.ts")).gzipSeekCodec,
  bzip2: () => (require("./bzip2.ts") as typeof import("./bzip2.ts")).bzip2SeekCodec,
  xz: () => (require("./xz.ts") as typeof import("./xz.ts")).xzSeekCodec,
  lzma: () => (require("./xz.ts") as typeof import("./xz.ts")).lzmaSeekCodec,
  lz4: () => (require("./lz4.ts") as typeof import("./lz4.ts")).lz4SeekCodec,
};

export const SEEKABLE_COMPRESSIONS = Object.keys(CODECS) as Compression[];

/** The seek codec of a compression, or undefined when imgtool has none for it. */
export function seekCodecOf(compression: Compression): SeekCodec | undefined {
  return CODECS[compression]?.();
}
