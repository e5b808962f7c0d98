import { describe, expect, setDefaultTimeout, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { badName } from "../src/fs/extract.ts";
import { shortNameDecoder } from "../src/fs/fat.ts";
import { escapeName } from "../src/fs/listing.ts";
import { treeOfDirectory } from "./fs-tree.ts";
import { FIXTURES, fixture, runCli, tempDir, which } from "./helpers.ts";

// each test runs the CLI a few times on a machine shared with others
setDefaultTimeout(60_000);

const isRoot = process.getuid?.() === 0;
const losetup = which("losetup");
const debugfs = which("debugfs");
const mcopy = which("mcopy");
const enc = new TextEncoder();
const O_NOATIME = 0o1000000;
const kernelFileSystems = fs.existsSync("/proc/filesystems") ? fs.readFileSync("/proc/filesystems", "utf8") : "";

/** Every fixture with a file system ls/get/extract read: ext2/3/4 and vfat partclone images, uncompressed partimage. */
const FS_FIXTURES = fs.readdirSync(FIXTURES).filter((f) => /\.(ext[234]|vfat)-ptcl-img$|-z0\.partimg\.000$/.test(f)).sort();

interface Entry {
  type: string;
  size?: number;
  sha256?: string;
  target?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtimeNs?: bigint;
  atimeNs?: bigint;
  rdev?: bigint;
  /** the first path (in sorted order) of the same inode, for hard links */
  linkGroup?: string;
}

interface SnapshotOptions {
  modes?: boolean;
  owners?: boolean;
  mtimes?: boolean;
  atimes?: boolean;
  links?: boolean;
  /** permission bits the reference tool keeps (debugfs rdump: no set-id or sticky bits) */
  modeMask?: number;
  /** file types the reference tool cannot make (debugfs rdump: devices, fifos) */
  skipTypes?: string[];
  /** symlink targets starting with this lose it (ntfs-3g puts its mount point before a junction's target) */
  targetPrefix?: string;
}

/** The tree under `root` as path (bytes as latin1) → what the differential compares. */
function snapshot(root: string, o: SnapshotOptions): Map<string, Entry> {
  const out = new Map<string, Entry>();
  const inodes = new Map<bigint, string>();
  const walk = (dir: Buffer, rel: string) => {
    const names = (fs.readdirSync(dir, { encoding: "buffer" }) as Buffer[]).sort(Buffer.compare);
    for (const name of names) {
      const full = Buffer.concat([dir, Buffer.from("/"), name]);
      const p = `${rel}/${Buffer.from(name).toString("latin1")}`;
      const st = fs.lstatSync(full, { bigint: true });
      const type = st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isSymbolicLink() ? "symlink" : st.isFIFO() ? "fifo" : st.isCharacterDevice() ? "chr" : st.isBlockDevice() ? "blk" : "socket";
      if (o.skipTypes?.includes(type)) continue;
      const e: Entry = { type };
      if (type === "file") {
        e.size = Number(st.size);
        // O_NOATIME: reading must not move the atime of a hard link's other name still to be compared
        const fd = fs.openSync(full, fs.constants.O_RDONLY | O_NOATIME);
        e.sha256 = new Bun.CryptoHasher("sha256").update(fs.readFileSync(fd)).digest("hex");
        fs.closeSync(fd);
      }
      if (type === "symlink") {
        e.target = (fs.readlinkSync(full, { encoding: "buffer" }) as Buffer).toString("latin1");
        if (o.targetPrefix && e.target.startsWith(o.targetPrefix)) e.target = e.target.slice(o.targetPrefix.length);
      }
      if (o.modes && type !== "symlink") e.mode = Number(st.mode) & (o.modeMask ?? 0o7777);
      if (o.owners) {
        e.uid = Number(st.uid);
        e.gid = Number(st.gid);
      }
      if (o.mtimes && type !== "symlink") e.mtimeNs = st.mtimeNs;
      if (o.atimes && type !== "symlink" && type !== "dir") e.atimeNs = st.atimeNs;
      if (type === "chr" || type === "blk") e.rdev = st.rdev;
      if (o.links && type !== "dir") {
        const first = inodes.get(st.ino);
        if (first === undefined) inodes.set(st.ino, p);
        e.linkGroup = first ?? p;
      }
      out.set(p, e);
      if (type === "dir") walk(full, p);
    }
  };
  walk(Buffer.from(root), "");
  return out;
}

function expectSameTree(got: Map<string, Entry>, want: Map<string, Entry>): void {
  expect([...got.keys()]).toEqual([...want.keys()]);
  for (const [p, w] of want) expect({ path: p, ...got.get(p) }).toEqual({ path: p, ...w });
}

function extract(img: string, ...extra: string[]): { dest: string; code: number | null; stderr: string } {
  const dest = path.join(tempDir(), "out");
  const r = runCli(["extract", img, ...extra, "-o", dest]);
  return { dest, code: r.code, stderr: r.stderr };
}

function restoreVolume(img: string): string {
  const vol = path.join(tempDir(), "volume.raw");
  const r = runCli(["restore", img, "-o", vol, "--sparse"]);
  if (r.code !== 0) throw new Error(`restore ${img}: ${r.stderr}`);
  return vol;
}

/** The tree the kernel shows for the restored volume, mounted read-only through a loop device. */
function kernelTree(vol: string, isFat: boolean, o: SnapshotOptions): Map<string, Entry> {
  const mnt = path.join(tempDir(), "mnt");
  fs.mkdirSync(mnt);
  const opts = `ro,loop,noatime${isFat ? ",umask=022,shortname=mixed,iocharset=utf8" : ""}`;
  const m = Bun.spawnSync(["mount", "-o", opts, vol, mnt], { stderr: "pipe" });
  if (m.exitCode !== 0) throw new Error(`mount: ${m.stderr.toString()}`);
  try {
    return snapshot(mnt, o);
  } finally {
    Bun.spawnSync(["umount", mnt]);
  }
}

const kernelWhy = !isRoot ? "needs root for a loop mount" : !losetup ? "losetup is missing" : "";
const kernelFsWhy = (isFat: boolean) => (isFat && !/\tvfat$/m.test(kernelFileSystems) ? "the kernel has no vfat driver loaded" : !isFat && !/\text4$/m.test(kernelFileSystems) ? "the kernel has no ext4 driver" : "");

describe("extract / gives the tree the kernel's loop mount shows (modes, owners, times, links)", () => {
  for (const name of FS_FIXTURES) {
    const isFat = name.includes("vfat");
    const why = kernelWhy || kernelFsWhy(isFat);
    test.skipIf(why !== "")(`${name}${why ? ` (skipped: ${why})` : ""}`, () => {
      const o: SnapshotOptions = { modes: true, owners: true, mtimes: true, atimes: !isFat, links: true };
      const want = kernelTree(restoreVolume(fixture(name)), isFat, o);
      const x = extract(fixture(name));
      expect(x.stderr).not.toContain("imgtool:");
      expect(x.code).toBe(0);
      expectSameTree(snapshot(x.dest, o), want);
    }, 60_000);
  }
});

const ntfs3gWhy = !isRoot ? "needs root for a FUSE mount" : !which("ntfs-3g") ? "ntfs-3g is missing (apt-get install ntfs-3g)" : !fs.existsSync("/dev/fuse") ? "no /dev/fuse" : "";

describe("extract / of NTFS gives the tree ntfs-3g's own mount of the restored volume shows", () => {
  for (const name of ["ntfs-rich.ntfs-ptcl-img", "ntfs.ntfs-ptcl-img.aa", "ntfs.ntfsclone-img"]) {
    test.skipIf(ntfs3gWhy !== "")(`${name}${ntfs3gWhy ? ` (skipped: ${ntfs3gWhy})` : ""}`, () => {
      const mnt = path.join(tempDir(), "mnt");
      fs.mkdirSync(mnt);
      const m = Bun.spawnSync(["ntfs-3g", "-o", "ro", restoreVolume(fixture(name)), mnt], { stderr: "pipe" });
      if (m.exitCode !== 0) throw new Error(`ntfs-3g: ${m.stderr.toString()}`);
      const o: SnapshotOptions = { modes: true, owners: true, mtimes: true, links: true, targetPrefix: mnt };
      let want: Map<string, Entry>;
      try {
        want = snapshot(mnt, o);
      } finally {
        Bun.spawnSync(["umount", mnt]);
      }
      const x = extract(fixture(name));
      expect(x.stderr).not.toContain("imgtool:");
      expect(x.code).toBe(0);
      expectSameTree(snapshot(x.dest, o), want);
    }, 60_000);
  }
});

describe("extract / gives the tree debugfs rdump / mtools mcopy give from the restored volume", () => {
  for (const name of FS_FIXTURES) {
    const isFat = name.includes("vfat");
    const why = isFat ? (!mcopy ? "mtools is not installed (apt-get install mtools)" : "") : !debugfs ? "debugfs is missing (apt-get install e2fsprogs)" : "";
    test.skipIf(why !== "")(`${name}${why ? ` (skipped: ${why})` : ""}`, () => {
      const vol = restoreVolume(fixture(name));
      const ref = path.join(tempDir(), "ref");
      fs.mkdirSync(ref);
      // rdump makes hard links copies and skips devices and fifos; mcopy keeps no modes
      const r = isFat
        ? Bun.spawnSync([mcopy!, "-s", "-p", "-m", "-i", vol, "::/", `${ref}/`], { stderr: "pipe", env: { ...process.env, LC_ALL: "C.UTF-8" } })
        : Bun.spawnSync([debugfs!, "-R", `rdump / ${ref}`, vol], { stderr: "pipe" });
      expect(r.exitCode).toBe(0);
      const o: SnapshotOptions = isFat ? { mtimes: true } : { modes: true, modeMask: 0o777, skipTypes: ["fifo", "chr", "blk", "socket"] };
      const x = extract(fixture(name));
      expect(x.code).toBe(0);
      if (!isFat) trimInlineDataPadding(ref, x.dest);
      const want = snapshot(ref, o);
      if (isFat) want.forEach((e) => e.type === "dir" && delete e.mtimeNs); // mcopy -m sets no directory times
      const got = snapshot(x.dest, o);
      if (isFat) got.forEach((e) => e.type === "dir" && delete e.mtimeNs);
      expectSameTree(got, want);
    }, 60_000);
  }
});

/**
 * debugfs 1.47.0 dumps an inline-data file shorter than 60 bytes as all 60 bytes of i_block (the
 * kernel shows its i_size, and the kernel differential above checks that): cut such files of the
 * reference back to the extracted size when the rest is zeros.
 */
function trimInlineDataPadding(ref: string, extracted: string): void {
  const walk = (rel: Buffer) => {
    const dir = Buffer.concat([Buffer.from(ref), rel]);
    for (const n of fs.readdirSync(dir, { encoding: "buffer" }) as Uint8Array[]) {
      const r = Buffer.concat([rel, Buffer.from("/"), n]);
      const p = Buffer.concat([Buffer.from(ref), r]);
      const st = fs.lstatSync(p);
      if (st.isDirectory()) walk(r);
      if (!st.isFile() || st.size !== 60) continue;
      const mine = Buffer.concat([Buffer.from(extracted), r]);
      if (!fs.existsSync(mine)) continue;
      const a = fs.readFileSync(p);
      const b = fs.readFileSync(mine);
      if (b.length < 60 && a.subarray(0, b.length).equals(b) && a.subarray(b.length).every((x) => x === 0)) fs.truncateSync(p, b.length);
    }
  };
  walk(Buffer.alloc(0));
}

describe("extract DIR@N of the real Clonezilla folders gives every file of the original partition (fixtures/clonezilla/*.pN.tree.txt)", () => {
  // pub-linuxfs: each of its file systems has its own test (exFAT: test/exfat.test.ts), comparing the columns that mean something there
  const trees = fs.readdirSync(path.join(FIXTURES, "clonezilla")).filter((f) => /\.p\d+\.tree\.txt$/.test(f) && !f.startsWith("pub-linuxfs."));
  for (const tree of trees) {
    const [, folder, n] = /^(.*)\.p(\d+)\.tree\.txt$/.exec(tree)!;
    test(`${folder}@${n}`, () => {
      const lines = fs.readFileSync(path.join(FIXTURES, "clonezilla", tree), "utf8").trimEnd().split("\n").slice(1);
      const dir = path.join(tempDir(), folder!);
      // a copy: the seek indexes of the compressed partition images are written beside them
      fs.cpSync(path.join(FIXTURES, "clonezilla", folder!), dir, { recursive: true });
      for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
      const x = extract(`${dir}@${n}`);
      // warnings are not failures (pub-linuxfs@3: a tree block partclone left out, rebuilt)
      expect(x.stderr.replace(/^imgtool: .*: warning: .*\n/gm, "")).not.toContain("imgtool:");
      expect(x.code).toBe(0);
      const isFat = lines.some((l) => l.startsWith("zstd\t"));
      const isNtfs = lines[0]!.split("\t")[2] === "0777";
      const dirLinksOne = lines.some((l) => /^[^\t]*\td\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t1\t/.test(l));
      // FAT: mtools set the rest; NTFS and btrfs: ntfs-3g and btrfs count a directory's links as 1
      const columns = (l: string) => {
        const [p, type, mode, owner, size, mtime, nlink, content] = l.split("\t");
        if (isFat) return [p, type, size, content].join("\t");
        // a device's numbers: lstree.py writes them as the content (size 0), treeOfDirectory as the size
        const dev = type === "c" || type === "b" ? (size!.includes(",") ? size : content) : undefined;
        return [p, type, mode, isRoot ? owner : "-", dev ?? size, mtime, type === "d" && (isNtfs || dirLinksOne) ? "-" : nlink, dev ? "-" : content].join("	");
      };
      // the recorded trees write bytes outside printable ASCII as \xNN
      const escaped = (l: string) => Array.from(Buffer.from(l), (b) => (b >= 0x20 && b < 0x7f) || b === 9 ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`).join("");
      expect(treeOfDirectory(x.dest).map(escaped).map(columns)).toEqual(lines.map(columns));
    }, 60_000);
  }
});

describe("ext4 features (fixtures/ext4-features.ext4-ptcl-img)", () => {
  const img = fixture("ext4-features.ext4-ptcl-img");

  test("sparse file: holes stay holes, data where it was", () => {
    const x = extract(img, "/sparse.bin");
    expect(x.code).toBe(0);
    const file = path.join(x.dest, "sparse.bin");
    const st = fs.statSync(file);
    expect(st.size).toBe(12 * 1024 * 1024 + 4);
    expect(st.blocks * 512).toBeLessThan(64 * 1024);
    const data = fs.readFileSync(file);
    expect(data.subarray(0, 8).toString()).toBe("headhead");
    expect(data.subarray(5 * 1024 * 1024, 5 * 1024 * 1024 + 6).toString()).toBe("middle");
    expect(data.subarray(-4).toString()).toBe("tail");
    expect(data.subarray(4096, 5 * 1024 * 1024).every((b) => b === 0)).toBe(true);
  });

  test("hard links come out as links; special files, symlinks, set-id and sticky bits, non-UTF-8 names as bytes", () => {
    const x = extract(img);
    expect(x.code).toBe(0);
    const a = fs.statSync(path.join(x.dest, "linked-a"));
    const b = fs.statSync(path.join(x.dest, "dir/linked-b"));
    expect(a.ino).toBe(b.ino);
    expect(a.nlink).toBe(2);
    expect(fs.lstatSync(path.join(x.dest, "fifo")).isFIFO()).toBe(true);
    expect(fs.readlinkSync(path.join(x.dest, "fast-link"))).toBe("small.txt");
    expect(fs.readlinkSync(path.join(x.dest, "slow-link"))).toBe(`/${"long-target-component/".repeat(12)}end`);
    expect(fs.statSync(path.join(x.dest, "small.txt")).mode & 0o7777).toBe(0o4755);
    expect(fs.statSync(path.join(x.dest, "dir")).mode & 0o7777).toBe(0o1777);
    const st = fs.statSync(path.join(x.dest, "small.txt"), { bigint: true });
    // mkfs.ext4 -d copies whole seconds; nanoseconds are compared with the kernel on its own files (/kernel-htree)
    expect(st.mtimeNs).toBe(1500000000000000000n);
    expect(st.atimeNs).toBe(1600000000000000000n);
    const names = fs.readdirSync(x.dest, { encoding: "buffer" }) as Buffer[];
    expect(names.some((n) => Buffer.from(n).equals(Buffer.from([...enc.encode("name-"), 0xff, 0xfe, ...enc.encode("-not-utf8")])))).toBe(true);
    expect(fs.readdirSync(path.join(x.dest, "many")).length).toBe(3000);
    expect(fs.readdirSync(path.join(x.dest, "kernel-htree")).length).toBe(2500);
    expect(fs.readFileSync(path.join(x.dest, "medium.txt"), "utf8")).toBe(`${"x".repeat(100)}\n`);
    if (isRoot) {
      expect(fs.lstatSync(path.join(x.dest, "chardev")).isCharacterDevice()).toBe(true);
      expect(fs.statSync(path.join(x.dest, "medium.txt")).uid).toBe(1234);
    }
  });

  test("get writes one file to stdout, follows symlinks inside the image, refuses a directory", () => {
    const r = runCli(["get", img, "/small.txt"]);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe("inline data fits in the inode\n");
    expect(runCli(["get", img, "/fast-link"]).stdout.toString()).toBe("inline data fits in the inode\n");
    expect(runCli(["get", img, "/many/file-02999-with-a-longer-name.txt"]).stdout.toString()).toBe("2999\n");
    const dir = runCli(["get", img, "/dir"]);
    expect(dir.code).toBe(2);
    expect(dir.stderr).toBe(`imgtool: ${img}: /dir: is a directory; use imgtool extract IMG /dir -o DEST\n`);
    const missing = runCli(["get", img, "/nope"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("/nope: no such file");
  });

  test("ls -l escapes names like ls -b, shows devices and link targets; --json gives base64 for non-UTF-8 names", () => {
    const r = runCli(["ls", img, "-l"]);
    expect(r.code).toBe(0);
    const out = r.stdout.toString();
    expect(out).toContain(" name-\\377\\376-not-utf8\n");
    expect(out).toMatch(/^crw-r--r-- +1 +0 +0 +1, 3 .* chardev$/m);
    expect(out).toMatch(/^-rwsr-xr-x +1 +0 +0 +30 2017-07-14 \d\d:\d\d small.txt$/m);
    expect(out).toContain("fast-link -> small.txt\n");
    const j = JSON.parse(runCli(["ls", img, "--json"]).stdout.toString()) as Record<string, unknown>[];
    const odd = j.find((e) => typeof e.name_base64 === "string")!;
    expect(Buffer.from(odd.name_base64 as string, "base64")).toEqual(Buffer.from([...enc.encode("name-"), 0xff, 0xfe, ...enc.encode("-not-utf8")]));
    expect(j.find((e) => e.name === "medium.txt")).toMatchObject({ type: "file", size: 101, uid: 1234, gid: 5678, mode: 0o644 });
    const raw = runCli(["ls", img, "/dir", "-R"]).stdout.toString();
    expect(raw.split("\n").sort()).toEqual(["", "linked-b", "sub", "sub/deep.txt"].sort());
  });
});

test("FAT: modes as Linux's vfat shows them with umask 022 (read-only attribute clears the write bits), long and case-flagged names", () => {
  const x = extract(fixture("fat32.vfat-ptcl-img"), "/sub");
  expect(x.code).toBe(0);
  const sub = path.join(x.dest, "sub");
  expect(fs.statSync(path.join(sub, "ro.txt")).mode & 0o7777).toBe(0o555);
  expect(fs.statSync(path.join(sub, "lower.txt")).mode & 0o7777).toBe(0o755);
  expect(fs.statSync(sub).mode & 0o7777).toBe(0o755);
  expect(fs.readdirSync(sub).sort()).toEqual(["Long File Name With Spaces.txt", "MiXeD.TxT", "README", "deeper", "lower.txt", "ro.txt", "ünïcødé-名前.txt"].sort());
  expect(fs.statSync(path.join(sub, "README")).mtime.getTime()).toBe(new Date(2021, 2, 4, 5, 6, 8).getTime());
  const bad = runCli(["ls", fixture("fat32.vfat-ptcl-img"), "--codepage", "cp9999"]);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toContain("--codepage: unknown code page");
});

describe("damaged file systems: one line naming the path and the problem, the rest still extracted, exit 5", () => {
  const dir = path.join(import.meta.dir, "failure", "fs");
  const cases: [string, string, RegExp][] = [
    ["directory-block-checksum-mismatch.ext4-ptcl-img", "/docs", /directory block 0 .* has checksum 0x[0-9a-f]+, computed 0x[0-9a-f]+; its entries are skipped/],
    ["directory-entry-does-not-fit.ext4-ptcl-img", "/docs", /directory entry at byte 0 has record length 65535 and name length 1, which do not fit/],
    ["inode-points-past-the-end-of-the-volume.ext4-ptcl-img", "/a/b/big.txt", /points at blocks 9,000,000\.\.9,000,013, past the end of the 2,048-block volume/],
    ["loop-in-the-directory-entries.ext4-ptcl-img", "/a/b/loop", /contains itself: a loop in the directory entries; not followed/],
    ["cluster-chain-loops.vfat-ptcl-img", "/loop.txt", /cluster chain from \d+ loops back to cluster \d+/],
  ];
  for (const [file, badPath, problem] of cases) {
    test(file, () => {
      const x = extract(path.join(dir, file));
      const lines = x.stderr.trimEnd().split("\n");
      expect(lines.length).toBe(2);
      expect(lines[0]).toStartWith(`imgtool: ${path.join(dir, file)}: `);
      expect(lines[0]).toContain(`: ${badPath}: `);
      expect(lines[0]).toMatch(problem);
      expect(lines[1]).toContain("1 entries could not be extracted");
      expect(x.code).toBe(5);
      expect(fs.readFileSync(path.join(x.dest, "keep.txt"), "utf8")).toBe("kept\n");
      // a damaged directory itself is still made; a file that cannot be read or a looping entry is not
      expect(fs.existsSync(path.join(x.dest, badPath))).toBe(file.includes("checksum") || file.includes("does-not-fit"));
    });
  }
  test("ls -R names the damage on stderr, lists the rest, exits 5", () => {
    const r = runCli(["ls", path.join(dir, "loop-in-the-directory-entries.ext4-ptcl-img"), "-R"]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/^imgtool: .*: \/a\/b\/loop: directory \(inode \d+\) contains itself: a loop in the directory entries; not followed\n$/);
    expect(r.stdout.toString().split("\n")).toContain("docs/note3.txt");
    const c = runCli(["ls", path.join(dir, "directory-block-checksum-mismatch.ext4-ptcl-img"), "/docs"]);
    expect(c.code).toBe(5);
    expect(c.stderr).toMatch(/^imgtool: .*: offset [\d,]+: \/docs: directory block 0 .* has checksum/);
  });

  test("a journal that was not replayed: one warning line, the tree as it is on disk", () => {
    const x = extract(path.join(dir, "warning-journal-not-replayed.ext4-ptcl-img"));
    expect(x.code).toBe(0);
    expect(x.stderr.split("\n")[0]).toBe(
      `imgtool: ${path.join(dir, "warning-journal-not-replayed.ext4-ptcl-img")}: warning: the journal was not replayed (the volume was saved while mounted or after a crash): what was only in the journal is not shown`,
    );
    expect(fs.readFileSync(path.join(x.dest, "keep.txt"), "utf8")).toBe("kept\n");
  });

  test("a partial file is removed, not left looking complete", () => {
    const x = extract(path.join(dir, "inode-points-past-the-end-of-the-volume.ext4-ptcl-img"));
    expect(fs.existsSync(path.join(x.dest, "a/b/big.txt"))).toBe(false);
    expect(fs.readdirSync(path.join(x.dest, "docs")).sort()).toEqual(["note1.txt", "note2.txt", "note3.txt"]);
  });
});

describe("containment and refusals", () => {
  const img = fixture("ext4.ext4-ptcl-img");

  test("DEST that holds files is refused without --force; with it, nothing existing is overwritten", () => {
    const dest = path.join(tempDir(), "d");
    fs.mkdirSync(dest);
    fs.writeFileSync(path.join(dest, "README.TXT"), "mine\n");
    const r = runCli(["extract", img, "-o", dest]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("directory is not empty");
    const f = runCli(["extract", img, "-o", dest, "--force"]);
    expect(f.code).toBe(5);
    expect(f.stderr).toContain("/README.TXT: already exists in the destination; not overwritten");
    expect(fs.readFileSync(path.join(dest, "README.TXT"), "utf8")).toBe("mine\n");
    expect(fs.existsSync(path.join(dest, "docs/note000.txt"))).toBe(true);
  });

  test("a symlink as DEST, or a symlink planted inside it, is never followed", () => {
    const base = tempDir();
    const target = path.join(base, "elsewhere");
    fs.mkdirSync(target);
    fs.symlinkSync(target, path.join(base, "link"));
    const r = runCli(["extract", img, "-o", path.join(base, "link")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("is a symlink");
    const dest = path.join(base, "d");
    fs.mkdirSync(dest);
    fs.symlinkSync(target, path.join(dest, "docs"));
    const f = runCli(["extract", img, "-o", dest, "--force"]);
    expect(f.code).toBe(5);
    expect(fs.readdirSync(target)).toEqual([]);
  });

  test("paths: a single file and a subtree land under their own names; '..' is refused", () => {
    const x = extract(img, "/docs/note001.txt", "/deep/a");
    expect(x.code).toBe(0);
    expect(fs.readdirSync(x.dest).sort()).toEqual(["a", "note001.txt"]);
    expect(fs.existsSync(path.join(x.dest, "a/b/c/d/leaf.txt"))).toBe(true);
    const bad = extract(img, "/docs/../../etc");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('may not hold ".."');
  });

  test("names that cannot be file names here are named and skipped", () => {
    expect(badName(enc.encode("a/b"))).toContain('contains "/"');
    expect(badName(new Uint8Array([0x61, 0]))).toContain("NUL");
    expect(badName(enc.encode(".."))).toContain('".."');
    expect(badName(enc.encode("."))).toContain('"."');
    expect(badName(new Uint8Array(256).fill(0x61))).toContain("256 bytes long");
    expect(badName(enc.encode("fine"))).toBeUndefined();
  });

  test("file systems imgtool cannot read: one line naming it and pointing at imgtool mount", () => {
    // a volume whose first bytes say squashfs (a file that is a volume is an input like an image)
    const squashfs = path.join(tempDir(), "squash.img");
    const bytes = new Uint8Array(1 << 17);
    bytes.set(new TextEncoder().encode("hsqs"), 0);
    fs.writeFileSync(squashfs, bytes);
    const b = runCli(["ls", squashfs]);
    expect(b.code).toBe(3);
    expect(b.stderr).toMatch(/^imgtool: .*: the volume holds squashfs; imgtool cannot read squashfs: show the volume with `imgtool mount IMG DIR`.*\n$/);
  });

  test("a compressed image is read through its seek index; a pipe is refused with what to do instead", () => {
    const dir = tempDir();
    const gz = path.join(dir, "ntfs.ntfs-ptcl-img.gz");
    fs.copyFileSync(fixture("ntfs.ntfs-ptcl-img.gz"), gz);
    const plain = runCli(["ls", "-R", fixture("ntfs.ntfs-ptcl-img.aa")]);
    expect(plain.code).toBe(0);
    const compressed = runCli(["ls", "-R", gz]);
    expect(compressed.stderr).toBe("");
    expect(compressed.stdout.toString()).toBe(plain.stdout.toString());
    expect(fs.existsSync(`${gz}.imgtool-index`)).toBe(true);
    const r = runCli(["ls", "-"], { stdinFile: gz });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^imgtool: -: ls needs a regular file it can read at any offset, not a pipe/);
  });
});

describe("names", () => {
  test("ls -b style escapes", () => {
    expect(escapeName(enc.encode("plain"))).toBe("plain");
    expect(escapeName(enc.encode("tab\there"))).toBe("tab\\011here");
    expect(escapeName(enc.encode("ünï"))).toBe("ünï");
    expect(escapeName(new Uint8Array([0x61, 0xff]))).toBe("a\\377");
    expect(escapeName(enc.encode("back\\slash"))).toBe("back\\\\slash");
  });

  test("FAT short names: code pages", () => {
    const cp437 = shortNameDecoder("cp437");
    expect(cp437(new Uint8Array([0x80, 0x81, 0xe1, 0x41]))).toBe("ÇüßA");
    expect(shortNameDecoder("cp850")(new Uint8Array([0x9b, 0xd0]))).toBe("øð");
    expect(shortNameDecoder("ibm866")(new Uint8Array([0x80]))).toBe("А");
  });
});
