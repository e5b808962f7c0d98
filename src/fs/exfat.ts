// exFAT read-only, layout per Microsoft's "exFAT file system specification" (learn.microsoft.com/windows/win32/fileio/exfat-specification).
import { withCommas } from "../errors.ts";
import type { Volume } from "../volume/volume.ts";
import { type DirEntry, type FileSystem, FsError, type FsNode, type Timestamp } from "./filesystem.ts";
import { splitPath } from "./path.ts";

export interface ExfatOptions {
  /** permission bits masked off, as the kernel driver's fmask/dmask (default 022, the usual umask it takes them from) */
  umask?: number;
  /** owner shown for every node (the kernel driver shows the mounting user's; default: this process's) */
  uid?: number;
  gid?: number;
}

const ENTRY = 32;
const BOOT_REGION_SECTORS = 12;
/** §6.2: a directory holds at most 256 MiB of entries */
const MAX_DIR_BYTES = 256 << 20;
/** §7.2.5: the up-case table maps at most 65,536 characters, 2 bytes each, compressed or not */
const MAX_UPCASE_BYTES = 65536 * 2;
const ROOT_ID = 1;
const FAT_BAD = 0xfffffff7;
const FAT_END = 0xffffffff;

// §6.2.1 EntryType of the entries read here
const TYPE_END = 0x00;
const TYPE_BITMAP = 0x81;
const TYPE_UPCASE = 0x82;
const TYPE_FILE = 0x85;
const TYPE_STREAM = 0xc0;
const TYPE_NAME = 0xc1;
const IN_USE = 0x80;
const SECONDARY = 0x40;

const ATTR_READ_ONLY = 0x01;
const ATTR_DIRECTORY = 0x10;
const FLAG_NO_FAT_CHAIN = 0x02;
const VOLUME_DIRTY = 0x02;
const NAME_UNITS_PER_ENTRY = 15;

/** The main boot sector's file system name (§3.1.2). */
export function detectExfat(head: Uint8Array): boolean {
  return head.length >= 11 && String.fromCharCode(...head.subarray(3, 11)) === "EXFAT   ";
}

export function openExfat(volume: Volume, options: ExfatOptions = {}): FileSystem {
  return new ExfatFileSystem(volume, options);
}

/** Clusters first..first+count-1, in file order. */
interface Run {
  first: number;
  count: number;
}

/** Where a file's or directory's clusters start and how they are found (§7.6: its Stream Extension entry). */
interface Stream {
  firstCluster: number;
  noFatChain: boolean;
  validLength: number;
  length: number;
  /** volume offset of the Stream Extension entry (0 for the root directory), for messages */
  entryOffset: number;
}

interface BootRegion {
  sectorSize: number;
  clusterSize: number;
  fatOffset: number;
  heapOffset: number;
  clusterCount: number;
  rootCluster: number;
  /** §3.1.13.1: 0 or 1, which FAT and which allocation bitmap are in use */
  activeFat: number;
  dirty: boolean;
}

type ChainError = FsError & { partial?: Run[] };

// A node's id is the volume offset of its Stream Extension entry (the root, which has none, is 1):
// its clusters, lengths and chain kind are read back from there, so nothing is kept per listed entry.

class ExfatFileSystem implements FileSystem {
  readonly type = "exfat";
  readonly warnings: string[] = [];
  private readonly boot: BootRegion;
  private readonly umask: number;
  private readonly uid: number;
  private readonly gid: number;
  private readonly fatChunks = new Map<number, Uint8Array>();
  private readonly bitmapChunks = new Map<number, Uint8Array>();
  private bitmapRuns: Run[] | undefined;
  private upcase: Uint16Array | undefined;
  private visited: Uint8Array | Set<number> | undefined;
  private runCache: { id: number; runs: Run[] } | undefined;
  private readonly encoder = new TextEncoder();

  constructor(
    readonly volume: Volume,
    options: ExfatOptions,
  ) {
    this.umask = options.umask ?? 0o022;
    this.uid = options.uid ?? process.getuid?.() ?? 0;
    this.gid = options.gid ?? process.getgid?.() ?? 0;
    const main = this.readBootRegion(0);
    if ("problem" in main) {
      // §3.2: the backup boot region (sectors 12..23) is a copy of the main one, in sectors of its own size
      let backup: ReturnType<typeof this.readBootRegion> = { problem: "no exFAT boot sector at sector 12 for any sector size", offset: 12 * 512 };
      for (const shift of [9, 10, 11, 12]) {
        const found = this.readBootRegion(BOOT_REGION_SECTORS << shift, shift);
        if (!("problem" in found) || found.offset > (BOOT_REGION_SECTORS << shift) + 3) backup = found;
        if (!("problem" in found)) break;
      }
      if ("problem" in backup) throw new FsError(volume.name, main.offset, `main boot region: ${main.problem}; backup boot region: ${backup.problem}`);
      this.warnings.push(`the main boot region is damaged (offset ${withCommas(main.offset)}: ${main.problem}): read through the backup boot region`);
      this.boot = backup;
    } else this.boot = main;
    if (this.boot.dirty) this.warnings.push("the volume is marked dirty (saved while mounted, or not cleanly unmounted): what was not yet written is not shown");
    this.readRootMetadata();
  }

  root(): FsNode {
    const zero = { sec: 0, nsec: 0 };
    return { id: ROOT_ID, kind: "directory", mode: 0o777 & ~this.umask, uid: this.uid, gid: this.gid, size: 0, links: 1, mtime: zero, atime: zero };
  }

  /** Names compare through the up-case table, as Windows and Linux's driver look them up; an exact match wins. */
  lookup(path: Uint8Array): FsNode | undefined {
    const decoder = new TextDecoder();
    let node = this.root();
    for (const part of splitPath(path)) {
      if (node.kind !== "directory") return undefined;
      const want = decoder.decode(part);
      const folded = this.fold(want);
      let found: FsNode | undefined;
      for (const e of this.list(node)) {
        const name = decoder.decode(e.name);
        if (name === want) {
          found = e.node;
          break;
        }
        if (!found && this.fold(name) === folded) found = e.node;
      }
      if (!found) return undefined;
      node = found;
    }
    return node;
  }

  *list(dir: FsNode, onDamage?: (e: FsError) => void): Iterable<DirEntry> {
    const stream = this.stream(dir);
    let runs: Run[];
    try {
      runs = this.dirRuns(stream);
    } catch (e) {
      if (!(e instanceof FsError) || !onDamage) throw e;
      onDamage(e);
      runs = (e as ChainError).partial ?? [];
    }
    const damage = (e: FsError) => {
      if (!onDamage) throw e;
      onDamage(e);
    };
    let set: { offsets: number[]; bytes: Uint8Array; filled: number } | undefined;
    for (const { offset, entry } of this.entries(runs)) {
      const type = entry[0]!;
      if (set) {
        if ((type & (IN_USE | SECONDARY)) === (IN_USE | SECONDARY)) {
          set.bytes.set(entry, set.filled);
          set.offsets.push(offset);
          set.filled += ENTRY;
          if (set.filled === set.bytes.length) {
            const e = this.parseSet(set.offsets, set.bytes);
            set = undefined;
            if (e instanceof FsError) damage(e);
            else yield e;
          }
          continue;
        }
        damage(new FsError(this.volume.name, set.offsets[0], `entry set: its file entry counts ${set.bytes.length / ENTRY - 1} secondary entries, but entry ${set.filled / ENTRY} is of type 0x${type.toString(16).padStart(2, "0")}; the set is skipped`));
        set = undefined;
      }
      if (type === TYPE_END) return;
      if (type !== TYPE_FILE) continue;
      const secondaries = entry[1]!;
      // §7.4.1: a file entry set has 2..18 secondary entries (stream extension and 1..17 file names)
      if (secondaries < 2 || secondaries > 18) {
        damage(new FsError(this.volume.name, offset + 1, `entry set: ${secondaries} secondary entries, not 2..18; the set is skipped`));
        continue;
      }
      set = { offsets: [offset], bytes: new Uint8Array((secondaries + 1) * ENTRY), filled: ENTRY };
      set.bytes.set(entry);
    }
    if (set) damage(new FsError(this.volume.name, set.offsets[0], `entry set: the directory ends inside it; the set is skipped`));
  }

  readFile(file: FsNode, offset: number, into: Uint8Array): number {
    if (offset >= file.size) return 0;
    const want = Math.min(into.length, file.size - offset);
    const stream = this.stream(file);
    const runs = this.fileRuns(file.id, stream);
    // §7.6.5: bytes past the valid data length read as zeros
    const data = Math.max(0, Math.min(want, stream.validLength - offset));
    let done = 0;
    let runIndex = 0;
    let runStart = 0;
    while (done < data) {
      const pos = offset + done;
      while (runStart + runs[runIndex]!.count * this.boot.clusterSize <= pos) runStart += runs[runIndex++]!.count * this.boot.clusterSize;
      const run = runs[runIndex]!;
      const within = pos - runStart;
      const n = Math.min(data - done, run.count * this.boot.clusterSize - within);
      const at = this.clusterOffset(run.first) + within;
      if (this.volume.readInto) this.volume.readInto(at, into.subarray(done, done + n));
      else into.set(this.volume.read(at, n), done);
      done += n;
    }
    into.fill(0, data, want);
    return want;
  }

  *fileExtents(file: FsNode): Iterable<{ offset: number; length: number }> {
    const valid = Math.min(file.size, this.stream(file).validLength);
    if (valid > 0) yield { offset: 0, length: valid };
  }

  readlink(link: FsNode): Uint8Array {
    throw new FsError(this.volume.name, link.id, "not a symlink (exFAT has none)");
  }

  close(): void {
    this.volume.close();
  }

  /** §3.1, §3.4: one boot region (main at 0, backup after it), its fields checked and its checksum sector verified. */
  private readBootRegion(at: number, expectShift?: number): BootRegion | { problem: string; offset: number } {
    const fail = (offset: number, problem: string) => ({ problem, offset: at + offset });
    if (at + 512 > this.volume.size) return fail(0, "the volume is too small to hold it");
    const bs = this.volume.read(at, 512);
    const v = view(bs);
    if (!detectExfat(bs)) return fail(3, 'no "EXFAT   " file system name');
    if (bs[510] !== 0x55 || bs[511] !== 0xaa) return fail(510, "no 0x55AA boot signature");
    if (bs.subarray(11, 64).some((b) => b !== 0)) return fail(11, "the MustBeZero field holds non-zero bytes");
    const sectorShift = bs[108]!;
    const clusterShift = bs[109]!;
    if (sectorShift < 9 || sectorShift > 12) return fail(108, `BytesPerSectorShift ${sectorShift} is not 9..12`);
    if (expectShift !== undefined && sectorShift !== expectShift) return fail(108, `BytesPerSectorShift ${sectorShift} does not place this copy at sector 12`);
    if (clusterShift > 25 - sectorShift) return fail(109, `SectorsPerClusterShift ${clusterShift} makes clusters over 32 MiB`);
    const sectorSize = 1 << sectorShift;
    if (at + BOOT_REGION_SECTORS * sectorSize > this.volume.size) return fail(0, "the volume is too small to hold it");
    const region = this.volume.read(at, BOOT_REGION_SECTORS * sectorSize);
    const computed = bootChecksum(region.subarray(0, 11 * sectorSize));
    const sums = view(region.subarray(11 * sectorSize));
    for (let i = 0; i < sectorSize; i += 4) {
      const stored = sums.getUint32(i, true);
      if (stored !== computed) return fail(11 * sectorSize + i, `boot checksum mismatch: stored 0x${hex32(stored)}, computed 0x${hex32(computed)}`);
    }
    const volumeSectors = v.getUint32(72, true) + v.getUint32(76, true) * 2 ** 32;
    const fatOffset = v.getUint32(80, true);
    const fatLength = v.getUint32(84, true);
    const heapOffset = v.getUint32(88, true);
    const clusterCount = v.getUint32(92, true);
    const rootCluster = v.getUint32(96, true);
    const flags = v.getUint16(106, true);
    const fats = bs[110]!;
    if (volumeSectors * sectorSize > this.volume.size) {
      return fail(72, `the file system has ${withCommas(volumeSectors)} sectors of ${sectorSize} bytes, more than the ${withCommas(this.volume.size)}-byte volume holds`);
    }
    if (fats !== 1 && fats !== 2) return fail(110, `NumberOfFats ${fats} is not 1 or 2`);
    if (fatOffset < 24) return fail(80, `FatOffset ${fatOffset} is inside the boot regions`);
    if (heapOffset < fatOffset + fats * fatLength) return fail(88, `ClusterHeapOffset ${withCommas(heapOffset)} overlaps the FATs (sectors ${withCommas(fatOffset)}..${withCommas(fatOffset + fats * fatLength - 1)})`);
    if (clusterCount === 0 || heapOffset + clusterCount * 2 ** clusterShift > volumeSectors) {
      return fail(92, `${withCommas(clusterCount)} clusters of ${withCommas(sectorSize << clusterShift)} bytes from sector ${withCommas(heapOffset)} do not fit the ${withCommas(volumeSectors)}-sector volume`);
    }
    if ((clusterCount + 2) * 4 > fatLength * sectorSize) return fail(84, `a FAT of ${withCommas(fatLength * sectorSize)} bytes cannot map ${withCommas(clusterCount)} clusters`);
    if (rootCluster < 2 || rootCluster > clusterCount + 1) return fail(96, `root directory cluster ${withCommas(rootCluster)} is outside clusters 2..${withCommas(clusterCount + 1)}`);
    const activeFat = flags & 1;
    if (activeFat >= fats) return fail(106, `active FAT ${activeFat + 1} of ${fats}`);
    return {
      sectorSize,
      clusterSize: sectorSize << clusterShift,
      fatOffset: (fatOffset + activeFat * fatLength) * sectorSize,
      heapOffset: heapOffset * sectorSize,
      clusterCount,
      rootCluster,
      activeFat,
      dirty: (flags & VOLUME_DIRTY) !== 0,
    };
  }

  /** §7.1, §7.2: the allocation bitmap of the active FAT and the up-case table, from the root directory. */
  private readRootMetadata(): void {
    let upcase: { offset: number; checksum: number; stream: Stream } | undefined;
    const rootRuns = this.dirRuns(this.stream(this.root()));
    for (const { offset, entry } of this.entries(rootRuns)) {
      const type = entry[0]!;
      if (type === TYPE_END) break;
      if (type !== TYPE_BITMAP && type !== TYPE_UPCASE) continue;
      const v = view(entry);
      const stream: Stream = { firstCluster: v.getUint32(20, true), noFatChain: false, validLength: 0, length: v.getUint32(24, true) + v.getUint32(28, true) * 2 ** 32, entryOffset: offset };
      stream.validLength = stream.length;
      if (type === TYPE_BITMAP && (entry[1]! & 1) === this.boot.activeFat) {
        if (stream.length * 8 < this.boot.clusterCount) throw new FsError(this.volume.name, offset + 24, `the allocation bitmap's ${withCommas(stream.length)} bytes cannot map ${withCommas(this.boot.clusterCount)} clusters`);
        this.bitmapRuns = this.clusterRuns(stream, false);
      }
      if (type === TYPE_UPCASE) upcase = { offset, checksum: v.getUint32(4, true), stream };
    }
    if (!this.bitmapRuns) throw new FsError(this.volume.name, this.clusterOffset(this.boot.rootCluster), "the root directory holds no allocation bitmap entry");
    if (!upcase) {
      this.warnings.push("the root directory holds no up-case table: names are compared with Unicode's simple upper case, name hashes are not checked");
      return;
    }
    if (upcase.stream.length === 0 || upcase.stream.length > MAX_UPCASE_BYTES) {
      throw new FsError(this.volume.name, upcase.offset + 24, `the up-case table's length ${withCommas(upcase.stream.length)} is not 1..${withCommas(MAX_UPCASE_BYTES)} bytes`);
    }
    const runs = this.clusterRuns(upcase.stream, true);
    const table = this.readRuns(runs, upcase.stream.length);
    const computed = tableChecksum(table);
    if (computed !== upcase.checksum) {
      this.warnings.push(`the up-case table's checksum is 0x${hex32(upcase.checksum)}, computed 0x${hex32(computed)}: names are compared with Unicode's simple upper case instead, name hashes are not checked`);
      return;
    }
    this.upcase = expandUpcase(table);
  }

  /** Every 32-byte entry of a directory, cluster by cluster. */
  private *entries(runs: Run[]): Generator<{ offset: number; entry: Uint8Array }> {
    for (const run of runs) {
      for (let c = run.first; c < run.first + run.count; c++) {
        const at = this.clusterOffset(c);
        const data = this.volume.read(at, this.boot.clusterSize);
        for (let pos = 0; pos < data.length; pos += ENTRY) yield { offset: at + pos, entry: data.subarray(pos, pos + ENTRY) };
      }
    }
  }

  /** A complete file entry set (§7.4, §7.6, §7.7) as a directory entry, or what is wrong with it; `offsets` are its entries' (a set may span clusters). */
  private parseSet(offsets: number[], set: Uint8Array): DirEntry | FsError {
    const offset = offsets[0]!;
    const v = view(set);
    const stored = v.getUint16(2, true);
    const computed = setChecksum(set);
    if (stored !== computed) return new FsError(this.volume.name, offset, `entry set checksum mismatch: stored 0x${hex16(stored)}, computed 0x${hex16(computed)}; the entry is skipped`);
    if (set[ENTRY] !== TYPE_STREAM) return new FsError(this.volume.name, offsets[1], `entry set: its second entry is of type 0x${set[ENTRY]!.toString(16)}, not a stream extension; the entry is skipped`);
    const nameLength = set[ENTRY + 3]!;
    const nameEntries = Math.ceil(nameLength / NAME_UNITS_PER_ENTRY);
    if (nameLength === 0 || 2 + nameEntries > set.length / ENTRY) {
      return new FsError(this.volume.name, offsets[1]! + 3, `entry set: a name of ${nameLength} characters does not fit its ${set.length / ENTRY - 2} name entries; the entry is skipped`);
    }
    const units = new Uint16Array(nameLength);
    for (let i = 0; i < nameLength; i++) {
      const entryIndex = 2 + Math.floor(i / NAME_UNITS_PER_ENTRY);
      if (set[entryIndex * ENTRY] !== TYPE_NAME) return new FsError(this.volume.name, offsets[entryIndex], `entry set: entry ${entryIndex} is of type 0x${set[entryIndex * ENTRY]!.toString(16)}, not a file name; the entry is skipped`);
      units[i] = v.getUint16(entryIndex * ENTRY + 2 + (i % NAME_UNITS_PER_ENTRY) * 2, true);
    }
    const name = utf16.decode(units);
    const storedHash = v.getUint16(ENTRY + 4, true);
    // without the volume's own table the writer's hashes cannot be recomputed
    const hash = this.upcase ? nameHash(units, (u) => this.upcaseUnit(u)) : storedHash;
    if (hash !== storedHash) return new FsError(this.volume.name, offsets[1]! + 4, `entry set of ${JSON.stringify(name)}: name hash 0x${hex16(storedHash)}, computed 0x${hex16(hash)} from the up-case table; the entry is skipped`);
    const attributes = v.getUint16(4, true);
    const isDir = (attributes & ATTR_DIRECTORY) !== 0;
    const stream = this.streamAt(offsets[1]!, set.subarray(ENTRY, 2 * ENTRY));
    let mode = 0o777 & ~this.umask;
    if (!isDir && attributes & ATTR_READ_ONLY) mode &= ~0o222;
    const mtime = exfatTime(v.getUint32(12, true), set[21]!, set[23]!);
    const node: FsNode = {
      id: stream.entryOffset,
      kind: isDir ? "directory" : "file",
      mode,
      uid: this.uid,
      gid: this.gid,
      size: stream.length,
      links: 1,
      mtime,
      atime: exfatTime(v.getUint32(16, true), 0, set[24]!),
      ctime: mtime,
    };
    const entry: DirEntry = { name: this.encoder.encode(name), node };
    const problem = this.streamProblem(stream, isDir);
    if (problem) entry.damage = new FsError(this.volume.name, stream.entryOffset, problem);
    return entry;
  }

  private streamProblem(s: Stream, isDir: boolean): string | undefined {
    const heapBytes = this.boot.clusterCount * this.boot.clusterSize;
    if (s.validLength > s.length) return `valid data length ${withCommas(s.validLength)} is past the data length ${withCommas(s.length)}`;
    if (s.length > heapBytes) return `data length ${withCommas(s.length)} is more than the ${withCommas(heapBytes)}-byte cluster heap holds`;
    if (isDir && s.length > MAX_DIR_BYTES) return `a directory of ${withCommas(s.length)} bytes, over exFAT's 256 MiB`;
    if (s.length > 0 && !this.validCluster(s.firstCluster)) return `first cluster ${withCommas(s.firstCluster)} is outside clusters 2..${withCommas(this.boot.clusterCount + 1)}`;
    return undefined;
  }

  private streamAt(offset: number, entry: Uint8Array): Stream {
    const v = view(entry);
    return {
      firstCluster: v.getUint32(20, true),
      noFatChain: (entry[1]! & FLAG_NO_FAT_CHAIN) !== 0,
      validLength: v.getUint32(8, true) + v.getUint32(12, true) * 2 ** 32,
      length: v.getUint32(24, true) + v.getUint32(28, true) * 2 ** 32,
      entryOffset: offset,
    };
  }

  private stream(node: FsNode): Stream {
    if (node.id === ROOT_ID) return { firstCluster: this.boot.rootCluster, noFatChain: false, validLength: 0, length: 0, entryOffset: 0 };
    const stream = this.streamAt(node.id, this.volume.read(node.id, ENTRY));
    const problem = this.streamProblem(stream, node.kind === "directory");
    if (problem) throw new FsError(this.volume.name, node.id, problem);
    return stream;
  }

  private dirRuns(stream: Stream): Run[] {
    if (stream.entryOffset === 0) return this.clusterRuns(stream, true);
    return stream.length === 0 ? [] : this.clusterRuns(stream, true);
  }

  private fileRuns(id: number, stream: Stream): Run[] {
    if (this.runCache?.id === id) return this.runCache.runs;
    const runs = stream.length === 0 ? [] : this.clusterRuns(stream, true);
    this.runCache = { id, runs };
    return runs;
  }

  /**
   * The clusters of a stream (§7.6.2: contiguous when NoFatChain, else a FAT chain; the root directory's
   * chain runs to its end mark). Loops, free, bad or out-of-range clusters and clusters the allocation
   * bitmap calls free throw, with the runs read so far.
   */
  private clusterRuns(stream: Stream, checkBitmap: boolean): Run[] {
    const { firstCluster: first, entryOffset } = stream;
    const isRoot = entryOffset === 0;
    const need = isRoot ? undefined : Math.ceil(stream.length / this.boot.clusterSize);
    const runs: Run[] = [];
    const fail = (problem: string): never => {
      const e: ChainError = new FsError(this.volume.name, entryOffset || this.clusterOffset(first), problem);
      e.partial = runs;
      throw e;
    };
    if (need !== undefined && stream.noFatChain) {
      if (!this.validCluster(first) || first + need - 1 > this.boot.clusterCount + 1) {
        fail(`contiguous clusters ${withCommas(first)}..${withCommas(first + need - 1)} are outside clusters 2..${withCommas(this.boot.clusterCount + 1)}`);
      }
      runs.push({ first, count: need });
    } else {
      const limit = need ?? MAX_DIR_BYTES / this.boot.clusterSize;
      const visited: number[] = [];
      let c = first;
      let total = 0;
      try {
        while (total < limit) {
          if (!this.validCluster(c)) fail(`cluster chain from ${withCommas(first)}: cluster ${withCommas(c)} is outside clusters 2..${withCommas(this.boot.clusterCount + 1)}`);
          if (this.markVisited(c)) fail(`cluster chain from ${withCommas(first)} loops back to cluster ${withCommas(c)} after ${withCommas(total)} clusters`);
          visited.push(c);
          const last = runs[runs.length - 1];
          if (last && last.first + last.count === c) last.count++;
          else runs.push({ first: c, count: 1 });
          total++;
          const next = this.fatEntry(c);
          if (next === FAT_END) break;
          if (next === FAT_BAD) fail(`cluster chain from ${withCommas(first)} reaches a cluster marked bad after cluster ${withCommas(c)}`);
          if (total < limit) c = next;
          else if (isRoot) fail(`the root directory's cluster chain is longer than exFAT's 256 MiB directories`);
        }
      } finally {
        this.clearVisited(visited);
      }
      if (need !== undefined && total < need) fail(`cluster chain from ${withCommas(first)} ends after ${withCommas(total)} clusters; the data length needs ${withCommas(need)}`);
    }
    if (checkBitmap && this.bitmapRuns) {
      for (const run of runs) {
        for (let c = run.first; c < run.first + run.count; c++) {
          if (!this.allocated(c)) fail(`cluster ${withCommas(c)} of the chain from ${withCommas(first)} is free in the allocation bitmap (its contents are not kept)`);
        }
      }
    }
    return runs;
  }

  // chain walks mark the clusters they pass: a bitmap when it is at most 16 MiB, a set beyond
  private markVisited(c: number): boolean {
    this.visited ??= this.boot.clusterCount + 2 <= 8 * (16 << 20) ? new Uint8Array((this.boot.clusterCount + 9) >>> 3) : new Set<number>();
    if (this.visited instanceof Set) {
      if (this.visited.has(c)) return true;
      this.visited.add(c);
      return false;
    }
    const bit = 1 << (c & 7);
    if (this.visited[c >>> 3]! & bit) return true;
    this.visited[c >>> 3]! |= bit;
    return false;
  }

  private clearVisited(clusters: number[]): void {
    if (this.visited instanceof Set) this.visited.clear();
    else if (this.visited) for (const c of clusters) this.visited[c >>> 3] = 0;
  }

  private readRuns(runs: Run[], length: number): Uint8Array {
    const out = new Uint8Array(length);
    let done = 0;
    for (const run of runs) {
      if (done >= length) break;
      const n = Math.min(length - done, run.count * this.boot.clusterSize);
      out.set(this.volume.read(this.clusterOffset(run.first), n), done);
      done += n;
    }
    return out;
  }

  private validCluster(c: number): boolean {
    return c >= 2 && c <= this.boot.clusterCount + 1;
  }

  private clusterOffset(c: number): number {
    return this.boot.heapOffset + (c - 2) * this.boot.clusterSize;
  }

  private fatEntry(cluster: number): number {
    return view(this.chunk(this.fatChunks, this.boot.fatOffset, cluster * 4, (this.boot.clusterCount + 2) * 4)).getUint32((cluster * 4) % CHUNK, true);
  }

  /** §7.1.5: bit c-2 of the active allocation bitmap. */
  private allocated(c: number): boolean {
    const bit = c - 2;
    const byte = bit >>> 3;
    // the bitmap is a file of its own: find the run of its clusters that holds the byte
    let skipped = 0;
    for (const run of this.bitmapRuns!) {
      const bytes = run.count * this.boot.clusterSize;
      if (byte < skipped + bytes) {
        const inRun = byte - skipped;
        const chunk = this.chunk(this.bitmapChunks, this.clusterOffset(run.first), inRun, bytes, run.first);
        return ((chunk[inRun % CHUNK]! >>> (bit & 7)) & 1) === 1;
      }
      skipped += bytes;
    }
    return false;
  }

  /** The CHUNK-byte piece of a table at volume offset `base` holding byte `at`, cached (at most 256 pieces). */
  private chunk(cache: Map<number, Uint8Array>, base: number, at: number, tableBytes: number, key = 0): Uint8Array {
    const index = Math.floor(at / CHUNK);
    const id = key * 2 ** 20 + index;
    let chunk = cache.get(id);
    if (!chunk) {
      if (cache.size >= 256) cache.clear();
      const start = index * CHUNK;
      chunk = this.volume.read(base + start, Math.min(CHUNK, tableBytes - start));
      cache.set(id, chunk);
    }
    return chunk;
  }

  private upcaseUnit(u: number): number {
    if (this.upcase) return this.upcase[u]!;
    const up = String.fromCharCode(u).toUpperCase();
    return up.length === 1 ? up.charCodeAt(0) : u;
  }

  private fold(name: string): string {
    let out = "";
    for (let i = 0; i < name.length; i++) out += String.fromCharCode(this.upcaseUnit(name.charCodeAt(i)));
    return out;
  }
}

const CHUNK = 65536;
// bun-types lists only "utf-8" as a TextDecoder label; Bun decodes UTF-16LE all the same
const utf16 = new TextDecoder("utf-16le" as "utf-8");

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

const hex32 = (n: number) => n.toString(16).padStart(8, "0");
const hex16 = (n: number) => n.toString(16).padStart(4, "0");

/** §3.4: the boot checksum over sectors 0..10, VolumeFlags and PercentInUse left out. */
export function bootChecksum(sectors: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < sectors.length; i++) {
    if (i === 106 || i === 107 || i === 112) continue;
    sum = (((sum & 1) << 31) | (sum >>> 1)) + sectors[i]!;
    sum >>>= 0;
  }
  return sum;
}

/** §6.3.3: the SetChecksum over every entry of the set, the field itself left out. */
export function setChecksum(set: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < set.length; i++) {
    if (i === 2 || i === 3) continue;
    sum = (((sum & 1) << 15) | (sum >>> 1)) + set[i]!;
    sum &= 0xffff;
  }
  return sum;
}

/** §7.2.2: the TableChecksum of the up-case table, over its bytes as stored. */
function tableChecksum(table: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < table.length; i++) {
    sum = (((sum & 1) << 31) | (sum >>> 1)) + table[i]!;
    sum >>>= 0;
  }
  return sum;
}

/** §7.2.5.1: the stored table, where 0xFFFF then N means the next N characters map to themselves. */
function expandUpcase(table: Uint8Array): Uint16Array {
  const map = new Uint16Array(65536);
  for (let i = 0; i < map.length; i++) map[i] = i;
  const v = view(table);
  let index = 0;
  for (let p = 0; p + 1 < table.length && index < map.length; p += 2) {
    const unit = v.getUint16(p, true);
    if (unit === 0xffff && p + 3 < table.length) {
      index += v.getUint16(p + 2, true);
      p += 2;
    } else map[index++] = unit;
  }
  return map;
}

/** §7.6.4: the NameHash over the up-cased name, low byte of each character first. */
function nameHash(units: Uint16Array, upcase: (u: number) => number): number {
  let hash = 0;
  for (const u of units) {
    const up = upcase(u);
    hash = ((((hash & 1) << 15) | (hash >>> 1)) + (up & 0xff)) & 0xffff;
    hash = ((((hash & 1) << 15) | (hash >>> 1)) + (up >>> 8)) & 0xffff;
  }
  return hash;
}

/**
 * §7.4.8: a timestamp (local time, two-second resolution) with its 10 ms increment and UTC offset, as
 * Linux's driver shows it: without a valid offset the time is taken as UTC (its default time_offset);
 * an impossible date is shown as the epoch, as exfat-fuse does.
 */
function exfatTime(stamp: number, tenMs: number, utcOffset: number): Timestamp {
  const day = (stamp >>> 16) & 0x1f;
  const month = (stamp >>> 21) & 0xf;
  const hour = (stamp >>> 11) & 0x1f;
  const minute = (stamp >>> 5) & 0x3f;
  const twoSeconds = stamp & 0x1f;
  if (day === 0 || month === 0 || month > 12 || hour > 23 || minute > 59 || twoSeconds > 29 || tenMs > 199) return { sec: 0, nsec: 0 };
  let sec = Date.UTC(1980 + (stamp >>> 25), month - 1, day, hour, minute, twoSeconds * 2) / 1000 + Math.floor(tenMs / 100);
  if (utcOffset & 0x80) sec -= (((utcOffset & 0x7f) ^ 0x40) - 0x40) * 15 * 60;
  return { sec, nsec: (tenMs % 100) * 10_000_000 };
}
