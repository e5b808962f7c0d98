// ext2/ext3/ext4 read-only, layout per the kernel's Documentation/filesystems/ext4/ (e2fsprogs lib/ext2fs/ext2_fs.h).
// Our own rather than libext2fs: bench/ext2fs-eval.ts measured libext2fs 1.47.0 through a JSCallback
// io_manager over the same Volume 3.6x slower on a 1 GiB image, and returning 60 bytes for inline-data
// files shorter than that.
import { crc32c } from "../../native/crc32c.ts";
import { withCommas } from "../errors.ts";
import type { Volume } from "../volume/volume.ts";
import { type DirEntry, type FileSystem, FsError, type FsNode, type NodeKind, type Timestamp, kindOfMode } from "./filesystem.ts";
import { equalBytes, splitPath } from "./path.ts";

const SUPERBLOCK_OFFSET = 1024;
const EXT_MAGIC = 0xef53;
const ROOT_INODE = 2;

const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_RECOVER = 0x4;
const INCOMPAT_EXTENTS = 0x40;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_CSUM_SEED = 0x2000;
const INCOMPAT_INLINE_DATA = 0x8000;
/** what this reader understands; anything else in s_feature_incompat is refused */
const INCOMPAT_KNOWN =
  0x1 /* compression: refused below */ | INCOMPAT_FILETYPE | 0x4 /* recover */ | 0x8 /* journal dev */ | 0x10 /* meta_bg */ |
  INCOMPAT_EXTENTS | INCOMPAT_64BIT | 0x100 /* mmp */ | 0x200 /* flex_bg */ | 0x400 /* ea_inode */ | 0x1000 /* dirdata */ |
  INCOMPAT_CSUM_SEED | 0x4000 /* large_dir */ | INCOMPAT_INLINE_DATA | 0x10000 /* encrypt */ | 0x20000; /* casefold */
const INCOMPAT_META_BG = 0x10;
const RO_COMPAT_SPARSE_SUPER = 0x1;
const RO_COMPAT_HUGE_FILE = 0x8;
const COMPAT_SPARSE_SUPER2 = 0x200;
const RO_COMPAT_METADATA_CSUM = 0x400;

const FL_INDEX = 0x1000;
const FL_HUGE_FILE = 0x40000;
const FL_EXTENTS = 0x80000;
const FL_INLINE_DATA = 0x10000000;
const FL_ENCRYPT = 0x800;

const EXTENT_MAGIC = 0xf30a;
const XATTR_MAGIC = 0xea020000;
const MAX_EXTENT_DEPTH = 5;

/** One run of a file's blocks: `physical` 0 = a hole; `unwritten` extents read as zeros. */
interface BlockRun {
  logical: number;
  physical: number;
  count: number;
  unwritten: boolean;
}

interface Inode {
  number: number;
  raw: Uint8Array;
  /** volume offset of the inode, for messages */
  offset: number;
  node: FsNode;
  flags: number;
  generation: number;
}

/** Is there an ext2/3/4 superblock at 1024? */
export function detectExt(head: Uint8Array): boolean {
  return head.length >= SUPERBLOCK_OFFSET + 0x3a && (head[SUPERBLOCK_OFFSET + 0x38]! | (head[SUPERBLOCK_OFFSET + 0x39]! << 8)) === EXT_MAGIC;
}

export function openExt(volume: Volume): FileSystem {
  return new ExtFileSystem(volume);
}

class ExtFileSystem implements FileSystem {
  readonly type: string;
  readonly blockSize: number;
  readonly warnings: string[] = [];
  private readonly blocksCount: number;
  private readonly inodesCount: number;
  private readonly inodesPerGroup: number;
  private readonly inodeSize: number;
  private readonly groupCount: number;
  private readonly descSize: number;
  private readonly descTableBlock: number;
  /** with meta_bg, descriptor blocks from this index on sit in their own meta group */
  private readonly firstMetaBg: number;
  private readonly backupGroups: number[] | undefined;
  private readonly compat: number;
  private readonly incompat: number;
  private readonly roCompat: number;
  private readonly firstDataBlock: number;
  private readonly blocksPerGroup: number;
  /** crc32c seed of metadata checksums, when the fs has them */
  private readonly csumSeed: number | undefined;
  private readonly inodeTableCache = new Map<number, number>();
  private readonly inodeCache = new Map<number, Inode>();
  private mapCache: { inode: number; runs: BlockRun[] } | undefined;

  constructor(readonly volume: Volume) {
    const sb = volume.read(SUPERBLOCK_OFFSET, 1024);
    const v = view(sb);
    const at = (field: number) => SUPERBLOCK_OFFSET + field;
    if (v.getUint16(0x38, true) !== EXT_MAGIC) throw new FsError(volume.name, at(0x38), "no ext2/3/4 superblock (magic 0xEF53)");
    const logBlock = v.getUint32(0x18, true);
    if (logBlock > 6) throw new FsError(volume.name, at(0x18), `block size 2^${10 + logBlock} is not one ext4 uses (1 KiB to 64 KiB)`);
    this.blockSize = 1024 << logBlock;
    this.compat = v.getUint32(0x5c, true);
    this.incompat = v.getUint32(0x60, true);
    this.roCompat = v.getUint32(0x64, true);
    const unknown = this.incompat & ~INCOMPAT_KNOWN;
    if (unknown) throw new FsError(volume.name, at(0x60), `unknown incompatible features 0x${unknown.toString(16)}; this reader cannot read it (try: imgtool mount + the kernel)`);
    if (this.incompat & 0x1) throw new FsError(volume.name, at(0x60), "the ext2 compression feature is not supported");
    const is64 = (this.incompat & INCOMPAT_64BIT) !== 0;
    this.blocksCount = v.getUint32(0x4, true) + (is64 ? v.getUint32(0x150, true) * 2 ** 32 : 0);
    this.inodesCount = v.getUint32(0x0, true);
    this.firstDataBlock = v.getUint32(0x14, true);
    this.blocksPerGroup = v.getUint32(0x20, true);
    this.inodesPerGroup = v.getUint32(0x28, true);
    const revLevel = v.getUint32(0x4c, true);
    this.inodeSize = revLevel >= 1 ? v.getUint16(0x58, true) : 128;
    this.descSize = is64 ? v.getUint16(0xfe, true) : 32;
    if (this.inodeSize < 128 || this.inodeSize > this.blockSize || (this.inodeSize & (this.inodeSize - 1)) !== 0) {
      throw new FsError(volume.name, at(0x58), `inode size ${this.inodeSize} is not a power of two from 128 to the block size`);
    }
    if (this.descSize < 32 || this.descSize > 1024 || (this.descSize & (this.descSize - 1)) !== 0) {
      throw new FsError(volume.name, at(0xfe), `group descriptor size ${this.descSize} is not a power of two from 32 to 1024`);
    }
    if (this.blocksPerGroup === 0 || this.inodesPerGroup === 0 || this.blocksPerGroup > this.blockSize * 8 || this.inodesPerGroup > this.blockSize * 8) {
      throw new FsError(volume.name, at(0x20), `blocks per group ${this.blocksPerGroup} / inodes per group ${this.inodesPerGroup} do not fit a block bitmap of ${this.blockSize * 8} bits`);
    }
    if (this.blocksCount * this.blockSize > volume.size) {
      throw new FsError(volume.name, at(0x4), `the file system has ${withCommas(this.blocksCount)} blocks of ${this.blockSize} bytes, more than the ${withCommas(volume.size)}-byte volume holds`);
    }
    if (this.blocksCount <= this.firstDataBlock) throw new FsError(volume.name, at(0x4), `block count ${this.blocksCount} leaves no data blocks`);
    this.groupCount = Math.ceil((this.blocksCount - this.firstDataBlock) / this.blocksPerGroup);
    if (this.inodesCount > this.groupCount * this.inodesPerGroup) {
      throw new FsError(volume.name, at(0x0), `inode count ${this.inodesCount} is more than ${this.groupCount} groups of ${this.inodesPerGroup} hold`);
    }
    this.descTableBlock = this.firstDataBlock + 1;
    this.firstMetaBg = this.incompat & INCOMPAT_META_BG ? v.getUint32(0x104, true) : Number.MAX_SAFE_INTEGER;
    this.backupGroups = this.compat & COMPAT_SPARSE_SUPER2 ? [v.getUint32(0x24c, true), v.getUint32(0x250, true)] : undefined;
    if (this.roCompat & RO_COMPAT_METADATA_CSUM) {
      this.csumSeed = this.incompat & INCOMPAT_CSUM_SEED ? v.getUint32(0x270, true) : crc32c(sb.subarray(0x68, 0x78), 0xffffffff);
    }
    if (this.incompat & INCOMPAT_RECOVER) {
      this.warnings.push("the journal was not replayed (the volume was saved while mounted or after a crash): what was only in the journal is not shown");
    }
    this.type = this.incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_INLINE_DATA | 0x200) ? "ext4" : v.getUint32(0x5c, true) & 0x4 ? "ext3" : "ext2";
  }

  root(): FsNode {
    return this.inode(ROOT_INODE).node;
  }

  lookup(path: Uint8Array): FsNode | undefined {
    let node = this.root();
    for (const part of splitPath(path)) {
      if (node.kind !== "directory") return undefined;
      let found: FsNode | undefined;
      for (const e of this.list(node)) {
        if (equalBytes(e.name, part)) {
          if (e.damage) throw e.damage;
          found = e.node;
          break;
        }
      }
      if (!found) return undefined;
      node = found;
    }
    return node;
  }

  *list(dir: FsNode, onDamage?: (e: FsError) => void): Iterable<DirEntry> {
    const ino = this.inode(dir.id);
    const report = (e: FsError) => {
      if (!onDamage) throw e;
      onDamage(e);
    };
    if (ino.flags & FL_ENCRYPT) throw this.error(ino.offset, `directory inode ${ino.number} is encrypted`);
    if (ino.flags & FL_INLINE_DATA) {
      const data = this.inlineData(ino);
      // the first 4 bytes are the parent's inode number; the entries follow, in i_block and then in system.data
      yield* this.entries(data.subarray(4, Math.min(60, data.length)), ino.offset + 0x28 + 4, false, report);
      if (data.length > 60) yield* this.entries(data.subarray(60), ino.offset, false, report);
      return;
    }
    const runs = this.blockMap(ino);
    const blocks = Math.ceil(ino.node.size / this.blockSize);
    for (const run of runs) {
      if (run.physical === 0 || run.unwritten) continue;
      for (let i = 0; i < run.count && run.logical + i < blocks; i++) {
        const offset = (run.physical + i) * this.blockSize;
        const data = this.volume.read(offset, this.blockSize);
        const logical = run.logical + i;
        // htree root and interior blocks hold hashes of the leaves (and "." and ".." in the root), and
        // maybe stale bytes of the block they replaced; the leaves are read in order anyway
        if (this.isIndexNode(ino, logical, data)) continue;
        if (this.csumSeed !== undefined && hasDirentTail(data)) {
          const want = view(data).getUint32(data.length - 4, true);
          const got = crc32c(data.subarray(0, data.length - 12), this.inodeSeed(ino));
          if (want !== got) {
            report(this.error(offset, `directory block ${logical} (block ${run.physical + i}) of inode ${ino.number} has checksum 0x${want.toString(16)}, computed 0x${got.toString(16)}; its entries are skipped`));
            continue;
          }
        }
        yield* this.entries(data, offset, true, report);
      }
    }
  }

  /** Block 0 of an htree dir (dx_root: "." and ".." covering the block) or an interior dx_node (one empty entry covering the block). */
  private isIndexNode(ino: Inode, logical: number, data: Uint8Array): boolean {
    if (!(ino.flags & FL_INDEX)) return false;
    const v = view(data);
    if (logical === 0) return true;
    return v.getUint32(0, true) === 0 && recLen(v.getUint16(4, true), this.blockSize) === this.blockSize;
  }

  /** Directory entries of one block (or inline area), checked: a bad one ends the block with a report. */
  private *entries(data: Uint8Array, baseOffset: number, isBlock: boolean, report: (e: FsError) => void): Iterable<DirEntry> {
    const v = view(data);
    const fileType = (this.incompat & INCOMPAT_FILETYPE) !== 0;
    const end = isBlock && this.csumSeed !== undefined && hasDirentTail(data) ? data.length - 12 : data.length;
    for (let pos = 0; pos < end; ) {
      if (pos + 8 > end) {
        report(this.error(baseOffset + pos, `directory entry at byte ${pos} runs past the end of its block`));
        return;
      }
      const inodeNo = v.getUint32(pos, true);
      const len = isBlock ? recLen(v.getUint16(pos + 4, true), this.blockSize) : v.getUint16(pos + 4, true);
      const nameLen = fileType ? data[pos + 6]! : v.getUint16(pos + 6, true);
      if (len < 8 || len % 4 !== 0 || pos + len > end || nameLen + 8 > len) {
        report(this.error(baseOffset + pos, `directory entry at byte ${pos} has record length ${len} and name length ${nameLen}, which do not fit; the rest of this block is skipped`));
        return;
      }
      if (inodeNo !== 0 && nameLen > 0) {
        const name = data.slice(pos + 8, pos + 8 + nameLen);
        const dot = nameLen <= 2 && name[0] === 0x2e && (nameLen === 1 || name[1] === 0x2e);
        if (!dot) {
          try {
            yield { name, node: this.inode(inodeNo).node };
          } catch (e) {
            if (!(e instanceof FsError)) throw e;
            yield { name, node: placeholderNode(inodeNo, fileType ? data[pos + 7]! : 0), damage: e };
          }
        }
      }
      pos += len;
    }
  }

  readFile(file: FsNode, offset: number, into: Uint8Array): number {
    const ino = this.inode(file.id);
    const size = ino.node.size;
    if (offset >= size) return 0;
    const want = Math.min(into.length, size - offset);
    if (ino.flags & FL_ENCRYPT) throw this.error(ino.offset, `inode ${ino.number} is encrypted`);
    if (ino.flags & FL_INLINE_DATA) {
      const data = this.inlineData(ino);
      into.fill(0, 0, want);
      if (offset < data.length) into.set(data.subarray(offset, Math.min(data.length, offset + want)));
      return want;
    }
    const runs = this.blockMap(ino);
    const bs = this.blockSize;
    let done = 0;
    while (done < want) {
      const pos = offset + done;
      const logical = Math.floor(pos / bs);
      const next = runAtOrAfter(runs, logical);
      const run = next && next.logical <= logical ? next : undefined;
      const runEnd = run ? (run.logical + run.count) * bs : next ? next.logical * bs : Number.MAX_SAFE_INTEGER;
      const n = Math.min(want - done, runEnd - pos);
      if (!run || run.physical === 0 || run.unwritten) {
        into.fill(0, done, done + n);
      } else {
        into.set(this.volume.read((run.physical + (logical - run.logical)) * bs + (pos % bs), n), done);
      }
      done += n;
    }
    return want;
  }

  *fileExtents(file: FsNode): Iterable<{ offset: number; length: number }> {
    const ino = this.inode(file.id);
    const size = ino.node.size;
    if (ino.flags & FL_INLINE_DATA) {
      if (size > 0) yield { offset: 0, length: size };
      return;
    }
    let pending: { offset: number; length: number } | undefined;
    for (const run of this.blockMap(ino)) {
      if (run.physical === 0 || run.unwritten) continue;
      const start = run.logical * this.blockSize;
      if (start >= size) break;
      const length = Math.min(run.count * this.blockSize, size - start);
      if (pending && pending.offset + pending.length === start) pending.length += length;
      else {
        if (pending) yield pending;
        pending = { offset: start, length };
      }
    }
    if (pending) yield pending;
  }

  readlink(link: FsNode): Uint8Array {
    const ino = this.inode(link.id);
    const size = ino.node.size;
    if (size > this.blockSize || size > 4096) throw this.error(ino.offset, `symlink inode ${ino.number} has length ${size}, longer than a block`);
    if (!(ino.flags & (FL_EXTENTS | FL_INLINE_DATA)) && size < 60 && this.dataBlocks(ino) === 0) {
      return ino.raw.slice(0x28, 0x28 + size);
    }
    const out = new Uint8Array(size);
    this.readFile(link, 0, out);
    return out;
  }

  close(): void {
    this.volume.close();
  }

  // ---- inodes ----

  private error(offset: number | undefined, problem: string): FsError {
    return new FsError(this.volume.name, offset, problem);
  }

  private inodeTable(group: number): number {
    let table = this.inodeTableCache.get(group);
    if (table !== undefined) return table;
    const perBlock = this.blockSize / this.descSize;
    const descOffset = this.descriptorBlock(Math.floor(group / perBlock)) * this.blockSize + (group % perBlock) * this.descSize;
    const d = this.volume.read(descOffset, this.descSize);
    const v = view(d);
    table = v.getUint32(0x8, true) + (this.descSize >= 64 ? v.getUint32(0x28, true) * 2 ** 32 : 0);
    const tableBlocks = Math.ceil((this.inodesPerGroup * this.inodeSize) / this.blockSize);
    if (table === 0 || table + tableBlocks > this.blocksCount) {
      throw this.error(descOffset + 8, `group ${group}'s inode table at block ${withCommas(table)} lies outside the ${withCommas(this.blocksCount)}-block file system`);
    }
    this.inodeTableCache.set(group, table);
    return table;
  }

  /** Where descriptor block `index` is: after the superblock, or with meta_bg, in the first group of its meta group (after its backup superblock). */
  private descriptorBlock(index: number): number {
    if (index < this.firstMetaBg) return this.descTableBlock + index;
    const group = index * (this.blockSize / this.descSize);
    return this.firstDataBlock + group * this.blocksPerGroup + (this.hasSuperblock(group) ? 1 : 0);
  }

  /** Does group g hold a superblock backup (sparse_super: 0, 1 and powers of 3, 5, 7; sparse_super2: the two named)? */
  private hasSuperblock(g: number): boolean {
    if (g === 0) return true;
    if (this.backupGroups) return this.backupGroups.includes(g);
    if (g <= 1 || !(this.roCompat & RO_COMPAT_SPARSE_SUPER)) return true;
    if (g % 2 === 0) return false;
    for (const base of [3, 5, 7]) {
      let p = base;
      while (p < g) p *= base;
      if (p === g) return true;
    }
    return false;
  }

  private inode(number: number): Inode {
    const cached = this.inodeCache.get(number);
    if (cached) return cached;
    if (number < 1 || number > this.inodesCount) {
      throw this.error(undefined, `inode number ${withCommas(number)} is outside the file system's ${withCommas(this.inodesCount)} inodes`);
    }
    const group = Math.floor((number - 1) / this.inodesPerGroup);
    const index = (number - 1) % this.inodesPerGroup;
    const offset = this.inodeTable(group) * this.blockSize + index * this.inodeSize;
    const raw = this.volume.read(offset, this.inodeSize);
    const v = view(raw);
    const extra = this.inodeSize > 128 ? v.getUint16(0x80, true) : 0;
    if (this.inodeSize > 128 && (extra % 4 !== 0 || 128 + extra > this.inodeSize)) {
      throw this.error(offset + 0x80, `inode ${number} has extra size ${extra}, more than the ${this.inodeSize}-byte inode holds`);
    }
    const generation = v.getUint32(0x64, true);
    if (this.csumSeed !== undefined) this.checkInodeChecksum(number, raw, generation, extra, offset);
    const mode = v.getUint16(0, true);
    const kind = kindOfMode(mode);
    if (!kind) throw this.error(offset, `inode ${number} has mode 0${mode.toString(8)}, which is no file type`);
    const flags = v.getUint32(0x20, true);
    const sizeHigh = v.getUint32(0x6c, true);
    const size = v.getUint32(0x4, true) + (kind === "file" || this.roCompat & 0x2 /* large_file */ || kind === "directory" ? sizeHigh * 2 ** 32 : 0);
    if (size > Number.MAX_SAFE_INTEGER || size > 2 ** 60) throw this.error(offset + 0x6c, `inode ${number} has size ${size}, too large`);
    const time = (at: number, extraAt: number): Timestamp => {
      const lo = v.getInt32(at, true);
      if (extraAt + 4 > 128 + extra) return { sec: lo, nsec: 0 };
      const x = v.getUint32(extraAt, true);
      const nsec = x >>> 2;
      return { sec: lo + (x & 3) * 2 ** 32, nsec: nsec < 1e9 ? nsec : 0 };
    };
    const node: FsNode = {
      id: number,
      kind,
      mode: mode & 0o7777,
      uid: v.getUint16(0x2, true) | (v.getUint16(0x78, true) << 16),
      gid: v.getUint16(0x18, true) | (v.getUint16(0x7a, true) << 16),
      size,
      links: v.getUint16(0x1a, true),
      mtime: time(0x10, 0x88),
      atime: time(0x8, 0x8c),
      ctime: time(0xc, 0x84),
    };
    node.uid >>>= 0;
    node.gid >>>= 0;
    if (kind === "char-device" || kind === "block-device") {
      const old = v.getUint32(0x28, true);
      const dev = old !== 0 ? old : v.getUint32(0x2c, true);
      node.rdev = old !== 0 ? { major: (old >>> 8) & 0xff, minor: old & 0xff } : { major: (dev >>> 8) & 0xfff, minor: (dev & 0xff) | ((dev >>> 12) & 0xfff00) };
    }
    const inode: Inode = { number, raw, offset, node, flags, generation };
    if (this.inodeCache.size >= 4096) this.inodeCache.clear();
    this.inodeCache.set(number, inode);
    return inode;
  }

  private checkInodeChecksum(number: number, raw: Uint8Array, generation: number, extra: number, offset: number): void {
    const v = view(raw);
    const hasHigh = extra >= 4;
    const want = v.getUint16(0x7c, true) | (hasHigh ? v.getUint16(0x82, true) << 16 : 0);
    const copy = raw.slice();
    copy[0x7c] = copy[0x7d] = 0;
    if (hasHigh) copy[0x82] = copy[0x83] = 0;
    let crc = crc32c(copy, this.inodeSeedOf(number, generation));
    if (!hasHigh) crc &= 0xffff;
    if ((crc >>> 0) !== want >>> 0) {
      // an all-zero inode (never used) has no checksum to check
      if (raw.every((b) => b === 0)) return;
      throw this.error(offset, `inode ${number} has checksum 0x${(want >>> 0).toString(16)}, computed 0x${(crc >>> 0).toString(16)}`);
    }
  }

  private inodeSeedOf(number: number, generation: number): number {
    const b = new Uint8Array(8);
    const v = view(b);
    v.setUint32(0, number, true);
    v.setUint32(4, generation, true);
    return crc32c(b.subarray(4), crc32c(b.subarray(0, 4), this.csumSeed!));
  }

  private inodeSeed(ino: Inode): number {
    return this.inodeSeedOf(ino.number, ino.generation);
  }

  /** i_blocks in file-system blocks, less an xattr block. */
  private dataBlocks(ino: Inode): number {
    const v = view(ino.raw);
    let sectors = v.getUint32(0x1c, true);
    if (this.roCompat & RO_COMPAT_HUGE_FILE) sectors += v.getUint16(0x74, true) * 2 ** 32;
    const blocks = this.roCompat & RO_COMPAT_HUGE_FILE && ino.flags & FL_HUGE_FILE ? sectors : sectors / (this.blockSize / 512);
    const acl = v.getUint32(0x68, true) + v.getUint16(0x76, true) * 2 ** 32;
    return blocks - (acl !== 0 ? 1 : 0);
  }

  // ---- where a file's data is ----

  private blockMap(ino: Inode): BlockRun[] {
    if (this.mapCache?.inode === ino.number) return this.mapCache.runs;
    const runs = ino.flags & FL_EXTENTS ? this.extentRuns(ino) : this.indirectRuns(ino);
    this.mapCache = { inode: ino.number, runs };
    return runs;
  }

  private checkRun(ino: Inode, physical: number, count: number, at: number): void {
    if (physical < this.firstDataBlock || physical + count > this.blocksCount) {
      throw this.error(at, `inode ${ino.number} points at blocks ${withCommas(physical)}..${withCommas(physical + count - 1)}, past the end of the ${withCommas(this.blocksCount)}-block volume`);
    }
  }

  private extentRuns(ino: Inode): BlockRun[] {
    const runs: BlockRun[] = [];
    const maxBlocks = Math.ceil(ino.node.size / this.blockSize);
    const walk = (node: Uint8Array, at: number, depthExpected: number | undefined, budget: { nodes: number }) => {
      const v = view(node);
      if (v.getUint16(0, true) !== EXTENT_MAGIC) throw this.error(at, `inode ${ino.number}: extent tree node has no extent magic 0xF30A`);
      const entries = v.getUint16(2, true);
      const max = v.getUint16(4, true);
      const depth = v.getUint16(6, true);
      if (entries > max || 12 + max * 12 > node.length) throw this.error(at, `inode ${ino.number}: extent node with ${entries} of ${max} entries does not fit its ${node.length} bytes`);
      if (depth > MAX_EXTENT_DEPTH || (depthExpected !== undefined && depth !== depthExpected)) throw this.error(at, `inode ${ino.number}: extent tree depth ${depth} is wrong`);
      if (++budget.nodes > this.blocksCount) throw this.error(at, `inode ${ino.number}: the extent tree has more nodes than the volume has blocks (a loop)`);
      for (let i = 0; i < entries; i++) {
        const e = 12 + i * 12;
        const logical = v.getUint32(e, true);
        if (depth === 0) {
          let len = v.getUint16(e + 4, true);
          const unwritten = len > 32768;
          if (unwritten) len -= 32768;
          const physical = v.getUint16(e + 6, true) * 2 ** 32 + v.getUint32(e + 8, true);
          if (len === 0 || logical >= maxBlocks) continue;
          this.checkRun(ino, physical, len, at + e);
          const last = runs[runs.length - 1];
          if (last && logical < last.logical + last.count) throw this.error(at + e, `inode ${ino.number}: extents overlap or are out of order at file block ${logical}`);
          runs.push({ logical, physical, count: len, unwritten });
        } else {
          const child = v.getUint32(e + 4, true) + v.getUint16(e + 8, true) * 2 ** 32;
          this.checkRun(ino, child, 1, at + e);
          const offset = child * this.blockSize;
          const block = this.volume.read(offset, this.blockSize);
          if (this.csumSeed !== undefined) {
            const cmax = view(block).getUint16(4, true);
            const tail = 12 + cmax * 12;
            if (view(block).getUint16(0, true) === EXTENT_MAGIC && tail + 4 <= block.length) {
              const want = view(block).getUint32(tail, true);
              const got = crc32c(block.subarray(0, tail), this.inodeSeed(ino));
              if (want !== got) throw this.error(offset + tail, `inode ${ino.number}: extent block ${child} has checksum 0x${want.toString(16)}, computed 0x${got.toString(16)}`);
            }
          }
          walk(block, offset, depth - 1, budget);
        }
      }
    };
    walk(ino.raw.subarray(0x28, 0x28 + 60), ino.offset + 0x28, undefined, { nodes: 0 });
    return runs;
  }

  /** ext2/3 block map: 12 direct pointers, then single, double and triple indirect blocks. */
  private indirectRuns(ino: Inode): BlockRun[] {
    const runs: BlockRun[] = [];
    const v = view(ino.raw);
    const maxBlocks = Math.ceil(ino.node.size / this.blockSize);
    const perBlock = this.blockSize / 4;
    const add = (logical: number, physical: number, at: number) => {
      if (physical === 0 || logical >= maxBlocks) return;
      this.checkRun(ino, physical, 1, at);
      const last = runs[runs.length - 1];
      if (last && last.physical + last.count === physical && last.logical + last.count === logical) last.count++;
      else runs.push({ logical, physical, count: 1, unwritten: false });
    };
    for (let i = 0; i < 12; i++) add(i, v.getUint32(0x28 + i * 4, true), ino.offset + 0x28 + i * 4);
    // a damaged inode may claim a huge size over indirect blocks of garbage: no file maps more blocks than the volume has
    let visited = 0;
    const indirect = (block: number, level: number, firstLogical: number, at: number) => {
      if (block === 0 || firstLogical >= maxBlocks) return;
      this.checkRun(ino, block, 1, at);
      if (++visited + runs.length > this.blocksCount) throw this.error(at, `inode ${ino.number}: its block map holds more blocks than the volume (a loop or garbage)`);
      const offset = block * this.blockSize;
      const data = view(this.volume.read(offset, this.blockSize));
      const span = perBlock ** (level - 1);
      for (let i = 0; i < perBlock; i++) {
        const p = data.getUint32(i * 4, true);
        if (level === 1) add(firstLogical + i, p, offset + i * 4);
        else indirect(p, level - 1, firstLogical + i * span, offset + i * 4);
      }
    };
    indirect(v.getUint32(0x28 + 48, true), 1, 12, ino.offset + 0x28 + 48);
    indirect(v.getUint32(0x28 + 52, true), 2, 12 + perBlock, ino.offset + 0x28 + 52);
    indirect(v.getUint32(0x28 + 56, true), 3, 12 + perBlock + perBlock ** 2, ino.offset + 0x28 + 56);
    return runs;
  }

  /** An inline-data inode's bytes: i_block's 60, then the value of the in-inode xattr system.data. */
  private inlineData(ino: Inode): Uint8Array {
    const head = ino.raw.subarray(0x28, 0x28 + 60);
    const v = view(ino.raw);
    const extra = this.inodeSize > 128 ? v.getUint16(0x80, true) : 0;
    const start = 128 + extra;
    let rest: Uint8Array | undefined;
    if (start + 4 <= this.inodeSize && v.getUint32(start, true) === XATTR_MAGIC) {
      const first = start + 4;
      for (let pos = first; pos + 16 <= this.inodeSize && v.getUint32(pos, true) !== 0; ) {
        const nameLen = ino.raw[pos]!;
        const index = ino.raw[pos + 1]!;
        const valueOffs = v.getUint16(pos + 2, true);
        const valueInum = v.getUint32(pos + 4, true);
        const valueSize = v.getUint32(pos + 8, true);
        if (pos + 16 + nameLen > this.inodeSize) break;
        const name = ino.raw.subarray(pos + 16, pos + 16 + nameLen);
        if (index === 7 && nameLen === 4 && name[0] === 0x64 && name[1] === 0x61 && name[2] === 0x74 && name[3] === 0x61 /* "data" */) {
          if (valueInum !== 0 || first + valueOffs + valueSize > this.inodeSize) {
            throw this.error(ino.offset + pos, `inode ${ino.number}: its inline data (system.data, ${valueSize} bytes) lies outside the inode`);
          }
          rest = ino.raw.subarray(first + valueOffs, first + valueOffs + valueSize);
          break;
        }
        pos += (16 + nameLen + 3) & ~3;
      }
    }
    const out = new Uint8Array(60 + (rest?.length ?? 0));
    out.set(head);
    if (rest) out.set(rest, 60);
    return ino.node.kind === "directory" ? out : out.subarray(0, Math.min(out.length, Math.max(ino.node.size, 0)));
  }
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** rec_len as stored: 65536-byte blocks write 0 or 65535 for a whole block. */
function recLen(stored: number, blockSize: number): number {
  if (blockSize < 65536) return stored;
  return stored === 65535 || stored === 0 ? blockSize : (stored & 65532) | ((stored & 3) << 16);
}

/** The metadata_csum tail: an empty entry of length 12 with file type 0xDE in the last 12 bytes. */
function hasDirentTail(block: Uint8Array): boolean {
  const t = block.length - 12;
  const v = view(block);
  return v.getUint32(t, true) === 0 && v.getUint16(t + 4, true) === 12 && block[t + 6] === 0 && block[t + 7] === 0xde;
}

const DIRENT_KINDS: (NodeKind | undefined)[] = [undefined, "file", "directory", "char-device", "block-device", "fifo", "socket", "symlink"];

function placeholderNode(id: number, direntType: number): FsNode {
  const zero = { sec: 0, nsec: 0 };
  return { id, kind: DIRENT_KINDS[direntType] ?? "file", mode: 0, uid: 0, gid: 0, size: 0, links: 0, mtime: zero, atime: zero };
}

/** The first run that ends after file block `logical` (binary search; runs are ascending). */
function runAtOrAfter(runs: BlockRun[], logical: number): BlockRun | undefined {
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const r = runs[mid]!;
    if (r.logical + r.count <= logical) lo = mid + 1;
    else hi = mid;
  }
  return runs[lo];
}

