import fs from "node:fs";
import path from "node:path";
import { libc } from "../../native/libc.ts";
import { punchHole, SEEK_DATA, SEEK_HOLE } from "../../native/libc-file.ts";
import { diskDataBatches, diskSpan } from "../disk/disk-data.ts";
import type { DiskLayout, DiskPartition } from "../disk/disk-volume.ts";
import { buildMbr, DEFAULT_GEOMETRY } from "../disk/mbr.ts";
import type { DataRun } from "../formats/image.ts";
import type { ProgressReport } from "../progress.ts";
import type { ResizableFs, ScratchFile } from "./fs-tools.ts";

/** Where a FAT volume sits in its scratch file: behind a one-partition MBR, 1 MiB aligned. */
const FAT_OFFSET = 1 << 20;
const READ_CHUNK = 8 << 20;

/**
 * Restore one partition into a sparse file in `dir`: only the blocks its image holds are
 * written (holes cost nothing), so a resize tool can work on it as on the partition itself.
 */
export function restoreToScratch(layout: DiskLayout, p: DiskPartition, kind: ResizableFs, dir: string, verify: boolean, progress?: ProgressReport, doneBefore = 0): ScratchFile {
  const offset = kind === "fat" ? FAT_OFFSET : 0;
  const file = path.join(dir, `${path.basename(layout.name)}-${p.name}.${kind}`);
  const fd = fs.openSync(file, "w+", 0o600);
  let done = doneBefore;
  try {
    fs.ftruncateSync(fd, offset + p.size);
    if (offset) {
      const ss = 512;
      const mbr = buildMbr([{ number: 1, bootable: false, type: 0x0c, start: offset / ss, size: p.size / ss }], 0, DEFAULT_GEOMETRY);
      fs.writeSync(fd, mbr, 0, mbr.length, 0);
    }
    for (const batch of diskDataBatches(diskSpan(layout, p), verify)) {
      for (const r of batch) {
        fs.writeSync(fd, r.data, 0, r.data.length, offset + r.offset);
        done += r.data.length;
      }
      progress?.update(done);
    }
  } finally {
    fs.closeSync(fd);
  }
  return { path: file, offset, size: p.size, partition: 1 };
}

/**
 * The data the scratch file holds (its holes skipped), as runs at `at` + their offset in the volume.
 * Read once: each chunk's bytes are freed from the file (a hole punched) once the consumer has
 * them, so its dirty pages are dropped instead of written back.
 */
export function* scratchBatches(file: ScratchFile, at: number): Generator<DataRun[], void, undefined> {
  const fd = fs.openSync(file.path, "r+");
  // restore writes each batch before asking for the next: one buffer serves every chunk
  const buf = new Uint8Array(READ_CHUNK);
  try {
    const end = file.offset + file.size;
    let pos = file.offset;
    while (pos < end) {
      const data = Number(libc().lseek(fd, pos, SEEK_DATA));
      if (data < 0 || data >= end) break;
      const hole = Math.min(end, Math.max(data + 1, Number(libc().lseek(fd, data, SEEK_HOLE))));
      for (let o = data; o < hole; o += READ_CHUNK) {
        const n = Math.min(READ_CHUNK, hole - o);
        let got = 0;
        while (got < n) {
          const k = fs.readSync(fd, buf, got, n - got, o + got);
          if (k === 0) break;
          got += k;
        }
        yield [{ offset: at + o - file.offset, data: buf.subarray(0, got) }];
        punchHole(fd, o, n);
      }
      pos = hole;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** A directory for scratch files, removed with all it holds by the returned function. */
export function scratchDir(parent: string): { dir: string; remove: () => void } {
  const dir = fs.mkdtempSync(path.join(parent, "imgtool-fit-"));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}
