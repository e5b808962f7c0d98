import { afterAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { memorySource, missingTools, peerTest, runCli } from "./helpers.ts";
import { ImageError } from "../src/errors.ts";
import { ByteReader } from "../src/source/byte-reader.ts";
import type { ChunkSource } from "../src/source/chunk-source.ts";
import { createDecoder } from "../src/source/decode.ts";
import { openStream } from "../src/source/open.ts";
import type { Compression } from "../src/source/sniff.ts";
import { crc32c, crc32cImplementations, crc32cJs } from "../native/crc32c.ts";
import { decodeMemoryLimit, LazyLibrary, structLayout } from "../native/ffi.ts";
import { decodeSettings, useDecodeSettings } from "../native/decode-settings.ts";
import { isalUsable } from "../native/isal.ts";
import { digestXxh128, digestXxh64, Xxh128State, Xxh64State } from "../native/xxhash.ts";
import { ZstdDecoder, zstdCompress } from "../native/zstd.ts";

const FIX = path.join(import.meta.dir, "..", "fixtures");
const NTFS = "ntfs.ntfs-ptcl-img";
const NTFS_SHA256 = "7c571e92ed2b070b8fd196bd010efd67f17ac79d15f7517c9a270866635946a3";
const NTFS_SIZE = 2400510;
const ntfsPlain = Buffer.concat(["aa", "ab", "ac"].map((s) => fs.readFileSync(path.join(FIX, `${NTFS}.${s}`))));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "imgtool-decoders-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function sha256(b: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(b).digest("hex");
}

/** Everything `openStream` yields, drained through ByteReader.chunk(). */
function drainPath(p: string): { bytes: Buffer; compression: Compression[] } {
  const s = openStream(p);
  const parts: Buffer[] = [];
  for (;;) {
    const c = s.reader.chunk(1 << 20);
    if (c.length === 0) break;
    parts.push(Buffer.from(c));
  }
  s.reader.source.close();
  return { bytes: Buffer.concat(parts), compression: s.compression };
}

function drainSource(src: ChunkSource, capacity = 1 << 16): Buffer {
  const r = new ByteReader(src, capacity);
  const parts: Buffer[] = [];
  for (;;) {
    const c = r.chunk(capacity);
    if (c.length === 0) break;
    parts.push(Buffer.from(c));
  }
  src.close();
  return Buffer.concat(parts);
}


/** `file` written into the temporary directory (see the note on fixtures below). */
function tmpFile(name: string, data: Uint8Array): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, data);
  return p;
}

/** stdout of `cmd` fed `input` (the test skips where the tool is absent: see peerTest()). */
function run(cmd: string[], input: Uint8Array): Buffer {
  const r = Bun.spawnSync(cmd, { stdin: input, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString()}`);
  return Buffer.from(r.stdout);
}

/** Some compressible and some incompressible bytes. */
function mixedData(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; ) {
    const text = Buffer.from(`line ${i} of block ${seed}: the quick brown fox jumps over the lazy dog\n`);
    for (let k = 0; k < 4000 && i < n; k++) b[i++] = text[k % text.length]!;
    for (let k = 0; k < 3000 && i < n; k++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      b[i++] = x & 0xff;
    }
  }
  return b;
}

function skippableFrame(payload: Uint8Array, magicLow = 0): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(0x184d2a50 + magicLow, 0);
  h.writeUInt32LE(payload.length, 4);
  return Buffer.concat([h, payload]);
}

function expectImageError(f: () => unknown, pattern: RegExp): ImageError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ImageError);
    expect((e as Error).message).toMatch(pattern);
    return e as ImageError;
  }
  throw new Error(`no error; expected ${pattern}`);
}

const FIXTURES: [string, Compression, string[]][] = [
  ["gz", "gzip", ["gzip", "-c"]],
  ["zst", "zstd", ["zstd", "-q", "-c"]],
  ["lz4", "lz4", ["lz4", "-q", "-c"]],
  ["xz", "xz", ["xz", "-c"]],
  ["bz2", "bzip2", ["bzip2", "-c"]],
];

// The fixtures are read from a copy: next to ntfs.ntfs-ptcl-img.aa/.ab/.ac, ".gz", ".xz" and
// ".zst" look like `split` suffixes to findSplitPieces, which then opens the split set instead.
describe("compressed fixtures decode to the split ntfs image", () => {
  test("the reference is what the brief says", () => {
    expect(ntfsPlain.length).toBe(NTFS_SIZE);
    expect(sha256(ntfsPlain)).toBe(NTFS_SHA256);
  });
  for (const [ext, kind] of FIXTURES) {
    test(`${NTFS}.${ext} → ${kind}`, () => {
      const p = tmpFile(`${NTFS}.${ext}`, fs.readFileSync(path.join(FIX, `${NTFS}.${ext}`)));
      const { bytes, compression } = drainPath(p);
      expect(compression).toEqual([kind]);
      expect(bytes.length).toBe(NTFS_SIZE);
      expect(sha256(bytes)).toBe(NTFS_SHA256);
    });
  }
});

describe("one byte of input at a time", () => {
  for (const [ext, kind] of FIXTURES) {
    const cmd = FIXTURES.find((f) => f[1] === kind)![2];
    peerTest(missingTools(cmd[0]!))(kind, () => {
      // a small input: every byte is one library call
      const plain = ntfsPlain.subarray(0, 300_000);
      const packed = run(cmd, plain);
      const out = drainSource(createDecoder(kind, memorySource(packed, 1, `x.${ext}`)));
      expect(out.equals(plain)).toBe(true);
    });
  }
  peerTest(missingTools("xz"))("lzma (xz --format=lzma)", () => {
    const plain = ntfsPlain.subarray(0, 300_000);
    const packed = run(["xz", "--format=lzma", "-c"], plain);
    expect(drainSource(createDecoder("lzma", memorySource(packed, 1))).equals(plain)).toBe(true);
  });
});

describe("several members / frames / streams, as made by the real tools", () => {
  const parts = [mixedData(200_000, 1), mixedData(1, 2), mixedData(150_000, 3)];
  const whole = Buffer.concat(parts);
  const each = (cmd: string[]) => parts.map((p) => run(cmd, p));
  const check = (name: string, packed: Buffer, kind: Compression) => {
    const { bytes, compression } = drainPath(tmpFile(name, packed));
    expect(compression).toEqual([kind]);
    expect(bytes.equals(whole)).toBe(true);
    // boundaries between members falling anywhere in the input reads
    expect(drainSource(createDecoder(kind, memorySource(packed, 7, name))).equals(whole)).toBe(true);
  };

  peerTest(missingTools("gzip"))("gzip: cat a.gz b.gz c.gz", () => {
    check("multi.gz", Buffer.concat(each(["gzip", "-c"])), "gzip");
  });
  peerTest(missingTools("pigz"))("gzip: pigz members", () => {
    check("multi-pigz.gz", Buffer.concat(each(["pigz", "-c"])), "gzip");
  });
  peerTest(missingTools("zstd"))("zstd: frames with skippable frames before, between and after", () => {
    const p = each(["zstd", "-q", "-c"]);
    const skip = (n: number) => skippableFrame(Buffer.alloc(n, 0xab), n % 16);
    check("multi.zst", Buffer.concat([skip(5), p[0]!, skip(0), p[1]!, skip(70_000), p[2]!, skip(3)]), "zstd");
  });
  peerTest(missingTools("lz4"))("lz4: frames with skippable frames between and after", () => {
    const p = each(["lz4", "-q", "-c"]);
    check("multi.lz4", Buffer.concat([p[0]!, skippableFrame(Buffer.alloc(10, 1), 7), p[1]!, p[2]!, skippableFrame(Buffer.alloc(0))]), "lz4");
  });
  peerTest(missingTools("xz"))("xz: streams with stream padding between", () => {
    const p = each(["xz", "-c"]);
    check("multi.xz", Buffer.concat([p[0]!, Buffer.alloc(8), p[1]!, p[2]!, Buffer.alloc(4)]), "xz");
  });
  peerTest(missingTools("bzip2"))("bzip2: cat a.bz2 b.bz2 c.bz2", () => {
    check("multi.bz2", Buffer.concat(each(["bzip2", "-c"])), "bzip2");
  });
  peerTest(missingTools("pbzip2"))("bzip2: pbzip2 (one stream per block)", () => {
    const p = run(["pbzip2", "-c", "-b1"], Buffer.concat([whole, whole, whole]));
    const { bytes } = drainPath(tmpFile("pbzip2.bz2", p));
    expect(bytes.equals(Buffer.concat([whole, whole, whole]))).toBe(true);
  });
  peerTest(missingTools("xz"))("lzma: a .lzma file", () => {
    check("one.lzma", run(["xz", "--format=lzma", "-c"], whole), "lzma");
  });
  peerTest(missingTools("zstd"))("zstd frames decoded in the worker's ring, one whose window is larger than the ring among them: the same bytes", () => {
    // 20 MiB whose second half repeats the first 10 MiB back: --long=24 keeps a 16 MiB window, more
    // than the worker's 12 MiB ring can hold, so that frame goes through the streaming decoder
    const half = Buffer.concat(Array.from({ length: 10 }, (_, i) => (i % 2 ? Buffer.alloc(1 << 20, i) : randomBytes(1 << 20))));
    const long = Buffer.concat([half, half]);
    const packed = Buffer.concat([run(["zstd", "-q", "-c", "-1"], whole), run(["zstd", "-q", "-c", "--long=24", "-3"], long), run(["zstd", "-q", "-c", "-19"], whole)]);
    const { bytes, compression } = drainPath(tmpFile("frames.zst", packed));
    expect(compression).toEqual(["zstd"]);
    expect(bytes.equals(Buffer.concat([whole, long, whole]))).toBe(true);
  });
  peerTest(missingTools("gzip", "zstd"))("gzip inside zstd", () => {
    const zst = run(["zstd", "-q", "-c"], run(["gzip", "-c"], whole));
    const { bytes, compression } = drainPath(tmpFile("nested.gz.zst", zst));
    expect(compression).toEqual(["zstd", "gzip"]);
    expect(bytes.equals(whole)).toBe(true);
  });
});

describe("damaged input is an ImageError naming the file", () => {
  for (const [ext, kind] of FIXTURES) {
    const packed = fs.readFileSync(path.join(FIX, `${NTFS}.${ext}`));
    test(`truncated ${kind}`, () => {
      for (const keep of [Math.floor(packed.length / 2), packed.length - 1]) {
        const p = tmpFile(`cut-${keep}.${ext}`, packed.subarray(0, keep));
        const e = expectImageError(() => drainPath(p), new RegExp(`cut-${keep}\\.${ext}: offset [0-9,]+: truncated ${kind} data`));
        expect(e.where.file).toBe(p);
        expect(e.where.offset).toBeLessThanOrEqual(keep);
      }
    });
    test(`corrupt ${kind}`, () => {
      const bad = Buffer.from(packed);
      const at = Math.floor(bad.length / 3);
      for (let i = at; i < at + 64; i++) bad[i] = bad[i]! ^ 0x5a;
      const p = tmpFile(`bad.${ext}`, bad);
      const e = expectImageError(() => drainPath(p), new RegExp(`bad\\.${ext}: offset [0-9,]+: corrupt ${kind} data \\(.+\\)`));
      expect(e.where.file).toBe(p);
    });
  }
  test("gzip followed by garbage", () => {
    const p = tmpFile("trailing.gz", Buffer.concat([fs.readFileSync(path.join(FIX, `${NTFS}.gz`)), Buffer.from("garbage!")]));
    expectImageError(() => drainPath(p), /trailing\.gz: offset [0-9,]+: (corrupt gzip data \((incorrect header check|invalid gzip header)\)|truncated gzip data)/);
  });
  test("a truncated stream is never a silent end, even read a byte at a time", () => {
    const packed = fs.readFileSync(path.join(FIX, `${NTFS}.zst`));
    expectImageError(() => drainSource(createDecoder("zstd", memorySource(packed.subarray(0, 1000), 1, "t.zst"))), /t\.zst: offset [0-9,]+: truncated zstd data/);
  });
});

describe("decoder plumbing", () => {
  test("locate() gives decompressed offsets in the input's file", () => {
    const d = createDecoder("gzip", memorySource(fs.readFileSync(path.join(FIX, `${NTFS}.gz`)), 1 << 20, "x.img.gz"));
    expect(d.locate(1234)).toEqual({ file: "x.img.gz", offset: 1234, decoded: "gzip" });
    expect(d.size).toBeUndefined();
    expect(new ImageError(d.locate(1234), "bad magic").message).toBe("x.img.gz: gzip-decompressed offset 1,234: bad magic");
    d.close();
  });
  test("a missing library names the file, the library and the package", () => {
    const lib = new LazyLibrary("libnothere.so.7", "libnothere7", { f: { args: [], returns: "void" } });
    expect(lib.tryLoad()).toBeUndefined();
    expectImageError(() => lib.load({ file: "x.zst", offset: 0 }, "zstd data"), /^x\.zst: offset 0: zstd data, but libnothere\.so\.7 is not installed \(apt-get install libnothere7\)$/);
  });
  test("a library without one of the symbols counts as missing; the others are bound when first used", () => {
    const partial = new LazyLibrary("libc.so.6", "libc6", { getpid: { args: [], returns: "i32" }, no_such_function_here: { args: [], returns: "void" } });
    expect(partial.tryLoad()).toBeUndefined();
    const libc = new LazyLibrary("libc.so.6", "libc6", { getpid: { args: [], returns: "i32" }, getppid: { args: [], returns: "i32" } });
    const fns = libc.tryLoad()!;
    expect(Object.getOwnPropertyDescriptor(fns, "getpid")!.get).toBeFunction();
    expect(fns.getpid()).toBe(process.pid);
    expect(Object.getOwnPropertyDescriptor(fns, "getpid")!.value).toBeFunction();
    expect(Object.getOwnPropertyDescriptor(fns, "getppid")!.get).toBeFunction();
    expect(fns.getppid()).toBe(process.ppid);
  });
  test("struct layouts match the C headers' sizeof on x86_64", () => {
    // z_stream is also checked by zlib itself (inflateInit2_ gets its size)
    const zStream = structLayout({ a: "ptr", b: "uint", c: "ulong", d: "ptr", e: "uint", f: "ulong", g: ["ptr", 5], h: "int", i: "ulong", j: "ulong" });
    expect(zStream.size).toBe(112);
    expect(zStream.offset.h).toBe(88);
    const bzStream = structLayout({ a: "ptr", b: "uint", c: "uint", d: "uint", e: "ptr", f: "uint", g: "uint", h: "uint", i: ["ptr", 4] });
    expect(bzStream.size).toBe(80);
    expect(bzStream.offset.e).toBe(24);
  });
  test("reads into small and odd-sized buffers", () => {
    const d = createDecoder("xz", memorySource(fs.readFileSync(path.join(FIX, `${NTFS}.xz`))));
    const parts: Buffer[] = [];
    const into = new Uint8Array(4099);
    for (let i = 0; ; i++) {
      const view = into.subarray(i % 7, (i % 7) + 1 + (i % 4096));
      const n = d.read(view);
      if (n === 0) break;
      parts.push(Buffer.from(view.subarray(0, n)));
    }
    d.close();
    expect(sha256(Buffer.concat(parts))).toBe(NTFS_SHA256);
  });
});

describe("xxhash", () => {
  const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
  /** xxhsum prints the canonical (big-endian) form; partclone stores little-endian words */
  const reverse = (h: string) => Buffer.from(h, "hex").reverse().toString("hex");
  const samples = [Buffer.alloc(0), Buffer.from("hello\n"), mixedData(100_000, 9), mixedData(1 << 20, 10)];

  test("known vectors", () => {
    expect(hex(digestXxh64(Buffer.alloc(0)))).toBe(reverse("ef46db3751d8e999"));
    expect(hex(digestXxh128(Buffer.alloc(0)))).toBe(reverse("99aa06d3014798d86001c324468d497f"));
    expect(hex(digestXxh64(Buffer.from("hello\n")))).toBe(reverse("e4c191d091bd8853"));
    expect(hex(digestXxh128(Buffer.from("hello\n")))).toBe(reverse("6bba86c7e069f56d5a10b435f1c8e49c"));
  });
  for (const [algo, flag] of [
    ["XXH64", "-H64"],
    ["XXH128", "-H128"],
  ] as const) {
    peerTest(missingTools("xxhsum"))(`${algo} agrees with xxhsum ${flag}`, () => {
      for (const data of samples) {
        const out = run(["xxhsum", flag, "-"], data);
        const canonical = out.toString().split(/\s+/)[0]!;
        const mine = algo === "XXH64" ? digestXxh64(data) : digestXxh128(data);
        expect(hex(mine)).toBe(reverse(canonical));
      }
    });
    test(`${algo} streaming: pieces, reset, reuse`, () => {
      const s = algo === "XXH64" ? new Xxh64State() : new Xxh128State();
      const out = new Uint8Array(algo === "XXH64" ? 8 : 16);
      for (const data of samples) {
        s.reset();
        for (let at = 0; at < data.length; at += 777) s.update(data.subarray(at, at + 777));
        s.digestInto(out);
        expect(hex(out)).toBe(hex(algo === "XXH64" ? digestXxh64(data) : digestXxh128(data)));
      }
    });
  }
});

describe("crc32c", () => {
  test("the CRC-32C check value (seed ~0, result inverted)", () => {
    for (const { fn } of crc32cImplementations()) expect(~fn(Buffer.from("123456789"), 0xffffffff) >>> 0).toBe(0xe3069283);
  });
  test("every command of a real btrfs send stream (crc32c(0, header with crc zeroed + attributes))", () => {
    const s = fs.readFileSync(path.join(FIX, "full-v1.btrfs-send"));
    expect(s.subarray(0, 13).toString("latin1")).toBe("btrfs-stream\0");
    let commands = 0;
    for (let off = 17; off < s.length; commands++) {
      const len = s.readUInt32LE(off);
      const stored = s.readUInt32LE(off + 6);
      const cmd = Buffer.from(s.subarray(off, off + 10 + len));
      cmd.writeUInt32LE(0, 6);
      expect(crc32c(cmd)).toBe(stored);
      for (const { fn } of crc32cImplementations()) expect(fn(cmd, 0)).toBe(stored);
      off += 10 + len;
    }
    expect(commands).toBeGreaterThan(10);
  });
  test("native and JS agree on every length and alignment, and chain through the seed", () => {
    const data = mixedData(70_000, 5);
    for (const { name, fn } of crc32cImplementations()) {
      for (const [from, len] of [
        [0, 0],
        [1, 1],
        [3, 7],
        [5, 255],
        [7, 4097],
        [0, 70_000],
      ] as const) {
        const piece = data.subarray(from, from + len);
        expect(`${name} ${len}: ${fn(piece, 0x1234567)}`).toBe(`${name} ${len}: ${crc32cJs(piece, 0x1234567)}`);
      }
      expect(fn(data.subarray(40_000), fn(data.subarray(0, 40_000)))).toBe(crc32c(data));
    }
  });
});

describe("zstd decoders share contexts", () => {
  test("a context left mid-frame or after a truncated stream decodes the next stream from its start", () => {
    const a = mixedData(3 << 20, 1);
    const b = mixedData(3 << 20, 2);
    const packedB = zstdCompress(b, 3);
    const first = new ZstdDecoder(memorySource(zstdCompress(a, 3), 4096));
    expect(first.read(new Uint8Array(100_000))).toBeGreaterThan(0);
    first.close();
    const broken = new ZstdDecoder(memorySource(packedB.subarray(0, packedB.length >> 1), 4096));
    expect(() => drainSource(broken)).toThrow(ImageError);
    broken.close();
    for (let i = 0; i < 3; i++) expect(drainSource(new ZstdDecoder(memorySource(packedB, 4096))).equals(b)).toBe(true);
  });
});

describe("decode settings (IMGTOOL_DECODE_MEMORY, IMGTOOL_GZIP) are the CLI's, handed to the decoding threads", () => {
  const zst = path.join(FIX, `${NTFS}.zst`);
  const xz = path.join(FIX, `${NTFS}.xz`);
  const wideWindow = path.join(import.meta.dir, "failure", "bounds", "zstd-data-needs-too-much-memory-to-decode.1-GiB-window.ext4-ptcl-img.zst");
  // the same run with the decoder in a worker thread (the default) and in the main one
  const both = (args: string[], env: Record<string, string>) => [runCli(args, { env }), runCli(args, { env: { ...env, IMGTOOL_THREADS: "0" } })];

  test("in the library: a window over the setting is refused; the default is 128 MiB", () => {
    const saved = decodeSettings();
    try {
      expect(decodeMemoryLimit().text).toBe("128 MiB");
      useDecodeSettings({ gzipWithZlib: false, windowMiB: 1 });
      expect(decodeMemoryLimit().text).toBe("1 MiB");
      expect(() => drainSource(createDecoder("zstd", memorySource(fs.readFileSync(zst))))).toThrow(/needs too much memory to decode.*larger than 1 MiB/);
      useDecodeSettings({ gzipWithZlib: false, windowMiB: 3000 });
      expect(decodeMemoryLimit().text).toBe("2048 MiB");
    } finally {
      useDecodeSettings(saved);
    }
  });

  test("IMGTOOL_DECODE_MEMORY=1 refuses zstd and xz windows over 1 MiB, in a worker thread and without", () => {
    for (const [file, what] of [
      [zst, /zstd data needs too much memory to decode \(the frame's window is larger than 1 MiB/],
      [xz, /xz data needs too much memory to decode \(the xz dictionary needs more than 1 MiB/],
    ] as const) {
      for (const r of both(["verify", file], { IMGTOOL_DECODE_MEMORY: "1" })) {
        expect(r.code).toBe(3);
        expect(r.stderr).toMatch(what);
      }
      for (const r of both(["verify", file], {})) expect(r.code).toBe(0);
    }
  });

  test("IMGTOOL_DECODE_MEMORY=1 refuses a zstd window over 1 MiB for reads at random too: building the index, and through an index built without it", () => {
    const copy = path.join(tmp, "limited.zst");
    fs.copyFileSync(zst, copy);
    const what = /^imgtool: .*limited\.zst: offset 0: zstd data needs too much memory to decode \(the frame's window is larger than 1 MiB/;
    const cat = (env: Record<string, string>) => runCli(["cat", copy, "--offset", "1M", "--length", "4K"], { env });
    for (const r of [cat({ IMGTOOL_DECODE_MEMORY: "1" }), runCli(["index", copy], { env: { IMGTOOL_DECODE_MEMORY: "1" } })]) {
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(what);
    }
    expect(runCli(["index", copy]).code).toBe(0);
    const limited = cat({ IMGTOOL_DECODE_MEMORY: "1" });
    expect(limited.code).toBe(3);
    expect(limited.stderr).toMatch(what);
    expect(cat({}).code).toBe(0);
  });

  test("IMGTOOL_DECODE_MEMORY=1024 lets a 1 GiB zstd window decode, in a worker thread and without", () => {
    for (const r of both(["verify", wideWindow], {})) {
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/larger than 128 MiB; to allow more, set IMGTOOL_DECODE_MEMORY/);
    }
    for (const r of both(["verify", wideWindow], { IMGTOOL_DECODE_MEMORY: "1024" })) {
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
    }
  });

  test.skipIf(!isalUsable())("IMGTOOL_GZIP=zlib decodes gzip with zlib instead of ISA-L (their words for a bad trailer differ)", () => {
    const flipped = Buffer.from(fs.readFileSync(path.join(FIX, `${NTFS}.gz`)));
    flipped[flipped.length - 6]! ^= 1; // inside the trailer's crc32
    const file = path.join(tmp, "trailer-crc.gz");
    fs.writeFileSync(file, flipped);
    for (const r of both(["verify", file], {})) expect(r.stderr).toMatch(/corrupt gzip data \(crc32 or length mismatch in the gzip trailer\)/);
    for (const r of both(["verify", file], { IMGTOOL_GZIP: "zlib" })) expect(r.stderr).toMatch(/corrupt gzip data \(incorrect data check\)/);
  });
  if (!isalUsable()) console.log("skip: IMGTOOL_GZIP=zlib test: ISA-L is not usable here, so gzip is zlib's either way");
});
