import type { DiskLayout, DiskPartition } from "../disk/disk-volume.ts";
import type { ProgressFactory } from "../progress.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import type { ResizeTools } from "./fs-tools.ts";
import { diskMinimum } from "./plan.ts";
import { sizePartitions } from "./sizing.ts";

/** What `info --minimum` shows of a disk: what each partition and the whole disk can be restored into. */
export interface MinimumFacts {
  disk: string;
  /** bytes: the tables, what precedes the first partition, alignment, and each partition at its minimum */
  minimum: number;
  size: number;
  partitions: { name: string; number: number; fs: string | null; size: number; used: number | null; minimum: number; how: string }[];
}

/** Measure each partition by asking its own resize tool, which reads it from the image through a read-only view. */
export function diskMinimums(layout: DiskLayout, opts: { tools: ResizeTools; seekIndex?: SeekIndexOptions; progress?: ProgressFactory }): MinimumFacts {
  const sizings = sizePartitions(layout, { measure: true, missingTool: "report", tools: opts.tools, seekIndex: opts.seekIndex, progress: opts.progress });
  const how = (fs: string | undefined, fixed: string | undefined) => {
    if (fixed) return `as saved: ${fixed}`;
    if (fs === "swap") return "swap header (10 pages)";
    const n = (fs ?? "").toLowerCase();
    return n.startsWith("ext") ? "resize2fs -P" : n === "ntfs" ? "ntfsresize --info" : "fatresize -i (libparted's FAT bounds)";
  };
  return {
    disk: layout.name,
    size: layout.size,
    minimum: diskMinimum(layout, sizings),
    partitions: sizings
      .filter((s) => s.partition.content.kind !== "container")
      .map((s) => ({ name: s.partition.name, number: s.partition.number, fs: s.fs ?? null, size: s.partition.size, used: usedBytes(s.partition), minimum: s.minimum, how: how(s.fs, s.fixed) })),
  };
}

/** The bytes in use as the image header counts them (FAT: its clusters in use); null where no image says. */
function usedBytes(p: DiskPartition): number | null {
  if (p.content.kind !== "image") return null;
  const image = p.content.open();
  try {
    return image.info.usedBlocks * image.info.blockSize;
  } finally {
    image.close();
  }
}
