// FAT12/16/32 read-only, layout per Microsoft's "FAT: General Overview of On-Disk Format" (fatgen103.doc).
import { withCommas } from "../errors.ts";
import type { Volume } from "../volume/volume.ts";
import { type DirEntry, type FileSystem, FsError, type FsNode, type Timestamp } from "./filesystem.ts";
import { equalBytes, splitPath } from "./path.ts";

export interface FatOptions {
  /** code page of 8.3 names: "cp437" (default), "cp850", or any label TextDecoder knows ("ibm866", "windows-1252") */
  codepage?: string;
  /** permission bits Linux's vfat driver masks off (its umask/fmask/dmask; default 022) */
  umask?: number;
}

const ATTR_READ_ONLY = 0x01;
const ATTR_VOLUME_ID = 0x08;
const ATTR_DIRECTORY = 0x10;
const ATTR_LONG_NAME = 0x0f;
const LFN_LAST = 0x40;
const ENTRY = 32;
/** fatgen103: a directory holds at most 65,536 entries */
const MAX_DIR_BYTES = 65536 * ENTRY;
const ROOT_ID = 1;

/** A FAT boot sector: a jump, a plausible BPB, and neither NTFS nor exFAT. */
export function detectFat(head: Uint8Array): boolean {
  if (head.length < 512 || head[510] !== 0x55 || head[511] !== 0xaa) return false;
  if (head[0] !== 0xeb && head[0] !== 0xe9) return false;
  const oem = String.fromCharCode(...head.subarray(3, 11));
  if (oem === "NTFS    " || oem === "EXFAT   ") return false;
  const v = view(head);
  const bps = v.getUint16(0x0b, true);
  const spc = head[0x0d]!;
  return [512, 1024, 2048, 4096].includes(bps) && spc > 0 && (spc & (spc - 1)) === 0 && v.getUint16(0x0e, true) > 0 && head[0x10]! > 0;
}

export function openFat(volume: Volume, options: FatOptions = {}): FileSystem {
  return new FatFileSystem(volume, options);
}

interface FatNodeInfo {
  firstCluster: number;
  /** volume offset of its directory entry, for messages */
  entryOffset: number;
}

// A node's id is the volume offset of its 32-byte directory entry (the root, which has none, is 1):
// its first cluster is read back from there, so nothing is kept per listed entry.

class FatFileSystem implements FileSystem {
  readonly type: string;
  private readonly bytesPerSector: number;
  private readonly clusterSize: number;
  private readonly fatOffset: number;
  private readonly fatBytes: number;
  private readonly rootDirOffset: number;
  private readonly rootDirBytes: number;
  private readonly dataOffset: number;
  private readonly clusterCount: number;
  private readonly rootCluster: number;
  private readonly bits: 12 | 16 | 32;
  private readonly decodeShort: (b: Uint8Array) => string;
  private readonly umask: number;
  private readonly fatChunks = new Map<number, Uint8Array>();
  private chainCache: { first: number; clusters: number[] } | undefined;
  private readonly encoder = new TextEncoder();

  constructor(
    readonly volume: Volume,
    options: FatOptions,
  ) {
    const bs = volume.read(0, Math.min(512, volume.size));
    if (!detectFat(bs)) throw new FsError(volume.name, 0, "no FAT boot sector (jump, BPB, 0x55AA)");
    const v = view(bs);
    this.bytesPerSector = v.getUint16(0x0b, true);
    const sectorsPerCluster = bs[0x0d]!;
    const reserved = v.getUint16(0x0e, true);
    const fats = bs[0x10]!;
    const rootEntries = v.getUint16(0x11, true);
    const totalSectors = v.getUint16(0x13, true) || v.getUint32(0x20, true);
    const fatSectors = v.getUint16(0x16, true) || v.getUint32(0x24, true);
    if (fatSectors === 0) throw new FsError(volume.name, 0x16, "the FAT size is 0");
    const rootDirSectors = Math.ceil((rootEntries * ENTRY) / this.bytesPerSector);
    const firstDataSector = reserved + fats * fatSectors + rootDirSectors;
    if (totalSectors <= firstDataSector) throw new FsError(volume.name, 0x13, `${totalSectors} sectors leave no data area after sector ${firstDataSector}`);
    if (totalSectors * this.bytesPerSector > volume.size) {
      throw new FsError(volume.name, 0x13, `the file system has ${withCommas(totalSectors)} sectors of ${this.bytesPerSector} bytes, more than the ${withCommas(volume.size)}-byte volume holds`);
    }
    this.clusterSize = sectorsPerCluster * this.bytesPerSector;
    this.clusterCount = Math.floor((totalSectors - firstDataSector) / sectorsPerCluster);
    this.bits = this.clusterCount < 4085 ? 12 : this.clusterCount < 65525 ? 16 : 32;
    this.type = `vfat (FAT${this.bits})`;
    if (this.bits === 32 && (rootEntries !== 0 || v.getUint16(0x16, true) !== 0)) throw new FsError(volume.name, 0x11, "a FAT32 file system with a fixed root directory or 16-bit FAT size");
    if (this.bits !== 32 && rootEntries === 0) throw new FsError(volume.name, 0x11, `a FAT${this.bits} file system with no root directory entries`);
    // FAT32 may mirror no FAT but the active one (extended flags bit 7)
    const extFlags = this.bits === 32 ? v.getUint16(0x28, true) : 0;
    const activeFat = extFlags & 0x80 ? extFlags & 0x0f : 0;
    if (activeFat >= fats) throw new FsError(volume.name, 0x28, `active FAT ${activeFat} of ${fats}`);
    this.fatOffset = (reserved + activeFat * fatSectors) * this.bytesPerSector;
    this.fatBytes = fatSectors * this.bytesPerSector;
    const needed = Math.ceil(((this.clusterCount + 2) * this.bits) / 8);
    if (needed > this.fatBytes) throw new FsError(volume.name, 0x16, `a FAT of ${this.fatBytes} bytes cannot map ${withCommas(this.clusterCount)} clusters`);
    this.rootDirOffset = (reserved + fats * fatSectors) * this.bytesPerSector;
    this.rootDirBytes = rootDirSectors * this.bytesPerSector;
    this.dataOffset = firstDataSector * this.bytesPerSector;
    this.rootCluster = this.bits === 32 ? v.getUint32(0x2c, true) : 0;
    if (this.bits === 32 && !this.validCluster(this.rootCluster)) throw new FsError(volume.name, 0x2c, `root directory cluster ${this.rootCluster} is outside clusters 2..${this.clusterCount + 1}`);
    this.decodeShort = shortNameDecoder(options.codepage ?? "cp437");
    this.umask = options.umask ?? 0o022;
  }

  root(): FsNode {
    const zero = { sec: 0, nsec: 0 };
    return { id: ROOT_ID, kind: "directory", mode: 0o777 & ~this.umask, uid: 0, gid: 0, size: 0, links: 2, mtime: zero, atime: zero };
  }

  lookup(path: Uint8Array): FsNode | undefined {
    let node = this.root();
    for (const part of splitPath(path)) {
      if (node.kind !== "directory") return undefined;
      const found = [...this.list(node)].find((e) => equalBytes(e.name, part));
      if (!found) return undefined;
      node = found.node;
    }
    return node;
  }

  *list(dir: FsNode, onDamage?: (e: FsError) => void): Iterable<DirEntry> {
    const info = this.nodeInfo(dir);
    const runs: { offset: number; length: number }[] = [];
    if (dir.id === ROOT_ID && this.bits !== 32) runs.push({ offset: this.rootDirOffset, length: this.rootDirBytes });
    else {
      let clusters: number[];
      try {
        clusters = this.chain(info.firstCluster, undefined, info.entryOffset);
      } catch (e) {
        if (!(e instanceof FsError) || !onDamage) throw e;
        onDamage(e);
        clusters = (e as FsError & { partial?: number[] }).partial ?? [];
      }
      for (const c of clusters) runs.push({ offset: this.clusterOffset(c), length: this.clusterSize });
    }
    let lfn: { parts: Uint16Array[]; checksum: number; expect: number } | undefined;
    for (const run of runs) {
      const data = this.volume.read(run.offset, run.length);
      const v = view(data);
      for (let pos = 0; pos + ENTRY <= data.length; pos += ENTRY) {
        const first = data[pos]!;
        if (first === 0x00) return;
        if (first === 0xe5) {
          lfn = undefined;
          continue;
        }
        const attr = data[pos + 11]!;
        if ((attr & 0x3f) === ATTR_LONG_NAME) {
          const ord = first & 0x1f;
          const checksum = data[pos + 13]!;
          if (first & LFN_LAST) lfn = { parts: [], checksum, expect: ord };
          if (!lfn || ord !== lfn.expect || checksum !== lfn.checksum || ord === 0) {
            lfn = undefined;
            continue;
          }
          const units = new Uint16Array(13);
          const at = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
          for (let i = 0; i < 13; i++) units[i] = v.getUint16(pos + at[i]!, true);
          lfn.parts.unshift(units);
          lfn.expect = ord - 1;
          continue;
        }
        const shortRaw = data.subarray(pos, pos + 11);
        const pending = lfn;
        lfn = undefined;
        if (attr & ATTR_VOLUME_ID) continue;
        if (first === 0x2e && (shortRaw[1] === 0x20 || (shortRaw[1] === 0x2e && shortRaw[2] === 0x20))) continue;
        let name: string | undefined;
        if (pending && pending.expect === 0 && pending.checksum === shortNameChecksum(shortRaw)) name = longName(pending.parts);
        name ??= this.shortName(shortRaw, data[pos + 12]!);
        const entryOffset = run.offset + pos;
        const firstCluster = (this.bits === 32 ? v.getUint16(pos + 20, true) * 65536 : 0) + v.getUint16(pos + 26, true);
        const isDir = (attr & ATTR_DIRECTORY) !== 0;
        const size = v.getUint32(pos + 28, true);
        const mtime = fatTime(v.getUint16(pos + 24, true), v.getUint16(pos + 22, true), 0);
        const atime = fatTime(v.getUint16(pos + 18, true), 0, 0);
        const ctime = fatTime(v.getUint16(pos + 16, true), v.getUint16(pos + 14, true), data[pos + 13]!);
        let mode = 0o777 & ~this.umask;
        if (!isDir && attr & ATTR_READ_ONLY) mode &= ~0o222;
        const node: FsNode = { id: entryOffset, kind: isDir ? "directory" : "file", mode, uid: 0, gid: 0, size: isDir ? 0 : size, links: isDir ? 2 : 1, mtime, atime, ctime };
        const entry: DirEntry = { name: this.encoder.encode(name), node };
        if (isDir && firstCluster === 0) {
          entry.damage = new FsError(this.volume.name, entryOffset + 26, "a directory entry with no first cluster");
        } else if (firstCluster !== 0 && !this.validCluster(firstCluster)) {
          entry.damage = new FsError(this.volume.name, entryOffset + 26, `first cluster ${withCommas(firstCluster)} is outside clusters 2..${withCommas(this.clusterCount + 1)}`);
        } else if (!isDir && size > 0 && firstCluster === 0) {
          entry.damage = new FsError(this.volume.name, entryOffset + 28, `a ${withCommas(size)}-byte file with no clusters`);
        }
        yield entry;
      }
    }
  }

  readFile(file: FsNode, offset: number, into: Uint8Array): number {
    if (offset >= file.size) return 0;
    const want = Math.min(into.length, file.size - offset);
    const info = this.nodeInfo(file);
    const clusters = this.chain(info.firstCluster, Math.ceil(file.size / this.clusterSize), info.entryOffset);
    let done = 0;
    while (done < want) {
      const pos = offset + done;
      const index = Math.floor(pos / this.clusterSize);
      const within = pos % this.clusterSize;
      // neighbouring clusters in one read
      let run = 1;
      while (index + run < clusters.length && clusters[index + run] === clusters[index]! + run && run * this.clusterSize - within < want - done) run++;
      const n = Math.min(want - done, run * this.clusterSize - within);
      into.set(this.volume.read(this.clusterOffset(clusters[index]!) + within, n), done);
      done += n;
    }
    return want;
  }

  *fileExtents(file: FsNode): Iterable<{ offset: number; length: number }> {
    if (file.size > 0) yield { offset: 0, length: file.size };
  }

  readlink(link: FsNode): Uint8Array {
    throw new FsError(this.volume.name, undefined, `entry ${link.id} is not a symlink (FAT has none)`);
  }

  close(): void {
    this.volume.close();
  }

  private nodeInfo(node: FsNode): FatNodeInfo {
    if (node.id === ROOT_ID) return { firstCluster: this.rootCluster, entryOffset: 0 };
    const e = view(this.volume.read(node.id, ENTRY));
    return { firstCluster: (this.bits === 32 ? e.getUint16(20, true) * 65536 : 0) + e.getUint16(26, true), entryOffset: node.id };
  }

  private validCluster(c: number): boolean {
    return c >= 2 && c < this.clusterCount + 2;
  }

  private clusterOffset(c: number): number {
    return this.dataOffset + (c - 2) * this.clusterSize;
  }

  private fatEntry(cluster: number): number {
    const byteOffset = this.bits === 12 ? cluster + (cluster >>> 1) : cluster * (this.bits / 8);
    const chunkSize = 65536;
    const chunkIndex = Math.floor(byteOffset / chunkSize);
    let chunk = this.fatChunks.get(chunkIndex);
    if (!chunk) {
      const start = chunkIndex * chunkSize;
      // one extra byte: a FAT12 entry may straddle chunks
      chunk = this.volume.read(this.fatOffset + start, Math.min(chunkSize + 1, this.fatBytes - start));
      this.fatChunks.set(chunkIndex, chunk);
    }
    const at = byteOffset - chunkIndex * chunkSize;
    if (this.bits === 12) {
      const v = chunk[at]! | (chunk[at + 1]! << 8);
      return cluster & 1 ? v >>> 4 : v & 0xfff;
    }
    if (this.bits === 16) return chunk[at]! | (chunk[at + 1]! << 8);
    return (chunk[at]! | (chunk[at + 1]! << 8) | (chunk[at + 2]! << 16) | (chunk[at + 3]! << 24)) & 0x0fffffff;
  }

  /**
   * The clusters of a chain from `first`: `need` of them for a file, up to the end mark for a
   * directory. Loops, free or bad clusters and numbers out of range throw, with the clusters read so far.
   */
  private chain(first: number, need: number | undefined, entryOffset: number): number[] {
    if (this.chainCache?.first === first && need !== undefined && this.chainCache.clusters.length >= need) return this.chainCache.clusters;
    const eoc = this.bits === 12 ? 0xff8 : this.bits === 16 ? 0xfff8 : 0x0ffffff8;
    const bad = eoc - 1;
    const clusters: number[] = [];
    const seen = new Set<number>();
    const fail = (problem: string): never => {
      const e = new FsError(this.volume.name, entryOffset, problem) as FsError & { partial?: number[] };
      e.partial = clusters;
      throw e;
    };
    const limit = need ?? MAX_DIR_BYTES / this.clusterSize;
    let c = first;
    while (clusters.length < limit) {
      if (!this.validCluster(c)) fail(`cluster chain from ${first}: cluster ${withCommas(c)} is outside clusters 2..${withCommas(this.clusterCount + 1)}`);
      if (seen.has(c)) fail(`cluster chain from ${first} loops back to cluster ${withCommas(c)} after ${clusters.length} clusters`);
      seen.add(c);
      clusters.push(c);
      const next = this.fatEntry(c);
      if (next >= eoc) break;
      if (next === bad) fail(`cluster chain from ${first} reaches a cluster marked bad after cluster ${c}`);
      if (next === 0) fail(`cluster chain from ${first} reaches a free cluster after cluster ${c}`);
      c = next;
    }
    if (need !== undefined && clusters.length < need) fail(`cluster chain from ${first} ends after ${clusters.length} clusters; the file's size needs ${need}`);
    if (need === undefined && clusters.length >= limit && this.fatEntry(clusters[clusters.length - 1]!) < eoc) fail(`directory at cluster ${first} is longer than the 65,536 entries FAT allows`);
    if (need !== undefined) this.chainCache = { first, clusters };
    return clusters;
  }

  /** 8.3 name as Linux's vfat shows it (shortname=mixed): as stored, lower case where NTRes flags say so. */
  private shortName(raw: Uint8Array, ntRes: number): string {
    const bytes = raw.slice();
    if (bytes[0] === 0x05) bytes[0] = 0xe5;
    const lower = (b: Uint8Array, flag: boolean) => (flag ? b.map((x) => (x >= 0x41 && x <= 0x5a ? x + 32 : x)) : b);
    const base = lower(trimSpaces(bytes.subarray(0, 8)), (ntRes & 0x08) !== 0);
    const ext = lower(trimSpaces(bytes.subarray(8, 11)), (ntRes & 0x10) !== 0);
    return this.decodeShort(base) + (ext.length ? `.${this.decodeShort(ext)}` : "");
  }
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function trimSpaces(b: Uint8Array): Uint8Array {
  let end = b.length;
  while (end > 0 && b[end - 1] === 0x20) end--;
  return b.subarray(0, end);
}

/** fatgen103: the rotate-right-and-add checksum of the 11-byte short name every long-name entry carries. */
export function shortNameChecksum(name: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = ((sum & 1 ? 0x80 : 0) + (sum >>> 1) + name[i]!) & 0xff;
  return sum;
}

function longName(parts: Uint16Array[]): string {
  const units: number[] = [];
  outer: for (const p of parts) {
    for (const u of p) {
      if (u === 0) break outer;
      units.push(u);
    }
  }
  return new TextDecoder("utf-16le" as "utf-8").decode(new Uint16Array(units));
}

/**
 * A FAT date and time as Linux's vfat driver shows them: local time of the machine (its
 * time zone), months and days of 0 taken as 1, two-second resolution plus hundredths.
 */
function fatTime(date: number, time: number, hundredths: number): Timestamp {
  if (date === 0) return { sec: 0, nsec: 0 };
  const year = 1980 + (date >>> 9);
  const month = Math.max(1, (date >>> 5) & 0xf);
  const day = Math.max(1, date & 0x1f);
  const ms = new Date(year, month - 1, day, time >>> 11, (time >>> 5) & 0x3f, (time & 0x1f) * 2).getTime();
  const extra = hundredths < 200 ? hundredths : 0;
  return { sec: Math.floor(ms / 1000) + Math.floor(extra / 100), nsec: (extra % 100) * 10_000_000 };
}

// bytes 0x80..0xFF of the IBM code pages short names are stored in
const CP437_HIGH =
  "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0";
const CP850_HIGH =
  "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜø£Ø×ƒáíóúñÑªº¿®¬½¼¡«»░▒▓│┤ÁÂÀ©╣║╗╝¢¥┐└┴┬├─┼ãÃ╚╔╩╦╠═╬¤ðÐÊËÈıÍÎÏ┘┌█▄¦Ì▀ÓßÔÒõÕµþÞÚÛÙýÝ¯´\u00ad±‗¾¶§÷¸°¨·¹³²■\u00a0";

/** The decoder of short-name bytes for a code page name; throws RangeError for an unknown one. */
export function shortNameDecoder(codepage: string): (b: Uint8Array) => string {
  const table = { cp437: CP437_HIGH, cp850: CP850_HIGH }[codepage.toLowerCase()];
  if (table !== undefined) {
    const high = [...table];
    if (high.length !== 128) throw new Error(`code page table ${codepage} has ${high.length} characters`);
    return (b) => {
      let s = "";
      for (const x of b) s += x < 0x80 ? String.fromCharCode(x) : high[x - 0x80];
      return s;
    };
  }
  const decoder = new TextDecoder(codepage as "utf-8");
  return (b) => decoder.decode(b);
}

/**
 * A boot sector rewritten by a resize tool (libparted writes "MSWIN4.1", "NO NAME" and the hidden
 * sectors of where it ran) given back what identifies the volume: the OEM name and label of
 * `saved`, and `hiddenSectors` (the partition's start) for the disk it goes to. FAT32 keeps its
 * label at 0x47, FAT12/16 at 0x2B; a BPB with 0 root entries is FAT32.
 */
export function keepFatIdentity(boot: Uint8Array, saved: Uint8Array, hiddenSectors: number): void {
  const labelAt = (b: Uint8Array) => (view(b).getUint16(0x11, true) === 0 ? 0x47 : 0x2b);
  boot.set(saved.subarray(3, 11), 3);
  boot.set(saved.subarray(labelAt(saved), labelAt(saved) + 11), labelAt(boot));
  view(boot).setUint32(0x1c, hiddenSectors, true);
}
