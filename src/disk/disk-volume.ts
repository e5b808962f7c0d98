import fs from "node:fs";
import { ImageError, UsageError } from "../errors.ts";
import type { Image } from "../formats/image.ts";
import type { OpenOptions } from "../source/open.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { checkRange, type Extent, imageVolume, type Volume } from "../volume/volume.ts";
import { ntfsBackupBootSector } from "./ntfs-boot.ts";

/** What a partition of a disk holds, as far as the backup knows. */
export type PartitionContent =
  /** a partclone/ntfsclone/partimage image (any compression, split or not) */
  | { kind: "image"; pieces: string[]; fs: string; tool: string; open(opts?: OpenOptions): Image }
  /** a raw `dd` of the partition, maybe compressed (Clonezilla's sdXN.dd-img) */
  | { kind: "dd"; pieces: string[]; open(opts?: OpenOptions): RawStream }
  /** not imaged: its first page written from the saved UUID and label */
  | { kind: "swap"; header: Uint8Array; uuid?: string; label?: string }
  /** bytes already on a disk (a partition of a raw disk image) */
  | { kind: "volume"; volume: Volume }
  /** the extended partition of an MBR: its EBRs are table sectors, the rest belongs to logicals */
  | { kind: "container" }
  /** nothing saved: reads as zeros */
  | { kind: "absent"; reason: string };

/** A raw byte stream of a partition; random access when it is an uncompressed regular file. */
export interface RawStream {
  /** fills `into` from the stream, returns the bytes read (0 at the end) */
  read(into: Uint8Array): number;
  readAt?(into: Uint8Array, offset: number): number;
  compression: string[];
  close(): void;
}

export interface DiskPartition {
  /** "sda1", "nvme0n1p2", "cciss-c0d0p1" */
  name: string;
  number: number;
  /** in bytes */
  start: number;
  size: number;
  /** "83" (MBR, hex) or a type GUID */
  type: string;
  content: PartitionContent;
}

export interface TableBytes {
  offset: number;
  bytes: Uint8Array;
  /** "MBR (sda-mbr)", "GPT backup", ... */
  what: string;
}

export interface DiskLayout {
  /** "sda", "nvme0n1", or a file name */
  name: string;
  size: number;
  sectorSize: number;
  label: "gpt" | "dos";
  tables: TableBytes[];
  partitions: DiskPartition[];
  /** the disk's bytes as they are (a raw disk image): what the disk reads as, tables and gaps included */
  backing?: Volume;
}

/** Everything that occupies bytes of the disk, ascending; overlaps are an error naming both. */
export function diskParts(layout: DiskLayout): ({ kind: "table"; table: TableBytes; offset: number; end: number } | { kind: "partition"; partition: DiskPartition; offset: number; end: number })[] {
  const parts = [
    ...layout.tables.map((table) => ({ kind: "table" as const, table, offset: table.offset, end: table.offset + table.bytes.length })),
    ...layout.partitions.filter((p) => p.content.kind !== "container").map((partition) => ({ kind: "partition" as const, partition, offset: partition.start, end: partition.start + partition.size })),
  ].sort((a, b) => a.offset - b.offset || a.end - b.end);
  const label = (p: (typeof parts)[number]) => (p.kind === "table" ? p.table.what : `partition ${p.partition.name}`);
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    if (p.end > layout.size) throw new ImageError({ file: layout.name, offset: p.offset }, `${label(p)} ends past the end of the ${layout.size}-byte disk`);
    const next = parts[i + 1];
    if (next && next.offset < p.end) throw new ImageError({ file: layout.name, offset: next.offset }, `${label(next)} overlaps ${label(p)}`);
  }
  return parts;
}

/** A few bytes as a Volume (table sectors, a swap header). */
export function bytesVolume(name: string, bytes: Uint8Array, blockSize = 512): Volume {
  return {
    size: bytes.length,
    name,
    blockSize,
    read(offset, length) {
      checkRange(this, offset, length);
      return bytes.slice(offset, offset + length);
    },
    *extents(offset, length) {
      checkRange(this, offset, length);
      if (length > 0) yield { offset, length, data: true };
    },
    close() {},
  };
}

export interface Region {
  offset: number;
  volume: Volume;
}

/**
 * Volumes placed at offsets of a larger one, zeros (holes) between them. Regions must be
 * ascending and not overlap; each is clipped to what fits.
 */
export function composeVolume(name: string, size: number, blockSize: number, regions: Region[], onClose: () => void = () => {}): Volume {
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i]!;
    if (r.offset < 0 || r.offset + r.volume.size > size) throw new Error(`${name}: region ${r.volume.name} does not fit`);
    if (i > 0 && r.offset < regions[i - 1]!.offset + regions[i - 1]!.volume.size) throw new Error(`${name}: region ${r.volume.name} overlaps`);
  }
  const firstAt = (offset: number): number => {
    let lo = 0;
    let hi = regions.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const r = regions[mid]!;
      if (r.offset + r.volume.size <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  return {
    size,
    name,
    blockSize,
    read(offset, length) {
      checkRange(this, offset, length);
      const out = new Uint8Array(length);
      const end = offset + length;
      for (let i = firstAt(offset); i < regions.length; i++) {
        const r = regions[i]!;
        if (r.offset >= end) break;
        const from = Math.max(offset, r.offset);
        const to = Math.min(end, r.offset + r.volume.size);
        if (to > from) out.set(r.volume.read(from - r.offset, to - from), from - offset);
      }
      return out;
    },
    *extents(offset, length) {
      checkRange(this, offset, length);
      const end = offset + length;
      let pending: Extent | undefined;
      const emit = function* (e: Extent): Generator<Extent> {
        if (e.length === 0) return;
        if (pending && pending.data === e.data && pending.offset + pending.length === e.offset) {
          pending.length += e.length;
          return;
        }
        if (pending) yield pending;
        pending = { ...e };
      };
      let pos = offset;
      for (let i = firstAt(offset); i < regions.length && pos < end; i++) {
        const r = regions[i]!;
        if (r.offset >= end) break;
        if (r.offset > pos) {
          yield* emit({ offset: pos, length: r.offset - pos, data: false });
          pos = r.offset;
        }
        const to = Math.min(end, r.offset + r.volume.size);
        if (to > pos) for (const e of r.volume.extents(pos - r.offset, to - pos)) yield* emit({ offset: e.offset + r.offset, length: e.length, data: e.data });
        pos = Math.max(pos, to);
      }
      if (pos < end) yield* emit({ offset: pos, length: end - pos, data: false });
      if (pending) yield pending;
    },
    close() {
      for (const r of regions) r.volume.close();
      onClose();
    },
  };
}

/** A window of a volume. */
export function sliceVolume(volume: Volume, offset: number, size: number, name: string, blockSize = volume.blockSize): Volume {
  checkRange(volume, offset, size);
  return {
    size,
    name,
    blockSize,
    read(o, length) {
      checkRange(this, o, length);
      return volume.read(offset + o, length);
    },
    *extents(o, length) {
      checkRange(this, o, length);
      for (const e of volume.extents(offset + o, length)) yield { offset: e.offset - offset, length: e.length, data: e.data };
    },
    close() {},
  };
}

/** A regular file or block device read at any offset; every byte counts as data. The user named it: a symlink (/dev/disk/by-id/...) is followed. */
export function fileVolume(path: string, name = path): Volume & { fd: number } {
  const fd = fs.openSync(path, fs.constants.O_RDONLY);
  const st = fs.fstatSync(fd);
  const size = st.isBlockDevice() ? blockDeviceSize(st) : st.size;
  return {
    fd,
    size,
    name,
    blockSize: 512,
    read(offset, length) {
      checkRange(this, offset, length);
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const n = fs.readSync(fd, out, done, length - done, offset + done);
        if (n === 0) throw new ImageError({ file: name, offset: offset + done }, "file shrank while being read");
        done += n;
      }
      return out;
    },
    *extents(offset, length) {
      checkRange(this, offset, length);
      if (length > 0) yield { offset, length, data: true };
    },
    close() {
      fs.closeSync(fd);
    },
  };
}

/** The size of a block device from sysfs (fstat says 0). */
export function blockDeviceSize(st: fs.Stats): number {
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, "utf8").trim());
  return sectors * 512;
}

/**
 * One partition as a Volume: its image (random access needed) padded with zeros to the
 * partition's size, the NTFS backup boot sector where the image leaves the last sector unused.
 */
export function partitionVolume(layout: DiskLayout, p: DiskPartition, seekIndex: SeekIndexOptions = BUILD_ON_FIRST_USE): Volume {
  const name = `${layout.name} ${p.name}`;
  const c = p.content;
  switch (c.kind) {
    case "volume":
      return c.volume.size === p.size ? c.volume : sliceVolume(c.volume, 0, Math.min(c.volume.size, p.size), name);
    case "swap":
      return composeVolume(name, p.size, 4096, [{ offset: 0, volume: bytesVolume(`${name} swap header`, c.header, 4096) }]);
    case "container":
    case "absent":
      return composeVolume(name, p.size, layout.sectorSize, []);
    case "dd": {
      // compressed: read at random through its seek index
      const stream = c.open({ seekIndex });
      const readAt = stream.readAt;
      if (!readAt) {
        stream.close();
        throw new UsageError(`${p.name}: ${c.pieces[0]} is ${stream.compression.join(" inside ")}-compressed and has no random access; decompress it or use imgtool restore`);
      }
      const raw: Volume = {
        size: p.size,
        name,
        blockSize: layout.sectorSize,
        read(offset, length) {
          checkRange(this, offset, length);
          const out = new Uint8Array(length);
          const n = readAt.call(stream, out, offset);
          if (n < length) throw new ImageError({ file: c.pieces[0]!, offset: offset + n }, "dd image is shorter than its partition");
          return out;
        },
        *extents(offset, length) {
          checkRange(this, offset, length);
          if (length > 0) yield { offset, length, data: true };
        },
        close: () => stream.close(),
      };
      return raw;
    }
    case "image": {
      // read at random: a compressed image through its seek index
      const image = c.open({ seekIndex });
      if (!image.read) {
        image.close();
        throw new UsageError(`${p.name}: ${c.pieces[0]} has no random access (${image.info.compression.join(" inside ") || "not seekable"}); decompress it or use imgtool restore`);
      }
      if (image.info.deviceSize > p.size) {
        image.close();
        throw new ImageError({ file: c.pieces[0]! }, `${p.name}: the image's volume (${image.info.deviceSize} bytes) is larger than the partition (${p.size} bytes)`);
      }
      const inner = imageVolume(image, name);
      const regions: Region[] = [{ offset: 0, volume: inner }];
      const ss = layout.sectorSize;
      const lastSector = p.size - ss;
      const lastUnused = lastSector >= inner.size || [...inner.extents(lastSector, Math.min(ss, inner.size - lastSector))].every((e) => !e.data);
      const backup = lastUnused && inner.size >= ss ? ntfsBackupBootSector(inner.read(0, ss), p.size, ss) : undefined;
      if (backup) {
        if (lastSector < inner.size) {
          // the image covers the last sector but leaves it unused: cut it there
          regions[0] = { offset: 0, volume: sliceVolume(inner, 0, lastSector, name) };
          const close = regions[0].volume.close;
          regions[0].volume.close = () => {
            close();
            inner.close();
          };
        }
        regions.push({ offset: lastSector, volume: bytesVolume(`${name} NTFS backup boot sector`, backup, ss) });
      }
      return composeVolume(name, p.size, inner.blockSize, regions);
    }
  }
}

const BUILD_ON_FIRST_USE: SeekIndexOptions = { mode: "build" };

/** The whole disk as one Volume: table sectors, each partition at its start, zeros elsewhere. */
export function diskVolume(layout: DiskLayout): Volume & { layout: DiskLayout } {
  const regions: Region[] = [];
  try {
    for (const part of diskParts(layout)) {
      if (part.kind === "table") regions.push({ offset: part.offset, volume: bytesVolume(part.table.what, part.table.bytes, layout.sectorSize) });
      else if (part.partition.content.kind !== "absent") regions.push({ offset: part.offset, volume: partitionVolume(layout, part.partition) });
    }
  } catch (e) {
    for (const r of regions) r.volume.close();
    throw e;
  }
  return Object.assign(composeVolume(layout.name, layout.size, layout.sectorSize, regions), { layout });
}
