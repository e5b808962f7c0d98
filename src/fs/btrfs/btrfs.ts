// btrfs read-only on one device: subvolumes as the kernel shows them mounted with subvolid=5, or one of them.
import { crc32c } from "../../../native/crc32c.ts";
import { UsageError, withCommas } from "../../errors.ts";
import type { Image } from "../../formats/image.ts";
import { imageVolume, type Volume } from "../../volume/volume.ts";
import { type DirEntry, type FileSystem, FsError, type FsNode, type Xattr, kindOfMode } from "../filesystem.ts";
import { equalBytes, splitPath } from "../path.ts";
import { FileData } from "./data.ts";
import {
  CHUNK_ITEM, CHUNK_TREE_OBJECTID, CSUM_TREE_OBJECTID, DIR_INDEX, DIR_ITEM, type DirItem, FIRST_CHUNK_TREE_OBJECTID,
  FIRST_FREE_OBJECTID, FS_TREE_OBJECTID, INODE_EXTREF, INODE_ITEM, INODE_NODATASUM, INODE_REF, type InodeItem, LAST_FREE_OBJECTID,
  type FileExtent, ROOT_ITEM, ROOT_REF, ROOT_TREE_OBJECTID, type RootItem, type RootRef, XATTR_ITEM, inodeOf, isReadOnly, parseDirItems, parseInodeRefs,
  parseRootItem, parseRootRef,
} from "./items.ts";
import { ChunkMap, parseChunk, readSuperblock, type Superblock } from "./superblock.ts";
import { type Item, MAX_OFFSET, MissingTreeBlock, TreeReader, type TreeRoot } from "./tree.ts";

export interface BtrfsOptions {
  /** root the view in this subvolume: its id, or its path in the top-level view */
  subvol?: string;
  /** check data against the csum tree (default true) */
  verifyData?: boolean;
}

/** One subvolume as `ls --subvolumes` lists it. */
export interface SubvolumeInfo {
  id: number;
  /** the subvolume holding it (0 for the top level) */
  parent: number;
  /** its path from the top-level subvolume, "" for the top level itself */
  path: Uint8Array;
  uuid: string;
  parentUuid: string;
  readOnly: boolean;
  generation: number;
}

/** Is there a btrfs superblock at 64 KiB? */
export function detectBtrfs(head: Uint8Array): boolean {
  return head.length >= 0x10048 && String.fromCharCode(...head.subarray(0x10040, 0x10048)) === "_BHRfS_M";
}

export function openBtrfs(volume: Volume, options: BtrfsOptions = {}): BtrfsFileSystem {
  return new BtrfsFileSystem(volume, options);
}

interface Subvolume {
  id: number;
  /** the high part of its nodes' ids */
  slot: number;
  root: TreeRoot;
  item: RootItem;
}

/** Node ids: slot × 2^40 + inode number; slot 0 holds the stand-ins for subvolumes a snapshot cannot reach. */
const SLOT = 2 ** 40;
const MAX_SUBVOLUMES = 8000;
const INODE_CACHE = 65536;
const MAX_PATH_DEPTH = 4096;
const decoder = new TextDecoder();

export class BtrfsFileSystem implements FileSystem {
  readonly type = "btrfs";
  readonly warnings: string[] = [];
  readonly sb: Superblock;
  /** tree blocks the file system points to that the image does not hold, as met so far */
  readonly missing: MissingTreeBlock[] = [];
  private readonly trees: TreeReader;
  private readonly rootTree: TreeRoot;
  private readonly subvols = new Map<number, Subvolume>();
  private readonly bySlot: Subvolume[] = [];
  /** ROOT_REF items: `parent:child` → where the child sits in its parent */
  private readonly rootRefs = new Map<string, RootRef>();
  private readonly data: FileData;
  private readonly inodes = new Map<number, { node: FsNode; inode: InodeItem }>();
  private readonly standIns = new Map<string, FsNode>();
  private readonly standInIds = new Map<number, FsNode>();
  private readonly top: Subvolume;
  private readonly view: Subvolume;

  constructor(
    readonly volume: Volume,
    options: BtrfsOptions = {},
  ) {
    this.sb = readSuperblock(volume, this.warnings);
    const chunks = new ChunkMap(volume, this.sb.devid);
    chunks.addSysChunkArray(this.sb);
    this.trees = new TreeReader(volume, this.sb, chunks);
    this.trees.onMissing = (e) => this.noteMissing(e);
    const chunkRoot: TreeRoot = { logical: this.sb.chunkRoot, level: this.sb.chunkRootLevel, name: "chunk tree", id: CHUNK_TREE_OBJECTID };
    const all = { objectid: MAX_OFFSET, type: 255, offset: MAX_OFFSET };
    for (const item of this.trees.items(chunkRoot, { objectid: 0, type: 0, offset: 0 }, all, (e) => this.damaged(e))) {
      if (item.key.type === CHUNK_ITEM && item.key.objectid === FIRST_CHUNK_TREE_OBJECTID) chunks.add(parseChunk(volume, item.key.offset, item.data, item.volumeOffset).chunk);
    }
    this.rootTree = { logical: this.sb.root, level: this.sb.rootLevel, name: "root tree", id: ROOT_TREE_OBJECTID };
    let csumRoot: TreeRoot | undefined;
    for (const item of this.trees.items(this.rootTree, { objectid: 0, type: 0, offset: 0 }, { objectid: MAX_OFFSET, type: 255, offset: MAX_OFFSET }, (e) => this.damaged(e))) {
      const id = item.key.objectid;
      if (item.key.type === ROOT_ITEM && id === CSUM_TREE_OBJECTID) {
        const r = parseRootItem(item, volume.name);
        csumRoot = { logical: r.bytenr, level: r.level, name: "csum tree", id: CSUM_TREE_OBJECTID };
      } else if (item.key.type === ROOT_ITEM && (id === FS_TREE_OBJECTID || (id >= FIRST_FREE_OBJECTID && id < LAST_FREE_OBJECTID))) {
        const r = parseRootItem(item, volume.name);
        if (r.refs === 0 && id !== FS_TREE_OBJECTID) continue;
        const existing = this.subvols.get(id);
        if (existing) {
          existing.item = r;
          existing.root = { logical: r.bytenr, level: r.level, name: `subvolume ${id}`, id };
          continue;
        }
        if (this.bySlot.length >= MAX_SUBVOLUMES) throw new FsError(volume.name, item.volumeOffset, `more than ${MAX_SUBVOLUMES} subvolumes`);
        const sv: Subvolume = { id, slot: this.bySlot.length + 1, root: { logical: r.bytenr, level: r.level, name: `subvolume ${id}`, id }, item: r };
        this.subvols.set(id, sv);
        this.bySlot.push(sv);
      } else if (item.key.type === ROOT_REF) {
        this.rootRefs.set(`${id}:${item.key.offset}`, parseRootRef(item, volume.name));
      }
    }
    const top = this.subvols.get(FS_TREE_OBJECTID);
    if (!top) throw new FsError(volume.name, undefined, "the root tree holds no top-level subvolume (tree 5)");
    this.top = top;
    this.view = top;
    this.data = new FileData(this.trees, csumRoot, options.verifyData !== false);
    // a tree whose root block the image lacks is named now (and rebuilt when it can be); blocks
    // further down are named as they are met, and all of them by missingTreeBlocks (verify)
    for (const root of [...(csumRoot ? [csumRoot] : []), ...this.bySlot.map((sv) => sv.root)]) {
      try {
        if (!this.trees.held(root.logical)) this.trees.blockOf(root, root.logical, root.level);
      } catch (e) {
        if (!(e instanceof FsError)) throw e;
      }
    }
    if (options.subvol !== undefined) this.view = this.subvolumeNamed(options.subvol);
  }

  private noteMissing(e: MissingTreeBlock): void {
    if (this.missing.some((m) => m.logical === e.logical)) return;
    this.missing.push(e);
    const rebuilt = this.trees.rebuilt.get(e.logical);
    this.warnings.push(rebuilt ? `${e.problem}; rebuilt from the ${rebuilt} blocks below it that the image holds` : `${e.problem}; what lies below it is not shown`);
  }

  private damaged(e: FsError): void {
    if (e instanceof MissingTreeBlock) this.noteMissing(e);
    else this.warnings.push(e.problem);
  }

  private subvolumeNamed(name: string): Subvolume {
    if (/^\d+$/.test(name)) {
      const sv = this.subvols.get(Number(name));
      if (!sv) throw new UsageError(`--subvol ${name}: no subvolume with that id (imgtool ls --subvolumes IMG lists them)`);
      return sv;
    }
    const node = this.lookup(new TextEncoder().encode(name));
    const sv = node && node.id >= SLOT ? this.bySlot[Math.floor(node.id / SLOT) - 1] : undefined;
    if (!node || !sv || node.id % SLOT !== sv.item.rootDirid) throw new UsageError(`--subvol ${name}: not a subvolume of the image (imgtool ls --subvolumes IMG lists them)`);
    return sv;
  }

  root(): FsNode {
    return this.node(this.view, this.view.item.rootDirid);
  }

  private subvolOf(node: FsNode): Subvolume | undefined {
    return node.id >= SLOT ? this.bySlot[Math.floor(node.id / SLOT) - 1] : undefined;
  }

  private inodeOf(node: FsNode): { sv: Subvolume; ino: number; inode: InodeItem } {
    const sv = this.subvolOf(node);
    if (!sv) throw new FsError(this.volume.name, undefined, `node ${node.id} is not one of this file system's`);
    const ino = node.id % SLOT;
    return { sv, ino, inode: this.inode(sv, ino).inode };
  }

  private node(sv: Subvolume, ino: number): FsNode {
    return this.inode(sv, ino).node;
  }

  private inode(sv: Subvolume, ino: number): { node: FsNode; inode: InodeItem } {
    if (!Number.isSafeInteger(ino) || ino >= SLOT) throw new FsError(this.volume.name, undefined, `subvolume ${sv.id}: inode number ${ino} is beyond what this reader numbers (2^40)`);
    const id = sv.slot * SLOT + ino;
    const cached = this.inodes.get(id);
    if (cached) return cached;
    let item: Item | undefined;
    for (const i of this.trees.items(sv.root, { objectid: ino, type: INODE_ITEM, offset: 0 }, { objectid: ino, type: INODE_ITEM, offset: MAX_OFFSET })) {
      item = i;
      break;
    }
    if (!item) throw new FsError(this.volume.name, undefined, `subvolume ${sv.id} has no inode ${ino}`);
    const inode = inodeOf(item, this.volume.name);
    if (!Number.isSafeInteger(inode.size)) throw new FsError(this.volume.name, item.volumeOffset, `inode ${ino} of subvolume ${sv.id} claims ${inode.size} bytes, more than this reader counts exactly (2^53)`);
    const kind = kindOfMode(inode.mode);
    if (!kind) throw new FsError(this.volume.name, item.volumeOffset, `inode ${ino} of subvolume ${sv.id} has mode 0${inode.mode.toString(8)}, of no file type`);
    const node: FsNode = {
      id,
      kind,
      mode: inode.mode & 0o7777,
      uid: inode.uid,
      gid: inode.gid,
      size: inode.size,
      links: inode.nlink,
      mtime: inode.mtime,
      atime: inode.atime,
      ctime: inode.ctime,
    };
    if (kind === "char-device" || kind === "block-device") node.rdev = { major: Math.floor(inode.rdev / 2 ** 20) & 0xfff, minor: inode.rdev & 0xfffff };
    if (this.inodes.size >= INODE_CACHE) this.inodes.clear();
    const entry = { node, inode };
    this.inodes.set(id, entry);
    return entry;
  }

  /** What a directory entry names: an inode of the same subvolume, another subvolume's root, or the kernel's empty stand-in. */
  private resolve(sv: Subvolume, dirIno: number, entry: DirItem, dir: FsNode): FsNode {
    if (entry.location.type === INODE_ITEM) return this.node(sv, entry.location.objectid);
    if (entry.location.type !== ROOT_ITEM) {
      throw new FsError(this.volume.name, undefined, `directory ${dirIno} of subvolume ${sv.id}: entry "${decoder.decode(entry.name)}" points at a key of type ${entry.location.type}`);
    }
    const childId = entry.location.objectid;
    const ref = this.rootRefs.get(`${sv.id}:${childId}`);
    const child = this.subvols.get(childId);
    if (child && ref && ref.dirid === dirIno && equalBytes(ref.name, entry.name)) return this.node(child, child.item.rootDirid);
    // a snapshot keeps the entries of subvolumes below its source, which it does not hold: the kernel shows an empty directory
    const key = `${sv.id}:${dirIno}:${childId}`;
    let standIn = this.standIns.get(key);
    if (!standIn) {
      standIn = { ...dir, id: this.standIns.size + 1, kind: "directory", mode: 0o755, links: 1, size: 0 };
      if (standIn.id >= SLOT) throw new FsError(this.volume.name, undefined, "too many subvolume stand-ins");
      this.standIns.set(key, standIn);
      this.standInIds.set(standIn.id, standIn);
    }
    return standIn;
  }

  lookup(path: Uint8Array): FsNode | undefined {
    let node = this.root();
    for (const part of splitPath(path)) {
      if (node.kind !== "directory") return undefined;
      const found = this.lookupIn(node, part);
      if (!found) return undefined;
      node = found;
    }
    return node;
  }

  /** DIR_ITEM lookup: the key's offset is the name's crc32c hash (seed ~1), colliding names share the item. */
  private lookupIn(dir: FsNode, name: Uint8Array): FsNode | undefined {
    if (this.standInIds.has(dir.id)) return undefined;
    const { sv, ino } = this.inodeOf(dir);
    const hash = crc32c(name, 0xfffffffe);
    for (const item of this.trees.items(sv.root, { objectid: ino, type: DIR_ITEM, offset: hash }, { objectid: ino, type: DIR_ITEM, offset: hash })) {
      for (const entry of parseDirItems(item, this.volume.name)) if (equalBytes(entry.name, name)) return this.resolve(sv, ino, entry, dir);
    }
    return undefined;
  }

  *list(dir: FsNode, onDamage?: (e: FsError) => void): Iterable<DirEntry> {
    if (this.standInIds.has(dir.id)) return;
    const { sv, ino } = this.inodeOf(dir);
    const report = (e: FsError) => {
      if (!onDamage) throw e;
      onDamage(e);
    };
    const items = this.trees.items(sv.root, { objectid: ino, type: DIR_INDEX, offset: 0 }, { objectid: ino, type: DIR_INDEX, offset: MAX_OFFSET }, report);
    for (const item of items) {
      let entries: DirItem[];
      try {
        entries = parseDirItems(item, this.volume.name);
      } catch (e) {
        if (!(e instanceof FsError)) throw e;
        report(e);
        continue;
      }
      for (const entry of entries) {
        try {
          yield { name: entry.name, node: this.resolve(sv, ino, entry, dir) };
        } catch (e) {
          if (!(e instanceof FsError)) throw e;
          yield { name: entry.name, node: { ...dir, id: -1, kind: "file", size: 0, links: 1 }, damage: e };
        }
      }
    }
  }

  readFile(file: FsNode, offset: number, into: Uint8Array): number {
    const { sv, ino, inode } = this.inodeOf(file);
    return this.data.read(sv.root, ino, inode.size, offset, into, (inode.flags & INODE_NODATASUM) !== 0);
  }

  fileExtents(file: FsNode): Iterable<{ offset: number; length: number }> {
    const { sv, ino, inode } = this.inodeOf(file);
    return this.data.dataRuns(sv.root, ino, inode.size);
  }

  /** The file's EXTENT_DATA items as they are on disk (what `fileExtents` and `readFile` are made of). */
  extentItems(file: FsNode): readonly FileExtent[] {
    const { sv, ino } = this.inodeOf(file);
    return this.data.extents(sv.root, ino);
  }

  readlink(link: FsNode): Uint8Array {
    const { sv, ino, inode } = this.inodeOf(link);
    if (inode.size > this.sb.sectorSize) throw new FsError(this.volume.name, undefined, `symlink inode ${ino} claims a ${withCommas(inode.size)}-byte target`);
    const target = new Uint8Array(inode.size);
    const n = this.data.read(sv.root, ino, inode.size, 0, target, true);
    return target.subarray(0, n);
  }

  *xattrs(node: FsNode): Iterable<Xattr> {
    if (this.standInIds.has(node.id)) return;
    const { sv, ino } = this.inodeOf(node);
    for (const item of this.trees.items(sv.root, { objectid: ino, type: XATTR_ITEM, offset: 0 }, { objectid: ino, type: XATTR_ITEM, offset: MAX_OFFSET })) {
      for (const entry of parseDirItems(item, this.volume.name)) yield { name: entry.name, value: entry.data };
    }
  }

  /** Every subvolume but the top level, by id, with its path from the top level. */
  subvolumes(): SubvolumeInfo[] {
    const out: SubvolumeInfo[] = [];
    for (const sv of [...this.subvols.values()].sort((a, b) => a.id - b.id)) {
      if (sv === this.top) continue;
      const parentId = this.parentOf(sv.id);
      out.push({
        id: sv.id,
        parent: parentId ?? 0,
        path: this.subvolumePath(sv, new Set()),
        uuid: formatUuid(sv.item.uuid),
        parentUuid: formatUuid(sv.item.parentUuid),
        readOnly: isReadOnly(sv.item),
        generation: sv.item.generation,
      });
    }
    return out;
  }

  private parentOf(id: number): number | undefined {
    for (const key of this.rootRefs.keys()) {
      const [parent, child] = key.split(":").map(Number);
      if (child === id) return parent;
    }
    return undefined;
  }

  /** The subvolume's path from the top level: its parent's, the directory's inside the parent (INODE_REF/EXTREF up to the parent's root), its name. */
  private subvolumePath(sv: Subvolume, seen: Set<number>): Uint8Array {
    if (sv === this.top) return new Uint8Array(0);
    const parentId = this.parentOf(sv.id);
    const parent = parentId === undefined ? undefined : this.subvols.get(parentId);
    const ref = parentId === undefined ? undefined : this.rootRefs.get(`${parentId}:${sv.id}`);
    if (!parent || !ref || seen.has(sv.id)) return new TextEncoder().encode(`<subvolume ${sv.id}, detached>`);
    seen.add(sv.id);
    const parts: Uint8Array[] = [ref.name];
    let dir = ref.dirid;
    for (let depth = 0; dir !== parent.item.rootDirid; depth++) {
      if (depth > MAX_PATH_DEPTH) throw new FsError(this.volume.name, undefined, `subvolume ${parent.id}: the names of directory ${ref.dirid} lead in a loop`);
      const name = this.firstName(parent, dir);
      if (!name) return new TextEncoder().encode(`<subvolume ${sv.id}, in an unnamed directory>`);
      parts.unshift(name.name);
      dir = name.parent;
    }
    const head = this.subvolumePath(parent, seen);
    const joined = [...(head.length ? [head] : []), ...parts];
    const total = joined.reduce((n, p) => n + p.length + 1, -1);
    const out = new Uint8Array(total);
    let at = 0;
    for (const [i, p] of joined.entries()) {
      if (i > 0) out[at++] = 0x2f;
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  private firstName(sv: Subvolume, ino: number): { parent: number; name: Uint8Array } | undefined {
    for (const type of [INODE_REF, INODE_EXTREF]) {
      for (const item of this.trees.items(sv.root, { objectid: ino, type, offset: 0 }, { objectid: ino, type, offset: MAX_OFFSET })) {
        const ref = parseInodeRefs(item, this.volume.name)[0];
        if (ref) return ref;
      }
    }
    return undefined;
  }

  /**
   * Walk every tree the root tree names (and the chunk tree) and return each tree block the
   * image does not hold: what `imgtool verify` names for partclone images that lack them.
   */
  missingTreeBlocks(): MissingTreeBlock[] {
    const roots: TreeRoot[] = [{ logical: this.sb.chunkRoot, level: this.sb.chunkRootLevel, name: "chunk tree", id: CHUNK_TREE_OBJECTID }, this.rootTree];
    for (const item of this.trees.items(this.rootTree, { objectid: 0, type: 0, offset: 0 }, { objectid: MAX_OFFSET, type: 255, offset: MAX_OFFSET }, (e) => this.damaged(e))) {
      if (item.key.type !== ROOT_ITEM) continue;
      const r = parseRootItem(item, this.volume.name);
      roots.push({ logical: r.bytenr, level: r.level, name: `tree ${item.key.objectid}`, id: item.key.objectid });
    }
    for (const root of roots) {
      try {
        this.trees.missingBlocks(root, (e) => this.noteMissing(e));
      } catch (e) {
        if (!(e instanceof FsError)) throw e;
        this.warnings.push(e.problem);
      }
    }
    return this.missing;
  }

  close(): void {
    this.volume.close();
  }
}

function formatUuid(b: Uint8Array): string {
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** `ls --subvolumes`: one line per subvolume (id, parent, generation, ro/rw, uuid, path), under a header. */
export function subvolumeTable(fsys: FileSystem, escape: (name: Uint8Array) => string): string {
  if (!(fsys instanceof BtrfsFileSystem)) throw new UsageError(`--subvolumes: the volume holds ${fsys.type}, which has no subvolumes`);
  const rows = fsys.subvolumes().map((s) => [s.id, s.parent, s.generation, s.readOnly ? "ro" : "rw", s.uuid, escape(s.path)].join("\t"));
  return `${["id", "parent", "generation", "flags", "uuid", "path"].join("\t")}\n${rows.map((r) => `${r}\n`).join("")}`;
}

/**
 * `imgtool verify`'s question for a btrfs image: which tree blocks the file system points to
 * that the image does not hold (one message each, naming logical address and volume offset).
 * An image without random access (compressed) is read through `randomAccess` (its seek index).
 */
export function missingTreeBlocksOf(image: Image, randomAccess: () => Volume): string[] {
  if (!/btrfs/i.test(image.info.fsType)) return [];
  const volume = image.read ? imageVolume(image) : randomAccess();
  try {
    if (!detectBtrfs(volume.read(0, Math.min(volume.size, 0x10048)))) return [];
    return new BtrfsFileSystem(volume).missingTreeBlocks().map((m) => m.message);
  } finally {
    if (!image.read) volume.close();
  }
}
