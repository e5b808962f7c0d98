import type { Compression } from "../sniff.ts";
import { bzip2SeekCodec } from "./bzip2.ts";
import type { SeekCodec } from "./codec.ts";
import { gzipSeekCodec } from "./gzip.ts";
import { lz4SeekCodec } from "./lz4.ts";
import { lzmaSeekCodec, xzSeekCodec } from "./xz.ts";
import { zstdCodec } from "./zstd.ts";

/** The compressions that can be read at any offset through a seek index, one module each. */
export const seekCodecs: Partial<Record<Compression, SeekCodec>> = {
  zstd: zstdCodec,
  gzip: gzipSeekCodec,
  bzip2: bzip2SeekCodec,
  xz: xzSeekCodec,
  lzma: lzmaSeekCodec,
  lz4: lz4SeekCodec,
};
