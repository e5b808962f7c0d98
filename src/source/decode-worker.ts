// The decode worker: opens the raw bytes again, decodes every compression layer, and fills the
// shared ring (see threaded-decode.ts) until the end of the stream.
import { type DecodeSettings, useDecodeSettings } from "../../native/decode-settings.ts";
import { ImageError } from "../errors.ts";
import { type ChunkSource, isRandomAccess, type RandomAccessSource } from "./chunk-source.ts";
import { decodeLayers, openRaw, type RawSpec } from "./open.ts";
import { ZstdRingDecoder } from "./seek-index/zstd-ring.ts";
import { sniffCompression } from "./sniff.ts";
import { Closed, SlotWriter } from "./slot-writer.ts";
import { CTL, MESSAGE, MESSAGE_BYTES, type RingMemory, SLOT, SLOT_BYTES, STATE, failureOf, ringMemory } from "./threaded-decode.ts";

declare const self: Worker;

/** enough decoded bytes to tell whether they are compressed again */
const SNIFF_BYTES = 64;
const EMPTY = new Uint8Array(0);

self.onmessage = (event: MessageEvent<{ shared: SharedArrayBuffer; spec: RawSpec; settings: DecodeSettings }>) => {
  const { shared, spec, settings } = event.data;
  useDecodeSettings(settings);
  const memory = ringMemory(shared);
  const { ctl, messages, ring: slots, slots: slotCount } = memory;
  // each message has its own area, written once and then announced by the state word
  const say = (which: number, value: unknown) => {
    const bytes = new TextEncoder().encode(JSON.stringify(value));
    if (bytes.length > MESSAGE_BYTES) throw new Error(`decode worker message of ${bytes.length} bytes`);
    messages.set(bytes, which * MESSAGE_BYTES);
    Atomics.store(ctl, CTL.messageLength(which), bytes.length);
  };
  const ready = (compression: string[], name: string) => {
    say(MESSAGE.ready, { compression, name });
    Atomics.store(ctl, CTL.state, STATE.ready);
    Atomics.notify(ctl, CTL.state);
  };
  /** the end: if it is the end of a split set that looks cut short, leave the error naming the missing piece where the reader finds it (it asks only after this end) */
  const ended = (source: ChunkSource) => {
    const missing = source.missingPiece?.();
    if (missing) say(MESSAGE.failure, failureOf(missing));
  };
  let slot = 0;
  let decoded = 0;
  try {
    const { raw } = openRaw(spec);
    if (isRandomAccess(raw) && zstdIntoRing(raw, memory, ready, ended, (n) => (decoded += n))) {
      raw.close();
      return;
    }
    const { source, compression } = decodeLayers(raw);
    ready(compression, source.name);
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
      if (filled === 0) ended(source);
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
    if (e instanceof Closed) return;
    say(MESSAGE.failure, failureOf(e, spec, decoded));
    Atomics.store(ctl, CTL.state, STATE.failed);
    Atomics.notify(ctl, CTL.state);
    // wake the reader wherever it waits
    for (let i = 0; i < slotCount; i++) Atomics.notify(ctl, CTL.slotFlag(i));
  }
};

/**
 * A file or split set of zstd frames, decoded block by block straight into the ring as a parallel
 * worker does (libzstd's streaming decoder would copy every block out of a window of its own). False,
 * with nothing handed over, when the file is not zstd or what it holds is compressed again: then the
 * layers are decoded as for any other input.
 */
function zstdIntoRing(
  raw: RandomAccessSource,
  memory: RingMemory,
  ready: (compression: string[], name: string) => void,
  ended: (source: ChunkSource) => void,
  counted: (n: number) => void,
): boolean {
  const head = new Uint8Array(SNIFF_BYTES);
  if (sniffCompression(head.subarray(0, raw.readAt(head, 0))) !== "zstd") return false;
  const writer = new SlotWriter(memory.ctl, memory.slots, false);
  const zstd = new ZstdRingDecoder(raw, memory.ring, (at, n) => writer.reserve(at, n));
  try {
    zstd.start({ decoded: 0, compressed: 0, bits: 0, window: EMPTY, extra: EMPTY });
    let out = zstd.next();
    if (out.length < SNIFF_BYTES || sniffCompression(out) !== undefined) return false;
    ready(["zstd"], `${raw.name} (zstd)`);
    for (; out.length > 0; out = zstd.next()) {
      writer.add(out.byteOffset - memory.ring.byteOffset, out.length);
      counted(out.length);
    }
    ended(raw);
    writer.end();
    return true;
  } catch (e) {
    // a split set cut short: its missing piece explains the end better than the truncation
    throw (e instanceof ImageError && raw.missingPiece?.()) || e;
  } finally {
    zstd.close();
  }
}
