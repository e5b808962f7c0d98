import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { openDisk } from "../src/disk/open-disk.ts";
import { bytesVolume } from "../src/disk/disk-volume.ts";
import { buildMdaHeader, buildPvLabel, lvmCrc, parsePvLabel } from "../src/lvm/label.ts";
import { findVolumeGroups } from "../src/lvm/lv-volume.ts";
import { parseMetadataText, readVolumeGroup } from "../src/lvm/metadata.ts";
import { CLI, FIXTURES, runCli, sha256, sha256File, tempDir, which } from "./helpers.ts";
import { treeOfDirectory } from "./fs-tree.ts";

const LVM_FIXTURES = path.join(FIXTURES, "clonezilla-lvm");
const isRoot = process.getuid?.() === 0;

interface Folder {
  name: string;
  vg: string;
  /** the disks in the folder, in the order restore --disk takes them */
  disks: string[];
  /** LV name → sha256 and size of the original LV (made by make-lvm-small.sh before ocs-sr saved it) */
  lvs: Map<string, { sha256: string; size: number }>;
}

function folder(name: string, vg: string): Folder {
  const lvs = new Map<string, { sha256: string; size: number }>();
  for (const line of fs.readFileSync(path.join(LVM_FIXTURES, `${name}.lv-sha256.txt`), "utf8").trim().split("\n")) {
    const [lv, digest, size] = line.split(" ");
    lvs.set(lv!, { sha256: digest!, size: Number(size) });
  }
  const dir = unpack(name);
  const disks = fs.readFileSync(path.join(dir, "disk"), "utf8").trim().split(/\s+/);
  return { name, vg, disks, lvs };
}

const unpacked = new Map<string, string>();
/** A fresh copy of the folder (seek indexes get written beside its images). */
function unpack(name: string): string {
  const dir = tempDir();
  const r = spawnSync("tar", ["xzf", path.join(LVM_FIXTURES, `${name}.tar.gz`), "-C", dir]);
  if (r.status !== 0) throw new Error(`tar: ${r.stderr}`);
  unpacked.set(name, path.join(dir, name));
  return path.join(dir, name);
}

const SMALL = folder("lvm-small", "vg0");
const MULTI = folder("lvm-multi", "vg1");
const NTFSCLONE = folder("lvm-ntfsclone", "vg2");
const FOLDERS = [SMALL, MULTI, NTFSCLONE];

function restoreDisks(f: Folder): string[] {
  const dir = unpack(f.name);
  return f.disks.map((d) => {
    const out = path.join(tempDir(), `${d}.raw`);
    const r = runCli(["restore", dir, ...(f.disks.length > 1 ? ["--disk", d] : []), "-o", out, "--sparse"]);
    if (r.code !== 0) throw new Error(`restore ${f.name} ${d}: ${r.stderr}`);
    return out;
  });
}

/** Loop devices of the files with a node for each partition (no udev here), detached afterwards. */
function withLoops<T>(files: string[], fn: (partitions: string[]) => T): T {
  const loops: string[] = [];
  try {
    const partitions: string[] = [];
    for (const f of files) {
      const loop = spawnSync("losetup", ["-f", "--show", "-P", f]).stdout.toString().trim();
      if (!/^\/dev\/loop\d+$/.test(loop)) throw new Error(`losetup failed for ${f}`);
      loops.push(loop);
      spawnSync("partx", ["-a", loop]);
      const base = path.basename(loop);
      for (let i = 0; i < 20 && !fs.existsSync(`/sys/block/${base}/${base}p1`); i++) Bun.sleepSync(100);
      for (const p of fs.readdirSync(`/sys/block/${base}`).filter((n) => new RegExp(`^${base}p\\d+$`).test(n))) {
        const [major, minor] = fs.readFileSync(`/sys/block/${base}/${p}/dev`, "utf8").trim().split(":");
        fs.rmSync(`/dev/${p}`, { force: true });
        spawnSync("mknod", [`/dev/${p}`, "b", major!, minor!]);
        partitions.push(`/dev/${p}`);
      }
    }
    return fn(partitions);
  } finally {
    for (const l of loops) spawnSync("losetup", ["-d", l]);
  }
}

/** An LVM command that sees only `devices`, never activates, never asks udev. */
function lvm(devices: string[], args: string[]): { code: number | null; stdout: string; stderr: string } {
  const filter = [...devices.map((d) => `'a|^${d}$|'`), "'r|.*|'"].join(",");
  const config = `global{activation=0} devices{filter=[${filter}] obtain_device_list_from_udev=0} activation{udev_sync=0 udev_rules=0}`;
  const [cmd, ...rest] = args;
  const r = spawnSync(cmd!, ["--config", config, ...rest], { env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: "1" } });
  const stderr = r.stderr.toString().split("\n").filter((l) => l.trim() && !/Activation disabled/.test(l)).join("\n");
  return { code: r.status, stdout: r.stdout.toString(), stderr };
}

/** Each LV's bytes as LVM's own report places them: pe_start + extent x extent_size of each PV, stripe by stripe. */
function lvBytesByLvmReport(devices: string[], vg: string): Map<string, Uint8Array> {
  const num = (s: string) => Number(String(s).replace(/B$/, ""));
  const ext = num(lvm(devices, ["vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_extent_size", vg]).stdout.trim());
  const pvs = JSON.parse(lvm(devices, ["pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "pv_name,pe_start"]).stdout).report[0].pv as { pv_name: string; pe_start: string }[];
  const peStart = new Map(pvs.map((p) => [p.pv_name, num(p.pe_start)]));
  const segs = JSON.parse(lvm(devices, ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size,seg_start_pe,seg_size_pe,stripes,stripe_size,seg_pe_ranges", vg]).stdout).report[0].lv as Record<string, string>[];
  const out = new Map<string, Uint8Array>();
  const readDev = (dev: string, offset: number, length: number) => {
    const buf = new Uint8Array(length);
    const fd = fs.openSync(dev, "r");
    try {
      fs.readSync(fd, buf, 0, length, offset);
    } finally {
      fs.closeSync(fd);
    }
    return buf;
  };
  for (const s of segs) {
    const lv = out.get(s.lv_name!) ?? new Uint8Array(num(s.lv_size!));
    out.set(s.lv_name!, lv);
    const start = num(s.seg_start_pe!) * ext;
    const count = num(s.seg_size_pe!);
    const stripes = num(s.stripes!);
    const ranges = s.seg_pe_ranges!.split(" ").map((r) => ({ dev: r.slice(0, r.lastIndexOf(":")), first: Number(r.slice(r.lastIndexOf(":") + 1).split("-")[0]) }));
    if (stripes === 1) {
      lv.set(readDev(ranges[0]!.dev, peStart.get(ranges[0]!.dev)! + ranges[0]!.first * ext, count * ext), start);
      continue;
    }
    const ss = num(s.stripe_size!);
    for (let chunk = 0; chunk < (count * ext) / ss; chunk++) {
      const r = ranges[chunk % stripes]!;
      const row = Math.floor(chunk / stripes);
      lv.set(readDev(r.dev, peStart.get(r.dev)! + r.first * ext + row * ss, ss), start + chunk * ss);
    }
  }
  return out;
}

/** The image's volume as partclone.restore (ntfsclone --restore-image) writes it (a dd image: its decompressed bytes). */
function partcloneRestore(file: string): Uint8Array {
  const out = path.join(tempDir(), "lv.out");
  // Clonezilla names a gzipped ntfsclone image .ntfs-img; zcat -f passes plain bytes through
  const cat = file.endsWith(".zst") ? "zstdcat" : "zcat -f";
  const r = file.includes(".dd-ptcl-img")
    ? spawnSync("sh", ["-c", `${cat} "$0" > "$1"`, file, out])
    : file.includes(".ntfs-img")
      ? spawnSync("sh", ["-c", `${cat} "$0" | ntfsclone -q --restore-image --overwrite "$1" -`, file, out])
      : spawnSync("sh", ["-c", `${cat} "$0" | partclone.restore -q -s - -O "$1" --restore_raw_file`, file, out]);
  if (r.status !== 0) throw new Error(`partclone.restore ${file}: ${r.stderr}`);
  return new Uint8Array(fs.readFileSync(out));
}

describe("info of an LVM folder", () => {
  for (const f of FOLDERS) {
    test(`${f.name}: every LV with its segments, file system and image; no problems`, () => {
      const r = runCli(["info", unpacked.get(f.name)!, "--json"]);
      expect(r.stderr).toBe("");
      const facts = JSON.parse(r.stdout.toString());
      expect(facts.problems).toEqual([]);
      expect(facts.lvm.map((v: { name: string }) => v.name)).toEqual([f.vg]);
      const lvs = facts.lvm[0].lvs as { name: string; size: number; layout: string; fs?: string; files?: string[] }[];
      expect(lvs.map((l) => [l.name, l.size]).sort()).toEqual([...f.lvs].map(([n, v]) => [n, v.size]).sort());
      for (const l of lvs) if (l.fs !== "swap") expect(l.files?.[0]).toStartWith(`${f.vg}-${l.name}.`);
      if (f === MULTI) {
        expect(lvs.find((l) => l.name === "data")!.layout).toBe("striped");
        expect(facts.lvm[0].pvs.map((p: { partition: string }) => p.partition)).toEqual(["loop8p2", "loop7p1"]);
      }
      const text = runCli(["info", unpacked.get(f.name)!]).stdout.toString();
      expect(text).toContain(`LVM volume group ${f.vg}: extent 1.0 MB`);
    });
  }
});

describe("restore DIR of an LVM folder", () => {
  const lvmWhy = !isRoot ? "needs root for loop devices" : !which("losetup") ? "losetup is missing" : !which("lvs") ? "LVM's tools are missing (apt-get install lvm2)" : "";
  for (const f of FOLDERS) {
    test.skipIf(lvmWhy !== "")(`${f.name}: pvs/vgs/lvs/vgck/pvck accept the disks; each LV read at LVM's extents equals partclone.restore of its image and the original LV${lvmWhy ? ` (skipped: ${lvmWhy})` : ""}`, () => {
      const disks = restoreDisks(f);
      const dir = unpacked.get(f.name)!;
      // partclone LV images were decoded in order: no seek index was needed (raw dd and ntfsclone ones are read at random)
      expect(fs.readdirSync(dir).filter((n) => n.endsWith(".imgtool-index") && /-ptcl-img/.test(n) && !/\.dd-ptcl-img/.test(n))).toEqual([]);
      withLoops(disks, (parts) => {
        const pvParts = parts.filter((p) => lvm(parts, ["pvs", "--noheadings", "-o", "pv_name"]).stdout.includes(p));
        expect(pvParts.length).toBe(f === MULTI ? 2 : 1);
        const vgs = lvm(parts, ["vgs", "--noheadings", "-o", "vg_name,pv_count,lv_count", f.vg]);
        expect(vgs.stderr).toBe("");
        expect(vgs.stdout.trim().split(/\s+/)).toEqual([f.vg, String(pvParts.length), String(f.lvs.size)]);
        const vgck = lvm(parts, ["vgck", f.vg]);
        expect(vgck.stderr).toBe("");
        expect(vgck.code).toBe(0);
        for (const p of pvParts) {
          const pvck = lvm(parts, ["pvck", p]);
          expect(pvck.code).toBe(0);
          expect(pvck.stdout + pvck.stderr).not.toContain("CHECK:");
        }
        const segs = lvm(parts, ["lvs", "--segments", "--noheadings", "-o", "lv_name,segtype", f.vg]);
        expect(segs.code).toBe(0);
        if (f === MULTI) expect(segs.stdout).toMatch(/data\s+striped/);
        expect(segs.stdout.trim().split("\n").length).toBe(f === SMALL ? 4 : f.lvs.size + (f === MULTI ? 1 : 0));
        const bytes = lvBytesByLvmReport(parts, f.vg);
        expect([...bytes.keys()].sort()).toEqual([...f.lvs.keys()].sort());
        for (const [lv, data] of bytes) {
          expect(`${lv} ${sha256(data)}`).toBe(`${lv} ${f.lvs.get(lv)!.sha256}`);
          const image = fs.readdirSync(dir).find((n) => n.startsWith(`${f.vg}-${lv}.`) && !n.endsWith(".imgtool-index"));
          if (!image || !which(image.includes(".ntfs-img") ? "ntfsclone" : "partclone.restore")) continue;
          const restored = partcloneRestore(path.join(dir, image));
          // partclone does not save NTFS's backup boot sector (the last sector); imgtool writes it as ntfsfix -d would
          const n = image.includes(".ntfs-ptcl-img") ? data.length - 512 : data.length;
          expect(restored.length).toBe(data.length);
          expect(sha256(data.subarray(0, n))).toBe(sha256(restored.subarray(0, n)));
        }
      });
    }, 120_000);
  }

  test.skipIf(lvmWhy !== "")(`the PV equals what pvcreate --restorefile + vgcfgrestore --force write on a zeroed device: label sector byte for byte, metadata area, the VG text up to its comments and description${lvmWhy ? ` (skipped: ${lvmWhy})` : ""}`, () => {
    const dir = unpacked.get("lvm-small")!;
    const [disk] = restoreDisks(SMALL);
    const opened = openDisk(disk!);
    let ours: Uint8Array;
    try {
      const pv = opened.partitions[1]!;
      ours = pv.read(0, 1 << 20);
    } finally {
      opened.close();
    }
    const [, , uuid] = fs.readFileSync(path.join(dir, "lvm_vg_dev.list"), "utf8").trim().split(/\s+/);
    const theirsFile = path.join(tempDir(), "pv.raw");
    const size = openDisk(disk!).partitions[1]!.size;
    fs.writeFileSync(theirsFile, "");
    fs.truncateSync(theirsFile, size);
    const loop = spawnSync("losetup", ["-f", "--show", theirsFile]).stdout.toString().trim();
    let theirs: Uint8Array;
    try {
      const conf = path.join(dir, "lvm_vg0.conf");
      expect(lvm([loop], ["pvcreate", "-ff", "--yes", "--uuid", uuid!, "--zero", "y", "--restorefile", conf, loop]).code).toBe(0);
      expect(lvm([loop], ["vgcfgrestore", "--force", "-f", conf, "vg0"]).code).toBe(0);
      theirs = new Uint8Array(fs.readFileSync(theirsFile).subarray(0, 1 << 20));
    } finally {
      spawnSync("losetup", ["-d", loop]);
    }
    expect(Buffer.from(ours.subarray(0, 4096)).equals(Buffer.from(theirs.subarray(0, 4096)))).toBe(true);
    // the metadata area header: all but its checksum and the text's size and checksum
    expect(Buffer.from(ours.subarray(4096 + 4, 4096 + 48)).equals(Buffer.from(theirs.subarray(4096 + 4, 4096 + 48)))).toBe(true);
    const text = (b: Uint8Array) => {
      const dv = new DataView(b.buffer, b.byteOffset + 4096);
      const at = Number(dv.getBigUint64(40, true));
      const len = Number(dv.getBigUint64(48, true));
      const t = b.subarray(4096 + at, 4096 + at + len);
      expect(dv.getUint32(56, true)).toBe(lvmCrc(t));
      return new TextDecoder().decode(t.subarray(0, len - 1));
    };
    const strip = (t: string) => t.split("\n").map((l) => l.replace(/\s*#.*$/, "").trim()).filter((l) => l && !/^(description|creation_time|creation_host|device) =/.test(l) && !l.startsWith("#"));
    const a = strip(text(ours));
    const b = strip(text(theirs));
    expect(a).toEqual(b);
  }, 60_000);

  test("every restore of a folder is the same bytes; the PV text is seqno + 1 of the backup, checksums hold", () => {
    const [a] = restoreDisks(SMALL);
    const [b] = restoreDisks(SMALL);
    expect(sha256File(a!)).toBe(sha256File(b!));
    const opened = openDisk(a!);
    try {
      expect(opened.volumeGroups.map((v) => [v.vg.name, v.vg.seqno])).toEqual([["vg0", readVolumeGroup(fs.readFileSync(path.join(unpacked.get("lvm-small")!, "lvm_vg0.conf"), "utf8"), { file: "conf", offset: 0 }).seqno + 1]]);
      const pv = opened.partitions[1]!;
      const label = parsePvLabel(pv.read(0, 2048), { file: a! })!;
      expect(label.sector).toBe(1);
      expect(label.deviceSize).toBe(pv.size);
      expect(label.metadataAreas).toEqual([{ offset: 4096, size: 1048576 - 4096 }]);
    } finally {
      opened.close();
    }
  }, 60_000);
});

describe("logical volumes as inputs", () => {
  test("DIR@VG/LV, --partition VG/LV and the image's own name VG-LV read the LV; the restored disk's LVs read the same", () => {
    const dir = unpacked.get("lvm-small")!;
    const root = SMALL.lvs.get("root")!.sha256;
    expect(sha256(runCli(["cat", `${dir}@vg0/root`]).stdout)).toBe(root);
    expect(sha256(runCli(["cat", dir, "--partition", "vg0/root"]).stdout)).toBe(root);
    expect(sha256(runCli(["cat", `${dir}@vg0-root`]).stdout)).toBe(root);
    expect(sha256(runCli(["cat", `${dir}@vg0/swap`]).stdout)).toBe(SMALL.lvs.get("swap")!.sha256);
    const [disk] = restoreDisks(SMALL);
    for (const [lv, want] of SMALL.lvs) expect(`${lv} ${sha256(runCli(["cat", `${disk}@vg0/${lv}`]).stdout)}`).toBe(`${lv} ${want.sha256}`);
    const info = runCli(["info", disk!, "--json"]);
    const facts = JSON.parse(info.stdout.toString());
    expect(facts.lvm[0].lvs.map((l: { name: string; fs: string }) => `${l.name} ${l.fs}`).sort()).toEqual(["data ext2/3/4 file system", "root ext2/3/4 file system", "swap swap"]);
    const none = runCli(["cat", `${dir}@vg0/nosuch`]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("vg0/root");
  }, 60_000);

  test("a striped LV and an LV over two disks read through the folder; one disk of the two lacks the other PV", () => {
    const dir = unpacked.get("lvm-multi")!;
    for (const [lv, want] of MULTI.lvs) expect(`${lv} ${sha256(runCli(["cat", `${dir}@vg1/${lv}`]).stdout)}`).toBe(`${lv} ${want.sha256}`);
    const [first, second] = restoreDisks(MULTI);
    // root lies wholly on the first disk's PV; data is striped over both
    expect(sha256(runCli(["cat", `${first}@vg1/root`]).stdout)).toBe(MULTI.lvs.get("root")!.sha256);
    const data = runCli(["cat", `${first}@vg1/data`]);
    expect(data.code).toBe(2);
    const info = JSON.parse(runCli(["info", second!, "--json"]).stdout.toString());
    expect(info.lvm[0].problems.join("\n")).toContain("pv0");
    expect(info.lvm[0].lvs.find((l: { name: string }) => l.name === "win").fs).toBe("NTFS file system");
  }, 60_000);

  test("an LV image read in order, then back: the later reads go through its seek index and agree", () => {
    const dir = unpack("lvm-small");
    const indexes = () => fs.readdirSync(dir).filter((n) => n.endsWith(".imgtool-index"));
    const opened = openDisk(dir);
    try {
      const root = opened.logicalVolumes.find((l) => l.partition.name === "vg0/root")!;
      const chunks: Uint8Array[] = [];
      for (let o = 0; o < root.size; o += 1 << 20) chunks.push(root.read(o, 1 << 20));
      expect(sha256(Buffer.concat(chunks))).toBe(SMALL.lvs.get("root")!.sha256);
      expect(indexes()).toEqual([]);
      expect(sha256(root.read(3 << 20, 1 << 20))).toBe(sha256(chunks[3]!));
      expect(sha256(root.read(100, 5000))).toBe(sha256(chunks[0]!.subarray(100, 5100)));
      expect(indexes()).toEqual(["vg0-root.ext4-ptcl-img.gz.imgtool-index"]);
    } finally {
      opened.close();
    }
  }, 60_000);

  test("a folder whose PV partition is a dd image (no LVM files): its LVs are found through the PV label in the image", () => {
    const [src, dir] = [unpack("lvm-small"), path.join(tempDir(), "pv-as-dd")];
    fs.mkdirSync(dir);
    for (const name of fs.readdirSync(src)) if (!/^(lvm_|vg0-|swappt-vg0-)/.test(name)) fs.copyFileSync(path.join(src, name), path.join(dir, name));
    const pv = `${SMALL.disks[0]}p2`;
    const bytes = runCli(["cat", `${src}@${pv}`]);
    expect(bytes.code).toBe(0);
    fs.writeFileSync(path.join(dir, `${pv}.dd-img`), bytes.stdout);
    for (const [lv, want] of SMALL.lvs) expect(`${lv} ${sha256(runCli(["cat", `${dir}@vg0/${lv}`]).stdout)}`).toBe(`${lv} ${want.sha256}`);
    expect(sha256(runCli(["cat", `${dir}@vg0-data`]).stdout)).toBe(SMALL.lvs.get("data")!.sha256);
  }, 60_000);

  test.skipIf(!which("sfdisk"))("a raw disk with both PVs of a VG (the two restored PV partitions copied into one disk): every LV, the striped one too", () => {
    const disks = restoreDisks(MULTI);
    const pvs = disks.map((d) => {
      const opened = openDisk(d);
      try {
        const pv = opened.partitions.find((p) => new TextDecoder().decode(p.read(512, 8)) === "LABELONE")!;
        return pv.read(0, pv.size);
      } finally {
        opened.close();
      }
    });
    const combined = path.join(tempDir(), "two-pvs.raw");
    const sectors = pvs.map((p) => p.length / 512);
    fs.writeFileSync(combined, new Uint8Array((2048 + sectors[0]! + sectors[1]! + 2048) * 512));
    const r = spawnSync("sfdisk", ["-q", combined], { input: `label: dos\nstart=2048, size=${sectors[0]}, type=8e\nstart=${2048 + sectors[0]!}, size=${sectors[1]}, type=8e\n` });
    expect(r.status).toBe(0);
    const fd = fs.openSync(combined, "r+");
    fs.writeSync(fd, pvs[0]!, 0, pvs[0]!.length, 2048 * 512);
    fs.writeSync(fd, pvs[1]!, 0, pvs[1]!.length, (2048 + sectors[0]!) * 512);
    fs.closeSync(fd);
    const facts = JSON.parse(runCli(["info", combined, "--json"]).stdout.toString());
    expect(facts.lvm[0].pvs.map((p: { partition: string }) => p.partition)).toEqual(["two-pvs.raw@1", "two-pvs.raw@2"]);
    expect(facts.lvm[0].problems).toEqual([]);
    for (const [lv, want] of MULTI.lvs) expect(`${lv} ${sha256(runCli(["cat", `${combined}@vg1/${lv}`]).stdout)}`).toBe(`${lv} ${want.sha256}`);
  }, 60_000);

  const kernelWhy = !isRoot ? "needs root" : "";
  for (const f of FOLDERS) {
    for (const tree of fs.readdirSync(LVM_FIXTURES).filter((n) => n.startsWith(`${f.name}.`) && n.endsWith(".tree.txt") && !/\.p\d+\.tree/.test(n))) {
      const lv = tree.slice(f.name.length + 1, -".tree.txt".length);
      test(`extract ${f.name}@${f.vg}/${lv} / equals the kernel's tree of the original LV${kernelWhy ? ` (owners skipped: ${kernelWhy})` : ""}`, () => {
        const lines = fs.readFileSync(path.join(LVM_FIXTURES, tree), "utf8").trimEnd().split("\n").slice(1);
        const dest = path.join(tempDir(), "out");
        const r = runCli(["extract", `${unpacked.get(f.name)}@${f.vg}/${lv}`, "-o", dest]);
        expect(r.stderr).not.toContain("imgtool:");
        expect(r.code).toBe(0);
        const isNtfs = lv === "win";
        const columns = (l: string) => {
          const [p, type, mode, owner, size, mtime, nlink, content] = l.split("\t");
          return [p, type, mode, isRoot ? owner : "-", size, mtime, type === "d" && isNtfs ? "-" : nlink, content].join("\t");
        };
        const got = treeOfDirectory(dest).map(columns);
        // ntfs-3g lists NTFS's own metadata files differently; compare what both list
        expect(isNtfs ? got.filter((l) => !l.startsWith("$")) : got).toEqual(lines.map(columns));
      }, 60_000);
    }
  }
});

describe("NVMe device names", () => {
  test("lvm-small with its names as Clonezilla writes them for nvme0n1 (files nvme0n1p2..., /dev/nvme0n1p2 in the lists): the same LVs, restore accepted", () => {
    const src = unpack("lvm-small");
    const dir = path.join(tempDir(), "lvm-nvme");
    fs.mkdirSync(dir);
    const disk = SMALL.disks[0]!;
    const rename = (s: string) => s.replaceAll(`${disk}p`, "nvme0n1p").replaceAll(disk, "nvme0n1");
    for (const name of fs.readdirSync(src)) {
      const bytes = fs.readFileSync(path.join(src, name));
      const text = /\.(gz|zst|imgtool-index)$|-mbr$|hidden-data/.test(name) ? bytes : Buffer.from(rename(bytes.toString("latin1")), "latin1");
      fs.writeFileSync(path.join(dir, rename(name)), text);
    }
    expect(fs.readFileSync(path.join(dir, "lvm_vg_dev.list"), "utf8")).toStartWith("vg0 /dev/nvme0n1p2 ");
    const facts = JSON.parse(runCli(["info", dir, "--json"]).stdout.toString());
    expect(facts.problems).toEqual([]);
    expect(facts.lvm[0].pvs[0].partition).toBe("nvme0n1p2");
    for (const [lv, want] of SMALL.lvs) expect(`${lv} ${sha256(runCli(["cat", `${dir}@vg0/${lv}`]).stdout)}`).toBe(`${lv} ${want.sha256}`);
    const out = path.join(tempDir(), "nvme.raw");
    expect(runCli(["restore", dir, "-o", out, "--sparse"]).code).toBe(0);
    for (const [lv, want] of SMALL.lvs) expect(`${lv} ${sha256(runCli(["cat", `${out}@vg0/${lv}`]).stdout)}`).toBe(`${lv} ${want.sha256}`);
  }, 60_000);
});

describe("serve DIR of an LVM folder", () => {
  test.skipIf(!which("qemu-img"))("qemu-img convert of the served disk equals restore DIR", async () => {
    const dir = unpacked.get("lvm-small")!;
    const [restored] = restoreDisks(SMALL);
    const socket = path.join(tempDir(), "nbd.sock");
    const proc = Bun.spawn([process.execPath, CLI, "serve", dir, "--socket", socket], { stdout: "pipe", stderr: "pipe" });
    try {
      const { value } = await proc.stdout.getReader().read();
      expect(new TextDecoder().decode(value)).toContain("serving");
      const out = path.join(tempDir(), "served.raw");
      const q = spawnSync("qemu-img", ["convert", "-f", "raw", "-O", "raw", `nbd+unix:///?socket=${socket}`, out], { encoding: "utf8" });
      expect(q.stderr).toBe("");
      expect(q.status).toBe(0);
      expect(sha256File(out)).toBe(sha256File(restored!));
    } finally {
      proc.kill("SIGTERM");
      await proc.exited;
    }
  }, 60_000);
});

describe("hostile LVM metadata is refused in one line naming the file and offset (test/failure/lvm/)", () => {
  const corpus = path.join(import.meta.dir, "failure", "lvm");
  for (const file of fs.readdirSync(corpus).filter((n) => n.endsWith(".raw.gz"))) {
    const expected = file.slice(0, -".raw.gz".length);
    test(expected, () => {
      const disk = path.join(tempDir(), "disk.raw");
      fs.writeFileSync(disk, zlib.gunzipSync(fs.readFileSync(path.join(corpus, file))));
      for (const args of [["info", disk], ["cat", `${disk}@vg9/root`]]) {
        const r = runCli(args);
        expect(r.code).toBe(/crc mismatch/.test(expected) ? 4 : 3);
        expect(r.stderr.trimEnd().split("\n")).toHaveLength(1);
        expect(r.stderr).toStartWith(`imgtool: ${disk}: offset `);
        expect(r.stderr).toContain(expected);
      }
    });
  }

  test("a vgcfgbackup file with LVs over the same extents, in a folder: one line naming lvm_vg0.conf and the offset", () => {
    const dir = unpack("lvm-small");
    const conf = path.join(dir, "lvm_vg0.conf");
    fs.writeFileSync(conf, fs.readFileSync(conf, "utf8").replace(/("pv0", )16/, "$110"));
    const r = runCli(["info", dir]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(new RegExp(`^imgtool: ${conf}: offset [\\d,]+: LVM metadata: data segment1: extents 10-19 of pv0 are also root's\\n$`));
  });

  test("a metadata text that wraps around the end of its circular area is read in its two pieces; the newest seqno over the PVs wins", () => {
    const pvWith = (seqno: number, at: number) => {
      const pv = new Uint8Array(64 << 10);
      const area = { offset: 4096, size: 8192 };
      const text = new TextEncoder().encode(`vg9 {\nid = "VGid00-0000-0000-0000-0000-0000-000000"\nseqno = ${seqno}\nextent_size = 8\nphysical_volumes {\npv0 {\nid = "abcdef-ghij-klmn-opqr-stuv-wxyz-012345"\ndev_size = 128\npe_start = 32\npe_count = 10\n}\n}\n}\n\0`);
      pv.set(buildPvLabel({ uuid: "abcdef-ghij-klmn-opqr-stuv-wxyz-012345", deviceSize: pv.length, dataAreas: [{ offset: 16384, size: 0 }], metadataAreas: [area], inVg: true }), 512);
      pv.set(buildMdaHeader(area, { offset: at, size: text.length, checksum: lvmCrc(text) }), 4096);
      const first = Math.min(text.length, area.size - at);
      pv.set(text.subarray(0, first), 4096 + at);
      pv.set(text.subarray(first), 4096 + 512);
      const volume = bytesVolume("pv", pv);
      return { name: `pv${seqno}`, file: `pv${seqno}`, at: 0, volume, label: parsePvLabel(pv.subarray(0, 2048), { file: "pv" })! };
    };
    const wrapped = pvWith(7, 8192 - 100);
    expect(findVolumeGroups([wrapped]).map((f) => [f.vg.name, f.vg.seqno])).toEqual([["vg9", 7]]);
    // two copies of one VG (its id), the newer one is used
    expect(findVolumeGroups([pvWith(3, 512), wrapped]).map((f) => [f.vg.seqno, f.source])).toEqual([[7, "pv7 (pv7 at 12188)"]]);
  });

  test("a thin-pool LV is named in info and its extents are holes; a swap LV without its swappt info gets a header without UUID or label", () => {
    const dir = unpack("lvm-small");
    const conf = path.join(dir, "lvm_vg0.conf");
    const text = fs.readFileSync(conf, "utf8");
    const data = text.indexOf("\t\tdata {");
    fs.writeFileSync(conf, text.slice(0, data) + text.slice(data).replace('type = "striped"', 'type = "thin-pool"'));
    fs.rmSync(path.join(dir, "swappt-vg0-swap.info"));
    const facts = JSON.parse(runCli(["info", dir, "--json"]).stdout.toString());
    expect(facts.problems).toContain("vg0/data is a thin-pool LV: its extents are not plain data and are written as holes");
    expect(facts.lvm[0].lvs.find((l: { name: string }) => l.name === "data").layout).toBe("thin-pool");
    const opened = openDisk(dir);
    try {
      expect(opened.logicalVolumes.map((l) => l.partition.name).sort()).toEqual(["vg0/root", "vg0/swap"]);
      const swap = opened.logicalVolumes.find((l) => l.partition.name === "vg0/swap")!.read(0, 4096);
      expect(new TextDecoder().decode(swap.subarray(4086))).toBe("SWAPSPACE2");
      expect(swap.subarray(1024 + 12, 1024 + 44).every((b) => b === 0)).toBe(true);
      const pv = opened.partitions[1]!;
      const ext = 1 << 20;
      // data's extents 16-25 of pv0: a hole, read as zeros
      expect([...pv.extents(ext + 16 * ext, 10 * ext)]).toEqual([{ offset: ext + 16 * ext, length: 10 * ext, data: false }]);
    } finally {
      opened.close();
    }
  }, 60_000);

  test("parser bounds: depth, item count, number size; the LVM crc is the IEEE register seeded 0xf597a6cf without the final inversion", () => {
    const place = { file: "t", offset: 0 };
    expect(() => parseMetadataText(`${"a {".repeat(40)}${"}".repeat(40)}`, place)).toThrow("nests too deeply");
    expect(() => parseMetadataText(`x = [${"1,".repeat(600_000)}1]`, place)).toThrow("more than 500000 items");
    expect(() => parseMetadataText("x = 99999999999999999999", place)).toThrow("number too large");
    const text = 'a { b = ["x", 1, -2] # c\n c = "q\\"r" }';
    expect(parseMetadataText(text, place)).toEqual([{ key: "a", at: 0, children: [{ key: "b", at: 4, value: ["x", 1, -2] }, { key: "c", at: text.indexOf(" c =") + 1, value: 'q"r' }] }]);
    // from a PV pvcreate wrote: its label sector's crc over bytes 20..511
    let crc = 0xf597a6cf;
    const data = new TextEncoder().encode("123456789");
    for (const b of data) {
      crc ^= b;
      for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
    }
    expect(lvmCrc(data)).toBe(crc >>> 0);
  });
});

describe("one logical volume, through the commands that read an input", () => {
  test("restore, verify and info of DIR@VG/LV; verify DIR reads every LV image and names a damaged one", () => {
    const dir = unpack("lvm-small");
    const out = path.join(tempDir(), "root.raw");
    expect(runCli(["restore", `${dir}@vg0/root`, "-o", out]).code).toBe(0);
    expect(sha256File(out)).toBe(SMALL.lvs.get("root")!.sha256);
    const one = runCli(["verify", `${dir}@vg0-data`]);
    expect(one.code).toBe(0);
    expect(one.stdout.toString()).toMatch(/OK \(logical volume vg0\/data, /);
    expect(runCli(["info", `${dir}@vg0/root`]).stdout.toString()).toMatch(/^content +ext2\/3\/4$/m);
    const all = runCli(["verify", dir]);
    expect(all.code).toBe(0);
    expect(all.stdout.toString()).toMatch(/^vg0\/root: vg0-root\.ext4-ptcl-img\.gz OK/m);
    expect(all.stdout.toString()).toMatch(/^vg0\/data: vg0-data\.ext4-ptcl-img\.gz OK/m);
    // a flipped byte deep in an LV's compressed image: verify DIR names the LV
    const image = path.join(dir, fs.readdirSync(dir).find((n) => n.startsWith("vg0-data."))!);
    const bytes = fs.readFileSync(image);
    bytes[bytes.length >> 1]! ^= 0x40;
    fs.writeFileSync(image, bytes);
    const bad = runCli(["verify", dir]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.toString()).toMatch(/^imgtool: vg0\/data: /m);
  }, 120_000);
});
