import type { ChunkSource } from "../src/source/chunk-source.ts";
import type { Compression } from "../src/source/sniff.ts";

/** One streaming decoder per compression, each in its own file over one system library. */
export const decoders: Partial<Record<Compression, (input: ChunkSource) => ChunkSource>> = {};
