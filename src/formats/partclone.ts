// partclone image formats 0001 and 0002: partclone IMAGE_FORMATS.md and src/partclone.h
// (image_desc_v1, image_desc_v2), bitmaps as src/partclone.c load_image_bitmap reads them.
import { PARTCLONE_CRC_SEED, partcloneCrc32 } from "../checksum/crc32.ts";
import { ChecksumError, ImageError, type Location, withCommas } from "../errors.ts";
import type { ByteReader } from "../source/byte-reader.ts";
import type { RandomAccessSource } from "../source/chunk-source.ts";
import type { OpenedStream } from "../source/open.ts";
import { BitmapLoader, type BitmapLimits, checkBitmapLimit, UsedBitmap } from "./bitmap.ts";
import { BitmapImage, type DataRun, type PartcloneInfo, type ReadOptions, type UsedRun } from "./image.ts";
import { CHECKSUM_MODES, type ChecksumKind, createStripChecksum, type StripChecksum } from "./partclone-checksum.ts";
import { BlockLocator } from "./block-locator.ts";

/** A checksum strip's blocks are read in chunks of about this size (partclone's default strip, 256 blocks of 4 KiB, in one). */
const STRIP_READ_SIZE = 1 << 20;
/** the largest checksum a mode stores (XXH128) */
const MAX_CHECKSUM_SIZE = 16;

const MAGIC = "partclone-image";
const V1_HEADER_SIZE = 4160;
const V2_HEADER_SIZE = 110;
const V1_BITMAP_MAGIC = "BiTmAgIc";
const ENDIAN_LITTLE = 0xc0de;
const MAX_BLOCK_SIZE = 64 << 20;
const MAX_VOLUME = 2 ** 52;
const BITMAP_MODES: Record<number, string> = { 0x00: "NONE", 0x01: "BIT", 0x08: "BYTE" };

export function detectPartclone(head: Uint8Array): boolean {
  return head.length >= 34 && ascii(head, 0, MAGIC.length) === MAGIC;
}

/** Everything the header says, decoded and checked. */
export interface PartcloneHeader {
  imageVersion: 1 | 2;
  partcloneVersion: string | undefined;
  fsType: string;
  deviceSize: number;
  totalBlocks: number;
  superBlockUsedBlocks: number;
  /** the header's count; the bitmap's own count is what restore uses */
  usedBlocks: number;
  blockSize: number;
  cpuBits: number | undefined;
  checksum: ChecksumKind;
  checksumSize: number;
  blocksPerChecksum: number;
  reseedChecksum: boolean;
  bitmapMode: "NONE" | "BIT" | "BYTE";
  headerCrc: number | undefined;
  headerSize: number;
  /** stream offset of the header's first byte */
  headerStart: number;
}

function ascii(b: Uint8Array, start: number, len: number): string {
  let s = "";
  for (let i = start; i < start + len && b[i] !== 0; i++) s += String.fromCharCode(b[i]!);
  return s;
}

/** A u64 field as a number; anything past 2^53 is not a real disk. */
function u64(r: ByteReader, dv: DataView, at: number, headerStart: number, field: string): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) r.fail(`${field} is absurd`, `${v}`, headerStart + at);
  return Number(v);
}

function readHeader(r: ByteReader): PartcloneHeader {
  const start = r.position;
  const head = r.view(36, "partclone header");
  if (ascii(head, 0, 15) !== MAGIC) r.fail("not a partclone image", "no \"partclone-image\" magic", start);
  const versionText = ascii(head, 30, 4);
  if (versionText === "0001") return readHeaderV1(r, start, head.slice());
  if (versionText !== "0002") r.fail("unsupported partclone image version", JSON.stringify(versionText), start + 30);

  const b = new Uint8Array(V2_HEADER_SIZE);
  b.set(head);
  b.set(r.view(V2_HEADER_SIZE - 36, "partclone header"), 36);
  const dv = new DataView(b.buffer);
  const storedCrc = dv.getUint32(106, true);
  const crc = partcloneCrc32(PARTCLONE_CRC_SEED, b.subarray(0, 106));
  if (crc !== storedCrc) {
    throw new ChecksumError(r.locate(start + 106), "header crc mismatch", `stored 0x${hex32(storedCrc)}, computed 0x${hex32(crc)}`);
  }
  const endian = dv.getUint16(34, true);
  if (endian !== ENDIAN_LITTLE) r.fail("image made on a big-endian machine", `endianess 0x${endian.toString(16)}`, start + 34);

  const modeNumber = dv.getUint16(96, true);
  const mode = CHECKSUM_MODES[modeNumber];
  if (!mode) r.fail("unknown checksum mode", `0x${modeNumber.toString(16)}`, start + 96);
  const checksumSize = dv.getUint16(98, true);
  if (checksumSize !== mode.size) r.fail("checksum size does not match the checksum mode", `${checksumSize} for ${mode.name}`, start + 98);
  const bitmapNumber = b[105]!;
  const bitmapMode = BITMAP_MODES[bitmapNumber];
  if (!bitmapMode) r.fail("unknown bitmap mode", `0x${bitmapNumber.toString(16)}`, start + 105);
  const h: PartcloneHeader = {
    imageVersion: 2,
    partcloneVersion: ascii(b, 16, 14),
    fsType: ascii(b, 36, 16),
    deviceSize: u64(r, dv, 52, start, "fs total size"),
    totalBlocks: u64(r, dv, 60, start, "fs total blocks"),
    superBlockUsedBlocks: u64(r, dv, 68, start, "fs used blocks"),
    usedBlocks: u64(r, dv, 76, start, "fs used blocks (bitmap)"),
    blockSize: dv.getUint32(84, true),
    cpuBits: dv.getUint16(94, true),
    checksum: mode.name as ChecksumKind,
    checksumSize,
    blocksPerChecksum: dv.getUint32(100, true),
    reseedChecksum: b[104] !== 0,
    bitmapMode: bitmapMode as PartcloneHeader["bitmapMode"],
    headerCrc: storedCrc,
    headerSize: V2_HEADER_SIZE,
    headerStart: start,
  };
  if (h.checksum !== "NONE" && h.blocksPerChecksum === 0) r.fail("blocks per checksum is 0 with a checksum", undefined, start + 100);
  checkGeometry(r, h, start, { blockSize: 84, totalBlocks: 60, usedBlocks: 76, deviceSize: 52 });
  return h;
}

function readHeaderV1(r: ByteReader, start: number, head: Uint8Array): PartcloneHeader {
  const b = new Uint8Array(V1_HEADER_SIZE);
  b.set(head);
  b.set(r.view(64 - 36, "partclone 0001 header"), 36);
  r.skip(V1_HEADER_SIZE - 64, "partclone 0001 header");
  const dv = new DataView(b.buffer);
  const h: PartcloneHeader = {
    imageVersion: 1,
    partcloneVersion: undefined,
    fsType: ascii(b, 15, 15),
    blockSize: dv.getInt32(36, true),
    deviceSize: u64(r, dv, 40, start, "fs total size"),
    totalBlocks: u64(r, dv, 48, start, "fs total blocks"),
    superBlockUsedBlocks: u64(r, dv, 56, start, "fs used blocks"),
    usedBlocks: u64(r, dv, 56, start, "fs used blocks"),
    cpuBits: undefined,
    checksum: "CRC32_0001",
    checksumSize: 4,
    blocksPerChecksum: 1,
    reseedChecksum: false,
    bitmapMode: "BYTE",
    headerCrc: undefined,
    headerSize: V1_HEADER_SIZE,
    headerStart: start,
  };
  checkGeometry(r, h, start, { blockSize: 36, totalBlocks: 48, usedBlocks: 56, deviceSize: 40 });
  return h;
}

function checkGeometry(
  r: ByteReader,
  h: PartcloneHeader,
  start: number,
  at: { blockSize: number; totalBlocks: number; usedBlocks: number; deviceSize: number },
): void {
  if (h.blockSize <= 0 || h.blockSize > MAX_BLOCK_SIZE) r.fail("invalid block size", `${h.blockSize}`, start + at.blockSize);
  // files and devices are sized in 52 bits here (node:fs), and no partclone'd file system is near
  if (h.deviceSize > MAX_VOLUME) r.fail("fs total size is beyond the 4 PiB imgtool can restore", withCommas(h.deviceSize), start + at.deviceSize);
  if (h.usedBlocks > h.totalBlocks) {
    r.fail("used blocks exceed total blocks", `${withCommas(h.usedBlocks)} > ${withCommas(h.totalBlocks)}`, start + at.usedBlocks);
  }
  const blocksBytes = h.totalBlocks * h.blockSize;
  if (!Number.isSafeInteger(blocksBytes)) r.fail("total blocks × block size overflows", undefined, start + at.totalBlocks);
  if (blocksBytes > h.deviceSize) {
    r.fail("fs total size is smaller than its blocks", `${withCommas(h.deviceSize)} < ${withCommas(h.totalBlocks)} × ${h.blockSize}`, start + at.deviceSize);
  }
}

function hex32(v: number): string {
  return (v >>> 0).toString(16).padStart(8, "0");
}

/** The bitmap section: its bytes on disk and, for BIT mode, the stored crc. */
function readBitmap(r: ByteReader, h: PartcloneHeader, limits: BitmapLimits): { bitmap: UsedBitmap; crc: number | undefined; bytes: number } {
  const total = h.totalBlocks;
  if (h.bitmapMode === "NONE") return { bitmap: UsedBitmap.full(total), crc: undefined, bytes: 0 };
  checkBitmapLimit(r, total, limits, h.headerStart + (h.imageVersion === 2 ? 60 : 48));
  const loader = new BitmapLoader(total);
  if (h.bitmapMode === "BIT") {
    // read a page at a time into the bitmap, never whole into a buffer of its own
    const size = Math.ceil(total / 8);
    checkRoom(r, size + 4, "bitmap");
    const at = r.position;
    let crc = PARTCLONE_CRC_SEED;
    for (let have = 0; have < size; ) {
      const chunk = r.chunk(Math.min(size - have, CHUNK));
      if (chunk.length === 0) r.fail("truncated bitmap", `needs ${withCommas(size)} bytes, the stream ends after ${withCommas(have)}`);
      crc = partcloneCrc32(crc, chunk);
      loader.append(chunk);
      have += chunk.length;
    }
    const stored32 = le32(r.view(4, "bitmap crc"));
    if (crc !== stored32) {
      throw new ChecksumError(r.locate(at + size), "bitmap crc mismatch", `stored 0x${hex32(stored32)}, computed 0x${hex32(crc)}`);
    }
    return { bitmap: loader.finish(), crc: stored32, bytes: size + 4 };
  }
  // BYTE: one byte a block, 1 = used (anything else counts as free, as partclone reads it), then the magic
  checkRoom(r, total + V1_BITMAP_MAGIC.length, "bitmap");
  const bitmap = loader.finish();
  for (let done = 0; done < total; ) {
    const chunk = r.chunk(Math.min(total - done, CHUNK));
    if (chunk.length === 0) r.fail("truncated bitmap", `block ${withCommas(done)} of ${withCommas(total)}`);
    for (let i = 0; i < chunk.length; i++) if (chunk[i] === 1) bitmap.set(done + i);
    done += chunk.length;
  }
  const magicAt = r.position;
  if (ascii(r.view(8, "bitmap magic"), 0, 8) !== V1_BITMAP_MAGIC) r.fail("bitmap magic BiTmAgIc missing", undefined, magicAt);
  return { bitmap, crc: undefined, bytes: total + 8 };
}

const CHUNK = 1 << 20;

function le32(b: Uint8Array): number {
  return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
}

/** Refuse a length the file cannot hold before reading it (only where the size is known). */
function checkRoom(r: ByteReader, bytes: number, field: string): void {
  const size = r.source.size;
  if (size !== undefined && r.position + bytes > size) {
    r.fail(`truncated ${field}`, `needs ${withCommas(bytes)} bytes, the file has ${withCommas(size - r.position)} left`);
  }
}

export class PartcloneImage extends BitmapImage {
  readonly info: PartcloneInfo;
  readonly dataStart: number;
  protected readonly headerUsedBlocks: number | undefined;
  private consumed = false;
  private locator: BlockLocator | undefined;

  constructor(
    private readonly stream: OpenedStream,
    readonly header: PartcloneHeader,
    readonly bitmap: UsedBitmap,
    bitmapCrc: number | undefined,
    bitmapBytes: number,
    /** bytes of checksum after each strip (v1 images from old 64-bit builds stored 8) */
    private readonly checksumSize: number,
  ) {
    super();
    const r = stream.reader;
    this.dataStart = r.position;
    const used = bitmap.count();
    const h = header;
    const bs = h.blockSize;
    const strips = h.checksum === "NONE" ? 0 : Math.ceil(used / h.blocksPerChecksum);
    const dataBytes = used * bs + strips * checksumSize;
    if (r.source.size !== undefined && stream.compression.length === 0 && this.dataStart + dataBytes > r.source.size) {
      r.fail(
        "truncated image",
        `the bitmap has ${withCommas(used)} used blocks, needing ${withCommas(dataBytes)} bytes of data; the file has ${withCommas(r.source.size - this.dataStart)}`,
        r.source.size,
      );
    }
    // format 0001's count comes from the super-block, not the bitmap
    this.headerUsedBlocks = h.imageVersion === 2 ? h.usedBlocks : undefined;
    const source = stream.randomAccess;
    if (source) {
      this.read = (offset, length) => this.readAt(source, offset, length);
      this.readInto = (offset, into) => {
        const locator = this.locate();
        this.verifyStrips(locator, source, offset, into.length);
        locator.readInto(this.fromCheckedChunk(source), offset, into, this.info.deviceSize);
      };
    }
    this.info = {
      format: "partclone",
      fsType: h.fsType,
      blockSize: bs,
      totalBlocks: h.totalBlocks,
      usedBlocks: used,
      deviceSize: h.deviceSize,
      checksum: h.checksum,
      compression: stream.compression,
      pieces: stream.pieces,
      header: h,
      checksumBytes: checksumSize,
      bitmapBytes,
      bitmapCrc,
      dataStart: this.dataStart,
    };
  }

  protected headerUsedBlocksField(): { at: Location; name: string } {
    // only format 0002 has a count of its own (at 76, after the super-block's at 68)
    return { at: this.stream.reader.locate(this.header.headerStart + 76), name: "header field fs used blocks (bitmap)" };
  }

  *dataBatches(opts: ReadOptions = {}): Generator<DataRun[], void, undefined> {
    if (this.consumed) throw new Error("the blocks of a partclone image are read once; open it again");
    this.consumed = true;
    const r = this.stream.reader;
    const h = this.header;
    const bs = h.blockSize;
    const verify = opts.verify !== false;
    const csSize = h.checksum === "NONE" ? 0 : this.checksumSize;
    const perStrip = csSize === 0 ? Infinity : h.blocksPerChecksum;
    const checksum: StripChecksum | undefined = verify ? createStripChecksum(h.checksum, bs) : undefined;
    const usedTotal = this.info.usedBlocks;

    const runs = this.bitmap.runs();
    let run = runs.next();
    let runBlock = 0; // blocks of the current run already produced
    let runBytesInBlock = 0; // bytes of the current block already produced
    let batch: DataRun[] = [];
    let blocksDone = 0;

    while (blocksDone < usedTotal) {
      const stripBlocks = Math.min(perStrip, usedTotal - blocksDone);
      const stripFirstBlock = blocksDone;
      let stripBytes = stripBlocks * bs;
      while (stripBytes > 0) {
        if (r.buffered === 0 && batch.length > 0) {
          yield batch;
          batch = [];
          opts.onProgress?.(r.position);
        }
        const chunk = r.chunk(stripBytes);
        if (chunk.length === 0) r.fail("truncated image data", `block ${withCommas(blocksDone)} of ${withCommas(usedTotal)} used blocks`);
        checksum?.update(chunk);
        stripBytes -= chunk.length;
        // hand the chunk out along the bitmap's runs
        let at = 0;
        while (at < chunk.length) {
          const { firstBlock, blockCount } = run.value as UsedRun;
          const runLeft = (blockCount - runBlock) * bs - runBytesInBlock;
          const n = Math.min(runLeft, chunk.length - at);
          batch.push({ offset: (firstBlock + runBlock) * bs + runBytesInBlock, data: chunk.subarray(at, at + n) });
          at += n;
          const produced = runBytesInBlock + n;
          runBlock += Math.floor(produced / bs);
          runBytesInBlock = produced % bs;
          if (runBlock === blockCount) {
            run = runs.next();
            runBlock = 0;
          }
        }
      }
      blocksDone += stripBlocks;
      if (csSize > 0) {
        if (r.buffered < csSize && batch.length > 0) {
          yield batch;
          batch = [];
          opts.onProgress?.(r.position);
        }
        const storedAt = r.position;
        const stored = r.view(csSize, "checksum");
        if (checksum) {
          if (!checksum.matches(stored.subarray(0, Math.min(csSize, 16)))) {
            const first = this.blockNumberOfUsed(stripFirstBlock);
            throw new ChecksumError(
              r.locate(storedAt),
              `${h.checksum} checksum mismatch`,
              `blocks ${withCommas(first)}..${withCommas(this.blockNumberOfUsed(blocksDone - 1))} (volume offset ${withCommas(first * bs)}); stored ${hexBytes(stored.subarray(0, Math.min(csSize, 16)))}, computed ${checksum.hex()}`,
            );
          }
          if (h.reseedChecksum) checksum.reset();
        }
      }
    }
    if (batch.length > 0) yield batch;
    opts.onProgress?.(r.position);
  }

  /** The block number of the n-th used block (0-based), for messages. */
  private blockNumberOfUsed(n: number): number {
    let seen = 0;
    for (const { firstBlock, blockCount } of this.bitmap.runs()) {
      if (n < seen + blockCount) return firstBlock + (n - seen);
      seen += blockCount;
    }
    return -1;
  }

  /**
   * Random access, where the image is a file or split set, plain or through a seek index. The
   * checksum strips holding the blocks a read touches are checked (each once) where a strip's
   * checksum stands alone (reseeded: every image since partclone 0.3 by default).
   */
  readonly read?: (offset: number, length: number) => Uint8Array;
  readonly readInto?: (offset: number, into: Uint8Array) => void;
  /** one bit per checksum strip already found good */
  private verifiedStrips: Uint8Array | undefined;
  /** a strip is read through this in chunks (a strip may be any number of blocks) */
  private stripScratch: Uint8Array | undefined;
  /** the image bytes the last chunk checked left in stripScratch: reads within them are served from there */
  private checkedChunk = { at: 0, length: 0 };
  /** the image's source, reading what it can from the chunk just checked */
  private checkedSource: RandomAccessSource | undefined;
  private readonly storedChecksum = new Uint8Array(MAX_CHECKSUM_SIZE);

  private locate(): BlockLocator {
    this.locator ??= new BlockLocator(this.bitmap, this.header.blockSize, this.dataStart, this.header.checksum === "NONE" ? 0 : this.checksumSize, this.header.blocksPerChecksum);
    return this.locator;
  }

  private readAt(source: RandomAccessSource, offset: number, length: number): Uint8Array {
    const locator = this.locate();
    this.verifyStrips(locator, source, offset, length);
    return locator.read(this.fromCheckedChunk(source), offset, length, this.info.deviceSize);
  }

  /** `source`, with reads that fall in the chunk verifyStrips has just read and checked served from its copy (a strip is not read twice). */
  private fromCheckedChunk(source: RandomAccessSource): RandomAccessSource {
    if (this.checkedSource) return this.checkedSource;
    const through = Object.create(source) as RandomAccessSource;
    through.readAt = (into, offset) => {
      const c = this.checkedChunk;
      if (offset >= c.at && offset + into.length <= c.at + c.length) {
        into.set(this.stripScratch!.subarray(offset - c.at, offset - c.at + into.length));
        return into.length;
      }
      return source.readAt(into, offset);
    };
    this.checkedSource = through;
    return through;
  }

  private verifyStrips(locator: BlockLocator, source: RandomAccessSource, offset: number, length: number): void {
    const h = this.header;
    if (h.checksum === "NONE" || !h.reseedChecksum) return;
    const bs = h.blockSize;
    const end = Math.min(this.info.deviceSize, offset + length);
    if (end <= offset) return;
    const first = locator.rank(Math.floor(offset / bs));
    const after = locator.rank(Math.min(h.totalBlocks, Math.ceil(end / bs)));
    if (after <= first) return;
    const per = h.blocksPerChecksum;
    const used = this.info.usedBlocks;
    const csSize = this.checksumSize;
    this.verifiedStrips ??= new Uint8Array(Math.ceil(Math.ceil(used / per) / 8));
    const check = createStripChecksum(h.checksum, bs)!;
    for (let strip = Math.floor(first / per); strip <= Math.floor((after - 1) / per); strip++) {
      if (this.verifiedStrips[strip >> 3]! & (1 << (strip & 7))) continue;
      const blocks = Math.min(per, used - strip * per);
      const at = this.dataStart + strip * (per * bs + csSize);
      this.checkedChunk = { at: 0, length: 0 };
      check.reset();
      const dataBytes = blocks * bs;
      const readSize = Math.max(bs, Math.floor(STRIP_READ_SIZE / bs) * bs);
      if (!this.stripScratch || this.stripScratch.length < readSize + csSize) this.stripScratch = new Uint8Array(readSize + csSize);
      for (let done = 0; done < dataBytes; ) {
        const n = Math.min(readSize, dataBytes - done);
        // the last chunk takes the stored checksum along
        const stored = done + n === dataBytes ? csSize : 0;
        const chunk = this.stripScratch.subarray(0, n + stored);
        const got = source.readAt(chunk, at + done);
        if (got < chunk.length) {
          throw new ImageError(source.locate(at + done + got), "truncated image data", `short read: checksum strip ${withCommas(strip)} ends early`);
        }
        check.update(chunk.subarray(0, n));
        if (stored > 0) this.storedChecksum.set(chunk.subarray(n, n + Math.min(csSize, MAX_CHECKSUM_SIZE)));
        done += n;
      }
      const stored = this.storedChecksum.subarray(0, Math.min(csSize, MAX_CHECKSUM_SIZE));
      if (!check.matches(stored)) {
        const firstBlock = this.blockNumberOfUsed(strip * per);
        throw new ChecksumError(
          source.locate(at + blocks * bs),
          `${h.checksum} checksum mismatch`,
          `blocks ${withCommas(firstBlock)}..${withCommas(this.blockNumberOfUsed(strip * per + blocks - 1))} (volume offset ${withCommas(firstBlock * bs)}); stored ${hexBytes(stored)}, computed ${check.hex()}`,
        );
      }
      this.verifiedStrips[strip >> 3]! |= 1 << (strip & 7);
      // the strip's last chunk is still in the scratch: its data bytes are checked now
      const lastChunk = dataBytes - ((dataBytes - 1) % readSize) - 1;
      this.checkedChunk = { at: at + lastChunk, length: dataBytes - lastChunk };
    }
  }

  close(): void {
    this.stream.reader.close();
  }
}

function hexBytes(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * Images of format 0001 made by some old 64-bit builds stored each CRC in 8 bytes. Tell the
 * two apart by the file size where it is known, else by which layout makes the first block's
 * stored CRC read back.
 */
function v1ChecksumSize(r: ByteReader, h: PartcloneHeader, used: number): number {
  const size = r.source.size;
  const left = size === undefined ? undefined : size - r.position;
  if (left !== undefined) {
    if (left >= used * (h.blockSize + 8) && left < used * (h.blockSize + 8) + h.blockSize) return 8;
    return 4;
  }
  if (used === 0) return 4;
  const probe = r.peek(2 * h.blockSize + 16);
  if (probe.length < h.blockSize + 8) return 4;
  const first = createStripChecksum("CRC32_0001", h.blockSize)!;
  first.update(probe.subarray(0, h.blockSize));
  const after = probe.subarray(h.blockSize);
  const upperZero = after[4] === 0 && after[5] === 0 && after[6] === 0 && after[7] === 0;
  if (first.matches(after) && upperZero && used > 1 && probe.length >= 2 * h.blockSize + 16) {
    // both layouts fit the first CRC: the second block decides
    const as8 = createStripChecksum("CRC32_0001", h.blockSize)!;
    as8.update(probe.subarray(0, h.blockSize));
    as8.update(probe.subarray(h.blockSize + 8, 2 * h.blockSize + 8));
    if (as8.matches(probe.subarray(2 * h.blockSize + 8))) return 8;
  }
  return 4;
}

/** Open a partclone image on a stream positioned at its first byte: header and bitmap now, data later. */
export function openPartclone(stream: OpenedStream, limits: BitmapLimits = {}): PartcloneImage {
  const r = stream.reader;
  const header = readHeader(r);
  const { bitmap, crc, bytes } = readBitmap(r, header, limits);
  const checksumSize = header.imageVersion === 1 ? v1ChecksumSize(r, header, bitmap.count()) : header.checksumSize;
  return new PartcloneImage(stream, header, bitmap, crc, bytes, checksumSize);
}
