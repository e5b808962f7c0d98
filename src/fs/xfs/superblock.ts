// XFS superblock, AG headers (AGF, AGI) and inode btree blocks, per xfsprogs libxfs/xfs_format.h (xfs_dsb, xfs_agf, xfs_agi, xfs_btree_block, xfs_inobt_rec).
import { crc32c } from "../../../native/crc32c.ts";

export const SB_MAGIC = 0x58465342; // "XFSB"
const AGF_MAGIC = 0x58414746; // "XAGF"
const AGI_MAGIC = 0x58414749; // "XAGI"
const IBT_MAGIC = 0x49414254; // "IABT"
const IBT_CRC_MAGIC = 0x49414233; // "IAB3"

/** where each header keeps its crc (short-form btree blocks: in the v5 header, 56 bytes; v4's is 16) */
const CRC_AT = { superblock: 224, agf: 216, agi: 312, shortBtree: 52 } as const;
const SHORT_BTREE_HEADER = { v4: 16, v5: 56 } as const;

/** sb_versionnum: the version in the low bits, and whether sb_features2 is valid */
const VERSION = { numbits: 0x000f, moreBits: 0x8000 } as const;
const FEATURES2_FTYPE = 0x200;
const INCOMPAT = { ftype: 0x1, spinodes: 0x2, metaUuid: 0x4, bigtime: 0x8, needsRepair: 0x10, nrext64: 0x20, exchrange: 0x40, parent: 0x80 } as const;
/** what this reader understands; anything else in sb_features_incompat is refused */
const INCOMPAT_KNOWN = Object.values(INCOMPAT).reduce((a, b) => a | b, 0);

export interface Superblock {
  version: 4 | 5;
  blockSize: number;
  blockLog: number;
  sectorSize: number;
  dataBlocks: number;
  agBlocks: number;
  agCount: number;
  agBlockLog: number;
  inodeSize: number;
  inodesPerBlockLog: number;
  rootIno: number;
  logStart: number;
  logBlocks: number;
  dirBlockLog: number;
  ftype: boolean;
  incompat: number;
  roCompat: number;
  logIncompat: number;
  uuid: Uint8Array;
  /** the uuid stamped in metadata blocks (sb_meta_uuid with the meta_uuid feature) */
  metaUuid: Uint8Array;
  needsRepair: boolean;
  /** v5: the log sector (from the log's start) of the last logged superblock change, 0 if none */
  lastLogSector: number;
}

export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** A big-endian u64 as a number; undefined past 2^53. */
export function u64(v: DataView, at: number): number | undefined {
  const n = v.getUint32(at) * 2 ** 32 + v.getUint32(at + 4);
  return Number.isSafeInteger(n) ? n : undefined;
}

const ZERO4 = new Uint8Array(4);

/** XFS's crc32c of a buffer whose crc field (little-endian, at `crcOffset`) counts as zero: stored vs computed. */
export function xfsCrc(buf: Uint8Array, crcOffset: number): { stored: number; computed: number } {
  let c = crc32c(buf.subarray(0, crcOffset), 0xffffffff);
  c = crc32c(ZERO4, c);
  c = crc32c(buf.subarray(crcOffset + 4), c);
  return { stored: view(buf).getUint32(crcOffset, true), computed: (c ^ 0xffffffff) >>> 0 };
}

/** What is wrong with a superblock sector, or the parsed superblock (`fail(field offset, problem)` throws). */
export function parseSuperblock(sb: Uint8Array, fail: (at: number, problem: string) => never): Superblock {
  const v = view(sb);
  if (v.getUint32(0) !== SB_MAGIC) fail(0, "no XFS superblock (magic XFSB)");
  const versionnum = v.getUint16(100);
  const version = versionnum & VERSION.numbits;
  if (version !== 4 && version !== 5) fail(100, `superblock version ${version} is not one this reader knows (4 or 5)`);
  const blockSize = v.getUint32(4);
  const blockLog = sb[120]!;
  if (blockLog < 9 || blockLog > 16 || blockSize !== 1 << blockLog) fail(4, `block size ${blockSize} (log ${blockLog}) is not a power of two from 512 to 65536`);
  const sectorSize = v.getUint16(102);
  if (sectorSize < 512 || sectorSize > 32768 || (sectorSize & (sectorSize - 1)) !== 0 || sectorSize > blockSize) fail(102, `sector size ${sectorSize} is not a power of two from 512 to the block size`);
  const inodeSize = v.getUint16(104);
  const inodeLog = sb[122]!;
  if (inodeSize < 256 || inodeSize > 2048 || inodeSize !== 1 << inodeLog || inodeSize > blockSize) fail(104, `inode size ${inodeSize} is not a power of two from 256 to 2048 within a block`);
  if (version === 4 && inodeSize < 256) fail(104, `inode size ${inodeSize} is too small`);
  const inodesPerBlockLog = sb[123]!;
  if (1 << inodesPerBlockLog !== blockSize / inodeSize) fail(123, `inodes per block log ${inodesPerBlockLog} does not match ${blockSize / inodeSize} inodes per block`);
  const agBlocks = v.getUint32(84);
  const agCount = v.getUint32(88);
  const agBlockLog = sb[124]!;
  if (agBlocks < 16 || agBlockLog > 31 || agBlocks > 2 ** agBlockLog || agBlocks <= 2 ** (agBlockLog - 1)) fail(84, `AG size ${agBlocks} blocks does not match its log ${agBlockLog}`);
  const dataBlocks = u64(v, 8);
  if (dataBlocks === undefined || dataBlocks === 0) fail(8, "the data block count is zero or too large");
  if (agCount === 0 || dataBlocks > agCount * agBlocks || dataBlocks <= (agCount - 1) * agBlocks) fail(88, `${agCount} AGs of ${agBlocks} blocks do not make the ${dataBlocks} data blocks`);
  const versionMore = (versionnum & VERSION.moreBits) !== 0;
  const features2 = versionMore ? v.getUint32(200) : 0;
  const incompat = version === 5 ? v.getUint32(216) : 0;
  const unknown = incompat & ~INCOMPAT_KNOWN;
  if (unknown) fail(216, `unknown incompatible features 0x${unknown.toString(16)}; this reader cannot read it (try: imgtool mount + the kernel)`);
  if (version === 5) {
    const { stored, computed } = xfsCrc(sb.subarray(0, sectorSize), CRC_AT.superblock);
    if (stored !== computed) fail(CRC_AT.superblock, `superblock crc 0x${hex(stored)}, computed 0x${hex(computed)}`);
  }
  const dirBlockLog = sb[192]!;
  if (blockSize * 2 ** dirBlockLog > 65536) fail(192, `directory blocks of 2^${dirBlockLog} blocks are larger than XFS's 64 KiB`);
  const rootIno = u64(v, 56);
  if (rootIno === undefined) fail(56, "root inode number is too large");
  const uuid = sb.slice(32, 48);
  return {
    version,
    blockSize,
    blockLog,
    sectorSize,
    dataBlocks,
    agBlocks,
    agCount,
    agBlockLog,
    inodeSize,
    inodesPerBlockLog,
    rootIno,
    logStart: u64(v, 48) ?? 0,
    logBlocks: v.getUint32(96),
    dirBlockLog,
    ftype: version === 5 ? (incompat & INCOMPAT.ftype) !== 0 : (features2 & FEATURES2_FTYPE) !== 0,
    incompat,
    roCompat: version === 5 ? v.getUint32(212) : 0,
    logIncompat: version === 5 ? v.getUint32(220) : 0,
    uuid,
    metaUuid: incompat & INCOMPAT.metaUuid ? sb.slice(248, 264) : uuid,
    needsRepair: (incompat & INCOMPAT.needsRepair) !== 0,
    lastLogSector: version === 5 ? v.getUint32(244) : 0,
  } as Superblock;
}

export function hex(n: number): string {
  return (n >>> 0).toString(16);
}

export interface AgInodeHeader {
  /** AG block of the inode btree root, and its height */
  inobtRoot: number;
  inobtLevels: number;
  /** blocks in this AG */
  length: number;
}

/**
 * The AGF and AGI of one AG (sectors 1 and 2 of it), checked: magic, sequence number, length and,
 * on v5, crc and uuid. Returns where the inode btree is.
 */
export function parseAgHeaders(sb: Superblock, agno: number, agf: Uint8Array, agi: Uint8Array, fail: (sector: 1 | 2, at: number, problem: string) => never): AgInodeHeader {
  const expectLength = Math.min(sb.agBlocks, sb.dataBlocks - agno * sb.agBlocks);
  const check = (sector: 1 | 2, buf: Uint8Array, magic: number, name: string, crcOffset: number, uuidAt: number) => {
    const v = view(buf);
    if (v.getUint32(0) !== magic) fail(sector, 0, `AG ${agno}: bad ${name} magic 0x${hex(v.getUint32(0))}`);
    if (v.getUint32(8) !== agno) fail(sector, 8, `AG ${agno}: the ${name} says it is AG ${v.getUint32(8)}`);
    if (v.getUint32(12) !== expectLength) fail(sector, 12, `AG ${agno}: the ${name} gives ${v.getUint32(12)} blocks, the superblock ${expectLength}`);
    if (sb.version === 5) {
      const { stored, computed } = xfsCrc(buf, crcOffset);
      if (stored !== computed) fail(sector, crcOffset, `AG ${agno}: ${name} crc 0x${hex(stored)}, computed 0x${hex(computed)}`);
      if (!equal(buf.subarray(uuidAt, uuidAt + 16), sb.metaUuid)) fail(sector, uuidAt, `AG ${agno}: the ${name} belongs to another file system (uuid differs)`);
    }
  };
  check(1, agf, AGF_MAGIC, "AGF", CRC_AT.agf, 64);
  check(2, agi, AGI_MAGIC, "AGI", CRC_AT.agi, 296);
  const v = view(agi);
  const inobtRoot = v.getUint32(20);
  const inobtLevels = v.getUint32(24);
  if (inobtLevels < 1 || inobtLevels > 9) fail(2, 24, `AG ${agno}: inode btree height ${inobtLevels} is out of range`);
  if (inobtRoot === 0 || inobtRoot >= expectLength) fail(2, 20, `AG ${agno}: inode btree root at AG block ${inobtRoot} lies outside the AG`);
  return { inobtRoot, inobtLevels, length: expectLength };
}

/** One inode chunk (64 inodes) of the inode btree: which are allocated on disk (not sparse holes) and which in use. */
export interface InodeChunk {
  startIno: number;
  /** bit i: inode startIno+i has no disk space (a sparse-inode hole) */
  holes: bigint;
  /** bit i: inode startIno+i is free */
  free: bigint;
}

/** Header of a short-form btree block (inode btree): its level and number of records, checked against the block. */
export function parseShortBtreeBlock(sb: Superblock, block: Uint8Array, agBlock: number, agno: number, fail: (at: number, problem: string) => never): { level: number; numrecs: number; headerLength: number } {
  const v = view(block);
  const magic = v.getUint32(0);
  const expect = sb.version === 5 ? IBT_CRC_MAGIC : IBT_MAGIC;
  if (magic !== expect) fail(0, `AG ${agno}: inode btree block ${agBlock} has magic 0x${hex(magic)}`);
  const headerLength = sb.version === 5 ? SHORT_BTREE_HEADER.v5 : SHORT_BTREE_HEADER.v4;
  if (sb.version === 5) {
    const { stored, computed } = xfsCrc(block, CRC_AT.shortBtree);
    if (stored !== computed) fail(CRC_AT.shortBtree, `AG ${agno}: inode btree block ${agBlock} crc 0x${hex(stored)}, computed 0x${hex(computed)}`);
  }
  const level = v.getUint16(4);
  const numrecs = v.getUint16(6);
  const recSize = level === 0 ? 16 : 8;
  if (headerLength + numrecs * recSize > block.length) fail(6, `AG ${agno}: inode btree block ${agBlock} claims ${numrecs} records, more than it holds`);
  return { level, numrecs, headerLength };
}

/** Record i of an inode btree leaf (xfs_inobt_rec: startino, then holemask/count/freecount with sparse inodes, free mask). */
export function inodeChunkAt(sb: Superblock, block: Uint8Array, headerLength: number, i: number, agIno0: number): InodeChunk {
  const v = view(block);
  const at = headerLength + i * 16;
  const sparse = (sb.incompat & INCOMPAT.spinodes) !== 0;
  const holemask = sparse ? v.getUint16(at + 4) : 0;
  let holes = 0n;
  for (let bit = 0; bit < 16; bit++) if (holemask & (1 << bit)) holes |= 0xfn << BigInt(bit * 4);
  return { startIno: agIno0 + v.getUint32(at), holes, free: v.getBigUint64(at + 8) };
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
