// The decode worker: opens the raw bytes again, decodes every compression layer, and fills the
// shared ring (see threaded-decode.ts) until the end of the stream.
import { ImageError } from "../errors.ts";
import { decodeLayers, openRaw, type RawSpec } from "./open.ts";
import { CTL, MESSAGE_BYTES, SLOT, SLOT_BYTES, SLOT_COUNT, STATE, type WorkerFailure } from "./threaded-decode.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<{ shared: SharedArrayBuffer; spec: RawSpec }>) => {
  const { shared, spec } = event.data;
  const ctl = new Int32Array(shared, 0, CTL.words);
  const message = new Uint8Array(shared, CTL.words * 4, MESSAGE_BYTES);
  const slots = new Uint8Array(shared, CTL.words * 4 + MESSAGE_BYTES);
  const say = (text: string) => {
    const bytes = new TextEncoder().encode(text).subarray(0, MESSAGE_BYTES);
    message.set(bytes);
    Atomics.store(ctl, CTL.messageLength, bytes.length);
  };
  let slot = 0;
  try {
    const { raw } = openRaw(spec);
    const { source, compression } = decodeLayers(raw);
    say(JSON.stringify({ compression, name: source.name }));
    Atomics.store(ctl, CTL.state, STATE.ready);
    Atomics.notify(ctl, CTL.state);
    for (;;) {
      const flag = CTL.slotFlag(slot);
      while (Atomics.load(ctl, flag) !== SLOT.empty) Atomics.wait(ctl, flag, SLOT.full);
      if (Atomics.load(ctl, CTL.closed)) break;
      const view = slots.subarray(slot * SLOT_BYTES, (slot + 1) * SLOT_BYTES);
      let filled = 0;
      while (filled < SLOT_BYTES) {
        const n = source.read(view.subarray(filled));
        if (n === 0) break;
        filled += n;
      }
      Atomics.store(ctl, CTL.slotLength(slot), filled);
      Atomics.store(ctl, flag, SLOT.full);
      Atomics.notify(ctl, flag);
      if (filled === 0) break;
      slot = (slot + 1) % SLOT_COUNT;
    }
    source.close();
  } catch (e) {
    const failure: WorkerFailure =
      e instanceof ImageError ? { message: e.message, where: e.where, field: e.field, detail: e.detail } : { message: String((e as Error)?.message ?? e) };
    say(JSON.stringify(failure));
    Atomics.store(ctl, CTL.state, STATE.failed);
    Atomics.notify(ctl, CTL.state);
    // wake the reader wherever it waits
    for (let i = 0; i < SLOT_COUNT; i++) Atomics.notify(ctl, CTL.slotFlag(i));
  }
};
