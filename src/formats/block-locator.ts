import type { RandomAccessSource } from "../source/chunk-source.ts";
import type { UsedBitmap } from "./bitmap.ts";

const BLOCKS_PER_RANK = 4096;

/**
 * Random access into an image whose used blocks are stored in bitmap order, `blocksPerStrip`
 * at a time followed by a `stripTrailer`-byte checksum: a block's place in the file is its rank
 * among used blocks. Ranks are kept every 4096 blocks (8 bytes per 16 MiB of 4 KiB blocks).
 */
export class BlockLocator {
  private readonly rankAt: Float64Array;

  constructor(
    private readonly bitmap: UsedBitmap,
    private readonly blockSize: number,
    private readonly dataStart: number,
    private readonly stripTrailer: number,
    private readonly blocksPerStrip: number,
  ) {
    const slots = Math.ceil(bitmap.totalBlocks / BLOCKS_PER_RANK) + 1;
    this.rankAt = new Float64Array(slots);
    let rank = 0;
    for (let s = 0; s < slots - 1; s++) {
      this.rankAt[s] = rank;
      rank += bitmap.countIn(s * BLOCKS_PER_RANK, (s + 1) * BLOCKS_PER_RANK);
    }
    this.rankAt[slots - 1] = rank;
  }

  /** Number of used blocks before `block`. */
  rank(block: number): number {
    const slot = Math.floor(block / BLOCKS_PER_RANK);
    return this.rankAt[slot]! + this.bitmap.countIn(slot * BLOCKS_PER_RANK, block);
  }

  /** Offset in the image of used block `block`. */
  imageOffset(block: number): number {
    return this.offsetOfRank(this.rank(block));
  }

  /** Offset in the image of the used block with `rank` used blocks before it. */
  private offsetOfRank(rank: number): number {
    const strips = this.stripTrailer ? Math.floor(rank / this.blocksPerStrip) : 0;
    return this.dataStart + rank * this.blockSize + strips * this.stripTrailer;
  }

  /** Volume bytes [offset, offset+length), unused blocks as zeros, clipped to the volume size. */
  read(source: RandomAccessSource, offset: number, length: number, volumeSize: number): Uint8Array {
    const out = new Uint8Array(Math.max(0, Math.min(volumeSize, offset + length) - offset));
    this.readInto(source, offset, out, volumeSize, true);
    return out;
  }

  /** The same into `out` (its length, clipped to the volume); `zeroed`: out holds zeros already. */
  readInto(source: RandomAccessSource, offset: number, out: Uint8Array, volumeSize: number, zeroed = false): void {
    const end = Math.min(volumeSize, offset + out.length);
    const bs = this.blockSize;
    let pos = offset;
    while (pos < end) {
      const block = Math.floor(pos / bs);
      const inBlock = pos - block * bs;
      const n = Math.min(bs - inBlock, end - pos);
      if (this.bitmap.isUsed(block)) {
        // consecutive used blocks of one strip lie together: read them in one go
        let blocks = 1;
        const rank = this.rank(block);
        const stripLeft = this.stripTrailer ? this.blocksPerStrip - (rank % this.blocksPerStrip) : Infinity;
        while (blocks < stripLeft && (block + blocks) * bs < end && this.bitmap.isUsed(block + blocks)) blocks++;
        const bytes = Math.min(blocks * bs - inBlock, end - pos);
        const at = this.offsetOfRank(rank) + inBlock;
        const got = source.readAt(out.subarray(pos - offset, pos - offset + bytes), at);
        if (got < bytes) throw new Error(`${source.name}: short read at offset ${at}`);
        pos += bytes;
      } else {
        if (!zeroed) out.fill(0, pos - offset, pos - offset + n);
        pos += n;
      }
    }
  }
}
