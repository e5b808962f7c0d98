// restore --fit and info --minimum against the real tools: resize2fs/e2fsck, ntfsresize/ntfsfix,
// fatresize/fsck.fat, sgdisk, sfdisk, blkid. Each test skips, saying why, when one is missing.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { printable, UsageError } from "../src/errors.ts";
import { bytesVolume, type DiskLayout, type DiskPartition, partitionVolume } from "../src/disk/disk-volume.ts";
import { fitDisk } from "../src/fit/fit-input.ts";
import { type PartitionSizing, planFit } from "../src/fit/plan.ts";
import { ResizeTools } from "../src/fit/fs-tools.ts";
import { FAT_OFFSET, InOrderVolume, SplitView, viewUnavailable } from "../src/fit/view.ts";
import { readSlots } from "../src/disk/mbr.ts";
import { openFileSystem } from "../src/fs/open.ts";
import { DiskInput } from "../src/input/disk-input.ts";
import { openInput } from "../src/input/open-input.ts";
import { treeOf } from "./fs-tree.ts";
import { CLI, FIXTURES, runCli, tempDir, which } from "./helpers.ts";

/** A copy of the Clonezilla fixtures: --fit builds the seek index of each image it measures next to it, as mount and serve do */
const CZ = path.join(tempDir(), "clonezilla");
fs.cpSync(path.join(FIXTURES, "clonezilla"), CZ, { recursive: true });
const MIB = 1 << 20;
const TOOLS = ["resize2fs", "e2fsck", "ntfsresize", "ntfsfix", "fatresize", "fsck.fat", "sgdisk", "sfdisk", "blkid"];

/** Why the tests cannot run here, or undefined. */
function missing(): string | undefined {
  const absent = TOOLS.filter((t) => !which(t));
  if (absent.length) return `skipped: ${absent.join(", ")} not installed (apt-get install e2fsprogs ntfs-3g fatresize dosfstools gdisk fdisk)`;
  // the tools work on a FUSE view of each partition
  const noView = viewUnavailable(process.env.PATH ?? "");
  return noView ? `skipped: ${noView}` : undefined;
}

/** path → "type size content" of FOLDER.pN.tree.txt; ext4 keeps every column (mode, owner, mtime, links) */
function recordedTree(folder: string, n: number, full: boolean): string[] {
  const lines = fs.readFileSync(path.join(CZ, `${folder}.p${n}.tree.txt`), "utf8").trimEnd().split("\n").slice(1);
  return lines.map((l) => pick(l.split("\t"), full)).sort();
}

function pick(c: string[], full: boolean): string {
  return full ? c.slice(0, 8).join("\t") : [c[0], c[1], c[1] === "d" ? "0" : c[4], c[7]].join("\t");
}

function treeOfPartition(disk: string, n: number, full: boolean): string[] {
  const input = openInput(`${disk}@${n}`);
  try {
    const volume = input.openVolume();
    const fsys = openFileSystem(volume);
    // tree.txt names: printable ASCII, other bytes as \xNN
    return treeOf(fsys)
      .map((l) => l.split("\t"))
      .map((c) => pick([printable(new TextEncoder().encode(c[0]!)), ...c.slice(1)], full))
      .sort();
  } finally {
    input.close();
  }
}

function sh(cmd: string[]): { code: number; out: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", env: { ...process.env, LC_ALL: "C", PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
  return { code: r.exitCode ?? 1, out: r.stdout.toString() + r.stderr.toString() };
}

/** One partition of a restored disk as a file of its own. */
function partitionFile(disk: string, n: number): string {
  const out = path.join(path.dirname(disk), `${path.basename(disk)}.p${n}`);
  const r = runCli(["restore", `${disk}@${n}`, "-o", out, "--force", "-q"]);
  expect(r.stderr).toBe("");
  return out;
}

interface FsCheck {
  n: number;
  kind: "ext4" | "ntfs" | "vfat";
}

const FOLDERS: Record<string, { label: "gpt" | "dos"; parts: FsCheck[]; swap?: number }> = {
  "clonezilla-gpt-gzip": { label: "gpt", parts: [{ n: 1, kind: "vfat" }, { n: 2, kind: "ext4" }, { n: 3, kind: "ntfs" }], swap: 4 },
  "clonezilla-mbr-zstd": { label: "dos", parts: [{ n: 1, kind: "ext4" }, { n: 2, kind: "ntfs" }, { n: 5, kind: "vfat" }, { n: 6, kind: "ext4" }] },
};

/** Every file system of the restored disk passes its own check and holds the recorded files. */
function checkFileSystems(folder: string, disk: string): void {
  for (const { n, kind } of FOLDERS[folder]!.parts) {
    const file = partitionFile(disk, n);
    const check = kind === "ext4" ? sh(["e2fsck", "-fn", file]) : kind === "ntfs" ? sh(["ntfsfix", "-n", file]) : sh(["fsck.fat", "-n", file]);
    expect({ n, kind, code: check.code, out: check.out }).toMatchObject({ n, kind, code: 0 });
    if (kind === "vfat") expect(check.out).not.toMatch(/differ|Auto-copying|Free cluster summary/);
    expect(treeOfPartition(disk, n, kind === "ext4")).toEqual(recordedTree(folder, n, kind === "ext4"));
    fs.rmSync(file);
  }
}

/** sfdisk -d text: the label, the last usable LBA and the partitions' fields by number. */
function parseSf(text: string): { label: string; lastLba?: number; parts: Map<number, Record<string, string>> } {
  const parts = new Map<number, Record<string, string>>();
  let label = "";
  let lastLba: number | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("label:")) label = line.split(":")[1]!.trim();
    if (line.startsWith("last-lba:")) lastLba = Number(line.split(":")[1]);
    const m = /^\S+?(\d+) : (.*)$/.exec(line);
    if (!m) continue;
    const fields: Record<string, string> = {};
    for (const kv of m[2]!.split(",")) {
      const [k, v] = kv.split("=").map((x) => x.trim());
      if (k && v !== undefined) fields[k] = v;
    }
    parts.set(Number(m[1]), fields);
  }
  return { label, lastLba, parts };
}

function table(disk: string): ReturnType<typeof parseSf> {
  const r = sh(["sfdisk", "-d", disk]);
  expect(r.code).toBe(0);
  return parseSf(r.out);
}

/** Same partitions, types, GUIDs, names and flags as the backup's table; all inside the new disk. */
function checkTable(folder: string, disk: string, size: number): void {
  const original = parseSf(fs.readFileSync(path.join(CZ, folder, "loop0-pt.sf"), "utf8")).parts;
  const now = table(disk);
  expect(now.label).toBe(FOLDERS[folder]!.label);
  expect([...now.parts.keys()]).toEqual([...original.keys()]);
  for (const [n, o] of original) {
    const p = now.parts.get(n)!;
    expect({ n, type: p.type, uuid: p.uuid, name: p.name, attrs: p.attrs, bootable: p.bootable }).toEqual({ n, type: o.type, uuid: o.uuid, name: o.name, attrs: o.attrs, bootable: o.bootable });
    expect(Number(p.start) + Number(p.size)).toBeLessThanOrEqual(size / 512);
  }
  if (now.label === "gpt") {
    expect(now.lastLba).toBe(size / 512 - 34);
    const v = sh(["sgdisk", "-v", disk]);
    expect(v.out).toContain("No problems found");
  } else {
    const v = sh(["sfdisk", "-V", disk]);
    expect(v.out).toContain("No errors detected");
  }
}

function fit(folder: string, size: number, extra: string[] = []): { disk: string; stderr: string; scratch: string } {
  const dir = tempDir();
  const scratch = path.join(dir, "scratch");
  fs.mkdirSync(scratch);
  const disk = path.join(dir, "disk.img");
  const r = runCli(["restore", path.join(CZ, folder), "-o", disk, "--fit", "--size", String(size), "--tmp-dir", scratch, ...extra]);
  if (r.code !== 0) throw new Error(`restore --fit failed (${r.code}): ${r.stderr}`);
  expect(fs.statSync(disk).size).toBe(size);
  expect(fs.readdirSync(scratch)).toEqual([]);
  return { disk, stderr: r.stderr, scratch };
}

/** restore --fit of clonezilla-mbr-zstd onto 200M with `tool` replaced by a script on PATH; output and --tmp-dir in a fresh directory */
function withFakeTool(tool: string, script: string): { dir: string; tmp: string; out: string; args: string[]; env: Record<string, string> } {
  const dir = tempDir();
  const bin = path.join(dir, "bin");
  const tmp = path.join(dir, "tmp");
  fs.mkdirSync(bin);
  fs.mkdirSync(tmp);
  fs.writeFileSync(path.join(bin, tool), `#!/bin/sh\n${script}`, { mode: 0o755 });
  const out = path.join(dir, "x.img");
  return { dir, tmp, out, args: ["restore", path.join(CZ, "clonezilla-mbr-zstd"), "-o", out, "--fit", "--size", "200M", "--tmp-dir", tmp, "-q"], env: { PATH: `${bin}:${process.env.PATH}` } };
}

describe("restore --fit onto a smaller disk", () => {
  for (const folder of Object.keys(FOLDERS)) {
    for (const share of [0.6, 0.8]) {
      test(`${folder} onto ${share * 100}% of its disk`, () => {
        const why = missing();
        if (why) return void console.log(why);
        const size = Math.round(300 * share) * MIB;
        const { disk, stderr } = fit(folder, size);
        expect(stderr).toContain("new layout for");
        expect(stderr).toMatch(/shrink/);
        checkTable(folder, disk, size);
        checkFileSystems(folder, disk);
        const swap = FOLDERS[folder]!.swap;
        if (swap !== undefined) {
          const saved = fs.readFileSync(path.join(CZ, folder, `swappt-loop0p${swap}.info`), "utf8");
          const file = partitionFile(disk, swap);
          const probe = sh(["blkid", "-p", "-o", "export", file]).out;
          expect(probe).toContain("TYPE=swap");
          for (const m of saved.matchAll(/^(UUID|LABEL)="([^"]*)"/gm)) expect(probe.toLowerCase()).toContain(`${m[1]}=${m[2]}`.toLowerCase());
          // the header's last page is the new partition's
          const header = fs.readFileSync(file).subarray(0, 4096);
          expect(new DataView(header.buffer, header.byteOffset).getUint32(1028, true)).toBe(Math.floor(fs.statSync(file).size / 4096) - 1);
        }
      }, 120_000);
    }
  }

  test("onto exactly the minimum info --minimum reports", () => {
    const why = missing();
    if (why) return void console.log(why);
    const folder = "clonezilla-mbr-zstd";
    const info = runCli(["info", path.join(CZ, folder), "--minimum", "--json"]);
    expect(info.stderr).toBe("");
    const minimum = JSON.parse(info.stdout.toString()).minimum;
    expect(minimum.minimum).toBeLessThan(300 * MIB);
    const { disk } = fit(folder, minimum.minimum);
    checkTable(folder, disk, minimum.minimum);
    checkFileSystems(folder, disk);
  }, 120_000);
});

describe("restore --fit onto a block device", () => {
  test("its size is the device's (no --size); the disk read back from it passes every check", () => {
    const why = missing() ?? (process.getuid?.() !== 0 ? "skipped: needs root (a loop device)" : which("losetup") ? undefined : "skipped: losetup is not installed (apt-get install mount)");
    if (why) return void console.log(why);
    const dir = tempDir();
    const backing = path.join(dir, "device.img");
    fs.writeFileSync(backing, "");
    fs.truncateSync(backing, 200 * MIB);
    const loop = sh(["losetup", "-f", "--show", backing]).out.trim();
    expect(loop).toMatch(/^\/dev\/loop\d+$/);
    try {
      const r = runCli(["restore", path.join(CZ, "clonezilla-mbr-zstd"), "-o", loop, "--fit", "--force", "-q", "--tmp-dir", dir]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
    } finally {
      sh(["losetup", "-d", loop]);
    }
    checkTable("clonezilla-mbr-zstd", backing, 200 * MIB);
    checkFileSystems("clonezilla-mbr-zstd", backing);
  }, 120_000);
});

describe("restore --fit onto a larger disk", () => {
  test("MBR: the last (logical) ext4 grows and stays clean", () => {
    const why = missing();
    if (why) return void console.log(why);
    const folder = "clonezilla-mbr-zstd";
    const size = 400 * MIB;
    const { disk } = fit(folder, size);
    checkTable(folder, disk, size);
    checkFileSystems(folder, disk);
    const t = table(disk);
    const p6 = t.parts.get(6)!;
    expect(Number(p6.start) + Number(p6.size)).toBe(size / 512);
    const file = partitionFile(disk, 6);
    const h = sh(["dumpe2fs", "-h", file]).out;
    const blocks = Number(/Block count:\s+(\d+)/.exec(h)![1]) * Number(/Block size:\s+(\d+)/.exec(h)![1]);
    expect(blocks).toBeGreaterThan(Number(p6.size) * 512 - 4 * MIB);
  }, 120_000);

  test("GPT --grow 3: the NTFS grows, the swap after it keeps its size", () => {
    const why = missing();
    if (why) return void console.log(why);
    const folder = "clonezilla-gpt-gzip";
    const size = 400 * MIB;
    const { disk } = fit(folder, size, ["--grow", "3"]);
    checkTable(folder, disk, size);
    checkFileSystems(folder, disk);
    const t = table(disk);
    expect(Number(t.parts.get(3)!.size)).toBe(184320 + 100 * 2048);
    expect(Number(t.parts.get(4)!.size)).toBe(141279);
    const info = sh(["ntfsresize", "--info", "--force", "--no-progress-bar", partitionFile(disk, 3)]).out;
    expect(Number(/Current volume size: (\d+)/.exec(info)![1])).toBeGreaterThan(180 * MIB);
  }, 120_000);
});

/** restore --fit of a fixture folder into a fresh directory (also its --tmp-dir). */
function fitInto(folder: string, extra: string[]): { r: ReturnType<typeof runCli>; dir: string; out: string } {
  const dir = tempDir();
  const out = path.join(dir, "x.img");
  return { r: runCli(["restore", path.join(CZ, folder), "-o", out, "--fit", "--tmp-dir", dir, ...extra]), dir, out };
}

describe("refusals before a byte is written", () => {
  test("a target below the minimum names the minimum; nothing is created", () => {
    if (missing()) return void console.log(missing());
    const { r, dir } = fitInto("clonezilla-gpt-gzip", ["--size", "20M"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^imgtool: the backup cannot fit on 20\.0 MB \(20971520 bytes\): it needs at least .* \(\d+ bytes\)/);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(fs.readdirSync(dir)).toEqual([]);
  }, 60_000);

  test("an XFS partition that alone exceeds the target is named with its file system", () => {
    const { r, dir } = fitInto("pub-linuxfs", ["--size", "300M"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot fit .*loop0p2 \(xfs, 320\.0 MB\) cannot shrink: XFS cannot shrink/);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(fs.readdirSync(dir)).toEqual([]);
  }, 60_000);

  test("--size-of below a partition's minimum, and for one that keeps its size", () => {
    if (missing()) return void console.log(missing());
    const dir = tempDir();
    const out = path.join(dir, "x.img");
    const low = runCli(["restore", path.join(CZ, "clonezilla-gpt-gzip"), "-o", out, "--fit", "--size", "200M", "--size-of", "2=1M", "--tmp-dir", dir]);
    expect(low.code).toBe(2);
    expect(low.stderr).toMatch(/^imgtool: --size-of 2: loop0p2 \(ext4\) cannot be smaller than/);
    const boot = runCli(["restore", path.join(CZ, "clonezilla-gpt-gzip"), "-o", out, "--fit", "--size", "200M", "--size-of", "1=20M", "--tmp-dir", dir]);
    expect(boot.code).toBe(2);
    expect(boot.stderr).toContain("keeps its size: boot partition");
    expect(fs.readdirSync(dir)).toEqual([]);
  }, 60_000);

  test("a missing resize tool is named with its Debian package", () => {
    const input = openInput(path.join(CZ, "clonezilla-mbr-zstd"));
    const dir = tempDir();
    try {
      expect(input).toBeInstanceOf(DiskInput);
      let error: unknown;
      try {
        fitDisk(input as DiskInput, { target: 200 * MIB, tools: new ResizeTools("/nonexistent", dir) });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(UsageError);
      expect((error as Error).message).toBe("loop0p1: sizing its ext file system needs resize2fs, which is not installed (Debian package e2fsprogs: apt-get install e2fsprogs)");
      expect(fs.readdirSync(dir)).toEqual([]);
    } finally {
      input.close();
    }
  });

  test("no FUSE to show the tools their volumes: refused naming fuse3, before anything exists", () => {
    if (missing()) return void console.log(missing());
    const input = openInput(path.join(CZ, "clonezilla-mbr-zstd"));
    const dir = tempDir();
    const bin = path.join(dir, "bin");
    fs.mkdirSync(bin);
    // the resize tools are there, fusermount3 is not
    for (const tool of ["e2fsck", "resize2fs", "ntfsresize", "fatresize"]) fs.symlinkSync(which(tool)!, path.join(bin, tool));
    try {
      let error: unknown;
      try {
        fitDisk(input as DiskInput, { target: 200 * MIB, tools: new ResizeTools(bin, dir) });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(UsageError);
      expect((error as Error).message).toBe("loop0p1: sizing its ext file system: FUSE needs fusermount3, which is not installed (apt-get install fuse3)");
      expect(fs.readdirSync(dir)).toEqual(["bin"]);
    } finally {
      input.close();
    }
  });

  test("a --tmp-dir that cannot hold the views is refused, naming it, before anything exists", () => {
    if (missing()) return void console.log(missing());
    const dir = tempDir();
    const out = path.join(dir, "disk.img");
    const gone = path.join(dir, "no-such-dir");
    const r = runCli(["restore", path.join(CZ, "clonezilla-mbr-zstd"), "-o", out, "--fit", "--size", "200M", "--tmp-dir", gone, "-q"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`imgtool: loop0p1: sizing its ext file system: --tmp-dir ${gone}: ENOENT\n`);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  test("a tool that fails: its output verbatim, then one line; nothing written, nothing left in --tmp-dir", () => {
    if (missing()) return void console.log(missing());
    const { tmp, out, args, env } = withFakeTool("resize2fs", "echo 'resize2fs 9.9 (fake)'\necho \"Bad magic number in super-block while trying to open $2\" >&2\nexit 1\n");
    const r = runCli(args, { env });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^resize2fs 9\.9 \(fake\)\nBad magic number in super-block while trying to open \S+\/loop0p1\.ext\nimgtool: loop0p1: sizing its ext file system: resize2fs failed \(exit 1\); its output is above\n$/);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(tmp)).toEqual([]);
  }, 60_000);

  test("--dry-run prints the plan and writes nothing; --fit options need --fit; a file target needs --size", () => {
    if (missing()) return void console.log(missing());
    const { r: dry, dir, out } = fitInto("clonezilla-mbr-zstd", ["--size", "200M", "--dry-run"]);
    expect(dry.code).toBe(0);
    expect(dry.stdout.toString()).toMatch(/new layout for 200\.0 MB[^\n]*\n +# +name/);
    expect(dry.stdout.toString()).toMatch(/loop0p6 +ext4 .* shrink/);
    expect(fs.readdirSync(dir)).toEqual([]);
    const noFit = runCli(["restore", path.join(CZ, "clonezilla-mbr-zstd"), "-o", out, "--size", "200M"]);
    expect(noFit.code).toBe(2);
    expect(noFit.stderr).toBe("imgtool: --size is an option of --fit\n");
    const noSize = runCli(["restore", path.join(CZ, "clonezilla-mbr-zstd"), "-o", out, "--fit"]);
    expect(noSize.code).toBe(2);
    expect(noSize.stderr).toContain("needs --size");
    expect(fs.readdirSync(dir)).toEqual([]);
  }, 60_000);
});

describe("the view a resize tool works on", () => {
  test("reads and writes split at the new size: the target's bytes before it, the overlay's past it; FAT behind a one-partition MBR", () => {
    const dir = tempDir();
    const target = path.join(dir, "target");
    const at = 3 * 4096;
    const old = 64 * 1024;
    const kept = 40 * 1024;
    const before = new Uint8Array(at + kept + 8192).map((_, i) => (i * 7 + 3) & 0xff);
    fs.writeFileSync(target, before);
    const fd = fs.openSync(target, "r+");
    const view = new SplitView("t", old, kept, false, dir);
    try {
      view.writeBeyond(kept + 100, new Uint8Array(50).fill(0xab));
      view.place(fd, at);
      expect(view.size).toBe(old);
      const r = view.read(kept - 10, 200);
      expect([...r.subarray(0, 10)]).toEqual([...before.subarray(at + kept - 10, at + kept)]);
      expect(r.subarray(10, 110).every((b) => b === 0)).toBe(true);
      expect(r.subarray(110, 160).every((b) => b === 0xab)).toBe(true);
      expect(r.subarray(160).every((b) => b === 0)).toBe(true);
      view.write(kept - 4, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
      const after = fs.readFileSync(target);
      expect([...after.subarray(at + kept - 4, at + kept)]).toEqual([1, 2, 3, 4]);
      // what follows the kept part in the target (the next partition's room) is untouched
      expect(after.subarray(at + kept).equals(Buffer.from(before.subarray(at + kept)))).toBe(true);
      expect(after.subarray(0, at + kept - 4).equals(Buffer.from(before.subarray(0, at + kept - 4)))).toBe(true);
      expect([...view.read(kept - 4, 8)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      // zeroing spans both parts, a piece at a time, and stops where it was told
      view.zero(kept - 2, 110);
      expect([...view.read(kept - 4, 2)]).toEqual([1, 2]);
      expect(view.read(kept - 2, 110).every((b) => b === 0)).toBe(true);
      expect(view.read(kept + 108, 42).every((b) => b === 0xab)).toBe(true);
      // the overlay is unnamed: nothing appears in the directory
      expect(fs.readdirSync(dir)).toEqual(["target"]);
    } finally {
      view.close();
    }
    const fat = new SplitView("f", old, kept, true, dir);
    try {
      fat.place(fd, at);
      expect(fat.size).toBe(FAT_OFFSET + old);
      const head = fat.read(0, 512);
      expect([head[510], head[511]]).toEqual([0x55, 0xaa]);
      expect(readSlots(head)[0]).toMatchObject({ start: FAT_OFFSET / 512, size: old / 512 });
      expect([...fat.read(FAT_OFFSET, 16)]).toEqual([...before.subarray(at, at + 16)]);
      // the head (fatresize rewrites the MBR's entry) stays in memory, never reaches the target
      fat.write(446, new Uint8Array(16));
      expect(fat.read(446, 16).every((b) => b === 0)).toBe(true);
      expect(fs.readFileSync(target).subarray(0, at).equals(Buffer.from(before.subarray(0, at)))).toBe(true);
      // a zeroed range longer than the piece zero() writes at a time (the whole view: head, kept part, overlay)
      expect(fat.size).toBeGreaterThan(1 << 20);
      fat.zero(0, fat.size);
      expect(fat.read(0, fat.size).every((b) => b === 0)).toBe(true);
      const zeroed = fs.readFileSync(target);
      expect(zeroed.subarray(at, at + kept).every((b) => b === 0)).toBe(true);
      expect(zeroed.subarray(at + kept).equals(Buffer.from(before.subarray(at + kept)))).toBe(true);
    } finally {
      fat.close();
      fs.closeSync(fd);
    }
  });

  test("a write the target refuses names the view, the part and the volume offset", () => {
    const dir = tempDir();
    const target = path.join(dir, "target");
    fs.writeFileSync(target, new Uint8Array(64 * 1024));
    const readOnly = fs.openSync(target, "r");
    const view = new SplitView("sda2", 64 * 1024, 40 * 1024, false, dir);
    try {
      view.place(readOnly, 0);
      expect(() => view.write(4096, new Uint8Array(8))).toThrow("sda2: cannot write the target at volume offset 4,096: EBADF");
    } finally {
      view.close();
      fs.closeSync(readOnly);
    }
  });

  test("the read-only view decodes the image in order as far as reads reach, then reads at random", () => {
    const input = openInput(path.join(CZ, "clonezilla-mbr-zstd"));
    try {
      const layout = (input as DiskInput).span.layout;
      const p = layout.partitions.find((x) => x.number === 1)!;
      const whole = partitionVolume(layout, p);
      let opened = 0;
      const random = () => {
        opened++;
        return partitionVolume(layout, p);
      };
      const view = new InOrderVolume(layout, p, random, 2 * MIB);
      try {
        // the superblock and the group descriptors: decoded in order, no random access opened
        for (const [at, n] of [[1024, 1024], [0, 4096], [4096, 8192], [1024, 1024]] as const) expect(Buffer.from(view.read(at, n)).equals(Buffer.from(whole.read(at, n)))).toBe(true);
        expect(opened).toBe(0);
        // far past 2 MiB of data: through the random-access volume, opened once
        const far = p.size - 64 * 1024;
        expect(Buffer.from(view.read(far, 65536)).equals(Buffer.from(whole.read(far, 65536)))).toBe(true);
        expect(Buffer.from(view.read(p.size / 2, 4096)).equals(Buffer.from(whole.read(p.size / 2, 4096)))).toBe(true);
        expect(opened).toBe(1);
        // what was decoded in order is still read from there
        expect(Buffer.from(view.read(512, 3000)).equals(Buffer.from(whole.read(512, 3000)))).toBe(true);
      } finally {
        view.close();
        whole.close();
      }
    } finally {
      input.close();
    }
  });

  test("a tool that fails while the disk is written: its output verbatim, one line, no output file, nothing left in --tmp-dir", () => {
    if (missing()) return void console.log(missing());
    // e2fsck runs only when the partition is resized, after it is written
    const { dir, tmp, out, args, env } = withFakeTool("e2fsck", "echo 'e2fsck 9.9 (fake)'\necho \"$3: Superblock invalid\" >&2\nexit 8\n");
    const r = runCli(args, { env });
    expect(r.stderr).toMatch(/^e2fsck 9\.9 \(fake\)\n\S+\/loop0p1\.ext: Superblock invalid\nimgtool: loop0p1: checking its ext file system before resizing: e2fsck failed \(exit 8\); its output is above\n$/);
    expect(r.code).toBe(1);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(dir).sort()).toEqual(["bin", "tmp"]);
    expect(fs.readdirSync(tmp)).toEqual([]);
  }, 60_000);

  test("a signal while a tool runs on its view: the tool is ended, nothing is left (no output, no mount, no directory), exit 128 + n", async () => {
    if (missing()) return void console.log(missing());
    const started = path.join(tempDir(), "started");
    const { tmp, out, args, env } = withFakeTool("e2fsck", `echo $$ > ${started}\nexec sleep 60\n`);
    const child = Bun.spawn([process.execPath, CLI, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
    const deadline = Date.now() + 30_000;
    while (!fs.existsSync(started) && Date.now() < deadline) await Bun.sleep(50);
    expect(fs.existsSync(started)).toBe(true);
    const mounts = () => fs.readFileSync("/proc/self/mounts", "utf8").split("\n").filter((l) => l.includes(tmp));
    expect(mounts().length).toBe(1);
    child.kill("SIGTERM");
    const code = await child.exited;
    const stderr = await new Response(child.stderr).text();
    expect({ code, stderr }).toEqual({ code: 143, stderr: "imgtool: stopped by SIGTERM\n" });
    const tool = Number(fs.readFileSync(started, "utf8"));
    await Bun.sleep(200);
    expect(fs.existsSync(`/proc/${tool}`) ? fs.readFileSync(`/proc/${tool}/stat`, "utf8").split(" ")[2] : "gone").toMatch(/gone|Z/);
    expect(mounts()).toEqual([]);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(tmp)).toEqual([]);
  }, 60_000);
});

describe("info --minimum", () => {
  test("ext4 as resize2fs -P computes, NTFS as ntfsresize --info reports, swap its header, the ESP as saved", () => {
    if (missing()) return void console.log(missing());
    const folder = "clonezilla-gpt-gzip";
    const info = runCli(["info", path.join(CZ, folder), "--minimum", "--json"]);
    expect(info.stderr).toBe("");
    const m = JSON.parse(info.stdout.toString()).minimum;
    const byNumber = new Map<number, { minimum: number; size: number; how: string }>(m.partitions.map((p: { number: number }) => [p.number, p]));
    // the peers, run here on a full restore of each partition
    const dir = tempDir();
    const whole = path.join(dir, "whole.img");
    expect(runCli(["restore", path.join(CZ, folder), "-o", whole, "-q"]).code).toBe(0);
    const ext = partitionFile(whole, 2);
    const blocks = Number(/minimum size of the filesystem: (\d+)/.exec(sh(["resize2fs", "-P", ext]).out)![1]);
    const blockSize = Number(/Block size:\s+(\d+)/.exec(sh(["dumpe2fs", "-h", ext]).out)![1]);
    expect(byNumber.get(2)!.minimum).toBe(blocks * blockSize);
    const ntfs = sh(["ntfsresize", "--info", "--force", "--no-progress-bar", partitionFile(whole, 3)]).out;
    expect(byNumber.get(3)!.minimum).toBe(Number(/You might resize at (\d+) bytes/.exec(ntfs)![1]));
    expect(byNumber.get(4)!.minimum).toBe(40960);
    expect(byNumber.get(1)!.minimum).toBe(byNumber.get(1)!.size);
    expect(byNumber.get(1)!.how).toContain("boot partition");
    // the first partition's start, each partition at its minimum rounded up to the MiB, the backup GPT
    const mib = (x: number) => Math.ceil(x / MIB) * MIB;
    expect(m.minimum).toBe(MIB + byNumber.get(1)!.size + mib(byNumber.get(2)!.minimum) + mib(byNumber.get(3)!.minimum) + mib(byNumber.get(4)!.minimum) + 33 * 512);
    const text = runCli(["info", path.join(CZ, folder), "--minimum"]).stdout.toString();
    expect(text).toMatch(/minimum sizes of disk loop0: the disk .* \([\d,]+ bytes\) of 300\.0 MB/);
    expect(text).toMatch(/2 +loop0p2 +ext4 +100\.0 MB +\S+ MB +\S+ MB +resize2fs -P/);
    // FAT: the clusters in use (partclone's used blocks) and what fatresize can bring it to
    const mbr = JSON.parse(runCli(["info", path.join(CZ, "clonezilla-mbr-zstd"), "--minimum", "--json"]).stdout.toString()).minimum;
    const fat = mbr.partitions.find((p: { number: number }) => p.number === 5);
    expect(fat.used).toBeGreaterThan(0);
    expect(fat.used).toBeLessThan(fat.minimum);
    expect(fat.how).toContain("fatresize -i");
  }, 120_000);

  test("XFS, btrfs and exFAT are as saved", () => {
    const r = runCli(["info", path.join(CZ, "pub-linuxfs"), "--minimum", "--json"]);
    expect(r.stderr).toBe("");
    const m = JSON.parse(r.stdout.toString()).minimum;
    for (const p of m.partitions) expect(p.minimum).toBe(p.size);
    expect(m.partitions.map((p: { how: string }) => p.how.split(":")[0])).toEqual(["as saved", "as saved", "as saved", "as saved"]);
  });
});

describe("planFit (the layout alone)", () => {
  const partition = (number: number, start: number, size: number, type: string, kind: "image" | "swap" | "container" = "image"): DiskPartition => ({
    name: `sda${number}`,
    number,
    start,
    size,
    type,
    content: kind === "container" ? { kind: "container" } : kind === "swap" ? { kind: "swap", header: new Uint8Array(4096) } : { kind: "volume", volume: bytesVolume("empty", new Uint8Array(0)) },
  });
  const sizing = (p: DiskPartition, minimum: number, fixed?: string): PartitionSizing => ({ partition: p, fs: "ext4", resizable: !fixed, minimum, fixed });
  const mbr = (partitions: DiskPartition[], size: number): DiskLayout => ({ name: "sda", size, sectorSize: 512, label: "dos", tables: [{ offset: 0, bytes: new Uint8Array(512), what: "MBR" }], partitions });

  test("logical partitions: the extended starts aligned, each logical a MiB after the last so its EBR fits", () => {
    const ps = [partition(1, MIB, 100 * MIB, "83"), partition(2, 101 * MIB, 100 * MIB, "5", "container"), partition(5, 102 * MIB, 49 * MIB, "83"), partition(6, 152 * MIB, 48 * MIB, "83")];
    const layout = mbr(ps, 200 * MIB);
    const plan = planFit(layout, [sizing(ps[0]!, 10 * MIB), sizing(ps[1]!, 0, "extended partition"), sizing(ps[2]!, 10 * MIB), sizing(ps[3]!, 10 * MIB)], 100 * MIB);
    const at = new Map(plan.partitions.map((p) => [p.partition.number, p]));
    expect(plan.alignment).toBe(MIB);
    expect(at.get(1)!.start).toBe(MIB);
    expect(plan.extended!.start).toBe(at.get(1)!.start + at.get(1)!.size);
    expect(at.get(5)!.start).toBe(plan.extended!.start + MIB);
    expect(at.get(6)!.start).toBe(at.get(5)!.start + at.get(5)!.size + MIB);
    expect(at.get(6)!.start + at.get(6)!.size).toBe(100 * MIB);
    expect(plan.extended!.start + plan.extended!.size).toBe(100 * MIB);
    for (const p of plan.partitions) expect(p.size).toBeGreaterThanOrEqual(10 * MIB);
  });

  test("a disk aligned on 63 sectors keeps that alignment; the first start stays", () => {
    const ps = [partition(1, 63 * 512, 1000 * 63 * 512, "83"), partition(2, 1001 * 63 * 512, 1000 * 63 * 512, "83")];
    const layout = mbr(ps, 2001 * 63 * 512);
    const plan = planFit(layout, ps.map((p) => sizing(p, 100 * 63 * 512)), 1500 * 63 * 512);
    expect(plan.alignment).toBeLessThan(MIB);
    expect(plan.partitions[0]!.start).toBe(63 * 512);
    expect(plan.partitions[1]!.start % plan.alignment).toBe(0);
  });

  test("--size-of fixes one size, the others share the rest; below the minimum is refused", () => {
    const ps = [partition(1, MIB, 100 * MIB, "83"), partition(2, 101 * MIB, 99 * MIB, "83")];
    const layout = mbr(ps, 200 * MIB);
    const plan = planFit(layout, ps.map((p) => sizing(p, 10 * MIB)), 150 * MIB, { sizeOf: new Map([["1", 30 * MIB]]) });
    expect(plan.partitions[0]!.size).toBe(30 * MIB);
    expect(plan.partitions[1]!.start + plan.partitions[1]!.size).toBe(150 * MIB);
    expect(() => planFit(layout, ps.map((p) => sizing(p, 10 * MIB)), 150 * MIB, { sizeOf: new Map([["1", 5 * MIB]]) })).toThrow("cannot be smaller than");
  });

  test("onto a larger disk --grow picks the partition; the ones after it move and keep their size", () => {
    const ps = [partition(1, MIB, 100 * MIB, "83"), partition(2, 101 * MIB, 99 * MIB, "83")];
    const layout = mbr(ps, 200 * MIB);
    const plan = planFit(layout, ps.map((p) => sizing(p, p.size)), 300 * MIB, { grow: "1" });
    expect(plan.partitions[0]!.size).toBe(200 * MIB);
    expect(plan.partitions[0]!.action).toBe("grow");
    expect(plan.partitions[1]!.start).toBe(201 * MIB);
    expect(plan.partitions[1]!.size).toBe(99 * MIB);
    expect(() => planFit(layout, ps.map((p) => sizing(p, 10 * MIB)), 150 * MIB, { grow: "1" })).toThrow("--grow is for a target larger");
  });
});
