// One parallel decode worker (see parallel-decode.ts): opens the raw bytes and their seek index
// again, and decodes its share of the spans into its ring, in order.
import { ImageError } from "../errors.ts";
import { isRandomAccess } from "./chunk-source.ts";
import { openRaw } from "./open.ts";
import type { SpanJob } from "./parallel-decode.ts";
import { findSeekIndex, seekCodecFor } from "./seek-index/open-index.ts";
import { seekPointOf } from "./seek-index/index-file.ts";
import { CTL, MESSAGE, MESSAGE_BYTES, SLOT, SLOT_BYTES, SLOT_COUNT, STATE, failureOf } from "./threaded-decode.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<{ shared: SharedArrayBuffer; job: SpanJob }>) => {
  const { shared, job } = event.data;
  const ctl = new Int32Array(shared, 0, CTL.words);
  const message = new Uint8Array(shared, CTL.words * 4 + MESSAGE.failure * MESSAGE_BYTES, MESSAGE_BYTES);
  const slots = new Uint8Array(shared, CTL.words * 4 + 2 * MESSAGE_BYTES);
  let slot = 0;
  const probe = new Uint8Array(1);
  try {
    const { raw } = openRaw({ pieces: job.pieces });
    const codec = seekCodecFor(job.compression);
    const index = isRandomAccess(raw) ? findSeekIndex(raw, job.pieces, job.compression) : undefined;
    if (!codec || !index || !isRandomAccess(raw)) throw new Error(`the seek index of ${job.pieces[0]} went away`);
    const pointAt = new Map(index.points.map((p) => [p.decoded, p]));
    Atomics.store(ctl, CTL.state, STATE.ready);
    for (let span = job.worker; span < job.starts.length; span += job.workers) {
      const stored = pointAt.get(job.starts[span]!);
      if (!stored) throw new Error(`the seek index of ${job.pieces[0]} changed`);
      const source = codec.resume(raw, seekPointOf(index, stored));
      const spanEnd = job.starts[span + 1] ?? job.decodedSize;
      let left = spanEnd - stored.decoded;
      while (left > 0) {
        const flag = CTL.slotFlag(slot);
        while (Atomics.load(ctl, flag) !== SLOT.empty) Atomics.wait(ctl, flag, SLOT.full);
        if (Atomics.load(ctl, CTL.closed)) return;
        const view = slots.subarray(slot * SLOT_BYTES, slot * SLOT_BYTES + Math.min(SLOT_BYTES, left));
        let filled = 0;
        while (filled < view.length) {
          const n = source.read(view.subarray(filled));
          if (n === 0) {
            const at = spanEnd - left + filled;
            throw new ImageError({ file: job.pieces[0]!, offset: at, decoded: job.compression }, `${job.compression} data ends early`, `the seek index says ${job.decodedSize} decoded bytes`);
          }
          filled += n;
        }
        Atomics.store(ctl, CTL.slotLength(slot), filled);
        Atomics.store(ctl, flag, SLOT.full);
        Atomics.notify(ctl, flag);
        left -= filled;
        slot = (slot + 1) % SLOT_COUNT;
      }
      // one byte more lets the decoder reach the trailer of a block or frame that ends with the span,
      // and check it
      source.read(probe);
      source.close();
      // each span leaves its decoder's MiB-sized buffers (input, window) to this worker's own heap;
      // young, they go in a quick collection, where a full one (collectIfLarge) took ~8 ms a span
      Bun.gc(false);
    }
    index.close();
    raw.close();
  } catch (e) {
    const bytes = new TextEncoder().encode(JSON.stringify(failureOf(e))).subarray(0, MESSAGE_BYTES);
    message.set(bytes);
    Atomics.store(ctl, CTL.messageLength(MESSAGE.failure), bytes.length);
    Atomics.store(ctl, CTL.state, STATE.failed);
    for (let i = 0; i < SLOT_COUNT; i++) Atomics.notify(ctl, CTL.slotFlag(i));
  }
};
