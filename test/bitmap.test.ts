import { expect, test } from "bun:test";
import { UsedBitmap, UsedRunList } from "../src/formats/bitmap.ts";
import { Rng } from "./fuzz/mutants.ts";

/** The used blocks of `bm` one by one, as the reference for the faster ways of counting. */
function slowly(bm: { isUsed(b: number): boolean }, first: number, end: number): number {
  let n = 0;
  for (let b = first; b < end; b++) if (bm.isUsed(b)) n++;
  return n;
}

test("count, countIn and runs agree with isUsed; a bitmap grown block by block equals the stored one", () => {
  const rng = new Rng(7);
  for (let t = 0; t < 300; t++) {
    const total = 1 + rng.int(5000);
    const bits = Uint8Array.from({ length: Math.ceil(total / 8) }, () => rng.pick([0, 0xff, rng.int(256)]));
    const bm = new UsedBitmap(bits, total);
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
    const runs = new UsedRunList(total);
    for (let i = 0; i < total; i++) {
      if (bm.isUsed(i)) {
        grown.set(i);
        runs.set(i);
      }
    }
    expect([...grown.runs()]).toEqual([...bm.runs()]);
    expect([...runs.runs()]).toEqual([...bm.runs()]);
    expect(runs.count()).toBe(bm.count());
    for (let k = 0; k < 50; k++) {
      const x = rng.int(total + 20) - 10;
      expect(runs.isUsed(x)).toBe(bm.isUsed(x));
    }
  }
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
  const runs = new UsedRunList(huge);
  runs.setRange(huge - 10, 5);
  expect(runs.isUsed(huge - 6)).toBe(true);
  expect(runs.isUsed(huge - 5)).toBe(false);
  expect(() => runs.set(5)).toThrow("out of order");
});
