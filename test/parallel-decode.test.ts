import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { Xxh64State } from "../native/xxhash.ts";
import { ImageError } from "../src/errors.ts";
import type { ChunkSource, RandomAccessSource } from "../src/source/chunk-source.ts";
import { decodeLayers, openRaw } from "../src/source/open.ts";
import { openParallelDecode, planSpans } from "../src/source/parallel-decode.ts";
import { seekCodecOf } from "../src/source/seek-index/codecs.ts";
import { buildSeekIndex, findSeekIndex } from "../src/source/seek-index/open-index.ts";
import { sniffCompression } from "../src/source/sniff.ts";
import { ThreadedDecodeSource } from "../src/source/threaded-decode.ts";
import { fixture, restoredReference, runCli, sha256, sha256File, shellWord, tempDir, which } from "./helpers.ts";

function drain(source: ChunkSource): Uint8Array {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(300_001);
  for (let n; (n = source.read(buf)) > 0; ) parts.push(buf.slice(0, n));
  return Buffer.concat(parts);
}

/** Like drain, through borrow, alternating with read, in odd sizes. */
function drainBorrowing(source: ChunkSource): Uint8Array {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(70_001);
  for (let i = 0; ; i++) {
    if (i % 3 === 2) {
      const n = source.read(buf);
      if (n === 0) break;
      parts.push(buf.slice(0, n));
    } else {
      const lent = source.borrow!(i % 2 ? 1 << 30 : 300_001);
      if (lent.length === 0) break;
      parts.push(lent.slice());
    }
  }
  return Buffer.concat(parts);
}

/** A copy of a fixture in a scratch directory with a dense seek index beside it. */
function indexedCopy(name: string, spacing: number): { file: string; raw: RandomAccessSource } {
  const file = path.join(tempDir(), name);
  fs.copyFileSync(fixture(name), file);
  return indexed(file, spacing);
}

function indexed(file: string, spacing: number): { file: string; raw: RandomAccessSource } {
  const { raw } = openRaw(file);
  const head = new Uint8Array(64);
  (raw as RandomAccessSource).readAt(head, 0);
  const codec = seekCodecOf(sniffCompression(head)!)!;
  buildSeekIndex(raw as RandomAccessSource, [file], codec, { spacing });
  return { file, raw: raw as RandomAccessSource };
}

describe("parallel decoding from a seek index", () => {
  test("spans join points closer than the minimum and keep the last one long enough", () => {
    const at = (...d: number[]) => d.map((decoded) => ({ decoded }));
    expect(planSpans(at(0, 1, 2, 10, 11, 25), 30, 8)).toEqual([0, 10, 25]);
    expect(planSpans(at(0, 10, 20), 22, 8)).toEqual([0, 10]);
    expect(planSpans(at(0), 100, 8)).toEqual([0]);
  });

  test("a span never runs past where decoding from its start is known to go wrong", () => {
    const chain = [{ decoded: 0 }, { decoded: 4, verifiedEnd: 8 }, { decoded: 8, verifiedEnd: 12 }, { decoded: 12, verifiedEnd: 30 }];
    expect(planSpans(chain, 30, 6)).toEqual([0, 8, 12]);
    // 20..24 is covered by no point but the first, and the first span is already cut: decode in order
    const gap = [{ decoded: 0 }, { decoded: 10, verifiedEnd: 20 }, { decoded: 24, verifiedEnd: 40 }];
    expect(planSpans(gap, 40, 8)).toBeUndefined();
    expect(planSpans([{ decoded: 0 }, { decoded: 10, verifiedEnd: 20 }], 40, 8)).toBeUndefined();
  });

  // the partclone image inside the fixtures, compressed so that it has resume points all along
  const made: Record<string, string> = {
    "pzstd-like multi-frame zstd": "split -b 256K -d --filter='zstd -q -3 -c' IN > OUT",
    "pigz --fast -b 128": "pigz --fast -b 128 -c IN > OUT",
    "bzip2 -1 (100 kB blocks)": "bzip2 -1 -c IN > OUT",
    "xz with 256 KiB blocks": "xz -T2 -3 --block-size=256KiB -c IN > OUT",
    "lz4 (independent blocks)": "lz4 -q -B4 -c IN > OUT",
  };
  const tools = ["zstd", "pigz", "bzip2", "xz", "lz4", "split"].filter((t) => !which(t));
  for (const [how, command] of Object.entries(made)) {
    test.skipIf(tools.length > 0)(`${how}: the same bytes as one decoder, on 1, 2 and 3 workers`, () => {
      const dir = tempDir();
      const plain = path.join(dir, "ntfs.ntfs-ptcl-img");
      fs.writeFileSync(plain, Buffer.concat(["aa", "ab", "ac"].map((s) => fs.readFileSync(fixture(`ntfs.ntfs-ptcl-img.${s}`)))));
      const file = path.join(dir, "image.compressed");
      expect(spawnSync("sh", ["-c", command.replace("IN", shellWord(plain)).replace("OUT", shellWord(file))]).status).toBe(0);
      indexed(file, 64 << 10).raw.close();
      const sequential = sha256(drain(decodeLayers(openRaw(file).raw).source));
      // each parallel source owns the raw bytes it was opened on, and closes them
      const raw = () => openRaw(file).raw as RandomAccessSource;
      for (const threads of [1, 2, 3]) {
        const parallel = openParallelDecode(raw(), [file], sniffCompression(readHead(file))!, threads, 128 << 10)!;
        expect(parallel).toBeDefined();
        expect(sha256(drain(parallel))).toBe(sequential);
        parallel.close();
        const lending = openParallelDecode(raw(), [file], sniffCompression(readHead(file))!, threads, 128 << 10)!;
        expect(sha256(drainBorrowing(lending))).toBe(sequential);
        lending.close();
      }
    });
  }
  if (tools.length) console.log(`skip: parallel decoding of generated streams needs ${tools.join(", ")}`);

  test.skipIf(!which("zstd"))("one zstdmt frame decoded into rings that wrap many times: the same bytes as one decoder", () => {
    // word salad and long repeats, 48 MiB: each worker's 12 MiB ring wraps while a slow reader has
    // not yet taken the pieces ahead of the worker (this fails when a worker writes over them)
    const dir = tempDir();
    const plain = path.join(dir, "words");
    const words = Array.from({ length: 5000 }, (_, i) => `w${(i * 2654435761) % 1000003}`);
    let seed = 7;
    const out = Buffer.alloc(48 << 20);
    for (let at = 0; at < out.length; ) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      if (seed % 64 === 0) {
        const piece = randomBytes(997);
        for (let end = Math.min(out.length, at + (300 << 10)); at < end; ) at += piece.copy(out, at);
      } else at += out.write(`${words[seed % words.length]} `, at);
    }
    fs.writeFileSync(plain, out);
    const file = path.join(dir, "words.zst");
    expect(spawnSync("zstd", ["-q", "-T2", "-3", plain, "-o", file]).status).toBe(0);
    const { raw } = indexed(file, 1 << 20);
    const parallel = openParallelDecode(raw, [file], "zstd", 2, 2 << 20)!;
    expect(parallel).toBeDefined();
    // a slow reader, so that the workers fill their rings and wait at the pieces not yet taken
    const taken: Uint8Array[] = [];
    for (let lent; (lent = parallel.borrow!(256 << 10)).length > 0; ) {
      taken.push(lent.slice());
      Bun.sleepSync(1);
    }
    expect(sha256(Buffer.concat(taken))).toBe(sha256(out));
    parallel.close();
  });

  test.skipIf(!which("zstd"))("resumed points that decode differently: the workers check every piece, go back to an earlier point, and hand over the same bytes", () => {
    const file = path.join(tempDir(), "p1.zst");
    fs.copyFileSync(fixture("clonezilla-mbr-zstd/loop0p1.ext4-ptcl-img.zst.aa"), file);
    indexed(file, 1 << 20).raw.close();
    const truth = spawnSync("zstd", ["-dc", file], { maxBuffer: 1 << 28 }).stdout as Buffer;
    const pointsNow = () => {
      const { raw, pieces } = openRaw(file);
      const index = findSeekIndex(raw as RandomAccessSource, pieces, "zstd")!;
      const points = index.points;
      index.close();
      raw.close();
      return points;
    };
    // a first run checks the spans and keeps in the index how far each start point was checked
    const first = openParallelDecode(openRaw(file).raw as RandomAccessSource, [file], "zstd", 2, 2 << 20)!;
    expect(sha256(drain(first))).toBe(sha256(truth));
    first.close();
    const checked = pointsNow().filter((p) => p.checkedTo > p.decoded);
    expect(checked.length).toBeGreaterThan(2);
    expect(checked.every((p) => p.wrongFrom === undefined)).toBe(true);
    // every point inside the frame moved a byte: its decoding fails or gives other bytes
    const shifted = rewriteIndexTable(`${file}.imgtool-index`, (points) => {
      let n = 0;
      for (const row of points) if (row[8] === 0) (row[1] as number) += (n++, 1);
      return n;
    });
    expect(shifted).toBeGreaterThan(3);
    const parallel = openParallelDecode(openRaw(file).raw as RandomAccessSource, [file], "zstd", 2, 2 << 20)!;
    expect(parallel).toBeDefined();
    expect(sha256(drain(parallel))).toBe(sha256(truth));
    parallel.close();
    // what the workers found is in the index now
    expect(pointsNow().filter((p) => p.wrongFrom !== undefined).length).toBeGreaterThan(0);
  });

  test.skipIf(!which("zstd") || !which("split"))("zstd frames whose window is larger than a worker's ring: read by the streaming decoder, the same bytes", () => {
    const dir = tempDir();
    const plain = path.join(dir, "data");
    const text = Buffer.from(Array.from({ length: 1_200_000 }, (_, i) => `row ${(i * 7919) % 100_003} of the table\n`).join(""));
    fs.writeFileSync(plain, Buffer.concat([text, randomBytes(8 << 20), text]).subarray(0, 48 << 20));
    const file = path.join(dir, "data.zst");
    // 16 MiB frames with a 16 MiB window each, more than a 12 MiB ring holds
    expect(spawnSync("sh", ["-c", `split -b 16M -d --filter='zstd -q -3 --long=24 -c' ${shellWord(plain)} > ${shellWord(file)}`]).status).toBe(0);
    const { raw } = indexed(file, 1 << 20);
    const parallel = openParallelDecode(raw, [file], "zstd", 2, 2 << 20)!;
    expect(parallel).toBeDefined();
    expect(sha256(drainBorrowing(parallel))).toBe(sha256(fs.readFileSync(plain)));
    parallel.close();
  });

  test.skipIf(!which("pigz") || !which("split"))("a compressed image split into pieces, as Clonezilla saves it: the workers read across the pieces, the same bytes", () => {
    const dir = tempDir();
    const plain = path.join(dir, "ntfs.ntfs-ptcl-img");
    fs.writeFileSync(plain, Buffer.concat(["aa", "ab", "ac"].map((s) => fs.readFileSync(fixture(`ntfs.ntfs-ptcl-img.${s}`)))));
    const whole = path.join(dir, "whole.gz");
    expect(spawnSync("sh", ["-c", `pigz --fast -b 128 -c ${shellWord(plain)} > ${shellWord(whole)} && split -b 40K ${shellWord(whole)} ${shellWord(`${dir}/img.gz.`)} && rm ${shellWord(whole)}`]).status).toBe(0);
    const first = path.join(dir, "img.gz.aa");
    const { raw, pieces } = openRaw(first);
    expect(pieces.length).toBeGreaterThan(3);
    buildSeekIndex(raw as RandomAccessSource, pieces, seekCodecOf("gzip")!, { spacing: 64 << 10 });
    raw.close();
    const parallel = openParallelDecode(openRaw(first).raw as RandomAccessSource, pieces, "gzip", 2, 128 << 10)!;
    try {
      expect(parallel).toBeDefined();
      expect(sha256(drain(parallel))).toBe(sha256(fs.readFileSync(plain)));
    } finally {
      parallel.close();
    }
  });

  test("the workers read the image and index the reader opened and checked: replacing both after opening changes nothing", () => {
    const { file, raw } = indexedCopy("ntfs.ntfs-ptcl-img.zst", 64 << 10);
    const expected = sha256(drain(decodeLayers(openRaw(file).raw).source));
    const parallel = openParallelDecode(raw, [file], "zstd", 2, 128 << 10)!;
    try {
      expect(parallel).toBeDefined();
      // another image and a garbage index renamed over them, as someone could swap them in
      const other = path.join(path.dirname(file), "other");
      fs.writeFileSync(other, fs.readFileSync(fixture("ntfs-rich.ntfs-ptcl-img.seekable.zst")));
      fs.renameSync(other, file);
      fs.writeFileSync(other, randomBytes(4096));
      fs.renameSync(other, `${file}.imgtool-index`);
      expect(sha256(drain(parallel))).toBe(expected);
    } finally {
      parallel.close();
    }
  });

  test("the decode workers run at nice 10, below the thread that takes their spans", () => {
    const niceOf = (tid: string) => Number(fs.readFileSync(`/proc/self/task/${tid}/stat`, "utf8").replace(/^.*\) /s, "").split(" ")[16]);
    const { file, raw } = indexedCopy("ntfs.ntfs-ptcl-img.zst", 64 << 10);
    const parallel = openParallelDecode(raw, [file], "zstd", 2, 128 << 10)!;
    try {
      expect(parallel).toBeDefined();
      drain(parallel);
      const nice = fs.readdirSync("/proc/self/task").map(niceOf);
      expect(nice.filter((n) => n === 10).length).toBeGreaterThanOrEqual(2);
      expect(niceOf(String(process.pid))).toBe(0);
    } finally {
      parallel.close();
    }
  });

  test("a thread's priority is lowered from where it is, not set: twice 3 steps from nice 0 is nice 6, and never past 19", async () => {
    const dir = tempDir();
    const script = path.join(dir, "nice-worker.ts");
    const libcModule = path.join(import.meta.dir, "..", "native", "libc-thread.ts");
    const niceHere = `Number(require("fs").readFileSync("/proc/thread-self/stat", "utf8").replace(/^.*\\) /s, "").split(" ")[16])`;
    fs.writeFileSync(script, `import { lowerThreadPriority } from ${JSON.stringify(libcModule)};
lowerThreadPriority(3); lowerThreadPriority(3); const six = ${niceHere};
lowerThreadPriority(30); postMessage([six, ${niceHere}]);`);
    const worker = new Worker(script);
    try {
      const [six, capped] = await new Promise<number[]>((resolve) => (worker.onmessage = (e) => resolve(e.data)));
      expect(six).toBe(6);
      expect(capped).toBe(19);
    } finally {
      worker.terminate();
    }
  });

  test("one decode worker's ring lends the bytes it would copy", () => {
    for (const name of ["ntfs.ntfs-ptcl-img.zst", "ntfs.ntfs-ptcl-img.gz"]) {
      const sequential = sha256(drain(decodeLayers(openRaw(fixture(name)).raw).source));
      const threaded = new ThreadedDecodeSource({ pieces: [fixture(name)] });
      expect(sha256(drainBorrowing(threaded))).toBe(sequential);
      expect(threaded.borrow(10).length).toBe(0);
      threaded.close();
    }
  });

  for (const name of ["ntfs.ntfs-ptcl-img.zst", "ntfs.ntfs-ptcl-img.xz", "ntfs.ntfs-ptcl-img.bz2"]) {
    test(`${name}: where points leave a stretch uncovered (or there are none), one decoder; else the same bytes`, () => {
      const { file, raw } = indexedCopy(name, 64 << 10);
      const parallel = openParallelDecode(raw, [file], sniffCompression(readHead(file))!, 2, 128 << 10);
      if (parallel) {
        expect(sha256(drain(parallel))).toBe(sha256(drain(decodeLayers(openRaw(file).raw).source)));
        parallel.close();
      }
      // and restore gives the manifest's bytes either way
      const out = path.join(path.dirname(file), "vol.raw");
      expect(runCli(["restore", file, "-o", out, "--threads", "2"]).code).toBe(0);
      expect(sha256File(out)).toBe(restoredReference("ntfs.ntfs-ptcl-img.aa").sha256);
    });
  }

  test("restore --threads 2 with an index writes what restore without one writes", () => {
    const { file } = indexedCopy("ntfs.ntfs-ptcl-img.gz", 64 << 10);
    const dir = path.dirname(file);
    expect(runCli(["restore", file, "-o", path.join(dir, "a.raw"), "--threads", "2"]).code).toBe(0);
    expect(runCli(["restore", fixture("ntfs.ntfs-ptcl-img.gz"), "-o", path.join(dir, "b.raw"), "--threads", "1"]).code).toBe(0);
    expect(sha256File(path.join(dir, "a.raw"))).toBe(sha256File(path.join(dir, "b.raw")));
    expect(runCli(["verify", file, "--threads", "2"]).code).toBe(0);
    expect(runCli(["verify", file, "--threads", "0"]).stderr).toMatch(/^imgtool: --threads takes a whole number/);
  });

  test.skipIf(!which("zstd"))("a damaged span is refused, at the stretch whose bytes differ from the index's, as corrupt data as one decoder refuses it", () => {
    const dir = tempDir();
    const plain = path.join(dir, "data");
    const text = Buffer.from(Array.from({ length: 400_000 }, (_, i) => `line ${i}\n`).join(""));
    const noise = randomBytes(3 << 20);
    fs.writeFileSync(plain, Buffer.concat([text, noise, text]));
    const file = path.join(dir, "data.zst");
    expect(spawnSync("sh", ["-c", `split -b 256K -d --filter='zstd -q -1 -c' ${shellWord(plain)} > ${shellWord(file)}`]).status).toBe(0);
    const { raw } = indexed(file, 64 << 10);
    // damage the middle of the compressed bytes (outside the first and last MiB the index is keyed by)
    const bytes = fs.readFileSync(file);
    expect(bytes.length).toBeGreaterThan(3 << 20);
    const mtimeNs = fs.statSync(file, { bigint: true }).mtimeNs;
    const at = bytes.length >> 1;
    // the decoded offset of the damage: what the undamaged bytes before it decode to
    const prefix = path.join(dir, "prefix.zst");
    fs.writeFileSync(prefix, bytes.subarray(0, at));
    const decodedAt = Number(spawnSync("sh", ["-c", `zstd -dc ${shellWord(prefix)} 2>/dev/null | wc -c`]).stdout.toString());
    for (let i = 0; i < 64; i++) bytes[at + i]! ^= 0x5a;
    fs.writeFileSync(file, bytes);
    const mtime = `@${mtimeNs / 1_000_000_000n}.${(mtimeNs % 1_000_000_000n).toString().padStart(9, "0")}`;
    expect(spawnSync("touch", ["-m", "-d", mtime, file]).status).toBe(0);
    const oneDecoder = errorOf(() => drain(decodeLayers(openRaw(file).raw).source));
    expect(Math.abs(oneDecoder.where.offset! - at)).toBeLessThan(1 << 20);
    const parallel = openParallelDecode(raw, [file], "zstd", 2, 128 << 10)!;
    expect(parallel).toBeDefined();
    const inParallel = errorOf(() => drain(parallel));
    // the workers compare every stretch with the index's hashes instead of summing whole frames in
    // order: the damage is named at the start of the first stretch that differs, in decoded bytes
    expect([inParallel.where.file, inParallel.field]).toEqual([oneDecoder.where.file, oneDecoder.field]);
    expect(inParallel.where.decoded).toBe("zstd");
    expect(inParallel.where.offset!).toBeLessThanOrEqual(decodedAt);
    expect(decodedAt - inParallel.where.offset!).toBeLessThan(1 << 20);
  });
});

/** Change the points of an index file's table (rows as index-file.ts writes them) and seal the table again; what `change` returns. */
function rewriteIndexTable<T>(file: string, change: (points: unknown[][]) => T): T {
  const bytes = fs.readFileSync(file);
  const length = bytes.readUInt32LE(20);
  const at = Number(bytes.readBigUInt64LE(24));
  const table = JSON.parse(bytes.subarray(at, at + length).toString("utf8")) as { points: unknown[][] };
  const result = change(table.points);
  const text = Buffer.from(JSON.stringify(table));
  const header = Buffer.from(bytes.subarray(0, 48));
  header.writeUInt32LE(text.length, 20);
  const h = new Xxh64State();
  h.update(text);
  const digest = new Uint8Array(8);
  h.digestInto(digest);
  header.set(digest, 32);
  fs.writeFileSync(file, Buffer.concat([header, bytes.subarray(48, at), text]));
  return result;
}

function readHead(file: string): Uint8Array {
  const fd = fs.openSync(file, "r");
  const b = new Uint8Array(64);
  fs.readSync(fd, b, 0, 64, 0);
  fs.closeSync(fd);
  return b;
}

function errorOf(f: () => unknown): ImageError {
  try {
    f();
  } catch (e) {
    if (e instanceof ImageError) return e;
    throw e;
  }
  throw new Error("no error");
}
