import { CTL, type RingMemory, SLOT, STATE } from "./threaded-decode.ts";

const EMPTY = new Uint8Array(0);

/**
 * This thread's side of one decode worker's ring (see threaded-decode.ts): the filled slots in
 * order, handed out as views into the shared memory. A slot goes back to the worker only at the
 * next call after its last byte was taken, so the view of that byte stays valid until then.
 */
export class DecodedRing {
  private slot = 0;
  private consumedInSlot = 0;
  /** a slot fully taken whose bytes the caller may still be using: released at the next call */
  private held = -1;

  private readonly ctl: Int32Array;
  private readonly slots: Uint8Array;
  private readonly count: number;

  constructor(
    memory: RingMemory,
    /** throws the worker's failure (called once it has said it failed) */
    private readonly failed: () => never,
  ) {
    this.ctl = memory.ctl;
    this.slots = memory.ring;
    this.count = memory.slots;
  }

  /**
   * Up to `max` bytes (at least 1) of the next filled slot, consumed, waiting for the worker to fill
   * it; valid until the next call on this ring. Empty: the worker marked the end (a slot of length
   * 0, which stays where it is).
   */
  take(max: number): Uint8Array {
    this.release();
    const flag = CTL.slotFlag(this.slot);
    while (Atomics.load(this.ctl, flag) !== SLOT.full) {
      if (Atomics.load(this.ctl, CTL.state) === STATE.failed) this.failed();
      Atomics.wait(this.ctl, flag, SLOT.empty, 200);
    }
    const length = Atomics.load(this.ctl, CTL.slotLength(this.slot));
    if (length === 0) return EMPTY;
    const start = Atomics.load(this.ctl, CTL.slotOffset(this.slot)) + this.consumedInSlot;
    const n = Math.min(max, length - this.consumedInSlot);
    this.consumedInSlot += n;
    if (this.consumedInSlot === length) {
      this.held = this.slot;
      this.consumedInSlot = 0;
      this.slot = (this.slot + 1) % this.count;
    }
    return this.slots.subarray(start, start + n);
  }

  /** Copy the next bytes into `into` (see take); the slot is free again at once when used up. */
  read(into: Uint8Array): number {
    const bytes = this.take(into.length);
    into.set(bytes);
    this.release();
    return bytes.length;
  }

  /** Give the slot whose last byte was taken back to the worker. */
  release(): void {
    if (this.held < 0) return;
    const flag = CTL.slotFlag(this.held);
    this.held = -1;
    Atomics.store(this.ctl, flag, SLOT.empty);
    Atomics.notify(this.ctl, flag);
  }

  /** Tell the worker to stop, waking it wherever it waits for a slot. */
  close(): void {
    Atomics.store(this.ctl, CTL.closed, 1);
    for (let i = 0; i < this.count; i++) {
      Atomics.store(this.ctl, CTL.slotFlag(i), SLOT.empty);
      Atomics.notify(this.ctl, CTL.slotFlag(i));
    }
  }
}
