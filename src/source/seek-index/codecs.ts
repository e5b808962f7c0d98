import type { Compression } from "../sniff.ts";
import type { SeekCodec } from "./codec.ts";
import { zstdCodec } from "./zstd.ts";

/** The compressions that can be read at any offset through a seek index, one module each. */
export const seekCodecs: Partial<Record<Compression, SeekCodec>> = {
  zstd: zstdCodec,
};
