import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { openImage } from "../src/formats/detect.ts";
import { openExfat } from "../src/fs/exfat.ts";
import type { FileSystem } from "../src/fs/filesystem.ts";
import { imageVolume } from "../src/volume/volume.ts";
import { treeOfDirectory } from "./fs-tree.ts";
import { FIXTURES, fixture, runCli, tempDir, which } from "./helpers.ts";

// each test runs the CLI and a FUSE mount on a machine shared with others
setDefaultTimeout(120_000);

/** fixtures/make-exfat.sh's images: 4 KiB and 512-byte clusters, the same tree. */
const FIXTURES_EXFAT = fs.readdirSync(FIXTURES).filter((f) => /^exfat-.*\.exfat-ptcl-img\.zst$/.test(f)).sort();
const isRoot = process.getuid?.() === 0;
const fuseWhy = !isRoot
  ? "needs root for a loop device and a FUSE mount"
  : !which("mount.exfat-fuse")
    ? "exfat-fuse is missing (apt-get install exfat-fuse)"
    : !which("losetup")
      ? "losetup is missing"
      : !fs.existsSync("/dev/fuse")
        ? "no /dev/fuse"
        : "";
if (fuseWhy) console.log(`exfat.test.ts: the exfat-fuse comparisons are skipped: ${fuseWhy}`);
const enc = new TextEncoder();

/** The fixture decompressed (the reader's own tests need random access without a seek index beside it). */
function plainImage(name: string): string {
  const out = path.join(tempDir(), name.replace(/\.zst$/, ""));
  const r = spawnSync("zstd", ["-q", "-d", fixture(name), "-o", out]);
  if (r.status !== 0) throw new Error(`zstd -d ${name}: ${r.stderr}`);
  return out;
}

function openFixture(name: string): FileSystem {
  return openExfat(imageVolume(openImage(plainImage(name))), { uid: 0, gid: 0 });
}

/** The tree exfat-fuse shows of the restored volume: a loop device (it wants a block device), read-only, umask 022 as Linux's driver takes it. */
function exfatFuseTree(name: string): { tree: string[]; vdl: Buffer } {
  const dir = tempDir();
  const vol = path.join(dir, "volume.raw");
  const r = runCli(["restore", fixture(name), "-o", vol, "--sparse"]);
  if (r.code !== 0) throw new Error(`restore ${name}: ${r.stderr}`);
  const loop = spawnSync("losetup", ["-f", "--show", "-r", vol], { encoding: "utf8" });
  if (loop.status !== 0) throw new Error(`losetup: ${loop.stderr}`);
  const dev = loop.stdout.trim();
  const mnt = path.join(dir, "mnt");
  fs.mkdirSync(mnt);
  try {
    const m = spawnSync("mount.exfat-fuse", ["-o", "ro,umask=022", dev, mnt], { encoding: "utf8" });
    if (m.status !== 0) throw new Error(`mount.exfat-fuse: ${m.stderr}`);
    try {
      return { tree: treeOfDirectory(mnt), vdl: fs.readFileSync(path.join(mnt, "vdl.bin")) };
    } finally {
      spawnSync("umount", [mnt]);
    }
  } finally {
    spawnSync("losetup", ["-d", dev]);
  }
}

/** path, type, mode, owner, size, mtime, content: what exFAT means (nlink: exfat-fuse says 1, Linux's driver 2 + subdirectories). */
const columns = (line: string) => {
  const [p, type, mode, owner, size, mtime, , content] = line.split("\t");
  return { p, type, mode, owner, size, mtime, content };
};

describe("extract / of every exFAT fixture gives the tree exfat-fuse shows", () => {
  for (const name of FIXTURES_EXFAT) {
    test.skipIf(fuseWhy !== "")(`${name}${fuseWhy ? ` (skipped: ${fuseWhy})` : ""}`, () => {
      const fuse = exfatFuseTree(name);
      const want = fuse.tree.map(columns);
      for (const row of want) {
        // Linux's driver clears the write bits of a file with the ReadOnly attribute; exfat-fuse ignores it
        if (row.p === "readonly.txt") row.mode = "0555";
        // exfat-fuse drops the 10 ms increment (whole seconds); Linux's driver and imgtool keep it
        if (row.p === "centiseconds.txt") row.mtime = (BigInt(row.mtime!) + 570_000_000n).toString();
        // bytes past the valid data length are zeros (Linux's driver, the spec); Debian 12's exfat-fuse
        // (1.3.0+git20220115) predates its "Implement valid size handling" (2022-02-22) and shows what the clusters hold
        if (row.p === "vdl.bin") row.content = new Bun.CryptoHasher("sha256").update(fuse.vdl.fill(0, 5000)).digest("hex");
      }
      const dir = tempDir();
      fs.copyFileSync(fixture(name), path.join(dir, name));
      const dest = path.join(dir, "out");
      const x = runCli(["extract", path.join(dir, name), "/", "-o", dest]);
      expect(x.stderr).not.toContain("imgtool:");
      expect(x.code).toBe(0);
      const got = treeOfDirectory(dest).map(columns);
      expect(got.map((r) => r.p)).toEqual(want.map((r) => r.p));
      for (let i = 0; i < want.length; i++) expect(got[i]).toEqual(want[i]!);
    });
  }
});

describe("exFAT structures the fixtures hold, read from the image", () => {
  for (const name of FIXTURES_EXFAT) {
    test(`${name}: NoFatChain and FAT-chain files, valid data length, long and non-BMP names, 10 ms and UTC offset`, () => {
      const fsys = openFixture(name);
      try {
        const at = (p: string) => {
          const node = fsys.lookup(enc.encode(p));
          if (!node) throw new Error(`${p} is missing`);
          return node;
        };
        // the node id is the volume offset of its Stream Extension entry; GeneralSecondaryFlags bit 1 is NoFatChain
        const noFatChain = (p: string) => (fsys.volume.read(at(p).id + 1, 1)[0]! & 2) !== 0;
        expect(noFatChain("contiguous.bin")).toBe(true);
        expect(noFatChain("fragmented.bin")).toBe(false);
        const frag = new Uint8Array(12 * 4096);
        expect(fsys.readFile(at("fragmented.bin"), 0, frag)).toBe(frag.length);
        for (let i = 0; i < 12; i++) expect(frag.subarray(i * 4096, (i + 1) * 4096).every((b) => b === 0x41 + i)).toBe(true);

        // valid data length 5,000 of 12,288: the rest reads as zeros and is a hole to extract
        const vdl = at("vdl.bin");
        expect(vdl.size).toBe(12288);
        expect([...fsys.fileExtents(vdl)]).toEqual([{ offset: 0, length: 5000 }]);
        const bytes = new Uint8Array(12288).fill(0xee);
        expect(fsys.readFile(vdl, 0, bytes)).toBe(12288);
        expect(bytes.subarray(0, 5000).every((b) => b === 0x56)).toBe(true);
        expect(bytes.subarray(5000).every((b) => b === 0)).toBe(true);
        const tail = new Uint8Array(100).fill(0xee);
        expect(fsys.readFile(vdl, 4950, tail)).toBe(100);
        expect([...tail.subarray(0, 50)].every((b) => b === 0x56) && [...tail.subarray(50)].every((b) => b === 0)).toBe(true);

        expect(at("empty").size).toBe(0);
        expect([...fsys.fileExtents(at("empty"))]).toEqual([]);
        expect(at(`deep/${Array.from({ length: 40 }, (_, i) => `level${String(i).padStart(2, "0")}`).join("/")}/bottom.txt`).size).toBe(10);
        expect([...fsys.list(at("many"))].length).toBe(1500);

        const names = [...fsys.list(fsys.root())].map((e) => new TextDecoder().decode(e.name));
        expect(names).toContain("emoji 😀🎉 and 𝄞 clef.txt");
        expect(names).toContain("x".repeat(255));
        expect(names).toContain("ü".repeat(127));
        // lookups fold case through the volume's up-case table, as Windows and Linux's driver do
        expect(fsys.lookup(enc.encode("/STRASSE"))).toBeUndefined();
        expect(at("/STRAßE Ÿ Ǆ Ω ﬀ ı.TXT").id).toBe(at("/straße ÿ ǆ ω ﬀ ı.txt").id);
        expect(at("/àéîõü ÿωж.txt").id).toBe(at("/ÀÉÎÕÜ ŸΩЖ.txt").id);

        // 10 ms increment 157 and UTC+05:45 (made by exfat-crafted.py): 1.57 s past the stamp, 5 h 45 min earlier in UTC
        const cs = at("centiseconds.txt");
        const plain = at("readonly.txt");
        expect(cs.mtime.nsec).toBe(570_000_000);
        expect(plain.mtime.nsec).toBe(0);
        const local = (t: { sec: number }, offsetMinutes: number) => t.sec + offsetMinutes * 60;
        // both were written within seconds of each other; readonly.txt's stamp is UTC+00:00 (exfat-fuse here)
        expect(Math.abs(local(cs.mtime, 345) - 1 - local(plain.mtime, 0))).toBeLessThan(60);
        expect(plain.mode).toBe(0o555);
        expect(at("contiguous.bin").mode).toBe(0o755);
        expect(fsys.root().mode).toBe(0o755);
      } finally {
        fsys.close();
      }
    });
  }

  test("modes and owner come from the options, as the kernel driver's umask, uid and gid", () => {
    const fsys = openExfat(imageVolume(openImage(plainImage(FIXTURES_EXFAT[0]!))), { umask: 0o077, uid: 1234, gid: 5678 });
    try {
      const node = fsys.lookup(enc.encode("contiguous.bin"))!;
      expect([node.mode, node.uid, node.gid]).toEqual([0o700, 1234, 5678]);
      expect(fsys.lookup(enc.encode("readonly.txt"))!.mode).toBe(0o500);
      expect(fsys.root().mode).toBe(0o700);
    } finally {
      fsys.close();
    }
  });
});

test("pub-linuxfs@4 (exFAT) extracted straight from the zstd Clonezilla folder equals its tree file", () => {
  const folder = path.join(FIXTURES, "clonezilla", "pub-linuxfs");
  const lines = fs.readFileSync(`${folder}.p4.tree.txt`, "utf8").trimEnd().split("\n").slice(1);
  const dir = path.join(tempDir(), "pub-linuxfs");
  // a copy: the seek index of the compressed partition image is written beside it
  fs.cpSync(folder, dir, { recursive: true });
  for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
  const dest = path.join(tempDir(), "out");
  const x = runCli(["extract", `${dir}@4`, "/", "-o", dest]);
  expect(x.stderr).not.toContain("imgtool:");
  expect(x.code).toBe(0);
  // the tree file is exfat-fuse's with its default umask 0 (0777) and nlink 1: path, type, owner (when root), size, mtime, content
  const keep = (l: string) => {
    const c = columns(l);
    return [c.p, c.type, isRoot ? c.owner : "-", c.size, c.mtime, c.content].join("\t");
  };
  const escaped = (l: string) => Array.from(Buffer.from(l), (b) => ((b >= 0x20 && b < 0x7f) || b === 9 ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`)).join("");
  const got = treeOfDirectory(dest).map(escaped);
  expect(got.map(keep)).toEqual(lines.map(keep));
  expect(got.every((l) => columns(l).mode === "0755")).toBe(true);
});

describe("damaged exFAT images (test/failure/fs/*.exfat-ptcl-img): one line naming the problem, the rest extracted", () => {
  const dir = path.join(import.meta.dir, "failure", "fs");
  // file stem → the path named, what the message says, the exit code; every exFAT image there must be listed
  const cases: Record<string, { path?: string; problem: RegExp; code: number }> = {
    "entry-set-checksum-mismatch": { path: "/docs", problem: /offset [\d,]+: \/docs: entry set checksum mismatch: stored 0x[0-9a-f]{4}, computed 0x[0-9a-f]{4}; the entry is skipped$/, code: 5 },
    "cluster-chain-loops": { path: "/loop.bin", problem: /offset [\d,]+: \/loop\.bin: cluster chain from \d+ loops back to cluster \d+ after 2 clusters$/, code: 5 },
    "boot-checksum-mismatch": { problem: /offset 5,632: main boot region: boot checksum mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}; backup boot region: boot checksum mismatch/, code: 3 },
    "warning-main-boot-checksum-mismatch": { problem: /: warning: the main boot region is damaged \(offset 5,632: boot checksum mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\): read through the backup boot region$/, code: 0 },
  };
  const images = fs.readdirSync(dir).filter((f) => f.endsWith(".exfat-ptcl-img"));
  test("every damaged exFAT image has its expectation", () => {
    expect(images.map((f) => f.replace(/\.exfat-ptcl-img$/, "")).sort()).toEqual(Object.keys(cases).sort());
  });
  for (const file of images) {
    const c = cases[file.replace(/\.exfat-ptcl-img$/, "")];
    test.skipIf(!c)(file, () => {
      const dest = path.join(tempDir(), "out");
      const x = runCli(["extract", path.join(dir, file), "-o", dest]);
      const lines = x.stderr.trimEnd().split("\n");
      expect(lines[0]).toStartWith(`imgtool: ${path.join(dir, file)}: `);
      expect(lines[0]).toMatch(c!.problem);
      expect(x.code).toBe(c!.code);
      if (c!.code === 3) {
        expect(lines.length).toBe(1);
        return;
      }
      expect(fs.readFileSync(path.join(dest, "keep.txt"), "utf8")).toBe("kept\n");
      expect(fs.readFileSync(path.join(dest, "between.bin")).every((b) => b === 0x42)).toBe(true);
      const notes = fs.readdirSync(path.join(dest, "docs")).sort();
      if (c!.path) {
        expect(lines.length).toBe(2);
        expect(lines[1]).toContain("1 entries could not be extracted");
        expect(fs.existsSync(path.join(dest, c!.path))).toBe(c!.path === "/docs");
        expect(notes).toEqual(c!.path === "/docs" ? ["note1.txt", "note3.txt"] : ["note1.txt", "note2.txt", "note3.txt"]);
      } else expect(notes).toEqual(["note1.txt", "note2.txt", "note3.txt"]);
    });
  }
});

test("a looping FAT chain is named, not followed forever; the rest still reads (library level)", () => {
  const fsys = openExfat(imageVolume(openImage(path.join(import.meta.dir, "failure", "fs", "cluster-chain-loops.exfat-ptcl-img"))), { uid: 0, gid: 0 });
  try {
    const node = fsys.lookup(enc.encode("loop.bin"))!;
    expect(() => fsys.readFile(node, 0, new Uint8Array(10))).toThrow(/loops back to cluster/);
    expect(fsys.readFile(fsys.lookup(enc.encode("keep.txt"))!, 0, new Uint8Array(5))).toBe(5);
  } finally {
    fsys.close();
  }
});

test("a FAT chain that ends before the data length is named, not read short (library level)", () => {
  const volume = imageVolume(openImage(plainImage(FIXTURES_EXFAT[0]!)));
  const probe = openExfat(volume, { uid: 0, gid: 0 });
  const node = probe.lookup(enc.encode("fragmented.bin"))!;
  const first = new DataView(volume.read(node.id + 20, 4).buffer).getUint32(0, true);
  const boot = new DataView(volume.read(0, 512).buffer);
  const fatEntry = boot.getUint32(80, true) * (1 << boot.getUint8(108)) + 4 * first;
  // the same volume with the file's first FAT entry set to the end mark
  const patched = {
    ...volume,
    read(offset: number, length: number) {
      const bytes = volume.read(offset, length);
      if (fatEntry >= offset && fatEntry + 4 <= offset + length) new DataView(bytes.buffer, bytes.byteOffset).setUint32(fatEntry - offset, 0xffffffff, true);
      return bytes;
    },
    readInto: undefined,
  };
  const fsys = openExfat(patched, { uid: 0, gid: 0 });
  expect(() => fsys.readFile(fsys.lookup(enc.encode("fragmented.bin"))!, 0, new Uint8Array(10))).toThrow(`cluster chain from ${first} ends after 1 clusters; the data length needs 12`);
  expect(fsys.readFile(fsys.lookup(enc.encode("contiguous.bin"))!, 0, new Uint8Array(10))).toBe(10);
  probe.close();
});

test("a volume marked dirty and an up-case table whose checksum fails: one warning each, names still read (library level)", () => {
  const volume = imageVolume(openImage(plainImage(FIXTURES_EXFAT[0]!)));
  const boot = new DataView(volume.read(0, 512).buffer);
  const sector = 1 << boot.getUint8(108);
  const cluster = sector << boot.getUint8(109);
  const rootAt = boot.getUint32(88, true) * sector + (boot.getUint32(96, true) - 2) * cluster;
  const root = volume.read(rootAt, cluster);
  let upcaseCluster = 0;
  for (let p = 0; p < root.length; p += 32) if (root[p] === 0x82) upcaseCluster = new DataView(root.buffer, p).getUint32(20, true);
  expect(upcaseCluster).toBeGreaterThan(1);
  const upcaseAt = boot.getUint32(88, true) * sector + (upcaseCluster - 2) * cluster;
  const patched = {
    ...volume,
    read(offset: number, length: number) {
      const bytes = volume.read(offset, length);
      // VolumeFlags (outside the boot checksum): VolumeDirty; the up-case table's first byte
      if (offset <= 106 && offset + length > 106) bytes[106 - offset]! |= 0x02;
      if (offset <= upcaseAt && offset + length > upcaseAt) bytes[upcaseAt - offset]! ^= 0x01;
      return bytes;
    },
    readInto: undefined,
  };
  const fsys = openExfat(patched, { uid: 0, gid: 0 });
  expect(fsys.warnings).toEqual([
    "the volume is marked dirty (saved while mounted, or not cleanly unmounted): what was not yet written is not shown",
    expect.stringMatching(/^the up-case table's checksum is 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}: names are compared with Unicode's simple upper case instead, name hashes are not checked$/),
  ]);
  expect([...fsys.list(fsys.root())].length).toBe(16);
  expect(fsys.lookup(enc.encode("ÀÉÎÕÜ ŸΩЖ.TXT"))).toBeDefined();
  fsys.close();
});
