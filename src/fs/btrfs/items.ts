// btrfs item keys and the layouts of the items a reader needs, per btrfs-progs kernel-shared/uapi/btrfs_tree.h (btrfs_inode_item, btrfs_dir_item, btrfs_inode_ref, btrfs_inode_extref, btrfs_root_item, btrfs_root_ref, btrfs_file_extent_item).
import { withCommas } from "../../errors.ts";
import { FsError, type Timestamp } from "../filesystem.ts";
import { type Item, type Key, le64, readKey } from "./tree.ts";

export const INODE_ITEM = 1;
export const INODE_REF = 12;
export const INODE_EXTREF = 13;
export const XATTR_ITEM = 24;
export const DIR_ITEM = 84;
export const DIR_INDEX = 96;
export const EXTENT_DATA = 108;
export const EXTENT_CSUM = 128;
export const ROOT_ITEM = 132;
export const ROOT_REF = 156;
export const CHUNK_ITEM = 228;

export const ROOT_TREE_OBJECTID = 1;
export const CHUNK_TREE_OBJECTID = 3;
export const FS_TREE_OBJECTID = 5;
export const CSUM_TREE_OBJECTID = 7;
export const FIRST_FREE_OBJECTID = 256;
export const FIRST_CHUNK_TREE_OBJECTID = 256;
/** BTRFS_LAST_FREE_OBJECTID (-256 as u64): subvolume ids lie below it */
export const LAST_FREE_OBJECTID = 2 ** 64 - 256;
/** BTRFS_EXTENT_CSUM_OBJECTID (-10 as u64) */
export const EXTENT_CSUM_OBJECTID = 2 ** 64 - 10;

export const INODE_NODATASUM = 1 << 0;
const ROOT_SUBVOL_RDONLY = 1 << 0;

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

function timestamp(v: DataView, at: number): Timestamp {
  return { sec: Number(v.getBigInt64(at, true)), nsec: v.getUint32(at + 8, true) };
}

export interface InodeItem {
  generation: number;
  size: number;
  nlink: number;
  uid: number;
  gid: number;
  mode: number;
  rdev: number;
  flags: number;
  atime: Timestamp;
  ctime: Timestamp;
  mtime: Timestamp;
}

export const INODE_ITEM_SIZE = 160;

/** btrfs_inode_item: also the first 160 bytes of a root item. */
export function parseInode(data: Uint8Array): InodeItem {
  const v = view(data);
  return {
    generation: le64(v, 0),
    size: le64(v, 16),
    nlink: v.getUint32(40, true),
    uid: v.getUint32(44, true),
    gid: v.getUint32(48, true),
    mode: v.getUint32(52, true),
    rdev: le64(v, 56),
    flags: le64(v, 64),
    atime: timestamp(v, 112),
    ctime: timestamp(v, 124),
    mtime: timestamp(v, 136),
  };
}

export function inodeOf(item: Item, volumeName: string): InodeItem {
  if (item.data.length < INODE_ITEM_SIZE) throw new FsError(volumeName, item.volumeOffset, `inode item of inode ${item.key.objectid} is ${item.data.length} bytes, shorter than ${INODE_ITEM_SIZE}`);
  return parseInode(item.data);
}

/** One entry of a DIR_ITEM, DIR_INDEX or XATTR_ITEM (several may share an item when names collide). */
export interface DirItem {
  location: Key;
  type: number;
  name: Uint8Array;
  /** an xattr's value */
  data: Uint8Array;
}

const DIR_ITEM_SIZE = 30;

export function parseDirItems(item: Item, volumeName: string): DirItem[] {
  const v = view(item.data);
  const out: DirItem[] = [];
  for (let pos = 0; pos < item.data.length; ) {
    if (pos + DIR_ITEM_SIZE > item.data.length) throw new FsError(volumeName, item.volumeOffset + pos, `directory item of inode ${item.key.objectid} ends inside an entry header`);
    const dataLen = v.getUint16(pos + 25, true);
    const nameLen = v.getUint16(pos + 27, true);
    const end = pos + DIR_ITEM_SIZE + nameLen + dataLen;
    if (end > item.data.length) {
      throw new FsError(volumeName, item.volumeOffset + pos, `directory item of inode ${item.key.objectid} holds a ${nameLen}-byte name and ${dataLen} bytes of data, past the item's ${item.data.length} bytes`);
    }
    out.push({
      location: readKey(v, pos),
      type: item.data[pos + 29]!,
      name: item.data.slice(pos + DIR_ITEM_SIZE, pos + DIR_ITEM_SIZE + nameLen),
      data: item.data.slice(pos + DIR_ITEM_SIZE + nameLen, end),
    });
    pos = end;
  }
  return out;
}

/** A name of an inode in a directory: from INODE_REF (key offset = the directory) or INODE_EXTREF. */
export interface InodeRef {
  parent: number;
  name: Uint8Array;
}

export function parseInodeRefs(item: Item, volumeName: string): InodeRef[] {
  const v = view(item.data);
  const out: InodeRef[] = [];
  const extended = item.key.type === INODE_EXTREF;
  const header = extended ? 18 : 10;
  for (let pos = 0; pos < item.data.length; ) {
    if (pos + header > item.data.length) throw new FsError(volumeName, item.volumeOffset + pos, `inode reference of inode ${item.key.objectid} ends inside its header`);
    const nameLen = v.getUint16(pos + header - 2, true);
    if (pos + header + nameLen > item.data.length) throw new FsError(volumeName, item.volumeOffset + pos, `inode reference of inode ${item.key.objectid} holds a ${nameLen}-byte name past the item's end`);
    out.push({ parent: extended ? le64(v, pos) : item.key.offset, name: item.data.slice(pos + header, pos + header + nameLen) });
    pos += header + nameLen;
  }
  return out;
}

export interface RootItem {
  inode: InodeItem;
  generation: number;
  rootDirid: number;
  bytenr: number;
  level: number;
  flags: number;
  refs: number;
  uuid: Uint8Array;
  parentUuid: Uint8Array;
}

/** The root item's fields up to its level; older, shorter root items (before generation_v2) have no uuids. */
const ROOT_ITEM_MIN = 239;

export function parseRootItem(item: Item, volumeName: string): RootItem {
  if (item.data.length < ROOT_ITEM_MIN) throw new FsError(volumeName, item.volumeOffset, `root item of tree ${item.key.objectid} is ${item.data.length} bytes, shorter than ${ROOT_ITEM_MIN}`);
  const v = view(item.data);
  const full = item.data.length >= 279;
  return {
    inode: parseInode(item.data),
    generation: le64(v, 160),
    rootDirid: le64(v, 168),
    bytenr: le64(v, 176),
    flags: le64(v, 208),
    refs: v.getUint32(216, true),
    level: item.data[238]!,
    uuid: full ? item.data.slice(247, 263) : new Uint8Array(16),
    parentUuid: full ? item.data.slice(263, 279) : new Uint8Array(16),
  };
}

export function isReadOnly(root: RootItem): boolean {
  return (root.flags & ROOT_SUBVOL_RDONLY) !== 0;
}

/** btrfs_root_ref: a subvolume's place in its parent (ROOT_REF key: parent, child). */
export interface RootRef {
  dirid: number;
  name: Uint8Array;
}

export function parseRootRef(item: Item, volumeName: string): RootRef {
  const v = view(item.data);
  if (item.data.length < 18) throw new FsError(volumeName, item.volumeOffset, `root reference of tree ${item.key.objectid} is ${item.data.length} bytes, shorter than 18`);
  const nameLen = v.getUint16(16, true);
  if (18 + nameLen > item.data.length) throw new FsError(volumeName, item.volumeOffset, `root reference of tree ${item.key.objectid} holds a ${nameLen}-byte name past the item's end`);
  return { dirid: le64(v, 0), name: item.data.slice(18, 18 + nameLen) };
}

/** btrfs_file_extent_item.type */
export const ExtentType = { INLINE: 0, REG: 1, PREALLOC: 2 } as const;
/** btrfs_file_extent_item.compression (BTRFS_COMPRESS_*) */
export const Compression = { NONE: 0, ZLIB: 1, LZO: 2, ZSTD: 3 } as const;
/** where an inline extent's data starts; the size of a regular or prealloc extent item */
const [FILE_EXTENT_INLINE_DATA, FILE_EXTENT_SIZE] = [21, 53];

/** One EXTENT_DATA item: a run of a file from `fileOffset`. */
export interface FileExtent {
  fileOffset: number;
  type: number;
  compression: number;
  /** decoded bytes of the whole extent */
  ramBytes: number;
  /** inline: the item's data (maybe compressed) */
  inline?: Uint8Array;
  /** regular/prealloc: the disk extent (0 = a hole), and which of its decoded bytes this run uses */
  diskBytenr: number;
  diskNumBytes: number;
  extentOffset: number;
  /** bytes of the file this run covers (inline: ramBytes) */
  numBytes: number;
  volumeOffset: number;
}

export function parseFileExtent(item: Item, volumeName: string): FileExtent {
  const v = view(item.data);
  const what = () => `file extent of inode ${item.key.objectid} at file offset ${withCommas(item.key.offset)}`;
  if (item.data.length < FILE_EXTENT_INLINE_DATA) throw new FsError(volumeName, item.volumeOffset, `${what()} is ${item.data.length} bytes, shorter than 21`);
  const type = item.data[20]!;
  const compression = item.data[16]!;
  const base = { fileOffset: item.key.offset, type, compression, ramBytes: le64(v, 8), volumeOffset: item.volumeOffset };
  if (item.data[17] !== 0 || v.getUint16(18, true) !== 0) throw new FsError(volumeName, item.volumeOffset, `${what()} is encrypted or encoded (${item.data[17]}, ${v.getUint16(18, true)}); this reader does not decode that`);
  if (compression > Compression.ZSTD) throw new FsError(volumeName, item.volumeOffset, `${what()} has compression ${compression}, not one btrfs defines`);
  if (type === ExtentType.INLINE) {
    const inline = item.data.subarray(FILE_EXTENT_INLINE_DATA);
    return { ...base, inline, diskBytenr: 0, diskNumBytes: 0, extentOffset: 0, numBytes: compression === Compression.NONE ? inline.length : base.ramBytes };
  }
  if (type !== ExtentType.REG && type !== ExtentType.PREALLOC) throw new FsError(volumeName, item.volumeOffset, `${what()} has type ${type}, not inline, regular or prealloc`);
  if (item.data.length < FILE_EXTENT_SIZE) throw new FsError(volumeName, item.volumeOffset, `${what()} is ${item.data.length} bytes, shorter than 53`);
  return { ...base, diskBytenr: le64(v, 21), diskNumBytes: le64(v, 29), extentOffset: le64(v, 37), numBytes: le64(v, 45) };
}
