import type { DiskLayout, DiskPartition } from "../disk/disk-volume.ts";
import { fileSystemName, HEAD_BYTES } from "../fs/open.ts";
import type { ProgressFactory } from "../progress.ts";
import { minimumSize, RESIZE_TOOL, type ResizableFs, resizableFs, type ResizeTools, type ScratchFile, TOOL_PACKAGES } from "./fs-tools.ts";
import { isBootPartition, type PartitionSizing } from "./plan.ts";
import { restoreToScratch } from "./scratch.ts";

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
  /** where scratch copies of the partitions go */
  dir: string;
  verify: boolean;
  /** measure the minimum of each file system (restores each into a scratch file); else every minimum is its size */
  measure: boolean;
  /** a missing tool: refuse (restore --fit) or report the partition as not measured (info) */
  missingTool: "refuse" | "report";
  tools: ResizeTools;
  progress?: ProgressFactory;
}

export interface Sizings {
  sizings: PartitionSizing[];
  /** the scratch copies made while measuring, by partition */
  scratch: Map<DiskPartition, { kind: ResizableFs; file: ScratchFile }>;
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
 * Each partition's smallest size: what resize2fs -P, ntfsresize --info or fatresize -i computes on a
 * sparse scratch copy of it (kept for the resize that follows), a swap header's 10 pages, or its
 * size for what cannot shrink.
 */
export function sizePartitions(layout: DiskLayout, opts: SizingOptions): Sizings {
  const scratch: Sizings["scratch"] = new Map();
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
    const file = ensureScratch(layout, p, kind, scratch, opts);
    const min = minimumSize(opts.tools, kind, file, p.name);
    if (min === undefined) sizings.push({ partition: p, fs, resizable: false, minimum: p.size, fixed: `${tool} says it cannot shrink` });
    else sizings.push({ partition: p, fs, resizable: true, minimum: Math.min(p.size, min) });
  }
  return { sizings, scratch };
}

/** The partition's scratch copy, restored now if it was not yet. */
export function ensureScratch(layout: DiskLayout, p: DiskPartition, kind: ResizableFs, scratch: Sizings["scratch"], opts: Pick<SizingOptions, "dir" | "verify" | "progress">): ScratchFile {
  const have = scratch.get(p);
  if (have) return have.file;
  const progress = opts.progress?.(undefined, `${p.name}: scratch copy`);
  const file = restoreToScratch(layout, p, kind, opts.dir, opts.verify, progress);
  progress?.finish(file.size);
  scratch.set(p, { kind, file });
  return file;
}
