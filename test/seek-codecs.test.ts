import { describe, expect, setDefaultTimeout, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { decoders } from "../native/decoders.ts";
import { ImageError } from "../src/errors.ts";
import type { RandomAccessSource } from "../src/source/chunk-source.ts";
import { openFileSource } from "../src/source/file.ts";
import { FileSource } from "../src/source/pieces.ts";
import { bzip2SeekCodec } from "../src/source/seek-index/bzip2.ts";
import type { CodecIndex, SeekCodec, SeekPoint } from "../src/source/seek-index/codec.ts";
import { gzipSeekCodec } from "../src/source/seek-index/gzip.ts";
import { lz4SeekCodec } from "../src/source/seek-index/lz4.ts";
import { memoryIndex } from "../src/source/seek-index/index-file.ts";
import { SeekableSource } from "../src/source/seek-index/seekable.ts";
import { openSplitSet } from "../src/source/split.ts";
import { lzmaSeekCodec, xzSeekCodec } from "../src/source/seek-index/xz.ts";
import { fixture, peerTest, tempDir, which } from "./helpers.ts";

/** the machine is shared and the non-resumable cases decode from the start for every random read */
setDefaultTimeout(120_000);

/** ~3 MiB that compresses like a disk image: random stretches, zeros, and text that refers back. */
function sampleData(seed: number, size = 3 << 20): Uint8Array {
  let x = seed >>> 0 || 1;
  const rnd = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
  const out = new Uint8Array(size);
  const words = Array.from({ length: 800 }, (_, i) => new TextEncoder().encode(`word${i * 7919} `));
  let p = 0;
  while (p < size) {
    const kind = rnd();
    const len = Math.min(size - p, 1000 + Math.floor(rnd() * 200_000));
    if (kind < 0.35) for (let i = 0; i < len; i++) out[p + i] = (rnd() * 256) | 0;
    else if (kind < 0.55) out.fill(0, p, p + len);
    else {
      let q = p;
      while (q < p + len) {
        const w = words[(rnd() * words.length) | 0]!;
        const n = Math.min(w.length, p + len - q);
        out.set(w.subarray(0, n), q);
        q += n;
      }
    }
    p += len;
  }
  return out;
}

function compress(cmd: string, input: Uint8Array): Uint8Array {
  const r = Bun.spawnSync(["sh", "-c", cmd], { stdin: input, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd}: ${r.stderr.toString()}`);
  return new Uint8Array(r.stdout);
}

function fileOf(bytes: Uint8Array, name: string): string {
  const file = path.join(tempDir(), name);
  fs.writeFileSync(file, bytes);
  return file;
}

function open(file: string): RandomAccessSource {
  return openFileSource(file) as FileSource;
}

/** What the streaming decoder (the one restore uses) makes of the file. */
/** What building an index of `file` throws, if anything. */
function buildError(codec: SeekCodec, file: string): unknown {
  const raw = open(file);
  try {
    codec.build(raw, { spacing: 64 << 10 });
  } catch (e) {
    return e;
  } finally {
    raw.close();
  }
  return undefined;
}

function streamDecode(codec: SeekCodec, file: string): Uint8Array {
  const d = decoders[codec.compression]!(openFileSource(file));
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(1 << 20);
  for (let n; (n = d.read(buf)) > 0; ) parts.push(buf.slice(0, n));
  d.close();
  return Buffer.concat(parts);
}

/** Whether resuming at `point` gives `expected` first (a decoding error counts as no). */
function resumesTo(codec: SeekCodec, raw: RandomAccessSource, point: SeekPoint, expected: Uint8Array): boolean {
  try {
    return Buffer.from(readFrom(codec, raw, point, 0, expected.length)).equals(Buffer.from(expected));
  } catch {
    return false;
  }
}

function readFrom(codec: SeekCodec, raw: RandomAccessSource, point: SeekPoint, skip: number, length: number): Uint8Array {
  const s = codec.resume(raw, point);
  const out = new Uint8Array(skip + length);
  let n = 0;
  while (n < out.length) {
    const k = s.read(out.subarray(n));
    if (k === 0) break;
    n += k;
  }
  s.close();
  return out.subarray(skip, n);
}

/** Build, then resume at every point (up to the next one) and at random offsets; all must equal `expected`. */
function checkIndex(codec: SeekCodec, raw: RandomAccessSource, expected: Uint8Array, spacing: number): CodecIndex {
  const index = codec.build(raw, { spacing });
  expect(index.decodedSize).toBe(expected.length);
  expect(index.points[0]!.decoded).toBe(0);
  for (let i = 1; i < index.points.length; i++) expect(index.points[i]!.decoded).toBeGreaterThan(index.points[i - 1]!.decoded);
  for (const [i, p] of index.points.entries()) {
    const end = index.points[i + 1]?.decoded ?? expected.length;
    const got = readFrom(codec, raw, p, 0, end - p.decoded + 4096);
    expect(got.length).toBe(Math.min(end + 4096, expected.length) - p.decoded);
    expect(Buffer.compare(got, expected.subarray(p.decoded, p.decoded + got.length))).toBe(0);
    expect(p.bits).toBeGreaterThanOrEqual(0);
    expect(p.bits).toBeLessThan(8);
  }
  let seed = 12345;
  for (let k = 0; k < 12; k++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    const offset = seed % Math.max(1, expected.length - 4096);
    const p = index.points.findLast((q) => q.decoded <= offset)!;
    const got = readFrom(codec, raw, p, offset - p.decoded, 4096);
    expect(Buffer.compare(got, expected.subarray(offset, offset + 4096))).toBe(0);
  }
  return index;
}

interface Case {
  name: string;
  tool: string;
  cmd: string;
  codec: SeekCodec;
  /** more than the start point expected (false: notResumable expected) */
  resumable: boolean;
  /** points also resumed past the sample's members/streams/frames (several pieces concatenated) */
  pieces?: number;
  /** only the pieces' starts are points */
  onlyPieces?: boolean;
}

const cases: Case[] = [
  { name: "pigz --fast -b 1024 --rsyncable (Clonezilla -z1p)", tool: "pigz", cmd: "pigz --fast -b 1024 --rsyncable -c", codec: gzipSeekCodec, resumable: true },
  { name: "gzip -9", tool: "gzip", cmd: "gzip -9 -c", codec: gzipSeekCodec, resumable: true },
  { name: "gzip multi-member (cat of three)", tool: "gzip", cmd: "gzip -1 -c", codec: gzipSeekCodec, resumable: true, pieces: 3 },
  { name: "bzip2 -9", tool: "bzip2", cmd: "bzip2 -9 -c", codec: bzip2SeekCodec, resumable: true },
  { name: "bzip2 -1 multi-stream (cat of three)", tool: "bzip2", cmd: "bzip2 -1 -c", codec: bzip2SeekCodec, resumable: true, pieces: 3 },
  { name: "xz -T2 -3 --block-size=256KiB", tool: "xz", cmd: "xz -T2 -3 --block-size=256KiB -c", codec: xzSeekCodec, resumable: true },
  { name: "xz multi-stream (cat of three, blocks of 512 KiB)", tool: "xz", cmd: "xz -T2 -1 --block-size=512KiB -c", codec: xzSeekCodec, resumable: true, pieces: 3 },
  { name: "xz single block", tool: "xz", cmd: "xz -3 -c", codec: xzSeekCodec, resumable: false },
  { name: "lzma (.lzma)", tool: "xz", cmd: "xz --format=lzma -1 -c", codec: lzmaSeekCodec, resumable: false },
  { name: "lz4 -BI -B4 (independent blocks)", tool: "lz4", cmd: "lz4 -q -BI -B4 -c", codec: lz4SeekCodec, resumable: true },
  { name: "lz4 -BI -B5 -BX --content-size (block checksums)", tool: "lz4", cmd: "lz4 -q -BI -B5 -BX --content-size -c", codec: lz4SeekCodec, resumable: true },
  { name: "lz4 -BD (linked blocks)", tool: "lz4", cmd: "lz4 -q -BD -B4 -c", codec: lz4SeekCodec, resumable: false },
  { name: "lz4 -BD multi-frame (cat of three)", tool: "lz4", cmd: "lz4 -q -BD -B4 -c", codec: lz4SeekCodec, resumable: true, pieces: 3, onlyPieces: true },
];

describe("seek codecs on streams made by the real tools", () => {
  for (const c of cases) {
    peerTest(!which(c.tool) && `${c.tool} is not installed (apt-get install ${c.tool === "xz" ? "xz-utils" : c.tool})`)(c.name, () => {
      const data = sampleData(c.name.length * 7 + 3);
      const pieces = c.pieces ?? 1;
      const cut = (i: number) => Math.floor((data.length * i) / pieces);
      const compressed = Buffer.concat(Array.from({ length: pieces }, (_, i) => compress(c.cmd, data.subarray(cut(i), cut(i + 1)))));
      const file = fileOf(compressed, "sample");
      expect(Buffer.compare(streamDecode(c.codec, file), data)).toBe(0);
      const raw = open(file);
      const index = checkIndex(c.codec, raw, data, 128 << 10);
      if (c.resumable) {
        expect(index.notResumable).toBeUndefined();
        if (c.onlyPieces) expect(index.points.length).toBe(pieces);
        else expect(index.points.length).toBeGreaterThan(pieces);
      } else {
        expect(index.notResumable).toMatch(/^[^\n]+$/);
        expect(index.points.length).toBe(1);
      }
      raw.close();
    });
  }

  peerTest(!which("gzip") && "gzip is not installed")("gzip: a member start is a trusted point without window; other points carry 32 KiB of history", () => {
    const data = sampleData(99);
    const half = data.length >> 1;
    const file = fileOf(Buffer.concat([compress("gzip -6 -c", data.subarray(0, half)), compress("gzip -6 -c", data.subarray(half))]), "two.gz");
    const raw = open(file);
    const index = gzipSeekCodec.build(raw, { spacing: 256 << 10 });
    const member = index.points.find((p) => p.decoded === half);
    expect(member?.window.length).toBe(0);
    expect(member?.trusted).toBe(true);
    const inner = index.points.filter((p) => p.decoded !== 0 && p.decoded !== half);
    expect(inner.length).toBeGreaterThan(3);
    expect(inner.every((p) => p.window.length === 32768 && !p.trusted)).toBe(true);
    for (const p of inner) expect(resumesTo(gzipSeekCodec, raw, p, data.subarray(p.decoded, p.decoded + 100_000))).toBe(true);
    raw.close();
  });

  peerTest(!which("pigz") && "pigz is not installed")("compressed then split (pigz in 256 KiB pieces): points resume across piece boundaries", () => {
    const data = sampleData(7);
    const gz = compress("pigz --fast -b 1024 --rsyncable -c", data);
    const dir = tempDir();
    const names: string[] = [];
    for (let i = 0, k = 0; i < gz.length; i += 256 << 10, k++) {
      const name = path.join(dir, `img.gz.a${String.fromCharCode(97 + k)}`);
      fs.writeFileSync(name, gz.subarray(i, i + (256 << 10)));
      names.push(name);
    }
    const raw = openSplitSet(names);
    const index = checkIndex(gzipSeekCodec, raw, data, 64 << 10);
    expect(index.points.length).toBeGreaterThan(10);
    raw.close();
  });
});

describe("verification", () => {
  peerTest(!which("gzip") && "gzip is not installed")("a point whose history is wrong does not resume to the same bytes, and the check says so", () => {
    const data = sampleData(5);
    const file = fileOf(compress("gzip -9 -c", data), "v.gz");
    const raw = open(file);
    const index = gzipSeekCodec.build(raw, { spacing: 128 << 10 });
    // a point inside text (which refers back) with its window zeroed
    const text = index.points.filter((p) => p.window.length === 32768 && new Set(p.window).size > 5 && new Set(p.window).size < 100);
    expect(text.length).toBeGreaterThan(0);
    let caught = 0;
    for (const p of text) {
      const expected = data.subarray(p.decoded, p.decoded + 65536);
      expect(resumesTo(gzipSeekCodec, raw, p, expected)).toBe(true);
      const broken = { ...p, window: new Uint8Array(p.window.length) };
      if (!resumesTo(gzipSeekCodec, raw, broken, expected)) caught++;
      const shifted = { ...p, bits: (p.bits + 1) % 8 };
      expect(resumesTo(gzipSeekCodec, raw, shifted, expected)).toBe(false);
    }
    expect(caught).toBeGreaterThan(0);
    raw.close();
  });
  for (const [name, cmd, codec] of [
    ["gzip", "gzip -9 -c", gzipSeekCodec],
    ["bzip2", "bzip2 -1 -c", bzip2SeekCodec],
    ["xz", "xz -T2 -1 --block-size=256KiB -c", xzSeekCodec],
    ["lz4", "lz4 -q -BI -B4 -c", lz4SeekCodec],
  ] as const) {
    const tool = cmd.split(" ")[0]!;
    peerTest(!which(tool) && `${tool} is not installed`)(`${name}: the build decodes once and records stretch hashes; a reader never returns what a point decoded wrongly`, () => {
      const data = sampleData(21);
      const raw = open(fileOf(compress(cmd, data), `d.${name}`));
      const built = codec.build(raw, { spacing: 256 << 10 });
      expect(built.stretches).toBeDefined();
      expect(built.stretches!.ends[built.stretches!.ends.length - 1]).toBe(data.length);
      // every point cuts a piece there
      for (const p of built.points) if (p.decoded > 0) expect(Array.from(built.stretches!.ends)).toContain(p.decoded);
      const index = memoryIndex(built, codec.compression, raw.size, 256 << 10);
      // every point but the first shifted by a byte, as a wrong point would be
      const shifted = index.points.slice(1);
      for (const p of shifted) {
        p.compressed += 1;
        p.trusted = false;
      }
      const reader = new SeekableSource(raw, codec, index);
      try {
        for (let at = data.length - 1000; at > 0; at -= 300_000) {
          const got = new Uint8Array(1000);
          expect(reader.readAt(got, at)).toBe(1000);
          expect(Buffer.from(got).equals(Buffer.from(data.subarray(at, at + 1000)))).toBe(true);
        }
        expect(reader.stats.wrongPoints).toBeGreaterThan(0);
        expect(shifted.some((p) => p.wrongFrom !== undefined)).toBe(true);
      } finally {
        reader.close();
      }
    });
  }
});

describe("the shipped fixtures", () => {
  const image = Buffer.concat(["aa", "ab", "ac"].map((s) => fs.readFileSync(fixture(`ntfs.ntfs-ptcl-img.${s}`))));
  for (const [ext, codec] of [
    ["gz", gzipSeekCodec],
    ["bz2", bzip2SeekCodec],
    ["xz", xzSeekCodec],
    ["lz4", lz4SeekCodec],
  ] as const) {
    test(`ntfs.ntfs-ptcl-img.${ext}`, () => {
      const raw = open(fixture(`ntfs.ntfs-ptcl-img.${ext}`));
      const index = checkIndex(codec, raw, image, 64 << 10);
      expect(index.decodedSize).toBe(2_400_510);
      raw.close();
    });
  }
});

describe("damaged streams", () => {
  const corruptions: [string, string, SeekCodec, RegExp][] = [
    ["gzip", "gzip -6 -c", gzipSeekCodec, /corrupt gzip data|truncated gzip data/],
    ["bzip2", "bzip2 -1 -c", bzip2SeekCodec, /corrupt bzip2 data/],
    ["xz", "xz -T2 -1 --block-size=256KiB -c", xzSeekCodec, /corrupt xz data/],
    ["lz4", "lz4 -q -BI -B4 -c", lz4SeekCodec, /corrupt lz4 data/],
  ];
  for (const [name, cmd, codec, message] of corruptions) {
    const tool = cmd.split(" ")[0]!;
    peerTest(!which(tool) && `${tool} is not installed`)(`${name}: flipped bytes in the middle give an ImageError naming the file and an offset`, () => {
      const good = compress(cmd, sampleData(11, 1 << 20));
      const bad = good.slice();
      const mid = bad.length >> 1;
      for (let i = 0; i < 64; i++) bad[mid + i]! ^= 0x5a;
      const file = fileOf(bad, `bad-${name}`);
      const err = buildError(codec, file);
      expect(err).toBeInstanceOf(ImageError);
      expect((err as Error).message).toContain(file);
      expect((err as Error).message).toMatch(/offset [\d,]+/);
      expect((err as Error).message).toMatch(message);
    });
    peerTest(!which(tool) && `${tool} is not installed`)(`${name}: a truncated stream gives an ImageError`, () => {
      const good = compress(cmd, sampleData(13, 1 << 20));
      const file = fileOf(good.subarray(0, good.length - 1000), `short-${name}`);
      const err = buildError(codec, file);
      expect(err).toBeInstanceOf(ImageError);
      expect((err as Error).message).toContain(file);
    });
  }
});
