// One parallel decode worker (see parallel-decode.ts): reads the raw bytes and their seek index
// through the descriptors the reader opened and checked, and decodes its share of the spans into its
// ring, in order. zstd is decoded block by block straight into the ring (zstd-ring.ts); other
// compressions are read into it a slot at a time. What this loads is kept to what zstd needs, and
// nothing that loads node:fs: a worker is ready ~40 ms after it is started, where opening the image
// and its index again made that ~95 ms.
import { ImageError } from "../errors.ts";
import type { ChunkSource } from "./chunk-source.ts";
import { lowerThreadPriority } from "../../native/libc-thread.ts";
import type { SpanJob } from "./parallel-decode.ts";
import { FileSource, borrowPieces } from "./pieces.ts";
import type { SeekCodec } from "./seek-index/codec.ts";
import type { StoredPoint } from "./seek-index/index-file.ts";
import { readStoredWindow, seekPointOf } from "./seek-index/stored-window.ts";
import { zstdCodec } from "./seek-index/zstd.ts";
import { ZstdRingDecoder } from "./seek-index/zstd-ring.ts";
import { CTL, MESSAGE, MESSAGE_BYTES, SLOT, SLOT_BYTES, SLOT_COUNT, STATE, failureOf } from "./threaded-decode.ts";

declare const self: Worker;

/**
 * The workers run this many nice levels below the thread that takes their spans in order, parses
 * and writes them: with as many workers as cores, that thread is the one the restore waits for
 * (restore --threads 2 into tmpfs, 1.12 GB: medians 1.70 s against 1.81 s, 11 alternating runs
 * each; verify unchanged).
 */
const WORKER_NICE_STEPS = 10;

/** Thrown out of a wait when the reader has closed the ring: the worker just stops. */
class Closed extends Error {}

/**
 * The worker's side of its ring: bytes written into the ring are handed over in slots, each a
 * contiguous piece of at most SLOT_BYTES that never holds bytes of two spans.
 */
class SlotWriter {
  private slot = 0;
  private pieceStart = 0;
  private pieceLength = 0;

  constructor(private readonly ctl: Int32Array) {}

  /** Returns once no slot handed over and not yet taken holds any of ring[at, at + n). */
  reserve(at: number, n: number): void {
    for (let i = 0; i < SLOT_COUNT; i++) {
      const flag = CTL.slotFlag(i);
      while (Atomics.load(this.ctl, flag) === SLOT.full) {
        const start = Atomics.load(this.ctl, CTL.slotOffset(i));
        if (start >= at + n || start + Atomics.load(this.ctl, CTL.slotLength(i)) <= at) break;
        Atomics.wait(this.ctl, flag, SLOT.full);
      }
      if (Atomics.load(this.ctl, CTL.closed)) throw new Closed();
    }
  }

  /** ring[at, at + n) holds the next decoded bytes. */
  add(at: number, n: number): void {
    if (this.pieceLength > 0 && (at !== this.pieceStart + this.pieceLength || this.pieceLength + n > SLOT_BYTES)) this.handOver();
    if (this.pieceLength === 0) this.pieceStart = at;
    this.pieceLength += n;
  }

  /** Hand the bytes added so far over in a slot of their own. */
  handOver(): void {
    if (this.pieceLength === 0) return;
    const flag = CTL.slotFlag(this.slot);
    while (Atomics.load(this.ctl, flag) !== SLOT.empty) Atomics.wait(this.ctl, flag, SLOT.full);
    if (Atomics.load(this.ctl, CTL.closed)) throw new Closed();
    Atomics.store(this.ctl, CTL.slotOffset(this.slot), this.pieceStart);
    Atomics.store(this.ctl, CTL.slotLength(this.slot), this.pieceLength);
    Atomics.store(this.ctl, flag, SLOT.full);
    Atomics.notify(this.ctl, flag);
    this.slot = (this.slot + 1) % SLOT_COUNT;
    this.pieceLength = 0;
  }

  /** Room for a reader that fills a whole slot itself: the slot's own stretch of the ring, once free; its offset. */
  nextSlotRoom(): number {
    const at = this.slot * SLOT_BYTES;
    this.reserve(at, SLOT_BYTES);
    return at;
  }
}

/** `length` bytes of a decoder that copies out of its own window, read into the ring a slot at a time. */
function decodeInSlots(source: ChunkSource, length: number, ring: Uint8Array, writer: SlotWriter, endsEarly: (done: number) => Error): void {
  for (let done = 0; done < length; ) {
    const at = writer.nextSlotRoom();
    const view = ring.subarray(at, at + Math.min(SLOT_BYTES, length - done));
    for (let filled = 0; filled < view.length; ) {
      const n = source.read(view.subarray(filled));
      if (n === 0) throw endsEarly(done + filled);
      filled += n;
    }
    writer.add(at, view.length);
    writer.handOver();
    done += view.length;
  }
  // one byte more lets the decoder reach the trailer of a block or frame that ends with the span,
  // and check it
  source.read(new Uint8Array(1));
  source.close();
}

async function codecOf(job: SpanJob): Promise<SeekCodec> {
  if (job.compression === "zstd") return zstdCodec;
  const codec = (await import("./seek-index/codecs.ts")).seekCodecs[job.compression];
  if (!codec) throw new Error(`no seek codec for ${job.compression}`);
  return codec;
}

self.onmessage = async (event: MessageEvent<{ shared: SharedArrayBuffer; job: SpanJob }>) => {
  const { shared, job } = event.data;
  const ctl = new Int32Array(shared, 0, CTL.words);
  const message = new Uint8Array(shared, CTL.words * 4 + MESSAGE.failure * MESSAGE_BYTES, MESSAGE_BYTES);
  const ring = new Uint8Array(shared, CTL.words * 4 + 2 * MESSAGE_BYTES, SLOT_COUNT * SLOT_BYTES);
  const writer = new SlotWriter(ctl);
  lowerThreadPriority(WORKER_NICE_STEPS);
  try {
    const raw = borrowPieces(job.raw);
    const indexFile = new FileSource(job.index.file, job.index.descriptor, job.index.size, false);
    const index = { window: (p: StoredPoint, into?: Uint8Array) => readStoredWindow(p, (buf, offset) => indexFile.readAt(buf, offset), job.index.file, into) };
    const codec = await codecOf(job);
    const zstd = job.compression === "zstd" ? new ZstdRingDecoder(raw, ring, (at, n) => writer.reserve(at, n)) : undefined;
    Atomics.store(ctl, CTL.state, STATE.ready);
    for (let span = job.worker; span < job.points.length; span += job.workers) {
      const stored = job.points[span]!;
      const room = zstd?.windowRoom(stored.windowSize);
      const point = seekPointOf(index, stored, room);
      const spanEnd = job.points[span + 1]?.decoded ?? job.decodedSize;
      const length = spanEnd - stored.decoded;
      const endsEarly = (done: number) =>
        new ImageError({ file: job.file, offset: stored.decoded + done, decoded: job.compression }, `${job.compression} data ends early`, `the seek index says ${job.decodedSize} decoded bytes`);
      if (zstd?.start(point)) {
        for (let done = 0; done < length; ) {
          const out = zstd.next();
          if (out.length === 0) throw endsEarly(done);
          const n = Math.min(out.length, length - done);
          writer.add(out.byteOffset - ring.byteOffset, n);
          done += n;
        }
        writer.handOver();
        zstd.finishSpan();
      } else {
        // the slots are written over as this decodes: its window is its own
        const history = point.window.buffer === ring.buffer ? point.window.slice() : point.window;
        decodeInSlots(codec.resume(raw, { ...point, window: history }), length, ring, writer, endsEarly);
      }
      // each span leaves garbage (a streaming decoder its window and MiB-sized buffers) to this
      // worker's own heap; young, it goes in a quick collection, where a full one took ~8 ms a span
      Bun.gc(false);
    }
    zstd?.close();
  } catch (e) {
    if (e instanceof Closed) return;
    const bytes = new TextEncoder().encode(JSON.stringify(failureOf(e))).subarray(0, MESSAGE_BYTES);
    message.set(bytes);
    Atomics.store(ctl, CTL.messageLength(MESSAGE.failure), bytes.length);
    Atomics.store(ctl, CTL.state, STATE.failed);
    for (let i = 0; i < SLOT_COUNT; i++) Atomics.notify(ctl, CTL.slotFlag(i));
  }
};
