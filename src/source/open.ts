import { ImageError, type Location } from "../errors.ts";
import { ByteReader } from "./byte-reader.ts";
import { type ChunkSource, type RandomAccessSource, isRandomAccess } from "./chunk-source.ts";
import { createDecoder } from "./decode.ts";
import { openFileSource, StreamSource } from "./file.ts";
import { type Compression, sniffCompression } from "./sniff.ts";
import { findSplitPieces, SplitSource } from "./split.ts";

/** What `openStream` found: the decoded bytes and how it got to them. */
export interface OpenedStream {
  reader: ByteReader;
  /** outermost first, e.g. ["zstd"]; empty for a plain file */
  compression: Compression[];
  /** the files read, in order (one unless a split set) */
  pieces: string[];
  /** the undecoded source when it allows reads at any offset (plain file or split set) */
  randomAccess?: RandomAccessSource;
}

const SNIFF_BYTES = 64;

/**
 * path | "-" | an open fd → pieces joined → compression sniffed and decoded (repeatedly, for
 * nested compression) → one ByteReader over the result.
 */
export function openStream(input: string | number): OpenedStream {
  let raw: ChunkSource;
  let pieces: string[];
  if (typeof input === "number") {
    raw = new StreamSource(`fd ${input}`, input, false);
    pieces = [raw.name];
  } else {
    const split = input === "-" ? undefined : findSplitPieces(input);
    if (split && split.length > 1) {
      raw = SplitSource.open(split);
      pieces = split;
    } else {
      raw = openFileSource(split?.[0] ?? input);
      pieces = [raw.name];
    }
  }
  const compression: Compression[] = [];
  let source = raw;
  for (;;) {
    const head = readHead(source);
    const kind = sniffCompression(head.bytes);
    source = head.source;
    if (!kind) break;
    if (compression.length === 4) throw new ImageError(source.locate(0), "compressed more than four times over");
    compression.push(kind);
    source = createDecoder(kind, source);
  }
  return {
    reader: new ByteReader(source),
    compression,
    pieces,
    randomAccess: compression.length === 0 && isRandomAccess(raw) ? raw : undefined,
  };
}

/** Read the first bytes for sniffing and give back a source that still starts with them. */
function readHead(source: ChunkSource): { bytes: Uint8Array; source: ChunkSource } {
  const buf = new Uint8Array(SNIFF_BYTES);
  let n = 0;
  while (n < buf.length) {
    const got = source.read(buf.subarray(n));
    if (got === 0) break;
    n += got;
  }
  const bytes = buf.subarray(0, n);
  return { bytes, source: new ReplaySource(bytes, source) };
}

/** Replays bytes already taken from `rest`, then continues with it. */
class ReplaySource implements ChunkSource {
  private taken = 0;
  constructor(
    private readonly head: Uint8Array,
    private readonly rest: ChunkSource,
  ) {}
  get name(): string {
    return this.rest.name;
  }
  get size(): number | undefined {
    return this.rest.size;
  }
  read(into: Uint8Array): number {
    if (this.taken < this.head.length) {
      const n = Math.min(into.length, this.head.length - this.taken);
      into.set(this.head.subarray(this.taken, this.taken + n));
      this.taken += n;
      return n;
    }
    return this.rest.read(into);
  }
  locate(offset: number): Location {
    return this.rest.locate(offset);
  }
  close(): void {
    this.rest.close();
  }
}
