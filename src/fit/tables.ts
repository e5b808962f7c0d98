import type { DiskLayout, TableBytes } from "../disk/disk-volume.ts";
import { relocateGpt } from "../disk/gpt.ts";
import { buildEbrs, DEFAULT_GEOMETRY, type PlannedEntry, readSlots, SECTOR, writeSlot } from "../disk/mbr.ts";
import { EBR_GAP, type FitPlan } from "./plan.ts";

/**
 * The table sectors of the new layout: for GPT the saved primary with the entries moved and a
 * backup at the new end; for MBR the saved sector 0 (boot code and disk id kept) with its slots
 * rewritten and a new EBR chain. What lies before the first partition (hidden data after the MBR)
 * stays where it was.
 */
export function fittedTables(layout: DiskLayout, plan: FitPlan): TableBytes[] {
  const ss = layout.sectorSize;
  const first = Math.min(...layout.partitions.map((p) => p.start));
  const primary = layout.tables.find((t) => t.offset === 0);
  if (!primary) throw new Error(`${layout.name}: no table at sector 0`);
  const kept = layout.tables.filter((t) => t !== primary && t.offset > 0 && t.offset + t.bytes.length <= first);
  if (layout.label === "gpt") {
    const moved = new Map(plan.partitions.map((p) => [p.partition.number, { start: p.start / ss, end: (p.start + p.size) / ss - 1 }]));
    const built = relocateGpt(primary.bytes, ss, moved, plan.size / ss, layout.size / ss, { file: layout.name, offset: ss });
    return [{ offset: 0, bytes: built.primary, what: "GPT (moved partitions)" }, ...kept, { offset: built.backupLba * ss, bytes: built.backup, what: "backup GPT (new end)" }];
  }
  const mbr = primary.bytes.slice(0, SECTOR);
  const saved = readSlots(mbr);
  const g = DEFAULT_GEOMETRY;
  const entry = (number: number, start: number, size: number): PlannedEntry => ({ number, bootable: number <= 4 && saved[number - 1]?.status === 0x80, type: parseInt(layoutType(layout, number), 16), start: start / ss, size: size / ss });
  mbr.fill(0, 446, 510);
  const primaries = plan.partitions.filter((p) => p.partition.number <= 4).map((p) => entry(p.partition.number, p.start, p.size));
  const extended = plan.extended ? entry(plan.extended.partition.number, plan.extended.start, plan.extended.size) : undefined;
  for (const e of extended ? [...primaries, extended] : primaries) writeSlot(mbr, e.number - 1, { ...e, absStart: e.start, absEnd: e.start + e.size - 1 }, g);
  const tables: TableBytes[] = [{ offset: 0, bytes: mbr, what: "MBR (new slots)" }, ...kept];
  if (extended) {
    const logicals = plan.partitions.filter((p) => p.partition.number >= 5).sort((a, b) => a.partition.number - b.partition.number).map((p) => entry(p.partition.number, p.start, p.size));
    const ebrs = logicals.length ? buildEbrs(logicals, extended, EBR_GAP / ss, g) : [{ sector: extended.start, bytes: Object.assign(new Uint8Array(SECTOR), { 510: 0x55, 511: 0xaa }) }];
    for (const e of ebrs) tables.push({ offset: e.sector * ss, bytes: e.bytes, what: "EBR" });
  }
  return tables.sort((a, b) => a.offset - b.offset);
}

function layoutType(layout: DiskLayout, number: number): string {
  return layout.partitions.find((p) => p.number === number)?.type ?? "0";
}
