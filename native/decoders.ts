import type { ChunkSource } from "../src/source/chunk-source.ts";
import type { Compression } from "../src/source/sniff.ts";
import { Bzip2Decoder } from "./bz2.ts";
import { Lz4Decoder } from "./lz4.ts";
import { LzmaDecoder } from "./lzma.ts";
import { GzipDecoder } from "./zlib.ts";
import { IsalGzipDecoder, isalUsable } from "./isal.ts";
import { ZstdDecoder } from "./zstd.ts";

/** One streaming decoder per compression, each in its own file over one system library. */
export const decoders: Partial<Record<Compression, (input: ChunkSource) => ChunkSource>> = {
  gzip: (input) => (process.env.IMGTOOL_GZIP !== "zlib" && isalUsable() ? new IsalGzipDecoder(input) : new GzipDecoder(input)),
  zstd: (input) => new ZstdDecoder(input),
  lz4: (input) => new Lz4Decoder(input),
  xz: (input) => new LzmaDecoder(input, "xz"),
  lzma: (input) => new LzmaDecoder(input, "lzma"),
  bzip2: (input) => new Bzip2Decoder(input),
};
