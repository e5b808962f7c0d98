import { ImageError, type Location } from "../errors.ts";
import { growPipe } from "../../native/libc-file.ts";
import { ByteReader } from "./byte-reader.ts";
import { type ChunkSource, type RandomAccessSource, isRandomAccess } from "./chunk-source.ts";
import { createDecoder } from "./decode.ts";
import { openFileSource, StreamSource } from "./file.ts";
import type { SeekIndexOptions } from "./seek-index/open-index.ts";
import { type Compression, sniffCompression } from "./sniff.ts";
import { findSplitPieces, openSplitSet, pieceAfter } from "./split.ts";

// Loaded on first use, synchronously: a plain file (most btrfs-receive and info runs) needs none of
// them, and their import graphs (every seek index codec, the worker plumbing) are most of a start-up.
const seekIndexModule = () => require("./seek-index/open-index.ts") as typeof import("./seek-index/open-index.ts");
const parallelDecodeModule = () => require("./parallel-decode.ts") as typeof import("./parallel-decode.ts");
const threadedDecodeModule = () => require("./threaded-decode.ts") as typeof import("./threaded-decode.ts");

/** What `openStream` found: the decoded bytes and how it got to them. */
export interface OpenedStream {
  reader: ByteReader;
  /** outermost first, e.g. ["zstd"]; empty for a plain file */
  compression: Compression[];
  /** the files read, in order (one unless a split set) */
  pieces: string[];
  /**
   * reads at any offset: the file or split set itself when not compressed; the decoded stream
   * through a seek index when compressed and asked for (`seekIndex`)
   */
  randomAccess?: RandomAccessSource;
}

/** Where the raw bytes come from, in a form a decode worker can open again. */
export type RawSpec = { pieces: string[] } | { fd: number; name: string; head: Uint8Array };

const SNIFF_BYTES = 64;
const PIPE_BYTES = 1 << 20;
/** A seekable stream's reader starts this small (it grows for a large bitmap): each serving thread holds one. */
const SEEKABLE_READER_BYTES = 64 << 10;

export interface OpenOptions {
  /** decompress in a worker thread, overlapping with the caller's work (default: yes) */
  threads?: boolean;
  /**
   * compressed files and split sets: read the decoded stream through a seek index, found or built
   * (default: never, read in order)
   */
  seekIndex?: SeekIndexOptions;
  /**
   * decode on this many cores at once where a seek index is already there (restore, verify);
   * 1 or unset: one decoder, as without an index
   */
  decodeThreads?: number;
}

let workerThreads = true;

/** Whether decoding may run in worker threads at all (the CLI's IMGTOOL_THREADS=0 turns it off). */
export function allowWorkerThreads(allowed: boolean): void {
  workerThreads = allowed;
}

/**
 * path | "-" | an open fd → pieces joined → compression sniffed and decoded (repeatedly, for
 * nested compression) → one ByteReader over the result.
 */
export function openStream(input: string | number, opts: OpenOptions = {}): OpenedStream {
  const { raw, pieces } = openRaw(input);
  const head = readHead(raw);
  const kind = sniffCompression(head.bytes);
  if (!kind) {
    return { reader: new ByteReader(head.source), compression: [], pieces, randomAccess: isRandomAccess(raw) ? raw : undefined };
  }
  if (opts.seekIndex && opts.seekIndex.mode !== "never" && isRandomAccess(raw)) {
    const seekable = seekIndexModule().openSeekable(raw, pieces, kind, opts.seekIndex);
    if (seekable) {
      const inner = new Uint8Array(SNIFF_BYTES);
      const n = seekable.readAt(inner, 0);
      // compressed twice over: the index covers the outer layer only, so read in order
      if (!sniffCompression(inner.subarray(0, n))) {
        // the reader parses the header and bitmap; the data is read at random, past it
        return { reader: new ByteReader(seekable, SEEKABLE_READER_BYTES), compression: [kind], pieces, randomAccess: seekable };
      }
      seekable.close();
      return openStream(input, { ...opts, seekIndex: undefined });
    }
  }
  if ((opts.decodeThreads ?? 1) > 1 && isRandomAccess(raw)) {
    const parallel = parallelDecodeModule().openParallelDecode(raw, pieces, kind, opts.decodeThreads!);
    if (parallel) {
      const decoded = decodeLayers(parallel);
      return { reader: new ByteReader(decoded.source), compression: [kind, ...decoded.compression], pieces };
    }
  }
  if (opts.threads !== false && workerThreads) {
    const spec: RawSpec = raw instanceof StreamSource ? { fd: raw.fd, name: raw.name, head: head.bytes } : { pieces };
    const { ThreadedDecodeSource, WorkerDidNotStart } = threadedDecodeModule();
    try {
      const threaded = new ThreadedDecodeSource(spec);
      if (!(raw instanceof StreamSource)) raw.close();
      return { reader: new ByteReader(threaded), compression: threaded.compression, pieces };
    } catch (e) {
      if (!(e instanceof WorkerDidNotStart)) {
        raw.close();
        throw e;
      }
    }
  }
  const decoded = decodeLayers(head.source);
  return { reader: new ByteReader(decoded.source), compression: decoded.compression, pieces };
}

/** The raw bytes of a path (a file, a split set, a pipe) or an fd. */
export function openRaw(input: string | number | RawSpec): { raw: ChunkSource; pieces: string[] } {
  if (typeof input === "object") {
    if ("fd" in input) return { raw: new ReplaySource(input.head, new StreamSource(input.name, input.fd, false)), pieces: [input.name] };
    const raw = input.pieces.length > 1 || pieceAfter(input.pieces) ? openSplitSet(input.pieces) : openFileSource(input.pieces[0]!);
    return { raw, pieces: input.pieces };
  }
  if (typeof input === "number") {
    growPipe(input, PIPE_BYTES);
    const raw = new StreamSource(`fd ${input}`, input, false);
    return { raw, pieces: [raw.name] };
  }
  const split = input === "-" ? undefined : findSplitPieces(input);
  if (split && (split.length > 1 || pieceAfter(split))) return { raw: openSplitSet(split), pieces: split };
  const raw = openFileSource(split?.[0] ?? input);
  if (raw instanceof StreamSource) growPipe(raw.fd, PIPE_BYTES);
  return { raw, pieces: [raw.name] };
}

/** Sniff and decode layer after layer until the bytes are no longer compressed. */
export function decodeLayers(source: ChunkSource): { source: ChunkSource; compression: Compression[] } {
  const compression: Compression[] = [];
  for (;;) {
    const head = readHead(source);
    const kind = sniffCompression(head.bytes);
    source = head.source;
    if (!kind) return { source, compression };
    if (compression.length === 4) throw new ImageError(source.locate(0), "compressed more than four times over");
    compression.push(kind);
    source = createDecoder(kind, source);
  }
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
  readonly borrow?: (max: number) => Uint8Array;
  constructor(
    private readonly head: Uint8Array,
    private readonly rest: ChunkSource,
  ) {
    if (rest.borrow) {
      const borrowRest = rest.borrow.bind(rest);
      this.borrow = (max) => {
        if (this.taken >= this.head.length) return borrowRest(max);
        const n = Math.min(max, this.head.length - this.taken);
        this.taken += n;
        return this.head.subarray(this.taken - n, this.taken);
      };
    }
  }
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
  missingPiece(): ImageError | undefined {
    return this.rest.missingPiece?.();
  }
  close(): void {
    this.rest.close();
  }
}
