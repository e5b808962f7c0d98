import type { ChunkSource } from "../src/source/chunk-source.ts";
import type { Compression } from "../src/source/sniff.ts";
import { GzipDecoder } from "./zlib.ts";
import { ZstdDecoder } from "./zstd.ts";

/** One streaming decoder per compression, each in its own file over one system library. */
export const decoders: Partial<Record<Compression, (input: ChunkSource) => ChunkSource>> = {
  gzip: (input) => new GzipDecoder(input),
  zstd: (input) => new ZstdDecoder(input),
};
