// The decode worker: opens the raw bytes again, decodes every compression layer, and fills the
// shared ring (see threaded-decode.ts) until the end of the stream.
import { type DecodeSettings, useDecodeSettings } from "../../native/decode-settings.ts";
import { decodeLayers, openRaw, type RawSpec } from "./open.ts";
import { CTL, MESSAGE, MESSAGE_BYTES, SLOT, SLOT_BYTES, STATE, failureOf, ringMemory } from "./threaded-decode.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<{ shared: SharedArrayBuffer; spec: RawSpec; settings: DecodeSettings }>) => {
  const { shared, spec, settings } = event.data;
  useDecodeSettings(settings);
  const { ctl, messages: message, ring: slots, slots: slotCount } = ringMemory(shared);
  // each message has its own area, written once and then announced by the state word
  const say = (which: number, value: unknown) => {
    const bytes = new TextEncoder().encode(JSON.stringify(value));
    if (bytes.length > MESSAGE_BYTES) throw new Error(`decode worker message of ${bytes.length} bytes`);
    message.set(bytes, which * MESSAGE_BYTES);
    Atomics.store(ctl, CTL.messageLength(which), bytes.length);
  };
  let slot = 0;
  let decoded = 0;
  try {
    const { raw } = openRaw(spec);
    const { source, compression } = decodeLayers(raw);
    say(MESSAGE.ready, { compression, name: source.name });
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
      if (filled === 0) {
        // the end: if it is the end of a split set that looks cut short, leave the error naming
        // the missing piece where the reader finds it (it asks only after this end)
        const missing = source.missingPiece?.();
        if (missing) say(MESSAGE.failure, failureOf(missing));
      }
      Atomics.store(ctl, CTL.slotOffset(slot), slot * SLOT_BYTES);
      Atomics.store(ctl, CTL.slotLength(slot), filled);
      Atomics.store(ctl, flag, SLOT.full);
      Atomics.notify(ctl, flag);
      if (filled === 0) break;
      decoded += filled;
      slot = (slot + 1) % slotCount;
    }
    source.close();
  } catch (e) {
    say(MESSAGE.failure, failureOf(e, spec, decoded));
    Atomics.store(ctl, CTL.state, STATE.failed);
    Atomics.notify(ctl, CTL.state);
    // wake the reader wherever it waits
    for (let i = 0; i < slotCount; i++) Atomics.notify(ctl, CTL.slotFlag(i));
  }
};
