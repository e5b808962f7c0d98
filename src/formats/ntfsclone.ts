// ntfsclone special image (--save-image): ntfs-3g ntfsprogs/ntfsclone.c struct image_hdr,
// open_image() for the versions it accepts and restore_image()/copy_cluster() for the commands.
import { withCommas } from "../errors.ts";
import type { ByteReader } from "../source/byte-reader.ts";
import type { RandomAccessSource } from "../source/chunk-source.ts";
import type { OpenedStream } from "../source/open.ts";
import { UsedBitmap } from "./bitmap.ts";
import { type DataRun, ImageBase, type NtfscloneInfo, type ReadOptions, type UsedRun } from "./image.ts";

/** "\0ntfsclone-image" */
const MAGIC = Uint8Array.from([0, ...Array.from("ntfsclone-image", (c) => c.charCodeAt(0))]);
/** magic, major, minor, cluster_size, device_size, nr_clusters, inuse: the whole header before 10.0 */
const OLD_HEADER_SIZE = 46;
/** ... then le32 offset_to_image_data */
const HEADER_SIZE = 50;
/** 10.0 is the first little-endian-always version; earlier majors were the NTFS version of the volume */
const FIRST_SAFE_MAJOR = 10;
const NEWEST_MAJOR = 10;
const CMD_GAP = 0x00;
const CMD_NEXT = 0x01;
const GAP_SIZE = 9;
/** NTFS allows clusters up to 2 MiB */
const MAX_CLUSTER_SIZE = 2 << 20;
/** how much of the stream one pass of the command parser looks at */
const WINDOW = 1 << 20;

export function detectNtfsclone(head: Uint8Array): boolean {
  if (head.length < OLD_HEADER_SIZE) return false;
  for (let i = 0; i < MAGIC.length; i++) if (head[i] !== MAGIC[i]) return false;
  return true;
}

export interface NtfscloneHeader {
  majorVersion: number;
  minorVersion: number;
  clusterSize: number;
  /** the device the volume was saved from, in bytes */
  deviceSize: number;
  /** clusters of the NTFS volume; the backup boot sector lives in cluster nrClusters */
  nrClusters: number;
  /** used clusters counted by ntfsclone, without the backup boot sector's */
  inuse: number;
  /** where the command stream starts */
  dataOffset: number;
  /** offset_to_image_data as stored (10.x only) */
  storedDataOffset: number | undefined;
}

function readHeader(r: ByteReader): NtfscloneHeader {
  const start = r.position;
  const b = r.view(OLD_HEADER_SIZE, "ntfsclone image header");
  for (let i = 0; i < MAGIC.length; i++) if (b[i] !== MAGIC[i]) r.fail("not an ntfsclone image", 'no "\\0ntfsclone-image" magic', start);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const majorVersion = b[16]!;
  const minorVersion = b[17]!;
  const clusterSize = dv.getUint32(18, true);
  const field = (at: number, name: string, signed = false): number => {
    const v = signed ? dv.getBigInt64(at, true) : dv.getBigUint64(at, true);
    if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) r.fail(`ntfsclone header ${name} is absurd`, String(v), start + at);
    return Number(v);
  };
  const deviceSize = field(22, "device_size");
  const nrClusters = field(30, "nr_clusters", true);
  const inuse = field(38, "inuse");
  if (majorVersion > NEWEST_MAJOR) {
    r.fail("unsupported ntfsclone image version", `${majorVersion}.${minorVersion}; ntfsclone reads up to ${NEWEST_MAJOR}.x`, start + 16);
  }
  if (clusterSize < 512 || clusterSize > MAX_CLUSTER_SIZE || (clusterSize & (clusterSize - 1)) !== 0) {
    r.fail("ntfsclone header cluster_size is not a power of two from 512 to 2 MiB", String(clusterSize), start + 18);
  }
  if (nrClusters * clusterSize > Number.MAX_SAFE_INTEGER) r.fail("ntfsclone header nr_clusters is absurd", String(nrClusters), start + 30);
  if (inuse > nrClusters + 1) r.fail("ntfsclone header inuse exceeds the cluster count", `${inuse} > ${nrClusters} + 1`, start + 38);
  if (deviceSize < nrClusters * clusterSize) {
    r.fail("ntfsclone header device_size is smaller than the volume", `${deviceSize} < ${nrClusters} clusters of ${clusterSize}`, start + 22);
  }
  let dataOffset = OLD_HEADER_SIZE;
  let storedDataOffset: number | undefined;
  if (majorVersion >= FIRST_SAFE_MAJOR) {
    storedDataOffset = new DataView(r.view(4, "ntfsclone header offset_to_image_data").slice().buffer).getUint32(0, true);
    // ntfsclone skips forward to it and never back
    dataOffset = Math.max(HEADER_SIZE, storedDataOffset);
    if (dataOffset > 1 << 20) r.fail("ntfsclone header offset_to_image_data is absurd", String(storedDataOffset), start + 46);
    r.skip(dataOffset - HEADER_SIZE, "ntfsclone header padding");
  }
  return { majorVersion, minorVersion, clusterSize, deviceSize, nrClusters, inuse, dataOffset, storedDataOffset };
}

/**
 * The rules restore_image() applies to the commands, shared by the scan and the data pass:
 * cluster positions, the shortened last cluster, and the bounds it checks.
 */
class CommandWalker {
  /** the next cluster a command applies to */
  pos = 0;
  /** clusters carried in the stream so far */
  clusters = 0;
  /** end in bytes of the furthest cluster written */
  furthestEnd = 0;
  private readonly cs: number;

  constructor(
    private readonly h: NtfscloneHeader,
    private readonly where: { fail(field: string, detail: string, offset: number): never },
  ) {
    this.cs = h.clusterSize;
  }

  /** true once ntfsclone would stop reading (the backup boot sector's cluster is done) */
  get finished(): boolean {
    return this.pos > this.h.nrClusters;
  }

  /** Bytes the cluster at `pos` carries: copy_cluster() shortens the one reaching device_size. */
  clusterBytes(offset: number): number {
    const start = this.pos * this.cs;
    if (start + this.cs < this.h.deviceSize) return this.cs;
    const n = this.h.deviceSize - start;
    if (n < 0) this.where.fail("ntfsclone cluster lies beyond device_size", `cluster ${withCommas(this.pos)}`, offset);
    return n;
  }

  gap(count: number, offset: number): void {
    if (count === 0) this.where.fail("ntfsclone gap of zero clusters", "ntfsclone calls this a bad offset", offset);
    if (count < 0) this.where.fail("ntfsclone gap goes backwards", `${count} clusters (a metadata image out of order is not supported)`, offset);
    if (this.pos + count > this.h.nrClusters) {
      this.where.fail("ntfsclone gap runs past the volume", `cluster ${withCommas(this.pos)} + ${withCommas(count)} > ${withCommas(this.h.nrClusters)}`, offset);
    }
    this.pos += count;
  }

  cluster(bytes: number): void {
    if (bytes > 0) this.furthestEnd = Math.max(this.furthestEnd, this.pos * this.cs + bytes);
    this.pos++;
    this.clusters++;
  }

  /** The stream ended at `offset` before the backup boot sector's cluster: fine only for an image older than 10.1. */
  end(offset: number): void {
    if (this.pos < this.h.nrClusters) {
      this.where.fail("truncated ntfsclone image", `the commands end at cluster ${withCommas(this.pos)} of ${withCommas(this.h.nrClusters)}`, offset);
    }
    // 10.1 on always saves it; a volume without it is a short one, whatever ntfsclone makes of it
    if (hasBackupBootCluster(this.h)) {
      this.where.fail("truncated ntfsclone image", `the backup boot sector's cluster ${withCommas(this.h.nrClusters)} is missing; image version ${this.h.majorVersion}.${this.h.minorVersion} always saves it`, offset);
    }
  }
}

/** Images from 10.1 on end with the cluster of the backup boot sector (cluster nr_clusters). */
function hasBackupBootCluster(h: NtfscloneHeader): boolean {
  return h.majorVersion > 10 || (h.majorVersion === 10 && h.minorVersion >= 1);
}

function readGapCount(b: Uint8Array, at: number): number {
  const lo = (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
  const hi = b[at + 4]! | (b[at + 5]! << 8) | (b[at + 6]! << 16) | (b[at + 7]! << 24);
  return hi * 0x1_0000_0000 + lo;
}

function badCommand(cmd: number): string {
  return `0x${cmd.toString(16).padStart(2, "0")}; expected 0x00 (gap) or 0x01 (cluster)`;
}

export class NtfscloneImage extends ImageBase {
  readonly info: NtfscloneInfo;
  /** built by scan() or while the data is read; undefined until one of them has run */
  private bitmap: UsedBitmap | undefined;
  private scannedClusters: number | undefined;
  private consumed = false;
  private readonly totalBlocks: number;

  constructor(
    private readonly stream: OpenedStream,
    readonly header: NtfscloneHeader,
  ) {
    super();
    const cs = header.clusterSize;
    // clusters 0..nr_clusters: nothing is restored past the backup boot sector's
    this.totalBlocks = header.nrClusters + 1;
    const self = this;
    const base = {
      format: "ntfsclone" as const,
      fsType: "NTFS",
      blockSize: cs,
      totalBlocks: this.totalBlocks,
      checksum: "NONE",
      compression: stream.compression,
      pieces: stream.pieces,
      header,
    };
    const source = stream.randomAccess;
    if (source) this.read = (offset, length) => this.readAt(source, offset, length);
    // the used count and the device size come from a scan, so they are read when asked for
    this.info = Object.defineProperties(base, {
      usedBlocks: { enumerable: true, get: () => self.usedClusterCount() },
      deviceSize: { enumerable: true, get: () => self.deviceSize() },
      scannedClusters: { enumerable: true, get: () => self.scannedClusterCount() },
    }) as unknown as NtfscloneInfo;
  }

  /**
   * The size of `ntfsclone --restore-image -O FILE`: set_filesize() truncates the file to the
   * volume plus 512 bytes, then resets it to 0 while it is still sparse, so the file ends with
   * the last cluster written (device_size when the backup boot sector's cluster is there).
   */
  private deviceSize(): number {
    const h = this.header;
    if (this.bitmap || this.stream.randomAccess) {
      this.scanIfNeeded();
      return this.furthestEnd;
    }
    // a pipe before its data was read: 10.1 on always saves the backup boot sector's cluster;
    // for older images this is an upper bound
    const backupCluster = hasBackupBootCluster(h);
    const lastCluster = h.nrClusters * h.clusterSize;
    return backupCluster ? lastCluster + Math.min(h.clusterSize, h.deviceSize - lastCluster) : lastCluster + 512;
  }

  private furthestEnd = 0;

  private usedClusterCount(): number {
    if (this.bitmap || this.stream.randomAccess) {
      this.scanIfNeeded();
      return this.scannedClusters!;
    }
    // a pipe before its data was read: the header's count and the backup boot sector
    return this.header.inuse + 1;
  }

  /** the scan's count where the commands can be (or have been) walked */
  private scannedClusterCount(): number | undefined {
    return this.bitmap !== undefined || this.stream.randomAccess !== undefined ? this.usedClusterCount() : undefined;
  }

  isUsed(block: number): boolean {
    return this.usedBitmap().isUsed(block);
  }

  usedRuns(): Iterable<UsedRun> {
    return this.usedBitmap().runs();
  }

  private usedBitmap(): UsedBitmap {
    if (!this.bitmap && this.stream.randomAccess) this.scanIfNeeded();
    if (!this.bitmap) throw new Error("the used clusters of an ntfsclone image read from a pipe are known only after its data has been read");
    return this.bitmap;
  }

  /** One pass over the commands of a regular file (or split set), skipping the cluster bytes. */
  private scanIfNeeded(): void {
    if (this.bitmap) return;
    const source = this.stream.randomAccess;
    if (!source) return;
    const h = this.header;
    const bitmap = UsedBitmap.empty(this.totalBlocks);
    const runs = new ClusterRunIndex();
    const fail = (field: string, detail: string, offset: number): never => this.stream.reader.fail(field, detail, offset);
    const walker = new CommandWalker(h, { fail: (field, detail, offset) => fail(field, detail, offset) });
    const buf = new Uint8Array(WINDOW);
    let bufStart = 0;
    let bufLen = 0;
    let p = h.dataOffset;
    let runStart = -1;
    let runEnd = -1;
    const fill = (at: number): void => {
      bufStart = at;
      bufLen = readAtFully(source, buf, at);
    };
    while (!walker.finished) {
      if (p + GAP_SIZE > bufStart + bufLen) {
        fill(p);
        if (bufLen === 0) break;
      }
      const i = p - bufStart;
      const cmd = buf[i]!;
      if (cmd === CMD_NEXT) {
        const n = walker.clusterBytes(p);
        if (p + 1 + n > source.size) fail("truncated ntfsclone cluster", `cluster ${withCommas(walker.pos)} needs ${n} bytes`, p + 1);
        if (walker.pos === runEnd) runEnd++;
        else {
          if (runStart >= 0) bitmap.setRange(runStart, runEnd - runStart);
          runStart = walker.pos;
          runEnd = runStart + 1;
        }
        runs.add(walker.pos, p);
        walker.cluster(n);
        p += 1 + n;
      } else if (cmd === CMD_GAP) {
        if (i + GAP_SIZE > bufLen) fail("truncated ntfsclone gap command", "needs 8 bytes of count", p + 1);
        walker.gap(readGapCount(buf, i + 1), p);
        p += GAP_SIZE;
      } else {
        fail("bad ntfsclone command byte", badCommand(cmd), p);
      }
    }
    if (runStart >= 0) bitmap.setRange(runStart, runEnd - runStart);
    if (!walker.finished) walker.end(p);
    this.bitmap = bitmap;
    this.clusterRuns = runs;
    this.scannedClusters = walker.clusters;
    this.furthestEnd = walker.furthestEnd;
  }

  /** Random access, where the image is an uncompressed file or split set; set up in the constructor. */
  readonly read?: (offset: number, length: number) => Uint8Array;
  /** where each run of consecutive clusters lies in the file; built by the scan */
  private clusterRuns: ClusterRunIndex | undefined;
  /** one window of cluster records, reused by every read */
  private readWindow: Uint8Array | undefined;

  /** Volume bytes [offset, offset+length), unused clusters as zeros, clipped to the restored size. */
  private readAt(source: RandomAccessSource, offset: number, length: number): Uint8Array {
    if (!this.clusterRuns) {
      // the data pass builds the bitmap but not the index: scan once more
      this.bitmap = undefined;
      this.scanIfNeeded();
    }
    const runs = this.clusterRuns!;
    const cs = this.header.clusterSize;
    const record = cs + 1;
    const end = Math.min(this.furthestEnd, offset + length);
    const out = new Uint8Array(Math.max(0, end - offset));
    const window = (this.readWindow ??= new Uint8Array(Math.max(1, Math.floor(WINDOW / record)) * record));
    let pos = offset;
    while (pos < end) {
      const cluster = Math.floor(pos / cs);
      const run = runs.find(cluster);
      const runEnd = run < 0 ? 0 : runs.first[run]! + runs.count[run]!;
      if (cluster >= runEnd) {
        // a gap: zeros up to the next run
        const next = run + 1 < runs.length ? runs.first[run + 1]! * cs : end;
        pos = Math.min(end, next);
        continue;
      }
      // the records of consecutive clusters lie together: one read for a window of them
      const clusters = Math.min(runEnd, Math.ceil(end / cs)) - cluster;
      const records = Math.min(clusters, window.length / record);
      const at = runs.imageOffset[run]! + (cluster - runs.first[run]!) * record;
      const want = (records - 1) * record + 1 + Math.min(cs, end - (cluster + records - 1) * cs);
      const got = readAtFully(source, window.subarray(0, want), at);
      if (got < want) throw new Error(`${source.name}: short read at offset ${at}`);
      for (let i = 0; i < records; i++) {
        const inCluster = pos - (cluster + i) * cs;
        const n = Math.min(cs - inCluster, end - pos);
        const from = i * record + 1 + inCluster;
        out.set(window.subarray(from, from + n), pos - offset);
        pos += n;
      }
    }
    return out;
  }

  /**
   * The clusters, one batch per window of the stream. Consecutive clusters are moved together
   * in the reader's own buffer over the command bytes between them (a memmove, no allocation
   * per cluster), so each run of them is one contiguous DataRun.
   */
  *dataBatches(opts: ReadOptions = {}): Generator<DataRun[], void, undefined> {
    if (this.consumed) throw new Error("the clusters of an ntfsclone image are read once; open it again");
    this.consumed = true;
    const r = this.stream.reader;
    const h = this.header;
    const cs = h.clusterSize;
    const building = this.bitmap ? undefined : UsedBitmap.empty(this.totalBlocks);
    const walker = new CommandWalker(h, r);
    const window = Math.max(WINDOW, 2 * (cs + GAP_SIZE));

    while (!walker.finished) {
      const base = r.position;
      const buf = r.peek(window);
      if (buf.length === 0) {
        walker.end(base);
        break;
      }
      const atStreamEnd = buf.length < window;
      const batch: DataRun[] = [];
      let i = 0;
      let runAt = -1; // where in buf the current run's bytes start
      let runLen = 0;
      let runCluster = 0;
      while (i < buf.length && !walker.finished) {
        const cmd = buf[i]!;
        if (cmd === CMD_NEXT) {
          const n = walker.clusterBytes(base + i);
          if (i + 1 + n > buf.length) {
            if (atStreamEnd) r.fail("truncated ntfsclone cluster", `cluster ${withCommas(walker.pos)} needs ${n} bytes, ${buf.length - i - 1} are left`, base + i + 1);
            break;
          }
          if (runAt >= 0 && walker.pos === runCluster + runLen / cs && runLen % cs === 0) {
            buf.copyWithin(runAt + runLen, i + 1, i + 1 + n);
            runLen += n;
          } else {
            if (runAt >= 0) batch.push({ offset: runCluster * cs, data: buf.subarray(runAt, runAt + runLen) });
            runAt = i + 1;
            runLen = n;
            runCluster = walker.pos;
          }
          building?.set(walker.pos);
          walker.cluster(n);
          i += 1 + n;
        } else if (cmd === CMD_GAP) {
          if (i + GAP_SIZE > buf.length) {
            if (atStreamEnd) r.fail("truncated ntfsclone gap command", "needs 8 bytes of count", base + i + 1);
            break;
          }
          walker.gap(readGapCount(buf, i + 1), base + i);
          i += GAP_SIZE;
        } else {
          r.fail("bad ntfsclone command byte", badCommand(cmd), base + i);
        }
      }
      if (runAt >= 0) batch.push({ offset: runCluster * cs, data: buf.subarray(runAt, runAt + runLen) });
      if (batch.length > 0) yield batch;
      r.skip(i, "ntfsclone commands");
      opts.onProgress?.(r.position);
    }
    if (building) {
      this.bitmap = building;
      this.scannedClusters = walker.clusters;
      this.furthestEnd = walker.furthestEnd;
    }
  }

  close(): void {
    this.stream.reader.close();
  }
}

/**
 * Runs of consecutive clusters and where the first one's command byte lies in the file; cluster
 * i of a run has its command byte i × (cluster size + 1) later. 24 bytes a run, binary-searched.
 */
class ClusterRunIndex {
  first = new Float64Array(64);
  count = new Float64Array(64);
  imageOffset = new Float64Array(64);
  length = 0;

  /** Cluster `cluster` has its command byte at `commandOffset`: it extends the last run or starts one. */
  add(cluster: number, commandOffset: number): void {
    const last = this.length - 1;
    // no command lies between consecutive clusters (a gap of zero clusters is invalid)
    if (last >= 0 && this.first[last]! + this.count[last]! === cluster) {
      this.count[last]!++;
      return;
    }
    if (this.length === this.first.length) {
      this.first = grow(this.first);
      this.count = grow(this.count);
      this.imageOffset = grow(this.imageOffset);
    }
    this.first[this.length] = cluster;
    this.count[this.length] = 1;
    this.imageOffset[this.length] = commandOffset;
    this.length++;
  }

  /** The last run starting at or before `cluster`, or -1. */
  find(cluster: number): number {
    let lo = 0;
    let hi = this.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.first[mid]! <= cluster) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }
}

function grow(a: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> {
  const bigger = new Float64Array(a.length * 2);
  bigger.set(a);
  return bigger;
}

function readAtFully(source: RandomAccessSource, into: Uint8Array, offset: number): number {
  let done = 0;
  while (done < into.length) {
    const n = source.readAt(into.subarray(done), offset + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** Open an ntfsclone image on a stream positioned at its first byte: the header now, the clusters later. */
export function openNtfsclone(stream: OpenedStream): NtfscloneImage {
  return new NtfscloneImage(stream, readHeader(stream.reader));
}
