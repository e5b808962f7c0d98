// Compressed extents decoded ahead of the reader in a worker thread (decode-ahead-worker.ts): the
// reader hands over the next extents of the file it reads and takes each back when it gets there, so
// decompression runs beside its reads and writes. Slots in shared memory; Atomics for the hand-over.
import { MAX_COMPRESSED, MAX_UNCOMPRESSED } from "../../btrfs/decompress.ts";

/** extents in flight at once: more than a 1 MiB read of 128 KiB extents takes */
export const SLOTS = 16;
/** per slot: state, compression, input length, output length, bytes produced */
export const SLOT_WORDS = 5;
export const SLOT = { state: 0, compression: 1, inLength: 2, outLength: 3, produced: 4 } as const;
/** a slot's state; DONE and FAILED are the worker's answers */
export const STATE = { free: 0, submitted: 1, done: 2, failed: 3 } as const;
/** ctl[SUBMITTED]: extents handed over so far (the worker waits on it), ctl[STOP]: 1 when the reader is done */
export const CTL = { submitted: 0, stop: 1, words: 2 } as const;
export const SLOT_BYTES = MAX_COMPRESSED + MAX_UNCOMPRESSED;

export function sharedLayout(shared: SharedArrayBuffer): { ctl: Int32Array; slots: Int32Array; data: Uint8Array } {
  const ctl = new Int32Array(shared, 0, CTL.words);
  const slots = new Int32Array(shared, CTL.words * 4, SLOTS * SLOT_WORDS);
  const data = new Uint8Array(shared, (CTL.words + SLOTS * SLOT_WORDS) * 4, SLOTS * SLOT_BYTES);
  return { ctl, slots, data };
}

function workerUrl(): string {
  return import.meta.url.startsWith("file:///$bunfs/") ? "./fs/btrfs/decode-ahead-worker.ts" : new URL("./decode-ahead-worker.ts", import.meta.url).href;
}

/**
 * The reader's side. Slots are used in turn (the worker decodes them in that order); an extent is
 * known by the key the reader gives it. A failed decode is not reported here: the reader decodes
 * that extent itself, so its error is the one it always gives.
 */
export class DecodeAhead {
  private readonly worker: Worker;
  private readonly ctl: Int32Array;
  private readonly slots: Int32Array;
  private readonly data: Uint8Array;
  /** the key of the extent in each slot (undefined: free) */
  private readonly keys: (number | undefined)[] = new Array(SLOTS).fill(undefined);
  private next = 0;
  private submitted = 0;

  constructor() {
    const shared = new SharedArrayBuffer((CTL.words + SLOTS * SLOT_WORDS) * 4 + SLOTS * SLOT_BYTES);
    ({ ctl: this.ctl, slots: this.slots, data: this.data } = sharedLayout(shared));
    this.worker = new Worker(workerUrl());
    this.worker.postMessage({ shared });
    this.worker.unref();
  }

  has(key: number): boolean {
    return this.keys.includes(key);
  }

  /** Room for one more extent (the next slot in turn is free). */
  get full(): boolean {
    return this.keys[this.next] !== undefined;
  }

  /** Where the next extent's `n` compressed bytes go before submit (n at most MAX_COMPRESSED). */
  input(n: number): Uint8Array {
    const at = this.next * SLOT_BYTES;
    return this.data.subarray(at, at + Math.min(n, MAX_COMPRESSED));
  }

  /** Hand over the `inLength` bytes put in input() (compressed with `compression`, as decompressExtent takes it) to decode into `outLength` bytes. */
  submit(key: number, compression: number, inLength: number, outLength: number): void {
    const s = this.next;
    if (this.keys[s] !== undefined) throw new Error("decode ahead: no free slot");
    const w = s * SLOT_WORDS;
    this.slots[w + SLOT.compression] = compression;
    this.slots[w + SLOT.inLength] = inLength;
    this.slots[w + SLOT.outLength] = outLength;
    Atomics.store(this.slots, w + SLOT.state, STATE.submitted);
    this.keys[s] = key;
    this.next = (s + 1) % SLOTS;
    Atomics.store(this.ctl, CTL.submitted, ++this.submitted);
    Atomics.notify(this.ctl, CTL.submitted);
  }

  /**
   * The decoded bytes of the extent `key` into `out` (its length as submitted), waiting for the
   * worker if need be; false when it failed (decode it yourself) or was never submitted.
   */
  take(key: number, out: Uint8Array): boolean {
    const s = this.keys.indexOf(key);
    if (s < 0) return false;
    const w = s * SLOT_WORDS;
    for (;;) {
      const state = Atomics.load(this.slots, w + SLOT.state);
      if (state === STATE.done || state === STATE.failed) break;
      Atomics.wait(this.slots, w + SLOT.state, state);
    }
    const ok = this.slots[w + SLOT.state] === STATE.done && this.slots[w + SLOT.outLength] === out.length;
    if (ok) out.set(this.data.subarray(s * SLOT_BYTES + MAX_COMPRESSED, s * SLOT_BYTES + MAX_COMPRESSED + out.length));
    this.keys[s] = undefined;
    Atomics.store(this.slots, w + SLOT.state, STATE.free);
    return ok;
  }

  /** Forget extents handed over and not taken (the reader went elsewhere): their slots come free once decoded. */
  drop(): void {
    for (let s = 0; s < SLOTS; s++) if (this.keys[s] !== undefined) this.take(this.keys[s]!, new Uint8Array(0));
  }

  close(): void {
    Atomics.store(this.ctl, CTL.stop, 1);
    Atomics.notify(this.ctl, CTL.submitted);
    this.worker.terminate();
  }
}
