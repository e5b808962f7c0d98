// The worker of decode-ahead.ts: decodes the extents handed over, slot after slot, in the order given.
import { MAX_COMPRESSED, decompressExtent } from "../../btrfs/decompress.ts";
import { CTL, SLOT, SLOTS, SLOT_BYTES, SLOT_WORDS, STATE, sharedLayout } from "./decode-ahead.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<{ shared: SharedArrayBuffer }>) => {
  const { ctl, slots, data } = sharedLayout(event.data.shared);
  let done = 0;
  for (;;) {
    while (Atomics.load(ctl, CTL.submitted) === done) {
      if (Atomics.load(ctl, CTL.stop)) return;
      Atomics.wait(ctl, CTL.submitted, done, 1000);
    }
    const s = done % SLOTS;
    const w = s * SLOT_WORDS;
    const input = data.subarray(s * SLOT_BYTES, s * SLOT_BYTES + slots[w + SLOT.inLength]!);
    const out = data.subarray(s * SLOT_BYTES + MAX_COMPRESSED, s * SLOT_BYTES + MAX_COMPRESSED + slots[w + SLOT.outLength]!);
    let state: number = STATE.done;
    try {
      slots[w + SLOT.produced] = decompressExtent(slots[w + SLOT.compression]!, input, out);
    } catch {
      // the reader decodes it again itself, and says why
      state = STATE.failed;
    }
    Atomics.store(slots, w + SLOT.state, state);
    Atomics.notify(slots, w + SLOT.state);
    done++;
  }
};
