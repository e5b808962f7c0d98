import { decodeSettings } from "../../native/decode-settings.ts";
import { ImageError, type Location } from "../errors.ts";
import type { ChunkSource } from "./chunk-source.ts";
import { DecodedRing } from "./decoded-ring.ts";
import type { RawSpec } from "./open.ts";
import type { Compression } from "./sniff.ts";
import { workerEntry } from "../worker-entry.ts";

// Shared memory between this thread and a decode worker: a ring of n × SLOT_BYTES bytes the worker
// fills with decoded bytes while this thread parses and writes the previous ones (two cores, two
// jobs), handed over in n slots: [offset, length] pieces of the ring, taken in order. The sequential
// worker fills the ring slot by slot; zstd blocks, in it and in a parallel worker, are decoded straight
// into the ring and handed over as the pieces they landed in (slot-writer.ts).
/** the sequential worker's ring (restore's memory target counts it) */
export const SLOT_COUNT = 12;
export const SLOT_BYTES = 1 << 20;
/**
 * Two message areas of this size: the worker's ready message and its failure message. Each is
 * written once, before the state word that announces it, so a failure right after "ready" cannot
 * overwrite the ready message while this thread still reads it.
 */
export const MESSAGE_BYTES = 32 << 10;
export const MESSAGE = { ready: 0, failure: 1 } as const;
/** Int32 control words: the worker's state, the two message lengths, then [flag, length, offset in the ring] per slot. */
export const CTL = {
  state: 0,
  closed: 1,
  messageLength: (which: number) => 2 + which,
  slotFlag: (i: number) => 4 + 3 * i,
  slotLength: (i: number) => 5 + 3 * i,
  slotOffset: (i: number) => 6 + 3 * i,
} as const;
const ctlWords = (slots: number) => 4 + 3 * slots;

/** The views of a ring's shared memory: control words, the two message areas, the ring of `slots` × SLOT_BYTES. */
export interface RingMemory {
  shared: SharedArrayBuffer;
  ctl: Int32Array;
  messages: Uint8Array;
  ring: Uint8Array;
  slots: number;
}

export function newRingMemory(slots: number): RingMemory {
  return ringMemory(new SharedArrayBuffer(ctlWords(slots) * 4 + 2 * MESSAGE_BYTES + slots * SLOT_BYTES));
}

/** The views of memory made by newRingMemory (in the worker: its slot count follows from its size). */
export function ringMemory(shared: SharedArrayBuffer): RingMemory {
  const slots = (shared.byteLength - ctlWords(0) * 4 - 2 * MESSAGE_BYTES) / (SLOT_BYTES + 12);
  const words = ctlWords(slots);
  return {
    shared,
    slots,
    ctl: new Int32Array(shared, 0, words),
    messages: new Uint8Array(shared, words * 4, 2 * MESSAGE_BYTES),
    ring: new Uint8Array(shared, words * 4 + 2 * MESSAGE_BYTES, slots * SLOT_BYTES),
  };
}
export const STATE = { starting: 0, ready: 1, failed: 2 } as const;
export const SLOT = { empty: 0, full: 1 } as const;

/** How long the worker may take to open its input; past it, the caller decodes in its own thread. */
const WORKER_START_MS = 20_000;

export class WorkerDidNotStart extends Error {
  override name = "WorkerDidNotStart";
}

/** What the worker reports on failure: enough to rebuild the ImageError here. */
export interface WorkerFailure {
  message: string;
  where?: Location;
  field?: string;
  detail?: string;
}

/**
 * What a worker hands over for an error. An error that is not an ImageError (the runtime out of
 * memory, a library refusing) still happened while decoding this input: given the input's spec it
 * is reported as bad input at the decoded offset reached, so the user learns which file and where.
 */
export function failureOf(e: unknown, spec?: RawSpec, decoded = 0): WorkerFailure {
  if (e instanceof ImageError) return { message: e.message, where: e.where, field: e.field, detail: clip(e.detail) };
  const message = clip(String((e as Error)?.message ?? e))!;
  if (!spec) return { message };
  const file = "fd" in spec ? spec.name : spec.pieces[0]!;
  return { message, where: { file, offset: decoded, decoded: "decompressed" }, field: "cannot decompress", detail: message };
}

/** Details come from input bytes (names, paths): keep the failure message within its area. */
function clip(text: string | undefined): string | undefined {
  return text !== undefined && text.length > 4096 ? `${text.slice(0, 4096)}…` : text;
}

/** The error a worker left in the failure message area (`area`: that area alone), rebuilt on this side. */
export function workerFailure(ctl: Int32Array, area: Uint8Array): Error {
  const failure = JSON.parse(new TextDecoder().decode(area.slice(0, Atomics.load(ctl, CTL.messageLength(MESSAGE.failure))))) as WorkerFailure;
  if (failure.where && failure.field) return new ImageError(failure.where, failure.field, failure.detail);
  return new Error(failure.message);
}

/**
 * A ChunkSource whose bytes are decompressed by a worker thread. The worker sniffs and decodes
 * every layer itself; `compression` is known once the constructor returns.
 */
export class ThreadedDecodeSource implements ChunkSource {
  readonly size = undefined;
  readonly name: string;
  readonly compression: Compression[];
  private readonly ctl: Int32Array;
  private readonly ring: DecodedRing;
  private readonly message: Uint8Array;
  private readonly worker: Worker;
  private ended = false;
  private firstName: string;

  constructor(spec: RawSpec) {
    const memory = newRingMemory(SLOT_COUNT);
    this.ctl = memory.ctl;
    this.message = memory.messages;
    this.ring = new DecodedRing(memory, () => this.rethrow());
    this.firstName = "fd" in spec ? spec.name : spec.pieces[0]!;
    this.worker = new Worker(workerEntry("source/decode-worker.ts"));
    this.worker.postMessage({ shared: memory.shared, spec, settings: decodeSettings() });
    const deadline = performance.now() + WORKER_START_MS;
    while (Atomics.load(this.ctl, CTL.state) === STATE.starting) {
      if (performance.now() > deadline) {
        this.worker.terminate();
        throw new WorkerDidNotStart();
      }
      Atomics.wait(this.ctl, CTL.state, STATE.starting, 100);
    }
    if (Atomics.load(this.ctl, CTL.state) === STATE.failed) this.rethrow();
    const ready = JSON.parse(this.readMessage(MESSAGE.ready)) as { compression: Compression[]; name: string };
    this.compression = ready.compression;
    this.name = ready.name;
  }

  read(into: Uint8Array): number {
    if (this.ended || into.length === 0) return 0;
    const n = this.ring.read(into);
    if (n === 0) this.end();
    return n;
  }

  borrow(max: number): Uint8Array {
    if (this.ended || max === 0) return new Uint8Array(0);
    const bytes = this.ring.take(max);
    if (bytes.length === 0) this.end();
    return bytes;
  }

  /** The worker's slot of length 0: the end, or its failure. */
  private end(): void {
    if (Atomics.load(this.ctl, CTL.state) === STATE.failed) this.rethrow();
    this.ended = true;
  }

  locate(offset: number): Location {
    return { file: this.firstName, offset, decoded: this.compression.join("+") };
  }

  close(): void {
    this.ring.close();
    this.worker.terminate();
  }

  private readMessage(which: number): string {
    const start = which * MESSAGE_BYTES;
    return new TextDecoder().decode(this.message.slice(start, start + Atomics.load(this.ctl, CTL.messageLength(which))));
  }

  /** After the end: the worker's verdict that a piece of the split set is missing, if it found one. */
  missingPiece(): ImageError | undefined {
    if (!this.ended || Atomics.load(this.ctl, CTL.messageLength(MESSAGE.failure)) === 0) return undefined;
    const e = this.failure();
    return e instanceof ImageError ? e : undefined;
  }

  private failure(): Error {
    return workerFailure(this.ctl, this.message.subarray(MESSAGE.failure * MESSAGE_BYTES));
  }

  private rethrow(): never {
    const e = this.failure();
    this.worker.terminate();
    throw e;
  }
}
