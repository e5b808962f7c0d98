import type { DiskLayout, DiskPartition } from "../disk/disk-volume.ts";
import { fileSystemName, HEAD_BYTES } from "../fs/open.ts";
import type { ProgressFactory } from "../progress.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { minimumSize, RESIZE_TOOL, resizableFs, type ResizeTools, TOOL_PACKAGES } from "./fs-tools.ts";
import { isBootPartition, type PartitionSizing } from "./plan.ts";
import { imageView } from "./view.ts";

/** the smallest swap area mkswap makes: 10 pages */
export const SWAP_MINIMUM = 10 * 4096;

/** A partition's file system name: the image's, swap, or (a raw disk's partition) detected from its first bytes. */
export function partitionFs(p: DiskPartition): string | undefined {
  const c = p.content;
  if (c.kind === "image") return c.fs;
  if (c.kind === "swap") return "swap";
  if (c.kind === "volume") return fileSystemName(c.volume.read(0, Math.min(HEAD_BYTES, c.volume.size)));
  return undefined;
}

export interface SizingOptions {
  /** measure the minimum of each file system (its tool reads it from the image); else every minimum is its size */
  measure: boolean;
  /** a missing tool: refuse (restore --fit) or report the partition as not measured (info) */
  missingTool: "refuse" | "report";
  tools: ResizeTools;
  /** how compressed images are read at random (their seek index) */
  seekIndex?: SeekIndexOptions;
  progress?: ProgressFactory;
}

/** Why a partition keeps its size, or undefined when a tool can resize it. */
function fixedReason(p: DiskPartition, fs: string | undefined): string | undefined {
  if (p.content.kind === "container") return "extended partition";
  if (p.content.kind === "absent") return "not saved in the backup";
  if (isBootPartition(p)) return "boot partition";
  if (p.content.kind === "swap") return undefined;
  const n = (fs ?? "").toLowerCase();
  if (n === "xfs") return "XFS cannot shrink";
  if (n === "btrfs") return "btrfs shrinks only mounted";
  if (!resizableFs(fs)) return `imgtool does not shrink ${fs ?? "unknown content"}`;
  return undefined;
}

/**
 * Each partition's smallest size: what resize2fs -P, ntfsresize --info or fatresize -i computes on
 * a read-only view of it as its image holds it (read at random, nothing restored), a swap header's
 * 10 pages, or its size for what cannot shrink.
 */
export function sizePartitions(layout: DiskLayout, opts: SizingOptions): PartitionSizing[] {
  const sizings: PartitionSizing[] = [];
  for (const p of layout.partitions) {
    const fs = partitionFs(p);
    const fixed = fixedReason(p, fs);
    const kind = resizableFs(fs);
    if (fixed || p.content.kind === "swap" || !kind) {
      sizings.push({ partition: p, fs, resizable: !fixed, minimum: fixed ? p.size : Math.min(p.size, SWAP_MINIMUM), fixed });
      continue;
    }
    if (!opts.measure) {
      sizings.push({ partition: p, fs, resizable: true, minimum: p.size });
      continue;
    }
    const tool = RESIZE_TOOL[kind];
    if (!opts.tools.find(tool) && opts.missingTool === "report") {
      sizings.push({ partition: p, fs, resizable: false, minimum: p.size, fixed: `not measured: ${tool} is not installed (Debian package ${TOOL_PACKAGES[tool]})` });
      continue;
    }
    const phase = opts.progress?.(undefined, `${p.name}: ${tool} measuring`);
    const view = imageView(layout, p, kind === "fat", opts.seekIndex);
    let min: number | undefined;
    try {
      min = minimumSize(opts.tools, kind, view, p.name);
    } finally {
      view.volume.close();
    }
    phase?.finish(0);
    if (min === undefined) sizings.push({ partition: p, fs, resizable: false, minimum: p.size, fixed: `${tool} says it cannot shrink` });
    else sizings.push({ partition: p, fs, resizable: true, minimum: Math.min(p.size, min) });
  }
  return sizings;
}
