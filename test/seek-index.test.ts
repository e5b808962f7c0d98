import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { openImage } from "../src/formats/detect.ts";
import { openRaw, openStream } from "../src/source/open.ts";
import { FileSource } from "../src/source/pieces.ts";
import type { RandomAccessSource } from "../src/source/chunk-source.ts";
import { currentKey, indexPaths, type LoadedIndex, readIndex, type StoredPoint, useCacheDirectory, writeIndex } from "../src/source/seek-index/index-file.ts";
import { SeekableSource } from "../src/source/seek-index/seekable.ts";
import { CorruptIndex, hex64 } from "../src/source/seek-index/stored-window.ts";
import { buildSeekIndex, findSeekIndex, openSeekable } from "../src/source/seek-index/open-index.ts";
import { SpanVerifier, zstdWorkerUrl } from "../src/source/seek-index/zstd-verify.ts";
import { ReadAheadInput } from "../src/source/seek-index/read-ahead.ts";
import { ChainedHash, HASH_CHUNK, StretchChecker, StretchHasher } from "../src/source/seek-index/stretch-hashes.ts";
import { dlopen, ptr } from "bun:ffi";
import { unpackExtra, zstdCodec } from "../src/source/seek-index/zstd.ts";
import { CLI, errorOf, fixture, type OtherUserRuntime, otherUserRuntime, restoredBytes, restoreToBuffer, runCli, seededRandom, sha256, tempDir, which } from "./helpers.ts";

const ZSTD = which("zstd");
const SPACING = 256 << 10;

/** the ntfs partclone fixture, its three split pieces joined: 2.4 MB of image */
function ntfsImage(): Uint8Array {
  return Buffer.concat(["aa", "ab", "ac"].map((s) => fs.readFileSync(fixture(`ntfs.ntfs-ptcl-img.${s}`))));
}

function zstd(data: Uint8Array, ...args: string[]): Uint8Array {
  const r = spawnSync("zstd", ["-q", "-c", ...args], { input: data, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`zstd ${args.join(" ")}: ${r.stderr}`);
  return new Uint8Array(r.stdout);
}

/** `n` incompressible bytes, the same for the same seed */
function seededBytes(n: number, seed: number): Uint8Array {
  const random = seededRandom(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(random() * 256);
  return out;
}

function write(dir: string, name: string, data: Uint8Array): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, data);
  return file;
}

/** random ranges, plus ranges straddling each of `edges` (points, pieces, spans) */
function ranges(size: number, edges: number[], count: number, seed: number): [number, number][] {
  const random = seededRandom(seed);
  const out: [number, number][] = [[0, 1], [size - 1, 1], [0, size]];
  for (const e of edges) if (e > 0 && e < size) out.push([Math.max(0, e - 700), Math.min(1400, size - Math.max(0, e - 700))]);
  while (out.length < count + edges.length + 3) {
    const offset = Math.floor(random() * size);
    out.push([offset, Math.min(size - offset, 1 + Math.floor(random() * 400_000))]);
  }
  return out;
}

function expectReadsEqual(source: RandomAccessSource, truth: Uint8Array, edges: number[], seed: number): void {
  expect(source.size).toBe(truth.length);
  // backwards, forwards and jumping: every order a client may use
  for (const [offset, length] of ranges(truth.length, edges, 60, seed)) {
    const got = new Uint8Array(length);
    expect(source.readAt(got, offset)).toBe(length);
    if (sha256(got) !== sha256(truth.subarray(offset, offset + length))) throw new Error(`bytes differ in [${offset}, ${offset + length})`);
  }
}

let savedCache: string | undefined;
beforeAll(() => {
  savedCache = process.env.XDG_CACHE_HOME;
  process.env.XDG_CACHE_HOME = tempDir();
  useCacheDirectory(process.env.XDG_CACHE_HOME);
});
afterAll(() => {
  if (savedCache === undefined) delete process.env.XDG_CACHE_HOME;
  else process.env.XDG_CACHE_HOME = savedCache;
  if (savedCache !== undefined) useCacheDirectory(savedCache);
});

/** The windows of `points` come back with bytes changed, as a wrong window would. */
function spoilWindows(index: LoadedIndex, points: Set<StoredPoint>): void {
  const window = index.window;
  index.window = (p, into) => {
    const w = window(p, into).slice();
    if (points.has(p)) for (let i = 0; i < w.length; i += 61) w[i]! ^= 0x5a;
    return w;
  };
}

function openIndexed(file: string, spacing = SPACING) {
  const { raw, pieces } = openRaw(file);
  const source = openSeekable(raw as RandomAccessSource, pieces, "zstd", { mode: "build", spacing });
  if (!source) throw new Error("no seekable source");
  return source;
}

describe("stretch hashes", () => {
  // the reference: XXH3-64 from the system library, of each chunk at its fixed offsets, folded in turn
  const xxh = dlopen("libxxhash.so.0", { XXH3_64bits: { args: ["ptr", "u64"], returns: "u64" } });
  const xxh3 = (bytes: Uint8Array) => BigInt.asUintN(64, BigInt(xxh.symbols.XXH3_64bits(bytes.length > 0 ? ptr(bytes) : null, bytes.length)));
  const reference = (bytes: Uint8Array, at: number) => {
    let value = 0n;
    for (let o = 0; o < bytes.length; ) {
      const n = Math.min(HASH_CHUNK - ((at + o) % HASH_CHUNK), bytes.length - o);
      const pair = Buffer.alloc(16);
      pair.writeBigUInt64LE(value, 0);
      pair.writeBigUInt64LE(xxh3(bytes.subarray(o, o + n)), 8);
      value = xxh3(pair);
      o += n;
    }
    return value;
  };
  const valueOf = (hash: ChainedHash) => {
    const out = new Uint8Array(8);
    hash.digestInto(out);
    return new DataView(out.buffer).getBigUint64(0, true);
  };

  test("a stretch's value folds the XXH3-64 of each 64 KiB chunk it covers, however its bytes come in pieces", () => {
    const random = seededRandom(11);
    const bytes = seededBytes(700_000, 5);
    for (const at of [0, 1, HASH_CHUNK - 3, 5 * HASH_CHUNK, 123_457]) {
      for (const length of [0, 1, 240, 241, HASH_CHUNK - (at % HASH_CHUNK), HASH_CHUNK + 1, bytes.length]) {
        const part = bytes.subarray(0, length);
        const whole = new ChainedHash();
        whole.reset(at);
        whole.update(part);
        const expected = reference(part, at);
        expect(valueOf(whole)).toBe(expected);
        // the same bytes in random pieces, some straddling chunk ends
        const pieces = new ChainedHash();
        pieces.reset(at);
        for (let o = 0; o < length; ) {
          const n = Math.min(length - o, 1 + Math.floor(random() * 3 * HASH_CHUNK));
          pieces.update(part.subarray(o, o + n));
          o += n;
        }
        expect(valueOf(pieces)).toBe(expected);
      }
    }
    // one byte changed anywhere changes the value
    const changed = Buffer.from(bytes);
    changed[HASH_CHUNK + 17]! ^= 1;
    expect(reference(changed, 0)).not.toBe(reference(bytes, 0));
  });

  test("what the pass records, a reader checks: the same bytes match, a changed byte fails its stretch only", () => {
    const bytes = seededBytes(3 << 20, 9);
    const hasher = new StretchHasher();
    const cuts = [100_000, 1_500_001];
    let at = 0;
    for (const n of [70_000, 30_000, 1_400_001, 1 << 20, bytes.length]) {
      const end = Math.min(bytes.length, at + n);
      hasher.feed(bytes.subarray(at, end));
      at = end;
      if (cuts.includes(at)) hasher.cut();
      if (at === bytes.length) break;
    }
    const stretches = hasher.finish();
    expect(Array.from(stretches.ends)).toEqual([100_000, 1 << 20, 1_500_001, 2 << 20, 3 << 20]);
    const checkAll = (data: Uint8Array) => {
      const checker = new StretchChecker(stretches);
      checker.startAt(0);
      const verdicts: (boolean | undefined)[] = [];
      for (let o = 0; o < data.length; ) {
        const n = checker.leftInStretch;
        verdicts.push(checker.update(data.subarray(o, o + n)));
        o += n;
      }
      return verdicts;
    };
    expect(checkAll(bytes)).toEqual([true, true, true, true, true]);
    const changed = Buffer.from(bytes);
    changed[1_200_000]! ^= 0x40;
    expect(checkAll(changed)).toEqual([true, true, false, true, true]);
  });
});

describe.skipIf(!ZSTD)("zstd seek index", () => {
  if (!ZSTD) console.log("skipped: zstd is not installed (apt-get install zstd)");

  test("one frame as Clonezilla writes it (zstd -T2 -3): random reads equal the decoded stream", () => {
    const truth = ntfsImage();
    const file = write(tempDir(), "ntfs.zst", zstd(truth, "-T2", "-3"));
    const source = openIndexed(file);
    try {
      const points = source.index.points;
      expect(points.length).toBeGreaterThan(3);
      expect(points.some((p) => p.extra.length > 0)).toBe(true);
      expectReadsEqual(source, truth, points.map((p) => p.decoded), 1);
    } finally {
      source.close();
    }
  });

  test("decoded spans are kept least recently used first out: a span read again stays, the one left longest goes", () => {
    const MiB = 1 << 20;
    const random = seededRandom(7);
    const truth = new Uint8Array(9 * MiB);
    for (let i = 0; i < truth.length; i += 64) truth.fill(Math.floor(random() * 256), i, i + 64);
    const source = openIndexed(write(tempDir(), "spans.zst", zstd(truth, "-3")));
    try {
      const readSpan = (n: number) => {
        const into = new Uint8Array(4096);
        source.readAt(into, n * MiB + 100);
        expect(Buffer.from(into).equals(Buffer.from(truth.subarray(n * MiB + 100, n * MiB + 4196)))).toBe(true);
      };
      for (const n of [0, 1, 2, 3, 4, 5]) readSpan(n);
      expect(source.stats.spansDecoded).toBe(6);
      readSpan(0); // a hit: span 0 is now the most recently used
      readSpan(6); // six are kept: span 1, used longest ago, goes
      readSpan(0);
      expect(source.stats.cacheHits).toBe(2);
      expect(source.stats.spansDecoded).toBe(7);
      readSpan(1);
      expect(source.stats.spansDecoded).toBe(8);
    } finally {
      source.close();
    }
  });

  test("several frames with a skippable frame between: points at frame starts, reads equal", () => {
    const truth = ntfsImage();
    const cuts = [0, 700_000, 1_500_000, truth.length];
    const skippable = Uint8Array.of(0x5a, 0x2a, 0x4d, 0x18, 5, 0, 0, 0, 1, 2, 3, 4, 5);
    const parts: Uint8Array[] = [];
    for (let i = 0; i < 3; i++) {
      parts.push(zstd(truth.subarray(cuts[i]!, cuts[i + 1]!), "-3", "--no-check"));
      if (i === 0) parts.push(skippable);
    }
    const file = write(tempDir(), "multi.zst", Buffer.concat(parts));
    const source = openIndexed(file);
    try {
      const frameStarts = source.index.points.filter((p) => p.extra.length === 0).map((p) => p.decoded);
      expect(frameStarts).toEqual([0, 700_000, 1_500_000]);
      expectReadsEqual(source, truth, [...cuts, ...source.index.points.map((p) => p.decoded)], 2);
    } finally {
      source.close();
    }
  });

  test("zstd's seekable format (made by zstd's contrib seekable_compression, 256 KiB frames): the points come from its seek table, nothing decoded; reads equal restore", () => {
    const name = "ntfs-rich.ntfs-ptcl-img.seekable.zst";
    const file = write(tempDir(), name, fs.readFileSync(fixture(name)));
    const truth = new Uint8Array(fs.readFileSync(fixture("ntfs-rich.ntfs-ptcl-img")));
    const { raw, pieces } = openRaw(file);
    const built = buildSeekIndex(raw as RandomAccessSource, pieces, zstdCodec, { spacing: SPACING });
    expect(built.fromSeekTable).toBe(true);
    expect(built.decodedSize).toBe(truth.length);
    const source = openIndexed(file);
    try {
      // every frame start 1 MiB or more from the last kept one: 0, 4 × 256 KiB, ...
      expect(source.index.points.map((p) => [p.decoded, p.extra.length])).toEqual([0, 1, 2, 3].map((i) => [i * (1 << 20), 0]));
      expectReadsEqual(source, truth, source.index.points.map((p) => p.decoded), 3);
    } finally {
      source.close();
    }
    const image = openImage(file, { seekIndex: { mode: "use-if-present" } });
    try {
      const restored = restoredBytes(fixture("ntfs-rich.ntfs-ptcl-img"));
      for (const [offset, length] of ranges(restored.length, [], 20, 4)) expect(sha256(image.read!(offset, length))).toBe(sha256(restored.subarray(offset, offset + length)));
    } finally {
      image.close();
    }
  });

  test("a seek table that does not describe its file (frame sizes that do not add up, a frame start that is no frame) is not used: the file is indexed by decoding it", () => {
    const name = "ntfs-rich.ntfs-ptcl-img.seekable.zst";
    const bytes = new Uint8Array(fs.readFileSync(fixture(name)));
    const truth = new Uint8Array(fs.readFileSync(fixture("ntfs-rich.ntfs-ptcl-img")));
    const view = new DataView(bytes.buffer);
    const count = view.getUint32(bytes.length - 9, true);
    // entries of 12 bytes where the descriptor's checksum flag is set (seekable_compression sets it)
    const entryBytes = bytes[bytes.length - 5]! & 0x80 ? 12 : 8;
    const firstEntry = bytes.length - 9 - count * entryBytes;
    for (const [what, mutate] of [
      ["a compressed size one byte longer", (v: DataView) => v.setUint32(firstEntry, v.getUint32(firstEntry, true) + 1, true)],
      ["the first two compressed sizes moved by a byte", (v: DataView) => {
        v.setUint32(firstEntry, v.getUint32(firstEntry, true) + 1, true);
        v.setUint32(firstEntry + entryBytes, v.getUint32(firstEntry + entryBytes, true) - 1, true);
      }],
    ] as const) {
      const copy = bytes.slice();
      mutate(new DataView(copy.buffer));
      const file = write(tempDir(), name, copy);
      const { raw, pieces } = openRaw(file);
      const built = buildSeekIndex(raw as RandomAccessSource, pieces, zstdCodec, { spacing: SPACING });
      expect([what, built.fromSeekTable]).toEqual([what, false]);
      expect(built.decodedSize).toBe(truth.length);
      const source = openIndexed(file);
      try {
        expectReadsEqual(source, truth, source.index.points.map((p) => p.decoded), 5);
      } finally {
        source.close();
      }
    }
  });

  test("compressed then split (x.zst.aa, .ab, ...): reads across pieces, and the image's random reads equal restore", () => {
    const truth = ntfsImage();
    const dir = tempDir();
    const packed = zstd(truth, "-T2", "-3");
    const piece = 60_000;
    const names: string[] = [];
    for (let at = 0, i = 0; at < packed.length; at += piece, i++) names.push(write(dir, `ntfs.zst.a${String.fromCharCode(97 + i)}`, packed.subarray(at, at + piece)));
    expect(names.length).toBeGreaterThan(2);
    const stream = openStream(names[1]!, { seekIndex: { mode: "build", spacing: SPACING } });
    try {
      expect(stream.pieces).toEqual(names);
      expect(stream.randomAccess).toBeDefined();
      expectReadsEqual(stream.randomAccess!, truth, [], 3);
    } finally {
      stream.reader.close();
    }
    const plain = openImage(fixture("ntfs.ntfs-ptcl-img.aa"));
    const volume = restoreToBuffer(plain);
    plain.close();
    const image = openImage(names[0]!, { seekIndex: { mode: "use-if-present" } });
    try {
      expect(image.read).toBeDefined();
      for (const [offset, length] of ranges(volume.length, [], 40, 4)) {
        expect(sha256(image.read!(offset, length))).toBe(sha256(volume.subarray(offset, offset + length)));
      }
    } finally {
      image.close();
    }
  });

  // the second: single-threaded zstd with an 8 MiB window, every 64 KiB a candidate; the streaming
  // decoder readers resume with decodes a block past what it returns, so that block must decode too
  for (const [name, spacing] of [["clonezilla-mbr-zstd/loop0p1.ext4-ptcl-img.zst.aa", 1 << 20], ["ntfs.ntfs-ptcl-img.zst", 64 << 10]] as const) {
  test(`a point that decodes differently never returns bytes: caught by the stretch hashes and skipped: ${name}`, () => {
    const truth = fs.readFileSync(path.join(import.meta.dir, "..", "fixtures", name));
    const file = write(tempDir(), "p1.zst", truth);
    const decoded = new Uint8Array(spawnSync("zstd", ["-dc", file], { maxBuffer: 1 << 28 }).stdout as Buffer);
    const source = openIndexed(file, spacing);
    const resumed = source.index.points.filter((p) => !p.trusted);
    expect(resumed.length).toBeGreaterThan(2);
    // the points reads of whole spans resume from get a history with bytes changed (as a wrong
    // window would be): they decode to other bytes, or fail; and one a boundary that is not one
    const used = new Set<StoredPoint>();
    for (let g = 0; g < decoded.length; g += 1 << 20) used.add(source.index.points.findLast((p) => p.decoded <= g)!);
    const spoiled = [...used].filter((p) => !p.trusted && p.windowSize > 0);
    expect(spoiled.length).toBeGreaterThan(0);
    spoilWindows(source.index, new Set(spoiled));
    resumed[1]!.compressed += 1;
    const { raw } = openRaw(file);
    try {
      expectReadsEqual(source, decoded, source.index.points.map((p) => p.decoded), 9);
      // each span by a reader of its own, so that it resumes at the point before it
      for (let g = decoded.length - 1 - ((decoded.length - 1) % (1 << 20)); g >= 0; g -= 1 << 20) {
        const reader = new SeekableSource(raw as RandomAccessSource, zstdCodec, { ...source.index, close() {} });
        const got = new Uint8Array(Math.min(1 << 20, decoded.length - g));
        expect(reader.readAt(got, g)).toBe(got.length);
        expect(Buffer.from(got).equals(Buffer.from(decoded.subarray(g, g + got.length)))).toBe(true);
      }
      expect(spoiled.some((p) => p.wrongFrom !== undefined)).toBe(true);
    } finally {
      raw.close();
      source.close();
    }
  });
  }

  test("a point found to decode differently is marked wrong from there, in the index file too: later readers skip it", () => {
    const name = "clonezilla-mbr-zstd/loop0p1.ext4-ptcl-img.zst.aa";
    const file = write(tempDir(), "p1.zst", fs.readFileSync(path.join(import.meta.dir, "..", "fixtures", name)));
    const decoded = new Uint8Array(spawnSync("zstd", ["-dc", file], { maxBuffer: 1 << 28 }).stdout as Buffer);
    const first = openIndexed(file, 1 << 20);
    const points = first.index.points;
    // points that a read at the first span start after them resumes from
    const owning = points.filter((p, i) => {
      const g = Math.ceil(p.decoded / (1 << 20)) * (1 << 20);
      return !p.trusted && p.windowSize > 0 && g < (points[i + 1]?.decoded ?? 0);
    });
    expect(owning.length).toBeGreaterThanOrEqual(2);
    const spoiled = owning.filter((_, i) => i % 2 === 0);
    spoilWindows(first.index, new Set(spoiled));
    const { raw } = openRaw(file);
    try {
      for (const p of owning) {
        const reader = new SeekableSource(raw as RandomAccessSource, zstdCodec, { ...first.index, close() {} });
        const g = Math.ceil(p.decoded / (1 << 20)) * (1 << 20);
        const into = new Uint8Array(100);
        expect(reader.readAt(into, g)).toBe(100);
        expect(Buffer.from(into).equals(Buffer.from(decoded.subarray(g, g + 100)))).toBe(true);
        expect(p.wrongFrom !== undefined).toBe(spoiled.includes(p));
      }
    } finally {
      raw.close();
      first.close();
    }
    const again = openIndexed(file, 1 << 20);
    try {
      const marked = again.index.points.filter((p) => p.wrongFrom !== undefined).map((p) => [p.decoded, p.wrongFrom]);
      expect(marked).toEqual(spoiled.map((p) => [p.decoded, p.wrongFrom]));
      expectReadsEqual(again, decoded, again.index.points.map((p) => p.decoded), 10);
    } finally {
      again.close();
    }
  });

  /** `raw` counting the compressed bytes read through it */
  function counting(raw: RandomAccessSource): { raw: RandomAccessSource; read: () => number } {
    let n = 0;
    const counted = Object.create(raw) as RandomAccessSource;
    counted.readAt = (into, offset) => {
      const got = raw.readAt(into, offset);
      n += got;
      return got;
    };
    return { raw: counted, read: () => n };
  }

  test("a cold read far past its point skims there: raw blocks before its span are passed by their headers, not read; the bytes equal the stream", () => {
    const MiB = 1 << 20;
    // incompressible (stored as raw blocks) with a compressible stretch every 3 MiB (compressed blocks between)
    const truth = randomBytes(24 * MiB);
    for (let at = MiB; at < truth.length; at += 3 * MiB) truth.fill(at & 0xff, at, at + 65536);
    const file = write(tempDir(), "skim.zst", zstd(truth, "-T2", "-3"));
    const indexed = openIndexed(file, 12 * MiB);
    const { raw } = openRaw(file);
    try {
      const point = indexed.index.points.find((p) => p.extra.length > 0)!;
      expect(point.decoded).toBeGreaterThanOrEqual(12 * MiB);
      for (const [from, offset] of [[0, 9 * MiB + 5], [point.decoded, point.decoded + 10 * MiB + 77]] as const) {
        const c = counting(raw as RandomAccessSource);
        const reader = new SeekableSource(c.raw, zstdCodec, { ...indexed.index, close() {} });
        const got = new Uint8Array(4096);
        expect(reader.readAt(got, offset)).toBe(got.length);
        expect(Buffer.from(got).equals(Buffer.from(truth.subarray(offset, offset + got.length)))).toBe(true);
        expect(reader.stats.skimMisses).toBe(0);
        // its span (1 MiB) and the compressible stretches' blocks; decoding from the point would read `offset - from` more
        expect(c.read()).toBeLessThan(2 * MiB);
        expect(offset - from).toBeGreaterThan(8 * MiB);
      }
      // a decoder left behind by an earlier read skims likewise on its way to a far one
      const c = counting(raw as RandomAccessSource);
      const reader = new SeekableSource(c.raw, zstdCodec, { ...indexed.index, close() {} });
      const got = new Uint8Array(4096);
      reader.readAt(got, 100);
      const before = c.read();
      expect(reader.readAt(got, 10 * MiB)).toBe(got.length);
      expect(Buffer.from(got).equals(Buffer.from(truth.subarray(10 * MiB, 10 * MiB + got.length)))).toBe(true);
      expect(reader.stats.resumes).toBe(1);
      expect(c.read() - before).toBeLessThan(2 * MiB);
      expectReadsEqual(indexed, truth, indexed.index.points.map((p) => p.decoded), 11);
    } finally {
      raw.close();
      indexed.close();
    }
  });

  test("a skimmed span whose blocks reach back into a skimmed raw block is decoded again, the window before it read: right bytes, and the point is not blamed", () => {
    const MiB = 1 << 20;
    const truth = randomBytes(16 * MiB);
    // incompressible where it first appears (a raw block), then copied into the span at 10 MiB (a match into it)
    truth.copy(truth, 10 * MiB + 100_000, 9 * MiB + 200_000, 9 * MiB + 700_000);
    const file = write(tempDir(), "skim-miss.zst", zstd(truth, "-3"));
    const indexed = openIndexed(file, 6 * MiB);
    const { raw } = openRaw(file);
    try {
      const point = indexed.index.points.findLast((p) => p.decoded <= 10 * MiB)!;
      expect(point.decoded).toBeLessThanOrEqual(9 * MiB);
      const reader = new SeekableSource(raw as RandomAccessSource, zstdCodec, { ...indexed.index, close() {} });
      const got = new Uint8Array(600_000);
      expect(reader.readAt(got, 10 * MiB)).toBe(got.length);
      expect(Buffer.from(got).equals(Buffer.from(truth.subarray(10 * MiB, 10 * MiB + got.length)))).toBe(true);
      expect(reader.stats.skimMisses).toBe(1);
      expect(reader.stats.wrongPoints).toBe(0);
      expect(point.wrongFrom).toBeUndefined();
    } finally {
      raw.close();
      indexed.close();
    }
  });

  test("the probes are answered the same whether a worker makes them or, when it cannot start, the build's own thread", () => {
    // text with repeats (points need windows) and incompressible stretches (points need none)
    const truth = Buffer.concat(Array.from({ length: 4 }, (_, i) => (i % 2 === 1 ? Buffer.from(ntfsImage()) : Buffer.from(seededBytes(8 << 20, i)))));
    const file = write(tempDir(), "probes.zst", zstd(truth, "-T2", "-3"));
    const { raw, pieces } = openRaw(file);
    try {
      const here = zstdCodec.build(raw as RandomAccessSource, { spacing: 1 << 20 });
      const inWorker = zstdCodec.build(raw as RandomAccessSource, { spacing: 1 << 20, pieces });
      // the worker reads through the source's descriptor: one no file is open on makes it fail, and its jobs come back here
      const unreadable = Object.create(raw) as FileSource;
      Object.defineProperty(unreadable, "descriptor", { get: () => ({ name: file, fd: 1 << 20, size: raw.size }) });
      const failed = zstdCodec.build(unreadable, { spacing: 1 << 20, pieces });
      const shape = (i: typeof here) => new Map(i.points.map((p) => [p.decoded, [p.compressed, p.packedWindowSize ?? 0, p.trusted === true]]));
      expect(here.points.filter((p) => (p.packedWindowSize ?? 0) > 0).length).toBeGreaterThan(0);
      expect(here.points.filter((p) => !p.trusted && (p.packedWindowSize ?? 0) === 0).length).toBeGreaterThan(2);
      // answers come back later from a worker, so more candidates may pass the window budget first:
      // every point both builds have is the same point with the same window
      for (const other of [shape(inWorker), shape(failed)]) {
        for (const [decoded, point] of shape(here)) expect(other.get(decoded)).toEqual(point);
      }
      expect(Buffer.from(failed.stretches!.hashes).equals(Buffer.from(here.stretches!.hashes))).toBe(true);
    } finally {
      raw.close();
    }
    const source = openIndexed(file, 1 << 20);
    try {
      expectReadsEqual(source, truth, source.index.points.map((p) => p.decoded), 7);
    } finally {
      source.close();
    }
  }, 60_000);

  test("the compressed input read ahead by a worker is the file's bytes wherever the pass asks, and so is the pass's own reading when the worker cannot read", async () => {
    const bytes = seededBytes(11 << 20, 3);
    const file = write(tempDir(), "input.bin", bytes);
    const { raw } = openRaw(file);
    try {
      // the second time through a descriptor no file is open on: every read of the worker fails
      for (const fd of [undefined, 1 << 20]) {
        const pieces = fd === undefined ? undefined : [{ name: file, fd, size: bytes.length }];
        const input = ReadAheadInput.start(zstdWorkerUrl(), raw as RandomAccessSource, 1 << 20, pieces)!;
        expect(input).toBeDefined();
        const random = seededRandom(4);
        try {
          // the worker has started (or has not, with the piece missing: 50 tries)
          for (let t = 0; t < (fd === undefined ? 500 : 50) && input.slotReads === 0; t++) {
            await Bun.sleep(10);
            input.need(0, 1);
          }
          for (let at = 0, k = 0; at < bytes.length; k++) {
            // let the worker get ahead now and then
            if (k % 40 === 0) await Bun.sleep(5);
            const n = Math.min(1 + Math.floor(random() * 131_075), bytes.length - at);
            const i = input.need(at, n);
            expect(input.available(at)).toBeGreaterThanOrEqual(n);
            if (!Buffer.from(input.buf.subarray(i, i + n)).equals(bytes.subarray(at, at + n))) throw new Error(`bytes differ at ${at} (fd ${fd})`);
            at += n + (k % 7 === 0 ? 3 : 0);
          }
          // at the end: fewer bytes than asked for
          const i = input.need(bytes.length - 10, 100);
          expect(input.available(bytes.length - 10)).toBe(10);
          expect(Buffer.from(input.buf.subarray(i, i + 10)).equals(bytes.subarray(bytes.length - 10))).toBe(true);
          if (fd === undefined) expect(input.slotReads).toBeGreaterThan(10);
          else expect(input.slotReads).toBe(0);
        } finally {
          input.close();
        }
      }
    } finally {
      raw.close();
    }
    // a stream large enough to be read ahead: the same index as read by the pass alone
    const big = write(tempDir(), "big.zst", zstd(Buffer.concat([seededBytes(30 << 20, 8), ntfsImage(), seededBytes(6 << 20, 9)]), "-T2", "-1"));
    const opened = openRaw(big);
    try {
      expect((opened.raw as RandomAccessSource).size).toBeGreaterThan(32 << 20);
      const ahead = zstdCodec.build(opened.raw as RandomAccessSource, { spacing: 4 << 20, pieces: opened.pieces });
      const alone = zstdCodec.build(opened.raw as RandomAccessSource, { spacing: 4 << 20 });
      expect(Array.from(ahead.stretches!.ends)).toEqual(Array.from(alone.stretches!.ends));
      expect(Buffer.from(ahead.stretches!.hashes).equals(Buffer.from(alone.stretches!.hashes))).toBe(true);
      expect(ahead.decodedSize).toBe(alone.decodedSize);
    } finally {
      opened.raw.close();
    }
  }, 60_000);

  test("a trusted point (a frame start) that decodes other bytes than the build recorded is damage: one line, exit 3", () => {
    const truth = ntfsImage();
    const file = write(tempDir(), "frames.zst", Buffer.concat([zstd(truth.subarray(0, 1 << 20), "-3"), zstd(truth.subarray(1 << 20), "-3")]));
    const source = openIndexed(file, 1 << 30);
    expect(source.index.points.every((p) => p.trusted)).toBe(true);
    // a stretch hash that does not match what decoding gives, as after a change the index key misses
    source.index.stretches!.hashes[8 * 1]! ^= 1;
    try {
      const into = new Uint8Array(16);
      expect(() => source.readAt(into, (1 << 20) + 5)).toThrow(/damaged zstd data.*differ from those the seek index recorded/);
      expect(source.readAt(into, 5)).toBe(16);
    } finally {
      source.close();
    }
  });

  test("verification drops points that decode wrongly: a wrong window, a wrong offset, a stream whose boundaries use the block before's state", () => {
    const truth = fs.readFileSync(path.join(import.meta.dir, "..", "fixtures", "clonezilla-mbr-zstd", "loop0p1.ext4-ptcl-img.zst.aa"));
    const decoded = new Uint8Array(spawnSync("zstd", ["-dc"], { input: truth, maxBuffer: 1 << 28 }).stdout as Buffer);
    const file = write(tempDir(), "p1.zst", truth);
    const source = openIndexed(file, 1 << 20);
    const { raw } = openRaw(file);
    try {
      const p = source.index.points.find((q) => q.extra.length > 0 && q.windowSize > 0)!;
      expect(p).toBeDefined();
      const window = source.index.window(p);
      const end = source.index.points[source.index.points.indexOf(p) + 1]?.decoded ?? decoded.length;
      const hash = new ChainedHash();
      hash.reset(p.decoded);
      hash.update(decoded.subarray(p.decoded, end));
      const spanHash = new Uint8Array(8);
      hash.digestInto(spanHash);
      const full = decoded.slice(Math.max(0, p.decoded - (2 << 20)), p.decoded);
      const job = { decoded: p.decoded, compressed: p.compressed, header: p.extra.slice(1, 1 + p.extra[0]!), window: full, spanEnd: end, spanHash };
      const verifier = new SpanVerifier(raw as RandomAccessSource);
      // the true history: accepted, with the window the index kept
      expect(verifier.run(job).windowLength).toBe(window.length);
      // the history with bytes changed where the kept window lies: it decodes, to other bytes
      const wrong = full.slice();
      for (let i = wrong.length - window.length; i < wrong.length; i += 97) wrong[i]! ^= 0x55;
      expect(verifier.run({ ...job, window: wrong }).windowLength).toBe(-1);
      // a boundary one byte off
      expect(verifier.run({ ...job, compressed: p.compressed + 1 }).windowLength).toBe(-1);
      verifier.close();
    } finally {
      raw.close();
      source.close();
    }
    // single-threaded zstd carries repeat offsets and entropy tables across blocks: candidates fail
    const single = write(tempDir(), "single.zst", zstd(decoded, "-3", "--single-thread"));
    const { raw: raw2, pieces } = openRaw(single);
    const built = buildSeekIndex(raw2 as RandomAccessSource, pieces, zstdCodec, { spacing: 256 << 10 });
    raw2.close();
    expect(built.rejected).toBeGreaterThan(0);
    const again = openIndexed(single, 256 << 10);
    try {
      expectReadsEqual(again, decoded, again.index.points.map((q) => q.decoded), 5);
    } finally {
      again.close();
    }
  });

  test("a zstd point whose stored state does not fit it or the image is refused at the point's offset", () => {
    const file = write(tempDir(), "small.zst", zstd(new Uint8Array(4096), "-3"));
    const { raw } = openRaw(file);
    const extra = (blocksEnd: number, frameEnd: number) => {
      const e = new Uint8Array(1 + 6 + 16);
      e[0] = 6;
      const v = new DataView(e.buffer);
      v.setBigUint64(7, BigInt(blocksEnd), true);
      v.setBigUint64(15, BigInt(frameEnd), true);
      return e;
    };
    const at = (compressed: number, e: Uint8Array) => errorOf(() => unpackExtra({ compressed, extra: e }, raw as RandomAccessSource)).message;
    expect(at(9, extra(8, 10))).toBe(`${file}: offset 9: corrupt seek index (the zstd point here lies past its frame's end)`);
    expect(at(5, extra(8, 1 << 30))).toBe(`${file}: offset 5: corrupt seek index (the state of the zstd point here does not parse)`);
    expect(at(5, new Uint8Array(3))).toContain("offset 5: corrupt seek index");
    raw.close();
  });

  test("a frame with a window too large to index is refused in one line", () => {
    const r1 = spawnSync("zstd", ["-q", "--long=27", "-c"], { input: ntfsImage().subarray(0, 300_000), maxBuffer: 1 << 26 });
    const file = write(tempDir(), "long.zst", new Uint8Array(r1.stdout));
    const r = runCli(["index", file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`imgtool: ${file}: the zstd frame at offset 0 has a 134,217,728-byte window; imgtool indexes windows up to 64 MiB; use imgtool restore\n`);
  });

  test("a changed image makes its index stale: detected and built again", () => {
    const truth = ntfsImage();
    const dir = tempDir();
    const file = write(dir, "ntfs.zst", zstd(truth, "-T2", "-3"));
    openIndexed(file).close();
    const indexFile = `${file}.imgtool-index`;
    expect(fs.existsSync(indexFile)).toBe(true);
    const { raw, pieces } = openRaw(file);
    expect(findSeekIndex(raw as RandomAccessSource, pieces, "zstd")).toBeDefined();
    raw.close();
    // other content, same size and mtime: the hash of the last MiB tells
    const changed = zstd(truth.map((b, i) => (i > truth.length - 5000 ? b ^ 1 : b)), "-T2", "-3");
    const stat = fs.statSync(file);
    const sameSize = Buffer.alloc(stat.size);
    Buffer.from(changed).copy(sameSize);
    fs.writeFileSync(file, sameSize);
    fs.utimesSync(file, stat.atime, stat.mtime);
    const reopened = openRaw(file);
    expect(findSeekIndex(reopened.raw as RandomAccessSource, reopened.pieces, "zstd")).toBeUndefined();
    reopened.raw.close();
    // a new image in its place: built again, and read right
    const newer = truth.map((b, i) => (i < 1000 ? 0 : b));
    fs.writeFileSync(file, zstd(newer, "-T2", "-3"));
    const before = fs.readFileSync(indexFile);
    const source = openIndexed(file);
    try {
      expect(Buffer.compare(before, fs.readFileSync(indexFile))).not.toBe(0);
      expectReadsEqual(source, newer, [], 6);
    } finally {
      source.close();
    }
  });

  test("the key hashes 64 KiB at each end; an index whose key hashed 1 MiB (made before) is compared over that, and used", () => {
    const truth = randomBytes(3 << 20);
    const file = write(tempDir(), "key.zst", zstd(truth, "-3"));
    const { raw, pieces } = openRaw(file);
    try {
      const r = raw as RandomAccessSource;
      const key = currentKey(r, pieces);
      expect(key.hashed).toBe(64 << 10);
      const ends = (n: number) => {
        const head = new Uint8Array(n);
        const tail = new Uint8Array(n);
        r.readAt(head, 0);
        r.readAt(tail, r.size - n);
        return { head: hex64(head), tail: hex64(tail) };
      };
      expect({ head: key.head, tail: key.tail }).toEqual(ends(64 << 10));
      const built = zstdCodec.build(r, { spacing: 1 << 20 });
      const target = `${file}.imgtool-index`;
      const { hashed: _, ...firstKey } = { ...key, ...ends(1 << 20) };
      writeIndex(target, "zstd", built, firstKey, r.size, 1 << 20);
      const found = readIndex(target, r, key, "zstd");
      expect(found?.points.length).toBe(built.points.length);
      found!.close();
      writeIndex(target, "zstd", built, { ...firstKey, tail: ends(64 << 10).tail }, r.size, 1 << 20);
      expect(readIndex(target, r, key, "zstd")).toBeUndefined();
    } finally {
      raw.close();
    }
  });

  test("a corrupt or truncated index is refused in one line, never trusted", () => {
    const dir = tempDir();
    const file = write(dir, "ntfs.zst", zstd(ntfsImage(), "-T2", "-3"));
    const r0 = runCli(["index", file, "--json", "--spacing", "1M"]);
    expect(r0.code).toBe(0);
    const built = JSON.parse(r0.stdout.toString());
    expect(built.path).toBe(`${file}.imgtool-index`);
    expect(built.bytes).toBe(fs.statSync(built.path).size);
    expect(built.checkpoints).toBeGreaterThan(1);
    expect(typeof built.seconds).toBe("number");
    const good = fs.readFileSync(built.path);
    const damages: [string, Buffer][] = [
      ["no imgtool index magic", Buffer.concat([Buffer.from("X"), good.subarray(1)])],
      ["does not end the file", good.subarray(0, good.length - 10)],
      ["checksum does not match", Buffer.from(good.map((b, i) => (i === good.length - 20 ? b ^ 4 : b)))],
      ["shorter than its header", good.subarray(0, 20)],
    ];
    for (const [what, bytes] of damages) {
      fs.writeFileSync(built.path, bytes);
      const r = runCli(["cat", file, "--length", "4096"]);
      expect(r.code).toBe(3);
      const lines = r.stderr.trimEnd().split("\n");
      expect(lines.length).toBe(1);
      expect(lines[0]).toContain(`imgtool: ${built.path}: corrupt seek index (`);
      expect(lines[0]).toContain(what);
      expect(r.stdout.length).toBe(0);
    }
    // a window's bytes damaged: the table is sound, the read through that window is refused
    fs.writeFileSync(built.path, good);
    const { raw, pieces } = openRaw(file);
    const index = readIndex(built.path, raw as RandomAccessSource, currentKey(raw as RandomAccessSource, pieces), "zstd")!;
    const withWindow = index.points.find((p) => p.windowStored > 0);
    index.close();
    raw.close();
    expect(withWindow).toBeDefined();
    const damaged = Buffer.from(good);
    damaged[withWindow!.windowOffset + 3]! ^= 0xff;
    fs.writeFileSync(built.path, damaged);
    const { raw: raw2, pieces: p2 } = openRaw(file);
    const source = openSeekable(raw2 as RandomAccessSource, p2, "zstd", { mode: "use-if-present" })!;
    expect(() => source.readAt(new Uint8Array(4096), withWindow!.decoded)).toThrow(`${built.path}: offset ${withWindow!.windowOffset.toLocaleString("en-US")}: corrupt seek index (a stored window's checksum does not match)`);
    source.close();
    const { raw: raw3, pieces: p3 } = openRaw(file);
    fs.writeFileSync(built.path, good.subarray(0, 100));
    expect(() => readIndex(built.path, raw3 as RandomAccessSource, currentKey(raw3 as RandomAccessSource, p3), "zstd")).toThrow(CorruptIndex);
    raw3.close();
  });

  test("an index of version 1 (no stretch hashes) or 2 (other stretch hashes) is built again, never read as version 3; a verdict whose seal does not match is ignored", () => {
    const file = write(tempDir(), "ntfs.zst", zstd(ntfsImage(), "-T2", "-3"));
    const source = openIndexed(file, 1 << 20);
    const indexFile = source.index.path;
    const wrongPoint = source.index.points.find((p) => !p.trusted)!;
    source.index.markWrong(wrongPoint, wrongPoint.decoded + 5);
    source.close();
    const { raw, pieces } = openRaw(file);
    const key = currentKey(raw as RandomAccessSource, pieces);
    const sealed = fs.readFileSync(indexFile);
    const kept = readIndex(indexFile, raw as RandomAccessSource, key, "zstd")!;
    expect(kept.points.find((p) => p.decoded === wrongPoint.decoded)!.wrongFrom).toBe(wrongPoint.decoded + 5);
    kept.close();
    // the verdict's value changed without its seal: no verdict
    const i = source.index.points.indexOf(wrongPoint);
    const verdictAt = Number(sealed.readBigUInt64LE(40)) + 24 * i;
    const forged = Buffer.from(sealed);
    forged[verdictAt]! ^= 1;
    fs.writeFileSync(indexFile, forged);
    const unsealed = readIndex(indexFile, raw as RandomAccessSource, key, "zstd")!;
    expect(unsealed.points.every((p) => p.wrongFrom === undefined)).toBe(true);
    unsealed.close();
    // versions 1 and 2: not read, built again by the next reader that builds
    for (const version of [1, 2]) {
      const old = Buffer.from(sealed);
      old.writeUInt32LE(version, 16);
      fs.writeFileSync(indexFile, old);
      expect(readIndex(indexFile, raw as RandomAccessSource, key, "zstd")).toBeUndefined();
      const again = openIndexed(file, 1 << 20);
      try {
        expect(fs.readFileSync(indexFile).readUInt32LE(16)).toBe(3);
        expectReadsEqual(again, ntfsImage(), [], 3);
      } finally {
        again.close();
      }
    }
    raw.close();
  });

  // nobody must reach the program, its working directory and the files: all under a directory made for it
  const runtime = process.getuid?.() === 0 && which("setpriv") !== undefined ? otherUserRuntime() : { reason: "needs root and setpriv" };
  if ("reason" in runtime) console.log(`skipped: running the CLI as nobody: ${runtime.reason}`);
  test.skipIf("reason" in runtime)("the index goes to the cache directory, keyed by the image's path, when beside the image is not writable", () => {
    const rt = runtime as OtherUserRuntime;
    const place = (mode: number) => {
      const d = fs.mkdtempSync(path.join(rt.root, "t-"));
      fs.chmodSync(d, mode);
      return d;
    };
    const dir = place(0o755);
    const cache = place(0o777);
    const file = write(dir, "ntfs.zst", zstd(ntfsImage(), "-T2", "-3"));
    fs.chmodSync(file, 0o644);
    fs.chmodSync(dir, 0o555);
    const as = (args: string[], cacheHome: string) =>
      spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", rt.bun, rt.cli, ...args], {
        cwd: rt.root,
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", XDG_CACHE_HOME: cacheHome, HOME: "/nonexistent", LC_ALL: "C.UTF-8" },
      });
    const r = as(["index", file, "--json"], cache);
    expect(r.stderr.toString()).toBe("");
    const built = JSON.parse(r.stdout.toString());
    expect(path.dirname(built.path)).toBe(path.join(cache, "imgtool"));
    expect(path.basename(built.path)).toBe(path.basename(indexPaths(file).cache));
    expect(fs.existsSync(`${file}.imgtool-index`)).toBe(false);
    // and is found there: cat uses it rather than building another
    // (the same file: readers write their verdicts into it, a new build would rename another over it)
    const before = fs.statSync(built.path).ino;
    const cat = as(["cat", file, "--length", "1M"], cache);
    expect(cat.status).toBe(0);
    expect(cat.stdout.length).toBe(1 << 20);
    expect(fs.statSync(built.path).ino).toBe(before);
    expect(fs.readdirSync(path.join(cache, "imgtool"))).toEqual([path.basename(built.path)]);
    // no cache it can write either: an index in memory for this run only
    fs.rmSync(built.path);
    const closed = place(0o755);
    const r2 = as(["cat", file, "--length", "1M"], closed);
    expect(r2.stderr.toString()).toBe("");
    expect(r2.stdout.length).toBe(1 << 20);
    expect(fs.readdirSync(closed)).toEqual([]);
    expect(sha256(r2.stdout)).toBe(sha256(cat.stdout));
    fs.chmodSync(dir, 0o755);
  });

  test("never through a symlink: a symlink where the index goes is replaced, not written through", () => {
    const dir = tempDir();
    const file = write(dir, "ntfs.zst", zstd(ntfsImage(), "-T2", "-3"));
    const victim = write(dir, "victim", Buffer.from("keep me"));
    fs.symlinkSync(victim, `${file}.imgtool-index`);
    const r = runCli(["index", file, "--json"], { env: { XDG_CACHE_HOME: tempDir() } });
    expect(r.code).toBe(0);
    expect(fs.readFileSync(victim, "utf8")).toBe("keep me");
    expect(fs.lstatSync(`${file}.imgtool-index`).isFile()).toBe(true);
  });
});

describe.skipIf(!ZSTD)("checksums on random reads", () => {
  /** the volume offset of the used block of rank `n` */
  function usedBlockOffset(image: ReturnType<typeof openImage>, n: number): number {
    let seen = 0;
    for (const { firstBlock, blockCount } of image.usedRuns()) {
      if (n < seen + blockCount) return (firstBlock + n - seen) * image.info.blockSize;
      seen += blockCount;
    }
    throw new Error("no such used block");
  }

  test("a read touching a damaged checksum strip fails with a checksum error; other strips read fine (plain and .zst)", () => {
    const truth = ntfsImage();
    const plain = openImage(fixture("ntfs.ntfs-ptcl-img.aa"));
    const info = plain.info;
    if (info.format !== "partclone") throw new Error(`a partclone image opened as ${info.format}`);
    const dataStart = info.dataStart;
    const perStrip = info.header.blocksPerChecksum;
    const bs = plain.info.blockSize;
    const inStrip0 = usedBlockOffset(plain, 3);
    const inStrip1 = usedBlockOffset(plain, perStrip + 5);
    plain.close();
    // one byte of the used block of rank perStrip + 5 (strip 1: one 4-byte CRC before it)
    const damaged = truth.slice();
    damaged[dataStart + (perStrip + 5) * bs + 4 + 100]! ^= 0x20;
    const dir = tempDir();
    const files = [write(dir, "damaged.ptcl-img", damaged), write(dir, "damaged.ptcl-img.zst", zstd(damaged, "-T2", "-3"))];
    for (const file of files) {
      const image = openImage(file, { seekIndex: { mode: "build", spacing: SPACING } });
      try {
        expect(image.read).toBeDefined();
        expect(image.read!(inStrip0, 4096).length).toBe(4096);
        expect(() => image.read!(inStrip1, 512)).toThrow("CRC32 checksum mismatch");
      } finally {
        image.close();
      }
      const r = runCli(["cat", file, "--offset", String(inStrip1), "--length", "4096"]);
      expect(r.code).toBe(4);
      expect(r.stderr.trimEnd().split("\n").length).toBe(1);
      expect(r.stderr).toContain("CRC32 checksum mismatch");
    }
  });

  test("a read of a strip the image (cut short while open) ends inside fails at the offset where the bytes stop", () => {
    const truth = ntfsImage();
    const plain = openImage(fixture("ntfs.ntfs-ptcl-img.aa"));
    const info = plain.info;
    if (info.format !== "partclone") throw new Error(`a partclone image opened as ${info.format}`);
    const dataStart = info.dataStart;
    const perStrip = info.header.blocksPerChecksum;
    const inStrip1 = usedBlockOffset(plain, perStrip + 5);
    plain.close();
    // the file stops 3 blocks into strip 1 (after strip 0's blocks and its 4-byte CRC)
    const end = dataStart + (perStrip + 3) * 4096 + 4;
    const file = write(tempDir(), "cut.ptcl-img", truth);
    const image = openImage(file);
    try {
      fs.truncateSync(file, end);
      const e = errorOf(() => image.read!(inStrip1, 512));
      expect(e.field).toBe("truncated image data");
      expect(e.where.offset).toBe(end);
    } finally {
      image.close();
    }
  });
});

describe.skipIf(!ZSTD)("serve, mount and cat on compressed images", () => {
  const clonezilla = ["loop0p1.ext4-ptcl-img.zst.aa", "loop0p2.ntfs-ptcl-img.zst.aa"];
  const RESTORED: Record<string, string> = {
    // partclone.restore of `zstd -dc` of each (fixtures/MAKE-extra.md)
    "loop0p1.ext4-ptcl-img.zst.aa": "ba58435eb3ee66415e0a75d99a26ea0f6439be5353922c3a6e99c7bad470bb5b",
    "loop0p2.ntfs-ptcl-img.zst.aa": "795c5cf5bfa369d82f620c907bf2514664eb6f1fc65bf2f193601a0e07cb5357",
  };

  for (const name of clonezilla) {
    test(`Clonezilla's ${name} (zstdmt, one frame): random reads of the volume equal restore`, () => {
      const file = path.join(tempDir(), name);
      fs.copyFileSync(path.join(import.meta.dir, "..", "fixtures", "clonezilla-mbr-zstd", name), file);
      const plain = openImage(file);
      const volume = restoreToBuffer(plain);
      plain.close();
      expect(sha256(volume)).toBe(RESTORED[name]!);
      const image = openImage(file, { seekIndex: { mode: "build", spacing: 1 << 20 } });
      try {
        expect(image.read).toBeDefined();
        for (const [offset, length] of ranges(volume.length, [], 80, 7)) {
          expect(sha256(image.read!(offset, length))).toBe(sha256(volume.subarray(offset, offset + length)));
        }
      } finally {
        image.close();
      }
    });
  }

  test("an ntfsclone image compressed with zstd: random reads of the volume equal restore", () => {
    const plain = openImage(fixture("ntfs.ntfsclone-img"));
    const volume = restoreToBuffer(plain);
    plain.close();
    const file = write(tempDir(), "ntfs.ntfsclone-img.zst", zstd(new Uint8Array(fs.readFileSync(fixture("ntfs.ntfsclone-img"))), "-T2", "-3"));
    const image = openImage(file, { seekIndex: { mode: "build", spacing: SPACING } });
    try {
      expect(image.read).toBeDefined();
      expect(image.info.deviceSize).toBe(volume.length);
      for (const [offset, length] of ranges(volume.length, [], 40, 8)) {
        expect(sha256(image.read!(offset, length))).toBe(sha256(volume.subarray(offset, offset + length)));
      }
    } finally {
      image.close();
    }
  });

  test("imgtool cat of a .zst image equals restore, through the index it builds", () => {
    const file = path.join(tempDir(), clonezilla[0]!);
    fs.copyFileSync(path.join(import.meta.dir, "..", "fixtures", "clonezilla-mbr-zstd", clonezilla[0]!), file);
    const r = runCli(["cat", file]);
    expect(r.code).toBe(0);
    expect(sha256(r.stdout)).toBe(RESTORED[clonezilla[0]!]!);
    expect(fs.existsSync(`${file}.imgtool-index`)).toBe(true);
    const part = runCli(["cat", file, "--offset", "50M", "--length", "1M"]);
    expect(sha256(part.stdout)).toBe(sha256(r.stdout.subarray(50 << 20, 51 << 20)));
  });

  test.skipIf(!which("qemu-img"))("qemu-img convert of a served .zst image equals restore", async () => {
    const dir = tempDir();
    const file = path.join(dir, clonezilla[1]!);
    fs.copyFileSync(path.join(import.meta.dir, "..", "fixtures", "clonezilla-mbr-zstd", clonezilla[1]!), file);
    const socket = path.join(dir, "nbd.sock");
    const proc = Bun.spawn([process.execPath, CLI, "serve", file, "--socket", socket], { stdout: "pipe", stderr: "pipe", env: { ...process.env } });
    try {
      const reader = proc.stdout.getReader();
      const { value } = await reader.read();
      expect(new TextDecoder().decode(value)).toContain("serving");
      const out = path.join(dir, "out.raw");
      const q = spawnSync("qemu-img", ["convert", "-f", "raw", "-O", "raw", `nbd+unix:///?socket=${encodeURIComponent(socket)}`, out], { encoding: "utf8" });
      expect(q.stderr).toBe("");
      expect(q.status).toBe(0);
      expect(sha256(fs.readFileSync(out))).toBe(RESTORED[clonezilla[1]!]!);
    } finally {
      proc.kill("SIGTERM");
      await proc.exited;
    }
  }, 60_000);

  const fuseSkip = !which("fusermount3") || !fs.existsSync("/dev/fuse");
  test.skipIf(fuseSkip)("the mounted file of a .zst image equals restore", async () => {
    const dir = tempDir();
    const file = path.join(dir, clonezilla[0]!);
    fs.copyFileSync(path.join(import.meta.dir, "..", "fixtures", "clonezilla-mbr-zstd", clonezilla[0]!), file);
    const mountpoint = path.join(dir, "mnt");
    fs.mkdirSync(mountpoint);
    const proc = Bun.spawn([process.execPath, CLI, "mount", file, mountpoint, "--name", "vol.raw"], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    try {
      const reader = proc.stdout.getReader();
      const { value } = await reader.read();
      expect(new TextDecoder().decode(value)).toContain("mounted");
      const h = new Bun.CryptoHasher("sha256");
      h.update(fs.readFileSync(path.join(mountpoint, "vol.raw")));
      expect(h.digest("hex")).toBe(RESTORED[clonezilla[0]!]!);
    } finally {
      spawnSync("fusermount3", ["-u", mountpoint]);
      await proc.exited;
    }
  }, 60_000);

  test.skipIf(!which("xz"))("a stream with no point to resume from but its start, longer than the spacing, is refused in one line", () => {
    const dir = tempDir();
    const text = Buffer.from(Array.from({ length: 2_000_000 }, (_, i) => `line ${i}\n`).join(""));
    expect(text.length).toBeGreaterThan(16 << 20);
    const lzma = spawnSync("xz", ["--format=lzma", "-0", "-c"], { input: text, maxBuffer: 1 << 26 }).stdout as Buffer;
    const file = write(dir, "big.lzma", lzma);
    const r = runCli(["serve", file, "--port", "0"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`^imgtool: ${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: no point to resume lzma decoding from but its start \\(.*; [\\d,]+ bytes\\); use imgtool restore\n$`));
  });
});
