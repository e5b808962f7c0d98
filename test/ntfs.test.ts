import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { openImage } from "../src/formats/detect.ts";
import { FsError } from "../src/fs/filesystem.ts";
import { openNtfs } from "../src/fs/ntfs.ts";
import { imageVolume, type Volume } from "../src/volume/volume.ts";
import { treeOf, treeOfDirectory } from "./fs-tree.ts";
import { fixture, runCli, tempDir } from "./helpers.ts";

const RICH = "ntfs-rich.ntfs-ptcl-img";
const haveNtfs3g = spawnSync("ntfs-3g", ["--version"]).error === undefined;
const isRoot = process.getuid?.() === 0;
const canMount = haveNtfs3g && isRoot && fs.existsSync("/dev/fuse");

function openFixture(name: string) {
  return openNtfs(imageVolume(openImage(fixture(name))));
}

describe("NTFS through libntfs-3g, read from the image", () => {
  test("the rich fixture lists as ntfs-3g listed it when it was made", () => {
    const fsys = openFixture(RICH);
    try {
      const want = fs.readFileSync(fixture(`${RICH}.tree.txt`), "utf8").trimEnd().split("\n").slice(1);
      expect(treeOf(fsys).map(withoutOwner)).toEqual(want.map(withoutOwner));
    } finally {
      fsys.close();
    }
  });

  test("hard links, named streams, holes, compressed data, Interix and reparse symlinks", () => {
    const fsys = openFixture(RICH);
    try {
      const at = (p: string) => fsys.lookup(new TextEncoder().encode(p))!;
      const hello = at("/docs/hello.txt");
      expect(hello.links).toBe(2);
      expect(at("/docs/hello-link.txt").id).toBe(hello.id);
      expect([...fsys.streams!(hello)].map((s) => [new TextDecoder().decode(s.name), s.size])).toEqual([["stream1", 11]]);
      const sparse = at("/docs/sparse.bin");
      expect([...fsys.fileExtents(sparse)]).toEqual([
        { offset: 409600, length: 8192 },
        { offset: 3145728, length: 5 },
      ]);
      expect(new TextDecoder().decode(fsys.readlink(at("/docs/sym-rel")))).toBe("hello.txt");
      expect(new TextDecoder().decode(fsys.readlink(at("/comp/reparse-sym")))).toBe("../docs/hello.txt");
      expect(new TextDecoder().decode(fsys.readlink(at("/comp/junction")))).toBe("/docs/deep");
      expect(at("/docs/null")).toMatchObject({ kind: "char-device", rdev: { major: 1, minor: 3 } });
      expect(at("/docs/fifo").kind).toBe("fifo");
      expect(at("/nothing/here")).toBeUndefined();
      expect(at("/docs/hello.txt/x")).toBeUndefined();
      expect(at("/Ünïcødé – 日本語/ファイル.txt").size).toBe(7);
    } finally {
      fsys.close();
    }
  });

  test("a read of a file in the middle gives the same bytes as reading it whole", () => {
    const fsys = openFixture(RICH);
    try {
      const gpl = fsys.lookup(new TextEncoder().encode("/comp/gpl.txt"))!;
      const whole = new Uint8Array(gpl.size);
      expect(fsys.readFile(gpl, 0, whole)).toBe(gpl.size);
      const part = new Uint8Array(10_000);
      expect(fsys.readFile(gpl, 123_457, part)).toBe(10_000);
      expect(part).toEqual(whole.subarray(123_457, 133_457));
      expect(fsys.readFile(gpl, gpl.size - 5, part)).toBe(5);
      expect(fsys.readFile(gpl, gpl.size, part)).toBe(0);
    } finally {
      fsys.close();
    }
  });

  test("a damaged MFT record is one entry's problem, named, and the rest still lists", () => {
    const clean = openFixture(RICH);
    const victim = clean.lookup(new TextEncoder().encode("/docs/random.bin"))!;
    const mftOffset = mftRecordOffset(clean.volume, victim.id);
    clean.close();
    const volume = imageVolume(openImage(fixture(RICH)));
    const damaged: Volume = {
      ...volume,
      read(offset, length) {
        const bytes = volume.read(offset, length);
        // break the record's update sequence array (its fixup), as a torn write would
        const at = mftOffset + 510 - offset;
        if (at >= 0 && at < bytes.length) bytes[at] ^= 0xff;
        return bytes;
      },
    };
    const fsys = openNtfs(damaged);
    try {
      const docs = fsys.lookup(new TextEncoder().encode("/docs"))!;
      const entries = [...fsys.list(docs)];
      const bad = entries.find((e) => new TextDecoder().decode(e.name) === "random.bin")!;
      expect(bad.damage).toBeInstanceOf(FsError);
      expect(bad.damage!.message).toContain(`inode ${victim.id}`);
      expect(entries.filter((e) => !e.damage).length).toBe(entries.length - 1);
    } finally {
      fsys.close();
    }
  });

  test("a volume that is not NTFS is refused in one line", () => {
    const image = openImage(fixture("ext4.ext4-ptcl-img"));
    expect(() => openNtfs(imageVolume(image))).toThrow(/not an NTFS file system/);
    image.close();
  });
});

describe.skipIf(!canMount)("NTFS: the same tree as ntfs-3g's own mount of the restored volume", () => {
  const dir = tempDir();
  for (const name of [RICH, "ntfs.ntfs-ptcl-img.aa", "ntfs.ntfsclone-img"]) {
    test(name, () => {
      const raw = path.join(dir, `${name}.raw`);
      expect(runCli(["restore", fixture(name), "-o", raw, "--sparse"]).code).toBe(0);
      const mnt = path.join(dir, `${name}.mnt`);
      fs.mkdirSync(mnt);
      const m = spawnSync("ntfs-3g", ["-o", "ro", raw, mnt], { encoding: "utf8" });
      expect(m.status).toBe(0);
      let theirs: string[];
      try {
        theirs = treeOfDirectory(mnt, mnt);
      } finally {
        spawnSync("umount", [mnt]);
      }
      const fsys = openFixture(name);
      try {
        expect(treeOf(fsys)).toEqual(theirs);
      } finally {
        fsys.close();
      }
    });
  }
});
if (!canMount) console.log(`skip: NTFS differential tests need ${!haveNtfs3g ? "ntfs-3g (apt-get install ntfs-3g)" : "root and /dev/fuse"}`);

function withoutOwner(line: string): string {
  const cols = line.split("\t");
  cols[3] = "-";
  return cols.join("\t");
}

/** Byte offset of MFT record `n` in an NTFS volume whose $MFT's first run holds it. */
function mftRecordOffset(volume: Volume, n: number): number {
  const boot = new DataView(volume.read(0, 512).buffer);
  const cluster = boot.getUint16(11, true) * boot.getUint8(13);
  const mftLcn = Number(boot.getBigUint64(0x30, true));
  const clustersPerRecord = boot.getInt8(0x40);
  const recordSize = clustersPerRecord > 0 ? clustersPerRecord * cluster : 2 ** -clustersPerRecord;
  return mftLcn * cluster + n * recordSize;
}
