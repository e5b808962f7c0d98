// Clonezilla image folder, as clonezilla scripts/sbin/ocs-functions (task_savedisk, output_HD_info, save_part_table_mbr_dm_info) writes it.
import fs from "node:fs";
import path from "node:path";
import { ImageError } from "../errors.ts";
import { formats, openImage } from "../formats/detect.ts";
import { type OpenOptions, openStream } from "../source/open.ts";
import { splitSuffix } from "../source/split.ts";
import { readSavedLvm, type SavedLvm } from "../lvm/clonezilla-lvm.ts";
import { physicalVolumeVolume } from "../lvm/pv-volume.ts";
import { ascendingImage } from "../lvm/ascending-image.ts";
import { type DiskLayout, type DiskPartition, type PartitionContent, partitionVolume, type RawStream, type TableBytes } from "./disk-volume.ts";
import { completeBackup, hasGptSignature, parseGptEntries, parseGptHeader, partitionNumber, buildGpt } from "./gpt.ts";
import { buildEbrs, buildMbr, DEFAULT_GEOMETRY, EXTENDED_TYPES, type Geometry, type PlannedEntry, SECTOR } from "./mbr.ts";
import { MAX_DUMP_BYTES, parseSfdiskDump, type SfdiskDump } from "./sfdisk-dump.ts";
import { parseSwapInfo, swapHeader } from "./swap.ts";

/** a folder with more files than this is not a Clonezilla image */
const MAX_FILES = 100_000;
const MAX_DISKS = 64;
const MAX_TEXT = 1 << 20;
const MAX_HIDDEN = 64 << 20;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._+:-]{0,200}$/;
const COMPRESSIONS = "gz|bz2|lzo|lzma|xz|lzip|lrz|lz4|lz4mt|zst|zstmt|uncomp";
const HEAD_BYTES = 2048;
const CHECKSUM_FILES = ["MD5SUMS", "SHA1SUMS", "SHA256SUMS", "SHA512SUMS", "B2SUMS"] as const;

export interface ImageFile {
  partition: string;
  /** "partclone", "ntfsclone", "dd" */
  tool: string;
  /** from the file name: "ext4", "vfat", "ntfs", "dd" */
  fs: string;
  /** from the file name: "zst", "gz", "uncomp", "" */
  compression: string;
  pieces: string[];
}

export interface ChecksumList {
  file: string;
  algorithm: "md5" | "sha1" | "sha256" | "sha512" | "blake2b512";
  entries: { name: string; digest: string }[];
}

export interface ClonezillaDisk {
  layout: DiskLayout;
  dump: SfdiskDump;
  /** what the folder says and what it lacks, one line each */
  notes: string[];
}

export interface ClonezillaFolder {
  dir: string;
  disks: ClonezillaDisk[];
  /** the partitions Clonezilla saved (`parts`) */
  parts: string[];
  images: ImageFile[];
  checksums: ChecksumList[];
  /** missing pieces, disagreements; empty when consistent */
  problems: string[];
  /** files the folder has that nothing here reads */
  otherFiles: string[];
  /** LVM files present */
  lvm: string[];
  /** the volume groups Clonezilla saved (lvm_vg_dev.list, lvm_<VG>.conf), their PVs and LVs */
  savedLvm?: SavedLvm;
  /** each saved LV's content by its image name ("vg0-root"): an image, a swap header, or absent */
  lvContent(imageName: string, size: number): PartitionContent;
}

/** The folder's regular files by name; symlinks and anything else are refused, never followed. */
class FolderListing {
  readonly files = new Map<string, number>();
  readonly refused: string[] = [];
  /** names that are there but not regular files (symlinks, directories, ...) */
  readonly notFiles = new Set<string>();

  constructor(readonly dir: string) {
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch (e) {
      throw new ImageError({ file: dir }, (e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file or directory" : (e as Error).message);
    }
    if (!st.isDirectory()) throw new ImageError({ file: dir }, "not a directory");
    const dirents = fs.readdirSync(dir, { withFileTypes: true });
    if (dirents.length > MAX_FILES) throw new ImageError({ file: dir }, `more than ${MAX_FILES} files: not a Clonezilla image folder`);
    for (const d of dirents) {
      if (d.isFile()) this.files.set(d.name, fs.lstatSync(path.join(dir, d.name)).size);
      else {
        this.notFiles.add(d.name);
        this.refused.push(`${d.name}${d.isSymbolicLink() ? " (a symlink: not followed)" : d.isDirectory() ? "/" : " (not a regular file)"}`);
      }
    }
  }

  has(name: string): boolean {
    return this.files.has(name);
  }

  /** the path of a file of the folder; only names the listing holds */
  path(name: string): string {
    if (!this.files.has(name) || name.includes("/") || name === "." || name === "..") throw new Error(`not a file of the folder: ${name}`);
    return path.join(this.dir, name);
  }

  text(name: string, max = MAX_TEXT): string | undefined {
    if (!this.has(name)) return undefined;
    return new TextDecoder().decode(this.bytes(name, max));
  }

  bytes(name: string, max: number): Uint8Array {
    const size = this.files.get(name)!;
    if (size > max) throw new ImageError({ file: this.path(name) }, `too large for what it should hold`, `${size} bytes, at most ${max}`);
    const fd = fs.openSync(this.path(name), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const buf = new Uint8Array(size);
      let done = 0;
      while (done < size) {
        const n = fs.readSync(fd, buf, done, size - done, done);
        if (n === 0) break;
        done += n;
      }
      return buf.subarray(0, done);
    } finally {
      fs.closeSync(fd);
    }
  }
}

export function looksLikeClonezillaFolder(dir: string): boolean {
  try {
    return fs.statSync(dir).isDirectory() && (fs.existsSync(path.join(dir, "parts")) || fs.existsSync(path.join(dir, "disk")));
  } catch {
    return false;
  }
}

function names(text: string | undefined, file: string): string[] {
  if (text === undefined) return [];
  const raw = text.split(/\s+/).filter(Boolean);
  for (const n of raw) if (n.includes("..")) throw new ImageError({ file }, "not a device name", JSON.stringify(n.slice(0, 40)));
  // "cciss/c0d0" as the device is named; its files are named "cciss-c0d0"
  const out = raw.map((n) => deviceFileName(n));
  for (const n of out) if (!NAME.test(n)) throw new ImageError({ file }, "not a device name", JSON.stringify(n.slice(0, 40)));
  return [...new Set(out)];
}

/** "/dev/nvme0n1p1" → "nvme0n1p1", "/dev/cciss/c0d0p1" → "cciss-c0d0p1" (ocs to_filename) */
export function deviceFileName(device: string): string {
  return device.replace(/^\/dev\//, "").replace(/\//g, "-");
}

export function readClonezillaFolder(dir: string): ClonezillaFolder {
  const listing = new FolderListing(dir);
  const problems: string[] = [];
  const used = new Set<string>();
  const take = (name: string) => {
    used.add(name);
    return name;
  };
  const parts = names(listing.text(take("parts")), path.join(dir, "parts"));
  let diskNames = names(listing.text(take("disk")), path.join(dir, "disk"));
  if (diskNames.length === 0) diskNames = [...listing.files.keys()].filter((n) => n.endsWith("-pt.sf")).map((n) => n.slice(0, -"-pt.sf".length)).filter((n) => NAME.test(n));
  if (diskNames.length > MAX_DISKS) throw new ImageError({ file: path.join(dir, "disk") }, `more than ${MAX_DISKS} disks`);
  if (parts.length === 0 && diskNames.length === 0) throw new ImageError({ file: dir }, "not a Clonezilla image folder (no parts, disk or *-pt.sf file)");

  const images = findImages(listing, used);
  const devFs = parseDevFsList(listing.text(take("dev-fs.list")));
  const blkdev = listing.text(take("blkdev.list"));
  const savedLvm = readSavedLvm(listing, deviceFileName);
  for (const f of savedLvm?.files ?? []) take(f);
  for (const v of savedLvm?.vgs ?? []) for (const l of v.lvs) take(`swappt-${l.imageName}.info`);
  const lvNames = new Set(savedLvm?.vgs.flatMap((v) => v.lvs.map((l) => l.imageName)) ?? []);
  const pvParts = new Set(savedLvm?.vgs.flatMap((v) => v.pvs.map((p) => p.partition)) ?? []);
  const swapLvs = new Set(savedLvm?.vgs.flatMap((v) => v.lvs.filter((l) => l.isSwap).map((l) => l.imageName)) ?? []);
  const lvContent = (imageName: string, size: number): PartitionContent => {
    const c = partitionContent(listing, imageName, size, false, [...lvNames], images, devFs, take);
    // restore_logv runs mkswap on a swap LV (lvm_logv.list) even without its swappt info: no UUID or label then
    if (c.kind === "absent" && swapLvs.has(imageName)) return { kind: "swap", header: swapHeader(size, {}) };
    // a PV is restored in one ascending pass: each LV image decoded in order, its seek index only for going back
    // (a partclone image: its bitmap comes first; an ntfsclone one's is known only once its data is read); no
    // decoder thread: its worker would keep the process alive when a pass ends before the image does
    if (c.kind === "image" && c.tool === "partclone") return { ...c, open: (opts?: OpenOptions) => (opts?.seekIndex ? ascendingImage(c.open({ threads: false }), () => c.open(opts)) : c.open(opts)) };
    return c;
  };
  const disks: ClonezillaDisk[] = [];
  for (const d of diskNames) disks.push(readDisk(listing, d, parts, images, devFs, take));
  if (savedLvm) placePhysicalVolumes(disks, savedLvm, lvContent);
  for (const p of parts) {
    if (pvParts.has(p)) continue;
    if (!disks.some((d) => d.layout.partitions.some((q) => q.name === p))) {
      problems.push(`${p} is in parts but in no saved partition table`);
    }
    if (!images.some((i) => i.partition === p)) problems.push(`${p}: no image file (${p}.<fs>-ptcl-img..., ${p}.ntfs-img..., ${p}.dd-img...)`);
  }
  for (const img of images) if (!parts.includes(img.partition) && !lvNames.has(img.partition)) problems.push(`${img.pieces[0]}: an image of ${img.partition}, which parts does not list`);
  if (blkdev !== undefined) {
    const known = new Set(blkdev.split("\n").slice(1).map((l) => l.trim().split(/\s+/)[0]).filter(Boolean));
    for (const p of parts) if (!known.has(p)) problems.push(`${p} is not in blkdev.list`);
  }
  for (const d of disks) problems.push(...d.notes.filter((n) => n.startsWith("!")).map((n) => `${d.layout.name}: ${n.slice(1)}`));

  const checksums: ChecksumList[] = [];
  for (const file of CHECKSUM_FILES) {
    const text = listing.text(take(file), 16 << 20);
    if (text !== undefined) checksums.push(parseChecksumList(text, file, listing));
  }
  const lvm = [...listing.files.keys()].filter((n) => /^lvm_/.test(n));
  if (lvm.length && !savedLvm) problems.push(`LVM (${lvm.join(", ")}): no lvm_vg_dev.list, so the logical volumes cannot be placed on the disk`);
  if (savedLvm) {
    problems.push(...savedLvm.problems);
    for (const v of savedLvm.vgs) {
      for (const pv of v.pvs) if (!disks.some((d) => d.layout.partitions.some((q) => q.name === pv.partition))) problems.push(`${v.vg.name}: PV ${pv.partition} is in no saved partition table`);
      for (const l of v.lvs) if (l.lv.layout !== "linear" && l.lv.layout !== "striped") continue;
      else if (!l.isSwap && !images.some((i) => i.partition === l.imageName) && l.lv.visible) problems.push(`${v.vg.name}/${l.lv.name}: no image file (${l.imageName}.<fs>-ptcl-img...): written as zeros`);
    }
  }
  for (const n of listing.files.keys()) if (/^(Info-.*\.txt|clonezilla-img|blkid\.list|.*-chs\.sf|.*-gpt\.gdisk|.*-gpt\.sgdisk|.*-pt\.parted\.compact|.*-size|efi-nvram\.dat)$/.test(n)) used.add(n);
  const otherFiles = [...[...listing.files.keys()].filter((n) => !used.has(n)), ...listing.refused].sort();
  return { dir, disks, parts, images, checksums, problems, otherFiles, lvm, savedLvm, lvContent };
}

/** Each PV partition holds the PV as vgcfgrestore and the LV images' restores leave it. */
function placePhysicalVolumes(disks: ClonezillaDisk[], saved: SavedLvm, lvContent: (imageName: string, size: number) => PartitionContent): void {
  for (const disk of disks) {
    for (const p of disk.layout.partitions) {
      const vg = saved.vgs.find((v) => v.pvs.some((x) => x.partition === p.name));
      if (!vg) continue;
      const pv = vg.pvs.find((x) => x.partition === p.name)!;
      const lvLayout: DiskLayout = { name: vg.vg.name, size: 0, sectorSize: disk.layout.sectorSize, label: disk.layout.label, tables: [], partitions: [] };
      const volume = physicalVolumeVolume({
        vg: vg.vg,
        pvKey: pv.pv.key,
        uuid: pv.uuid,
        size: p.size,
        name: `${disk.layout.name} ${p.name}`,
        confName: path.basename(vg.conf),
        lvVolume(lvName) {
          const l = vg.lvs.find((x) => x.lv.name === lvName)!;
          if (l.lv.layout !== "linear" && l.lv.layout !== "striped") return undefined;
          const content = lvContent(l.imageName, l.lv.size);
          if (content.kind === "absent") return undefined;
          return partitionVolume(lvLayout, { name: `${vg.vg.name}/${lvName}`, number: 0, start: 0, size: l.lv.size, type: "lvm", content });
        },
      });
      p.content = { kind: "volume", volume };
    }
  }
}

function findImages(listing: FolderListing, used: Set<string>): ImageFile[] {
  const pattern = new RegExp(`^(?<part>[A-Za-z0-9._+:-]+?)\\.(?:(?<fs>[a-z0-9_]+)-ptcl-img|(?<ntfs>ntfs-img)|(?<dd>dd-img))(?:\\.(?<comp>${COMPRESSIONS}))?(?:\\.(?<suffix>[a-z]{2,}))?$`);
  const groups = new Map<string, ImageFile & { suffixes: string[]; base: string }>();
  for (const name of listing.files.keys()) {
    const m = pattern.exec(name);
    if (!m?.groups) continue;
    const g = m.groups;
    const suffix = g.suffix;
    const base = suffix ? name.slice(0, -suffix.length - 1) : name;
    let entry = groups.get(base);
    if (!entry) {
      const tool = g.ntfs ? "ntfsclone" : g.dd ? "dd" : "partclone";
      entry = { partition: g.part!, tool, fs: g.ntfs ? "ntfs" : g.dd ? "dd" : g.fs!, compression: g.comp ?? "", pieces: [], suffixes: [], base };
      groups.set(base, entry);
    }
    if (suffix) entry.suffixes.push(suffix);
    else entry.pieces.push(name);
    used.add(name);
  }
  const out: ImageFile[] = [];
  for (const e of groups.values()) {
    if (e.suffixes.length) {
      if (e.pieces.length) throw new ImageError({ file: listing.path(e.pieces[0]!) }, "both a whole image and split pieces of it");
      const set = new Set(e.suffixes);
      for (let i = 0; i < e.suffixes.length; i++) {
        const s = splitSuffix(i);
        if (!set.has(s)) throw new ImageError({ file: path.join(listing.dir, `${e.base}.${s}`) }, "missing piece of the split set", `${e.suffixes.length} pieces found`);
        e.pieces.push(`${e.base}.${s}`);
      }
    }
    // the image reader finds the pieces of a split set by name: one that is a symlink must not join them
    for (let i = 0; i <= e.pieces.length + 3; i++) {
      const name = `${e.base}.${splitSuffix(i)}`;
      if (listing.notFiles.has(name)) throw new ImageError({ file: path.join(listing.dir, name) }, "a piece of a split set that is not a regular file (a symlink is not followed)");
    }
    out.push({ partition: e.partition, tool: e.tool, fs: e.fs, compression: e.compression, pieces: e.pieces.map((p) => listing.path(p)) });
  }
  return out.sort((a, b) => a.partition.localeCompare(b.partition, "en", { numeric: true }));
}

function parseDevFsList(text: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of (text ?? "").split("\n")) {
    if (line.startsWith("#")) continue;
    const [dev, fsType] = line.trim().split(/\s+/);
    if (dev && fsType) out.set(deviceFileName(dev), fsType);
  }
  return out;
}

function parseChecksumList(text: string, file: string, listing: FolderListing): ChecksumList {
  const algorithm = ({ MD5SUMS: "md5", SHA1SUMS: "sha1", SHA256SUMS: "sha256", SHA512SUMS: "sha512", B2SUMS: "blake2b512" } as const)[file as (typeof CHECKSUM_FILES)[number]];
  const hexLength = { md5: 32, sha1: 40, sha256: 64, sha512: 128, blake2b512: 128 }[algorithm];
  const entries: ChecksumList["entries"] = [];
  for (const [i, line] of text.split("\n").entries()) {
    if (line.trim() === "") continue;
    const m = /^\\?([0-9a-fA-F]+) [ *](.+)$/.exec(line);
    if (!m || m[1]!.length !== hexLength) throw new ImageError({ file: listing.path(file) }, `line ${i + 1} is not "DIGEST  NAME"`, JSON.stringify(line.slice(0, 60)));
    entries.push({ name: m[2]!, digest: m[1]!.toLowerCase() });
  }
  return { file: listing.path(file), algorithm, entries };
}

function readDisk(listing: FolderListing, disk: string, parts: string[], images: ImageFile[], devFs: Map<string, string>, take: (n: string) => string): ClonezillaDisk {
  const notes: string[] = [];
  const sfName = take(`${disk}-pt.sf`);
  const sfText = listing.text(sfName, MAX_DUMP_BYTES);
  if (sfText === undefined) throw new ImageError({ file: path.join(listing.dir, sfName) }, `missing: the partition table of ${disk}`);
  const dump = parseSfdiskDump(sfText, listing.path(sfName));
  const ss = dump.sectorSize;

  // the disk's size: parted's "Disk /dev/sda: 614400s"; else the GPT's backup header LBA + 1
  let sizeSectors: number | undefined;
  const parted = listing.text(take(`${disk}-pt.parted`));
  const pm = parted ? /^Disk \S+: (\d+)s$/m.exec(parted) : null;
  if (pm) sizeSectors = Number(pm[1]);
  let gptFirst: Uint8Array | undefined;
  if (listing.has(take(`${disk}-gpt-1st`))) gptFirst = listing.bytes(`${disk}-gpt-1st`, 1 << 20);
  if (sizeSectors === undefined && gptFirst && gptFirst.length >= 2 * ss && hasGptSignature(gptFirst.subarray(ss))) {
    sizeSectors = Number(new DataView(gptFirst.buffer, gptFirst.byteOffset + ss).getBigUint64(32, true)) + 1;
    notes.push(`size from the GPT backup header LBA (no ${disk}-pt.parted)`);
  }
  const lastEnd = Math.max(0, ...dump.partitions.map((p) => p.start + p.size));
  if (sizeSectors === undefined) {
    sizeSectors = dump.label === "gpt" ? lastEnd + 33 : lastEnd;
    notes.push(`!no disk size in ${disk}-pt.parted; assuming the disk ends where the partitions do (${sizeSectors} sectors)`);
  }
  if (!Number.isSafeInteger(sizeSectors * ss) || sizeSectors * ss > 2 ** 53) throw new ImageError({ file: listing.path(sfName) }, "disk size is absurd");
  if (lastEnd > sizeSectors) throw new ImageError({ file: listing.path(sfName) }, `a partition ends at sector ${lastEnd}, past the disk's ${sizeSectors} sectors`);
  const size = sizeSectors * ss;

  const tables: TableBytes[] = [];
  const geometry = readGeometry(listing.text(take(`${disk}-chs.sf`), 4096));
  const partitions: DiskPartition[] = [];
  const firstStart = Math.min(...dump.partitions.map((p) => p.start), sizeSectors);

  if (dump.label === "gpt") {
    const second = listing.has(take(`${disk}-gpt-2nd`)) ? listing.bytes(`${disk}-gpt-2nd`, 1 << 20) : undefined;
    if (gptFirst && second) {
      if (gptFirst.length % ss !== 0 || gptFirst.length < 3 * ss) throw new ImageError({ file: listing.path(`${disk}-gpt-1st`) }, "not a whole number of sectors from LBA 0 through the entries", `${gptFirst.length} bytes`);
      if (second.length % ss !== 0 || second.length < 2 * ss) throw new ImageError({ file: listing.path(`${disk}-gpt-2nd`) }, "not a whole number of sectors", `${second.length} bytes`);
      const where = { file: listing.path(`${disk}-gpt-1st`), offset: ss };
      const header = parseGptHeader(gptFirst.subarray(ss, 2 * ss), where, sizeSectors);
      const entriesBytes = gptFirst.subarray(header.entriesLba * ss);
      parseGptEntries(entriesBytes, header, { file: where.file, offset: header.entriesLba * ss });
      const backup = completeBackup(second, gptFirst.subarray(header.entriesLba * ss, (header.entriesLba + 1) * ss), ss);
      const backupAt = size - backup.length;
      const backupHeader = parseGptHeader(backup.subarray(backup.length - ss), { file: listing.path(`${disk}-gpt-2nd`), offset: second.length - ss }, sizeSectors);
      if (backupHeader.myLba !== sizeSectors - 1) notes.push(`!the backup GPT header says it is at LBA ${backupHeader.myLba}, the disk's last is ${sizeSectors - 1}`);
      parseGptEntries(backup.subarray((backupHeader.entriesLba * ss) - backupAt), backupHeader, { file: listing.path(`${disk}-gpt-2nd`), offset: 0 });
      tables.push({ offset: 0, bytes: gptFirst, what: `GPT (${disk}-gpt-1st)` });
      tables.push({ offset: backupAt, bytes: backup, what: `backup GPT (${disk}-gpt-2nd)` });
      const mbr = listing.has(take(`${disk}-mbr`)) ? listing.bytes(`${disk}-mbr`, SECTOR) : undefined;
      if (mbr && !equalBytes(mbr, gptFirst.subarray(0, SECTOR))) notes.push(`${disk}-mbr differs from sector 0 of ${disk}-gpt-1st; the latter is used`);
    } else {
      const built = buildGpt(dump, sizeSectors);
      tables.push({ offset: 0, bytes: built.primary, what: "GPT (built from pt.sf)" });
      tables.push({ offset: built.backupLba * ss, bytes: built.backup, what: "backup GPT (built from pt.sf)" });
      notes.push(`!no ${disk}-gpt-1st/${disk}-gpt-2nd: GPT built from ${disk}-pt.sf as sfdisk writes it`);
    }
  } else {
    const planned: PlannedEntry[] = dump.partitions.map((p) => ({ number: partitionNumber(p.device), bootable: p.bootable, type: parseInt(p.type, 16), start: p.start, size: p.size }));
    for (const e of planned) if (!Number.isInteger(e.type) || e.type < 0 || e.type > 0xff || e.number < 1) throw new ImageError({ file: listing.path(sfName) }, `partition ${e.number}: not an MBR type or number`);
    let mbr: Uint8Array;
    if (listing.has(take(`${disk}-mbr`))) {
      mbr = listing.bytes(`${disk}-mbr`, SECTOR);
      if (mbr.length !== SECTOR) throw new ImageError({ file: listing.path(`${disk}-mbr`) }, "not one 512-byte sector", `${mbr.length} bytes`);
      const built = buildMbr(planned, 0, geometry);
      if (!equalBytes(mbr.subarray(446), built.subarray(446))) notes.push(`!the partition table in ${disk}-mbr differs from ${disk}-pt.sf; ${disk}-mbr is used as saved`);
    } else {
      mbr = buildMbr(planned, dump.labelId ? parseInt(dump.labelId, 16) : 0, geometry);
      notes.push(`!no ${disk}-mbr: the MBR is built from ${disk}-pt.sf (no boot code)`);
    }
    tables.push({ offset: 0, bytes: mbr, what: `MBR (${disk}-mbr)` });
    const hiddenName = take(`${disk}-hidden-data-after-mbr`);
    if (listing.has(hiddenName)) {
      const room = (firstStart - 1) * ss;
      const hidden = listing.bytes(hiddenName, Math.min(MAX_HIDDEN, Math.max(0, room)));
      tables.push({ offset: ss, bytes: hidden, what: hiddenName });
    }
    const extended = planned.find((e) => e.number <= 4 && EXTENDED_TYPES.has(e.type));
    const logicals = planned.filter((e) => e.number >= 5).sort((a, b) => a.number - b.number);
    if (logicals.length && !extended) throw new ImageError({ file: listing.path(sfName) }, "logical partitions without an extended one");
    if (extended) {
      const firstLba = Math.max(1, (1 << 20) / ss);
      const ebrs = logicals.length
        ? buildEbrs(logicals, extended, firstLba, geometry)
        : [{ sector: extended.start, bytes: Object.assign(new Uint8Array(SECTOR), { 510: 0x55, 511: 0xaa }) }];
      const extName = `${deviceFileName(dump.partitions.find((p) => partitionNumber(p.device) === extended.number)!.device)}-ebr`;
      take(extName);
      if (listing.has(extName)) {
        const saved = listing.bytes(extName, SECTOR);
        if (saved.length !== SECTOR) throw new ImageError({ file: listing.path(extName) }, "not one 512-byte sector", `${saved.length} bytes`);
        if (!equalBytes(saved.subarray(446), ebrs[0]!.bytes.subarray(446))) notes.push(`!${extName} differs from the first EBR sfdisk writes for ${disk}-pt.sf; ${extName} is used as saved`);
        ebrs[0] = { sector: extended.start, bytes: saved };
      }
      for (const [i, e] of ebrs.entries()) tables.push({ offset: e.sector * ss, bytes: e.bytes, what: i === 0 && listing.has(extName) ? extName : `EBR of ${deviceFileName(dump.partitions.find((p) => partitionNumber(p.device) === logicals[i]?.number)?.device ?? "")}` });
    }
  }

  for (const p of dump.partitions) {
    const name = deviceFileName(p.device);
    if (!NAME.test(name)) throw new ImageError({ file: listing.path(sfName) }, "not a device name", JSON.stringify(p.device.slice(0, 40)));
    const base = { name, number: partitionNumber(p.device), start: p.start * ss, size: p.size * ss, type: p.type };
    partitions.push({ ...base, content: partitionContent(listing, name, p.size * ss, dump.label === "dos" && EXTENDED_TYPES.has(parseInt(p.type, 16)), parts, images, devFs, take) });
  }
  const layout: DiskLayout = { name: disk, size, sectorSize: ss, label: dump.label, tables: tables.sort((a, b) => a.offset - b.offset), partitions };
  return { layout, dump, notes };
}

function partitionContent(listing: FolderListing, name: string, size: number, isExtended: boolean, parts: string[], images: ImageFile[], devFs: Map<string, string>, take: (n: string) => string): PartitionContent {
  if (isExtended) return { kind: "container" };
  const swapInfo = take(`swappt-${name}.info`);
  const image = images.find((i) => i.partition === name);
  if (image) {
    const pieces = image.pieces;
    // sdXN.dd-img and sdXN.dd-ptcl-img hold partclone.dd output or, with -q1, the raw bytes of dd
    if ((image.tool === "dd" || image.fs === "dd") && !holdsImageFormat(pieces[0]!)) return { kind: "dd", pieces, open: (opts) => openRawStream(pieces[0]!, opts) };
    return { kind: "image", pieces, fs: image.fs, tool: image.tool, open: (opts) => openImage(pieces[0]!, opts) };
  }
  if (listing.has(swapInfo)) {
    const info = parseSwapInfo(listing.text(swapInfo, 4096)!, listing.path(swapInfo));
    return { kind: "swap", header: swapHeader(size, info), ...info };
  }
  if (parts.includes(name)) return { kind: "absent", reason: `in parts but its image file is missing` };
  return { kind: "absent", reason: devFs.has(name) ? `not saved (${devFs.get(name)})` : "not saved" };
}

/** Whether the decoded stream starts like a partclone, partimage or ntfsclone image. */
function holdsImageFormat(file: string): boolean {
  const s = openStream(file, { threads: false });
  try {
    const head = s.reader.peek(HEAD_BYTES);
    return formats.some((f) => f.detect(head));
  } finally {
    s.reader.close();
  }
}

/** A raw dd stream: decompressed sequentially, or read at any offset when a plain file. */
export function openRawStream(file: string, opts?: OpenOptions): RawStream {
  const s = openStream(file, opts);
  const ra = s.randomAccess;
  return {
    compression: s.compression,
    read(into) {
      const chunk = s.reader.chunk(into.length);
      into.set(chunk);
      return chunk.length;
    },
    readAt: ra ? (into, offset) => ra.readAt(into, offset) : undefined,
    close: () => s.reader.close(),
  };
}

function readGeometry(text: string | undefined): Geometry {
  if (!text) return DEFAULT_GEOMETRY;
  const heads = /^heads=(\d+)$/m.exec(text);
  const sectors = /^sectors=(\d+)$/m.exec(text);
  const h = heads ? Number(heads[1]) : 0;
  const s = sectors ? Number(sectors[1]) : 0;
  return h >= 1 && h <= 255 && s >= 1 && s <= 63 ? { heads: h, sectors: s } : DEFAULT_GEOMETRY;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
