// MBR and EBR sectors: the 4 × 16-byte table at 446 and 0x55AA at 510, EBR chain as util-linux libfdisk/src/dos.c writes it.
import { ImageError } from "../errors.ts";

export const SECTOR = 512;
const TABLE_AT = 446;
const ENTRY = 16;
export const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
/** a chain longer than this is a loop or garbage (Linux reads at most 256 partitions) */
const MAX_LOGICAL = 252;

export interface MbrEntry {
  /** 1-4 for primary, 5... for logical */
  number: number;
  bootable: boolean;
  type: number;
  /** absolute, in sectors */
  start: number;
  size: number;
}

export interface Geometry {
  heads: number;
  sectors: number;
}

export const DEFAULT_GEOMETRY: Geometry = { heads: 255, sectors: 63 };

export function hasBootSignature(sector: Uint8Array): boolean {
  return sector.length >= SECTOR && sector[510] === 0x55 && sector[511] === 0xaa;
}

/** The four slots of a table sector (empty ones included as type 0). */
export function readSlots(sector: Uint8Array): { status: number; type: number; start: number; size: number }[] {
  const dv = new DataView(sector.buffer, sector.byteOffset, SECTOR);
  const out = [];
  for (let i = 0; i < 4; i++) {
    const at = TABLE_AT + i * ENTRY;
    out.push({ status: sector[at]!, type: sector[at + 4]!, start: dv.getUint32(at + 8, true), size: dv.getUint32(at + 12, true) });
  }
  return out;
}

/** Whether sector 0 holds a plausible MBR partition table (not just a boot sector of a file system). */
export function looksLikeMbr(sector: Uint8Array, diskSectors: number): boolean {
  if (!hasBootSignature(sector)) return false;
  // a FAT or NTFS boot sector also ends in 55 AA; its BPB says what it is
  const at = (off: number, s: string) => s.split("").every((c, i) => sector[off + i] === c.charCodeAt(0));
  if (at(3, "NTFS    ") || at(0x36, "FAT") || at(0x52, "FAT32") || at(3, "EXFAT   ")) return false;
  let used = 0;
  for (const s of readSlots(sector)) {
    if (s.type === 0 && s.start === 0 && s.size === 0) continue;
    if ((s.status !== 0 && s.status !== 0x80) || s.type === 0 || s.size === 0 || s.start === 0) return false;
    if (s.type !== 0xee && s.start + s.size > diskSectors) return false;
    used++;
  }
  return used > 0;
}

/**
 * The partitions of an MBR disk: primary slots, then the EBR chain of the extended one.
 * `readSector` reads one 512-byte sector at an absolute sector number.
 */
export function readMbrPartitions(mbr: Uint8Array, diskSectors: number, readSector: (lba: number) => Uint8Array, name: string): MbrEntry[] {
  const out: MbrEntry[] = [];
  let extended: MbrEntry | undefined;
  for (const [i, s] of readSlots(mbr).entries()) {
    if (s.type === 0) continue;
    const e: MbrEntry = { number: i + 1, bootable: s.status === 0x80, type: s.type, start: s.start, size: s.size };
    checkInside(e, diskSectors, name, TABLE_AT + i * ENTRY);
    out.push(e);
    if (EXTENDED_TYPES.has(s.type)) {
      if (extended) throw new ImageError({ file: name, offset: TABLE_AT + i * ENTRY }, "two extended partitions in the MBR");
      extended = e;
    }
  }
  if (!extended) return out;
  const seen = new Set<number>();
  let ebr = extended.start;
  for (let n = 5; ; n++) {
    if (n - 4 > MAX_LOGICAL) throw new ImageError({ file: name, offset: ebr * SECTOR }, `more than ${MAX_LOGICAL} logical partitions (a loop in the EBR chain?)`);
    if (seen.has(ebr)) throw new ImageError({ file: name, offset: ebr * SECTOR }, "the EBR chain loops");
    seen.add(ebr);
    const sector = readSector(ebr);
    if (!hasBootSignature(sector)) throw new ImageError({ file: name, offset: ebr * SECTOR + 510 }, "EBR without the 55 AA signature");
    const [data, link] = readSlots(sector) as [ReturnType<typeof readSlots>[0], ReturnType<typeof readSlots>[0]];
    if (data.type !== 0 && data.size > 0) {
      const e: MbrEntry = { number: n, bootable: data.status === 0x80, type: data.type, start: ebr + data.start, size: data.size };
      checkInside(e, diskSectors, name, ebr * SECTOR + TABLE_AT);
      if (e.start < extended.start || e.start + e.size > extended.start + extended.size) {
        throw new ImageError({ file: name, offset: ebr * SECTOR + TABLE_AT }, `logical partition ${n} lies outside the extended partition`);
      }
      out.push(e);
    }
    if (link.type === 0 || link.size === 0) break;
    if (!EXTENDED_TYPES.has(link.type)) throw new ImageError({ file: name, offset: ebr * SECTOR + TABLE_AT + ENTRY }, `EBR link of type ${hex(link.type)}, not an extended type`);
    ebr = extended.start + link.start;
    if (ebr >= extended.start + extended.size) throw new ImageError({ file: name, offset: ebr * SECTOR }, "EBR link points outside the extended partition");
  }
  return out;
}

function checkInside(e: MbrEntry, diskSectors: number, name: string, offset: number): void {
  if (e.start + e.size > diskSectors) {
    throw new ImageError({ file: name, offset }, `partition ${e.number} ends past the disk`, `sectors ${e.start}+${e.size} of ${diskSectors}`);
  }
}

/** CHS of an LBA as libfdisk's set_hsc, with cylinders above 1023 clamped as it does. */
function chs(lba: number, g: Geometry): [number, number, number] {
  if (Math.floor(lba / (g.sectors * g.heads)) > 1023) lba = g.heads * g.sectors * 1024 - 1;
  const s = (lba % g.sectors) + 1;
  lba = Math.floor(lba / g.sectors);
  const h = lba % g.heads;
  const c = Math.floor(lba / g.heads);
  return [h & 0xff, (s | ((c >> 2) & 0xc0)) & 0xff, c & 0xff];
}

/** One 16-byte slot: `start` is what the slot stores (relative for EBRs), `absStart`/`absEnd` feed the CHS. */
export function writeSlot(sector: Uint8Array, slot: number, e: { bootable: boolean; type: number; start: number; size: number; absStart: number; absEnd: number }, g: Geometry): void {
  const at = TABLE_AT + slot * ENTRY;
  const dv = new DataView(sector.buffer, sector.byteOffset, SECTOR);
  sector[at] = e.bootable ? 0x80 : 0;
  sector.set(chs(e.absStart, g), at + 1);
  sector[at + 4] = e.type;
  sector.set(chs(e.absEnd, g), at + 5);
  dv.setUint32(at + 8, e.start, true);
  dv.setUint32(at + 12, e.size, true);
}

export interface PlannedEntry {
  number: number;
  bootable: boolean;
  type: number;
  start: number;
  size: number;
}

/** The MBR sfdisk writes for these primaries (no boot code). */
export function buildMbr(entries: PlannedEntry[], diskId: number, g: Geometry): Uint8Array {
  const sector = new Uint8Array(SECTOR);
  new DataView(sector.buffer).setUint32(440, diskId >>> 0, true);
  for (const e of entries) {
    if (e.number < 1 || e.number > 4) continue;
    writeSlot(sector, e.number - 1, { ...e, absStart: e.start, absEnd: e.start + e.size - 1 }, g);
  }
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

/**
 * The EBRs sfdisk writes for these logical partitions (in number order) inside `extended`:
 * the first at the extended partition's start, each later one `firstLba` sectors before its
 * partition (one further if that is the extended start), data slot relative to the EBR, link
 * slot relative to the extended start covering the next EBR through the end of its partition.
 */
export function buildEbrs(logicals: PlannedEntry[], extended: PlannedEntry, firstLba: number, g: Geometry): { sector: number; bytes: Uint8Array }[] {
  const offsets = logicals.map((l, i) => {
    if (i === 0) return extended.start;
    const o = l.start - firstLba;
    return o === extended.start ? o + 1 : o;
  });
  return logicals.map((l, i) => {
    const bytes = new Uint8Array(SECTOR);
    const offset = offsets[i]!;
    if (l.start <= offset) throw new Error(`logical partition ${l.number} starts at or before its EBR`);
    writeSlot(bytes, 0, { bootable: l.bootable, type: l.type, start: l.start - offset, size: l.size, absStart: l.start, absEnd: l.start + l.size - 1 }, g);
    const next = logicals[i + 1];
    if (next) {
      const nextOffset = offsets[i + 1]!;
      const end = next.start + next.size - 1;
      writeSlot(bytes, 1, { bootable: false, type: 0x05, start: nextOffset - extended.start, size: end - nextOffset + 1, absStart: nextOffset, absEnd: end }, g);
    }
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    return { sector: offset, bytes };
  });
}

export function hex(n: number): string {
  return `0x${n.toString(16).padStart(2, "0")}`;
}
