// XFS inodes (xfs_dinode v2/v3, with bigtime and nrext64), their forks and the bmap btree (xfs_bmbt_rec, xfs_bmdr_block, long-form xfs_btree_block), per xfsprogs libxfs/xfs_format.h.
import type { NodeKind, Timestamp } from "../filesystem.ts";
import { type Superblock, hex, u64, view, xfsCrc } from "./superblock.ts";

const DINODE_MAGIC = 0x494e; // "IN"
const V2_CORE = 100;
const V3_CORE = 176;
const V3_CRC_OFFSET = 100;
const BMAP_MAGIC = { v4: 0x424d4150, v5: 0x424d4133 } as const; // "BMAP", "BMA3"
/** long-form btree block header: v4 24 bytes, v5 72 with its crc at 64 */
const LONG_BTREE_HEADER = { v4: 24, v5: 72, crcAt: 64 } as const;

/** di_format / di_aformat */
export const FORK_FORMAT = { dev: 0, local: 1, extents: 2, btree: 3 } as const;
/** di_flags2 */
const FLAGS2 = { bigtime: 0x8, nrext64: 0x10 } as const;
/** di_flags: the data fork maps blocks of the real-time device */
const DIFLAG_REALTIME = 0x1;
/** bigtime counts nanoseconds from 1901-12-13 20:45:52 UTC (-2^31 s) */
const BIGTIME_EPOCH_OFFSET = 2 ** 31;

/** One mapping of a fork: `count` blocks at file block `offset` stored at fs block `block`. */
export interface Mapping {
  offset: number;
  block: number;
  count: number;
  unwritten: boolean;
}

export interface Dinode {
  version: 2 | 3;
  mode: number;
  kind: NodeKind | undefined;
  uid: number;
  gid: number;
  links: number;
  size: number;
  atime: Timestamp;
  mtime: Timestamp;
  ctime: Timestamp;
  generation: number;
  format: number;
  attrFormat: number;
  dataExtents: number;
  attrExtents: number;
  /** the data fork's and attribute fork's bytes inside the inode (attr empty when there is none) */
  dataFork: Uint8Array;
  attrFork: Uint8Array;
  /** byte offsets of the forks inside the inode, for messages */
  dataForkAt: number;
  attrForkAt: number;
  rdev?: { major: number; minor: number };
}

/** The inode at `raw` checked (magic, version, crc and own number on v3, fork sizes) and decoded. */
export function parseDinode(sb: Superblock, raw: Uint8Array, ino: number, fail: (at: number, problem: string) => never): Dinode {
  const v = view(raw);
  if (v.getUint16(0) !== DINODE_MAGIC) fail(0, `inode ${ino} has no inode magic (IN)`);
  const version = raw[4]!;
  if (version !== 2 && version !== 3 && version !== 1) fail(4, `inode ${ino} has version ${version}`);
  if (version === 3) {
    if (sb.version !== 5) fail(4, `inode ${ino} is version 3 on a v4 file system`);
    const { stored, computed } = xfsCrc(raw, V3_CRC_OFFSET);
    if (stored !== computed) fail(V3_CRC_OFFSET, `inode ${ino} crc 0x${hex(stored)}, computed 0x${hex(computed)}`);
    if (u64(v, 152) !== ino) fail(152, `inode ${ino} says it is inode ${v.getBigUint64(152)}`);
  } else if (sb.version === 5) fail(4, `inode ${ino} is version ${version} on a v5 file system`);
  const flags2 = version === 3 ? v.getUint32(124) : 0;
  const mode = v.getUint16(2);
  const format = raw[5]!;
  if (v.getUint16(90) & DIFLAG_REALTIME && (mode & 0o170000) === 0o100000) fail(90, `inode ${ino} is a real-time file: its data lies on the real-time device, which is not part of this volume`);
  const attrFormat = raw[83]!;
  const forkOffset = raw[82]! * 8;
  const core = version === 3 ? V3_CORE : V2_CORE;
  const literal = raw.length - core;
  if (forkOffset > literal) fail(82, `inode ${ino}'s attribute fork starts ${forkOffset} bytes in, past its ${literal}-byte literal area`);
  const dataSize = forkOffset ? forkOffset : literal;
  const nrext64 = (flags2 & FLAGS2.nrext64) !== 0;
  const dataExtents = nrext64 ? (u64(v, 24) ?? Number.MAX_SAFE_INTEGER) : v.getUint32(76);
  const attrExtents = nrext64 ? v.getUint32(76) : v.getUint16(80);
  const size = u64(v, 56);
  if (size === undefined || size > 2 ** 63 - 1) fail(56, `inode ${ino} has size ${v.getBigUint64(56)}`);
  const bigtime = (flags2 & FLAGS2.bigtime) !== 0;
  const time = (at: number): Timestamp => {
    if (bigtime) {
      const ns = v.getBigUint64(at);
      return { sec: Number(ns / 1_000_000_000n) - BIGTIME_EPOCH_OFFSET, nsec: Number(ns % 1_000_000_000n) };
    }
    const nsec = v.getUint32(at + 4);
    return { sec: v.getInt32(at), nsec: nsec < 1e9 ? nsec : 0 };
  };
  const kind = kindOf(mode);
  const dinode: Dinode = {
    version: version === 3 ? 3 : 2,
    mode,
    kind,
    uid: v.getUint32(8),
    gid: v.getUint32(12),
    links: version === 1 ? v.getUint16(6) : v.getUint32(16),
    size,
    atime: time(32),
    mtime: time(40),
    ctime: time(48),
    generation: v.getUint32(92),
    format,
    attrFormat: forkOffset ? attrFormat : -1,
    dataExtents,
    attrExtents,
    dataFork: raw.subarray(core, core + dataSize),
    attrFork: forkOffset ? raw.subarray(core + forkOffset) : raw.subarray(0, 0),
    dataForkAt: core,
    attrForkAt: core + forkOffset,
  };
  if (kind === "char-device" || kind === "block-device") {
    if (format !== FORK_FORMAT.dev) fail(5, `device inode ${ino} has data fork format ${format}`);
    const dev = v.getUint32(core);
    dinode.rdev = { major: (dev >>> 18) & 0x3fff, minor: dev & 0x3ffff };
  }
  return dinode;
}

/** S_IFMT >> 12 to the node kind (S_IFIFO 1, S_IFCHR 2, S_IFDIR 4, S_IFBLK 6, S_IFREG 8, S_IFLNK 10, S_IFSOCK 12) */
const KIND_BY_TYPE: (NodeKind | undefined)[] = [undefined, "fifo", "char-device", undefined, "directory", undefined, "block-device", undefined, "file", undefined, "symlink", undefined, "socket"];

function kindOf(mode: number): NodeKind | undefined {
  return KIND_BY_TYPE[(mode >>> 12) & 0xf];
}

/** Extent record i of `buf` at `at` (128 bits: unwritten flag, 54-bit file offset, 52-bit fs block, 21-bit count). */
export function extentAt(v: DataView, at: number): Mapping {
  const hi0 = v.getUint32(at);
  const lo0 = v.getUint32(at + 4);
  const hi1 = v.getUint32(at + 8);
  const lo1 = v.getUint32(at + 12);
  return {
    unwritten: hi0 >>> 31 === 1,
    offset: (hi0 & 0x7fffffff) * 2 ** 23 + (lo0 >>> 9),
    block: (lo0 & 0x1ff) * 2 ** 43 + hi1 * 2 ** 11 + (lo1 >>> 21),
    count: lo1 & 0x1fffff,
  };
}

/** The root of a btree fork held in the inode (xfs_bmdr_block): level, then keys and child fs blocks. */
export function bmdrRoot(fork: Uint8Array): { level: number; children: number[] } | string {
  const v = view(fork);
  if (fork.length < 4) return "the btree root does not fit the fork";
  const level = v.getUint16(0);
  const numrecs = v.getUint16(2);
  const maxrecs = Math.floor((fork.length - 4) / 16);
  if (level === 0 || level > 9) return `btree root has level ${level}`;
  if (numrecs === 0 || numrecs > maxrecs) return `btree root has ${numrecs} records, room for ${maxrecs}`;
  const children: number[] = [];
  for (let i = 0; i < numrecs; i++) {
    const p = u64(v, 4 + maxrecs * 8 + i * 8);
    if (p === undefined) return `btree root pointer ${i} is too large`;
    children.push(p);
  }
  return { level, children };
}

/**
 * A bmap btree block (long form), checked (magic, level, crc, owner and block number on v5): its
 * mappings (a leaf) or child fs blocks (a node), or what is wrong.
 */
export function bmbtBlock(sb: Superblock, block: Uint8Array, fsBlock: number, daddr: number, ino: number, level: number): { mappings?: Mapping[]; children?: number[] } | { problem: string; at: number } {
  const v = view(block);
  const magic = v.getUint32(0);
  const crcFs = sb.version === 5;
  if (magic !== (crcFs ? BMAP_MAGIC.v5 : BMAP_MAGIC.v4)) return { problem: `bmap btree block ${fsBlock} of inode ${ino} has magic 0x${hex(magic)}`, at: 0 };
  const header = crcFs ? LONG_BTREE_HEADER.v5 : LONG_BTREE_HEADER.v4;
  if (crcFs) {
    const { stored, computed } = xfsCrc(block, LONG_BTREE_HEADER.crcAt);
    if (stored !== computed) return { problem: `bmap btree block ${fsBlock} of inode ${ino} has crc 0x${hex(stored)}, computed 0x${hex(computed)}`, at: LONG_BTREE_HEADER.crcAt };
    if (u64(v, 56) !== ino) return { problem: `bmap btree block ${fsBlock} belongs to inode ${v.getBigUint64(56)}, not ${ino}`, at: 56 };
    if (u64(v, 24) !== daddr) return { problem: `bmap btree block ${fsBlock} says it is at sector ${v.getBigUint64(24)}`, at: 24 };
  }
  const got = v.getUint16(4);
  if (got !== level) return { problem: `bmap btree block ${fsBlock} of inode ${ino} has level ${got}, expected ${level}`, at: 4 };
  const numrecs = v.getUint16(6);
  if (level === 0) {
    if (header + numrecs * 16 > block.length) return { problem: `bmap btree leaf ${fsBlock} claims ${numrecs} records, more than it holds`, at: 6 };
    const mappings: Mapping[] = [];
    for (let i = 0; i < numrecs; i++) mappings.push(extentAt(v, header + i * 16));
    return { mappings };
  }
  const maxrecs = Math.floor((block.length - header) / 16);
  if (numrecs === 0 || numrecs > maxrecs) return { problem: `bmap btree node ${fsBlock} claims ${numrecs} records, room for ${maxrecs}`, at: 6 };
  const children: number[] = [];
  for (let i = 0; i < numrecs; i++) {
    const p = u64(v, header + maxrecs * 8 + i * 8);
    if (p === undefined) return { problem: `bmap btree node ${fsBlock} pointer ${i} is too large`, at: header + maxrecs * 8 + i * 8 };
    children.push(p);
  }
  return { children };
}
