// btrfs superblock, chunk items and the logical-to-physical map, per btrfs-progs kernel-shared/uapi/btrfs_tree.h (struct btrfs_super_block, btrfs_dev_item, btrfs_chunk, btrfs_stripe).
import { withCommas } from "../../errors.ts";
import type { Volume } from "../../volume/volume.ts";
import { FsError } from "../filesystem.ts";
import { CSUM_SIZE, checksumOf, csumName } from "./checksum.ts";

export const SUPER_INFO_SIZE = 4096;
/** the primary copy, then the mirrors (btrfs_sb_offset: 64 KiB, 64 MiB, 256 GiB) */
export const SUPER_OFFSETS = [0x10000, 64 * 2 ** 20, 256 * 2 ** 30];
const MAGIC = "_BHRfS_M";
/** BTRFS_SYSTEM_CHUNK_ARRAY_SIZE */
const SYS_CHUNK_ARRAY_MAX = 2048;
/** sizes of btrfs_disk_key, btrfs_chunk without its stripes, btrfs_stripe */
const [DISK_KEY_SIZE, CHUNK_SIZE, STRIPE_SIZE] = [17, 48, 32];
const CHUNK_ITEM_KEY = 228;

const INCOMPAT_METADATA_UUID = 1 << 10;
const INCOMPAT_EXTENT_TREE_V2 = 1 << 13;
const INCOMPAT_RAID_STRIPE_TREE = 1 << 14;
/** every incompat flag up to SIMPLE_QUOTA (1 << 16) that a reader of one device's trees can ignore */
const INCOMPAT_READABLE = 0x1ffff & ~INCOMPAT_EXTENT_TREE_V2 & ~INCOMPAT_RAID_STRIPE_TREE;

const BLOCK_GROUP_SYSTEM = 1 << 1;
const BLOCK_GROUP_METADATA = 1 << 2;
const PROFILE_NAMES: [number, string][] = [[1 << 3, "RAID0"], [1 << 4, "RAID1"], [1 << 6, "RAID10"], [1 << 7, "RAID5"], [1 << 8, "RAID6"], [1 << 9, "RAID1C3"], [1 << 10, "RAID1C4"]];

export interface Superblock {
  /** the volume offset it was read from */
  offset: number;
  csumType: number;
  csumSize: number;
  /** what tree block headers carry: the fsid, or metadata_uuid with that feature */
  metadataFsid: Uint8Array;
  generation: number;
  root: number;
  rootLevel: number;
  chunkRoot: number;
  chunkRootLevel: number;
  totalBytes: number;
  numDevices: number;
  sectorSize: number;
  nodeSize: number;
  incompat: number;
  devid: number;
  fsid: Uint8Array;
  sysChunkArray: Uint8Array;
}

const le64 = (v: DataView, at: number) => v.getUint32(at, true) + v.getUint32(at + 4, true) * 2 ** 32;

/** The problem with the superblock copy at `offset`, or the parsed superblock. */
function parseSuperblock(volume: Volume, offset: number): Superblock | string {
  if (offset + SUPER_INFO_SIZE > volume.size) return "lies past the end of the volume";
  for (const e of volume.extents(offset, SUPER_INFO_SIZE)) if (!e.data) return "is not in the image (its bitmap marks it unused)";
  const b = volume.read(offset, SUPER_INFO_SIZE);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (String.fromCharCode(...b.subarray(0x40, 0x48)) !== MAGIC) return `has no btrfs magic ("${MAGIC}")`;
  if (le64(v, 0x30) !== offset) return `says it belongs at offset ${withCommas(le64(v, 0x30))}`;
  const csumType = v.getUint16(0xc4, true);
  const csumSize = CSUM_SIZE[csumType];
  if (csumSize === undefined) return `has checksum type ${csumType}, not one btrfs defines (crc32c, xxhash64, sha256, blake2b)`;
  const want = b.subarray(0, csumSize);
  const got = checksumOf(csumType, b.subarray(0x20));
  if (!want.every((x, i) => x === got[i])) return `fails its ${csumName(csumType)} checksum`;
  const sectorSize = v.getUint32(0x90, true);
  const nodeSize = v.getUint32(0x94, true);
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(sectorSize) || sectorSize < 4096 || sectorSize > 65536) return `has sector size ${sectorSize}, not a power of two from 4 KiB to 64 KiB`;
  if (!pow2(nodeSize) || nodeSize < sectorSize || nodeSize > 65536) return `has node size ${nodeSize}, not a power of two from the sector size to 64 KiB`;
  const sysChunkArraySize = v.getUint32(0xa0, true);
  if (sysChunkArraySize > SYS_CHUNK_ARRAY_MAX) return `has a ${sysChunkArraySize}-byte sys_chunk_array, more than its ${SYS_CHUNK_ARRAY_MAX} bytes`;
  const incompat = le64(v, 0xbc);
  return {
    offset,
    csumType,
    csumSize,
    metadataFsid: b.slice(incompat & INCOMPAT_METADATA_UUID ? 0x23b : 0x20, (incompat & INCOMPAT_METADATA_UUID ? 0x23b : 0x20) + 16),
    generation: le64(v, 0x48),
    root: le64(v, 0x50),
    chunkRoot: le64(v, 0x58),
    totalBytes: le64(v, 0x70),
    numDevices: le64(v, 0x88),
    sectorSize,
    nodeSize,
    incompat,
    rootLevel: b[0xc6]!,
    chunkRootLevel: b[0xc7]!,
    devid: le64(v, 0xc9),
    fsid: b.slice(0x20, 0x30),
    sysChunkArray: b.slice(0x32b, 0x32b + sysChunkArraySize),
  };
}

/**
 * The primary superblock, or the newest good mirror when it is bad (with a note in `warnings`).
 * A file system this reader cannot read (several devices, extent tree v2) is refused in one line.
 */
export function readSuperblock(volume: Volume, warnings: string[]): Superblock {
  const problems: string[] = [];
  let found: Superblock | undefined;
  for (const offset of SUPER_OFFSETS) {
    const sb = parseSuperblock(volume, offset);
    if (typeof sb === "string") {
      if (offset === SUPER_OFFSETS[0] || offset + SUPER_INFO_SIZE <= volume.size) problems.push(`the superblock at ${withCommas(offset)} ${sb}`);
      continue;
    }
    if (!found || sb.generation > found.generation) found = sb;
    if (offset === SUPER_OFFSETS[0]) break;
  }
  if (!found) throw new FsError(volume.name, SUPER_OFFSETS[0], `no usable btrfs superblock: ${problems.join("; ")}`);
  if (found.offset !== SUPER_OFFSETS[0]) warnings.push(`${problems[0]}; read the mirror at offset ${withCommas(found.offset)} (generation ${found.generation}) instead`);
  const at = found.offset;
  if (found.totalBytes > volume.size) warnings.push(`the file system is ${withCommas(found.totalBytes)} bytes, the volume ${withCommas(volume.size)}: what lies past the volume's end cannot be read`);
  if (found.numDevices !== 1) {
    throw new FsError(volume.name, at + 0x88, `the file system spans ${found.numDevices} devices; imgtool reads single-device btrfs only (restore every device and mount them with the kernel)`);
  }
  const unknown = found.incompat & ~INCOMPAT_READABLE;
  if (unknown) throw new FsError(volume.name, at + 0xbc, `incompatible features 0x${unknown.toString(16)} (extent tree v2, raid stripe tree or newer) that this reader does not understand`);
  return found;
}

export interface Stripe {
  devid: number;
  offset: number;
}

export interface Chunk {
  logical: number;
  length: number;
  type: number;
  stripes: Stripe[];
  /** where the chunk item is, for messages: a volume offset, or the sys_chunk_array's */
  itemOffset: number;
}

/**
 * One btrfs_chunk (`data` starts at it, `room` bytes of the item or array); its stripe count is
 * checked against the room before the stripes are read.
 */
export function parseChunk(volume: Volume, logical: number, data: Uint8Array, itemOffset: number): { chunk: Chunk; size: number } {
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (data.length < CHUNK_SIZE) throw new FsError(volume.name, itemOffset, `chunk item for logical ${withCommas(logical)} is ${data.length} bytes, shorter than a chunk's ${CHUNK_SIZE}`);
  const numStripes = v.getUint16(44, true);
  const size = CHUNK_SIZE + numStripes * STRIPE_SIZE;
  if (numStripes === 0 || size > data.length) {
    throw new FsError(volume.name, itemOffset, `chunk for logical ${withCommas(logical)} claims ${numStripes} stripes, which its ${data.length} bytes do not hold`);
  }
  const stripes: Stripe[] = [];
  for (let i = 0; i < numStripes; i++) stripes.push({ devid: le64(v, CHUNK_SIZE + i * STRIPE_SIZE), offset: le64(v, CHUNK_SIZE + i * STRIPE_SIZE + 8) });
  return { chunk: { logical, length: le64(v, 0), type: le64(v, 24), stripes, itemOffset }, size };
}

/** The logical-to-physical map of one device: SINGLE and DUP chunks; others are named when used. */
export class ChunkMap {
  private readonly chunks: Chunk[] = [];

  constructor(
    private readonly volume: Volume,
    private readonly devid: number,
  ) {}

  /** The chunks of the superblock's sys_chunk_array: (disk key, chunk) pairs. */
  addSysChunkArray(sb: Superblock): void {
    const a = sb.sysChunkArray;
    const v = new DataView(a.buffer, a.byteOffset, a.byteLength);
    for (let pos = 0; pos < a.length; ) {
      const at = sb.offset + 0x32b + pos;
      if (pos + DISK_KEY_SIZE > a.length) throw new FsError(this.volume.name, at, "sys_chunk_array ends inside a key");
      if (a[pos + 8] !== CHUNK_ITEM_KEY) throw new FsError(this.volume.name, at, `sys_chunk_array holds a key of type ${a[pos + 8]}, not a chunk item`);
      const logical = le64(v, pos + 9);
      const { chunk, size } = parseChunk(this.volume, logical, a.subarray(pos + DISK_KEY_SIZE), at);
      this.add(chunk);
      pos += DISK_KEY_SIZE + size;
    }
  }

  add(chunk: Chunk): void {
    if (this.chunks.some((c) => c.logical === chunk.logical)) return;
    this.chunks.push(chunk);
    this.chunks.sort((a, b) => a.logical - b.logical);
  }

  /**
   * Where `length` bytes at `logical` are on the volume: every copy (one, or two for DUP), each
   * checked to lie inside the volume. Throws FsError naming what is wrong.
   */
  map(logical: number, length: number): number[] {
    const c = this.find(logical);
    if (!c || logical + length > c.logical + c.length) {
      throw new FsError(this.volume.name, undefined, `logical address ${withCommas(logical)} (${withCommas(length)} bytes) lies in no chunk of the chunk tree`);
    }
    const profile = PROFILE_NAMES.find(([bit]) => c.type & bit);
    const foreign = c.stripes.filter((s) => s.devid !== this.devid);
    if (foreign.length > 0 || (profile && profile[1] !== "RAID1")) {
      const devices = new Set(c.stripes.map((s) => s.devid)).size;
      throw new FsError(this.volume.name, c.itemOffset, `the chunk at logical ${withCommas(c.logical)} is ${profile?.[1] ?? "SINGLE"} over ${devices} devices (${c.stripes.length} stripes); imgtool reads chunks of one device only`);
    }
    const within = logical - c.logical;
    return c.stripes.map((s) => {
      const physical = s.offset + within;
      if (s.offset + c.length > this.volume.size) {
        throw new FsError(this.volume.name, c.itemOffset, `the chunk at logical ${withCommas(c.logical)} maps to volume offsets ${withCommas(s.offset)}..${withCommas(s.offset + c.length)}, past the end of the ${withCommas(this.volume.size)}-byte volume`);
      }
      return physical;
    });
  }

  /** The chunks holding tree blocks (system and metadata). */
  metadataChunks(): Chunk[] {
    return this.chunks.filter((c) => c.type & (BLOCK_GROUP_SYSTEM | BLOCK_GROUP_METADATA));
  }

  private find(logical: number): Chunk | undefined {
    let lo = 0;
    let hi = this.chunks.length - 1;
    let best: Chunk | undefined;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = this.chunks[mid]!;
      if (c.logical <= logical) {
        best = c;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return best && logical < best.logical + best.length ? best : undefined;
  }
}
