import { ImageError } from "../errors.ts";
import type { ChunkSource } from "./chunk-source.ts";
import type { Compression } from "./sniff.ts";
import { decoders } from "../../native/decoders.ts";

/** A streaming decoder over `input`, in constant memory. */
export function createDecoder(kind: Compression, input: ChunkSource): ChunkSource {
  const make = decoders[kind];
  if (!make) throw new ImageError(input.locate(0), `${kind} data, and no ${kind} decoder is available on this machine`);
  return make(input);
}
