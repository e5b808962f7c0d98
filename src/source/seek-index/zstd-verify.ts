import { terminateWhenStarted } from "../atomic-wait.ts";
import { decodeSettings } from "../../../native/decode-settings.ts";
import { ZstdCompressor } from "../../../native/zstd.ts";
import { INPUT_BUFFER_SIZE } from "../../../native/ffi.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import { type PieceDescriptor, pieceDescriptors } from "../pieces.ts";
import { InputWindow, ZstdBlocks } from "./zstd-blocks.ts";
import { ChainedHash } from "./stretch-hashes.ts";
import { parseFrameHeader } from "./zstd-frame.ts";
import { workerEntry } from "../../worker-entry.ts";

/** A candidate point inside a zstd frame and what decoding from it must reproduce first. */
export interface VerifyJob {
  decoded: number;
  compressed: number;
  /** the synthesized frame header */
  header: Uint8Array;
  /** the frame's bytes before the candidate (up to its window size) */
  window: Uint8Array;
  /**
   * the probe ends here: the first block boundary a window past the candidate (no match after it
   * can reach back before the candidate), or the next candidate, or the frame's end
   */
  spanEnd: number;
  /** the ChainedHash of the decoded bytes [decoded, spanEnd) as the build's pass produced them */
  spanHash: Uint8Array;
}

export interface VerifyResult {
  /** the prefix length that decodes the span right (0 = none needed), or -1: rejected */
  windowLength: number;
  /** the accepted prefix, zstd-compressed (from SpanVerifier.run: valid until its next run) */
  packedWindow?: Uint8Array;
}

const WINDOW_PACK_LEVEL = 1;

/**
 * Finds the shortest prefix a candidate needs: decodes its probe span (about a window's worth, not
 * the whole span to the next candidate) from the candidate alone (synthesized header, prefix of
 * increasing length: none first, since a point with no window costs nothing to store) and compares
 * the probe's hash. A prefix too short makes the library fail (a match reaching before it); stale
 * entropy tables fail too; repeat offsets from before the boundary decode wrongly and are caught by
 * the hash. Past the probe no match reaches before the candidate, and what differs there all the
 * same (a repeat offset used late) is caught by the readers' stretch hashes (stretch-hashes.ts). Blocks
 * are decoded in place (zstd-blocks.ts), so nothing is copied but the prefix.
 */
export class SpanVerifier {
  /** the decoder a candidate is tried with */
  private trial: ZstdBlocks | undefined;
  private readonly hash = new ChainedHash();
  private readonly digest = new Uint8Array(8);
  private readonly packer = new ZstdCompressor();

  constructor(private readonly raw: RandomAccessSource) {}

  run(job: VerifyJob): VerifyResult {
    const full = job.window.length;
    const windowSize = parseFrameHeader(job.header, { file: this.raw.name }).windowSize;
    const tries = [...new Set([0, full >> 6, full >> 4, full >> 3, full >> 2, full >> 1, full])].filter((n) => n === 0 || n >= 1024 || n === full);
    let accepted = -1;
    for (const length of tries) {
      this.trial ??= new ZstdBlocks(this.raw, new InputWindow(this.raw, INPUT_BUFFER_SIZE));
      if (!this.trial.resume(job.header, job.compressed, job.window.subarray(full - length), windowSize)) continue;
      const outcome = this.decodeSpan(this.trial, job);
      if (outcome === "same") {
        accepted = length;
        break;
      }
      // a prefix long enough to decode without error but giving other bytes: more history will not help
      if (outcome === "different") break;
    }
    const packedWindow = accepted > 0 ? this.packer.compress(job.window.subarray(full - accepted), WINDOW_PACK_LEVEL) : undefined;
    return { windowLength: accepted, packedWindow };
  }

  private decodeSpan(blocks: ZstdBlocks, job: VerifyJob): "same" | "different" | "error" {
    this.hash.reset(job.decoded);
    const length = job.spanEnd - job.decoded;
    const startedAt = blocks.decoded;
    try {
      while (blocks.decoded - startedAt < length) {
        const out = blocks.next();
        if (out.length === 0) return "different";
        // spans end at block boundaries: a block running past the span's end is a wrong decoding
        if (blocks.decoded - startedAt > length) return "different";
        this.hash.update(out);
      }
      // the block after the span must decode too: a reader's decoder goes that far (see peek)
      blocks.peek();
    } catch {
      return "error";
    }
    this.hash.digestInto(this.digest);
    for (let i = 0; i < 8; i++) if (this.digest[i] !== job.spanHash[i]) return "different";
    return "same";
  }

  close(): void {
    this.trial?.close();
    this.trial = undefined;
  }
}

export interface Verifier {
  /** Where the next job's window goes (`n` bytes), kept until that job is answered: no window is allocated per job. */
  windowBuffer(n: number): Uint8Array;
  /** Verify `job`, whose window is the last windowBuffer. */
  submit(job: VerifyJob): void;
  /** the stored bytes of the windows accepted so far (answers already in) */
  readonly packedBytes: number;
  /** every answer, in the order submitted */
  finish(): VerifyResult[];
  close(): void;
}

/**
 * In a worker thread (two cores: the pass and the probes at once) when `threads` allows one and the
 * raw source has descriptors the worker can read through (it opens nothing again); the pass does not
 * wait for the worker to start, and a worker that fails or never starts leaves its jobs to this thread.
 */
export function createVerifier(raw: RandomAccessSource, threads: boolean, pieces = pieceDescriptors(raw)): Verifier {
  const inline = () => new InlineVerifier(raw);
  if (threads && pieces) {
    const w = WorkerVerifier.start(pieces, inline);
    if (w) return w;
  }
  return inline();
}

class InlineVerifier implements Verifier {
  private readonly verifier: SpanVerifier;
  private readonly results: VerifyResult[] = [];
  private window = new Uint8Array(0);
  packedBytes = 0;
  constructor(raw: RandomAccessSource) {
    this.verifier = new SpanVerifier(raw);
  }
  windowBuffer(n: number): Uint8Array {
    if (this.window.length < n) this.window = new Uint8Array(n);
    return this.window.subarray(0, n);
  }
  submit(job: VerifyJob): void {
    this.results.push(this.answer(job));
  }
  /** The answer to `job` (its packed window copied out of the verifier's buffer). */
  answer(job: VerifyJob): VerifyResult {
    const r = this.verifier.run(job);
    this.packedBytes += r.packedWindow?.length ?? 0;
    return { ...r, packedWindow: r.packedWindow?.slice() };
  }
  finish(): VerifyResult[] {
    return this.results;
  }
  close(): void {
    this.verifier.close();
  }
}

// Shared control words between the build and its verify worker.
export const VCTL = { state: 0, done: 1, words: 4 } as const;
export const VSTATE = { starting: 0, ready: 1, failed: 2 } as const;
/**
 * Window bytes of candidates in flight (at least one candidate): enough that the pass never waits
 * for the probes on a loaded machine, where the worker gets the CPU later than the pass.
 */
const IN_FLIGHT_BYTES = 12 << 20;
const WORKER_START_MS = 20_000;

/** The script of the zstd build's worker thread (the probes). */
export function zstdWorkerUrl(): string {
  return workerEntry("source/seek-index/zstd-verify-worker.ts");
}

/** What travels to the worker: the job, with its window in shared memory that the answer then takes. */
export interface WorkerJob {
  index: number;
  job: Omit<VerifyJob, "window">;
  windowLength: number;
  /** window bytes in, packed window out; also [windowLength, unused, packedLength] in its first words */
  shared: SharedArrayBuffer;
}

/** Bytes before the window in a job's shared buffer: the answer's three Int32 words. */
export const ANSWER_BYTES = 16;

class WorkerVerifier implements Verifier {
  private readonly ctl: Int32Array;
  private submitted = 0;
  private harvested = 0;
  /** jobs sent and not answered yet, oldest first, with the buffer holding each one's window */
  private readonly pending: { job: Omit<VerifyJob, "window">; shared: SharedArrayBuffer; windowLength: number }[] = [];
  /** set once the worker failed or did not start in time: this thread answers the jobs left */
  private fallback: InlineVerifier | undefined;
  private readonly startedAt = performance.now();
  /** job buffers answered and free again */
  private readonly free: SharedArrayBuffer[] = [];
  /** the buffer of the last windowBuffer, for the next submit */
  private open: SharedArrayBuffer | undefined;
  private readonly results: VerifyResult[] = [];
  packedBytes = 0;

  private constructor(
    private readonly worker: Worker,
    shared: SharedArrayBuffer,
    private readonly inline: () => InlineVerifier,
  ) {
    this.ctl = new Int32Array(shared, 0, VCTL.words);
  }

  /** The worker is told to start; jobs wait in its queue until it has. */
  static start(pieces: PieceDescriptor[], inline: () => InlineVerifier): WorkerVerifier | undefined {
    const shared = new SharedArrayBuffer(VCTL.words * 4);
    let worker: Worker;
    try {
      worker = new Worker(zstdWorkerUrl());
    } catch {
      return undefined;
    }
    worker.postMessage({ shared, pieces, settings: decodeSettings() });
    return new WorkerVerifier(worker, shared, inline);
  }

  windowBuffer(n: number): Uint8Array {
    // room for the packed window too: zstd's bound is the size plus a little
    const size = ANSWER_BYTES + n + (n >> 7) + 1024;
    if (this.open) this.free.push(this.open);
    const i = this.free.findIndex((b) => b.byteLength >= size);
    // none fits: every free one is smaller, so drop them all (windows that grow candidate by candidate
    // would otherwise leave a buffer of each size behind)
    if (i < 0) this.free.length = 0;
    this.open = i >= 0 ? this.free.splice(i, 1)[0]! : new SharedArrayBuffer(size);
    return new Uint8Array(this.open, ANSWER_BYTES, n);
  }

  submit(job: VerifyJob): void {
    const shared = this.open;
    if (!shared || job.window.buffer !== shared) throw new Error("zstd index verifier: a job's window must come from windowBuffer");
    this.open = undefined;
    if (this.fallback) {
      while (this.pending.length > 0) this.harvestOne();
      this.take(this.fallback.answer(job));
      this.free.push(shared);
      return;
    }
    while (this.harvested < Atomics.load(this.ctl, VCTL.done)) this.harvestOne();
    const inFlight = () => this.pending.reduce((n, p) => n + p.shared.byteLength, 0);
    while (this.pending.length > 0 && inFlight() + job.window.length > IN_FLIGHT_BYTES) this.harvestOne();
    const { window: _w, ...rest } = job;
    const message: WorkerJob = { index: this.submitted, job: rest, windowLength: job.window.length, shared };
    this.pending.push({ job: rest, shared, windowLength: job.window.length });
    this.worker.postMessage(message);
    this.submitted++;
  }

  /** Take the oldest job's answer, from the worker, or from this thread once the worker is given up. */
  private harvestOne(): void {
    const want = this.harvested + 1;
    while (!this.fallback && Atomics.load(this.ctl, VCTL.done) < want) {
      const state = Atomics.load(this.ctl, VCTL.state);
      if (state === VSTATE.failed || (state === VSTATE.starting && performance.now() - this.startedAt > WORKER_START_MS)) this.giveUp();
      else Atomics.wait(this.ctl, VCTL.done, want - 1, 200);
    }
    const { job, shared, windowLength: sent } = this.pending.shift()!;
    // the jobs the worker answered before it failed keep their answers (the packed window went over the window)
    if (Atomics.load(this.ctl, VCTL.done) < want) {
      this.take(this.fallback!.answer({ ...job, window: new Uint8Array(shared, ANSWER_BYTES, sent) }));
      this.free.push(shared);
      this.harvested++;
      return;
    }
    const answer = new Int32Array(shared, 0, 3);
    const windowLength = answer[0]!;
    const packedLength = answer[2]!;
    if (windowLength > 0) this.packedBytes += packedLength;
    this.results.push({
      windowLength,
      packedWindow: windowLength > 0 ? new Uint8Array(shared, ANSWER_BYTES, packedLength).slice() : undefined,
    });
    this.free.push(shared);
    this.harvested++;
  }

  finish(): VerifyResult[] {
    while (this.pending.length > 0) this.harvestOne();
    return this.results;
  }

  private take(r: VerifyResult): void {
    this.packedBytes += r.packedWindow?.length ?? 0;
    this.results.push(r);
  }

  /**
   * The worker failed (it could not open the image, or ran out of memory) or did not start: this
   * thread answers the jobs it has not (their windows are still where they were sent). The worker is
   * ended at close, once it has started.
   */
  private giveUp(): void {
    this.fallback = this.inline();
  }

  close(): void {
    terminateWhenStarted(this.worker, this.ctl, VCTL.state, VSTATE.starting);
    this.fallback?.close();
  }
}

