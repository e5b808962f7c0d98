// XFS: `extract /` against the kernel's read-only loop mount of the same volume (v5 fixtures), against
// the staged tree mkfs.xfs copied (v4: this kernel may lack CONFIG_XFS_SUPPORT_V4), against the
// Clonezilla folder's recorded tree, and the damaged images of test/failure/fs/*.xfs-ptcl-img.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { treeOf, treeOfDirectory } from "./fs-tree.ts";
import { FIXTURES, fixture, restoredBytes, runCli, seededRandom, tempDir, which } from "./helpers.ts";
import { ImageError } from "../src/errors.ts";
import { FsError, type FsNode } from "../src/fs/filesystem.ts";
import type { Volume } from "../src/volume/volume.ts";
import { type Superblock, inodeChunkAt } from "../src/fs/xfs/superblock.ts";
import { openInputVolume } from "../src/input/input-volume.ts";
import { openFileSystem } from "../src/fs/open.ts";

setDefaultTimeout(180_000);

const isRoot = process.getuid?.() === 0;
const kernelFs = fs.existsSync("/proc/filesystems") ? fs.readFileSync("/proc/filesystems", "utf8") : "";
const mountWhy = !isRoot ? "needs root for a loop mount" : !which("losetup") ? "losetup is missing" : !/\txfs$/m.test(kernelFs) ? "the kernel has no xfs driver" : !which("mkfs.xfs") ? "mkfs.xfs is missing (apt-get install xfsprogs)" : "";

function extract(img: string, into = tempDir()): { dest: string; code: number | null; stderr: string } {
  const dest = path.join(into, "out");
  const r = runCli(["extract", img, "-o", dest]);
  return { dest, code: r.code, stderr: r.stderr };
}

/** Hard-link groups: for every non-directory with more than one name, the other names of its inode. */
function linkGroups(root: string): string[] {
  const byIno = new Map<bigint, string[]>();
  const walk = (dir: string, prefix: string) => {
    for (const name of fs.readdirSync(dir).sort()) {
      const full = path.join(dir, name);
      const st = fs.lstatSync(full, { bigint: true });
      if (st.isDirectory()) walk(full, `${prefix}${name}/`);
      else if (st.nlink > 1n) byIno.set(st.ino, [...(byIno.get(st.ino) ?? []), prefix + name]);
    }
  };
  walk(root, "");
  return [...byIno.values()].map((g) => g.join(" = ")).sort();
}

/** The kernel's view: the image restored (sparse), loop-mounted read-only; `look` runs while it is mounted. */
function withKernelMount<T>(img: string, look: (mnt: string) => T): T {
  const dir = tempDir();
  const vol = path.join(dir, "volume.raw");
  const r = runCli(["restore", img, "-o", vol, "--sparse"]);
  if (r.code !== 0) throw new Error(`restore ${img}: ${r.stderr}`);
  const mnt = path.join(dir, "mnt");
  fs.mkdirSync(mnt);
  const m = Bun.spawnSync(["mount", "-o", "ro,loop,noatime", vol, mnt], { stderr: "pipe" });
  if (m.exitCode !== 0) throw new Error(`mount: ${m.stderr.toString()}`);
  try {
    return look(mnt);
  } finally {
    Bun.spawnSync(["umount", mnt]);
    fs.rmSync(vol, { force: true });
  }
}

const V5_FIXTURES = ["xfs-v5.xfs-ptcl-img.zst", "xfs-v5-1k-dir8k.xfs-ptcl-img.zst"];

if (mountWhy) console.log(`skip: XFS differential tests against the kernel: ${mountWhy}`);
describe.skipIf(mountWhy !== "")("extract / equals the kernel's read-only loop mount (path, type, mode, owner, size, mtime, content, xattrs, hard links)", () => {
  // the destination is an XFS too: ext4 and tmpfs refuse a directory's 700 xattrs
  let scratch: { mnt: string; dir: string } | undefined;
  beforeAll(() => {
    const dir = tempDir();
    const file = path.join(dir, "dest.xfs");
    fs.writeFileSync(file, "");
    fs.truncateSync(file, 1 << 30);
    const mkfs = Bun.spawnSync(["mkfs.xfs", "-q", "-f", file], { stderr: "pipe" });
    if (mkfs.exitCode !== 0) throw new Error(`mkfs.xfs: ${mkfs.stderr.toString()}`);
    const mnt = path.join(dir, "dest");
    fs.mkdirSync(mnt);
    const m = Bun.spawnSync(["mount", "-o", "loop", file, mnt], { stderr: "pipe" });
    if (m.exitCode !== 0) throw new Error(`mount: ${m.stderr.toString()}`);
    scratch = { mnt, dir };
  }, 120_000);
  // unmounting writes back what the tests extracted into it: give it time on a loaded machine
  afterAll(() => {
    if (!scratch) return;
    Bun.spawnSync(["umount", scratch.mnt]);
    fs.rmSync(scratch.dir, { recursive: true, force: true });
  }, 120_000);
  for (const name of V5_FIXTURES) {
    test(name, () => {
      const into = path.join(scratch!.mnt, name);
      fs.mkdirSync(into);
      const x = extract(fixture(name), into);
      expect(x.stderr).not.toContain("imgtool:");
      expect(x.code).toBe(0);
      const { tree, groups } = withKernelMount(fixture(name), (mnt) => ({ tree: treeOfDirectory(mnt, undefined, { xattrs: true }), groups: linkGroups(mnt) }));
      expect(tree.length).toBeGreaterThan(10400);
      expect(treeOfDirectory(x.dest, undefined, { xattrs: true })).toEqual(tree);
      expect(linkGroups(x.dest)).toEqual(groups);
      expect(groups.length).toBeGreaterThan(0);
    });
  }

  test("the reader's own listing (ls/get path, no extraction) equals the kernel's too", () => {
    const input = openInputVolume(fixture("xfs-v5.xfs-ptcl-img.zst"), { command: "ls" });
    try {
      const fsys = openFileSystem(input.volume);
      const ours = treeOf(fsys, { xattrs: true });
      const theirs = withKernelMount(fixture("xfs-v5.xfs-ptcl-img.zst"), (mnt) => treeOfDirectory(mnt, undefined, { xattrs: true }));
      expect(ours).toEqual(theirs);
    } finally {
      input.volume.close();
    }
  });
});

describe("the features each fixture must hold (so that the comparison above covers them)", () => {
  test("xfs-v5: btree data fork, holes, unwritten extents, all xattr forms, remote symlink, bigtime", () => {
    const input = openInputVolume(fixture("xfs-v5.xfs-ptcl-img.zst"), { command: "ls" });
    try {
      const fsys = openFileSystem(input.volume);
      const at = (p: string) => fsys.lookup(new TextEncoder().encode(p))!;
      const sparse = [...fsys.fileExtents(at("/files/sparse.bin"))];
      expect(sparse.length).toBe(2);
      expect([...fsys.fileExtents(at("/files/unwritten-only.bin"))]).toEqual([]);
      expect([...fsys.fileExtents(at("/files/fragmented.bin"))].length).toBe(200);
      expect(at("/files/small.txt").mtime.sec).toBeGreaterThan(2 ** 32);
      expect(at("/files/link-inline").mtime.sec).toBeLessThan(0);
      expect([...fsys.xattrs!(at("/dirs/block"))].length).toBe(700);
      expect([...fsys.xattrs!(at("/files/sparse.bin"))].find((x) => x.value.length === 9000)).toBeDefined();
      expect(fsys.readlink(at("/files/link-remote")).length).toBeGreaterThan(600);
      expect([...fsys.list(at("/dirs/big"))].length).toBe(7000);
      expect(fsys.warnings).toEqual([]);
    } finally {
      input.volume.close();
    }
  });
});

describe("v4 (crc=0, no ftype): extract / equals the tree mkfs.xfs was given (fixtures/xfs-v4.tree.txt; mtimes are mkfs's)", () => {
  test("xfs-v4.xfs-ptcl-img.zst", () => {
    const x = extract(fixture("xfs-v4.xfs-ptcl-img.zst"));
    expect(x.stderr).not.toContain("imgtool:");
    expect(x.code).toBe(0);
    const want = fs.readFileSync(path.join(FIXTURES, "xfs-v4.tree.txt"), "utf8").trimEnd().split("\n").slice(1);
    // lstree.py gives a device's numbers as its content and size 0; treeOfDirectory as its size
    const fromRecorded = (l: string) => {
      const [p, type, mode, owner, size, , nlink, content] = l.split("\t");
      const dev = type === "c" || type === "b";
      return [p, type, mode, owner, dev ? content : type === "d" ? 0 : size, nlink, dev ? "-" : content].join("\t");
    };
    const fromOurs = (l: string) => {
      const [p, type, mode, owner, size, , nlink, content] = l.split("\t");
      return [p, type, mode, owner, size, nlink, content].join("\t");
    };
    expect(treeOfDirectory(x.dest).map(fromOurs)).toEqual(want.map(fromRecorded));
    expect(want.length).toBeGreaterThan(10900);
    // 11,000 files: removed here, so that the run's scratch is cleared within its hook's time
    fs.rmSync(x.dest, { recursive: true, force: true });
  });
});

describe("the Clonezilla folder pub-linuxfs, p2 (XFS v5), extracted straight from the zstd folder", () => {
  test("equals pub-linuxfs.p2.tree.txt, xattrs included", () => {
    const dir = path.join(tempDir(), "pub-linuxfs");
    fs.cpSync(path.join(FIXTURES, "clonezilla", "pub-linuxfs"), dir, { recursive: true });
    for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
    const x = extract(`${dir}@2`);
    expect(x.stderr).not.toContain("imgtool:");
    expect(x.code).toBe(0);
    const want = fs.readFileSync(path.join(FIXTURES, "clonezilla", "pub-linuxfs.p2.tree.txt"), "utf8").trimEnd().split("\n").slice(1);
    const columns = (l: string) => {
      const [p, type, mode, owner, size, mtime, nlink, content, xattrs] = l.split("\t");
      const dev = type === "c" || type === "b";
      return [p, type, mode, isRoot ? owner : "-", dev ? content : type === "d" ? 0 : size, mtime, nlink, dev ? "-" : content, xattrs].join("\t");
    };
    const ours = (l: string) => {
      const [p, type, mode, owner, size, mtime, nlink, content, xattrs] = l.split("\t");
      return [p, type, mode, isRoot ? owner : "-", size, mtime, nlink, content, xattrs].join("\t");
    };
    const escaped = (l: string) => Array.from(Buffer.from(l), (b) => ((b >= 0x20 && b < 0x7f) || b === 9 ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`)).join("");
    expect(treeOfDirectory(x.dest, undefined, { xattrs: true }).map(escaped).map(ours)).toEqual(want.map(columns));
    fs.rmSync(x.dest, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe("damaged XFS (test/failure/fs/*.xfs-ptcl-img): one line naming the path, the volume offset and the problem; the rest extracted; exit 5", () => {
  const dir = path.join(import.meta.dir, "failure", "fs");
  const problems: [RegExp, RegExp][] = [
    [/^bad-AGI-magic\.(d\d)\./, /AG \d+: bad AGI magic 0x58414758/],
    [/^directory-block-crc-mismatch\./, /offset [\d,]+: \/blockdir: directory block of inode \d+ has crc 0x[0-9a-f]+, computed 0x[0-9a-f]+; its entries are skipped/],
    [/^extent-past-the-end-of-the-volume\./, /offset [\d,]+: \/big\.txt: blocks 9,000,000\+5 .* lie outside the 4-AG file system/],
    [/^bmap-btree-loop\./, /offset [\d,]+: \/fragmented\.bin: inode \d+: bmap btree block [\d,]+ is reached twice \(a loop\)/],
  ];
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".xfs-ptcl-img.zst") && !f.startsWith("warning-"));
  test("every damaged image has a problem it must produce", () => {
    expect(files.length).toBe(problems.length);
    for (const f of files) expect(problems.some(([name]) => name.test(f))).toBe(true);
  });
  for (const file of files) {
    test(file, () => {
      const [, problem] = problems.find(([name]) => name.test(file))!;
      const x = extract(path.join(dir, file));
      const lines = x.stderr.trimEnd().split("\n");
      expect(lines[0]).toStartWith(`imgtool: ${path.join(dir, file)}: `);
      expect(lines[0]).toMatch(problem);
      expect(lines.at(-1)).toMatch(/\d+ entries could not be extracted/);
      expect(x.code).toBe(5);
      expect(fs.readFileSync(path.join(x.dest, "keep.txt"), "utf8")).toBe("kept\n");
      expect(fs.readFileSync(path.join(x.dest, "d0", "note.txt"), "utf8")).toBe("in d0\n");
    });
  }

  test("a log with changes not written back: one warning line, the tree as it is on disk", () => {
    const img = path.join(dir, "warning-log-not-replayed.xfs-ptcl-img.zst");
    const x = extract(img);
    expect(x.code).toBe(0);
    const lines = x.stderr.trimEnd().split("\n");
    expect(lines[0]).toBe(`imgtool: ${img}: warning: the log was not replayed: the log holds changes that were not written back (the volume was saved while mounted or after a crash); what was only in the log is not shown`);
    expect(lines.slice(1).join("\n")).not.toContain("imgtool:");
    expect(fs.readFileSync(path.join(x.dest, "keep.txt"), "utf8")).toBe("kept\n");
  });
});

describe("mutated XFS metadata: every problem is an FsError naming an offset; no crash, hang or runaway allocation", () => {
  const MAGICS = new Set(["IN", "XD2B", "XD2D", "XDB3", "XDD3", "BMAP", "BMA3", "IABT", "IAB3", "XAGF", "XAGI", "XARM", "XSLM"]);
  for (const name of ["xfs-v4.xfs-ptcl-img.zst", "xfs-v5.xfs-ptcl-img.zst"]) {
    test(name, () => {
      const base = restoredBytes(fixture(name));
      // metadata found by its magic at sector starts (attribute and da blocks carry theirs at byte 8)
      const targets: number[] = [];
      const ascii = (at: number, n: number) => String.fromCharCode(...base.subarray(at, at + n));
      for (let at = 0; at + 512 <= base.length; at += 256) {
        if (MAGICS.has(ascii(at, 2)) || MAGICS.has(ascii(at, 4)) || [0xfbee, 0x3bee, 0xfebe, 0x3ebe].includes((base[at + 8]! << 8) | base[at + 9]!)) targets.push(at);
      }
      expect(targets.length).toBeGreaterThan(500);
      const random = seededRandom(name.length * 7919);
      const pick = (n: number) => Math.floor(random() * n);
      let damaged = 0;
      for (let m = 0; m < 40; m++) {
        const patches = new Map<number, number>();
        for (let k = 0; k < 1 + pick(6); k++) {
          const at = targets[pick(targets.length)]! + pick(256);
          const width = [1, 2, 4][pick(3)]!;
          for (let i = 0; i < width; i++) patches.set(at + i, random() < 0.3 ? 0xff : pick(256));
        }
        const volume: Volume = {
          size: base.length,
          name: `${name} mutant ${m}`,
          blockSize: 4096,
          read(offset, length) {
            const out = base.slice(offset, offset + length);
            if (out.length !== length) throw new FsError(this.name, offset, "read past the end");
            for (const [at, value] of patches) if (at >= offset && at < offset + length) out[at - offset] = value;
            return out;
          },
          *extents(offset, length) {
            yield { offset, length, data: true };
          },
          close() {},
        };
        const problems: FsError[] = [];
        const started = performance.now();
        try {
          const fsys = openFileSystem(volume);
          const buf = new Uint8Array(1 << 20);
          const walk = (dir: FsNode, depth: number) => {
            for (const e of fsys.list(dir, (err) => problems.push(err))) {
              if (e.damage) {
                problems.push(e.damage);
                continue;
              }
              try {
                if (e.node.kind === "file") {
                  for (let at = 0; at < Math.min(e.node.size, 4 << 20); at += buf.length) fsys.readFile(e.node, at, buf);
                  let runs = 0;
                  for (const _ of fsys.fileExtents(e.node)) if (++runs > 100_000) throw new Error("runaway extents");
                } else if (e.node.kind === "symlink") fsys.readlink(e.node);
                [...(fsys.xattrs?.(e.node) ?? [])];
                if (e.node.kind === "directory" && depth < 20) walk(e.node, depth + 1);
              } catch (err) {
                if (!(err instanceof FsError)) throw err;
                problems.push(err);
              }
            }
          };
          walk(fsys.root(), 0);
        } catch (err) {
          if (!(err instanceof ImageError)) throw err;
          problems.push(err as FsError);
        }
        expect(performance.now() - started).toBeLessThan(30_000);
        for (const p of problems) expect(p.message).toMatch(/offset [\d,]+|inode|AG|log/);
        if (problems.length) damaged++;
      }
      // most mutants hit something the reader notices (crc, magic, counts); on v4 some change data silently
      expect(damaged).toBeGreaterThan(4);
    });
  }
});

describe.skipIf(mountWhy !== "" || !which("xfs_db"))("a volume whose inode btree holds sparse chunks (fixtures/make-xfs-sparse.sh)", () => {
  test("extract / equals the kernel's mount, and the files compared include inodes of chunks xfs_db shows a holemask for", () => {
    const img = fixture("xfs-v5-sparse-inodes.xfs-ptcl-img.zst");
    const x = extract(img);
    expect(x.stderr).not.toContain("imgtool:");
    expect(x.code).toBe(0);
    const { tree, inodes } = withKernelMount(img, (mnt) => {
      const inodes: bigint[] = [];
      for (const d of fs.readdirSync(mnt)) for (const f of fs.readdirSync(path.join(mnt, d))) inodes.push(fs.lstatSync(path.join(mnt, d, f), { bigint: true }).ino);
      return { tree: treeOfDirectory(mnt), inodes };
    });
    expect(treeOfDirectory(x.dest)).toEqual(tree);
    // the chunks with holes, as xfs_db reads the inode btrees of the restored volume
    const vol = path.join(tempDir(), "volume.raw");
    expect(runCli(["restore", img, "-o", vol, "--sparse"]).code).toBe(0);
    const db = (...cmds: string[]) => Bun.spawnSync(["xfs_db", "-r", ...cmds.flatMap((c) => ["-c", c]), vol]).stdout.toString();
    const geometry = /agblklog = (\d+)\s+inopblog = (\d+)/.exec(db("sb 0", "p agblklog inopblog"))!;
    const agInoBits = BigInt(Number(geometry[1]) + Number(geometry[2]));
    const sparse: { first: bigint; holes: number }[] = [];
    for (const ag of [0, 1]) {
      for (const m of db(`agi ${ag}`, "addr root", "p recs").matchAll(/^\d+:\[(\d+),(0x[0-9a-f]+|0),/gm)) {
        if (Number(m[2]) !== 0) sparse.push({ first: (BigInt(ag) << agInoBits) + BigInt(m[1]!), holes: Number(m[2]) });
      }
    }
    expect(sparse.length).toBeGreaterThan(10);
    // a file whose inode is in such a chunk (and, being in use, not in one of its holes)
    const inSparse = inodes.filter((ino) => sparse.some((c) => ino >= c.first && ino < c.first + 64n && !(c.holes & (1 << Number((ino - c.first) / 4n)))));
    expect(inSparse.length).toBeGreaterThan(100);
  });
});

describe("sparse inode chunks: decoding a record", () => {
  test("an inode btree record's holemask marks 4 inodes a bit; the free mask 1 inode a bit", () => {
    const sb = { incompat: 0x2 } as Superblock;
    const leaf = new Uint8Array(16 + 16);
    const v = new DataView(leaf.buffer);
    v.setUint32(16, 128); // startino
    v.setUint16(20, 0x8001); // holes: inodes 0-3 and 60-63
    leaf[22] = 56; // count of inodes with space
    leaf[23] = 1; // freecount
    v.setBigUint64(24, 1n << 10n); // inode 10 free
    const chunk = inodeChunkAt(sb, leaf, 16, 0, 0);
    expect(chunk.startIno).toBe(128);
    expect(chunk.holes).toBe(0xfn | (0xfn << 60n));
    expect(chunk.free).toBe(1n << 10n);
    // without the feature those bytes are part of a 32-bit free count: no holes
    expect(inodeChunkAt({ incompat: 0 } as Superblock, leaf, 16, 0, 0).holes).toBe(0n);
  });
});
