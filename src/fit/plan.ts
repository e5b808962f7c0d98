import { UsageError } from "../errors.ts";
import type { DiskLayout, DiskPartition } from "../disk/disk-volume.ts";
import { EXTENDED_TYPES } from "../disk/mbr.ts";
import { humanSize } from "../formats/units.ts";

/** What one partition can be restored into, as the sizing step found it. */
export interface PartitionSizing {
  partition: DiskPartition;
  /** the file system as the image names it ("ext4", "ntfs", "vfat", "swap", "xfs"), undefined when not known */
  fs: string | undefined;
  /** its size may change: a file system a tool resizes, or swap (a new header) */
  resizable: boolean;
  /** the smallest size it can have, in bytes (its size when it cannot shrink) */
  minimum: number;
  /** why it keeps its size ("boot partition", "xfs shrinks only mounted"); undefined when it can shrink */
  fixed?: string;
}

export type FitAction = "copy" | "shrink" | "grow" | "swap" | "none";

export interface PlannedPartition {
  partition: DiskPartition;
  fs: string | undefined;
  start: number;
  size: number;
  action: FitAction;
}

export interface FitPlan {
  /** the new disk's size */
  size: number;
  alignment: number;
  partitions: PlannedPartition[];
  /** the MBR extended partition, spanning its logical ones */
  extended?: { partition: DiskPartition; start: number; size: number };
  /** the smallest disk this layout fits on */
  minimum: number;
}

export interface FitOptions {
  /** sizes asked for by partition number or name (--size-of) */
  sizeOf?: Map<string, number>;
  /** the partition that takes the extra room of a larger target (--grow); default the last */
  grow?: string;
}

const MIB = 1 << 20;
/** the gap sfdisk leaves between an EBR and its logical partition (and the minimum room for the EBR) */
export const EBR_GAP = MIB;

/** GPT types whose size firmware or boot loaders depend on: ESP, BIOS boot, Microsoft reserved. */
const BOOT_TYPES = new Set(["C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "21686148-6E1F-6F6E-744E-656564454649", "E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "ef"]);

export function isBootPartition(p: DiskPartition): boolean {
  return BOOT_TYPES.has(p.type.toUpperCase()) || BOOT_TYPES.has(p.type.toLowerCase());
}

/** 1 MiB when every partition starts on a MiB; else the largest power of two all starts share (a sector at least). */
export function layoutAlignment(layout: DiskLayout): number {
  let a = MIB;
  while (a > layout.sectorSize && layout.partitions.some((p) => p.start % a !== 0)) a /= 2;
  return Math.max(a, layout.sectorSize);
}

const alignUp = (x: number, a: number) => Math.ceil(x / a) * a;
const alignDown = (x: number, a: number) => Math.floor(x / a) * a;

function isExtended(layout: DiskLayout, p: DiskPartition): boolean {
  return layout.label === "dos" && p.content.kind === "container" && EXTENDED_TYPES.has(parseInt(p.type, 16));
}

/** Bytes at the end of the disk that partitions cannot use (the GPT backup table). */
function tailBytes(layout: DiskLayout): number {
  if (layout.label !== "gpt") return 0;
  const backup = layout.tables.filter((t) => t.offset > 0).at(-1);
  return backup ? backup.bytes.length : 33 * layout.sectorSize;
}

interface Placed {
  starts: Map<DiskPartition, number>;
  extended?: { start: number; end: number };
  end: number;
}

/**
 * Positions for these sizes, in the disk's order: the first partition where it was (what precedes
 * it, tables and hidden data, stays), each next one at the next aligned byte, a logical one a MiB
 * further so its EBR fits before it.
 */
function place(layout: DiskLayout, order: DiskPartition[], sizes: Map<DiskPartition, number>, alignment: number): Placed {
  const ext = layout.partitions.find((p) => isExtended(layout, p));
  const starts = new Map<DiskPartition, number>();
  let pos = Math.min(...layout.partitions.map((p) => p.start));
  let extended: Placed["extended"];
  let logicals = 0;
  for (const p of order) {
    const logical = ext !== undefined && p.number >= 5;
    let start: number;
    if (logical) {
      if (!extended) {
        extended = { start: alignUp(pos, alignment), end: 0 };
        pos = extended.start;
      }
      start = alignUp(pos + (logicals === 0 ? layout.sectorSize : EBR_GAP), alignment);
      logicals++;
    } else start = starts.size === 0 ? pos : alignUp(pos, alignment);
    starts.set(p, start);
    pos = start + sizes.get(p)!;
    if (logical) extended!.end = pos;
  }
  if (ext && !extended) extended = { start: alignUp(pos, alignment), end: alignUp(pos, alignment) + EBR_GAP };
  return { starts, extended, end: Math.max(pos, extended?.end ?? 0) };
}

/**
 * The new layout for a `target`-byte disk: partitions that cannot shrink keep their size, the
 * others scaled by one factor from their size (never below their minimum, or the size asked for
 * them), the last taking what remains; on a larger disk the last (or `grow`) takes the extra.
 * Refuses, in one line, what cannot be.
 */
export function planFit(layout: DiskLayout, sizings: PartitionSizing[], target: number, opts: FitOptions = {}): FitPlan {
  const ss = layout.sectorSize;
  const alignment = layoutAlignment(layout);
  const tail = tailBytes(layout);
  const order = sizings.filter((s) => !isExtended(layout, s.partition)).sort((a, b) => a.partition.start - b.partition.start);
  const named = (key: string) => order.find((s) => s.partition.name === key || String(s.partition.number) === key);
  const asked = new Map<PartitionSizing, number>();
  for (const [key, bytes] of opts.sizeOf ?? []) {
    const s = named(key);
    if (!s) throw new UsageError(`--size-of ${key}: no such partition (they are ${order.map((x) => x.partition.name).join(", ")})`);
    if (s.fixed && bytes !== s.partition.size) throw new UsageError(`--size-of ${key}: ${s.partition.name} (${s.fs ?? "unknown content"}) keeps its size: ${s.fixed}`);
    if (bytes < s.minimum) throw new UsageError(`--size-of ${key}: ${s.partition.name} (${s.fs ?? "?"}) cannot be smaller than ${humanSize(s.minimum)} (${s.minimum} bytes)`);
    asked.set(s, alignUp(bytes, ss));
  }
  const parts = order.map((s) => s.partition);
  const sizesFor = (f: number) =>
    new Map(
      order.map((s) => {
        if (s.fixed || !s.resizable) return [s.partition, s.partition.size];
        const want = asked.get(s);
        if (want !== undefined) return [s.partition, want];
        if (f >= 1) return [s.partition, s.partition.size];
        return [s.partition, Math.min(s.partition.size, Math.max(alignUp(s.minimum, alignment), alignDown(s.partition.size * f, alignment)))];
      }),
    );
  const endOf = (sizes: Map<DiskPartition, number>) => place(layout, parts, sizes, alignment).end + tail;
  const smallest = sizesFor(0);
  const minimum = alignUp(endOf(smallest), ss);
  const result = (sizes: Map<DiskPartition, number>): FitPlan => {
    const placed = place(layout, parts, sizes, alignment);
    const partitions = order.map((s): PlannedPartition => {
      const size = sizes.get(s.partition)!;
      const c = s.partition.content.kind;
      const action: FitAction = c === "absent" ? "none" : c === "swap" ? "swap" : !s.resizable || size === s.partition.size ? "copy" : size > s.partition.size ? "grow" : "shrink";
      return { partition: s.partition, fs: s.fs, start: placed.starts.get(s.partition)!, size, action };
    });
    const extPart = layout.partitions.find((p) => isExtended(layout, p));
    const extended = extPart && placed.extended ? { partition: extPart, start: placed.extended.start, size: placed.extended.end - placed.extended.start } : undefined;
    return { size: target, alignment, partitions, extended, minimum };
  };
  if (target < minimum) {
    const stuck = order.filter((s) => s.fixed && s.partition.size >= target / 4).map((s) => `${s.partition.name} (${s.fs ?? "unknown content"}, ${humanSize(s.partition.size)}) cannot shrink: ${s.fixed}`);
    throw new UsageError(`the backup cannot fit on ${humanSize(target)} (${target} bytes): it needs at least ${humanSize(minimum)} (${minimum} bytes)${stuck.length ? `; ${stuck.join("; ")}` : ""}`);
  }
  const original = sizesFor(1);
  const lastEnd = (sizes: Map<DiskPartition, number>) => target - endOf(sizes);
  if (lastEnd(original) >= 0 && asked.size === 0) {
    // the disk is as large or larger: one partition takes the extra
    const key = opts.grow;
    const g = key !== undefined ? named(key) : order.at(-1);
    if (!g) throw new UsageError(`--grow ${key}: no such partition (they are ${order.map((x) => x.partition.name).join(", ")})`);
    if (g.partition.content.kind === "absent") throw new UsageError(`--grow ${g.partition.name}: it was not saved`);
    const sizes = new Map(original);
    const extra = lastEnd(original);
    const last = g === order.at(-1);
    sizes.set(g.partition, sizes.get(g.partition)! + (last ? alignDown(extra, ss) : alignDown(extra, alignment)));
    return result(sizes);
  }
  if (opts.grow !== undefined) throw new UsageError("--grow is for a target larger than the backup's disk");
  // the largest factor whose layout fits, to a part in a million
  let lo = lastEnd(original) >= 0 ? 1 : 0;
  let hi = 1;
  for (let i = 0; i < 20 && lo < 1; i++) {
    const mid = (lo + hi) / 2;
    if (lastEnd(sizesFor(mid)) >= 0) lo = mid;
    else hi = mid;
  }
  const sizes = sizesFor(lo);
  const flexible = order.filter((s) => !s.fixed && s.resizable && !asked.has(s));
  const taker = order.at(-1);
  if (taker && flexible.includes(taker)) sizes.set(taker.partition, sizes.get(taker.partition)! + alignDown(lastEnd(sizes), ss));
  return result(sizes);
}

/** The smallest disk the backup fits on: every partition that can shrink at its minimum. */
export function diskMinimum(layout: DiskLayout, sizings: PartitionSizing[]): number {
  return planFit(layout, sizings, Number.MAX_SAFE_INTEGER).minimum;
}

/** The plan as lines for the summary and --dry-run. */
export function planText(layout: DiskLayout, plan: FitPlan, hints: string[]): string[] {
  const ss = layout.sectorSize;
  const minimum = plan.size < layout.size ? `, minimum ${humanSize(plan.minimum)}` : "";
  const lines = [`new layout for ${humanSize(plan.size)} (${plan.size} bytes; the backup's disk: ${humanSize(layout.size)}${minimum}), ${humanSize(plan.alignment)} alignment:`];
  const rows = [["#", "name", "fs", "start", "sectors", "was", "now", "action"]];
  for (const p of plan.partitions) {
    rows.push([String(p.partition.number), p.partition.name, p.fs ?? "-", String(p.start / ss), String(p.size / ss), humanSize(p.partition.size), humanSize(p.size), p.action]);
  }
  if (plan.extended) {
    const e = plan.extended;
    rows.push([String(e.partition.number), e.partition.name, "extended", String(e.start / ss), String(e.size / ss), humanSize(e.partition.size), humanSize(e.size), "table"]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) lines.push(`  ${r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}`);
  return [...lines, ...hints];
}
