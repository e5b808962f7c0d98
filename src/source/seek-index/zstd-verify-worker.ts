// The zstd index's worker threads: one opens the compressed pieces again and decodes each
// candidate's probe span from the candidate alone while the build's pass goes on (see
// zstd-verify.ts); another hashes the pass's decoded blocks just behind it (hash-behind.ts).
import { openRaw } from "../open.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import { type HashBehindStart, runHashBehind } from "./hash-behind.ts";
import { ANSWER_BYTES, SpanVerifier, VCTL, VMESSAGE_BYTES, VSTATE, type WorkerJob } from "./zstd-verify.ts";

declare const self: Worker;

let ctl: Int32Array;
let message: Uint8Array;
let verifier: SpanVerifier;

function fail(e: unknown): void {
  const bytes = new TextEncoder().encode(String((e as Error)?.message ?? e)).subarray(0, VMESSAGE_BYTES);
  message.set(bytes);
  Atomics.store(ctl, VCTL.messageLength, bytes.length);
  Atomics.store(ctl, VCTL.state, VSTATE.failed);
  Atomics.notify(ctl, VCTL.state);
  Atomics.notify(ctl, VCTL.done);
}

self.onmessage = (event: MessageEvent<{ shared: SharedArrayBuffer; pieces: string[] } | WorkerJob | HashBehindStart>) => {
  const data = event.data;
  if ("hashBehind" in data) {
    runHashBehind(data.hashBehind);
    return;
  }
  if ("pieces" in data) {
    ctl = new Int32Array(data.shared, 0, VCTL.words);
    message = new Uint8Array(data.shared, VCTL.words * 4, VMESSAGE_BYTES);
    try {
      const { raw } = openRaw({ pieces: data.pieces });
      verifier = new SpanVerifier(raw as RandomAccessSource);
      Atomics.store(ctl, VCTL.state, VSTATE.ready);
      Atomics.notify(ctl, VCTL.state);
    } catch (e) {
      fail(e);
    }
    return;
  }
  try {
    // the window is read only until run() returns; the packed answer then goes over it
    const window = new Uint8Array(data.shared, ANSWER_BYTES, data.windowLength);
    const r = verifier.run({ ...data.job, window });
    const answer = new Int32Array(data.shared, 0, 3);
    const packed = r.packedWindow ?? new Uint8Array(0);
    new Uint8Array(data.shared, ANSWER_BYTES, packed.length).set(packed);
    answer[0] = r.windowLength;
    answer[1] = 0;
    answer[2] = packed.length;
    Atomics.add(ctl, VCTL.done, 1);
    Atomics.notify(ctl, VCTL.done);
  } catch (e) {
    fail(e);
  }
};
