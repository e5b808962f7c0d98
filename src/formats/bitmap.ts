import type { UsedRun } from "./image.ts";

/**
 * One bit per block, least significant bit first (block b is bit b&7 of byte b>>3), as partclone
 * stores it. The bytes may stop short of `totalBlocks`: the blocks past them are free. So a bitmap
 * built block by block (ntfsclone, a byte bitmap from a pipe) takes memory for the blocks it has
 * seen, never for what a header claims, and every loop over it ends with its bytes.
 */
export class UsedBitmap {
  constructor(
    private bytes: Uint8Array,
    readonly totalBlocks: number,
  ) {}

  /** No block used yet; the bytes grow as blocks are set. */
  static empty(totalBlocks: number): UsedBitmap {
    return new UsedBitmap(new Uint8Array(0), totalBlocks);
  }

  /** Every block used, without a byte per 8 of them (partclone's bitmap mode NONE). */
  static full(totalBlocks: number): UsedBitmap {
    return new FullBitmap(totalBlocks);
  }

  isUsed(block: number): boolean {
    const i = Math.floor(block / 8);
    return block >= 0 && block < this.totalBlocks && i < this.bytes.length && (this.bytes[i]! & (1 << (block & 7))) !== 0;
  }

  /** The first block after `block` (at most `limit`) whose state differs from `block`'s; free past the bytes and past totalBlocks. */
  runEnd(block: number, limit: number): number {
    const used = this.isUsed(block);
    const whole = used ? 0xff : 0;
    const bytes = this.bytes;
    const stop = Math.min(limit, this.totalBlocks);
    let b = block + 1;
    while (b < stop) {
      const i = b >>> 3;
      if (!used && i >= bytes.length) return limit;
      if ((b & 7) === 0 && b + 8 <= stop && bytes[i] === whole) {
        b += 8;
        continue;
      }
      if (this.isUsed(b) !== used) return b;
      b++;
    }
    return used ? stop : limit;
  }

  set(block: number): void {
    const i = Math.floor(block / 8);
    if (i >= this.bytes.length) this.grow(i + 1);
    this.bytes[i]! |= 1 << (block & 7);
  }

  setRange(first: number, count: number): void {
    if (count <= 0) return;
    let b = first;
    const end = first + count;
    this.grow(Math.ceil(end / 8));
    while (b < end && (b & 7) !== 0) this.set(b++);
    if (end - b >= 8) {
      this.bytes.fill(0xff, b / 8, Math.floor(end / 8));
      b = end - (end % 8);
    }
    while (b < end) this.set(b++);
  }

  /** Make room for `byteCount` bytes (doubling, never past the total's). */
  private grow(byteCount: number): void {
    if (byteCount <= this.bytes.length) return;
    const limit = Math.ceil(this.totalBlocks / 8);
    const bigger = new Uint8Array(Math.min(limit, Math.max(byteCount, this.bytes.length * 2, 4096)));
    bigger.set(this.bytes);
    this.bytes = bigger;
  }

  /** Used blocks in [first, end): whole bytes by table, so an index over a large bitmap is quick to build. */
  countIn(first: number, end: number): number {
    end = Math.min(end, this.totalBlocks, this.bytes.length * 8);
    let n = 0;
    let b = first;
    while (b < end && b % 8 !== 0) if (this.isUsed(b++)) n++;
    for (; b + 8 <= end; b += 8) n += POPCOUNT[this.bytes[b / 8]!]!;
    for (; b < end; b++) if (this.isUsed(b)) n++;
    return n;
  }

  /** Number of used blocks (bits past totalBlocks are ignored). */
  count(): number {
    let n = 0;
    const full = Math.min(Math.floor(this.totalBlocks / 8), this.bytes.length);
    for (let i = 0; i < full; i++) n += POPCOUNT[this.bytes[i]!]!;
    const end = Math.min(this.totalBlocks, this.bytes.length * 8);
    for (let b = full * 8; b < end; b++) if (this.isUsed(b)) n++;
    return n;
  }

  /** Ascending runs of used blocks; whole zero and whole 0xff bytes are stepped over 8 blocks at a time. */
  *runs(): Generator<UsedRun, void, undefined> {
    const total = Math.min(this.totalBlocks, this.bytes.length * 8);
    const bits = this.bytes;
    let b = 0;
    while (b < total) {
      // find the next used block
      while (b < total) {
        if ((b & 7) === 0 && bits[b / 8] === 0) b += 8;
        else if (bits[Math.floor(b / 8)]! & (1 << (b & 7))) break;
        else b++;
      }
      if (b >= total) return;
      const first = b;
      while (b < total) {
        if ((b & 7) === 0 && bits[b / 8] === 0xff && b + 8 <= total) b += 8;
        else if (bits[Math.floor(b / 8)]! & (1 << (b & 7))) b++;
        else break;
      }
      yield { firstBlock: first, blockCount: b - first };
    }
  }
}

class FullBitmap extends UsedBitmap {
  constructor(totalBlocks: number) {
    super(new Uint8Array(0), totalBlocks);
  }
  override isUsed(block: number): boolean {
    return block >= 0 && block < this.totalBlocks;
  }
  override runEnd(block: number, limit: number): number {
    return block < this.totalBlocks ? Math.min(limit, this.totalBlocks) : limit;
  }
  override set(): void {}
  override setRange(): void {}
  override count(): number {
    return this.totalBlocks;
  }
  override countIn(first: number, end: number): number {
    return Math.max(0, Math.min(end, this.totalBlocks) - first);
  }
  override *runs(): Generator<UsedRun, void, undefined> {
    if (this.totalBlocks > 0) yield { firstBlock: 0, blockCount: this.totalBlocks };
  }
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, i) => {
  let n = 0;
  for (let x = i; x; x >>= 1) n += x & 1;
  return n;
});

/**
 * Used blocks as ascending runs, for a format that lists its blocks in order (ntfsclone): memory
 * grows with the runs the input really has, not with the volume size its header claims.
 */
export class UsedRunList {
  private first = new Float64Array(64);
  private count_ = new Float64Array(64);
  private length = 0;
  private used = 0;

  constructor(readonly totalBlocks: number) {}

  /** Blocks must come in ascending order; a block right after the last run extends it. */
  set(block: number): void {
    this.setRange(block, 1);
  }

  setRange(firstBlock: number, count: number): void {
    if (count <= 0) return;
    const last = this.length - 1;
    this.used += count;
    if (last >= 0 && this.first[last]! + this.count_[last]! === firstBlock) {
      this.count_[last]! += count;
      return;
    }
    if (last >= 0 && firstBlock < this.first[last]! + this.count_[last]!) throw new Error("UsedRunList: blocks out of order");
    if (this.length === this.first.length) {
      this.first = doubled(this.first);
      this.count_ = doubled(this.count_);
    }
    this.first[this.length] = firstBlock;
    this.count_[this.length] = count;
    this.length++;
  }

  isUsed(block: number): boolean {
    let lo = 0;
    let hi = this.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.first[mid]! > block) hi = mid - 1;
      else if (this.first[mid]! + this.count_[mid]! <= block) lo = mid + 1;
      else return true;
    }
    return false;
  }

  count(): number {
    return this.used;
  }

  *runs(): Generator<UsedRun, void, undefined> {
    for (let i = 0; i < this.length; i++) yield { firstBlock: this.first[i]!, blockCount: this.count_[i]! };
  }
}

function doubled(a: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> {
  const bigger = new Float64Array(a.length * 2);
  bigger.set(a);
  return bigger;
}
