// The zstd build's compressed input, read ahead of its pass by a worker thread into slots of shared
// memory: the copy out of the page cache (a tenth of the pass's time) runs on another core, as
// zstd's own asynchronous reads do. The pass never depends on the worker: until it has started,
// wherever it has not read yet, or if it fails, the pass reads for itself (InputWindow).
import { type Pointer, ptr } from "bun:ffi";
import type { RandomAccessSource } from "../chunk-source.ts";
import { type PieceDescriptor, pieceDescriptors } from "../pieces.ts";
import { type CompressedInput, InputWindow } from "./zstd-blocks.ts";
import { terminateWhenStarted } from "../atomic-wait.ts";

/** Raw bytes a slot starts apart; each holds OVERLAP more, so that a block starting in it ends in it. */
const SLOT = 1 << 20;
/** more than a block and its header (128 KiB + 3), or a frame header */
const OVERLAP = 256 << 10;
const STRIDE = SLOT + OVERLAP;
const SLOTS = 4;
/** Int32 control words; then per slot the raw slot number + 1 it holds (0: none yet) and its length */
const CTL = { released: 0, stop: 1, waiting: 2, started: 3, words: 4 } as const;

/** What the worker is given. */
export interface ReadAheadStart {
  /** the descriptors of the pass's own source, read through (never opened again: no node:fs in the worker) */
  readAhead: { pieces: PieceDescriptor[]; ctl: SharedArrayBuffer; slots: SharedArrayBuffer };
}

/** The pass's side: `need` as InputWindow's, from the worker's slots where they hold the bytes. */
export class ReadAheadInput implements CompressedInput {
  private readonly ctl: Int32Array;
  private readonly tags: Int32Array;
  private readonly lengths: Int32Array;
  private readonly slots: Uint8Array;
  private readonly slotsAddress: Pointer;
  private readonly own: InputWindow;
  /** where the last need() found its bytes */
  private fromSlots = false;
  /** need() calls answered from the worker's slots */
  slotReads = 0;

  private constructor(
    private readonly worker: Worker,
    shared: ReadAheadStart["readAhead"],
    raw: RandomAccessSource,
    ownBytes: number,
  ) {
    this.ctl = new Int32Array(shared.ctl, 0, CTL.words);
    this.tags = new Int32Array(shared.ctl, 4 * CTL.words, SLOTS);
    this.lengths = new Int32Array(shared.ctl, 4 * (CTL.words + SLOTS), SLOTS);
    this.slots = new Uint8Array(shared.slots);
    this.slotsAddress = ptr(this.slots);
    this.own = new InputWindow(raw, ownBytes);
  }

  /**
   * A worker reading `raw` ahead through its descriptors (kept open by the caller until close());
   * undefined when none can be made (a source with no descriptors, no worker).
   */
  static start(workerUrl: string, raw: RandomAccessSource, ownBytes: number, pieces = pieceDescriptors(raw)): ReadAheadInput | undefined {
    if (!pieces) return undefined;
    const shared = { pieces, ctl: new SharedArrayBuffer(4 * (CTL.words + 2 * SLOTS)), slots: new SharedArrayBuffer(SLOTS * STRIDE) };
    let worker: Worker;
    try {
      worker = new Worker(workerUrl);
    } catch {
      return undefined;
    }
    worker.postMessage({ readAhead: shared } satisfies ReadAheadStart);
    return new ReadAheadInput(worker, shared, raw, ownBytes);
  }

  get buf(): Uint8Array {
    return this.fromSlots ? this.slots : this.own.buf;
  }

  get address(): Pointer {
    return this.fromSlots ? this.slotsAddress : this.own.address;
  }

  need(at: number, n: number): number {
    const k = Math.floor(at / SLOT);
    const i = k % SLOTS;
    if (n <= OVERLAP && this.slotReady(k)) {
      const within = at - k * SLOT;
      // a slot shorter than asked for ends the stream: available() says how much there is
      this.fromSlots = true;
      this.slotReads++;
      return i * STRIDE + within;
    }
    this.fromSlots = false;
    // the worker goes on from here, never reading what the pass has passed
    this.release(k);
    return this.own.need(at, n);
  }

  needOnly(at: number, n: number): number {
    const k = Math.floor(at / SLOT);
    if (n <= OVERLAP && this.slotReady(k)) return this.need(at, n);
    this.fromSlots = false;
    this.release(k);
    return this.own.needOnly(at, n);
  }

  available(at: number): number {
    if (!this.fromSlots) return this.own.available(at);
    const k = Math.floor(at / SLOT);
    return Math.max(0, this.lengths[k % SLOTS]! - (at - k * SLOT));
  }

  /**
   * Slot `k` holds its bytes (the slots before it are let go). A slot not read yet is not waited for:
   * a worker that lags (on a loaded machine it gets a core later than the pass) would hold the pass up
   * longer than reading for itself takes.
   */
  private slotReady(k: number): boolean {
    if (Atomics.load(this.tags, k % SLOTS) !== k + 1) return false;
    this.release(k);
    return true;
  }

  private release(k: number): void {
    if (Atomics.load(this.ctl, CTL.released) >= k) return;
    Atomics.store(this.ctl, CTL.released, k);
    // a wake-up costs a system call: only for a worker that sleeps (it says so before it looks again)
    if (Atomics.load(this.ctl, CTL.waiting) === 1) Atomics.notify(this.ctl, CTL.released);
  }

  close(): void {
    Atomics.store(this.ctl, CTL.stop, 1);
    Atomics.notify(this.ctl, CTL.released);
    terminateWhenStarted(this.worker, this.ctl, CTL.started, 0);
  }
}

/** The worker's side: read slot after slot from where the pass is, never more than SLOTS ahead of it. */
export function runReadAhead(shared: ReadAheadStart["readAhead"], raw: RandomAccessSource): void {
  const ctl = new Int32Array(shared.ctl, 0, CTL.words);
  const tags = new Int32Array(shared.ctl, 4 * CTL.words, SLOTS);
  const lengths = new Int32Array(shared.ctl, 4 * (CTL.words + SLOTS), SLOTS);
  const slots = new Uint8Array(shared.slots);
  Atomics.store(ctl, CTL.started, 1);
  Atomics.notify(ctl, CTL.started);
  try {
    for (let k = 0; k * SLOT < raw.size; k++) {
      k = Math.max(k, Atomics.load(ctl, CTL.released));
      while (k - Atomics.load(ctl, CTL.released) >= SLOTS) {
        Atomics.store(ctl, CTL.waiting, 1);
        const released = Atomics.load(ctl, CTL.released);
        if (k - released >= SLOTS && !Atomics.load(ctl, CTL.stop)) Atomics.wait(ctl, CTL.released, released, 1000);
        Atomics.store(ctl, CTL.waiting, 0);
        if (Atomics.load(ctl, CTL.stop)) return;
      }
      if (Atomics.load(ctl, CTL.stop)) return;
      const i = k % SLOTS;
      // the slot is rewritten: no tag until it holds slot k
      Atomics.store(tags, i, 0);
      const n = raw.readAt(slots.subarray(i * STRIDE, (i + 1) * STRIDE), k * SLOT);
      lengths[i] = n;
      Atomics.store(tags, i, k + 1);
    }
  } catch {
    // a read failed: the pass reads for itself, and meets the error where it is
  }
}
