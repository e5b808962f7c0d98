// One parallel decode worker (see parallel-decode.ts): reads the raw bytes and their seek index
// through the descriptors the reader opened and checked, and decodes its share of the spans into its
// ring, in order. zstd is decoded block by block straight into the ring (zstd-ring.ts); other
// compressions are read into it a slot at a time. Every stretch is checked against the index's stretch
// hashes before it is handed over. What this loads is kept to what zstd needs, and nothing that
// loads node:fs (a worker is ready sooner than one that opens the image and its index again).
import { type DecodeSettings, useDecodeSettings } from "../../native/decode-settings.ts";
import { ImageError, withCommas } from "../errors.ts";
import type { RandomAccessSource } from "./chunk-source.ts";
import { lowerThreadPriority } from "../../native/libc-thread.ts";
import type { SpanJob } from "./parallel-decode.ts";
import { FileSource, borrowPieces } from "./pieces.ts";
import type { SeekCodec } from "./seek-index/codec.ts";
import type { StoredPoint } from "./seek-index/index-file.ts";
import { StretchChecker, isDecodeError } from "./seek-index/stretch-hashes.ts";
import { CorruptIndex, readStoredWindow, seekPointOf } from "./seek-index/stored-window.ts";
import { zstdCodec } from "./seek-index/zstd.ts";
import { ZstdRingDecoder } from "./seek-index/zstd-ring.ts";
import { Closed, SlotWriter } from "./slot-writer.ts";
import { CTL, MESSAGE, MESSAGE_BYTES, SLOT_BYTES, STATE, failureOf, ringMemory } from "./threaded-decode.ts";

declare const self: Worker;

/**
 * The workers run this many nice levels below the thread that takes their spans in order, parses
 * and writes them: with as many workers as cores, that thread is the one the restore waits for.
 */
const WORKER_NICE_STEPS = 10;

/** A stretch decoded from a resumed point differs from the index's hash (or failed to decode): start earlier. */
class WrongStretch extends Error {
  constructor(readonly from: number) {
    super(`decoded differently from ${from}`);
  }
}

/** What a span is decoded with: the ring, its writer, the index's points, hashes and windows. */
interface SpanContext {
  job: SpanJob;
  raw: RandomAccessSource;
  ring: Uint8Array;
  writer: SlotWriter;
  codec: SeekCodec;
  zstd: ZstdRingDecoder | undefined;
  checker: StretchChecker | undefined;
  window: (p: StoredPoint, into?: Uint8Array) => Uint8Array;
  verdicts: SharedVerdicts;
}

/**
 * What the workers learn about points, told to the reader through shared memory (it keeps them in
 * the index): per point of the index, where decoding from it went wrong (NaN: nowhere seen) and how
 * far it was checked.
 */
class SharedVerdicts {
  private readonly words: Float64Array;
  private readonly at = new Map<StoredPoint, number>();

  constructor(buffer: SharedArrayBuffer, points: StoredPoint[]) {
    this.words = new Float64Array(buffer);
    for (const [i, p] of points.entries()) this.at.set(p, i);
  }

  wrong(p: StoredPoint, from: number): void {
    p.wrongFrom = Math.min(p.wrongFrom ?? Number.POSITIVE_INFINITY, from);
    p.checkedTo = Math.min(p.checkedTo, from);
    const i = this.at.get(p);
    if (i !== undefined) this.words[2 * i] = p.wrongFrom;
  }

  checked(p: StoredPoint, to: number): void {
    if (to <= p.checkedTo) return;
    p.checkedTo = to;
    const i = this.at.get(p);
    if (i !== undefined) this.words[2 * i + 1] = to;
  }
}

/**
 * Decode [first.decoded, spanEnd) into the ring and hand it over, each stretch once it matches its
 * hash. Where a resumed point decodes a stretch differently (or fails in it), the point is marked wrong
 * from there and decoding goes on from an earlier one, from that stretch.
 */
function decodeSpan(c: SpanContext, first: StoredPoint, spanEnd: number): void {
  let point = first;
  let from = first.decoded;
  const endsEarly = (at: number) =>
    new ImageError({ file: c.job.file, offset: at, decoded: c.job.compression }, `${c.job.compression} data ends early`, `the seek index says ${c.job.decodedSize} decoded bytes`);
  for (;;) {
    c.checker?.startAt(from);
    try {
      decodeFrom(c, point, from, spanEnd, endsEarly);
      return;
    } catch (e) {
      if (!c.checker || point.trusted || e instanceof Closed || e instanceof CorruptIndex || !isDecodeError(e)) throw e;
      c.writer.drop();
      from = e instanceof WrongStretch ? e.from : c.checker.stretchStart;
      c.verdicts.wrong(point, Math.max(point.decoded, from));
      point = earlierPoint(c.job.allPoints, from);
    }
  }
}

/** One try of decodeSpan: from `point`, handing over from `from` (a stretch start) on. */
function decodeFrom(c: SpanContext, point: StoredPoint, from: number, spanEnd: number, endsEarly: (at: number) => Error): void {
  const { writer, checker, ring } = c;
  /** hand over ring[at, at + n), the decoded bytes at `decoded`, checking them stretch by stretch */
  const give = (bytes: Uint8Array, decoded: number) => {
    for (let o = 0; o < bytes.length; ) {
      const n = checker ? Math.min(bytes.length - o, checker.leftInStretch) : bytes.length - o;
      const stretchStart = checker?.stretchStart ?? 0;
      writer.add(bytes.byteOffset - ring.byteOffset + o, n);
      // every stretch is hashed, even one decoded from this point before: the compressed bytes may
      // have changed since, and this comparison stands in for the frame's own checksum (see openParallelDecode)
      const verdict = checker?.update(bytes.subarray(o, o + n));
      if (verdict === false) {
        if (!point.trusted) throw new WrongStretch(stretchStart);
        throw new ImageError(
          { file: c.job.file, offset: stretchStart, decoded: c.job.compression },
          `corrupt ${c.job.compression} data`,
          `the bytes decompressed at ${withCommas(stretchStart)}..${withCommas(checker!.stretchStart)} differ from those the seek index recorded, in a pass whose checksums held`,
        );
      }
      if (verdict !== undefined) {
        writer.commit();
        if (verdict && stretchStart <= point.checkedTo) c.verdicts.checked(point, checker!.stretchStart);
      }
      o += n;
    }
    return decoded + bytes.length;
  };
  const room = c.zstd?.windowRoom(point.windowSize);
  const resumed = seekPointOf({ window: c.window }, point, room);
  if (c.zstd?.start(resumed)) {
    for (let at = point.decoded; at < spanEnd; ) {
      const out = c.zstd.next();
      if (out.length === 0) throw endsEarly(at);
      const n = Math.min(out.length, spanEnd - at);
      const skip = Math.max(0, Math.min(n, from - at));
      at += skip;
      if (n > skip) at = give(out.subarray(skip, n), at);
    }
    writer.commit();
    c.zstd.finishSpan();
    return;
  }
  // the slots are written over as this decodes: its window is its own
  const history = resumed.window.buffer === ring.buffer ? resumed.window.slice() : resumed.window;
  const source = c.codec.resume(c.raw, { ...resumed, window: history });
  try {
    for (let at = point.decoded; at < spanEnd; ) {
      const room = writer.nextSlotRoom();
      const skipping = at < from;
      const want = skipping ? from - at : checker ? checker.leftInStretch : spanEnd - at;
      const view = ring.subarray(room, room + Math.min(SLOT_BYTES, want, spanEnd - at));
      for (let filled = 0; filled < view.length; ) {
        const n = source.read(view.subarray(filled));
        if (n === 0) throw endsEarly(at + filled);
        filled += n;
      }
      at = skipping ? at + view.length : give(view, at);
      if (!checker) writer.commit();
    }
    writer.commit();
    // one byte more lets the decoder reach the trailer of a block or frame that ends with the span,
    // and check it
    source.read(new Uint8Array(1));
  } finally {
    source.close();
  }
}

/** The last point at or before `at` not known to decode wrongly there (the stream's start always is). */
function earlierPoint(points: StoredPoint[], at: number): StoredPoint {
  for (let i = points.length - 1; i >= 0; i--) {
    const p = points[i]!;
    if (p.decoded <= at && (p.wrongFrom ?? Number.POSITIVE_INFINITY) > at) return p;
  }
  return points[0]!;
}

async function codecOf(job: SpanJob): Promise<SeekCodec> {
  if (job.compression === "zstd") return zstdCodec;
  const codec = (await import("./seek-index/codecs.ts")).seekCodecOf(job.compression);
  if (!codec) throw new Error(`no seek codec for ${job.compression}`);
  return codec;
}

self.onmessage = async (event: MessageEvent<{ shared: SharedArrayBuffer; job: SpanJob; settings: DecodeSettings }>) => {
  const { shared, job, settings } = event.data;
  useDecodeSettings(settings);
  const { ctl, messages, ring, slots } = ringMemory(shared);
  const message = messages.subarray(MESSAGE.failure * MESSAGE_BYTES, (MESSAGE.failure + 1) * MESSAGE_BYTES);
  const writer = new SlotWriter(ctl, slots, job.stretches !== undefined);
  lowerThreadPriority(WORKER_NICE_STEPS);
  try {
    const raw = borrowPieces(job.raw);
    const indexFile = new FileSource(job.index.file, job.index.descriptor, job.index.size, false);
    const window = (p: StoredPoint, into?: Uint8Array) => readStoredWindow(p, (buf, offset) => indexFile.readAt(buf, offset), job.index.file, into);
    const codec = await codecOf(job);
    const zstd = job.compression === "zstd" ? new ZstdRingDecoder(raw, ring, (at, n) => writer.reserve(at, n)) : undefined;
    const checker = job.stretches && new StretchChecker(job.stretches);
    const verdicts = new SharedVerdicts(job.verdicts, job.allPoints);
    const context: SpanContext = { job, raw, ring, writer, codec, zstd, checker, window, verdicts };
    Atomics.store(ctl, CTL.state, STATE.ready);
    for (let span = job.worker; span < job.points.length; span += job.workers) {
      const start = job.points[span]!;
      const point = job.allPoints.find((p) => p.decoded === start.decoded && p.compressed === start.compressed) ?? start;
      decodeSpan(context, point, job.points[span + 1]?.decoded ?? job.decodedSize);
      // each span leaves garbage (a streaming decoder its window and MiB-sized buffers) to this
      // worker's own heap; young, it goes in a quick collection
      Bun.gc(false);
    }
    zstd?.close();
  } catch (e) {
    if (e instanceof Closed) return;
    const bytes = new TextEncoder().encode(JSON.stringify(failureOf(e))).subarray(0, MESSAGE_BYTES);
    message.set(bytes);
    Atomics.store(ctl, CTL.messageLength(MESSAGE.failure), bytes.length);
    Atomics.store(ctl, CTL.state, STATE.failed);
    for (let i = 0; i < slots; i++) Atomics.notify(ctl, CTL.slotFlag(i));
  }
};
