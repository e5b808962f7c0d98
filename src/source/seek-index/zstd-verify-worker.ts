// The zstd index's worker threads: one opens the compressed pieces again and decodes each
// candidate's probe span from the candidate alone while the build's pass goes on (see
// zstd-verify.ts); another hashes the pass's decoded blocks just behind it (hash-behind.ts).
// The hashing one loads only what hashing needs: the probing one loads the rest when it starts.
import { type DecodeSettings, useDecodeSettings } from "../../../native/decode-settings.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import { type HashBehindStart, runHashBehind } from "./hash-behind.ts";
import type { SpanVerifier, WorkerJob } from "./zstd-verify.ts";

/** zstd-verify.ts, loaded by the probing worker when it starts */
let probing: typeof import("./zstd-verify.ts");

declare const self: Worker;

let ctl: Int32Array;
let message: Uint8Array;
let verifier: SpanVerifier;

function fail(e: unknown): void {
  const bytes = new TextEncoder().encode(String((e as Error)?.message ?? e)).subarray(0, probing.VMESSAGE_BYTES);
  message.set(bytes);
  Atomics.store(ctl, probing.VCTL.messageLength, bytes.length);
  Atomics.store(ctl, probing.VCTL.state, probing.VSTATE.failed);
  Atomics.notify(ctl, probing.VCTL.state);
  Atomics.notify(ctl, probing.VCTL.done);
}

self.onmessage = async (event: MessageEvent<{ shared: SharedArrayBuffer; pieces: string[]; settings: DecodeSettings } | WorkerJob | HashBehindStart>) => {
  const data = event.data;
  if ("hashBehind" in data) {
    runHashBehind(data.hashBehind);
    return;
  }
  if ("pieces" in data) {
    useDecodeSettings(data.settings);
    // jobs come only once this has said it is ready
    probing = await import("./zstd-verify.ts");
    const { VCTL, VMESSAGE_BYTES, VSTATE } = probing;
    ctl = new Int32Array(data.shared, 0, VCTL.words);
    message = new Uint8Array(data.shared, VCTL.words * 4, VMESSAGE_BYTES);
    try {
      const { openRaw } = await import("../open.ts");
      const { raw } = openRaw({ pieces: data.pieces });
      verifier = new probing.SpanVerifier(raw as RandomAccessSource);
      Atomics.store(ctl, VCTL.state, VSTATE.ready);
      Atomics.notify(ctl, VCTL.state);
    } catch (e) {
      fail(e);
    }
    return;
  }
  try {
    // the window is read only until run() returns; the packed answer then goes over it
    const window = new Uint8Array(data.shared, probing.ANSWER_BYTES, data.windowLength);
    const r = verifier.run({ ...data.job, window });
    const answer = new Int32Array(data.shared, 0, 3);
    const packed = r.packedWindow ?? new Uint8Array(0);
    new Uint8Array(data.shared, probing.ANSWER_BYTES, packed.length).set(packed);
    answer[0] = r.windowLength;
    answer[1] = 0;
    answer[2] = packed.length;
    Atomics.add(ctl, probing.VCTL.done, 1);
    Atomics.notify(ctl, probing.VCTL.done);
  } catch (e) {
    fail(e);
  }
};
