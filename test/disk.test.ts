import { describe, expect, test } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { openDisk } from "../src/index.ts";
import { withCommas } from "../src/errors.ts";
import { readClonezillaFolder } from "../src/disk/clonezilla.ts";
import { buildGpt } from "../src/disk/gpt.ts";
import { buildEbrs, buildMbr, DEFAULT_GEOMETRY, type PlannedEntry } from "../src/disk/mbr.ts";
import { parseSfdiskDump } from "../src/disk/sfdisk-dump.ts";
import { swapHeader } from "../src/disk/swap.ts";
import { openStream } from "../src/source/open.ts";
import { CLI, FIXTURES, peerTest, runCli, sha256, sha256File, shellWord, tempDir, which } from "./helpers.ts";

const CZ = path.join(FIXTURES, "clonezilla");
const isRoot = process.getuid?.() === 0;

interface Folder {
  name: string;
  label: string;
  sha256: string;
  size: number;
  /** --disk for a folder with several */
  disk?: string;
}

function folders(): Folder[] {
  const out: Folder[] = [];
  for (const file of ["manifest.tsv", "manifest-extra.tsv"]) {
    const p = path.join(CZ, file);
    if (!fs.existsSync(p)) continue;
    const [head, ...rows] = fs.readFileSync(p, "utf8").trimEnd().split("\n");
    const cols = head!.split("\t");
    for (const row of rows) {
      const v = row.split("\t");
      const get = (c: string) => v[cols.indexOf(c)]!;
      out.push({ name: get("folder"), label: get("label"), sha256: get("original_disk_sha256"), size: Number(get("disk_size")), disk: cols.includes("disk") && get("disk") ? get("disk") : undefined });
    }
  }
  return out;
}

/** A writable copy of a fixture folder (fixtures are read-only in CI checkouts). */
function copyFolder(name: string): string {
  const dir = path.join(tempDir(), name);
  fs.cpSync(path.join(CZ, name), dir, { recursive: true });
  for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
  return dir;
}

/** A copy whose partition images are decompressed into single `.uncomp` files: random access without a seek index. */
function uncompressedCopy(name: string): string {
  const dir = copyFolder(name);
  for (const f of fs.readdirSync(dir)) {
    const m = /^(.*-(?:ptcl-)?img)\.(gz|zst|bz2|xz|lz4)\.aa$/.exec(f) ?? /^(.*\.ntfs-img)\.aa$/.exec(f);
    if (!m) continue;
    const s = openStream(path.join(dir, f), { threads: false });
    const fd = fs.openSync(path.join(dir, `${m[1]}.uncomp`), "w");
    for (let c; (c = s.reader.chunk(1 << 20)).length > 0; ) fs.writeSync(fd, c);
    fs.closeSync(fd);
    s.reader.close();
    fs.rmSync(path.join(dir, f));
  }
  return dir;
}

function rewriteNames(dir: string, from: string, to: (partOrDisk: string) => string): void {
  // loop0 → sda / nvme0n1 in every file name and the text files that name devices
  const re = new RegExp(`${from}(p?)(\\d*)`, "g");
  const rename = (s: string) => s.replace(re, (_, p: string, n: string) => to(n ? `${p}${n}` : ""));
  for (const f of fs.readdirSync(dir)) {
    const file = path.join(dir, f);
    if (/^(disk|parts|.*-pt\.sf|dev-fs\.list|blkdev\.list|swappt-.*)$/.test(f)) fs.writeFileSync(file, rename(fs.readFileSync(file, "utf8")));
    const renamed = rename(f);
    if (renamed !== f) fs.renameSync(file, path.join(dir, renamed));
  }
}

describe("restore DIR: Clonezilla folders back to the original disk, byte for byte", () => {
  for (const f of folders()) {
    const dir = path.join(CZ, f.name);
    peerTest(!fs.existsSync(dir) && `${dir} is not here`)(`${f.name}${f.disk ? ` --disk ${f.disk}` : ""} (${f.label})`, () => {
      const out = path.join(tempDir(), "disk.raw");
      const r = runCli(["restore", dir, "-o", out, "--sparse", ...(f.disk ? ["--disk", f.disk] : [])]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(fs.statSync(out).size).toBe(f.size);
      expect(sha256File(out)).toBe(f.sha256);
    }, 120_000);
  }

  test("to stdout, zeros written in order", () => {
    const f = folders().find((x) => x.name === "clonezilla-mbr-zstd")!;
    const r = Bun.spawnSync(["sh", "-c", `${shellWord(process.execPath)} ${shellWord(CLI)} restore ${shellWord(path.join(CZ, f.name))} -o - | sha256sum`], { stdout: "pipe", stderr: "pipe" });
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString().slice(0, 64)).toBe(f.sha256);
  }, 120_000);

  test("--partition: one partition, padded to its size, NTFS backup boot sector in its last sector", () => {
    const f = folders().find((x) => x.name === "clonezilla-gpt-gzip")!;
    const whole = path.join(tempDir(), "whole.raw");
    expect(runCli(["restore", path.join(CZ, f.name), "-o", whole, "--sparse"]).code).toBe(0);
    const outDir = tempDir();
    for (const [name, start, sectors] of [["loop0p3", 288768, 184320], ["loop0p4", 473088, 141279]] as const) {
      const out = path.join(outDir, `${name}.raw`);
      const r = runCli(["restore", `${path.join(CZ, f.name)}@${name}`, "-o", out]);
      expect(r.stderr).toBe("");
      const fd = fs.openSync(whole, "r");
      const expected = new Uint8Array(sectors * 512);
      fs.readSync(fd, expected, 0, expected.length, start * 512);
      fs.closeSync(fd);
      expect(sha256File(out)).toBe(sha256(expected));
    }
    const ntfs = fs.readFileSync(path.join(outDir, "loop0p3.raw"));
    expect(ntfs.subarray(ntfs.length - 512).equals(ntfs.subarray(0, 512))).toBe(true);
    expect(ntfs.subarray(3, 11).toString()).toBe("NTFS    ");
  }, 120_000);
});

describe("the disk as a Volume (openDisk)", () => {
  test("an uncompressed folder reads as the original disk; extents cover it, holes read as zeros", () => {
    const f = folders().find((x) => x.name === "clonezilla-mbr-zstd")!;
    const dir = uncompressedCopy(f.name);
    const opened = openDisk(dir);
    try {
      expect(opened.disks.length).toBe(1);
      const disk = opened.disks[0]!;
      expect(disk.size).toBe(f.size);
      const h = new Bun.CryptoHasher("sha256");
      for (let o = 0; o < disk.size; o += 8 << 20) h.update(disk.read(o, Math.min(8 << 20, disk.size - o)));
      expect(h.digest("hex")).toBe(f.sha256);
      let pos = 0;
      let data = 0;
      for (const e of disk.extents(0, disk.size)) {
        expect(e.offset).toBe(pos);
        pos += e.length;
        if (e.data) data += e.length;
        else {
          const probe = disk.read(e.offset, Math.min(e.length, 4096));
          expect(probe.every((b) => b === 0)).toBe(true);
        }
      }
      expect(pos).toBe(disk.size);
      expect(data).toBeLessThan(disk.size / 4);
      expect(opened.partitions.map((p) => p.partition.name)).toEqual(["loop0p1", "loop0p2", "loop0p3", "loop0p5", "loop0p6"]);
      const p6 = opened.partitions.find((p) => p.partition.name === "loop0p6")!;
      expect(p6.size).toBe(178176 * 512);
      expect(sha256(p6.read(0, 4096))).toBe(sha256(disk.read(436224 * 512, 4096)));
    } finally {
      opened.close();
    }
  }, 120_000);

  test("a compressed partition is read through its seek index, built beside its image on first use", () => {
    const dir = copyFolder("clonezilla-gpt-gzip");
    const raw = path.join(tempDir(), "disk.raw");
    expect(runCli(["restore", dir, "-o", raw]).code).toBe(0);
    const whole = fs.readFileSync(raw);
    const opened = openDisk(dir);
    try {
      for (const at of [2048 * 512, 2048 * 512 + 1_000_000, whole.length >> 1, whole.length - 4096]) {
        expect(sha256(opened.disks[0]!.read(at, 4096))).toBe(sha256(whole.subarray(at, at + 4096)));
      }
    } finally {
      opened.close();
    }
    expect(fs.readdirSync(dir).filter((f) => f.endsWith(".imgtool-index")).length).toBeGreaterThan(0);
  });

  test("index DIR builds the seek index of every compressed partition image; DIR@N of one", () => {
    const one = copyFolder("clonezilla-gpt-gzip");
    const r1 = runCli(["index", `${one}@loop0p2`, "--json"]);
    expect(r1.code).toBe(0);
    expect(JSON.parse(r1.stdout.toString()).path).toBe(path.join(one, "loop0p2.ext4-ptcl-img.gz.aa.imgtool-index"));
    expect(fs.readdirSync(one).filter((f) => f.endsWith(".imgtool-index"))).toEqual(["loop0p2.ext4-ptcl-img.gz.aa.imgtool-index"]);
    const all = copyFolder("clonezilla-mbr-zstd");
    const r = runCli(["index", all]);
    expect(r.code).toBe(0);
    expect(r.stdout.toString().trim().split("\n").length).toBe(4);
    expect(fs.readdirSync(all).filter((f) => f.endsWith(".imgtool-index")).length).toBe(4);
  });

  test("a raw disk image opens as a disk: partitions from its MBR/GPT, DISK@N selects one", () => {
    for (const f of folders().filter((x) => x.name.startsWith("clonezilla-"))) {
      const raw = path.join(tempDir(), `${f.name}.raw`);
      expect(runCli(["restore", path.join(CZ, f.name), "-o", raw, "--sparse"]).code).toBe(0);
      const folder = readClonezillaFolder(path.join(CZ, f.name));
      const opened = openDisk(raw);
      try {
        const fromTable = opened.partitions.map((p) => [p.partition.number, p.partition.start, p.partition.size]);
        const fromFolder = folder.disks[0]!.layout.partitions.map((p) => [p.number, p.start, p.size]);
        expect(fromTable).toEqual(fromFolder);
      } finally {
        opened.close();
      }
      const info = runCli(["info", raw, "--json"]);
      expect(info.code).toBe(0);
      const j = JSON.parse(info.stdout.toString());
      expect(j.label).toBe(f.label);
      const onePart = runCli(["cat", `${raw}@2`, "--length", "4096"]);
      expect(onePart.code).toBe(0);
      const p2 = folder.disks[0]!.layout.partitions.find((p) => p.number === 2)!;
      const fd = fs.openSync(raw, "r");
      const want = new Uint8Array(4096);
      fs.readSync(fd, want, 0, 4096, p2.start);
      fs.closeSync(fd);
      expect(sha256(onePart.stdout)).toBe(sha256(want));
      expect(runCli(["verify", raw]).code).toBe(0);
      // the whole raw disk through restore and the Volume: tables and gaps included
      const again = path.join(tempDir(), "again.raw");
      expect(runCli(["restore", raw, "-o", again, "--sparse"]).code).toBe(0);
      expect(sha256File(again)).toBe(f.sha256);
      const whole = openDisk(raw);
      try {
        expect(sha256(whole.disks[0]!.read(0, 1 << 20))).toBe(sha256(fs.readFileSync(raw).subarray(0, 1 << 20)));
      } finally {
        whole.close();
      }
    }
  }, 180_000);
});

describe("names and several disks", () => {
  test("nvme-style and sdX names, two disks in one folder: --disk picks one, each rebuilds exactly", () => {
    const gpt = folders().find((x) => x.name === "clonezilla-gpt-gzip")!;
    const mbr = folders().find((x) => x.name === "clonezilla-mbr-zstd")!;
    const a = copyFolder(gpt.name);
    rewriteNames(a, "loop0", (p) => `nvme0n1${p}`);
    const b = copyFolder(mbr.name);
    rewriteNames(b, "loop0", (p) => `sdb${p.replace(/^p/, "")}`);
    const two = path.join(tempDir(), "two");
    fs.mkdirSync(two);
    for (const src of [a, b]) {
      for (const f of fs.readdirSync(src)) {
        if (/^(disk|parts|dev-fs\.list|blkdev\.list|Info-.*|clonezilla-img|blkid\.list)$/.test(f)) continue;
        fs.copyFileSync(path.join(src, f), path.join(two, f));
      }
    }
    fs.writeFileSync(path.join(two, "disk"), "nvme0n1 sdb\n");
    fs.writeFileSync(path.join(two, "parts"), "nvme0n1p1 nvme0n1p2 nvme0n1p3 sdb1 sdb2 sdb5 sdb6\n");
    const info = runCli(["info", two, "--json"]);
    expect(info.code).toBe(0);
    const j = JSON.parse(info.stdout.toString());
    expect(j.disks.map((d: { name: string }) => d.name)).toEqual(["nvme0n1", "sdb"]);
    expect(j.problems).toEqual([]);
    const refused = runCli(["restore", two, "-o", path.join(tempDir(), "x.raw")]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/2 disks \(nvme0n1, sdb\); choose one with --disk/);
    for (const [disk, f] of [["nvme0n1", gpt], ["sdb", mbr]] as const) {
      const out = path.join(tempDir(), `${disk}.raw`);
      const r = runCli(["restore", two, "--disk", disk, "-o", out, "--sparse"]);
      expect(r.stderr).toBe("");
      expect(sha256File(out)).toBe(f.sha256);
    }
    // a partition by name finds its disk
    const sdb5 = path.join(tempDir(), "sdb5.raw");
    const p = runCli(["restore", two, "--partition", "sdb5", "-o", sdb5]);
    expect(p.stderr).toBe("");
    expect(fs.statSync(sdb5).size).toBe(102400 * 512);
    expect(fs.readFileSync(sdb5).subarray(0x36, 0x3b).toString()).toBe("FAT16");
  }, 180_000);
});

test("cciss-style names (a / in the device name, - in the file names)", () => {
  const f = folders().find((x) => x.name === "clonezilla-mbr-zstd")!;
  const dir = copyFolder(f.name);
  rewriteNames(dir, "loop0", (p) => `cciss-c0d0${p}`);
  for (const file of ["loop0-pt.sf", "disk", "parts"].map((n) => path.join(dir, n.replace("loop0", "cciss-c0d0")))) {
    fs.writeFileSync(file, fs.readFileSync(file, "utf8").replaceAll("cciss-c0d0", "cciss/c0d0"));
  }
  const info = JSON.parse(runCli(["info", dir, "--json"]).stdout.toString());
  expect(info.disks[0].partitions.map((p: { name: string }) => p.name)).toEqual(["cciss-c0d0p1", "cciss-c0d0p2", "cciss-c0d0p3", "cciss-c0d0p5", "cciss-c0d0p6"]);
  expect(info.problems).toEqual([]);
  const out = path.join(tempDir(), "cciss.raw");
  expect(runCli(["restore", dir, "-o", out, "--sparse"]).stderr).toBe("");
  expect(sha256File(out)).toBe(f.sha256);
}, 60_000);

describe("tables and headers against the real tools", () => {
  peerTest(!which("sfdisk") && "sfdisk is not installed (apt: fdisk)")("EBR chain as sfdisk writes it from pt.sf", () => {
    const layouts = [
      // the shared fixture's layout, a logical whose EBR would land on the extended start, and three logicals
      "label: dos\nunit: sectors\n\nx1 : start=2048, size=204800, type=83\nx2 : start=206848, size=122880, type=7\nx3 : start=329728, size=284672, type=5\nx5 : start=331776, size=102400, type=e\nx6 : start=436224, size=178176, type=83\n",
      "label: dos\nunit: sectors\n\nx1 : start=2048, size=4096, type=83\nx2 : start=8192, size=500000, type=5\nx5 : start=16384, size=1000, type=83\nx6 : start=40000, size=2000, type=7\nx7 : start=42001, size=3000, type=82\n",
      "label: dos\nunit: sectors\n\nx1 : start=2048, size=100000, type=f\nx5 : start=4096, size=2000, type=83\nx6 : start=10240, size=8000, type=c, bootable\n",
    ];
    for (const script of layouts) {
      const img = path.join(tempDir(), "t.img");
      fs.writeFileSync(img, "");
      fs.truncateSync(img, 300 << 20);
      const r = spawnSync("sfdisk", ["-q", img], { input: script });
      expect(r.status).toBe(0);
      const dump = parseSfdiskDump(script, "script");
      const planned: PlannedEntry[] = dump.partitions.map((p) => ({ number: Number(p.device.slice(1)), bootable: p.bootable, type: parseInt(p.type, 16), start: p.start, size: p.size }));
      const extended = planned.find((p) => p.number <= 4 && [5, 0xf].includes(p.type))!;
      const ebrs = buildEbrs(planned.filter((p) => p.number >= 5), extended, 2048, DEFAULT_GEOMETRY);
      const disk = fs.readFileSync(img);
      for (const e of ebrs) expect(sha256(disk.subarray(e.sector * 512, e.sector * 512 + 512))).toBe(sha256(e.bytes));
      // the primary table (not the boot code or disk id sfdisk makes up)
      const mbr = buildMbr(planned, 0, DEFAULT_GEOMETRY);
      expect(Buffer.from(mbr.subarray(446)).equals(disk.subarray(446, 512))).toBe(true);
    }
  }, 120_000);

  peerTest(!which("sfdisk") && "sfdisk is not installed (apt: fdisk)")("GPT built from pt.sf equals what sfdisk writes", () => {
    const text = fs.readFileSync(path.join(CZ, "clonezilla-gpt-gzip", "loop0-pt.sf"), "utf8").replace(/^device:.*\n/m, "");
    const img = path.join(tempDir(), "g.img");
    fs.writeFileSync(img, "");
    fs.truncateSync(img, 300 << 20);
    expect(spawnSync("sfdisk", ["-q", img], { input: text }).status).toBe(0);
    const built = buildGpt(parseSfdiskDump(text, "pt.sf"), (300 << 20) / 512);
    const disk = fs.readFileSync(img);
    expect(sha256(disk.subarray(446, built.primary.length))).toBe(sha256(built.primary.subarray(446)));
    expect(sha256(disk.subarray(built.backupLba * 512))).toBe(sha256(built.backup));
    // and the saved primary of the real folder (sgdisk made it) has the same header and entries
    const saved = fs.readFileSync(path.join(CZ, "clonezilla-gpt-gzip", "loop0-gpt-1st"));
    expect(sha256(saved.subarray(1024))).toBe(sha256(built.primary.subarray(1024)));
  }, 60_000);

  peerTest(!which("mkswap") && "mkswap is not installed (apt: util-linux)")("swap header as mkswap -U -L writes it", () => {
    for (const [size, uuid, label] of [[72334848, "b5becefe-1a08-454c-a3db-ba2c8878c617", "swp"], [1 << 20, "00112233-4455-6677-8899-aabbccddeeff", "a-label-longer-than-16"]] as const) {
      const file = path.join(tempDir(), "swap");
      fs.writeFileSync(file, "");
      fs.truncateSync(file, size);
      fs.chmodSync(file, 0o600);
      expect(spawnSync("mkswap", ["-U", uuid, "-L", label, file]).status).toBe(0);
      const real = fs.readFileSync(file);
      const ours = swapHeader(size, { uuid, label });
      expect(sha256(real.subarray(0, 4096))).toBe(sha256(ours));
      expect(real.subarray(4096).every((b) => b === 0)).toBe(true);
    }
  }, 60_000);
});

describe("info and verify", () => {
  test("info lists every partition with its image, compression and used size", () => {
    const r = runCli(["info", path.join(CZ, "clonezilla-gpt-gzip"), "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout.toString());
    const parts = j.disks[0].partitions;
    expect(parts.map((p: { name: string }) => p.name)).toEqual(["loop0p1", "loop0p2", "loop0p3", "loop0p4"]);
    expect(parts[2]).toMatchObject({ startSector: 288768, sizeSectors: 184320, fs: "NTFS", content: "partclone", compression: ["gzip"], files: ["loop0p3.ntfs-ptcl-img.gz.aa"] });
    expect(parts[3]).toMatchObject({ content: "swap", swapUuid: "b5becefe-1a08-454c-a3db-ba2c8878c617", swapLabel: "swp" });
    expect(j.problems).toEqual([]);
    const text = runCli(["info", path.join(CZ, "clonezilla-mbr-zstd")]).stdout.toString();
    expect(text).toMatch(/loop0-hidden-data-after-mbr: 1,048,064 bytes at 512/);
    expect(text).toMatch(/loop0p3 +329728 +284672 .* container/);
  });

  test("verify: every image and MD5SUMS/SHA1SUMS/B2SUMS; a bad digest is exit 4 naming the file", () => {
    const dir = copyFolder("clonezilla-mbr-zstd");
    for (const [tool, file] of [["md5sum", "MD5SUMS"], ["sha1sum", "SHA1SUMS"], ["b2sum", "B2SUMS"]]) {
      if (!which(tool)) continue;
      spawnSync("sh", ["-c", `cd ${shellWord(dir)} && ${tool} * > ${file}.tmp && mv ${file}.tmp ${file}`]);
    }
    const ok = runCli(["verify", dir]);
    expect(ok.stderr).toBe("");
    expect(ok.code).toBe(0);
    expect(ok.stdout.toString()).toMatch(/loop0p6: loop0p6\.ext4-ptcl-img\.zst\.aa OK \(CRC32 checksums\)/);
    if (which("b2sum")) expect(ok.stdout.toString()).toMatch(/B2SUMS: \d+ of \d+ files match/);
    const mbr = path.join(dir, "loop0-mbr");
    const bytes = fs.readFileSync(mbr);
    bytes[0] = bytes[0]! ^ 0xff;
    fs.writeFileSync(mbr, bytes);
    const bad = runCli(["verify", dir]);
    expect(bad.code).toBe(which("md5sum") ? 4 : 0);
    if (which("md5sum")) expect(bad.stderr).toMatch(/^imgtool: loop0-mbr: md5 does not match MD5SUMS$/m);
  }, 120_000);

  test("verify: the MD5SUMS and B2SUMS Clonezilla wrote (-gm -gb) for a folder of two disks", () => {
    const r = runCli(["verify", path.join(CZ, "dk-two")]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const out = r.stdout.toString();
    expect(out).toMatch(/^MD5SUMS: (\d+) of \1 files match$/m);
    expect(out).toMatch(/^B2SUMS: (\d+) of \1 files match$/m);
    expect(out.match(/ OK \(CRC32 checksums\)/g)?.length).toBe(4);
  }, 60_000);

  test("verify names a missing image and a missing split piece", () => {
    const dir = copyFolder("clonezilla-gpt-gzip");
    fs.rmSync(path.join(dir, "loop0p2.ext4-ptcl-img.gz.aa"));
    const r = runCli(["verify", dir]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/loop0p2: no image file/);
    const restore = runCli(["restore", dir, "-o", path.join(tempDir(), "o.raw")]);
    expect(restore.code).toBe(3);
    expect(restore.stderr).toMatch(/^imgtool: .*loop0p2: in parts but its image file is missing\n$/);
    expect(fs.existsSync(path.join(tempDir(), "o.raw.partial"))).toBe(false);
  });
});

describe("hostile folders", () => {
  const broken = (name: string, change: (dir: string) => void) => {
    const dir = copyFolder(name);
    change(dir);
    return dir;
  };

  test("a symlinked image piece is not followed", () => {
    const dir = broken("clonezilla-gpt-gzip", (d) => {
      fs.rmSync(path.join(d, "loop0p1.vfat-ptcl-img.gz.aa"));
      fs.symlinkSync(path.join(CZ, "clonezilla-gpt-gzip", "loop0p1.vfat-ptcl-img.gz.aa"), path.join(d, "loop0p1.vfat-ptcl-img.gz.aa"));
    });
    const info = JSON.parse(runCli(["info", dir, "--json"]).stdout.toString());
    expect(info.otherFiles).toContain("loop0p1.vfat-ptcl-img.gz.aa (a symlink: not followed)");
    expect(info.problems).toContain("loop0p1: no image file (loop0p1.<fs>-ptcl-img..., loop0p1.ntfs-img..., loop0p1.dd-img...)");
    expect(runCli(["restore", dir, "-o", path.join(tempDir(), "o.raw")]).code).toBe(3);
  });

  const cases: [string, string, (d: string) => void, RegExp][] = [
    ["a symlinked later piece of a split set", "clonezilla-gpt-gzip", (d) => fs.symlinkSync("/etc/passwd", path.join(d, "loop0p2.ext4-ptcl-img.gz.ab")), /loop0p2\.ext4-ptcl-img\.gz\.ab: a piece of a split set that is not a regular file/],
    ["a device name that climbs out", "clonezilla-gpt-gzip", (d) => fs.writeFileSync(path.join(d, "parts"), "../../etc/passwd\n"), /parts: not a device name/],
    ["a partition past the end of the disk", "clonezilla-mbr-zstd", (d) => fs.appendFileSync(path.join(d, "loop0-pt.sf"), "/dev/loop0p4 : start=614000, size=1000, type=83\n"), /past the disk's 614400 sectors/],
    ["overlapping partitions", "clonezilla-gpt-gzip", (d) => {
      const f = path.join(d, "loop0-pt.sf");
      fs.writeFileSync(f, fs.readFileSync(f, "utf8").replace("start=       83968", "start=       83000"));
    }, /partition loop0p2 overlaps partition loop0p1/],
    ["a GPT header with a bad CRC", "clonezilla-gpt-gzip", (d) => {
      const f = path.join(d, "loop0-gpt-1st");
      const b = fs.readFileSync(f);
      b[512 + 40] = b[512 + 40]! ^ 1;
      fs.writeFileSync(f, b);
    }, /loop0-gpt-1st: offset 528: GPT header CRC32 does not match/],
    ["a split set with a gap", "clonezilla-gpt-gzip", (d) => fs.renameSync(path.join(d, "loop0p2.ext4-ptcl-img.gz.aa"), path.join(d, "loop0p2.ext4-ptcl-img.gz.ab")), /loop0p2\.ext4-ptcl-img\.gz\.aa: missing piece of the split set/],
    ["a huge pt.sf", "clonezilla-mbr-zstd", (d) => fs.appendFileSync(path.join(d, "loop0-pt.sf"), "#".repeat(300 << 10)), /loop0-pt\.sf: too large/],
    ["hidden data longer than the gap before the first partition", "clonezilla-mbr-zstd", (d) => fs.appendFileSync(path.join(d, "loop0-hidden-data-after-mbr"), new Uint8Array(4096)), /loop0-hidden-data-after-mbr: too large/],
  ];
  for (const [what, name, change, message] of cases) {
    test(what, () => {
      const dir = broken(name, change);
      const r = runCli(["restore", dir, "-o", path.join(tempDir(), "o.raw")]);
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trimEnd().split("\n").length).toBe(1);
      expect(r.stderr).not.toMatch(/at .*\.ts:\d+/);
    });
  }
});

/** tree.txt names: printable ASCII, "\\\\" for a backslash, \\xNN for any other byte (UTF-8 included) */
function unescapeName(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && s[i + 1] === "\\") {
      bytes.push(0x5c);
      i++;
    } else if (s[i] === "\\" && s[i + 1] === "x") {
      bytes.push(parseInt(s.slice(i + 2, i + 4), 16));
      i += 3;
    } else bytes.push(s.charCodeAt(i));
  }
  return Buffer.from(bytes).toString("utf8");
}

describe("served and mounted partitions hold the original files", () => {
  /** path → sha256 of every regular file of FOLDER.pN.tree.txt */
  const tree = (folder: string, n: number): Map<string, string> => {
    const out = new Map<string, string>();
    for (const line of fs.readFileSync(path.join(CZ, `${folder}.p${n}.tree.txt`), "utf8").split("\n").slice(1)) {
      const c = line.split("\t");
      if (c[1] === "f") out.set(unescapeName(c[0]!), c[7]!);
    }
    return out;
  };

  peerTest(!which("qemu-img") && "qemu-img is not installed (apt: qemu-utils)")("serve DIR + qemu-img convert, then each partition through a loop device (ext4, ntfs-3g, mtools)", async () => {
    const f = folders().find((x) => x.name === "clonezilla-mbr-zstd")!;
    // as Clonezilla wrote it (one zstd frame per partition): read through the seek indexes
    const dir = copyFolder(f.name);
    const server = spawn(process.execPath, [CLI, "serve", dir, "--port", "0"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const port = await new Promise<string>((resolve, reject) => {
      server.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /nbd:\/\/127\.0\.0\.1:(\d+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      server.on("exit", () => reject(new Error(`serve ended: ${out}`)));
    });
    const raw = path.join(tempDir(), "served.raw");
    try {
      const r = spawnSync("qemu-img", ["convert", "-O", "raw", `nbd://127.0.0.1:${port}`, raw]);
      expect(r.stderr.toString()).toBe("");
    } finally {
      server.kill("SIGTERM");
    }
    expect(sha256File(raw)).toBe(f.sha256);

    if (!isRoot || !which("losetup")) return void console.log("skipped: mounting partitions needs root and losetup");
    const folder = readClonezillaFolder(path.join(CZ, f.name));
    const checked: string[] = [];
    for (const p of folder.disks[0]!.layout.partitions.filter((q) => q.content.kind === "image")) {
      const n = p.number;
      const loop = spawnSync("losetup", ["-f", "--show", "-r", "-o", String(p.start), "--sizelimit", String(p.size), raw]).stdout.toString().trim();
      expect(loop).toMatch(/^\/dev\/loop\d+$/);
      const mnt = fs.mkdtempSync(path.join(tempDir(), "m"));
      try {
        const files = tree(f.name, n);
        const fsName = (p.content as { fs: string }).fs;
        let read: (rel: string) => Buffer;
        let unmount = () => {};
        if (fsName === "vfat") {
          if (!which("mtype")) {
            console.log(`skipped ${p.name}: mtype is not installed (apt: mtools)`);
            continue;
          }
          read = (rel) => spawnSync("mtype", ["-i", loop, `::${rel}`], { maxBuffer: 1 << 26 }).stdout;
        } else {
          const tool = fsName === "ntfs" ? ["ntfs-3g", "-o", "ro", loop, mnt] : ["mount", "-o", "ro", loop, mnt];
          if (!which(tool[0]!) || (fsName === "ntfs" && !fs.existsSync("/dev/fuse"))) {
            console.log(`skipped ${p.name}: ${tool[0]} or /dev/fuse is missing`);
            continue;
          }
          expect(spawnSync(tool[0]!, tool.slice(1)).status).toBe(0);
          unmount = () => void spawnSync(fsName === "ntfs" ? "fusermount3" : "umount", fsName === "ntfs" ? ["-u", mnt] : [mnt]);
          read = (rel) => fs.readFileSync(path.join(mnt, rel));
        }
        try {
          for (const [rel, digest] of files) expect(`${rel} ${sha256(read(rel))}`).toBe(`${rel} ${digest}`);
          checked.push(`${p.name} (${fsName}, ${files.size} files)`);
        } finally {
          unmount();
        }
      } finally {
        spawnSync("losetup", ["-d", loop]);
      }
    }
    console.log(`mounted and compared: ${checked.join(", ")}`);
    expect(checked.length).toBeGreaterThanOrEqual(which("mtype") && which("ntfs-3g") && fs.existsSync("/dev/fuse") ? 4 : 2);
  }, 240_000);
});

describe("mount DIR", () => {
  peerTest((!fs.existsSync("/dev/fuse") || !which("fusermount3") || !isRoot) && "FUSE mounts need /dev/fuse, fusermount3 (apt: fuse3) and root")("the whole disk as one file in a FUSE mount reads as the original disk; DIR@N as the partition", async () => {
    const f = folders().find((x) => x.name === "clonezilla-gpt-gzip")!;
    // as Clonezilla wrote it (pigz, split): read through the seek indexes
    const dir = copyFolder(f.name);
    for (const [input, name, expected] of [[dir, "clonezilla-gpt-gzip.raw", f.sha256], [`${dir}@loop0p4`, "clonezilla-gpt-gzip@loop0p4.raw", undefined]] as const) {
      const mnt = fs.mkdtempSync(path.join(tempDir(), "mnt"));
      const child = spawn(process.execPath, [CLI, "mount", input, mnt], { stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      child.stdout.on("data", (d: Buffer) => void (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => void (out += d.toString()));
      try {
        for (let i = 0; i < 200 && !out.includes("mounted "); i++) await Bun.sleep(50);
        expect(out).toMatch(/^mounted /);
        const file = path.join(mnt, name);
        if (expected) expect(sha256File(file)).toBe(expected);
        else {
          // the swap partition: the header mkswap wrote, then zeros
          const head = fs.readFileSync(file).subarray(0, 8192);
          expect(head.subarray(4086, 4096).toString()).toBe("SWAPSPACE2");
          expect(head.subarray(1024 + 28, 1024 + 31).toString()).toBe("swp");
          expect(fs.statSync(file).size).toBe(141279 * 512);
        }
      } finally {
        spawnSync("fusermount3", ["-u", mnt]);
        await new Promise((resolve) => (child.exitCode !== null ? resolve(null) : child.on("exit", resolve)));
      }
    }
  }, 120_000);
});

describe("hostile raw disks", () => {
  const disk = (sectors: number, edit: (b: Buffer) => void): string => {
    const file = path.join(tempDir(), "hostile.raw");
    const b = Buffer.alloc(sectors * 512);
    edit(b);
    fs.writeFileSync(file, b);
    return file;
  };
  const slot = (b: Buffer, sector: number, i: number, type: number, start: number, size: number) => {
    const at = sector * 512 + 446 + i * 16;
    b[at + 4] = type;
    b.writeUInt32LE(start, at + 8);
    b.writeUInt32LE(size, at + 12);
    b[sector * 512 + 510] = 0x55;
    b[sector * 512 + 511] = 0xaa;
  };

  test("an EBR chain that loops back is an error, not a hang", () => {
    const file = disk(4096, (b) => {
      slot(b, 0, 0, 0x05, 100, 2000);
      slot(b, 100, 0, 0x83, 10, 50);
      slot(b, 100, 1, 0x05, 0, 200); // the link points at the first EBR again
    });
    const r = runCli(["info", file]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/the EBR chain loops/);
  });

  test("a logical partition outside its extended one", () => {
    const file = disk(4096, (b) => {
      slot(b, 0, 0, 0x05, 100, 200);
      slot(b, 100, 0, 0x83, 10, 1000);
    });
    expect(runCli(["info", file]).stderr).toMatch(/logical partition 5 lies outside the extended partition/);
  });

  peerTest(!which("sfdisk") && "sfdisk is not installed (apt: fdisk)")("GPT entries whose CRC does not hold", () => {
    const file = path.join(tempDir(), "gpt.raw");
    fs.writeFileSync(file, "");
    fs.truncateSync(file, 8 << 20);
    expect(spawnSync("sfdisk", ["-q", file], { input: "label: gpt\nstart=2048, size=4096\n" }).status).toBe(0);
    expect(runCli(["info", file]).code).toBe(0);
    const b = fs.readFileSync(file);
    b[1024 + 40] = b[1024 + 40]! ^ 1;
    fs.writeFileSync(file, b);
    const r = runCli(["info", `${file}@1`]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/offset 1,024: GPT entry array CRC32 does not match/);
  }, 60_000);
});

describe("restore DIR to a block device", () => {
  peerTest((!isRoot || !which("losetup")) && "block devices need root and losetup")("refused when smaller than the disk; the exact disk when large enough", () => {
    const f = folders().find((x) => x.name === "clonezilla-mbr-zstd")!;
    const small = path.join(tempDir(), "small.img");
    const big = path.join(tempDir(), "big.img");
    fs.writeFileSync(small, "");
    fs.truncateSync(small, 10 << 20);
    fs.writeFileSync(big, "");
    fs.truncateSync(big, f.size + (1 << 20));
    const attach = (file: string) => spawnSync("losetup", ["-f", "--show", file]).stdout.toString().trim();
    const a = attach(small);
    const b = attach(big);
    try {
      expect(a).toMatch(/^\/dev\/loop\d+$/);
      const refused = runCli(["restore", path.join(CZ, f.name), "-o", a, "--force"]);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toBe(`imgtool: ${a}: the device holds ${withCommas(10 << 20)} bytes; the volume needs ${withCommas(f.size)}\n`);
      const r = runCli(["restore", path.join(CZ, f.name), "-o", b, "--force"]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const fd = fs.openSync(b, "r");
      const h = new Bun.CryptoHasher("sha256");
      const buf = new Uint8Array(8 << 20);
      for (let done = 0; done < f.size; ) {
        const n = fs.readSync(fd, buf, 0, Math.min(buf.length, f.size - done), done);
        h.update(buf.subarray(0, n));
        done += n;
      }
      fs.closeSync(fd);
      expect(h.digest("hex")).toBe(f.sha256);
    } finally {
      spawnSync("losetup", ["-d", a]);
      spawnSync("losetup", ["-d", b]);
    }
  }, 120_000);
});
