// The zstd index's worker threads, reading the compressed pieces through the build's descriptors:
// one decodes each candidate's probe span from the candidate alone while the build's pass goes on (see
// zstd-verify.ts; jobs may come before it has started: they wait for it, in order); another reads
// the compressed input ahead of the pass (read-ahead.ts).
import { type DecodeSettings, useDecodeSettings } from "../../../native/decode-settings.ts";
import type { PieceDescriptor } from "../pieces.ts";
import type { ReadAheadStart } from "./read-ahead.ts";
import type { SpanVerifier, WorkerJob } from "./zstd-verify.ts";

/** zstd-verify.ts, loaded when the worker starts */
let probing: typeof import("./zstd-verify.ts");

declare const self: Worker;

let ctl: Int32Array;
let verifier: SpanVerifier;
/** settled once the worker has started (or failed to) */
let started: Promise<boolean> | undefined;

/** a job failed: the ones after it are left to the build's thread (answers are counted in order) */
let failed = false;

function fail(): void {
  failed = true;
  Atomics.store(ctl, probing.VCTL.state, probing.VSTATE.failed);
  Atomics.notify(ctl, probing.VCTL.state);
  Atomics.notify(ctl, probing.VCTL.done);
}

async function start(data: { shared: SharedArrayBuffer; pieces: PieceDescriptor[]; settings: DecodeSettings }): Promise<boolean> {
  useDecodeSettings(data.settings);
  probing = await import("./zstd-verify.ts");
  const { VCTL, VSTATE } = probing;
  ctl = new Int32Array(data.shared, 0, VCTL.words);
  try {
    const { borrowPieces } = await import("../pieces.ts");
    const raw = borrowPieces(data.pieces);
    // the descriptors are readable here (a read error in a probe would only reject its candidate)
    raw.readAt(new Uint8Array(1), 0);
    verifier = new probing.SpanVerifier(raw);
    Atomics.store(ctl, VCTL.state, VSTATE.ready);
    Atomics.notify(ctl, VCTL.state);
    return true;
  } catch {
    fail();
    return false;
  }
}

self.onmessage = async (event: MessageEvent<{ shared: SharedArrayBuffer; pieces: PieceDescriptor[]; settings: DecodeSettings } | WorkerJob | ReadAheadStart>) => {
  const data = event.data;
  if ("readAhead" in data) {
    const [{ runReadAhead }, { borrowPieces }] = await Promise.all([import("./read-ahead.ts"), import("../pieces.ts")]);
    runReadAhead(data.readAhead, borrowPieces(data.readAhead.pieces));
    return;
  }
  if ("pieces" in data) {
    started = start(data);
    return;
  }
  if (!(await started) || failed) return;
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
  } catch {
    fail();
  }
};
