// btrfs tree blocks: header, key pointers, leaf items and the search through them, per btrfs-progs kernel-shared/uapi/btrfs_tree.h (struct btrfs_header, btrfs_disk_key, btrfs_key_ptr, btrfs_item).
import { withCommas } from "../../errors.ts";
import type { Volume } from "../../volume/volume.ts";
import { FsError } from "../filesystem.ts";
import { checksumMatches, csumName } from "./checksum.ts";
import type { ChunkMap, Superblock } from "./superblock.ts";

const HEADER_SIZE = 101;
const KEY_PTR_SIZE = 33;
const ITEM_SIZE = 25;
/** BTRFS_MAX_LEVEL */
export const MAX_LEVEL = 8;
const CACHE_BYTES = 32 << 20;

/** Objectids and offsets are u64 on disk; numbers hold them exactly below 2^53, which is all this reader compares closely. */
export interface Key {
  objectid: number;
  type: number;
  offset: number;
}

export const MAX_OFFSET = 2 ** 64;

export function compareKeys(a: Key, b: Key): number {
  return a.objectid - b.objectid || a.type - b.type || a.offset - b.offset;
}

export interface TreeBlock {
  logical: number;
  /** the volume offset the block was read from */
  physical: number;
  level: number;
  owner: number;
  nritems: number;
  data: Uint8Array;
  view: DataView;
}

/** One leaf item: its key, its bytes (a view into the block) and their volume offset. */
export interface Item {
  key: Key;
  data: Uint8Array;
  volumeOffset: number;
}

/** A tree's root: where its top block is and what level it has. */
export interface TreeRoot {
  logical: number;
  level: number;
  /** the tree's name in messages ("root tree", "subvolume 256") */
  name: string;
  /** its objectid in the root tree: the owner its blocks carry */
  id: number;
}

/** A tree block found by scanning the metadata chunks. */
interface FoundBlock {
  logical: number;
  level: number;
  generation: number;
  firstKey: Key;
}

export const le64 = (v: DataView, at: number) => v.getUint32(at, true) + v.getUint32(at + 4, true) * 2 ** 32;

function writeLe64(v: DataView, at: number, n: number): void {
  v.setUint32(at, n % 2 ** 32, true);
  v.setUint32(at + 4, Math.floor(n / 2 ** 32), true);
}

export function readKey(v: DataView, at: number): Key {
  return { objectid: le64(v, at), type: v.getUint8(at + 8), offset: le64(v, at + 9) };
}

/** A tree block the image does not hold: partclone.btrfs before its 2026 fix left some out of its bitmap. */
export class MissingTreeBlock extends FsError {
  constructor(
    volumeName: string,
    readonly logical: number,
    physical: number,
  ) {
    super(volumeName, physical, `tree block at logical ${withCommas(logical)} (volume offset ${withCommas(physical)}) is not in the image: its bitmap marks it unused (partclone.btrfs before its 2026 fix left tree blocks out)`);
  }
}

/** Reads, checks and caches tree blocks, and searches trees. */
export class TreeReader {
  private readonly cache = new Map<number, TreeBlock>();
  /** every good tree block the image holds, by owner: read once, when a missing interior node is rebuilt */
  private found: Map<number, FoundBlock[]> | undefined;
  /** interior nodes the image lacks, rebuilt from the blocks below them: logical → how many children were found */
  readonly rebuilt = new Map<number, number>();
  /** told of every tree block the image lacks, as it is met (after a rebuild, when one was made) */
  onMissing?: (e: MissingTreeBlock) => void;

  constructor(
    readonly volume: Volume,
    readonly sb: Superblock,
    readonly chunks: ChunkMap,
  ) {}

  /**
   * The tree block at `logical`, checked: held by the image, its checksum, its address, fsid and
   * level. With DUP, a bad or missing copy falls back to the other.
   */
  block(logical: number, level: number): TreeBlock {
    const cached = this.cache.get(logical);
    if (cached) {
      this.cache.delete(logical);
      this.cache.set(logical, cached);
      if (cached.level !== level) throw this.levelError(cached, level);
      return cached;
    }
    const { nodeSize } = this.sb;
    let firstError: FsError | undefined;
    for (const physical of this.chunks.map(logical, nodeSize)) {
      try {
        const b = this.readCopy(logical, physical, level);
        if (this.cache.size * nodeSize >= CACHE_BYTES) this.cache.delete(this.cache.keys().next().value!);
        this.cache.set(logical, b);
        return b;
      } catch (e) {
        if (!(e instanceof FsError)) throw e;
        firstError ??= e;
      }
    }
    throw firstError!;
  }

  private readCopy(logical: number, physical: number, level: number): TreeBlock {
    const { nodeSize, csumType } = this.sb;
    const name = this.volume.name;
    for (const e of this.volume.extents(physical, nodeSize)) if (!e.data) throw new MissingTreeBlock(name, logical, physical);
    const data = this.volume.read(physical, nodeSize);
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (!checksumMatches(csumType, data.subarray(0x20), data)) {
      throw new FsError(name, physical, `tree block at logical ${withCommas(logical)} fails its ${csumName(csumType)} checksum`);
    }
    if (le64(view, 0x30) !== logical) throw new FsError(name, physical, `tree block at logical ${withCommas(logical)} says it is at ${withCommas(le64(view, 0x30))}`);
    if (!this.sb.metadataFsid.every((x, i) => x === data[0x20 + i])) throw new FsError(name, physical, `tree block at logical ${withCommas(logical)} belongs to another file system (its fsid differs)`);
    const block: TreeBlock = { logical, physical, level: data[0x64]!, owner: le64(view, 0x58), nritems: view.getUint32(0x60, true), data, view };
    if (block.level !== level) throw this.levelError(block, level);
    const room = Math.floor((nodeSize - HEADER_SIZE) / (level === 0 ? ITEM_SIZE : KEY_PTR_SIZE));
    if (block.nritems > room) throw new FsError(name, physical, `tree block at logical ${withCommas(logical)} claims ${block.nritems} items, more than its ${nodeSize} bytes hold (${room})`);
    let previous: Key | undefined;
    for (let i = 0; i < block.nritems; i++) {
      const at = HEADER_SIZE + i * (level === 0 ? ITEM_SIZE : KEY_PTR_SIZE);
      const key = readKey(view, at);
      if (previous && compareKeys(previous, key) > 0) throw new FsError(name, physical + at, `tree block at logical ${withCommas(logical)}: key ${i} is below key ${i - 1} (keys out of order)`);
      previous = key;
      if (level === 0) {
        const offset = view.getUint32(at + 17, true);
        const size = view.getUint32(at + 21, true);
        if (HEADER_SIZE + offset + size > nodeSize || HEADER_SIZE + offset < HEADER_SIZE + block.nritems * ITEM_SIZE) {
          throw new FsError(name, physical + at, `tree block at logical ${withCommas(logical)}: item ${i} (${size} bytes at ${offset}) lies outside the leaf's data area`);
        }
      }
    }
    return block;
  }

  private levelError(block: TreeBlock, level: number): FsError {
    return new FsError(this.volume.name, block.physical, `tree block at logical ${withCommas(block.logical)} has level ${block.level} where its parent expects ${level}`);
  }

  keyAt(block: TreeBlock, slot: number): Key {
    return readKey(block.view, HEADER_SIZE + slot * (block.level === 0 ? ITEM_SIZE : KEY_PTR_SIZE));
  }

  childAt(block: TreeBlock, slot: number): number {
    return le64(block.view, HEADER_SIZE + slot * KEY_PTR_SIZE + 17);
  }

  itemAt(block: TreeBlock, slot: number): Item {
    const at = HEADER_SIZE + slot * ITEM_SIZE;
    const offset = HEADER_SIZE + block.view.getUint32(at + 17, true);
    const size = block.view.getUint32(at + 21, true);
    return { key: readKey(block.view, at), data: block.data.subarray(offset, offset + size), volumeOffset: block.physical + offset };
  }

  /**
   * The tree's items with keys in [from, to], ascending. With `onDamage`, a subtree that cannot
   * be read is reported there and the walk goes on with the next one.
   */
  *items(root: TreeRoot, from: Key, to: Key, onDamage?: (e: FsError) => void): Iterable<Item> {
    if (root.level >= MAX_LEVEL) throw new FsError(this.volume.name, undefined, `${root.name} has level ${root.level}; btrfs trees have at most ${MAX_LEVEL}`);
    yield* this.walk(root, root.logical, root.level, from, to, [], onDamage);
  }

  private *walk(root: TreeRoot, logical: number, level: number, from: Key, to: Key, path: number[], onDamage?: (e: FsError) => void, bounds?: [Key | undefined, Key | undefined]): Iterable<Item> {
    if (path.includes(logical)) {
      throw new FsError(this.volume.name, undefined, `${root.name}: tree block at logical ${withCommas(path[path.length - 1]!)} points back to block ${withCommas(logical)} above it: a loop in the tree`);
    }
    const block = this.blockOf(root, logical, level, bounds);
    if (level === 0) {
      for (let slot = this.lastAtOrBelow(block, from, true); slot < block.nritems; slot++) {
        const item = this.itemAt(block, slot);
        if (compareKeys(item.key, to) > 0) return;
        if (compareKeys(item.key, from) >= 0) yield item;
      }
      return;
    }
    path.push(logical);
    for (let slot = Math.max(0, this.lastAtOrBelow(block, from, false)); slot < block.nritems; slot++) {
      if (compareKeys(this.keyAt(block, slot), to) > 0) break;
      const childBounds: [Key, Key | undefined] = [this.keyAt(block, slot), slot + 1 < block.nritems ? this.keyAt(block, slot + 1) : bounds?.[1]];
      if (!onDamage) {
        yield* this.walk(root, this.childAt(block, slot), level - 1, from, to, path, undefined, childBounds);
        continue;
      }
      try {
        yield* this.walk(root, this.childAt(block, slot), level - 1, from, to, path, onDamage, childBounds);
      } catch (e) {
        if (!(e instanceof FsError)) throw e;
        onDamage(e);
      }
    }
    path.pop();
  }

  /** The last slot whose key is at most `key`; in a leaf (`leaf`), the first slot at least it. */
  private lastAtOrBelow(block: TreeBlock, key: Key, leaf: boolean): number {
    let lo = 0;
    let hi = block.nritems - 1;
    let best = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (compareKeys(this.keyAt(block, mid), key) <= 0) {
        best = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (leaf) return best >= 0 && compareKeys(this.keyAt(block, best), key) === 0 ? best : best + 1;
    return best;
  }

  /**
   * The block, or for an interior node the image lacks, a node rebuilt from the blocks one level
   * down that carry the tree's owner and lie in the node's key range (`bounds`): in a partclone
   * image the blocks it holds are the live ones, so they are what the lost node pointed to.
   */
  blockOf(root: TreeRoot, logical: number, level: number, bounds?: [Key | undefined, Key | undefined]): TreeBlock {
    try {
      return this.block(logical, level);
    } catch (e) {
      if (!(e instanceof MissingTreeBlock)) throw e;
      const rebuilt = level > 0 ? this.rebuild(root, logical, level, bounds, e) : undefined;
      this.onMissing?.(e);
      if (!rebuilt) throw e;
      return rebuilt;
    }
  }

  /** Is the block at `logical` in the image (one of its copies), by the image's bitmap alone? */
  held(logical: number): boolean {
    return this.chunks.map(logical, this.sb.nodeSize).some((physical) => [...this.volume.extents(physical, this.sb.nodeSize)].every((e) => e.data));
  }

  private rebuild(root: TreeRoot, logical: number, level: number, bounds: [Key | undefined, Key | undefined] | undefined, e: MissingTreeBlock): TreeBlock | undefined {
    const children = this.foundBlocks()
      .get(root.id)
      ?.filter((b) => b.level === level - 1 && (!bounds?.[0] || compareKeys(b.firstKey, bounds[0]) >= 0) && (!bounds?.[1] || compareKeys(b.firstKey, bounds[1]) < 0))
      .sort((a, b) => compareKeys(a.firstKey, b.firstKey));
    if (!children?.length) return undefined;
    const data = new Uint8Array(HEADER_SIZE + children.length * KEY_PTR_SIZE);
    const view = new DataView(data.buffer);
    children.forEach((c, i) => {
      const at = HEADER_SIZE + i * KEY_PTR_SIZE;
      writeLe64(view, at, c.firstKey.objectid);
      data[at + 8] = c.firstKey.type;
      writeLe64(view, at + 9, c.firstKey.offset);
      writeLe64(view, at + 17, c.logical);
      writeLe64(view, at + 25, c.generation);
    });
    const block: TreeBlock = { logical, physical: e.volumeOffset!, level, owner: root.id, nritems: children.length, data, view };
    this.cache.set(logical, block);
    this.rebuilt.set(logical, children.length);
    return block;
  }

  /** Every tree block in the metadata chunks the image holds whose checksum, address and fsid are good. */
  private foundBlocks(): Map<number, FoundBlock[]> {
    if (this.found) return this.found;
    const found = new Map<number, FoundBlock[]>();
    const seen = new Set<number>();
    const { nodeSize } = this.sb;
    for (const chunk of this.chunks.metadataChunks()) {
      for (const stripe of chunk.stripes) {
        if (stripe.offset + chunk.length > this.volume.size) continue;
        for (const run of this.volume.extents(stripe.offset, chunk.length)) {
          if (!run.data) continue;
          const first = Math.ceil((run.offset - stripe.offset) / nodeSize) * nodeSize + stripe.offset;
          for (let physical = first; physical + nodeSize <= run.offset + run.length; physical += nodeSize) {
            const logical = chunk.logical + (physical - stripe.offset);
            if (seen.has(logical)) continue;
            const data = this.volume.read(physical, nodeSize);
            const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
            if (le64(view, 0x30) !== logical || !this.sb.metadataFsid.every((x, i) => x === data[0x20 + i])) continue;
            if (!checksumMatches(this.sb.csumType, data.subarray(0x20), data)) continue;
            const nritems = view.getUint32(0x60, true);
            if (nritems === 0 || le64(view, 0x50) > this.sb.generation) continue;
            seen.add(logical);
            const owner = le64(view, 0x58);
            const list = found.get(owner) ?? [];
            list.push({ logical, level: data[0x64]!, generation: le64(view, 0x50), firstKey: readKey(view, HEADER_SIZE) });
            found.set(owner, list);
          }
        }
      }
    }
    this.found = found;
    return found;
  }

  /** The item with the greatest key at most `key`, or undefined. */
  atOrBefore(root: TreeRoot, key: Key): Item | undefined {
    let logical = root.logical;
    const path: number[] = [];
    for (let level = root.level; ; level--) {
      if (path.includes(logical)) throw new FsError(this.volume.name, undefined, `${root.name}: a loop in the tree at block ${withCommas(logical)}`);
      path.push(logical);
      const block = this.blockOf(root, logical, level);
      let slot = this.lastAtOrBelow(block, key, false);
      if (level === 0) return slot >= 0 ? this.itemAt(block, slot) : undefined;
      if (slot < 0) slot = 0;
      logical = this.childAt(block, slot);
    }
  }

  /**
   * Every tree block of the tree the image does not hold, without reading leaves (their presence
   * is the image's bitmap): interior nodes are read, a missing one rebuilt when it can be.
   */
  missingBlocks(root: TreeRoot, onMissing: (e: MissingTreeBlock) => void): void {
    const stack: { logical: number; level: number; path: number[]; bounds?: [Key | undefined, Key | undefined] }[] = [{ logical: root.logical, level: root.level, path: [] }];
    while (stack.length > 0) {
      const { logical, level, path, bounds } = stack.pop()!;
      if (path.includes(logical)) throw new FsError(this.volume.name, undefined, `${root.name}: a loop in the tree at block ${withCommas(logical)}`);
      if (level === 0) {
        if (!this.held(logical)) onMissing(new MissingTreeBlock(this.volume.name, logical, this.chunks.map(logical, this.sb.nodeSize)[0]!));
        continue;
      }
      let block: TreeBlock;
      try {
        block = this.blockOf(root, logical, level, bounds);
      } catch (e) {
        if (!(e instanceof MissingTreeBlock)) throw e;
        onMissing(e);
        continue;
      }
      for (let slot = block.nritems - 1; slot >= 0; slot--) {
        const childBounds: [Key, Key | undefined] = [this.keyAt(block, slot), slot + 1 < block.nritems ? this.keyAt(block, slot + 1) : bounds?.[1]];
        stack.push({ logical: this.childAt(block, slot), level: level - 1, path: [...path, logical], bounds: childBounds });
      }
    }
  }
}
