// partimage 0.6.x images: partimage src/shared/common.h (CVolumeHeader, CMainHeader, CMainTail),
// src/client/fs/fs_base.h (CLocalHeader, CCheck) and src/client/fs/fs_*.h (CInfo*Header); the order
// of the parts as src/client/misc.cpp restorePartition() and fs_base.cpp restoreFromImage() read them.
import fs from "node:fs";
import { ChecksumError, ImageError, type Location, withCommas } from "../errors.ts";
import { ByteReader } from "../source/byte-reader.ts";
import type { ChunkSource } from "../source/chunk-source.ts";
import { openFileSource } from "../source/file.ts";
import { FileSource, SplitSource } from "../source/pieces.ts";
import { type OpenedStream, openStream } from "../source/open.ts";
import { BitmapLoader, type BitmapLimits, checkBitmapLimit, type UsedBitmap } from "./bitmap.ts";
import { BlockLocator } from "./block-locator.ts";
import { BitmapImage, type DataRun, type PartimageInfo, type ReadOptions } from "./image.ts";

const VOLUME_MAGIC = "PaRtImAgE-VoLuMe";
/** the image format versions partimage 0.6.x restores (imagefile.cpp openReading) */
const CURRENT_FORMAT = "0.6.1";
const OLDEST_FORMAT = "0.6.0";
const VOLUME_HEADER_SIZE = 512;
const MAIN_HEADER_SIZE = 16384;
const LOCAL_HEADER_SIZE = 16384;
const INFO_SIZE = 16384;
const TAIL_SIZE = 16384;
/** sizeof(CMbr), which restorePartition() skips (not dwMbrSize) */
const MBR_SIZE = 2048;
const MBR_DATA_SIZE = 512;
const MAX_MBRS = 4096;
/** CCheck { char cMagic[4]; DWORD dwCRC; QWORD qwPos; } with natural alignment */
const CHECK_SIZE = 16;
const CHECK_FREQUENCY = 65536;
/** COPYBUF_SIZE: a used stretch is read this many bytes of blocks at a time, and qwPos names the stretch */
const COPY_BUFFER = 262144;
const MAGIC_MBR = "MAGIC-BEGIN-MBRBACKUP";
const MAGIC_LOCAL_HEADER = "MAGIC-BEGIN-LOCALHEADER";
const MAGIC_BITMAP = "MAGIC-BEGIN-BITMAP";
const MAGIC_INFO = "MAGIC-BEGIN-INFO";
const MAGIC_DATA = "MAGIC-BEGIN-DATABLOCKS";
const MAGIC_TAIL = "MAGIC-BEGIN-TAIL";
const MAX_EXTENSION = 16 << 20;
/** dwCompression: the compression partimage itself applied (common.h COMPRESS_*) */
export const PARTIMAGE_COMPRESSION_MODES = ["none", "gzip", "bzip2", "lzo"];
// strings in the headers are whatever bytes the saving machine had; latin1 maps each byte to one character
const LATIN1 = new TextDecoder("windows-1252");

export function detectPartimage(head: Uint8Array): boolean {
  return head.length >= VOLUME_HEADER_SIZE && cString(head, 0, 32) === VOLUME_MAGIC;
}

function cString(b: Uint8Array, start: number, len: number): string {
  let end = start;
  while (end < start + len && b[end] !== 0) end++;
  return LATIN1.decode(b.subarray(start, end));
}

function u64(dv: DataView, at: number, fail: (field: string, detail: string, offset: number) => never, field: string, base: number): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${field} is absurd`, String(v), base + at);
  return Number(v);
}

/** partimage's "CRC" of a header: the sum of its bytes as signed chars, in 32 bits (CImage::writeCRC). */
function signedByteSum(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < b.length; i++) s += (b[i]! << 24) >> 24;
  return s >>> 0;
}

/**
 * The sum of all bytes as unsigned, partimage's whole-image check (CImage::m_qwCRC). Words are
 * added two bytes per 16-bit lane, 128 words between folds so that no lane overflows.
 */
export function byteSum(b: Uint8Array): number {
  const n = b.length;
  let i = 0;
  let total = 0;
  const head = Math.min(n, (4 - (b.byteOffset & 3)) & 3);
  for (; i < head; i++) total += b[i]!;
  const words = (n - i) >>> 2;
  if (words > 0) {
    const w = new Uint32Array(b.buffer, b.byteOffset + i, words);
    let k = 0;
    while (k < words) {
      const end = Math.min(words, k + 128);
      let lanes = 0;
      for (; k < end; k++) {
        const x = w[k]!;
        lanes += (x & 0x00ff00ff) + ((x >>> 8) & 0x00ff00ff);
      }
      total += (lanes & 0xffff) + (lanes >>> 16);
    }
    i += words * 4;
  }
  for (; i < n; i++) total += b[i]!;
  return total;
}

export interface PartimageVolumeHeader {
  version: string;
  number: number;
  identificator: bigint;
}

function readVolumeHeader(r: ByteReader, file: string): PartimageVolumeHeader {
  const start = r.position;
  const b = r.view(VOLUME_HEADER_SIZE, "partimage volume header");
  if (cString(b, 0, 32) !== VOLUME_MAGIC) r.fail("not a partimage volume", `no "${VOLUME_MAGIC}" magic in ${file}`, start);
  const version = cString(b, 32, 64);
  if (version > CURRENT_FORMAT) r.fail("partimage image format newer than 0.6.1", JSON.stringify(version), start + 32);
  if (version < CURRENT_FORMAT && version !== OLDEST_FORMAT) r.fail("partimage image format older than 0.6.0", JSON.stringify(version), start + 32);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { version, number: dv.getUint32(96, true), identificator: dv.getBigUint64(100, true) };
}

function volumeName(base: string, n: number): string {
  return `${base}.${String(n).padStart(3, "0")}`;
}

/** The name before ".NNN" when `stream` is one volume file of a set, else undefined. */
function volumeBase(stream: OpenedStream): string | undefined {
  if (stream.pieces.length !== 1) return undefined;
  const m = /^(.*)\.\d{3,}$/.exec(stream.pieces[0]!);
  return m && fs.existsSync(stream.pieces[0]!) ? m[1] : undefined;
}

interface OpenedVolume {
  name: string;
  number: number;
  /** offset in the joined stream of the volume's first byte after its header */
  start: number;
  stream: OpenedStream;
}

/**
 * The volumes of one image joined into one stream without their volume headers: each
 * NAME.NNN is a file of its own (compressed on its own), and a volume ends wherever
 * partimage's writer crossed the size limit. A volume that cannot be opened ends the stream
 * early; `stopped` says why, for when the image turns out to need more.
 */
class VolumeChain implements ChunkSource {
  readonly size = undefined;
  readonly volumes: OpenedVolume[] = [];
  stopped: ImageError | undefined;
  private stoppedDetail = "";
  private current: OpenedVolume | undefined;
  private position = 0;

  constructor(
    first: OpenedStream,
    firstHeader: PartimageVolumeHeader,
    private readonly base: string | undefined,
  ) {
    this.current = { name: first.pieces[0]!, number: firstHeader.number, start: 0, stream: first };
    this.volumes.push(this.current);
    this.identificator = firstHeader.identificator;
  }

  private readonly identificator: bigint;

  get name(): string {
    return this.volumes[0]!.name;
  }

  get lastNumber(): number {
    return this.volumes[this.volumes.length - 1]!.number;
  }

  read(into: Uint8Array): number {
    while (this.current) {
      const r = this.current.stream.reader;
      let n: number;
      if (r.buffered > 0) {
        const c = r.chunk(into.length);
        into.set(c);
        n = c.length;
      } else {
        n = r.source.read(into);
      }
      if (n > 0) {
        this.position += n;
        return n;
      }
      this.openNext();
    }
    return 0;
  }

  private openNext(): void {
    const done = this.current!;
    const number = done.number + 1;
    this.current = undefined;
    // the stream openImage() handed over is closed by it if opening fails, so keep it until close()
    if (done.number !== this.volumes[0]!.number) done.stream.reader.close();
    if (this.base === undefined) {
      this.stoppedDetail = "only a file named NAME.NNN can be followed by the next volume";
      this.stopped = new ImageError({ file: done.name }, `the image continues in volume ${String(number).padStart(3, "0")}`, this.stoppedDetail);
      return;
    }
    const name = volumeName(this.base, number);
    if (!fs.existsSync(name)) {
      this.stoppedDetail = `${done.name} ends and the image continues`;
      this.stopped = new ImageError({ file: name }, "missing volume of the partimage set", this.stoppedDetail);
      return;
    }
    let stream: OpenedStream | undefined;
    try {
      stream = openStream(name);
      const start = stream.reader.position;
      const h = readVolumeHeader(stream.reader, name);
      if (h.number !== number) stream.reader.fail("wrong partimage volume number", `the header says ${h.number}, expected ${number}`, start + 96);
      // zero in images from older versions
      if (h.identificator !== this.identificator && h.identificator !== 0n && this.identificator !== 0n) {
        stream.reader.fail("partimage volume of another image", `identificator 0x${h.identificator.toString(16)}, volume 000 has 0x${this.identificator.toString(16)}`, start + 100);
      }
    } catch (e) {
      stream?.reader.close();
      if (!(e instanceof ImageError)) throw e;
      this.stoppedDetail = e.message;
      this.stopped = e;
      return;
    }
    this.current = { name, number, start: this.position, stream };
    this.volumes.push(this.current);
  }

  locate(offset: number): Location {
    let v = this.volumes[0]!;
    for (const candidate of this.volumes) if (candidate.start <= offset) v = candidate;
    return v.stream.reader.locate(offset - v.start + VOLUME_HEADER_SIZE);
  }

  /** Close every volume still open; `keepFirst` leaves the first to whoever handed it over. */
  close(keepFirst = false): void {
    const first = this.volumes[0]!;
    if (this.current && this.current !== first) this.current.stream.reader.close();
    if (!keepFirst && !this.firstClosed) first.stream.reader.close();
    this.firstClosed ||= !keepFirst;
    this.current = undefined;
  }

  private firstClosed = false;

  /** A truncation inside the joined stream is really the volume that could not be opened. */
  explain(e: unknown): unknown {
    if (this.stopped && e instanceof ImageError && e.field.startsWith("truncated")) {
      return new ImageError(this.stopped.where, this.stopped.field, `${this.stoppedDetail}; ${e.message}`);
    }
    return e;
  }
}

/**
 * The uncompressed volume files of a set read as the joined stream VolumeChain gives: each file
 * without its volume header, one after the other; undefined unless every volume is a regular file
 * that starts with a plain volume header.
 */
function openVolumeData(names: string[]): SplitSource | undefined {
  const opened: FileSource[] = [];
  const head = new Uint8Array(VOLUME_HEADER_SIZE);
  for (const name of names) {
    const source = openFileSource(name);
    if (!(source instanceof FileSource) || source.readAt(head, 0) < VOLUME_HEADER_SIZE || !detectPartimage(head)) {
      source.close();
      for (const v of opened) v.close();
      return undefined;
    }
    opened.push(source);
  }
  return new SplitSource(opened, { pieceHeader: VOLUME_HEADER_SIZE, equalPieces: false });
}

export interface PartimageMainHeader {
  fileSystem: string;
  description: string;
  originalDevice: string;
  firstImageFile: string;
  uname: { sysname: string; nodename: string; release: string; version: string; machine: string };
  compression: number;
  flags: number;
  created: string;
  partitionSize: number;
  hostname: string;
  version: string;
  mbrCount: number;
  mbrSize: number;
  encryption: number;
  checksum: number;
}

export interface PartimageLocalHeader {
  /** stream offset of the struct */
  at: number;
  blockSize: number;
  usedBlocks: number;
  blocksCount: number;
  bitmapSize: number;
  badBlocks: number;
  label: string;
  checksum: number;
}

/** Reads through the joined volumes, adding every byte partimage counts to the whole-image sum. */
class Parser {
  sum = 0;
  constructor(readonly r: ByteReader) {}

  take(n: number, field: string): Uint8Array {
    const b = this.r.view(n, field);
    this.sum += byteSum(b);
    return b;
  }

  /** The bitmap, a chunk at a time into the pages it keeps: never held whole in a buffer of its own as well. */
  bitmap(bytes: number, totalBlocks: number): UsedBitmap {
    const loader = new BitmapLoader(totalBlocks);
    for (let have = 0; have < bytes; ) {
      const chunk = this.r.chunk(Math.min(bytes - have, 1 << 20));
      if (chunk.length === 0) this.r.fail("truncated partimage bitmap", `needs ${withCommas(bytes)} bytes, the stream ends after ${withCommas(have)}`);
      this.sum += byteSum(chunk);
      loader.append(chunk);
      have += chunk.length;
    }
    return loader.finish();
  }

  magic(expected: string): void {
    const at = this.r.position;
    const b = this.take(expected.length, `partimage ${expected} magic`);
    for (let i = 0; i < expected.length; i++) {
      if (b[i] !== expected.charCodeAt(i)) this.r.fail(`missing partimage ${expected} magic`, `found ${JSON.stringify(LATIN1.decode(b))}`, at);
    }
  }

  /** A header struct followed by its signed-byte sum (CImage::readAndCheckCRC). */
  checkedStruct(n: number, field: string): { bytes: Uint8Array; at: number; checksum: number } {
    const at = this.r.position;
    const bytes = this.take(n, field).slice();
    const crcAt = this.r.position;
    const stored = new DataView(this.take(4, `${field} checksum`).slice().buffer).getUint32(0, true);
    const computed = signedByteSum(bytes);
    if (stored !== computed) {
      throw new ChecksumError(this.r.locate(crcAt), `${field} checksum mismatch`, `stored 0x${hex32(stored)}, computed 0x${hex32(computed)}`);
    }
    return { bytes, at, checksum: stored };
  }
}

function hex32(n: number): string {
  return (n >>> 0).toString(16).padStart(8, "0");
}

function readMainHeader(p: Parser): PartimageMainHeader {
  const { bytes: b, at, checksum } = p.checkedStruct(MAIN_HEADER_SIZE, "partimage main header");
  const dv = new DataView(b.buffer);
  const fail = (field: string, detail: string, offset: number): never => p.r.fail(field, detail, offset);
  const s = (start: number, len: number) => cString(b, start, len);
  const tm = (i: number) => dv.getUint32(9548 + 4 * i, true);
  const two = (n: number) => String(n).padStart(2, "0");
  const h: PartimageMainHeader = {
    fileSystem: s(0, 512),
    description: s(512, 4096),
    originalDevice: s(4608, 512),
    firstImageFile: s(5120, 4095),
    uname: { sysname: s(9215, 65), nodename: s(9280, 65), release: s(9345, 65), version: s(9410, 65), machine: s(9475, 65) },
    compression: dv.getUint32(9540, true),
    flags: dv.getUint32(9544, true),
    created: `${tm(5) + 1900}-${two(tm(4) + 1)}-${two(tm(3))} ${two(tm(2))}:${two(tm(1))}:${two(tm(0))}`,
    partitionSize: u64(dv, 9592, fail, "partimage main header qwPartSize", at),
    hostname: s(9600, 128),
    version: s(9728, 64),
    mbrCount: dv.getUint32(9792, true),
    mbrSize: dv.getUint32(9796, true),
    encryption: dv.getUint32(9800, true),
    checksum,
  };
  if (h.encryption !== 0) fail("encrypted partimage image", `dwEncryptAlgo ${h.encryption}; partimage itself cannot restore it`, at + 9800);
  if (h.mbrCount > MAX_MBRS) fail("partimage main header dwMbrCount is absurd", String(h.mbrCount), at + 9792);
  return h;
}

function readLocalHeader(p: Parser): PartimageLocalHeader {
  const { bytes: b, at, checksum } = p.checkedStruct(LOCAL_HEADER_SIZE, "partimage local header");
  const dv = new DataView(b.buffer);
  const fail = (field: string, detail: string, offset: number): never => p.r.fail(field, detail, offset);
  const h: PartimageLocalHeader = {
    at,
    blockSize: u64(dv, 0, fail, "partimage local header qwBlockSize", at),
    usedBlocks: u64(dv, 8, fail, "partimage local header qwUsedBlocks", at),
    blocksCount: u64(dv, 16, fail, "partimage local header qwBlocksCount", at),
    bitmapSize: u64(dv, 24, fail, "partimage local header qwBitmapSize", at),
    badBlocks: u64(dv, 32, fail, "partimage local header qwBadBlocksCount", at),
    label: cString(b, 40, 64),
    checksum,
  };
  if (h.blockSize === 0 || h.blockSize > 16 << 20) fail("partimage block size is absurd", String(h.blockSize), at);
  if (h.blocksCount * h.blockSize > Number.MAX_SAFE_INTEGER) fail("partimage block count is absurd", String(h.blocksCount), at + 16);
  if (h.bitmapSize < Math.ceil(h.blocksCount / 8)) {
    fail("partimage bitmap is smaller than the block count", `${withCommas(h.bitmapSize)} bytes for ${withCommas(h.blocksCount)} blocks`, at + 24);
  }
  if (h.bitmapSize > Math.ceil(h.blocksCount / 8) + (1 << 20)) fail("partimage bitmap size is absurd", `${withCommas(h.bitmapSize)} bytes for ${withCommas(h.blocksCount)} blocks`, at + 24);
  return h;
}

/** The file-system specific info block (fs_ext2.h CInfoExt2Header, fs_fat.h CInfoFatHeader, fs_ntfs.h CInfoNtfsHeader, fs_reiser.h CInfoReiserHeader). */
export type PartimageFsInfo =
  | {
      fs: "ext2";
      groups: number;
      firstBlock: number;
      blockSize: number;
      blocksPerGroup: number;
      featureCompat: number;
      featureIncompat: number;
      featureRoCompat: number;
      revLevel: number;
      uuid: string;
    }
  | {
      fs: "fat";
      totalSectors: number;
      clusters: number;
      sectorsPerFat: number;
      usedClusters: number;
      bytesPerSector: number;
      sectorsPerCluster: number;
      /** number of FATs */
      count: number;
    }
  | { fs: "ntfs"; totalSectors: number; mftLcn: number; clusterSize: number; bytesPerSector: number }
  | { fs: "reiserfs"; version: number };

function readFsInfo(fileSystem: string, b: Uint8Array): PartimageFsInfo | undefined {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u32 = (at: number) => dv.getUint32(at, true);
  if (fileSystem === "ext2fs" || fileSystem === "ext3fs") {
    const uuid = Array.from(b.subarray(40, 56), (x) => x.toString(16).padStart(2, "0")).join("");
    return {
      fs: "ext2",
      groups: u32(0),
      firstBlock: u32(8),
      blockSize: u32(12),
      blocksPerGroup: u32(20),
      featureCompat: u32(24),
      featureIncompat: u32(28),
      featureRoCompat: u32(32),
      revLevel: u32(36),
      uuid: `${uuid.slice(0, 8)}-${uuid.slice(8, 12)}-${uuid.slice(12, 16)}-${uuid.slice(16, 20)}-${uuid.slice(20)}`,
    };
  }
  if (fileSystem.startsWith("fat")) {
    return {
      fs: "fat",
      totalSectors: u32(0),
      clusters: u32(4),
      sectorsPerFat: u32(16),
      usedClusters: u32(28),
      bytesPerSector: dv.getUint16(48, true),
      sectorsPerCluster: b[54]!,
      count: b[55]!,
    };
  }
  if (fileSystem === "ntfs") {
    return { fs: "ntfs", totalSectors: Number(dv.getBigUint64(0, true)), mftLcn: Number(dv.getBigUint64(8, true)), clusterSize: u32(20), bytesPerSector: dv.getUint16(24, true) };
  }
  if (fileSystem.startsWith("reiserfs")) return { fs: "reiserfs", version: u32(0) };
  return undefined;
}

export class PartimageImage extends BitmapImage {
  readonly info: PartimageInfo;
  readonly dataStart: number;
  private consumed = false;

  constructor(
    private readonly chain: VolumeChain,
    private readonly parser: Parser,
    readonly volumeHeader: PartimageVolumeHeader,
    readonly main: PartimageMainHeader,
    readonly local: PartimageLocalHeader,
    readonly bitmap: UsedBitmap,
    fsInfo: PartimageFsInfo | undefined,
    fsInfoChecksum: number,
    compression: OpenedStream["compression"],
    pieces: string[],
  ) {
    super();
    const r = parser.r;
    this.dataStart = r.position;
    const bs = local.blockSize;
    const used = bitmap.count();
    // blocks tile the 64 KiB between checks only when the block size divides it
    if (compression.length === 0 && chain.volumes[0]!.stream.randomAccess && CHECK_FREQUENCY % bs === 0) {
      this.read = (offset, length) => this.readAt(offset, length);
    }
    this.info = {
      format: "partimage",
      fsType: main.fileSystem,
      blockSize: bs,
      totalBlocks: local.blocksCount,
      usedBlocks: used,
      deviceSize: main.partitionSize,
      checksum: "CRC32",
      compression,
      pieces,
      volumeHeader,
      mainHeader: main,
      localHeader: local,
      fsInfo,
      fsInfoChecksum,
      dataStart: this.dataStart,
    };
  }

  protected get headerUsedBlocks(): number {
    return this.local.usedBlocks;
  }

  protected headerUsedBlocksField(): { at: Location; name: string } {
    return { at: this.parser.r.locate(this.local.at + 8), name: "partimage local header qwUsedBlocks" };
  }

  /**
   * The blocks as restoreUsedBlocksToDisk() reads them: used stretches of the bitmap, cut into
   * COPY_BUFFER-sized pieces, with a CCheck after every 64 KiB of data (CRC32 of those bytes and
   * the first block of the piece it falls in); then the tail with the sum of every byte.
   */
  *dataBatches(opts: ReadOptions = {}): Generator<DataRun[], void, undefined> {
    if (this.consumed) throw new Error("the blocks of a partimage image are read once; open it again");
    this.consumed = true;
    try {
      yield* this.readData(opts);
    } catch (e) {
      throw this.chain.explain(e);
    }
  }

  private *readData(opts: ReadOptions): Generator<DataRun[], void, undefined> {
    const r = this.parser.r;
    const verify = opts.verify !== false;
    const bs = this.local.blockSize;
    const blocksPerPiece = Math.max(1, Math.floor(COPY_BUFFER / bs));
    let sum = this.parser.sum;
    let crc = 0;
    let inCheck = 0;
    let batch: DataRun[] = [];
    let last: DataRun | undefined;

    for (const run of this.bitmap.runs()) {
      const runEnd = run.firstBlock + run.blockCount;
      for (let stretchStart = run.firstBlock; stretchStart < runEnd; stretchStart += blocksPerPiece) {
        let offset = stretchStart * bs;
        let left = Math.min(blocksPerPiece, runEnd - stretchStart) * bs;
        if (offset + left > this.info.deviceSize) {
          r.fail("partimage block lies beyond the partition size", `block ${withCommas(stretchStart)} of ${bs} bytes, partition ${withCommas(this.info.deviceSize)} bytes`);
        }
        while (left > 0) {
          if (r.buffered === 0 && batch.length > 0) {
            yield batch;
            batch = [];
            last = undefined;
            opts.onProgress?.(r.position);
          }
          const piece = r.chunk(Math.min(left, CHECK_FREQUENCY - inCheck));
          if (piece.length === 0) r.fail("truncated partimage data", `block ${withCommas(stretchStart)}, ${withCommas(left)} bytes of this stretch missing`);
          if (verify) {
            crc = Bun.hash.crc32(piece, crc);
            sum += byteSum(piece);
          }
          if (last && last.offset + last.data.length === offset && last.data.buffer === piece.buffer && last.data.byteOffset + last.data.length === piece.byteOffset) {
            last.data = new Uint8Array(piece.buffer, last.data.byteOffset, last.data.length + piece.length);
          } else {
            last = { offset, data: piece };
            batch.push(last);
          }
          offset += piece.length;
          left -= piece.length;
          inCheck += piece.length;
          if (inCheck === CHECK_FREQUENCY) {
            if (r.buffered < CHECK_SIZE && batch.length > 0) {
              yield batch;
              batch = [];
              opts.onProgress?.(r.position);
            }
            last = undefined;
            const at = r.position;
            const check = r.view(CHECK_SIZE, "partimage local check");
            if (check[0] !== 0x43 || check[1] !== 0x48 || check[2] !== 0x4b) r.fail("missing partimage local check", `no "CHK" magic after 64 KiB of data at block ${withCommas(stretchStart)}`, at);
            if (verify) {
              sum += byteSum(check);
              const dv = new DataView(check.buffer, check.byteOffset, CHECK_SIZE);
              const stored = dv.getUint32(4, true);
              const pos = Number(dv.getBigUint64(8, true));
              if (pos !== stretchStart) r.fail("partimage local check in the wrong place", `it names block ${withCommas(pos)}, the data is at block ${withCommas(stretchStart)}`, at + 8);
              if (stored !== crc >>> 0) {
                throw new ChecksumError(r.locate(at + 4), "partimage CRC32 mismatch", `the 64 KiB of data ending at volume offset ${withCommas(offset)} (block ${withCommas(Math.floor((offset - 1) / bs))}); stored 0x${hex32(stored)}, computed 0x${hex32(crc)}`);
              }
            }
            crc = 0;
            inCheck = 0;
          }
        }
      }
    }
    if (batch.length > 0) yield batch;
    opts.onProgress?.(r.position);

    const tailMagicAt = r.position;
    const tailMagic = r.view(MAGIC_TAIL.length, "partimage tail magic");
    for (let i = 0; i < MAGIC_TAIL.length; i++) {
      if (tailMagic[i] !== MAGIC_TAIL.charCodeAt(i)) r.fail(`missing partimage ${MAGIC_TAIL} magic`, "the data does not end where the bitmap says", tailMagicAt);
    }
    sum += byteSum(tailMagic);
    const tailAt = r.position;
    const tail = r.view(TAIL_SIZE, "partimage tail");
    const dv = new DataView(tail.buffer, tail.byteOffset, 16);
    const storedSum = dv.getBigUint64(0, true);
    const lastVolume = dv.getUint32(8, true);
    if (verify && BigInt(sum) % 2n ** 64n !== storedSum) {
      throw new ChecksumError(r.locate(tailAt), "partimage image checksum mismatch", `the sum of all bytes is ${sum}, the tail says ${storedSum}`);
    }
    if (lastVolume !== this.chain.lastNumber) {
      r.fail("partimage tail names another last volume", `volume ${lastVolume}, the image ended in volume ${this.chain.lastNumber}`, tailAt + 8);
    }
  }

  /** Random access, where every volume is an uncompressed file. Checksums are not checked here. */
  readonly read?: (offset: number, length: number) => Uint8Array;
  private volumeData: SplitSource | undefined;
  private locator: BlockLocator | undefined;

  private readAt(offset: number, length: number): Uint8Array {
    if (!this.volumeData) {
      const opened = openVolumeData(this.info.pieces);
      if (!opened) throw new ImageError({ file: this.info.pieces[0]! }, "partimage volumes are not all plain files", "random access needs every volume uncompressed");
      this.volumeData = opened;
    }
    const bs = this.local.blockSize;
    this.locator ??= new BlockLocator(this.bitmap, bs, this.dataStart, CHECK_SIZE, CHECK_FREQUENCY / bs);
    return this.locator.read(this.volumeData, offset, length, this.info.deviceSize);
  }

  close(): void {
    this.volumeData?.close();
    this.parser.r.close();
  }
}

/**
 * Open a partimage image on a stream positioned at its first byte (any volume of a set: the
 * others are opened by name, NAME.000 first): headers and bitmap now, the blocks later.
 */
export function openPartimage(stream: OpenedStream, limits: BitmapLimits = {}): PartimageImage {
  const base = volumeBase(stream);
  let first = stream;
  let header = readVolumeHeader(stream.reader, stream.pieces[0]!);
  if (header.number !== 0) {
    if (base === undefined) stream.reader.fail("not the first volume of a partimage set", `this is volume ${header.number}; give NAME.000`, 96);
    const name = volumeName(base, 0);
    if (!fs.existsSync(name)) throw new ImageError({ file: name }, "missing volume of the partimage set", `${stream.pieces[0]} is volume ${header.number}`);
    first = openStream(name);
    try {
      header = readVolumeHeader(first.reader, name);
      if (header.number !== 0) first.reader.fail("wrong partimage volume number", `the header says ${header.number}, expected 0`, 96);
    } catch (e) {
      first.reader.close();
      throw e;
    }
  }
  const pieces = [first.pieces[0]!];
  if (base !== undefined) {
    for (let n = 1; fs.existsSync(volumeName(base, n)); n++) pieces.push(volumeName(base, n));
    const own = new RegExp(`^${baseName(base).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.(\\d{3,})$`);
    const later = fs.readdirSync(dirOf(base)).filter((f) => Number(own.exec(f)?.[1] ?? -1) > pieces.length);
    if (later.length > 0) throw new ImageError({ file: volumeName(base, pieces.length) }, "missing volume of the partimage set", `found ${later.sort()[0]} after it`);
  }
  const chain = new VolumeChain(first, header, base);
  const reader = new ByteReader(chain);
  try {
    const p = new Parser(reader);
    const main = readMainHeader(p);
    p.magic(MAGIC_MBR);
    for (let i = 0; i < main.mbrCount; i++) {
      const at = reader.position;
      const mbr = p.take(MBR_SIZE, "partimage MBR backup");
      const stored = new DataView(mbr.buffer, mbr.byteOffset, MBR_SIZE).getUint32(MBR_DATA_SIZE, true);
      const computed = signedByteSum(mbr.subarray(0, MBR_DATA_SIZE));
      if (stored !== computed) throw new ChecksumError(reader.locate(at + MBR_DATA_SIZE), `partimage MBR backup ${i} checksum mismatch`, `stored 0x${hex32(stored)}, computed 0x${hex32(computed)}`);
    }
    for (let i = 0; i < 10; i++) {
      p.magic(`MAGIC-BEGIN-EXT00${i}`);
      const at = reader.position;
      const length = new DataView(p.take(4, "partimage extension length").slice().buffer).getUint32(0, true);
      if (length > MAX_EXTENSION) reader.fail("partimage extension length is absurd", String(length), at);
      if (length > 0) p.take(length, "partimage extension");
    }
    p.magic(MAGIC_LOCAL_HEADER);
    const local = readLocalHeader(p);
    checkBitmapLimit(reader, local.blocksCount, limits, local.at + 16);
    p.magic(MAGIC_BITMAP);
    const bitmap = p.bitmap(local.bitmapSize, local.blocksCount);
    p.magic(MAGIC_INFO);
    const fsInfo = p.checkedStruct(INFO_SIZE, "partimage file system info");
    p.magic(MAGIC_DATA);
    const image = new PartimageImage(chain, p, header, main, local, bitmap, readFsInfo(main.fileSystem, fsInfo.bytes), fsInfo.checksum, first.compression, pieces);
    if (first !== stream) stream.reader.close();
    return image;
  } catch (e) {
    // openImage() closes the stream it handed over
    chain.close(first === stream);
    throw chain.explain(e);
  }
}

function dirOf(p: string): string {
  const i = p.lastIndexOf("/");
  return i < 0 ? "." : p.slice(0, i) || "/";
}

function baseName(p: string): string {
  return p.slice(p.lastIndexOf("/") + 1);
}

/**
 * Every volume file of the partimage set that `pieces` starts (NAME.000, NAME.001, ... as far as
 * they exist), found by name as partimage itself does while it reads; `pieces` itself otherwise.
 */
export function partimageVolumeSet(pieces: readonly string[]): string[] {
  const files = [...pieces];
  for (const piece of pieces) {
    const m = /^(.*)\.(\d{3,})$/.exec(piece);
    if (!m) continue;
    for (let n = 0; n < 1000; n++) {
      const sibling = volumeName(m[1]!, n);
      if (!fs.existsSync(sibling)) break;
      if (!files.includes(sibling)) files.push(sibling);
    }
  }
  return files;
}

/** The set's name without the ".NNN" of its volume files. */
export function partimageSetName(firstVolume: string): string {
  return firstVolume.replace(/\.\d{3}$/, "");
}
