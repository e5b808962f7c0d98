import fs from "node:fs";
import { ImageError, UsageError } from "../errors.ts";
import type { DataRun } from "../formats/image.ts";
import { Progress } from "../output/progress.ts";
import { openOutput } from "../output/target.ts";
import { blockDeviceSize, diskPieces, type DiskLayout, type DiskPartition } from "./disk-volume.ts";
import { ntfsBackupBootSector } from "./ntfs-boot.ts";

export interface DiskRestoreOptions {
  sparse?: boolean;
  force?: boolean;
  verify?: boolean;
  progress?: boolean;
  /** only this partition, as a volume of its own */
  partition?: string;
  /** told about partitions that were not saved (they read as zeros) */
  onWarning?: (message: string) => void;
}

export interface DiskRestoreResult {
  size: number;
  dataBytes: number;
  output: string;
}

const RAW_CHUNK = 4 << 20;

/**
 * Write the disk (or one partition) in one ascending pass: table sectors, each partition's
 * image decoded straight to its offset, swap headers and NTFS backup boot sectors where they
 * belong. No seek index is needed, so compressed images and stdout work.
 */
export function restoreDisk(layout: DiskLayout, out: string, opts: DiskRestoreOptions = {}): DiskRestoreResult {
  let pieces = diskPieces(layout);
  let base = 0;
  let size = layout.size;
  if (opts.partition !== undefined) {
    const p = layout.partitions.find((q) => q.name === opts.partition || String(q.number) === opts.partition);
    if (!p) throw new UsageError(`${layout.name} has no partition ${opts.partition} (it has ${layout.partitions.map((q) => q.name).join(", ")})`);
    if (p.content.kind === "container") throw new UsageError(`${p.name} is the extended partition: it holds the logical ones; restore those`);
    pieces = pieces.filter((x) => x.kind === "partition" && x.partition === p);
    base = p.start;
    size = p.size;
  } else if (layout.backing) {
    // a raw disk image: all of it, tables and gaps included
    const whole: DiskPartition = { name: layout.name, number: 0, start: 0, size: layout.size, type: "", content: { kind: "volume", volume: layout.backing } };
    pieces = [{ kind: "partition", partition: whole, offset: 0, end: layout.size }];
  }
  for (const x of pieces) {
    if (x.kind === "partition" && x.partition.content.kind === "absent") {
      if (x.partition.content.reason.startsWith("in parts")) throw new ImageError({ file: layout.name }, `${x.partition.name}: ${x.partition.content.reason}`);
      opts.onWarning?.(`${x.partition.name} was not saved in the backup (${x.partition.content.reason}); it is written as zeros`);
    }
  }
  checkDeviceSize(out, size);
  const target = openOutput(out, { sparse: opts.sparse ?? false, force: opts.force ?? false, outputOffset: 0 });
  const showProgress = opts.progress ?? process.stderr.isTTY === true;
  const total = pieces.reduce((n, x) => n + (x.kind === "table" ? x.table.bytes.length : 0), 0);
  // the estimate opens every image header once more: only for a bar someone sees
  const progress = new Progress(showProgress ? Math.max(1, total + usedBytesEstimate(layout, pieces)) : undefined, "restore", showProgress);
  let dataBytes = 0;
  const write = (runs: DataRun[]) => {
    target.writer.writeBatch(runs);
    for (const r of runs) dataBytes += r.data.length;
    progress.update(dataBytes);
  };
  try {
    for (const x of pieces) {
      if (x.kind === "table") write([{ offset: x.offset - base, data: x.table.bytes }]);
      else writePartition(layout, x.partition, x.offset - base, opts.verify !== false, write);
    }
    target.commit(size);
  } catch (e) {
    target.abort();
    throw e;
  }
  progress.finish(dataBytes);
  return { size, dataBytes, output: target.name };
}

function usedBytesEstimate(layout: DiskLayout, pieces: ReturnType<typeof diskPieces>): number {
  let n = 0;
  for (const x of pieces) {
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

function writePartition(layout: DiskLayout, p: DiskPartition, at: number, verify: boolean, write: (runs: DataRun[]) => void): void {
  const c = p.content;
  const ss = layout.sectorSize;
  switch (c.kind) {
    case "container":
    case "absent":
      return;
    case "swap":
      write([{ offset: at, data: c.header }]);
      return;
    case "volume": {
      for (const e of c.volume.extents(0, Math.min(p.size, c.volume.size))) {
        if (!e.data) continue;
        for (let o = e.offset; o < e.offset + e.length; o += RAW_CHUNK) write([{ offset: at + o, data: c.volume.read(o, Math.min(RAW_CHUNK, e.offset + e.length - o)) }]);
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
          write([{ offset: at + pos, data: buf.subarray(0, n) }]);
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
          write(batch.map((r) => ({ offset: at + r.offset, data: r.data })));
        }
        const backup = !lastWritten && firstHave === ss ? ntfsBackupBootSector(first, p.size, ss) : undefined;
        if (backup) write([{ offset: at + lastSector, data: backup }]);
      } finally {
        image.close();
      }
      return;
    }
  }
}

/** A block device smaller than the disk is refused before anything is written. */
function checkDeviceSize(out: string, size: number): void {
  if (out === "-") return;
  let st: fs.Stats;
  try {
    st = fs.statSync(out);
  } catch {
    return;
  }
  if (!st.isBlockDevice()) return;
  const have = blockDeviceSize(st);
  if (have < size) throw new UsageError(`${out}: the device has ${have} bytes, the disk needs ${size}`);
}
