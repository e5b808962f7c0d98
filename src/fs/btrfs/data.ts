// File data of btrfs: EXTENT_DATA runs (inline, regular, prealloc, holes), compressed extents and data checksums from the csum tree.
import { DecompressError, MAX_COMPRESSED, MAX_UNCOMPRESSED, decompressExtent } from "../../btrfs/decompress.ts";
import { EncodedCompression } from "../../btrfs/protocol.ts";
import { withCommas } from "../../errors.ts";
import { FsError } from "../filesystem.ts";
import { checksumMatches } from "./checksum.ts";
import { Compression, EXTENT_CSUM, EXTENT_CSUM_OBJECTID, EXTENT_DATA, ExtentType, type FileExtent, parseFileExtent } from "./items.ts";
import { type Item, MAX_OFFSET, type TreeReader, type TreeRoot } from "./tree.ts";

/** A file's extents, checked, sorted by file offset. */
interface ExtentList {
  key: string;
  extents: FileExtent[];
}

const DECODED_CACHE = 8;
const CSUM_ITEMS_KEPT = 16;

export class FileData {
  private last: ExtentList | undefined;
  /** decoded compressed extents by disk address (and inline ones by item offset) */
  private readonly decoded = new Map<number, Uint8Array>();
  private lastCsums: Item[] = [];
  /** what compressed extents and checked sectors are read into, kept from one read to the next */
  private scratch = new Uint8Array(0);
  private readonly sectorSize: number;
  private readonly csumSize: number;

  constructor(
    private readonly trees: TreeReader,
    private readonly csumRoot: TreeRoot | undefined,
    private readonly verify: boolean,
  ) {
    this.sectorSize = trees.sb.sectorSize;
    this.csumSize = trees.sb.csumSize;
  }

  private get name(): string {
    return this.trees.volume.name;
  }

  extents(tree: TreeRoot, ino: number): FileExtent[] {
    const key = `${tree.logical}:${ino}`;
    if (this.last?.key === key) return this.last.extents;
    const extents: FileExtent[] = [];
    for (const item of this.trees.items(tree, { objectid: ino, type: EXTENT_DATA, offset: 0 }, { objectid: ino, type: EXTENT_DATA, offset: MAX_OFFSET })) {
      const e = parseFileExtent(item, this.name);
      const what = () => `file extent of inode ${ino} at file offset ${withCommas(e.fileOffset)}`;
      if (!Number.isSafeInteger(e.fileOffset + e.numBytes)) throw new FsError(this.name, e.volumeOffset, `${what()} covers ${e.numBytes} bytes, past what a file holds`);
      if (e.compression !== Compression.NONE && e.type !== ExtentType.INLINE && e.diskBytenr !== 0) {
        if (e.ramBytes > MAX_UNCOMPRESSED || e.diskNumBytes > MAX_COMPRESSED) {
          throw new FsError(this.name, e.volumeOffset, `${what()} is compressed with ${withCommas(e.diskNumBytes)} bytes decoding to ${withCommas(e.ramBytes)}; btrfs keeps both at most 128 KiB`);
        }
        if (e.extentOffset + e.numBytes > e.ramBytes) throw new FsError(this.name, e.volumeOffset, `${what()} uses bytes ${withCommas(e.extentOffset)}..${withCommas(e.extentOffset + e.numBytes)} of an extent decoding to ${withCommas(e.ramBytes)}`);
      } else if (e.type !== ExtentType.INLINE && e.diskBytenr !== 0 && e.extentOffset + e.numBytes > e.diskNumBytes) {
        throw new FsError(this.name, e.volumeOffset, `${what()} uses bytes ${withCommas(e.extentOffset)}..${withCommas(e.extentOffset + e.numBytes)} of a ${withCommas(e.diskNumBytes)}-byte disk extent`);
      }
      if (e.type === ExtentType.INLINE && e.ramBytes > MAX_UNCOMPRESSED) throw new FsError(this.name, e.volumeOffset, `${what()} is inline and claims ${withCommas(e.ramBytes)} bytes`);
      const previous = extents[extents.length - 1];
      if (previous && previous.fileOffset + previous.numBytes > e.fileOffset) throw new FsError(this.name, e.volumeOffset, `${what()} overlaps the extent before it`);
      extents.push(e);
    }
    this.last = { key, extents };
    return extents;
  }

  /** The runs of a file holding data (not holes nor prealloc), below `size`. */
  *dataRuns(tree: TreeRoot, ino: number, size: number): Iterable<{ offset: number; length: number }> {
    let run: { offset: number; length: number } | undefined;
    for (const e of this.extents(tree, ino)) {
      if (e.type === ExtentType.PREALLOC || (e.type !== ExtentType.INLINE && e.diskBytenr === 0)) continue;
      const start = e.fileOffset;
      const end = Math.min(size, e.fileOffset + e.numBytes);
      if (end <= start) continue;
      if (run && run.offset + run.length === start) run.length = end - run.offset;
      else {
        if (run) yield run;
        run = { offset: start, length: end - start };
      }
    }
    if (run) yield run;
  }

  /** File bytes [offset, offset + into.length) clipped to `size`: holes and prealloc read as zeros. */
  read(tree: TreeRoot, ino: number, size: number, offset: number, into: Uint8Array, noDataSum = false): number {
    if (offset >= size) return 0;
    const end = Math.min(size, offset + into.length);
    const extents = this.extents(tree, ino);
    /** bytes before this are set; holes, prealloc and what inline data leaves are zeroed as they are passed */
    let setTo = offset;
    const zeroTo = (to: number) => {
      if (to > setTo) into.fill(0, setTo - offset, to - offset);
      setTo = Math.max(setTo, to);
    };
    let lo = 0;
    let hi = extents.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (extents[mid]!.fileOffset + extents[mid]!.numBytes <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < extents.length && extents[i]!.fileOffset < end; i++) {
      const e = extents[i]!;
      const s = Math.max(offset, e.fileOffset);
      const t = Math.min(end, e.fileOffset + e.numBytes);
      if (t <= s) continue;
      if (e.type === ExtentType.INLINE) {
        const bytes = this.inline(e);
        const part = bytes.subarray(Math.min(bytes.length, s - e.fileOffset), Math.min(bytes.length, t - e.fileOffset));
        zeroTo(s);
        into.set(part, s - offset);
        setTo = s + part.length;
      } else if (e.type === ExtentType.PREALLOC || e.diskBytenr === 0) {
        continue;
      } else if (e.compression !== Compression.NONE) {
        const bytes = this.decodedExtent(e, noDataSum);
        zeroTo(s);
        into.set(bytes.subarray(e.extentOffset + s - e.fileOffset, e.extentOffset + t - e.fileOffset), s - offset);
        setTo = t;
      } else {
        zeroTo(s);
        this.readPlain(e.diskBytenr + e.extentOffset + (s - e.fileOffset), into.subarray(s - offset, t - offset), s, noDataSum);
        setTo = t;
      }
    }
    zeroTo(end);
    return end - offset;
  }

  private inline(e: FileExtent): Uint8Array {
    if (e.compression === Compression.NONE) return e.inline!;
    const cached = this.decoded.get(-e.volumeOffset - 1);
    if (cached) return cached;
    const out = new Uint8Array(e.ramBytes);
    this.decode(e.compression, e.inline!, out, e.volumeOffset, () => `inline extent at file offset ${withCommas(e.fileOffset)}`);
    this.remember(-e.volumeOffset - 1, out);
    return out;
  }

  private decodedExtent(e: FileExtent, noDataSum: boolean): Uint8Array {
    const cached = this.decoded.get(e.diskBytenr);
    if (cached && cached.length === e.ramBytes) return cached;
    const physical = this.trees.chunks.map(e.diskBytenr, e.diskNumBytes)[0]!;
    const data = this.volumeBytes(physical, e.diskNumBytes);
    if (!noDataSum) this.checkSums(e.diskBytenr, physical, data, e.fileOffset, true);
    const out = this.decodeBuffer(e.ramBytes);
    this.decode(e.compression, data, out, physical, () => `compressed extent at logical ${withCommas(e.diskBytenr)} (${withCommas(e.diskNumBytes)} bytes, file offset ${withCommas(e.fileOffset)})`);
    this.remember(e.diskBytenr, out);
    return out;
  }

  /** A buffer for a decoded extent: the one the cache is about to drop when it is of the size, else a new one. */
  private decodeBuffer(length: number): Uint8Array {
    if (this.decoded.size < DECODED_CACHE) return new Uint8Array(length);
    const [oldest, bytes] = this.decoded.entries().next().value!;
    this.decoded.delete(oldest);
    return bytes.length === length ? bytes : new Uint8Array(length);
  }

  private remember(key: number, bytes: Uint8Array): void {
    if (this.decoded.size >= DECODED_CACHE) this.decoded.delete(this.decoded.keys().next().value!);
    this.decoded.set(key, bytes);
  }

  private decode(compression: number, data: Uint8Array, out: Uint8Array, volumeOffset: number, what: () => string): void {
    const encoded =
      compression === Compression.ZLIB ? EncodedCompression.ZLIB
      : compression === Compression.ZSTD ? EncodedCompression.ZSTD
      : compression === Compression.LZO ? EncodedCompression.LZO_4K + Math.log2(this.sectorSize / 4096)
      : -1;
    try {
      decompressExtent(encoded, data, out);
    } catch (e) {
      if (!(e instanceof DecompressError)) throw e;
      throw new FsError(this.name, volumeOffset, `${what()} does not decode: ${e.message}`);
    }
  }

  /** Uncompressed bytes at `logical` into `into`, whole sectors checked against the csum tree. */
  private readPlain(logical: number, into: Uint8Array, fileOffset: number, noDataSum: boolean): void {
    const ss = this.sectorSize;
    const first = Math.floor(logical / ss) * ss;
    const last = Math.ceil((logical + into.length) / ss) * ss;
    const physical = this.trees.chunks.map(first, last - first)[0]!;
    if (!this.verify || !this.csumRoot || noDataSum) {
      const head = logical - first;
      const volume = this.trees.volume;
      if (volume.readInto) volume.readInto(physical + head, into);
      else into.set(volume.read(physical + head, into.length));
      return;
    }
    const volume = this.trees.volume;
    if (first === logical && last === logical + into.length && volume.readInto) {
      // whole sectors (extract's and get's reads): checked where they land, no scratch copy
      volume.readInto(physical, into);
      this.checkSums(first, physical, into, fileOffset, false);
      return;
    }
    const data = this.volumeBytes(physical, last - first);
    this.checkSums(first, physical, data, fileOffset - (logical - first), false);
    into.set(data.subarray(logical - first, logical - first + into.length));
  }

  /** Volume bytes [offset, offset + length) in the scratch buffer (valid until the next call), or as the volume returns them. */
  private volumeBytes(offset: number, length: number): Uint8Array {
    const volume = this.trees.volume;
    if (!volume.readInto) return volume.read(offset, length);
    if (this.scratch.length < length) this.scratch = new Uint8Array(Math.max(length, 2 * this.scratch.length));
    const bytes = this.scratch.subarray(0, length);
    volume.readInto(offset, bytes);
    return bytes;
  }

  /** The csum items covering [logical, end): the last ones found when one of them covers it all (one item holds up to a leaf's worth). */
  private csumItems(csumRoot: TreeRoot, logical: number, end: number): Item[] {
    const span = (item: Item) => item.key.offset + Math.floor(item.data.length / this.csumSize) * this.sectorSize;
    const hit = this.lastCsums.find((item) => item.key.offset <= logical && end <= span(item));
    if (hit) return [hit];
    const items: Item[] = [];
    const key = (offset: number) => ({ objectid: EXTENT_CSUM_OBJECTID, type: EXTENT_CSUM, offset });
    const before = this.trees.atOrBefore(csumRoot, key(logical));
    if (before && before.key.objectid === EXTENT_CSUM_OBJECTID && before.key.type === EXTENT_CSUM && before.key.offset < logical) items.push(before);
    for (const item of this.trees.items(csumRoot, key(logical), key(end - 1))) items.push(item);
    this.lastCsums = items.slice(-CSUM_ITEMS_KEPT);
    return items;
  }

  /** Each sector of `data` (at `logical`) against its checksum, where the csum tree has one. */
  private checkSums(logical: number, physical: number, data: Uint8Array, fileOffset: number, compressed: boolean): void {
    if (!this.verify || !this.csumRoot) return;
    const ss = this.sectorSize;
    const end = logical + data.length;
    const check = (item: Item) => {
      const start = item.key.offset;
      const count = Math.floor(item.data.length / this.csumSize);
      const from = Math.max(start, logical);
      const to = Math.min(start + count * ss, end);
      for (let at = from; at < to; at += ss) {
        const sector = data.subarray(at - logical, at - logical + ss);
        const slot = (at - start) / ss;
        if (!checksumMatches(this.trees.sb.csumType, sector, item.data.subarray(slot * this.csumSize, (slot + 1) * this.csumSize))) {
          const where = compressed ? `the compressed extent at file offset ${withCommas(fileOffset)}` : `file offset ${withCommas(fileOffset + (at - logical))}`;
          throw new FsError(this.name, physical + (at - logical), `data checksum mismatch at ${where} (logical ${withCommas(at)}, volume offset ${withCommas(physical + (at - logical))})`);
        }
      }
    };
    for (const item of this.csumItems(this.csumRoot, logical, end)) check(item);
  }
}
