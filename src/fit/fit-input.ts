import { UsageError } from "../errors.ts";
import { humanSize } from "../formats/units.ts";
import fs from "node:fs";
import { diskDataBatches, diskSpan, spanDataBytes } from "../disk/disk-data.ts";
import type { DiskLayout, TableBytes } from "../disk/disk-volume.ts";
import { SWAP_PAGE_SIZE, swapHeader } from "../disk/swap.ts";
import type { DataRun } from "../formats/image.ts";
import type { DiskInput } from "../input/disk-input.ts";
import type { Input, InputFacts, VerifyReport } from "../input/input.ts";
import type { ProgressFactory } from "../progress.ts";
import type { Volume } from "../volume/volume.ts";
import { growAfterBootHint, RESIZE_TOOL, resizableFs, type ResizeTools, resizeVolume, type ScratchFile } from "./fs-tools.ts";
import { type FitOptions, type FitPlan, planFit, planText } from "./plan.ts";
import { scratchBatches, scratchDir } from "./scratch.ts";
import { ensureScratch, sizePartitions } from "./sizing.ts";
import { fittedTables } from "./tables.ts";

export interface FitDiskOptions extends FitOptions {
  /** the target's size in bytes */
  target: number;
  /** where scratch copies of resized partitions go (they hold only the data each partition holds) */
  tmpDir: string;
  verify: boolean;
  /** plan only: no scratch copy is resized, nothing is prepared for writing */
  dryRun?: boolean;
  progress?: ProgressFactory;
  tools: ResizeTools;
  /** told how to remove the scratch directory as soon as it exists (a signal handler may need to) */
  onScratch?: (remove: () => void) => void;
}

export interface FitResult {
  plan: FitPlan;
  /** the summary of the new layout, and lines on what to do after boot */
  lines: string[];
  /** what restore writes; undefined for a dry run */
  input?: FittedDiskInput;
}

/**
 * Plan the backup's disk onto a `target`-byte disk and, unless a dry run, resize each file system
 * that changes size in its scratch copy. Everything that can refuse or fail runs here, before
 * the target is opened; the scratch directory is gone when this throws.
 */
export function fitDisk(input: DiskInput, opts: FitDiskOptions): FitResult {
  if (input.kind !== "disk") throw new UsageError("--fit restores a whole disk; it does not take --partition");
  const layout = input.span.layout;
  if (layout.backing) throw new UsageError("--fit restores a Clonezilla folder; a raw disk image is copied as it is");
  const shrinking = opts.target < layout.size;
  const scratchRoot = scratchDir(opts.tmpDir);
  opts.onScratch?.(scratchRoot.remove);
  try {
    const sized = sizePartitions(layout, { dir: scratchRoot.dir, verify: opts.verify, measure: shrinking, missingTool: "refuse", progress: opts.progress, tools: opts.tools });
    const plan = planFit(layout, sized.sizings, opts.target, opts);
    // fatresize grows FAT only in place: a FAT whose partition grows keeps its size
    for (const p of plan.partitions) if (p.action === "grow" && resizableFs(p.fs) === "fat") p.action = "copy";
    const hints: string[] = [];
    for (const p of plan.partitions) {
      if (p.size <= p.partition.size || p.action !== "copy") continue;
      const kind = resizableFs(p.fs);
      hints.push(growAfterBootHint(p.fs, p.partition.name) ?? `${p.partition.name}: the partition grew; its ${p.fs ?? "content"} keeps its size${kind === "fat" ? " (fatresize grows FAT only in place)" : ""}`);
    }
    const lines = planText(layout, plan, hints);
    if (opts.dryRun) {
      scratchRoot.remove();
      return { plan, lines };
    }
    const resized = new Map<number, ScratchFile>();
    for (const p of plan.partitions) {
      if (p.action !== "shrink" && p.action !== "grow") continue;
      const kind = resizableFs(p.fs);
      if (!kind) continue;
      const file = ensureScratch(layout, p.partition, kind, sized.scratch, { dir: scratchRoot.dir, verify: opts.verify, progress: opts.progress });
      const phase = opts.progress?.(p.size, `${p.partition.name}: ${RESIZE_TOOL[kind]} ${humanSize(p.partition.size)} to`);
      phase?.update(0);
      resizeVolume(opts.tools, kind, file, p.size, p.partition.name, p.start / layout.sectorSize);
      phase?.finish(p.size);
      resized.set(p.partition.number, file);
    }
    return { plan, lines, input: new FittedDiskInput(input, layout, plan, fittedTables(layout, plan), resized, scratchRoot.remove) };
  } catch (e) {
    scratchRoot.remove();
    throw e;
  }
}

/**
 * The backup's disk in its new layout, as an Input: new tables, each partition at its new start
 * (resized ones from their scratch copies, the rest straight from their images), swap headers for
 * their new sizes. restoreInput writes it with every guarantee a plain restore has.
 */
export class FittedDiskInput implements Input {
  readonly kind = "disk" as const;
  readonly warnings: readonly string[];

  constructor(
    private readonly source: DiskInput,
    private readonly layout: DiskLayout,
    readonly plan: FitPlan,
    private readonly tables: TableBytes[],
    private readonly resized: Map<number, ScratchFile>,
    private readonly removeScratch: () => void,
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

  /** for progress: the tables, what the copied partitions' images hold, the scratch copies' allocated bytes */
  dataBytes(): number {
    let n = this.tables.reduce((sum, t) => sum + t.bytes.length, 0);
    for (const p of this.plan.partitions) {
      const file = this.resized.get(p.partition.number);
      if (file) n += Math.min(p.size, fs.statSync(file.path).blocks * 512);
      else if (p.action === "copy") n += spanDataBytes(diskSpan(this.layout, p.partition));
      else if (p.action === "swap") n += SWAP_PAGE_SIZE;
    }
    return n;
  }

  *dataBatches(opts: { verify: boolean }): Generator<DataRun[], void, undefined> {
    type Piece = { offset: number; batches: () => Iterable<DataRun[]> };
    const pieces: Piece[] = this.tables.map((t) => ({ offset: t.offset, batches: () => [[{ offset: t.offset, data: t.bytes }]] }));
    for (const p of this.plan.partitions) {
      const c = p.partition.content;
      const file = this.resized.get(p.partition.number);
      if (file) pieces.push({ offset: p.start, batches: () => scratchBatches(file, p.start) });
      else if (c.kind === "swap") pieces.push({ offset: p.start, batches: () => [[{ offset: p.start, data: swapHeader(p.size, { uuid: c.uuid, label: c.label }) }]] });
      else if (p.action === "copy") pieces.push({ offset: p.start, batches: () => shifted(diskDataBatches(diskSpan(this.layout, p.partition), opts.verify), p.start) });
    }
    pieces.sort((a, b) => a.offset - b.offset);
    for (const piece of pieces) yield* piece.batches();
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

  close(): void {
    this.removeScratch();
  }
}

function* shifted(batches: Iterable<DataRun[]>, by: number): Generator<DataRun[], void, undefined> {
  for (const batch of batches) yield batch.map((r) => ({ offset: r.offset + by, data: r.data }));
}
