// No silent short volume: an input of any format that ends before its volume does is damaged
// (exit 3, one line naming the offset), plain or compressed, from a file or a pipe, cut anywhere
// from the first data byte to the last byte; restore leaves nothing behind.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ChecksumError } from "../src/errors.ts";
import { openImage } from "../src/formats/detect.ts";
import { errorOf, fixture, runCli, tempDir, which } from "./helpers.ts";

/** Every used block read and checked, as verify and restore read them. */
function readAll(file: string): void {
  const image = openImage(file);
  try {
    for (const _ of image.dataBatches({ verify: true }));
  } finally {
    image.close();
  }
}

/** The error of reading `file` whole: a damaged-input error (exit 3), not a checksum one (exit 4) and not none. */
function shortError(file: string): string {
  const e = errorOf(() => readAll(file));
  expect(e).not.toBeInstanceOf(ChecksumError);
  return e.message;
}

const SUBJECTS = [
  { name: "partclone 0002", file: "ext4.ext4-ptcl-img" },
  { name: "partclone 0001", file: "ext4-v1.ext4-ptcl-img" },
  { name: "partclone 0002 XXH128", file: "ext4-xxh128.ext4-ptcl-img" },
  { name: "partimage", file: "ext2-z0.partimg.000" },
  { name: "ntfsclone", file: "ntfs.ntfsclone-img" },
];

/** where each subject's data starts: cuts before it are header and bitmap cuts, tested elsewhere */
function dataStart(file: string): number {
  const image = openImage(fixture(file));
  try {
    const info = image.info;
    return info.format === "ntfsclone" ? info.header.dataOffset : info.dataStart;
  } finally {
    image.close();
  }
}

/** Cuts through the data, the last blocks and the last bytes. */
function cuts(length: number, start: number): number[] {
  const points = new Set<number>();
  for (let k = 0; k < 8; k++) points.add(start + Math.floor(((length - start) * k) / 8));
  for (const back of [1, 2, 4, 5, 9, 17, 4096, 4097, 4100]) if (length - back > start) points.add(length - back);
  return [...points].sort((a, b) => a - b);
}

const ZSTD = which("zstd");
const compressors: { name: string; suffix: string; make: (b: Uint8Array) => Uint8Array }[] = [
  { name: "gzip", suffix: "gz", make: (b) => Bun.gzipSync(new Uint8Array(b)) },
  ...(ZSTD ? [{ name: "zstd", suffix: "zst", make: (b: Uint8Array) => new Uint8Array(spawnSync("zstd", ["-q", "-c"], { input: b, maxBuffer: 1 << 28 }).stdout) }] : []),
];
if (!ZSTD) console.log("skipped: the zstd cases of test/short-input.test.ts (zstd is not installed)");

describe("an input that ends before its volume does is damaged, for every format", () => {
  for (const s of SUBJECTS) {
    test(`${s.name} (${s.file}): cut anywhere in the data, plain and compressed`, () => {
      const whole = new Uint8Array(fs.readFileSync(fixture(s.file)));
      readAll(fixture(s.file)); // whole, it reads
      const dir = tempDir();
      const points = cuts(whole.length, dataStart(s.file));
      expect(points.length).toBeGreaterThan(10);
      for (const cut of points) {
        const file = path.join(dir, `cut-${cut}-${s.file}`);
        fs.writeFileSync(file, whole.subarray(0, cut));
        expect(shortError(file)).toContain(`${file}: offset `);
        fs.rmSync(file);
      }
      // the cut image compressed whole, and the whole image's compressed stream cut
      for (const c of compressors) {
        for (const cut of [points[1]!, points[points.length - 1]!]) {
          const file = path.join(dir, `cut-${cut}-${s.file}.${c.suffix}`);
          fs.writeFileSync(file, c.make(whole.subarray(0, cut)));
          expect(shortError(file)).toContain(`${file}: ${c.name}-decompressed offset `);
        }
        const packed = c.make(whole);
        for (const cut of [Math.floor(packed.length / 2), packed.length - 1]) {
          const file = path.join(dir, `packed-cut-${cut}-${s.file}.${c.suffix}`);
          fs.writeFileSync(file, packed.subarray(0, cut));
          expect(shortError(file)).toContain(file);
        }
      }
    });
  }
});

describe("verify and restore of a short input: exit 3, one line with the offset, nothing left behind", () => {
  // the cut: the last command of ntfs.ntfsclone-img, the backup boot sector's cluster, gone
  const cases = [
    ...SUBJECTS.map((s) => ({ file: s.file, cut: fs.statSync(fixture(s.file)).size - 1, what: "" })),
    { file: "ntfs.ntfsclone-img", cut: 2400934, what: "offset 2,400,934: truncated ntfsclone image (the backup boot sector's cluster 1,023 is missing" },
  ];
  for (const c of cases) {
    test(`${c.file} cut at ${c.cut}: from a file and from a pipe`, () => {
      const dir = tempDir();
      const file = path.join(dir, `short-${c.file}`);
      fs.writeFileSync(file, fs.readFileSync(fixture(c.file)).subarray(0, c.cut));
      const out = path.join(dir, "vol.raw");
      for (const [args, stdinFile, name] of [
        [["verify", file], undefined, file],
        [["restore", file, "-o", out], undefined, file],
        [["restore", file, "-o", out, "--sparse"], undefined, file],
        [["restore", "-", "-o", out], file, "stdin"],
      ] as const) {
        const r = runCli([...args], { stdinFile });
        const lines = r.stderr.trimEnd().split("\n");
        expect(lines).toHaveLength(1);
        // a partimage volume that ends early may be one of a set whose next volume is missing: it says both
        expect(lines[0]).toStartWith(c.file.includes(".partimg.") ? "imgtool: " : `imgtool: ${name}: offset `);
        expect(lines[0]).toMatch(/: offset [\d,]+: /);
        expect(lines[0]).toContain(c.what);
        expect(r.code).toBe(3);
        expect(fs.readdirSync(dir)).toEqual([path.basename(file)]);
      }
    });
  }
});
