// XFS directories version 2/3: short-form (xfs_dir2_sf_hdr/entry), block and data blocks (xfs_dir2_data_hdr, xfs_dir3_data_hdr, xfs_dir2_block_tail), per xfsprogs libxfs/xfs_da_format.h.
import { type Superblock, hex, u64, view, xfsCrc } from "./superblock.ts";

const DIR2_BLOCK_MAGIC = 0x58443242; // "XD2B"
const DIR2_DATA_MAGIC = 0x58443244; // "XD2D"
const DIR3_BLOCK_MAGIC = 0x58444233; // "XDB3"
const DIR3_DATA_MAGIC = 0x58444433; // "XDD3"
const DIR3_CRC_OFFSET = 4;
const DIR2_DATA_HEADER = 16;
const DIR3_DATA_HEADER = 64;
const FREE_TAG = 0xffff;
/** data blocks live below 32 GiB of the directory's address space; leaf and free-index blocks above */
export const DIR2_LEAF_OFFSET = 32 * 2 ** 30;

export interface RawEntry {
  name: Uint8Array;
  ino: number;
  /** ftype byte (XFS_DIR3_FT_*), 0 without the ftype feature */
  ftype: number;
  /** byte offset of the entry inside the parsed buffer */
  at: number;
}

/** Short-form directory in the inode's data fork: count, i8count, parent, then entries (namelen, offset, name, [ftype], inumber). */
export function shortFormEntries(sb: Superblock, fork: Uint8Array, size: number): { entries: RawEntry[] } | { problem: string; at: number } {
  if (size < 6 || size > fork.length) return { problem: `short-form directory of ${size} bytes does not fit its ${fork.length}-byte fork`, at: 0 };
  const v = view(fork);
  const count = fork[0]!;
  const inoSize = fork[1]! > 0 ? 8 : 4;
  let pos = 2 + inoSize;
  const entries: RawEntry[] = [];
  for (let i = 0; i < count; i++) {
    if (pos + 3 > size) return { problem: `short-form directory entry ${i} runs past the ${size}-byte directory`, at: pos };
    const namelen = fork[pos]!;
    const nameAt = pos + 3;
    const ftypeAt = nameAt + namelen;
    const inoAt = ftypeAt + (sb.ftype ? 1 : 0);
    if (namelen === 0 || inoAt + inoSize > size) return { problem: `short-form directory entry ${i} (name length ${namelen}) runs past the ${size}-byte directory`, at: pos };
    const ino = inoSize === 8 ? u64(v, inoAt) : v.getUint32(inoAt);
    if (ino === undefined) return { problem: `short-form directory entry ${i} names an inode number past 2^53`, at: inoAt };
    entries.push({ name: fork.slice(nameAt, nameAt + namelen), ino, ftype: sb.ftype ? fork[ftypeAt]! : 0, at: pos });
    pos = inoAt + inoSize;
  }
  return { entries };
}

/**
 * The entries of one directory data block (or the single block of a block-form directory),
 * checked: magic, crc, owner and block number on v3; each entry's length inside the block.
 */
export function dataBlockEntries(sb: Superblock, block: Uint8Array, ino: number, daddr: number): { entries: RawEntry[] } | { problem: string; at: number } {
  const v = view(block);
  const magic = v.getUint32(0);
  const v3 = sb.version === 5;
  const isBlock = magic === (v3 ? DIR3_BLOCK_MAGIC : DIR2_BLOCK_MAGIC);
  if (!isBlock && magic !== (v3 ? DIR3_DATA_MAGIC : DIR2_DATA_MAGIC)) return { problem: `directory block of inode ${ino} has magic 0x${hex(magic)}`, at: 0 };
  if (v3) {
    const { stored, computed } = xfsCrc(block, DIR3_CRC_OFFSET);
    if (stored !== computed) return { problem: `directory block of inode ${ino} has crc 0x${hex(stored)}, computed 0x${hex(computed)}`, at: DIR3_CRC_OFFSET };
    if (u64(v, 40) !== ino) return { problem: `directory block belongs to inode ${v.getBigUint64(40)}, not ${ino}`, at: 40 };
    if (u64(v, 8) !== daddr) return { problem: `directory block of inode ${ino} says it is at sector ${v.getBigUint64(8)}, not ${daddr}`, at: 8 };
  }
  let end = block.length;
  if (isBlock) {
    const count = v.getUint32(block.length - 8);
    end = block.length - 8 - count * 8;
    if (count > block.length / 8 || end < (v3 ? DIR3_DATA_HEADER : DIR2_DATA_HEADER)) return { problem: `directory block of inode ${ino} claims ${count} leaf entries, more than it holds`, at: block.length - 8 };
  }
  const entries: RawEntry[] = [];
  for (let pos = v3 ? DIR3_DATA_HEADER : DIR2_DATA_HEADER; pos < end; ) {
    if (pos + 8 > end) return { problem: `directory entry at byte ${pos} of inode ${ino}'s block runs past its end`, at: pos };
    if (v.getUint16(pos) === FREE_TAG) {
      const length = v.getUint16(pos + 2);
      if (length < 8 || length % 8 !== 0 || pos + length > end) return { problem: `free space of ${length} bytes at byte ${pos} of a directory block of inode ${ino} does not fit`, at: pos };
      pos += length;
      continue;
    }
    const namelen = block[pos + 8]!;
    const length = (8 + 1 + namelen + (sb.ftype ? 1 : 0) + 2 + 7) & ~7;
    if (namelen === 0 || pos + length > end) return { problem: `directory entry at byte ${pos} of a directory block of inode ${ino} (name length ${namelen}) does not fit`, at: pos };
    if (v.getUint16(pos + length - 2) !== pos) return { problem: `directory entry at byte ${pos} of a directory block of inode ${ino} has tag ${v.getUint16(pos + length - 2)}`, at: pos + length - 2 };
    const e = u64(v, pos);
    if (e === undefined) return { problem: `directory entry at byte ${pos} of inode ${ino} names an inode number past 2^53`, at: pos };
    entries.push({ name: block.slice(pos + 9, pos + 9 + namelen), ino: e, ftype: sb.ftype ? block[pos + 9 + namelen]! : 0, at: pos });
    pos += length;
  }
  return { entries };
}
