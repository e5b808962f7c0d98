import { ImageError, UsageError } from "../errors.ts";
import type { DataRun } from "../formats/image.ts";
import { diskParts, type DiskLayout, type DiskPartition } from "./disk-volume.ts";
import { ntfsBackupBootSector } from "./ntfs-boot.ts";

const RAW_CHUNK = 4 << 20;

/** What a disk input reads in order: table sectors and partitions, from `base` (a partition's start) on. */
export interface DiskSpan {
  layout: DiskLayout;
  parts: ReturnType<typeof diskParts>;
  /** where the span starts on the disk */
  base: number;
  size: number;
}

/** The whole disk, or one partition of it (by number or name) as a volume of its own. */
export function diskSpan(layout: DiskLayout, partition?: DiskPartition): DiskSpan {
  let parts = diskParts(layout);
  if (partition !== undefined) {
    if (partition.content.kind === "container") throw new UsageError(`${partition.name} is the extended partition: it holds the logical ones; name one of those`);
    return { layout, parts: parts.filter((x) => x.kind === "partition" && x.partition === partition), base: partition.start, size: partition.size };
  }
  if (layout.backing) {
    // a raw disk image: all of it, tables and gaps included
    const whole: DiskPartition = { name: layout.name, number: 0, start: 0, size: layout.size, type: "", content: { kind: "volume", volume: layout.backing } };
    parts = [{ kind: "partition", partition: whole, offset: 0, end: layout.size }];
  }
  return { layout, parts, base: 0, size: layout.size };
}

/**
 * Partitions the span covers that were not saved: they read as zeros (a warning each). One that
 * `parts` lists but whose image is missing is damage: thrown.
 */
export function unsavedPartitions(span: DiskSpan): string[] {
  const warnings: string[] = [];
  for (const x of span.parts) {
    if (x.kind !== "partition" || x.partition.content.kind !== "absent") continue;
    const { reason } = x.partition.content;
    if (reason.startsWith("in parts")) throw new ImageError({ file: span.layout.name }, `${x.partition.name}: ${reason}`);
    warnings.push(`${x.partition.name} was not saved in the backup (${reason}); it reads as zeros`);
  }
  return warnings;
}

/**
 * The span's data in one ascending pass: table sectors, each partition's image decoded straight to
 * its offset, swap headers and NTFS backup boot sectors where they belong. No seek index is
 * needed, so compressed images and pipes work.
 */
export function* diskDataBatches(span: DiskSpan, verify: boolean): Generator<DataRun[], void, undefined> {
  for (const x of span.parts) {
    if (x.kind === "table") yield [{ offset: x.offset - span.base, data: x.table.bytes }];
    else yield* partitionBatches(span.layout, x.partition, x.offset - span.base, verify);
  }
}

/** Bytes of data a pass over the span writes, for progress (each image's header read once more). */
export function spanDataBytes(span: DiskSpan): number {
  const tables = span.parts.reduce((n, x) => n + (x.kind === "table" ? x.table.bytes.length : 0), 0);
  return tables + usedBytesEstimate(span.layout, span.parts);
}

function usedBytesEstimate(layout: DiskLayout, parts: ReturnType<typeof diskParts>): number {
  let n = 0;
  for (const x of parts) {
    if (x.kind !== "partition") continue;
    const c = x.partition.content;
    if (c.kind === "swap") n += c.header.length;
    else if (c.kind === "dd" || c.kind === "volume") n += x.partition.size;
    else if (c.kind === "image") {
      // the header is cheap to read again; the bar is worth it on large disks
      try {
        const img = c.open();
        n += img.info.usedBlocks * img.info.blockSize;
        img.close();
      } catch {
        // the restore itself reports it
      }
    }
  }
  return n + layout.sectorSize;
}

function* partitionBatches(layout: DiskLayout, p: DiskPartition, at: number, verify: boolean): Generator<DataRun[], void, undefined> {
  const c = p.content;
  const ss = layout.sectorSize;
  switch (c.kind) {
    case "container":
    case "absent":
      return;
    case "swap":
      yield [{ offset: at, data: c.header }];
      return;
    case "volume": {
      for (const e of c.volume.extents(0, Math.min(p.size, c.volume.size))) {
        if (!e.data) continue;
        for (let o = e.offset; o < e.offset + e.length; o += RAW_CHUNK) yield [{ offset: at + o, data: c.volume.read(o, Math.min(RAW_CHUNK, e.offset + e.length - o)) }];
      }
      return;
    }
    case "dd": {
      const stream = c.open();
      try {
        const buf = new Uint8Array(RAW_CHUNK);
        let pos = 0;
        for (;;) {
          const n = stream.read(buf);
          if (n === 0) break;
          if (pos + n > p.size) throw new ImageError({ file: c.pieces[0]!, offset: p.size }, `${p.name}: the dd image is longer than its ${p.size}-byte partition`);
          yield [{ offset: at + pos, data: buf.subarray(0, n) }];
          pos += n;
        }
        if (pos < p.size) throw new ImageError({ file: c.pieces[0]!, offset: pos }, `${p.name}: the dd image ends before its ${p.size}-byte partition does`);
      } finally {
        stream.close();
      }
      return;
    }
    case "image": {
      const image = c.open();
      try {
        if (image.info.deviceSize > p.size) {
          throw new ImageError({ file: c.pieces[0]! }, `${p.name}: the image's volume (${image.info.deviceSize} bytes) is larger than the partition (${p.size} bytes)`);
        }
        // the volume's first sector, which may come in more than one run
        const first = new Uint8Array(ss);
        let firstHave = 0;
        let lastWritten = false;
        const lastSector = p.size - ss;
        for (const batch of image.dataBatches({ verify })) {
          for (const r of batch) {
            if (firstHave < ss && r.offset === firstHave) {
              const n = Math.min(ss - firstHave, r.data.length);
              first.set(r.data.subarray(0, n), firstHave);
              firstHave += n;
            }
            if (r.offset + r.data.length > lastSector) lastWritten = true;
          }
          yield batch.map((r) => ({ offset: at + r.offset, data: r.data }));
        }
        const backup = !lastWritten && firstHave === ss ? ntfsBackupBootSector(first, p.size, ss) : undefined;
        if (backup) yield [{ offset: at + lastSector, data: backup }];
      } finally {
        image.close();
      }
      return;
    }
  }
}
