import { UsageError } from "../errors.ts";
import { humanSize } from "../formats/units.ts";
import { diskDataBatches, diskSpan, spanDataBytes } from "../disk/disk-data.ts";
import type { DiskLayout, TableBytes } from "../disk/disk-volume.ts";
import { SWAP_PAGE_SIZE, swapHeader } from "../disk/swap.ts";
import type { DataRun } from "../formats/image.ts";
import type { DiskInput } from "../input/disk-input.ts";
import type { Input, InputFacts, VerifyReport, WrittenOutput } from "../input/input.ts";
import type { ProgressFactory } from "../progress.ts";
import type { Volume } from "../volume/volume.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { growAfterBootHint, RESIZE_TOOL, type ResizableFs, resizableFs, type ResizeTools, resizeVolume } from "./fs-tools.ts";
import { type FitOptions, type FitPlan, type PlannedPartition, planFit, planText } from "./plan.ts";
import { sizePartitions } from "./sizing.ts";
import { SplitView } from "./view.ts";
import { fittedTables } from "./tables.ts";

export interface FitDiskOptions extends FitOptions {
  /** the target's size in bytes */
  target: number;
  /** plan only: nothing is prepared for writing */
  dryRun?: boolean;
  /** how compressed images are read at random to measure their file systems (their seek index) */
  seekIndex?: SeekIndexOptions;
  progress?: ProgressFactory;
  /** the tools, and where their views are mounted and the overlays of shrinking partitions go */
  tools: ResizeTools;
}

export interface FitResult {
  plan: FitPlan;
  /** the summary of the new layout, and lines on what to do after boot */
  lines: string[];
  /** what restore writes; undefined for a dry run */
  input?: FittedDiskInput;
}

const TOOLS_OF: Record<ResizableFs, string[]> = { ext: ["e2fsck", "resize2fs"], ntfs: ["ntfsresize"], fat: ["fatresize"] };

/**
 * Plan the backup's disk onto a `target`-byte disk: each shrinking file system measured by its own
 * tool on a read-only view of its image. Everything that can refuse runs here, before the target is
 * opened; the resizing itself happens as the disk is written (FittedDiskInput).
 */
export function fitDisk(input: DiskInput, opts: FitDiskOptions): FitResult {
  if (input.kind !== "disk") throw new UsageError("--fit restores a whole disk; it does not take --partition");
  const layout = input.span.layout;
  if (layout.backing) throw new UsageError("--fit restores a Clonezilla folder; a raw disk image is copied as it is");
  const shrinking = opts.target < layout.size;
  const sizings = sizePartitions(layout, { measure: shrinking, missingTool: "refuse", progress: opts.progress, tools: opts.tools, seekIndex: opts.seekIndex });
  const plan = planFit(layout, sizings, opts.target, opts);
  // fatresize grows FAT only in place: a FAT whose partition grows keeps its size
  for (const p of plan.partitions) if (p.action === "grow" && resizableFs(p.fs) === "fat") p.action = "copy";
  const hints: string[] = [];
  for (const p of plan.partitions) {
    if (p.size <= p.partition.size || p.action !== "copy") continue;
    const kind = resizableFs(p.fs);
    hints.push(growAfterBootHint(p.fs, p.partition.name) ?? `${p.partition.name}: the partition grew; its ${p.fs ?? "content"} keeps its size${kind === "fat" ? " (fatresize grows FAT only in place)" : ""}`);
  }
  const lines = planText(layout, plan, hints);
  if (opts.dryRun) return { plan, lines };
  const resized = new Map<number, ResizableFs>();
  for (const p of plan.partitions) {
    const kind = resizableFs(p.fs);
    if ((p.action !== "shrink" && p.action !== "grow") || !kind) continue;
    // refused now rather than after part of the disk is written
    for (const tool of TOOLS_OF[kind]) opts.tools.require(tool, `${p.partition.name}: resizing its ${kind === "ext" ? "ext file system" : kind === "ntfs" ? "NTFS" : "FAT"}`);
    opts.tools.requireViews(`${p.partition.name}: resizing in place`);
    resized.set(p.partition.number, kind);
  }
  return { plan, lines, input: new FittedDiskInput(input, layout, plan, fittedTables(layout, plan), resized, opts) };
}

/**
 * The backup's disk in its new layout, as an Input: new tables, each partition at its new start
 * straight from its image, swap headers for their new sizes. A partition that changes size is
 * written at its new start (what its image holds past its new end into an overlay), then resized
 * there by its tool through a view, before the next is written. restoreInput writes it with
 * every guarantee a plain restore has.
 */
export class FittedDiskInput implements Input {
  readonly kind = "disk" as const;
  readonly warnings: readonly string[];

  constructor(
    private readonly source: DiskInput,
    private readonly layout: DiskLayout,
    readonly plan: FitPlan,
    private readonly tables: TableBytes[],
    private readonly resized: Map<number, ResizableFs>,
    private readonly opts: Pick<FitDiskOptions, "tools" | "progress">,
  ) {
    this.warnings = source.warnings;
  }

  get name(): string {
    return this.source.name;
  }

  get size(): number {
    return this.plan.size;
  }

  get files(): readonly string[] {
    return this.source.files;
  }

  /** for progress: the tables, what the partitions' images hold, the swap headers */
  dataBytes(): number {
    let n = this.tables.reduce((sum, t) => sum + t.bytes.length, 0);
    for (const p of this.plan.partitions) {
      if (p.action === "swap") n += SWAP_PAGE_SIZE;
      else if (p.action !== "none") n += spanDataBytes(diskSpan(this.layout, p.partition));
    }
    return n;
  }

  *dataBatches(opts: { verify: boolean; written?: WrittenOutput }): Generator<DataRun[], void, undefined> {
    type Piece = { offset: number; batches: () => Iterable<DataRun[]> };
    const pieces: Piece[] = this.tables.map((t) => ({ offset: t.offset, batches: () => [[{ offset: t.offset, data: t.bytes }]] }));
    for (const p of this.plan.partitions) {
      const c = p.partition.content;
      const kind = this.resized.get(p.partition.number);
      if (kind) pieces.push({ offset: p.start, batches: () => this.resizedBatches(p, kind, opts.verify, opts.written) });
      else if (c.kind === "swap") pieces.push({ offset: p.start, batches: () => [[{ offset: p.start, data: swapHeader(p.size, { uuid: c.uuid, label: c.label }) }]] });
      else if (p.action === "copy") pieces.push({ offset: p.start, batches: () => shifted(diskDataBatches(diskSpan(this.layout, p.partition), opts.verify), p.start) });
    }
    pieces.sort((a, b) => a.offset - b.offset);
    for (const piece of pieces) yield* piece.batches();
  }

  /**
   * One partition that changes size: its data at its new start, what lies past its new end into
   * the view's overlay; then, once restore has written it, its tool resizes it in place.
   */
  private *resizedBatches(p: PlannedPartition, kind: ResizableFs, verify: boolean, written: WrittenOutput | undefined): Generator<DataRun[], void, undefined> {
    if (!written) throw new UsageError("--fit resizes file systems in place: it needs a file or a block device");
    const old = p.partition.size;
    // shrinking, the view is the volume at its old size, its part past the new end in the overlay; growing, it is all the new region
    const kept = p.size;
    const name = p.partition.name;
    const view = new SplitView(`${this.layout.name} ${name}`, Math.max(old, p.size), kept, kind === "fat", this.opts.tools.tmpDir);
    try {
      for (const batch of diskDataBatches(diskSpan(this.layout, p.partition), verify)) {
        const out: DataRun[] = [];
        for (const r of batch) {
          const inside = Math.max(0, Math.min(r.data.length, kept - r.offset));
          if (inside > 0) out.push({ offset: p.start + r.offset, data: inside === r.data.length ? r.data : r.data.subarray(0, inside) });
          if (inside < r.data.length) view.writeBeyond(r.offset + inside, r.data.subarray(inside));
        }
        if (out.length) yield out;
      }
      const { fd, base } = written.settle(p.start + p.size);
      view.place(fd, base + p.start);
      const phase = this.opts.progress?.(p.size, `${name}: ${RESIZE_TOOL[kind]} ${humanSize(old)} to`);
      phase?.update(0);
      resizeVolume(this.opts.tools, kind, view.view, p.size, name, p.start / this.layout.sectorSize);
      phase?.finish(p.size);
    } finally {
      view.close();
    }
  }

  openVolume(): Volume {
    throw new UsageError("--fit writes a disk in order; it cannot be read at random");
  }

  identity() {
    return { name: this.name, size: this.size, blockSize: this.layout.sectorSize, identity: undefined };
  }

  verify(progress?: ProgressFactory): VerifyReport {
    return this.source.verify(progress);
  }

  describe(): InputFacts {
    return this.source.describe();
  }

  close(): void {}
}

function* shifted(batches: Iterable<DataRun[]>, by: number): Generator<DataRun[], void, undefined> {
  for (const batch of batches) yield batch.map((r) => ({ offset: r.offset + by, data: r.data }));
}
