import type { UsedRun } from "./image.ts";

/** One bit per block, least significant bit first (block b is bit b&7 of byte b>>3), as partclone stores it. */
export class UsedBitmap {
  constructor(
    readonly bits: Uint8Array,
    readonly totalBlocks: number,
  ) {}

  static empty(totalBlocks: number): UsedBitmap {
    return new UsedBitmap(new Uint8Array(Math.ceil(totalBlocks / 8)), totalBlocks);
  }

  isUsed(block: number): boolean {
    return block >= 0 && block < this.totalBlocks && (this.bits[block >>> 3]! & (1 << (block & 7))) !== 0;
  }

  set(block: number): void {
    this.bits[block >>> 3]! |= 1 << (block & 7);
  }

  setRange(first: number, count: number): void {
    let b = first;
    const end = first + count;
    while (b < end && (b & 7) !== 0) this.set(b++);
    if (end - b >= 8) {
      this.bits.fill(0xff, b >>> 3, end >>> 3);
      b = end & ~7;
    }
    while (b < end) this.set(b++);
  }

  /** Number of used blocks (bits past totalBlocks are ignored). */
  count(): number {
    let n = 0;
    const full = this.totalBlocks >>> 3;
    for (let i = 0; i < full; i++) n += POPCOUNT[this.bits[i]!]!;
    for (let b = full << 3; b < this.totalBlocks; b++) if (this.isUsed(b)) n++;
    return n;
  }

  /** Ascending runs of used blocks; whole zero and whole 0xff bytes are stepped over 8 blocks at a time. */
  *runs(): Generator<UsedRun, void, undefined> {
    const total = this.totalBlocks;
    const bits = this.bits;
    let b = 0;
    while (b < total) {
      // find the next used block
      while (b < total) {
        if ((b & 7) === 0 && bits[b >>> 3] === 0) b += 8;
        else if (bits[b >>> 3]! & (1 << (b & 7))) break;
        else b++;
      }
      if (b >= total) return;
      const first = b;
      while (b < total) {
        if ((b & 7) === 0 && bits[b >>> 3] === 0xff && b + 8 <= total) b += 8;
        else if (bits[b >>> 3]! & (1 << (b & 7))) b++;
        else break;
      }
      yield { firstBlock: first, blockCount: b - first };
    }
  }
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, i) => {
  let n = 0;
  for (let x = i; x; x >>= 1) n += x & 1;
  return n;
});
