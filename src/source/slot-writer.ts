// A decode worker's side of its ring (see threaded-decode.ts): decoded bytes written anywhere in the
// ring are handed over to the reader in slots, in order.
import { CTL, SLOT, SLOT_BYTES } from "./threaded-decode.ts";

/** Thrown out of a wait when the reader has closed the ring: the worker just stops. */
export class Closed extends Error {}

/**
 * The worker's side of its ring: bytes written into the ring are handed over in slots, each a
 * contiguous stretch of at most SLOT_BYTES that never holds bytes of two spans, nor of two stretches
 * when they are checked.
 */
export class SlotWriter {
  private slot = 0;
  /** stretches of the ring added and not yet handed over */
  private readonly pending: { at: number; n: number }[] = [];

  constructor(
    private readonly ctl: Int32Array,
    private readonly slots: number,
    /** bytes are checked against stretch hashes: hand nothing over before commit() */
    private readonly checked: boolean,
  ) {}

  /** Returns once no slot handed over and not yet taken holds any of ring[at, at + n). */
  reserve(at: number, n: number): void {
    for (let i = 0; i < this.slots; i++) {
      const flag = CTL.slotFlag(i);
      while (Atomics.load(this.ctl, flag) === SLOT.full) {
        const start = Atomics.load(this.ctl, CTL.slotOffset(i));
        if (start >= at + n || start + Atomics.load(this.ctl, CTL.slotLength(i)) <= at) break;
        Atomics.wait(this.ctl, flag, SLOT.full);
      }
      if (Atomics.load(this.ctl, CTL.closed)) throw new Closed();
    }
  }

  /**
   * ring[at, at + n) holds the next decoded bytes: kept back until commit() (once their stretch is
   * checked), or handed over as slots fill when nothing is checked.
   */
  add(at: number, n: number): void {
    const last = this.pending[this.pending.length - 1];
    if (last && at === last.at + last.n && last.n + n <= SLOT_BYTES) {
      last.n += n;
      return;
    }
    if (!this.checked) this.commit();
    this.pending.push({ at, n });
  }

  /** Hand the bytes added so far over, each contiguous stretch in a slot of its own. */
  commit(): void {
    for (const { at, n } of this.pending) this.handOver(at, n);
    this.pending.length = 0;
  }

  /** Everything added is handed over, then the end: a slot of length 0. */
  end(): void {
    this.commit();
    this.handOver(0, 0);
  }

  private handOver(at: number, n: number): void {
    const flag = CTL.slotFlag(this.slot);
    while (Atomics.load(this.ctl, flag) !== SLOT.empty) Atomics.wait(this.ctl, flag, SLOT.full);
    if (Atomics.load(this.ctl, CTL.closed)) throw new Closed();
    Atomics.store(this.ctl, CTL.slotOffset(this.slot), at);
    Atomics.store(this.ctl, CTL.slotLength(this.slot), n);
    Atomics.store(this.ctl, flag, SLOT.full);
    Atomics.notify(this.ctl, flag);
    this.slot = (this.slot + 1) % this.slots;
  }

  /** Forget the bytes added since the last commit (their stretch decoded wrongly). */
  drop(): void {
    this.pending.length = 0;
  }

  /** Room for a reader that fills a whole slot itself: the slot's own stretch of the ring, once free; its offset. */
  nextSlotRoom(): number {
    const at = this.slot * SLOT_BYTES;
    this.reserve(at, SLOT_BYTES);
    return at;
  }
}
