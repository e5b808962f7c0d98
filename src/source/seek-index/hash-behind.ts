// The piece hashes of the zstd build's pass (piece-hashes.ts), made in a worker thread just behind
// it: the pass decodes into a ring in shared memory and queues where each block landed; the worker
// hashes the blocks in that order and hands the pieces back through a second queue. The pass never
// writes over bytes not hashed yet: it waits while more than the ring's slack is queued.
import { PieceHasher, type PieceHashes } from "./piece-hashes.ts";

/** Int32 control words: the worker's state, the two queues' counters. */
const CTL = { state: 0, pushed: 1, consumed: 2, piecesWritten: 3, piecesRead: 4, words: 8 } as const;
const STATE = { starting: 0, ready: 1, failed: 2, finished: 3 } as const;
/** queued blocks: [ring offset, length], or a length of CUT (a point starts here) or FINISH */
const QUEUE_ENTRIES = 1 << 13;
const CUT = -1;
const FINISH = -2;
/** pieces handed back: [end (f64), XXH3-64 (8 bytes)] */
const PIECE_ENTRIES = 1 << 12;
const WORKER_START_MS = 20_000;

/** What the worker is given: the shared memory, and the decoded offset its first byte is at. */
export interface HashBehindStart {
  hashBehind: { ctl: SharedArrayBuffer; ring: SharedArrayBuffer; queue: SharedArrayBuffer; pieces: SharedArrayBuffer; decoded: number };
}

export class HashBehind {
  private readonly ctl: Int32Array;
  private readonly queue: Int32Array;
  private readonly pieceEnds: Float64Array;
  private readonly pieceHashes: Uint8Array;
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
    this.pieceEnds = new Float64Array(shared.pieces, 0, PIECE_ENTRIES);
    this.pieceHashes = new Uint8Array(shared.pieces, 8 * PIECE_ENTRIES);
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
      pieces: new SharedArrayBuffer(16 * PIECE_ENTRIES),
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

  /** All fed: the pieces, once the worker has hashed everything. */
  finish(): { ends: number[]; hashes: Uint8Array } {
    this.push(0, FINISH);
    this.waitUntil(() => this.unhashed.length === 0 && Atomics.load(this.ctl, CTL.state) === STATE.finished);
    this.drainPieces();
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

  /** Take what the worker has done (hashed blocks, pieces) until `done` holds. */
  private waitUntil(done: () => boolean): void {
    for (;;) {
      const consumed = Atomics.load(this.ctl, CTL.consumed);
      while (this.pushed - this.unhashed.length < consumed) this.unhashedBytes -= this.unhashed.shift()!;
      this.drainPieces();
      if (done()) return;
      if (Atomics.load(this.ctl, CTL.state) === STATE.failed) throw new Error("hash behind: the worker failed");
      Atomics.wait(this.ctl, CTL.consumed, consumed, 50);
    }
  }

  private drainPieces(): void {
    const written = Atomics.load(this.ctl, CTL.piecesWritten);
    let read = Atomics.load(this.ctl, CTL.piecesRead);
    if (read === written) return;
    for (; read < written; read++) {
      const i = read % PIECE_ENTRIES;
      const n = this.ends.length;
      if (this.hashes.length < 8 * (n + 1)) {
        const grown = new Uint8Array(this.hashes.length * 2);
        grown.set(this.hashes);
        this.hashes = grown;
      }
      this.hashes.set(this.pieceHashes.subarray(8 * i, 8 * i + 8), 8 * n);
      this.ends.push(this.pieceEnds[i]!);
    }
    Atomics.store(this.ctl, CTL.piecesRead, read);
    Atomics.notify(this.ctl, CTL.piecesRead);
  }
}

/** The worker's side: hash the queued blocks in order until told to finish. */
export function runHashBehind(shared: HashBehindStart["hashBehind"]): void {
  const ctl = new Int32Array(shared.ctl);
  const ring = new Uint8Array(shared.ring);
  const queue = new Int32Array(shared.queue);
  const pieceEnds = new Float64Array(shared.pieces, 0, PIECE_ENTRIES);
  const pieceHashes = new Uint8Array(shared.pieces, 8 * PIECE_ENTRIES);
  const hasher = new PieceHasher(shared.decoded);
  let handedBack = 0;
  /** hand back the pieces the hasher has closed since last time */
  const handBack = () => {
    const { ends, hashes } = hasher.closed();
    for (; handedBack < ends.length; handedBack++) {
      while (Atomics.load(ctl, CTL.piecesWritten) - Atomics.load(ctl, CTL.piecesRead) >= PIECE_ENTRIES) {
        Atomics.wait(ctl, CTL.piecesRead, Atomics.load(ctl, CTL.piecesRead), 50);
      }
      const written = Atomics.load(ctl, CTL.piecesWritten);
      const i = written % PIECE_ENTRIES;
      pieceEnds[i] = ends[handedBack]!;
      pieceHashes.set(hashes.subarray(8 * handedBack, 8 * handedBack + 8), 8 * i);
      Atomics.store(ctl, CTL.piecesWritten, written + 1);
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
 * The pass's piece hashes: made behind it by a worker while one runs, else in the pass's own thread.
 * A frame whose window needs a larger ring ends the worker's part there and starts another.
 */
export class PassPieces {
  private behind: HashBehind | undefined;
  private local: PieceHasher | undefined;
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
    if (!this.behind) this.local = new PieceHasher(decoded);
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

  finish(): PieceHashes {
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
