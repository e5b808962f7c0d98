import { decodeSettings } from "../../native/decode-settings.ts";
import type { Location } from "../errors.ts";
import type { ChunkSource, RandomAccessSource } from "./chunk-source.ts";
import { type PieceDescriptor, pieceDescriptors } from "./pieces.ts";
import type { StoredPoint } from "./seek-index/index-file.ts";
import type { StretchHashes } from "./seek-index/stretch-hashes.ts";
import { findSeekIndex } from "./seek-index/open-index.ts";
import type { Compression } from "./sniff.ts";
import { DecodedRing } from "./decoded-ring.ts";
import { MESSAGE, MESSAGE_BYTES, newRingMemory, workerFailure } from "./threaded-decode.ts";
import { workerEntry } from "../worker-entry.ts";

/**
 * Slots of each worker's ring: more than a span of the default 16 MiB spacing, so that a worker a
 * span ahead of the reader decodes all of it instead of waiting, with a core idle, for the reader to
 * reach it.
 */
export const PARALLEL_SLOT_COUNT = 20;

/** A span is decoded by one worker from one seek point on; shorter spans are joined up to this. */
export const MIN_SPAN_BYTES = 8 << 20;

/**
 * What a parallel decode worker is told: the descriptors of the raw bytes and of their index (open,
 * checked, and closed by the reader), the points spans start at, and its share.
 */
export interface SpanJob {
  /** for messages: the image's first piece */
  file: string;
  raw: PieceDescriptor[];
  compression: Compression;
  index: { file: string; descriptor: number; size: number };
  /** the seek points spans start at, ascending by decoded offset */
  points: StoredPoint[];
  /** every point of the index, to go back to where one decodes wrongly */
  allPoints: StoredPoint[];
  /** what every decoded stretch is checked against (none when every point is trusted) */
  stretches: StretchHashes | undefined;
  /** what the workers learn about `allPoints`: [wrong from (NaN: not seen), checked to] each, Float64 */
  verdicts: SharedArrayBuffer;
  decodedSize: number;
  worker: number;
  workers: number;
}

/** A seek point as planning needs it: where it starts, and how far decoding from it is not known to go wrong. */
export interface SpanPoint {
  decoded: number;
  /** decoding from this point goes wrong from here (undefined: not known to) */
  verifiedEnd?: number;
}

/**
 * Where spans start: points at least `minSpan` apart, each span ending before decoding from its
 * start is known to go wrong (a verdict in the index). Undefined when the points leave a stretch
 * no point covers: such a stream decodes in order.
 */
export function planSpans(points: readonly SpanPoint[], decodedSize: number, minSpan = MIN_SPAN_BYTES): number[] | undefined {
  if (points.length === 0 || points[0]!.decoded !== 0) return undefined;
  const reachOf = (p: SpanPoint) => p.verifiedEnd ?? Number.POSITIVE_INFINITY;
  const starts = [0];
  let current = points[0]!;
  let passed: SpanPoint | undefined;
  const cutAt = (p: SpanPoint) => {
    starts.push(p.decoded);
    current = p;
    passed = undefined;
  };
  for (const p of points.slice(1)) {
    if (p.decoded > reachOf(current)) {
      if (!passed || p.decoded > reachOf(passed)) return undefined;
      cutAt(passed);
    }
    if (p.decoded - current.decoded >= minSpan) cutAt(p);
    else passed = p;
  }
  if (reachOf(current) < decodedSize) {
    if (!passed || reachOf(passed) < decodedSize) return undefined;
    cutAt(passed);
  }
  const last = starts[starts.length - 1]!;
  if (starts.length > 1 && decodedSize - last < minSpan / 2) {
    const before = points.find((p) => p.decoded === starts[starts.length - 2])!;
    if (reachOf(before) >= decodedSize) starts.pop();
  }
  return starts;
}

/**
 * Decoding on `threads` cores from the seek index beside `raw`, when there is one with at least
 * two spans; undefined otherwise (the caller decodes in order). The source returned owns `raw`.
 */
export function openParallelDecode(
  raw: RandomAccessSource,
  pieces: string[],
  compression: Compression,
  threads: number,
  minSpan = MIN_SPAN_BYTES,
): ParallelDecodeSource | undefined {
  const descriptors = pieceDescriptors(raw);
  const index = descriptors && findSeekIndex(raw, pieces, compression);
  if (!index) return undefined;
  let parallel: ParallelDecodeSource | undefined;
  try {
    const starts = planSpans(
      index.points.map((p) => ({ decoded: p.decoded, verifiedEnd: p.wrongFrom })),
      index.decodedSize,
      minSpan,
    );
    if (!starts || starts.length < 2 || index.descriptor === undefined) return undefined;
    // No whole-frame check (zstd's XXH64, a gzip member's CRC-32) is made here, in order: a span
    // starts inside a frame only at a resumed point, and an index with resumed points has stretch
    // hashes, taken in a pass whose frame checksums and member trailers held. The workers compare
    // every byte with them; equal bytes have those sums too.
    const pointAt = new Map(index.points.map((p) => [p.decoded, p]));
    const verdicts = new SharedArrayBuffer(16 * index.points.length);
    const learned = new Float64Array(verdicts);
    for (const [i, p] of index.points.entries()) {
      learned[2 * i] = p.wrongFrom ?? Number.NaN;
      learned[2 * i + 1] = p.checkedTo;
    }
    const job = {
      file: pieces[0]!,
      raw: descriptors,
      compression,
      index: { file: index.path, descriptor: index.descriptor, size: index.bytes },
      points: starts.map((s) => pointAt.get(s)!),
      allPoints: index.points,
      stretches: index.stretches,
      verdicts,
      decodedSize: index.decodedSize,
    };
    parallel = new ParallelDecodeSource(job, threads, () => {
      // what the workers learned about the points goes into the index, for the next reader
      for (const [i, p] of index.points.entries()) {
        if (!Number.isNaN(learned[2 * i]!)) index.markWrong(p, learned[2 * i]!);
        index.markChecked(p, learned[2 * i + 1]!);
      }
      index.close();
      raw.close();
    });
    return parallel;
  } finally {
    if (!parallel) index.close();
  }
}

interface Ring {
  worker: Worker;
  ctl: Int32Array;
  message: Uint8Array;
  ring: DecodedRing;
}

/**
 * The decoded stream of an indexed compressed file, decoded by several workers at once: worker w
 * decodes spans w, w + n, w + 2n, ... from their seek points into its own ring, and this reader takes
 * the spans in order, so the bytes (and the first error, at its place) are those of one decoder.
 * Memory: n rings of PARALLEL_SLOT_COUNT × SLOT_BYTES.
 */
export class ParallelDecodeSource implements ChunkSource {
  readonly size = undefined;
  readonly name: string;
  private readonly rings: Ring[] = [];
  private span = 0;
  private leftInSpan: number;
  private readonly starts: number[];
  private readonly decodedSize: number;
  private closeInputs: (() => void) | undefined;
  private readonly compression: Compression;

  constructor(
    job: Omit<SpanJob, "worker" | "workers">,
    workers: number,
    /** closes what the workers read through, once they are stopped */
    closeInputs: () => void,
  ) {
    this.name = job.file;
    this.closeInputs = closeInputs;
    this.starts = job.points.map((p) => p.decoded);
    this.decodedSize = job.decodedSize;
    this.compression = job.compression;
    const n = Math.max(1, Math.min(workers, job.points.length));
    for (let w = 0; w < n; w++) {
      const memory = newRingMemory(PARALLEL_SLOT_COUNT);
      const worker = new Worker(workerEntry("source/parallel-decode-worker.ts"));
      worker.postMessage({ shared: memory.shared, job: { ...job, worker: w, workers: n } satisfies SpanJob, settings: decodeSettings() });
      const { ctl } = memory;
      const message = memory.messages.subarray(MESSAGE.failure * MESSAGE_BYTES, (MESSAGE.failure + 1) * MESSAGE_BYTES);
      this.rings.push({ worker, ctl, message, ring: new DecodedRing(memory, () => this.rethrow(ctl, message)) });
    }
    this.leftInSpan = this.spanLength(0);
  }

  read(into: Uint8Array): number {
    const bytes = this.borrow(into.length);
    into.set(bytes);
    this.rings[this.span % this.rings.length]?.ring.release();
    return bytes.length;
  }

  borrow(max: number): Uint8Array {
    while (this.leftInSpan === 0) {
      if (this.span + 1 >= this.starts.length) return new Uint8Array(0);
      // the last slot of the span just read goes back to its worker now, not at that ring's next turn
      this.rings[this.span % this.rings.length]!.ring.release();
      this.span++;
      this.leftInSpan = this.spanLength(this.span);
    }
    const { ring } = this.rings[this.span % this.rings.length]!;
    // a slot never holds bytes of two spans: the worker starts each span in a slot of its own
    const bytes = ring.take(Math.min(max, this.leftInSpan));
    if (bytes.length === 0) throw new Error(`parallel decode: the worker of span ${this.span} ended early`);
    this.leftInSpan -= bytes.length;
    return bytes;
  }

  locate(offset: number): Location {
    return { file: this.name, offset, decoded: this.compression };
  }

  close(): void {
    for (const { ring, worker } of this.rings) {
      ring.close();
      worker.terminate();
    }
    this.rings.length = 0;
    // a worker still in a read when this closes its descriptor reads nothing anyone takes: its ring is closed
    this.closeInputs?.();
    this.closeInputs = undefined;
  }

  private spanLength(i: number): number {
    return (this.starts[i + 1] ?? this.decodedSize) - this.starts[i]!;
  }

  private rethrow(ctl: Int32Array, message: Uint8Array): never {
    const e = workerFailure(ctl, message);
    this.close();
    throw e;
  }
}
