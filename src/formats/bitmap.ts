import { withCommas } from "../errors.ts";
import type { ByteReader } from "../source/byte-reader.ts";
import type { UsedRun } from "./image.ts";

/** 64 KiB of bitmap, 2^19 blocks (2 GiB of 4 KiB blocks), per page */
const PAGE_BYTES = 1 << 16;
const PAGE_BLOCKS = PAGE_BYTES * 8;
/** a page of only used blocks is held as this number, not as bytes (one of no used block is not held) */
const USED = 1;
const FREE = 0;
type Page = Uint8Array | typeof USED;

const ZEROS = new Uint8Array(PAGE_BYTES);
const ONES = new Uint8Array(PAGE_BYTES).fill(0xff);

/** 1 if every one of `bytes` is 0xff, 0 if every one is 0, else undefined (memcmp, not a loop) */
function uniform(bytes: Uint8Array): typeof FREE | typeof USED | undefined {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  if (b.equals(ZEROS.subarray(0, bytes.length))) return FREE;
  if (b.equals(ONES.subarray(0, bytes.length))) return USED;
  return undefined;
}

/** The largest bitmap an image may have unless the caller allows more (--max-bitmap): 2^33 blocks, 32 TiB of 4 KiB blocks. */
export const DEFAULT_MAX_BITMAP = 1 << 30;

/** What a caller may allow beyond the defaults. */
export interface BitmapLimits {
  /** the largest bitmap (one bit per block) read, in bytes; DEFAULT_MAX_BITMAP unless given */
  maxBitmap?: number;
}

/** Refuse, before reading it, a bitmap larger than the caller allows (its size comes from the header's block count). */
export function checkBitmapLimit(r: ByteReader, totalBlocks: number, limits: BitmapLimits, at: number): void {
  const max = limits.maxBitmap ?? DEFAULT_MAX_BITMAP;
  const bytes = Math.ceil(totalBlocks / 8);
  if (bytes > max) {
    r.fail("bitmap larger than the limit", `${withCommas(bytes)} bytes for ${withCommas(totalBlocks)} blocks; the limit is ${limitText(max)}, raised with --max-bitmap`, at);
  }
}

/** A byte count as --max-bitmap takes it: 1G, 512M, or bytes. */
function limitText(bytes: number): string {
  for (const [unit, scale] of [["T", 2 ** 40], ["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]] as const) {
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  return withCommas(bytes);
}

/**
 * One bit per block, least significant bit first (block b is bit b&7 of byte b>>3), as partclone
 * stores it, held in pages of 64 KiB: a page with no used block or only used blocks is a number,
 * not bytes, so a bitmap costs at most its size and a mostly empty (or full) volume's far less.
 * Pages past those set are free: a bitmap built block by block (ntfsclone, a byte bitmap from a
 * pipe) takes memory for the blocks it has seen, never for what a header claims.
 */
export class UsedBitmap {
  /** page i covers blocks [i·2^19, (i+1)·2^19); a page not here is free */
  private readonly pages = new Map<number, Page>();
  /** the indices of `pages`, ascending, so that a walk skips what is not there */
  private readonly order: number[] = [];

  protected constructor(readonly totalBlocks: number) {}

  /** No block used yet; pages are made as blocks are set. */
  static empty(totalBlocks: number): UsedBitmap {
    return new UsedBitmap(totalBlocks);
  }

  /** Every block used, without a byte per 8 of them (partclone's bitmap mode NONE). */
  static full(totalBlocks: number): UsedBitmap {
    return new FullBitmap(totalBlocks);
  }

  /** From bitmap bytes in memory (those past `bytes` are free); uniform pages are not kept as bytes. */
  static fromBytes(bytes: Uint8Array, totalBlocks: number): UsedBitmap {
    const loader = new BitmapLoader(totalBlocks);
    loader.append(bytes);
    return loader.finish();
  }

  private store(index: number, page: Page): void {
    if (!this.pages.has(index)) {
      const order = this.order;
      // pages come in ascending order but for the odd set() behind
      if (order.length === 0 || order[order.length - 1]! < index) order.push(index);
      else order.splice(this.firstAtOrAfter(index), 0, index);
    }
    this.pages.set(index, page);
  }

  /** The position in `order` of the first page index >= `index`. */
  private firstAtOrAfter(index: number): number {
    let lo = 0;
    let hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.order[mid]! < index) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Put page `index` in place, as a number where it is uniform; true if it keeps `bytes` (the caller must not reuse them). */
  protected putPage(index: number, bytes: Uint8Array): boolean {
    const state = uniform(bytes);
    // a short page is USED only where it reaches totalBlocks (the blocks past its bytes are free)
    const reachesEnd = bytes.length === PAGE_BYTES || index * PAGE_BLOCKS + bytes.length * 8 >= this.totalBlocks;
    if (state === FREE) return false;
    if (state === USED && reachesEnd) {
      this.store(index, USED);
      return false;
    }
    this.store(index, bytes);
    return true;
  }

  isUsed(block: number): boolean {
    if (!(block >= 0 && block < this.totalBlocks)) return false;
    const index = Math.floor(block / PAGE_BLOCKS);
    const page = this.pages.get(index);
    if (page === undefined) return false;
    if (page === USED) return true;
    const i = block - index * PAGE_BLOCKS;
    return ((page[i >>> 3] ?? 0) & (1 << (i & 7))) !== 0;
  }

  /** The first block after `block` (at most `limit`) whose state differs from `block`'s; free past the pages and past totalBlocks. */
  runEnd(block: number, limit: number): number {
    const used = this.isUsed(block);
    const stop = Math.min(limit, this.totalBlocks);
    const whole = used ? 0xff : 0;
    let b = block + 1;
    let k = this.firstAtOrAfter(Math.floor(b / PAGE_BLOCKS));
    while (b < stop) {
      const index = Math.floor(b / PAGE_BLOCKS);
      const base = index * PAGE_BLOCKS;
      if (k >= this.order.length || this.order[k]! > index) {
        // free up to the next page held
        if (used) return b;
        if (k >= this.order.length) return limit;
        b = this.order[k]! * PAGE_BLOCKS;
        continue;
      }
      k++;
      const pageEnd = Math.min(stop, base + PAGE_BLOCKS);
      const page = this.pages.get(index)!;
      if (page === USED) {
        if (!used) return b;
        b = pageEnd;
        continue;
      }
      while (b < pageEnd) {
        const i = b - base;
        const byte = page[i >>> 3] ?? 0;
        if ((i & 7) === 0 && b + 8 <= pageEnd && byte === whole) {
          b += 8;
          continue;
        }
        if ((((byte >> (i & 7)) & 1) === 1) !== used) return b;
        b++;
      }
    }
    return used ? stop : limit;
  }

  set(block: number): void {
    this.setRange(block, 1);
  }

  setRange(first: number, count: number): void {
    const end = Math.min(first + count, this.totalBlocks);
    let b = Math.max(0, first);
    while (b < end) {
      const index = Math.floor(b / PAGE_BLOCKS);
      const base = index * PAGE_BLOCKS;
      const pageEnd = Math.min(end, base + PAGE_BLOCKS);
      let page = this.pages.get(index);
      if (page === USED) {
        b = pageEnd;
        continue;
      }
      if (b === base && (pageEnd === base + PAGE_BLOCKS || pageEnd === this.totalBlocks)) {
        this.store(index, USED);
        b = pageEnd;
        continue;
      }
      if (page === undefined) {
        page = new Uint8Array(Math.min(PAGE_BYTES, Math.ceil((this.totalBlocks - base) / 8)));
        this.store(index, page);
      }
      while (b < pageEnd && ((b - base) & 7) !== 0) setBit(page, b++ - base);
      const wholeBytes = Math.floor((pageEnd - b) / 8);
      if (wholeBytes > 0) {
        page.fill(0xff, (b - base) >>> 3, ((b - base) >>> 3) + wholeBytes);
        b += wholeBytes * 8;
      }
      while (b < pageEnd) setBit(page, b++ - base);
    }
  }

  /** Used blocks in [first, end): whole pages by their state, whole bytes by table. */
  countIn(first: number, end: number): number {
    end = Math.min(end, this.totalBlocks);
    let n = 0;
    for (let k = this.firstAtOrAfter(Math.floor(Math.max(0, first) / PAGE_BLOCKS)); k < this.order.length; k++) {
      const index = this.order[k]!;
      const base = index * PAGE_BLOCKS;
      if (base >= end) break;
      const from = Math.max(first, base);
      const to = Math.min(end, base + PAGE_BLOCKS);
      if (from >= to) continue;
      const page = this.pages.get(index)!;
      if (page === USED) n += to - from;
      else n += countBits(page, from - base, to - base);
    }
    return n;
  }

  /** Number of used blocks. */
  count(): number {
    return this.countIn(0, this.totalBlocks);
  }

  /** Ascending runs of used blocks; uniform pages are stepped over whole, uniform bytes 8 blocks at a time. */
  *runs(): Generator<UsedRun, void, undefined> {
    const total = this.totalBlocks;
    let start = -1;
    let next = 0; // the block after the last page walked
    for (const index of this.order) {
      const base = index * PAGE_BLOCKS;
      if (base >= total) break;
      if (base !== next && start >= 0) {
        // a free page (not held) between
        yield { firstBlock: start, blockCount: next - start };
        start = -1;
      }
      const pageEnd = Math.min(total, base + PAGE_BLOCKS);
      next = pageEnd;
      const page = this.pages.get(index)!;
      if (page === USED) {
        if (start < 0) start = base;
        continue;
      }
      let b = base;
      while (b < pageEnd) {
        const i = b - base;
        const byte = page[i >>> 3] ?? 0;
        if ((i & 7) === 0 && b + 8 <= pageEnd && (byte === 0 || byte === 0xff)) {
          if (byte === 0xff) {
            if (start < 0) start = b;
          } else if (start >= 0) {
            yield { firstBlock: start, blockCount: b - start };
            start = -1;
          }
          b += 8;
          continue;
        }
        if ((byte >> (i & 7)) & 1) {
          if (start < 0) start = b;
        } else if (start >= 0) {
          yield { firstBlock: start, blockCount: b - start };
          start = -1;
        }
        b++;
      }
    }
    if (start >= 0) yield { firstBlock: start, blockCount: next - start };
  }

  /** Bytes held for the pages (not counting the page table), to check the memory bound. */
  heldBytes(): number {
    let n = 0;
    for (const page of this.pages.values()) if (page instanceof Uint8Array) n += page.length;
    return n;
  }
}

function setBit(page: Uint8Array, i: number): void {
  page[i >>> 3]! |= 1 << (i & 7);
}

/** Set bits of `page` in [from, to) (block numbers within the page). */
function countBits(page: Uint8Array, from: number, to: number): number {
  let n = 0;
  let i = from;
  for (; i < to && (i & 7) !== 0; i++) n += ((page[i >>> 3] ?? 0) >> (i & 7)) & 1;
  const stop = Math.min(to, page.length * 8);
  for (; i + 8 <= stop; i += 8) n += POPCOUNT[page[i >>> 3]!]!;
  for (; i < to; i++) n += ((page[i >>> 3] ?? 0) >> (i & 7)) & 1;
  return n;
}

/**
 * Bitmap bytes as they arrive from a stream, a page at a time: at most one page of them is held
 * beyond what the bitmap keeps, so a bitmap read from a pipe is held once, never twice.
 */
export class BitmapLoader extends UsedBitmap {
  private page = new Uint8Array(PAGE_BYTES);
  private filled = 0;
  private index = 0;

  constructor(totalBlocks: number) {
    super(totalBlocks);
  }

  append(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length) {
      const n = Math.min(PAGE_BYTES - this.filled, bytes.length - at);
      this.page.set(bytes.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === PAGE_BYTES) this.flush();
    }
  }

  private flush(): void {
    if (this.filled === 0) return;
    const bytes = this.filled === PAGE_BYTES ? this.page : this.page.slice(0, this.filled);
    if (this.putPage(this.index, bytes) && bytes === this.page) this.page = new Uint8Array(PAGE_BYTES);
    this.index++;
    this.filled = 0;
  }

  /** The bitmap of the bytes appended (blocks past them are free). */
  finish(): UsedBitmap {
    this.flush();
    this.page = new Uint8Array(0);
    return this;
  }
}

class FullBitmap extends UsedBitmap {
  constructor(totalBlocks: number) {
    super(totalBlocks);
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
