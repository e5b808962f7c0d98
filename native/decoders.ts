import type { ChunkSource } from "../src/source/chunk-source.ts";
import type { Compression } from "../src/source/sniff.ts";
import { decodeSettings } from "./decode-settings.ts";

// Each decoder's module is loaded when its compression is first met: most runs meet one or none.
const gzipDecoder = (input: ChunkSource): ChunkSource => {
  const { IsalGzipDecoder, isalUsable } = require("./isal.ts") as typeof import("./isal.ts");
  if (!decodeSettings().gzipWithZlib && isalUsable()) return new IsalGzipDecoder(input);
  const { GzipDecoder } = require("./zlib.ts") as typeof import("./zlib.ts");
  return new GzipDecoder(input);
};

/** One streaming decoder per compression, each in its own file over one system library. */
export const decoders: Partial<Record<Compression, (input: ChunkSource) => ChunkSource>> = {
  gzip: gzipDecoder,
  zstd: (input) => new (require("./zstd.ts") as typeof import("./zstd.ts")).ZstdDecoder(input),
  lz4: (input) => new (require("./lz4.ts") as typeof import("./lz4.ts")).Lz4Decoder(input),
  xz: (input) => new (require("./lzma.ts") as typeof import("./lzma.ts")).LzmaDecoder(input, "xz"),
  lzma: (input) => new (require("./lzma.ts") as typeof import("./lzma.ts")).LzmaDecoder(input, "lzma"),
  bzip2: (input) => new (require("./bz2.ts") as typeof import("./bz2.ts")).Bzip2Decoder(input),
};
