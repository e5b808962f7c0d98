// The decoded stream's stretch hashes, as the build's single pass records them: the stream is cut at
// every multiple of STRETCH_GRID and at every seek point, and each stretch between two cuts gets a
// hash of its bytes (ChainedHash). A reader that decodes from a point checks each stretch before it
// hands any of its bytes out, so a point that decodes differently is caught where it does, with no
// second decode at build time.

/** Stretches never cross a multiple of this (the reader's cached spans are this size and aligned to it). */
export const STRETCH_GRID = 1 << 20;

/** Stretches are hashed in chunks of this many bytes, aligned to it in the decoded stream (and cut at the stretch's ends). */
export const HASH_CHUNK = 64 << 10;

/**
 * The hash of a stretch: each chunk's XXH3-64 folded into the value of the chunks before it (0 before
 * the first) as the XXH3-64 of the 16 bytes [value, chunk's hash], both little-endian u64; stored as
 * the last value, little-endian. Chunks at fixed offsets let every reader hash whole chunks where they
 * lie with the runtime's XXH3 (several times the speed of the system library's streaming one here),
 * copying only a chunk that comes in parts.
 */
export class ChainedHash {
  private value = 0n;
  /** the decoded offset reached */
  private at = 0;
  /** the open chunk's bytes so far, where it came in parts */
  private readonly held = new Uint8Array(HASH_CHUNK);
  private heldBytes = 0;
  private readonly pair = new Uint8Array(16);
  private readonly pairView = new DataView(this.pair.buffer);

  /** A new stretch (or span) from decoded offset `at` on. */
  reset(at: number): void {
    this.value = 0n;
    this.at = at;
    this.heldBytes = 0;
  }

  /** The next bytes (in order, from the offset reset() was given). */
  update(bytes: Uint8Array): void {
    let from = 0;
    while (from < bytes.length) {
      const toChunkEnd = HASH_CHUNK - (this.at % HASH_CHUNK);
      const n = Math.min(toChunkEnd, bytes.length - from);
      if (this.heldBytes === 0 && n === toChunkEnd) this.fold(bytes.subarray(from, from + n));
      else {
        this.held.set(bytes.subarray(from, from + n), this.heldBytes);
        this.heldBytes += n;
        if (n === toChunkEnd) this.flush();
      }
      from += n;
      this.at += n;
    }
  }

  /** The value of everything since reset(), as 8 bytes into `out`. */
  digestInto(out: Uint8Array): void {
    this.flush();
    new DataView(out.buffer, out.byteOffset, 8).setBigUint64(0, this.value, true);
  }

  private flush(): void {
    if (this.heldBytes === 0) return;
    this.fold(this.held.subarray(0, this.heldBytes));
    this.heldBytes = 0;
  }

  private fold(chunk: Uint8Array): void {
    this.pairView.setBigUint64(0, this.value, true);
    this.pairView.setBigUint64(8, Bun.hash.xxHash3(chunk), true);
    this.value = Bun.hash.xxHash3(this.pair);
  }
}

/** Each stretch's end offset (ascending; the last is the decoded size) and its XXH3-64, 8 bytes each. */
export interface StretchHashes {
  ends: Float64Array;
  hashes: Uint8Array;
}

/** Cuts the decoded stream into stretches and hashes them as the pass hands its bytes over. */
export class StretchHasher {
  private readonly hash = new ChainedHash();
  private ends: number[] = [];
  private hashes = new Uint8Array(8 * 64);
  /** where the open stretch starts */
  private start: number;

  /** From decoded offset `at` on (a stretch starts there). */
  constructor(private at = 0) {
    this.start = at;
    this.hash.reset(at);
  }

  /** The next decoded bytes. */
  feed(bytes: Uint8Array): void {
    let from = 0;
    while (from < bytes.length) {
      const toGrid = STRETCH_GRID - (this.at % STRETCH_GRID);
      const n = Math.min(toGrid, bytes.length - from);
      this.hash.update(bytes.subarray(from, from + n));
      from += n;
      this.at += n;
      if (n === toGrid) this.cut();
    }
  }

  /** End the open stretch here (a seek point starts at this offset). */
  cut(): void {
    if (this.at === this.start) return;
    const i = this.ends.length;
    if (this.hashes.length < 8 * (i + 1)) {
      const grown = new Uint8Array(this.hashes.length * 2);
      grown.set(this.hashes);
      this.hashes = grown;
    }
    this.hash.digestInto(this.hashes.subarray(8 * i, 8 * i + 8));
    this.ends.push(this.at);
    this.hash.reset(this.at);
    this.start = this.at;
  }

  /** The decoded offset reached. */
  get decoded(): number {
    return this.at;
  }

  finish(): StretchHashes {
    this.cut();
    return { ends: Float64Array.from(this.ends), hashes: this.hashes.slice(0, 8 * this.ends.length) };
  }
}

/** The index of the stretch holding decoded offset `at` (the first whose end lies past it). */
export function stretchAt(stretches: StretchHashes, at: number): number {
  let lo = 0;
  let hi = stretches.ends.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (stretches.ends[mid]! > at) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Where stretch `i` starts. */
export function stretchStart(stretches: StretchHashes, i: number): number {
  return i === 0 ? 0 : stretches.ends[i - 1]!;
}

/**
 * Checks decoded bytes stretch by stretch as they come, from a stretch's start on: `update` them in
 * order, and `complete` says whether the stretch ending at the bytes' end (if one does) matched.
 */
export class StretchChecker {
  private readonly hash = new ChainedHash();
  private readonly digest = new Uint8Array(8);
  /** the stretch being hashed, and the decoded offset reached in it */
  private stretch = 0;
  private at = 0;

  constructor(readonly stretches: StretchHashes) {}

  /** Start at decoded offset `at`, which must be a stretch's start. */
  startAt(at: number): void {
    this.stretch = stretchAt(this.stretches, at);
    if (stretchStart(this.stretches, this.stretch) !== at) throw new Error(`seek index: ${at} is not the start of a hashed stretch`);
    this.at = at;
    this.hash.reset(at);
  }

  /** Bytes to the end of the current stretch. */
  get leftInStretch(): number {
    return this.stretches.ends[this.stretch]! - this.at;
  }

  /** Where the current stretch starts. */
  get stretchStart(): number {
    return stretchStart(this.stretches, this.stretch);
  }

  /** Pass over the current stretch unchecked (at its start: its bytes are known good). */
  skip(): void {
    this.at = this.stretches.ends[this.stretch]!;
    this.stretch++;
    this.hash.reset(this.at);
  }

  /**
   * The next decoded bytes (at most to the current stretch's end). Returns undefined while the stretch
   * is open, else whether it matched (and moves on to the next stretch).
   */
  update(bytes: Uint8Array): boolean | undefined {
    if (bytes.length > this.leftInStretch) throw new Error("seek index: bytes past the end of a hashed stretch");
    this.hash.update(bytes);
    this.at += bytes.length;
    if (this.at < this.stretches.ends[this.stretch]!) return undefined;
    this.hash.digestInto(this.digest);
    const expected = this.stretches.hashes.subarray(8 * this.stretch, 8 * this.stretch + 8);
    let same = true;
    for (let i = 0; i < 8; i++) if (this.digest[i] !== expected[i]) same = false;
    this.stretch++;
    this.hash.reset(this.at);
    return same;
  }
}

/** An error decoding gives (damaged or differently decoded input), not one of reading it (EIO and the like). */
export function isDecodeError(e: unknown): boolean {
  const code = (e as { code?: unknown } | undefined)?.code;
  return !(typeof code === "string" && code.startsWith("E"));
}
