import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { imageInfoJson, imageInfoText } from "../src/cli/image-info.ts";
import { ChecksumError } from "../src/errors.ts";
import { openImage } from "../src/formats/detect.ts";
import { detectNtfsclone, openNtfsclone } from "../src/formats/ntfsclone.ts";
import { openStream } from "../src/source/open.ts";
import { errorOf, failureCorpus, FIXTURES, restoredReference, restoreToBuffer, sha256, shellWord, tempDir, throughFifo } from "./helpers.ts";

const FIX = FIXTURES;
const PLAIN = path.join(FIX, "ntfs.ntfsclone-img");
const tmp = tempDir();






describe("ntfsclone fixtures restore to the manifest sha256", () => {
  const want = restoredReference("ntfs.ntfsclone-img");
  const cases: [string, () => string][] = [
    ["plain", () => PLAIN],
    ["gzip", () => path.join(FIX, "ntfs.ntfsclone-img.gz")],
    ["plain from a pipe", () => throughFifo(PLAIN)],
    ["gzip from a pipe", () => throughFifo(path.join(FIX, "ntfs.ntfsclone-img.gz"))],
    [
      "split -b 1M",
      () => {
        const dir = fs.mkdtempSync(path.join(tmp, "split-"));
        spawnSync("split", ["-b", "1M", PLAIN, path.join(dir, "ntfs.ntfsclone-img.")]);
        return path.join(dir, "ntfs.ntfsclone-img.ab");
      },
    ],
  ];
  for (const [name, input] of cases) {
    test(name, () => {
      const img = openImage(input());
      try {
        expect(img.info.format).toBe("ntfsclone");
        expect(img.info.deviceSize).toBe(want.size);
        const out = restoreToBuffer(img);
        expect(sha256(out)).toBe(want.sha256);
        // the bitmap built while streaming agrees with the data
        expect(img.info.usedBlocks).toBe(587);
        expect(img.isUsed(0)).toBe(true);
        expect(img.isUsed(1023)).toBe(true);
      } finally {
        img.close();
      }
    });
  }

  test("info on a regular file reports the header's count and the scan's before any data is read", () => {
    const img = openImage(PLAIN);
    try {
      const info = img.info;
      if (info.format !== "ntfsclone") throw new Error(`an ntfsclone image opened as ${info.format}`);
      expect([info.header.majorVersion, info.header.minorVersion]).toEqual([10, 1]);
      expect(info.header.clusterSize).toBe(4096);
      expect(info.header.nrClusters).toBe(1023);
      expect(info.header.inuse).toBe(586);
      expect(info.scannedClusters).toBe(587);
      expect(info.header.dataOffset).toBe(56);
      expect(img.info.totalBlocks).toBe(1024);
      let used = 0;
      for (const r of img.usedRuns()) used += r.blockCount;
      expect(used).toBe(587);
      expect(sha256(restoreToBuffer(img))).toBe(want.sha256);
    } finally {
      img.close();
    }
  });

  test("from a pipe the scanned count is a fact only once the data has been read", () => {
    const img = openImage(throughFifo(PLAIN));
    try {
      const info = img.info;
      if (info.format !== "ntfsclone") throw new Error(`an ntfsclone image opened as ${info.format}`);
      expect(info.scannedClusters).toBeUndefined();
      // the header's count and the backup boot sector's cluster, until the commands are walked
      expect(info.usedBlocks).toBe(info.header.inuse + 1);
      expect(imageInfoText(info)).toContain("\nused clusters     n/a                   known after the data of a pipe is read\n");
      expect(sha256(restoreToBuffer(img))).toBe(want.sha256);
      expect(info.scannedClusters).toBe(587);
      expect(imageInfoText(info)).toContain("\nused clusters     587 (2.3 MB)          clusters in the image, backup boot sector's included\n");
      expect(imageInfoJson(info).header).toMatchObject({ imageVersion: "10.1", inuse: 586, usedClusters: 587, restoredSize: want.size });
    } finally {
      img.close();
    }
  });

  test("detect looks at the magic only", () => {
    const head = fs.readFileSync(PLAIN).subarray(0, 512);
    expect(detectNtfsclone(head)).toBe(true);
    expect(detectNtfsclone(fs.readFileSync(path.join(FIX, "ext2-z0.partimg.000")).subarray(0, 512))).toBe(false);
  });
});

const hasNtfsclone = spawnSync("sh", ["-c", "command -v ntfsclone"]).status === 0;
describe.skipIf(!hasNtfsclone)("differential: ntfsclone --restore-image -O", () => {
  for (const file of ["ntfs.ntfsclone-img", "ntfs.ntfsclone-img.gz", "old-46.ntfsclone-img"]) {
    test(file, () => {
      let input = path.join(FIX, file);
      if (file === "old-46.ntfsclone-img") input = oldFormatImage();
      const out = path.join(tmp, `${file}.ref`);
      fs.rmSync(out, { force: true });
      const cmd = file.endsWith(".gz") ? `gzip -dc ${shellWord(input)} | ntfsclone --restore-image -O ${shellWord(out)} -` : `ntfsclone --restore-image -O ${shellWord(out)} ${shellWord(input)}`;
      const r = spawnSync("sh", ["-c", cmd], { encoding: "utf8" });
      expect(r.status).toBe(0);
      const ref = fs.readFileSync(out);
      const img = openImage(input);
      try {
        expect(img.info.deviceSize).toBe(ref.length);
        expect(sha256(restoreToBuffer(img))).toBe(sha256(ref));
      } finally {
        img.close();
      }
    });
  }
});

/**
 * The pre-10.0 layout (46-byte header, commands right after it, no backup boot sector) made from
 * the 10.1 fixture: header fields copied, version set to the NTFS version 3.1 as old ntfsclone did,
 * and the last command (the backup boot sector's cluster) dropped.
 */
function oldFormatImage(): string {
  const file = path.join(tmp, "old-46.ntfsclone-img");
  if (fs.existsSync(file)) return file;
  const b = fs.readFileSync(PLAIN);
  const commands = b.subarray(56, b.length - 4097);
  const old = Buffer.concat([b.subarray(0, 46), commands]);
  old[16] = 3;
  old[17] = 1;
  fs.writeFileSync(file, old);
  return file;
}

test("old format (before 10.0): commands at offset 46; the restore ends with the last cluster", () => {
  const img = openImage(oldFormatImage());
  try {
    const info = img.info;
    if (info.format !== "ntfsclone") throw new Error(`an ntfsclone image opened as ${info.format}`);
    expect([info.header.majorVersion, info.header.minorVersion]).toEqual([3, 1]);
    // ntfsclone restores this to 3,334,144 bytes (checked in the differential test)
    expect(img.info.deviceSize).toBe(3334144);
    const out = restoreToBuffer(img);
    const full = restoreToBuffer(openImage(PLAIN));
    expect(sha256(out)).toBe(sha256(full.subarray(0, 3334144)));
  } finally {
    img.close();
  }
});

describe("damaged ntfsclone images: one ImageError naming file, offset and field", () => {
  const good = fs.readFileSync(PLAIN);
  function damaged(name: string, edit: (b: Buffer) => Buffer): string {
    const file = path.join(tmp, name);
    fs.writeFileSync(file, edit(Buffer.from(good)));
    return file;
  }
  /** first command byte after the header (a cluster: the boot sector) */
  const firstCommand = 56;

  const cases: [string, (b: Buffer) => Buffer, RegExp, boolean][] = [
    ["flipped magic", (b) => ((b[3] ^= 0xff), b), /not a partclone, partimage or ntfsclone image/, false],
    ["version from the future", (b) => ((b[16] = 11), b), /offset 16: unsupported ntfsclone image version \(11\.1/, false],
    ["cluster size not a power of two", (b) => ((b[19] ^= 0x01), b), /offset 18: ntfsclone header cluster_size/, false],
    ["device_size below the volume", (b) => (b.writeBigUInt64LE(4096n, 22), b), /offset 22: ntfsclone header device_size is smaller/, false],
    ["nr_clusters negative", (b) => ((b[37] = 0xff), b), /offset 30: ntfsclone header nr_clusters is absurd/, false],
    ["inuse beyond the volume", (b) => (b.writeBigUInt64LE(5000n, 38), b), /offset 38: ntfsclone header inuse exceeds/, false],
    ["offset_to_image_data absurd", (b) => (b.writeUInt32LE(0x7fffffff, 46), b), /offset 46: ntfsclone header offset_to_image_data is absurd/, false],
    ["bad command byte", (b) => ((b[firstCommand] = 0x07), b), /offset 56: bad ntfsclone command byte \(0x07/, true],
    ["bad command byte after a cluster", (b) => ((b[firstCommand + 4097] = 0x02), b), /offset 4,153: bad ntfsclone command byte \(0x02/, true],
    ["gap of zero", (b) => (b.fill(0, firstCommand, firstCommand + 9), b), /offset 56: ntfsclone gap of zero clusters/, true],
    ["truncated inside a cluster", (b) => b.subarray(0, b.length - 100), /truncated ntfsclone cluster/, true],
    ["truncated between commands", (b) => b.subarray(0, firstCommand + 4097 * 3), /truncated ntfsclone image \(the commands end at cluster/, true],
    ["truncated header", (b) => b.subarray(0, 40), /not a partclone, partimage or ntfsclone image|truncated ntfsclone image header/, false],
  ];
  for (const [name, edit, message, inData] of cases) {
    test(name, () => {
      const file = damaged(`${name.replace(/\W+/g, "-")}.ntfsclone-img`, edit);
      const e = errorOf(() => {
        const img = openImage(file);
        try {
          if (inData) restoreToBuffer(img);
          else void img.info.usedBlocks;
        } finally {
          img.close();
        }
      });
      expect(e.message).toContain(file);
      expect(e.message).toMatch(message);
      if (inData) {
        // a pipe gives the same error on the way through the data
        const p = errorOf(() => restoreToBuffer(openNtfsclone(openStream(throughFifo(file)))));
        expect(p.message).toMatch(message);
      }
    });
  }
});

describe("failure fixtures in test/failure/ntfsclone: the file name is the error", () => {
  const corpus = failureCorpus("ntfsclone");
  for (const f of corpus.files) {
    test(f, () => {
      const file = path.join(corpus.dir, f);
      const e = errorOf(() => {
        const img = openImage(file);
        try {
          restoreToBuffer(img);
        } finally {
          img.close();
        }
      });
      expect(e).not.toBeInstanceOf(ChecksumError);
      expect(e.message).toStartWith(`${file}: `);
      expect(e.message).toContain(corpus.expected(f));
      // and the same from a pipe
      expect(errorOf(() => restoreToBuffer(openNtfsclone(openStream(throughFifo(file))))).message).toContain(corpus.expected(f));
    });
  }
});
