// XFS read-only (v4 and v5): the FileSystem over the on-disk layouts in src/fs/xfs/ (xfsprogs libxfs/xfs_format.h, xfs_da_format.h).
// Our own rather than libfsxfs: see the commit that added it for the measurements.
import { withCommas } from "../errors.ts";
import type { Volume } from "../volume/volume.ts";
import { type DirEntry, type FileSystem, FsError, type FsNode, type NodeKind, type Xattr } from "./filesystem.ts";
import { type Problem, REMOTE_HEADER, type RawAttr, attrBlock, linuxXattrs, remotePiece, shortFormAttrs } from "./xfs/attributes.ts";
import { DIR2_LEAF_OFFSET, type RawEntry, dataBlockEntries, shortFormEntries } from "./xfs/directory.ts";
import { type Dinode, FORK_FORMAT, type Mapping, bmbtBlock, bmdrRoot, extentAt, parseDinode } from "./xfs/inode.ts";
import { logDirtyReason } from "./xfs/log.ts";
import { type InodeChunk, SB_MAGIC, type Superblock, inodeChunkAt, parseAgHeaders, parseShortBtreeBlock, parseSuperblock, view } from "./xfs/superblock.ts";
import { equalBytes, splitPath } from "./path.ts";

const SYMLINK_MAXLEN = 1024;
const XATTR_SIZE_MAX = 65536;
const INODES_PER_CHUNK = 64;
/** XFS_DIR3_FT_* to node kinds, for entries whose inode cannot be read */
const FTYPE_KINDS: (NodeKind | undefined)[] = [undefined, "file", "directory", "char-device", "block-device", "fifo", "socket", "symlink"];

interface Inode {
  number: number;
  /** volume offset of the inode, for messages */
  offset: number;
  dinode: Dinode;
  node: FsNode;
}

/** Is there an XFS superblock at 0? */
export function detectXfs(head: Uint8Array): boolean {
  return head.length >= 4 && view(head).getUint32(0) === SB_MAGIC;
}

export function openXfs(volume: Volume): FileSystem {
  return new XfsFileSystem(volume);
}

class XfsFileSystem implements FileSystem {
  readonly type = "xfs";
  readonly warnings: string[] = [];
  private readonly sb: Superblock;
  private readonly bs: number;
  /** per AG: its inode chunks, ascending, or the damage that keeps its inodes from being read */
  private readonly agChunks = new Map<number, InodeChunk[] | FsError>();
  private readonly inodeCache = new Map<number, Inode>();
  private mapCache: { ino: number; mappings: Mapping[] } | undefined;

  constructor(readonly volume: Volume) {
    const fail = (at: number, problem: string): never => {
      throw new FsError(volume.name, at, problem);
    };
    if (volume.size < 512) fail(0, `the ${volume.size}-byte volume is too small for an XFS superblock`);
    const first = volume.read(0, 512);
    const sectorSize = view(first).getUint16(102);
    const sbBytes = sectorSize >= 512 && sectorSize <= 32768 && sectorSize <= volume.size ? volume.read(0, sectorSize) : first;
    this.sb = parseSuperblock(sbBytes, fail);
    this.bs = this.sb.blockSize;
    if (this.sb.dataBlocks * this.bs > volume.size) {
      fail(8, `the file system has ${withCommas(this.sb.dataBlocks)} blocks of ${this.bs} bytes, more than the ${withCommas(volume.size)}-byte volume holds`);
    }
    if (this.sb.needsRepair) this.warnings.push("the file system is marked as needing xfs_repair: what it would fix is shown as it is");
    if (this.sb.logStart === 0) this.warnings.push("the log is on another device (an external log), not in this volume: whether it holds changes not written back is unknown");
    else {
      const logOffset = this.blockOffset(this.sb.logStart, this.sb.logBlocks, 48);
      const reason = logDirtyReason((this.sb.logBlocks * this.bs) / 512, (bb) => volume.read(logOffset + bb * 512, 512), this.sb.lastLogSector);
      if (reason) this.warnings.push(`the log was not replayed: ${reason}; what was only in the log is not shown`);
    }
  }

  root(): FsNode {
    return this.inode(this.sb.rootIno).node;
  }

  lookup(path: Uint8Array): FsNode | undefined {
    return splitPath(path).reduce<FsNode | undefined>((node, part) => (node?.kind === "directory" ? this.child(node, part) : undefined), this.root());
  }

  /** The entry `name` of a directory (damage to it thrown): only that entry's inode is read. */
  private child(dir: FsNode, name: Uint8Array): FsNode | undefined {
    for (const e of this.rawEntries(this.inode(dir.id), (err) => { throw err; })) {
      if (equalBytes(e.name, name) && !isDotOrDotDot(e.name)) return this.inode(e.ino).node;
    }
    return undefined;
  }

  *list(dir: FsNode, onDamage: (e: FsError) => void = (e) => { throw e; }): Iterable<DirEntry> {
    for (const e of this.rawEntries(this.inode(dir.id), onDamage)) {
      if (!isDotOrDotDot(e.name)) yield this.entry(e);
    }
  }

  /**
   * A directory entry whose inode is read when `node` or `damage` is first asked for: a walk that
   * stops at one name (get's path resolution) reads only that entry's inode, not those before it,
   * which XFS spreads over the AGs (each a separate decode in a compressed image).
   */
  private entry(raw: RawEntry): DirEntry {
    let resolved: { node: FsNode; damage?: FsError } | undefined;
    const resolve = () => {
      if (resolved) return resolved;
      try {
        resolved = { node: this.inode(raw.ino).node };
      } catch (err) {
        if (!(err instanceof FsError)) throw err;
        const zero = { sec: 0, nsec: 0 };
        resolved = { node: { id: raw.ino, kind: FTYPE_KINDS[raw.ftype] ?? "file", mode: 0, uid: 0, gid: 0, size: 0, links: 0, mtime: zero, atime: zero }, damage: err };
      }
      return resolved;
    };
    return {
      name: raw.name,
      get node() {
        return resolve().node;
      },
      get damage() {
        return resolve().damage;
      },
    };
  }

  /** A directory's entries as stored (names and inode numbers), in every form; a bad data block goes to `report` and is skipped. */
  private *rawEntries(ino: Inode, report: (e: FsError) => void): Iterable<RawEntry> {
    const d = ino.dinode;
    if (d.kind !== "directory") throw this.error(ino.offset, `inode ${ino.number} is not a directory`);
    if (d.format === FORK_FORMAT.local) {
      const got = shortFormEntries(this.sb, d.dataFork, d.size);
      if ("problem" in got) throw this.error(ino.offset + d.dataForkAt + got.at, got.problem);
      yield* got.entries;
      return;
    }
    const mappings = this.mappings(ino);
    const dirBlockBlocks = 2 ** this.sb.dirBlockLog;
    const dirBlockBytes = this.bs * dirBlockBlocks;
    const leafBlock = DIR2_LEAF_OFFSET / this.bs;
    let next = 0;
    for (const m of mappings) {
      if (m.offset >= leafBlock) break;
      if (m.unwritten) continue;
      const end = Math.min(m.offset + m.count, leafBlock);
      for (let start = Math.max(next, m.offset - (m.offset % dirBlockBlocks)); start < end; start += dirBlockBlocks) {
        next = start + dirBlockBlocks;
        let block: Uint8Array;
        let at: number;
        try {
          ({ data: block, at } = this.readMapped(ino, mappings, start * this.bs, dirBlockBytes));
        } catch (e) {
          if (!(e instanceof FsError)) throw e;
          report(e);
          continue;
        }
        const got = dataBlockEntries(this.sb, block, ino.number, at / 512);
        if ("problem" in got) {
          report(this.error(at + got.at, `${got.problem}; its entries are skipped`));
          continue;
        }
        yield* got.entries;
      }
    }
  }

  readFile(file: FsNode, offset: number, into: Uint8Array): number {
    const ino = this.inode(file.id);
    const size = ino.dinode.size;
    if (offset >= size) return 0;
    const want = Math.min(into.length, size - offset);
    if (ino.dinode.format === FORK_FORMAT.local) {
      into.fill(0, 0, want);
      const data = ino.dinode.dataFork;
      if (offset < data.length) into.set(data.subarray(offset, Math.min(data.length, offset + want)));
      return want;
    }
    // walk the mappings from the first one ending after `offset`; gaps between them are holes
    const mappings = this.mappings(ino);
    const bs = this.bs;
    const end = offset + want;
    let zeroFrom = offset;
    for (let i = firstEndingAfter(mappings, Math.floor(offset / bs)); i < mappings.length; i++) {
      const m = mappings[i]!;
      const from = Math.max(offset, m.offset * bs);
      const to = Math.min(end, (m.offset + m.count) * bs);
      if (from >= end) break;
      if (m.unwritten || from >= to) continue;
      into.fill(0, zeroFrom - offset, from - offset);
      const at = this.blockOffset(m.block, m.count, ino.offset) + (from - m.offset * bs);
      const part = into.subarray(from - offset, to - offset);
      if (this.volume.readInto) this.volume.readInto(at, part);
      else part.set(this.volume.read(at, part.length));
      zeroFrom = to;
    }
    into.fill(0, zeroFrom - offset, want);
    return want;
  }

  *fileExtents(file: FsNode): Iterable<{ offset: number; length: number }> {
    const ino = this.inode(file.id);
    const size = ino.dinode.size;
    if (ino.dinode.format === FORK_FORMAT.local) {
      if (size > 0) yield { offset: 0, length: size };
      return;
    }
    // written mappings below the size, neighbours joined (a reflinked file's extents often touch)
    const written = this.mappings(ino).filter((m) => !m.unwritten && m.offset * this.bs < size);
    for (let i = 0; i < written.length; ) {
      let j = i;
      while (j + 1 < written.length && written[j + 1]!.offset === written[j]!.offset + written[j]!.count) j++;
      const start = written[i]!.offset * this.bs;
      yield { offset: start, length: Math.min((written[j]!.offset + written[j]!.count) * this.bs, size) - start };
      i = j + 1;
    }
  }

  readlink(link: FsNode): Uint8Array {
    const ino = this.inode(link.id);
    const d = ino.dinode;
    if (d.size === 0 || d.size > SYMLINK_MAXLEN) throw this.error(ino.offset + 56, `symlink inode ${ino.number} has length ${d.size}, not 1 to ${SYMLINK_MAXLEN}`);
    if (d.format === FORK_FORMAT.local) {
      if (d.size > d.dataFork.length) throw this.error(ino.offset + d.dataForkAt, `symlink inode ${ino.number} of ${d.size} bytes does not fit its fork`);
      return d.dataFork.slice(0, d.size);
    }
    return this.remoteBytes(ino, this.mappings(ino), 0, d.size, "symlink");
  }

  *xattrs(node: FsNode): Iterable<Xattr> {
    const ino = this.inode(node.id);
    const d = ino.dinode;
    let raw: RawAttr[];
    if (d.attrFormat === -1) return;
    if (d.attrFormat === FORK_FORMAT.local) {
      const got = shortFormAttrs(d.attrFork);
      if (!Array.isArray(got)) throw this.error(ino.offset + d.attrForkAt + got.at, got.problem);
      raw = got;
    } else if (d.attrFormat === FORK_FORMAT.extents || d.attrFormat === FORK_FORMAT.btree) {
      const mappings = this.forkMappings(ino, "attr");
      if (mappings.length === 0) return;
      raw = this.attrTree(ino, mappings);
      for (const a of raw) {
        if (!a.remote) continue;
        if (a.remote.length > XATTR_SIZE_MAX) throw this.error(ino.offset, `inode ${ino.number}: attribute value of ${withCommas(a.remote.length)} bytes is more than Linux allows`);
        a.value = this.remoteBytes(ino, mappings, a.remote.block, a.remote.length, "attribute");
      }
    } else throw this.error(ino.offset + 83, `inode ${ino.number} has attribute fork format ${d.attrFormat}`);
    for (const a of raw) {
      yield* linuxXattrs(a.flags, a.name, a.value!);
    }
  }

  close(): void {
    this.volume.close();
  }

  private error(offset: number | undefined, problem: string): FsError {
    return new FsError(this.volume.name, offset, problem);
  }

  // ---- addresses ----

  private agLength(agno: number): number {
    return Math.min(this.sb.agBlocks, this.sb.dataBlocks - agno * this.sb.agBlocks);
  }

  /** Volume offset of `count` blocks from fs block `fsb` (AG number in the high bits), checked to lie inside one AG. */
  private blockOffset(fsb: number, count: number, at: number | undefined): number {
    const agno = Math.floor(fsb / 2 ** this.sb.agBlockLog);
    const agbno = fsb - agno * 2 ** this.sb.agBlockLog;
    if (agno >= this.sb.agCount || agbno + count > this.agLength(agno)) {
      throw this.error(at, `blocks ${withCommas(fsb)}+${withCommas(count)} (AG ${withCommas(agno)}, block ${withCommas(agbno)}) lie outside the ${this.sb.agCount}-AG file system`);
    }
    return (agno * this.sb.agBlocks + agbno) * this.bs;
  }

  // ---- inodes ----

  private inode(number: number): Inode {
    const cached = this.inodeCache.get(number);
    if (cached) return cached;
    const agInoBits = 2 ** (this.sb.agBlockLog + this.sb.inodesPerBlockLog);
    const agno = Math.floor(number / agInoBits);
    const agino = number - agno * agInoBits;
    const agbno = Math.floor(agino / 2 ** this.sb.inodesPerBlockLog);
    if (agno >= this.sb.agCount || agbno >= this.agLength(agno)) throw this.error(undefined, `inode number ${withCommas(number)} lies outside the file system`);
    const offset = (agno * this.sb.agBlocks + agbno) * this.bs + (agino % 2 ** this.sb.inodesPerBlockLog) * this.sb.inodeSize;
    this.checkAllocated(agno, agino, number, offset);
    const raw = this.volume.read(offset, this.sb.inodeSize);
    const dinode = parseDinode(this.sb, raw, number, (at, problem) => {
      throw this.error(offset + at, problem);
    });
    if (!dinode.kind) throw this.error(offset + 2, `inode ${number} has mode 0${dinode.mode.toString(8)}, which is no file type`);
    const node: FsNode = {
      id: number,
      kind: dinode.kind,
      mode: dinode.mode & 0o7777,
      uid: dinode.uid,
      gid: dinode.gid,
      size: dinode.kind === "char-device" || dinode.kind === "block-device" || dinode.kind === "fifo" || dinode.kind === "socket" ? 0 : dinode.size,
      links: dinode.links,
      mtime: dinode.mtime,
      atime: dinode.atime,
      ctime: dinode.ctime,
      rdev: dinode.rdev,
    };
    const inode: Inode = { number, offset, dinode, node };
    if (this.inodeCache.size >= 4096) this.inodeCache.clear();
    this.inodeCache.set(number, inode);
    return inode;
  }

  /** The inode must sit in an allocated chunk of its AG's inode btree, on disk (not a sparse hole) and in use. */
  private checkAllocated(agno: number, agino: number, number: number, offset: number): void {
    const chunks = this.chunksOf(agno);
    if (chunks instanceof FsError) throw chunks;
    let lo = 0;
    let hi = chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (chunks[mid]!.startIno + INODES_PER_CHUNK <= agino) lo = mid + 1;
      else hi = mid;
    }
    const chunk = chunks[lo];
    if (!chunk || chunk.startIno > agino) throw this.error(offset, `inode ${withCommas(number)} is in no allocated inode chunk of AG ${agno}`);
    const bit = 1n << BigInt(agino - chunk.startIno);
    if (chunk.holes & bit) throw this.error(offset, `inode ${withCommas(number)} lies in a sparse hole of its inode chunk`);
    if (chunk.free & bit) throw this.error(offset, `inode ${withCommas(number)} is free in the inode btree`);
  }

  /** The AG's headers checked and its inode btree read once (every leaf, loops and counts checked). */
  private chunksOf(agno: number): InodeChunk[] | FsError {
    const cached = this.agChunks.get(agno);
    if (cached) return cached;
    let result: InodeChunk[] | FsError;
    try {
      result = this.readInodeBtree(agno);
    } catch (e) {
      if (!(e instanceof FsError)) throw e;
      result = e;
    }
    this.agChunks.set(agno, result);
    return result;
  }

  private readInodeBtree(agno: number): InodeChunk[] {
    const agStart = agno * this.sb.agBlocks * this.bs;
    const ss = this.sb.sectorSize;
    const header = parseAgHeaders(this.sb, agno, this.volume.read(agStart + ss, ss), this.volume.read(agStart + 2 * ss, ss), (sector, at, problem) => {
      throw this.error(agStart + sector * ss + at, problem);
    });
    const chunks: InodeChunk[] = [];
    const visited = new Set<number>();
    const agIno = (agbno: number) => agbno * 2 ** this.sb.inodesPerBlockLog;
    const walk = (agbno: number, level: number, at: number) => {
      if (agbno === 0 || agbno >= header.length) throw this.error(at, `AG ${agno}: inode btree points at block ${agbno}, outside the AG`);
      if (visited.has(agbno)) throw this.error(at, `AG ${agno}: inode btree block ${agbno} is reached twice (a loop)`);
      visited.add(agbno);
      const offset = agStart + agbno * this.bs;
      const block = this.volume.read(offset, this.bs);
      const { level: got, numrecs, headerLength } = parseShortBtreeBlock(this.sb, block, agbno, agno, (a, problem) => {
        throw this.error(offset + a, problem);
      });
      if (got !== level) throw this.error(offset + 4, `AG ${agno}: inode btree block ${agbno} has level ${got}, expected ${level}`);
      const v = view(block);
      if (level === 0) {
        for (let i = 0; i < numrecs; i++) {
          const c = inodeChunkAt(this.sb, block, headerLength, i, 0);
          const last = chunks[chunks.length - 1];
          if (last && c.startIno < last.startIno + INODES_PER_CHUNK) throw this.error(offset + headerLength + i * 16, `AG ${agno}: inode chunks out of order at inode ${c.startIno}`);
          if (c.startIno + INODES_PER_CHUNK > agIno(header.length)) throw this.error(offset + headerLength + i * 16, `AG ${agno}: inode chunk at ${c.startIno} lies outside the AG`);
          chunks.push(c);
        }
        return;
      }
      const maxrecs = Math.floor((this.bs - headerLength) / 8);
      if (numrecs === 0 || numrecs > maxrecs) throw this.error(offset + 6, `AG ${agno}: inode btree node ${agbno} has ${numrecs} records, room for ${maxrecs}`);
      for (let i = 0; i < numrecs; i++) {
        const p = headerLength + maxrecs * 4 + i * 4;
        walk(v.getUint32(p), level - 1, offset + p);
      }
    };
    walk(header.inobtRoot, header.inobtLevels - 1, agStart + 2 * ss + 20);
    return chunks;
  }

  // ---- where a fork's data is ----

  private mappings(ino: Inode): Mapping[] {
    if (this.mapCache?.ino === ino.number) return this.mapCache.mappings;
    const mappings = this.forkMappings(ino, "data");
    this.mapCache = { ino: ino.number, mappings };
    return mappings;
  }

  /** A fork's mappings, ascending, each checked to lie inside the file system and not to overlap the one before. */
  private forkMappings(ino: Inode, which: "data" | "attr"): Mapping[] {
    const d = ino.dinode;
    const fork = which === "data" ? d.dataFork : d.attrFork;
    const format = which === "data" ? d.format : d.attrFormat;
    const count = which === "data" ? d.dataExtents : d.attrExtents;
    const forkAt = ino.offset + (which === "data" ? d.dataForkAt : d.attrForkAt);
    const out: Mapping[] = [];
    const add = (m: Mapping, at: number) => {
      if (m.count === 0) throw this.error(at, `inode ${ino.number}: ${which} fork extent of 0 blocks`);
      this.blockOffset(m.block, m.count, at);
      const last = out[out.length - 1];
      if (last && m.offset < last.offset + last.count) throw this.error(at, `inode ${ino.number}: ${which} fork extents overlap or are out of order at file block ${withCommas(m.offset)}`);
      out.push(m);
    };
    if (format === FORK_FORMAT.extents) {
      if (count * 16 > fork.length) throw this.error(forkAt, `inode ${ino.number}: ${withCommas(count)} ${which} fork extents do not fit its ${fork.length}-byte fork`);
      const v = view(fork);
      for (let i = 0; i < count; i++) add(extentAt(v, i * 16), forkAt + i * 16);
      return out;
    }
    if (format !== FORK_FORMAT.btree) throw this.error(ino.offset + (which === "data" ? 5 : 83), `inode ${ino.number}: ${which} fork format ${format} holds no extents`);
    const root = bmdrRoot(fork);
    if (typeof root === "string") throw this.error(forkAt, `inode ${ino.number}: ${which} fork ${root}`);
    const visited = new Set<number>();
    const walk = (fsb: number, level: number, at: number) => {
      const offset = this.blockOffset(fsb, 1, at);
      if (visited.has(fsb)) throw this.error(at, `inode ${ino.number}: bmap btree block ${withCommas(fsb)} is reached twice (a loop)`);
      if (visited.size >= this.sb.dataBlocks) throw this.error(at, `inode ${ino.number}: the bmap btree has more blocks than the file system`);
      visited.add(fsb);
      const got = bmbtBlock(this.sb, this.volume.read(offset, this.bs), fsb, offset / 512, ino.number, level);
      if ("problem" in got) throw this.error(offset + got.at, got.problem);
      if (got.mappings) {
        if (out.length + got.mappings.length > count) throw this.error(offset, `inode ${ino.number}: the bmap btree holds more than the ${withCommas(count)} extents the inode counts`);
        got.mappings.forEach((m, i) => add(m, offset + i * 16));
      } else for (const child of got.children!) walk(child, level - 1, offset);
    };
    for (const child of root.children) walk(child, root.level - 1, forkAt);
    return out;
  }

  /** `length` bytes at `offset` of a fork through its mappings (a directory block); a hole is damage. */
  private readMapped(ino: Inode, mappings: Mapping[], offset: number, length: number): { data: Uint8Array; at: number } {
    const out = new Uint8Array(length);
    let first = -1;
    for (let done = 0; done < length; ) {
      const logical = Math.floor((offset + done) / this.bs);
      const m = mappings[firstEndingAfter(mappings, logical)];
      if (!m || m.offset > logical || m.unwritten) throw this.error(ino.offset, `inode ${ino.number}: block ${withCommas(logical)} of its directory or attribute data is not mapped`);
      const n = Math.min(length - done, (m.offset + m.count - logical) * this.bs);
      const at = this.blockOffset(m.block, m.count, ino.offset) + (logical - m.offset) * this.bs;
      if (first < 0) first = at;
      out.set(this.volume.read(at, n), done);
      done += n;
    }
    return { data: out, at: first };
  }

  /** The attribute da tree from fork block 0: every leaf's attributes, loops and depth checked. */
  private attrTree(ino: Inode, mappings: Mapping[]): RawAttr[] {
    const out: RawAttr[] = [];
    const visited = new Set<number>();
    const walk = (fblock: number, depth: number) => {
      if (visited.has(fblock)) throw this.error(ino.offset, `inode ${ino.number}: attribute block ${fblock} is reached twice (a loop)`);
      if (depth > 5) throw this.error(ino.offset, `inode ${ino.number}: the attribute tree is deeper than XFS makes it`);
      visited.add(fblock);
      const { data, at } = this.readMapped(ino, mappings, fblock * this.bs, this.bs);
      const got = attrBlock(this.sb, data, ino.number, at / 512);
      if ("problem" in got) throw this.error(at + got.at, got.problem);
      if ("attrs" in got) out.push(...got.attrs);
      else for (const child of got.children) walk(child, depth + 1);
    };
    walk(0, 0);
    return out;
  }

  /** A remote attribute value or symlink target: `length` bytes from fork block `fblock`, each block's v5 header checked. */
  private remoteBytes(ino: Inode, mappings: Mapping[], fblock: number, length: number, kind: "attribute" | "symlink"): Uint8Array {
    const perBlock = this.sb.version === 5 ? this.bs - REMOTE_HEADER : this.bs;
    const out = new Uint8Array(length);
    for (let done = 0, b = fblock; done < length; b++) {
      const want = Math.min(perBlock, length - done);
      const { data, at } = this.readMapped(ino, mappings, b * this.bs, this.bs);
      const piece: Uint8Array | Problem = remotePiece(this.sb, data, kind, ino.number, at / 512, done, want);
      if ("problem" in piece) throw this.error(at + piece.at, piece.problem);
      out.set(piece, done);
      done += want;
    }
    return out;
  }
}

function isDotOrDotDot(name: Uint8Array): boolean {
  return name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e));
}

/** Index of the first mapping that ends after file block `block` (mappings.length if none): a binary search by halving steps. */
function firstEndingAfter(mappings: Mapping[], block: number): number {
  let before = -1; // mappings[0..before] all end at or before `block`
  for (let step = 2 ** Math.floor(Math.log2(mappings.length || 1)); step >= 1; step /= 2) {
    const probe = before + step;
    if (probe < mappings.length && mappings[probe]!.offset + mappings[probe]!.count <= block) before = probe;
  }
  return before + 1;
}
