import { expect, test } from "bun:test";
import { BitmapLoader, UsedBitmap } from "../src/formats/bitmap.ts";
import { Rng } from "./fuzz/mutants.ts";

/** The used blocks of `bm` one by one, as the reference for the faster ways of counting. */
function slowly(bm: { isUsed(b: number): boolean }, first: number, end: number): number {
  let n = 0;
  for (let b = first; b < end; b++) if (bm.isUsed(b)) n++;
  return n;
}

/** isUsed straight from the bytes: the reference every other way must agree with */
function bitOf(bits: Uint8Array, total: number, b: number): boolean {
  return b >= 0 && b < total && b >> 3 < bits.length && (bits[b >> 3]! & (1 << (b & 7))) !== 0;
}

/** `bits` as runs, block by block */
function runsOf(bits: Uint8Array, total: number): { firstBlock: number; blockCount: number }[] {
  const out: { firstBlock: number; blockCount: number }[] = [];
  for (let b = 0; b < total; b++) {
    if (!bitOf(bits, total, b)) continue;
    const last = out.at(-1);
    if (last && last.firstBlock + last.blockCount === b) last.blockCount++;
    else out.push({ firstBlock: b, blockCount: 1 });
  }
  return out;
}

test("count, countIn and runs agree with isUsed; a bitmap grown block by block equals the stored one", () => {
  const rng = new Rng(7);
  for (let t = 0; t < 300; t++) {
    const total = 1 + rng.int(5000);
    const bits = Uint8Array.from({ length: Math.ceil(total / 8) }, () => rng.pick([0, 0xff, rng.int(256)]));
    const bm = UsedBitmap.fromBytes(bits, total);
    const a = rng.int(total);
    const b = a + rng.int(total - a + 10);
    expect(bm.countIn(a, b)).toBe(slowly(bm, a, b));
    expect(bm.count()).toBe(slowly(bm, 0, total));
    let inRuns = 0;
    for (const r of bm.runs()) {
      expect(slowly(bm, r.firstBlock, r.firstBlock + r.blockCount)).toBe(r.blockCount);
      inRuns += r.blockCount;
    }
    expect(inRuns).toBe(bm.count());
    const grown = UsedBitmap.empty(total);
    for (let i = 0; i < total; i++) if (bm.isUsed(i)) grown.set(i);
    expect([...grown.runs()]).toEqual([...bm.runs()]);
    expect(grown.count()).toBe(bm.count());
    for (let k = 0; k < 50; k++) {
      const x = rng.int(total + 20) - 10;
      expect(grown.isUsed(x)).toBe(bm.isUsed(x));
    }
  }
});

test("pages: free, used and mixed pages of 2^19 blocks, loaded in chunks of any size, agree with the bytes; only mixed pages hold bytes", () => {
  const PAGE = 1 << 16; // bytes a page
  const rng = new Rng(11);
  for (let t = 0; t < 10; t++) {
    const pages = 1 + rng.int(4);
    // the last page short (and the total not a multiple of 8) half the time
    const total = pages * PAGE * 8 - (rng.int(2) ? rng.int(PAGE * 8 - 1) : 0);
    const bits = new Uint8Array(Math.ceil(total / 8));
    let mixed = 0;
    for (let p = 0; p < pages; p++) {
      const kind = rng.pick(["free", "used", "mixed", "sparse"]);
      const page = bits.subarray(p * PAGE, (p + 1) * PAGE);
      if (kind === "used") page.fill(0xff);
      if (kind === "mixed") for (let i = 0; i < page.length; i++) page[i] = rng.pick([0, 0xff, rng.int(256)]);
      if (kind === "sparse") page[rng.int(page.length)] = 1 << rng.int(8);
      if (kind === "mixed" || kind === "sparse") mixed += page.length;
    }
    const loader = new BitmapLoader(total);
    for (let at = 0; at < bits.length; ) {
      const n = Math.min(bits.length - at, 1 + rng.int(3 * PAGE));
      loader.append(bits.subarray(at, at + n));
      at += n;
    }
    const bm = loader.finish();
    expect(bm.heldBytes()).toBeLessThanOrEqual(mixed);
    const runs = runsOf(bits, total);
    expect([...bm.runs()]).toEqual(runs);
    // used blocks before each block, for countIn's reference
    const before = new Int32Array(total + 1);
    for (let b = 0; b < total; b++) before[b + 1] = before[b]! + (bitOf(bits, total, b) ? 1 : 0);
    expect(bm.count()).toBe(before[total]!);
    for (let k = 0; k < 300; k++) {
      const x = rng.int(total + 40) - 20;
      expect(bm.isUsed(x)).toBe(bitOf(bits, total, x));
      const limit = x + 1 + rng.int(3 * PAGE * 8);
      // runEnd: the first block after x in another state, free past the total
      if (x >= 0) {
        // used: the end of x's run; free: the next run's start (free past the total)
        const run = runs.find((r) => r.firstBlock + r.blockCount > x);
        const inRun = run !== undefined && run.firstBlock <= x;
        const want = inRun ? Math.min(run.firstBlock + run.blockCount, limit) : Math.min(run?.firstBlock ?? limit, limit);
        expect(bm.runEnd(x, limit)).toBe(want);
      }
      const y = x + rng.int(3 * PAGE * 8);
      expect(bm.countIn(Math.max(0, x), y)).toBe(before[Math.min(y, total)]! - before[Math.min(Math.max(0, x), total)]!);
    }
    // the same blocks set as ascending runs (as ntfsclone lists them) give the same bitmap
    const grown = UsedBitmap.empty(total);
    for (const r of runs) grown.setRange(r.firstBlock, r.blockCount);
    expect([...grown.runs()]).toEqual(runs);
    expect(grown.heldBytes()).toBeLessThanOrEqual(bits.length);
  }
});

test("a bitmap of 2^32 blocks with no block used holds no page; one with a few used blocks holds their pages only", () => {
  const total = 2 ** 32;
  const loader = new BitmapLoader(total);
  const zeros = new Uint8Array(1 << 20);
  for (let i = 0; i < total / 8 / zeros.length; i++) loader.append(zeros);
  const empty = loader.finish();
  expect(empty.heldBytes()).toBe(0);
  expect(empty.count()).toBe(0);
  expect([...empty.runs()]).toEqual([]);
  expect(empty.runEnd(5, total)).toBe(total);
  const few = UsedBitmap.empty(total);
  few.setRange(0, 1 << 20);
  few.set(2 ** 31 + 3);
  few.set(total - 1);
  expect(few.heldBytes()).toBe(2 * (1 << 16));
  expect([...few.runs()]).toEqual([
    { firstBlock: 0, blockCount: 1 << 20 },
    { firstBlock: 2 ** 31 + 3, blockCount: 1 },
    { firstBlock: total - 1, blockCount: 1 },
  ]);
  expect(few.countIn(1000, total)).toBe((1 << 20) - 1000 + 2);
});

test("a header's block count costs no memory: empty and full bitmaps of 2^50 blocks", () => {
  const huge = 2 ** 50;
  const empty = UsedBitmap.empty(huge);
  expect(empty.count()).toBe(0);
  expect([...empty.runs()]).toEqual([]);
  empty.set(3);
  expect(empty.count()).toBe(1);
  const full = UsedBitmap.full(huge);
  expect(full.count()).toBe(huge);
  expect(full.isUsed(huge - 1)).toBe(true);
  expect(full.isUsed(huge)).toBe(false);
  expect([...full.runs()]).toEqual([{ firstBlock: 0, blockCount: huge }]);
  const far = UsedBitmap.empty(huge);
  far.setRange(huge - 10, 5);
  expect(far.isUsed(huge - 6)).toBe(true);
  expect(far.isUsed(huge - 5)).toBe(false);
  expect([...far.runs()]).toEqual([{ firstBlock: huge - 10, blockCount: 5 }]);
});
