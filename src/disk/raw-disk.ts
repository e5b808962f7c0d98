import path from "node:path";
import { ImageError } from "../errors.ts";
import type { Volume } from "../volume/volume.ts";
import { findVolumeGroups, type FoundPv, type FoundVg, readPvLabel } from "../lvm/lv-volume.ts";
import { type DiskLayout, type DiskPartition, fileVolume, sliceVolume } from "./disk-volume.ts";
import { hasGptSignature, parseGptEntries, parseGptHeader } from "./gpt.ts";
import { EXTENDED_TYPES, hex, looksLikeMbr, readMbrPartitions, readSlots, SECTOR } from "./mbr.ts";

/** Whether the first two sectors of a file are a partition table (MBR or protective MBR + GPT). */
export function looksLikeRawDisk(head: Uint8Array, size: number): boolean {
  if (head.length < 2 * SECTOR) return false;
  const sectors = Math.floor(size / SECTOR);
  return looksLikeMbr(head.subarray(0, SECTOR), sectors) || (hasGptSignature(head.subarray(SECTOR)) && readSlots(head).some((s) => s.type === 0xee));
}

/**
 * The partition table of a whole-disk image (a `dd` of a disk, or what `imgtool restore DIR`
 * wrote): the GPT when sector 0 is a protective MBR, else the MBR and its EBR chain. 512-byte
 * sectors.
 */
export function readRawDiskLayout(volume: Volume): DiskLayout {
  const name = volume.name;
  if (volume.size < 2 * SECTOR) throw new ImageError({ file: name }, "too small for a partitioned disk", `${volume.size} bytes`);
  const sectors = Math.floor(volume.size / SECTOR);
  const head = volume.read(0, 2 * SECTOR);
  const mbr = head.subarray(0, SECTOR);
  const slots = readSlots(mbr);
  const partitions: DiskPartition[] = [];
  const slice = (n: number, start: number, size: number): Volume => sliceVolume(volume, start, size, `${name}@${n}`, SECTOR);
  if (slots.some((s) => s.type === 0xee) && hasGptSignature(head.subarray(SECTOR))) {
    const header = parseGptHeader(head.subarray(SECTOR), { file: name, offset: SECTOR }, sectors);
    const length = header.entryCount * header.entrySize;
    const entries = volume.read(header.entriesLba * SECTOR, Math.min(length, volume.size - header.entriesLba * SECTOR));
    for (const e of parseGptEntries(entries, header, { file: name, offset: header.entriesLba * SECTOR })) {
      const start = e.start * SECTOR;
      const size = (e.end - e.start + 1) * SECTOR;
      partitions.push({ name: `${path.basename(name)}@${e.number}`, number: e.number, start, size, type: e.type, content: { kind: "volume", volume: slice(e.number, start, size) } });
    }
    return { name, size: volume.size, sectorSize: SECTOR, label: "gpt", tables: [], partitions, backing: volume };
  }
  if (!looksLikeMbr(mbr, sectors)) throw new ImageError({ file: name }, "no partition table (no MBR or GPT)");
  for (const e of readMbrPartitions(mbr, sectors, (lba) => volume.read(lba * SECTOR, SECTOR), name)) {
    const start = e.start * SECTOR;
    const size = e.size * SECTOR;
    const container = e.number <= 4 && EXTENDED_TYPES.has(e.type);
    partitions.push({ name: `${path.basename(name)}@${e.number}`, number: e.number, start, size, type: hex(e.type).slice(2), content: container ? { kind: "container" } : { kind: "volume", volume: slice(e.number, start, size) } });
  }
  return { name, size: volume.size, sectorSize: SECTOR, label: "dos", tables: [], partitions, backing: volume };
}

export function openRawDisk(file: string): { volume: Volume; layout: DiskLayout } {
  const volume = fileVolume(file);
  try {
    return { volume, layout: readRawDiskLayout(volume) };
  } catch (e) {
    volume.close();
    throw e;
  }
}

/** The LVM volume groups whose PVs are partitions of the disks (their labels, the newest metadata copy). */
export function rawDiskVolumeGroups(layouts: DiskLayout[]): FoundVg[] {
  return volumeGroupsOf(layouts.flatMap((layout) => layout.partitions.flatMap((p) => (p.content.kind === "volume" ? [{ name: p.name, file: layout.name, at: p.start, volume: p.content.volume }] : []))));
}

/** The volume groups of the volumes that hold a PV label (any others are passed over); `file` and `at` place messages. */
export function volumeGroupsOf(candidates: Omit<FoundPv, "label">[]): FoundVg[] {
  const pvs: FoundPv[] = [];
  for (const c of candidates) {
    const label = readPvLabel(c.volume, c.file, c.at);
    if (label) pvs.push({ ...c, label });
  }
  return pvs.length ? findVolumeGroups(pvs) : [];
}
