// The stretch hashes of the zstd build's pass (stretch-hashes.ts), made in a worker thread just behind
// it: the pass decodes into a ring in shared memory and queues where each block landed; the worker
// hashes the blocks in that order and hands the stretches back through a second queue. The pass never
// writes over bytes not hashed yet: it waits while more than the ring's slack is queued.
import { StretchHasher, type StretchHashes } from "./stretch-hashes.ts";

/** Int32 control words: the worker's state, the two queues' counters. */
const CTL = { state: 0, pushed: 1, consumed: 2, stretchesWritten: 3, stretchesRead: 4, words: 8 } as const;
const STATE = { starting: 0, ready: 1, failed: 2, finished: 3 } as const;
/** queued blocks: [ring offset, length], or a length of CUT (a point starts here) or FINISH */
const QUEUE_ENTRIES = 1 << 13;
const CUT = -1;
const FINISH = -2;
/** stretches handed back: [end (f64), XXH3-64 (8 bytes)] */
const STRETCH_ENTRIES = 1 << 12;
const WORKER_START_MS = 20_000;

/** What the worker is given: the shared memory, and the decoded offset its first byte is at. */
export interface HashBehindStart {
  hashBehind: { ctl: SharedArrayBuffer; ring: SharedArrayBuffer; queue: SharedArrayBuffer; stretches: SharedArrayBuffer; decoded: number };
}

export class HashBehind {
  private readonly ctl: Int32Array;
  private readonly queue: Int32Array;
  private readonly stretchEnds: Float64Array;
  private readonly stretchHashes: Uint8Array;
  /** the lengths of the blocks queued and not yet hashed, oldest first, and their sum */
  private readonly unhashed: number[] = [];
  private unhashedBytes = 0;
  private pushed = 0;
  private readonly ends: number[] = [];
  private hashes = new Uint8Array(8 * 64);

  private constructor(
    private readonly worker: Worker,
    shared: HashBehindStart["hashBehind"],
    /** the ring the pass decodes into */
    readonly ring: Uint8Array,
    /** bytes that may wait to be hashed: the ring beyond what the pass itself needs */
    private readonly slack: number,
  ) {
    this.ctl = new Int32Array(shared.ctl);
    this.queue = new Int32Array(shared.queue);
    this.stretchEnds = new Float64Array(shared.stretches, 0, STRETCH_ENTRIES);
    this.stretchHashes = new Uint8Array(shared.stretches, 8 * STRETCH_ENTRIES);
  }

  /**
   * A worker hashing behind a pass that decodes into a ring of `needed` bytes plus `slack`, from
   * decoded offset `decoded` on; undefined when no worker starts.
   */
  static start(workerUrl: string, needed: number, slack: number, decoded: number): HashBehind | undefined {
    const shared = {
      ctl: new SharedArrayBuffer(4 * CTL.words),
      ring: new SharedArrayBuffer(needed + slack),
      queue: new SharedArrayBuffer(8 * QUEUE_ENTRIES),
      stretches: new SharedArrayBuffer(16 * STRETCH_ENTRIES),
      decoded,
    };
    let worker: Worker;
    try {
      worker = new Worker(workerUrl);
    } catch {
      return undefined;
    }
    worker.postMessage({ hashBehind: shared } satisfies HashBehindStart);
    const h = new HashBehind(worker, shared, new Uint8Array(shared.ring), slack);
    const deadline = performance.now() + WORKER_START_MS;
    while (Atomics.load(h.ctl, CTL.state) === STATE.starting) {
      if (performance.now() > deadline) break;
      Atomics.wait(h.ctl, CTL.state, STATE.starting, 100);
    }
    if (Atomics.load(h.ctl, CTL.state) !== STATE.ready) {
      worker.terminate();
      return undefined;
    }
    return h;
  }

  /** The next decoded bytes, a view of the ring; waits first while too much is not hashed yet. */
  feed(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    if (bytes.buffer !== this.ring.buffer) throw new Error("hash behind: bytes outside the shared ring");
    this.push(bytes.byteOffset - this.ring.byteOffset, bytes.length);
  }

  /** A point starts here. */
  cut(): void {
    this.push(0, CUT);
  }

  /** Room for a block of `n` bytes: returns once the bytes it may write over are hashed. */
  room(n: number): void {
    this.waitUntil(() => this.unhashedBytes + n <= this.slack);
  }

  /** All fed: the stretches, once the worker has hashed everything. */
  finish(): { ends: number[]; hashes: Uint8Array } {
    this.push(0, FINISH);
    this.waitUntil(() => this.unhashed.length === 0 && Atomics.load(this.ctl, CTL.state) === STATE.finished);
    this.drainStretches();
    return { ends: this.ends, hashes: this.hashes.subarray(0, 8 * this.ends.length) };
  }

  close(): void {
    this.worker.terminate();
  }

  private push(offset: number, length: number): void {
    this.waitUntil(() => this.pushed - Atomics.load(this.ctl, CTL.consumed) < QUEUE_ENTRIES);
    const i = 2 * (this.pushed % QUEUE_ENTRIES);
    this.queue[i] = offset;
    this.queue[i + 1] = length;
    this.pushed++;
    this.unhashed.push(Math.max(0, length));
    this.unhashedBytes += Math.max(0, length);
    Atomics.store(this.ctl, CTL.pushed, this.pushed);
    Atomics.notify(this.ctl, CTL.pushed);
  }

  /** Take what the worker has done (hashed blocks, stretches) until `done` holds. */
  private waitUntil(done: () => boolean): void {
    for (;;) {
      const consumed = Atomics.load(this.ctl, CTL.consumed);
      while (this.pushed - this.unhashed.length < consumed) this.unhashedBytes -= this.unhashed.shift()!;
      this.drainStretches();
      if (done()) return;
      if (Atomics.load(this.ctl, CTL.state) === STATE.failed) throw new Error("hash behind: the worker failed");
      Atomics.wait(this.ctl, CTL.consumed, consumed, 50);
    }
  }

  private drainStretches(): void {
    const written = Atomics.load(this.ctl, CTL.stretchesWritten);
    let read = Atomics.load(this.ctl, CTL.stretchesRead);
    if (read === written) return;
    for (; read < written; read++) {
      const i = read % STRETCH_ENTRIES;
      const n = this.ends.length;
      if (this.hashes.length < 8 * (n + 1)) {
        const grown = new Uint8Array(this.hashes.length * 2);
        grown.set(this.hashes);
        this.hashes = grown;
      }
      this.hashes.set(this.stretchHashes.subarray(8 * i, 8 * i + 8), 8 * n);
      this.ends.push(this.stretchEnds[i]!);
    }
    Atomics.store(this.ctl, CTL.stretchesRead, read);
    Atomics.notify(this.ctl, CTL.stretchesRead);
  }
}

/** The worker's side: hash the queued blocks in order until told to finish. */
export function runHashBehind(shared: HashBehindStart["hashBehind"]): void {
  const ctl = new Int32Array(shared.ctl);
  const ring = new Uint8Array(shared.ring);
  const queue = new Int32Array(shared.queue);
  const stretchEnds = new Float64Array(shared.stretches, 0, STRETCH_ENTRIES);
  const stretchHashes = new Uint8Array(shared.stretches, 8 * STRETCH_ENTRIES);
  const hasher = new StretchHasher(shared.decoded);
  let handedBack = 0;
  /** hand back the stretches the hasher has closed since last time */
  const handBack = () => {
    const { ends, hashes } = hasher.closed();
    for (; handedBack < ends.length; handedBack++) {
      while (Atomics.load(ctl, CTL.stretchesWritten) - Atomics.load(ctl, CTL.stretchesRead) >= STRETCH_ENTRIES) {
        Atomics.wait(ctl, CTL.stretchesRead, Atomics.load(ctl, CTL.stretchesRead), 50);
      }
      const written = Atomics.load(ctl, CTL.stretchesWritten);
      const i = written % STRETCH_ENTRIES;
      stretchEnds[i] = ends[handedBack]!;
      stretchHashes.set(hashes.subarray(8 * handedBack, 8 * handedBack + 8), 8 * i);
      Atomics.store(ctl, CTL.stretchesWritten, written + 1);
    }
  };
  try {
    Atomics.store(ctl, CTL.state, STATE.ready);
    Atomics.notify(ctl, CTL.state);
    for (let consumed = 0; ; ) {
      while (Atomics.load(ctl, CTL.pushed) === consumed) Atomics.wait(ctl, CTL.pushed, consumed, 50);
      const i = 2 * (consumed % QUEUE_ENTRIES);
      const offset = queue[i]!;
      const length = queue[i + 1]!;
      if (length === FINISH) {
        hasher.cut();
        handBack();
        Atomics.store(ctl, CTL.state, STATE.finished);
      } else if (length === CUT) hasher.cut();
      else hasher.feed(ring.subarray(offset, offset + length));
      handBack();
      Atomics.store(ctl, CTL.consumed, ++consumed);
      Atomics.notify(ctl, CTL.consumed);
      if (length === FINISH) return;
    }
  } catch {
    Atomics.store(ctl, CTL.state, STATE.failed);
    Atomics.notify(ctl, CTL.consumed);
  }
}

/**
 * The pass's stretch hashes: made behind it by a worker while one runs, else in the pass's own thread.
 * A frame whose window needs a larger ring ends the worker's part there and starts another.
 */
export class PassStretches {
  private behind: HashBehind | undefined;
  private local: StretchHasher | undefined;
  private readonly ends: number[] = [];
  private readonly hashes: Uint8Array[] = [];

  constructor(
    /** the worker's script; undefined: hash in this thread */
    private readonly workerUrl: string | undefined,
    /** bytes the worker may lag behind the pass */
    private readonly slack: number,
  ) {}

  /**
   * The ring to decode a frame starting at decoded offset `decoded` into, of at least `needed`
   * bytes (shared with the worker); undefined: the decoder's own (hashed in this thread).
   */
  ringFor(needed: number, decoded: number): Uint8Array | undefined {
    if (this.local) return undefined;
    if (this.behind && this.behind.ring.length >= needed + this.slack) return this.behind.ring;
    this.collectBehind();
    this.behind = this.workerUrl === undefined ? undefined : HashBehind.start(this.workerUrl, needed, this.slack, decoded);
    if (!this.behind) this.local = new StretchHasher(decoded);
    return this.behind?.ring;
  }

  feed(bytes: Uint8Array): void {
    if (this.behind) this.behind.feed(bytes);
    else this.local!.feed(bytes);
  }

  cut(): void {
    if (this.behind) this.behind.cut();
    else this.local?.cut();
  }

  /** Before a block of up to `n` bytes is decoded into the ring: the bytes it may write over are hashed. */
  room(n: number): void {
    this.behind?.room(n);
  }

  finish(): StretchHashes {
    this.collectBehind();
    const rest = this.local?.finish();
    const ends = Float64Array.from([...this.ends, ...(rest?.ends ?? [])]);
    const hashes = new Uint8Array(8 * ends.length);
    let at = 0;
    for (const h of [...this.hashes, ...(rest ? [rest.hashes] : [])]) {
      hashes.set(h, at);
      at += h.length;
    }
    return { ends, hashes };
  }

  close(): void {
    this.behind?.close();
    this.behind = undefined;
  }

  private collectBehind(): void {
    if (!this.behind) return;
    this.behind.cut();
    const { ends, hashes } = this.behind.finish();
    this.ends.push(...ends);
    this.hashes.push(hashes.slice());
    this.behind.close();
    this.behind = undefined;
  }
}
