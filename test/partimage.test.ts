import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { ChecksumError } from "../src/errors.ts";
import { openImage } from "../src/formats/detect.ts";
import { byteSum, detectPartimage } from "../src/formats/partimage.ts";
import { errorOf, failureCorpus, FIXTURES, restoredReference, restoreToBuffer, runCli, sha256, tempDir, throughFifo } from "./helpers.ts";

const FIX = FIXTURES;
const Z0 = path.join(FIX, "ext2-z0.partimg.000");
const tmp = tempDir();

/** partimage's own restore of the two-volume set (fixtures/MAKE-extra.md) */
const MULTI = { sha256: "a01316da3605c602db49ad4c024ef5d98d3f3513161e5f9feaf65e48400936d3", size: 4194304 };




function restoreFile(file: string): string {
  const img = openImage(file);
  try {
    return sha256(restoreToBuffer(img));
  } finally {
    img.close();
  }
}


describe("partimage fixtures restore to partimage's own restore", () => {
  const cases: [string, () => string, { sha256: string; size: number }][] = [
    ["z0 (no compression)", () => Z0, restoredReference("ext2-z0.partimg.000")],
    ["z1 (gzip by partimage)", () => path.join(FIX, "ext2-z1.partimg.gz.000"), restoredReference("ext2-z1.partimg.gz.000")],
    ["z0 from a pipe", () => throughFifo(Z0), restoredReference("ext2-z0.partimg.000")],
    ["z1 from a pipe", () => throughFifo(path.join(FIX, "ext2-z1.partimg.gz.000")), restoredReference("ext2-z1.partimg.gz.000")],
    ["two volumes, named by .000", () => path.join(FIX, "ext2mv-z1-V1.partimg.gz.000"), MULTI],
    ["two volumes, named by .001", () => path.join(FIX, "ext2mv-z1-V1.partimg.gz.001"), MULTI],
  ];
  for (const [name, input, want] of cases) {
    test(name, () => {
      const img = openImage(input());
      try {
        expect(img.info.format).toBe("partimage");
        expect(img.info.deviceSize).toBe(want.size);
        expect(sha256(restoreToBuffer(img))).toBe(want.sha256);
      } finally {
        img.close();
      }
    });
  }

  test("info: headers, bitmap count, file-system info and the volumes", () => {
    const img = openImage(path.join(FIX, "ext2mv-z1-V1.partimg.gz.001"));
    try {
      const info = img.info;
      if (info.format !== "partimage") throw new Error(`a partimage image opened as ${info.format}`);
      expect(img.info.fsType).toBe("ext2fs");
      expect(img.info.blockSize).toBe(1024);
      expect(img.info.totalBlocks).toBe(4096);
      expect(img.info.usedBlocks).toBe(1495);
      expect(info.localHeader.usedBlocks).toBe(1495);
      expect(info.localHeader.label).toBe("fxext2mv");
      expect(info.fsInfo?.fs === "ext2" && info.fsInfo.uuid).toBe("0c0e0f00-0000-4000-8000-0000000000e3");
      expect(info.volumeHeader.number).toBe(0);
      expect(img.info.compression).toEqual(["gzip"]);
      expect(img.info.pieces.map((p) => path.basename(p))).toEqual(["ext2mv-z1-V1.partimg.gz.000", "ext2mv-z1-V1.partimg.gz.001"]);
    } finally {
      img.close();
    }
  });

  test("detect and the byte sum", () => {
    expect(detectPartimage(fs.readFileSync(Z0).subarray(0, 512))).toBe(true);
    expect(detectPartimage(fs.readFileSync(path.join(FIX, "ntfs.ntfsclone-img")).subarray(0, 512))).toBe(false);
    const b = Uint8Array.from({ length: 100_003 }, (_, i) => (i * 131 + 7) & 255);
    let plain = 0;
    for (const x of b) plain += x;
    for (const start of [0, 1, 2, 3]) expect(byteSum(b.subarray(start))).toBe(plain - b.subarray(0, start).reduce((s, x) => s + x, 0));
  });
});

describe("missing volumes name the missing file", () => {
  test("the last volume is missing", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "mv-"));
    fs.copyFileSync(path.join(FIX, "ext2mv-z1-V1.partimg.gz.000"), path.join(dir, "set.000"));
    const e = errorOf(() => restoreFile(path.join(dir, "set.000")));
    expect(e.message).toMatch(/set\.001: missing volume of the partimage set/);
  });
  test("the first volume is missing", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "mv-"));
    fs.copyFileSync(path.join(FIX, "ext2mv-z1-V1.partimg.gz.001"), path.join(dir, "set.001"));
    const e = errorOf(() => restoreFile(path.join(dir, "set.001")));
    expect(e.message).toMatch(/set\.000: missing volume of the partimage set/);
  });
  test("a volume from another image", () => {
    const dir = fs.mkdtempSync(path.join(tmp, "mv-"));
    fs.copyFileSync(path.join(FIX, "ext2mv-z1-V1.partimg.gz.000"), path.join(dir, "set.000"));
    const other = Buffer.from(Bun.gunzipSync(fs.readFileSync(path.join(FIX, "ext2mv-z1-V1.partimg.gz.001"))));
    other[100] ^= 0xff; // qwIdentificator
    fs.writeFileSync(path.join(dir, "set.001"), Bun.gzipSync(other));
    const e = errorOf(() => restoreFile(path.join(dir, "set.000")));
    expect(e.message).toMatch(/set\.001: gzip-decompressed offset 100: partimage volume of another image/);
  });
});

describe("damaged partimage images: one error naming file, offset and field", () => {
  const good = fs.readFileSync(Z0);
  // offsets in ext2-z0.partimg.000 (one volume, no MBR): see the layout in src/formats/partimage.ts
  const MAIN = 512;
  const LOCAL = 17164;
  const BITMAP = 33570;
  const INFO = 34626;
  const DATA = 51036;
  const CHECK = DATA + 65536;
  const cases: [string, (b: Buffer) => Buffer, RegExp, "open" | "data", boolean][] = [
    ["volume header magic", (b) => ((b[2] ^= 0x20), b), /not a partclone, partimage or ntfsclone image/, "open", false],
    ["volume header version", (b) => ((b[34] = 0x39), b), /offset 32: partimage image format newer than 0\.6\.1/, "open", false],
    ["main header", (b) => ((b[MAIN + 9600] ^= 0x01), b), /offset 16,896: partimage main header checksum mismatch/, "open", true],
    ["main header checksum", (b) => ((b[MAIN + 16384] ^= 0x01), b), /offset 16,896: partimage main header checksum mismatch/, "open", true],
    ["MBR magic", (b) => ((b[16900] ^= 0x01), b), /offset 16,900: missing partimage MAGIC-BEGIN-MBRBACKUP magic/, "open", false],
    ["local header", (b) => ((b[LOCAL + 40] ^= 0x01), b), /offset 33,548: partimage local header checksum mismatch/, "open", true],
    ["bitmap bit (the data no longer fits)", (b) => ((b[BITMAP + 1000] ^= 0x01), b), /missing partimage MAGIC-BEGIN-TAIL magic \(the data does not end where the bitmap says\)/, "data", false],
    ["bitmap magic", (b) => ((b[BITMAP - 1] ^= 0x01), b), /missing partimage MAGIC-BEGIN-BITMAP magic/, "open", false],
    ["fs info", (b) => ((b[INFO + 5] ^= 0x01), b), /offset 51,010: partimage file system info checksum mismatch/, "open", true],
    ["bitmap past the last block (only the whole-image sum sees it)", (b) => ((b[BITMAP + 1030] ^= 0x01), b), /partimage image checksum mismatch/, "data", true],
    ["data block", (b) => ((b[DATA + 5000] ^= 0x01), b), /offset 116,576: partimage CRC32 mismatch/, "data", true],
    ["local check magic", (b) => ((b[CHECK] ^= 0x01), b), /offset 116,572: missing partimage local check/, "data", false],
    ["local check position", (b) => ((b[CHECK + 8] ^= 0x01), b), /offset 116,580: partimage local check in the wrong place/, "data", false],
    ["tail magic", (b) => ((b[b.length - 16384 - 3] ^= 0x01), b), /missing partimage MAGIC-BEGIN-TAIL magic/, "data", false],
    ["tail sum", (b) => ((b[b.length - 16384] ^= 0x01), b), /partimage image checksum mismatch/, "data", true],
    ["truncated in the data", (b) => b.subarray(0, DATA + 100_000), /\.001: missing volume of the partimage set \(.*\.000 ends and the image continues; .*truncated partimage data/, "data", false],
    ["truncated in the tail", (b) => b.subarray(0, b.length - 100), /\.001: missing volume .*truncated partimage tail/, "data", false],
    ["truncated in the bitmap", (b) => b.subarray(0, BITMAP + 10), /\.001: missing volume .*truncated partimage bitmap/, "open", false],
  ];
  for (const [name, edit, message, when, isChecksum] of cases) {
    test(name, () => {
      const file = path.join(tmp, `${name.replace(/\W+/g, "-")}.000`);
      fs.writeFileSync(file, edit(Buffer.from(good)));
      const e = errorOf(() => restoreFile(file));
      expect(e.message).toContain(path.basename(file));
      expect(e.message).toMatch(message);
      expect(e instanceof ChecksumError).toBe(isChecksum);
      if (when === "open") return;
      // the same through a pipe (which cannot name a next volume)
      expect(errorOf(() => restoreFile(throughFifo(file))).message).toMatch(name.startsWith("truncated") ? /the image continues in volume 001 .*truncated partimage/ : message);
    });
  }

  test("--no-verify skips the sums but not the structure", () => {
    const file = path.join(tmp, "noverify.000");
    const b = Buffer.from(good);
    b[DATA + 5000] ^= 0x01;
    fs.writeFileSync(file, b);
    const img = openImage(file);
    try {
      let n = 0;
      for (const run of img.dataRuns({ verify: false })) n += run.data.length;
      expect(n).toBe(362 * 1024);
    } finally {
      img.close();
    }
  });
});

describe("failure fixtures in test/failure/partimage: the file name is the error (verify and restore, exit 3 or 4, nothing left)", () => {
  const corpus = failureCorpus("partimage");
  for (const f of corpus.files) {
    test(f, () => {
      const file = path.join(corpus.dir, f);
      const out = path.join(tempDir(), "vol.raw");
      for (const args of [["verify", file], ["restore", file, "-o", out]]) {
        const r = runCli(args);
        const lines = r.stderr.trimEnd().split("\n");
        expect(lines).toHaveLength(1);
        expect(lines[0]).toStartWith(`imgtool: ${file}: `);
        expect(lines[0]).toContain(corpus.expected(f));
        expect(r.code).toBe(/checksum|CRC32/.test(f) ? 4 : 3);
        expect(fs.existsSync(out)).toBe(false);
      }
    });
  }
});
