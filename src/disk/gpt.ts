// GUID Partition Table: header at LBA 1 and the backup at the last LBA, 128-byte entries (UEFI spec 2.10 §5.3).
import { ImageError } from "../errors.ts";
import type { SfdiskDump } from "./sfdisk-dump.ts";

const SIGNATURE = "EFI PART";
const REVISION = 0x00010000;
const HEADER_SIZE = 92;
const ENTRY_SIZE = 128;
const MAX_ENTRIES = 4096;
const NAME_CHARS = 36;

export interface GptEntry {
  /** 1-based slot number */
  number: number;
  /** upper-case text GUIDs */
  type: string;
  uuid: string;
  /** in sectors, end inclusive as stored */
  start: number;
  end: number;
  attrs: bigint;
  name: string;
}

export interface GptHeader {
  myLba: number;
  alternateLba: number;
  firstUsable: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

export function hasGptSignature(sector: Uint8Array): boolean {
  return sector.length >= 8 && String.fromCharCode(...sector.subarray(0, 8)) === SIGNATURE;
}

/** A GPT header sector, its CRC checked. */
export function parseGptHeader(sector: Uint8Array, where: { file: string; offset: number }, diskSectors: number): GptHeader {
  const fail = (at: number, what: string, detail?: string): never => {
    throw new ImageError({ file: where.file, offset: where.offset + at }, what, detail);
  };
  if (!hasGptSignature(sector)) fail(0, 'no "EFI PART" GPT header signature');
  const dv = new DataView(sector.buffer, sector.byteOffset, sector.byteLength);
  const headerSize = dv.getUint32(12, true);
  if (headerSize < HEADER_SIZE || headerSize > sector.length) fail(12, "GPT header size is out of range", String(headerSize));
  const stored = dv.getUint32(16, true);
  const copy = sector.slice(0, headerSize);
  new DataView(copy.buffer).setUint32(16, 0, true);
  if ((Bun.hash.crc32(copy) >>> 0) !== stored) fail(16, "GPT header CRC32 does not match");
  const u64 = (at: number, what: string): number => {
    const v = dv.getBigUint64(at, true);
    if (v >= BigInt(diskSectors)) fail(at, `GPT ${what} is past the end of the disk`, `${v} ≥ ${diskSectors} sectors`);
    return Number(v);
  };
  const h: GptHeader = {
    myLba: u64(24, "header LBA"),
    alternateLba: u64(32, "alternate header LBA"),
    firstUsable: u64(40, "first usable LBA"),
    lastUsable: u64(48, "last usable LBA"),
    diskGuid: readGuid(sector, 56),
    entriesLba: u64(72, "entries LBA"),
    entryCount: dv.getUint32(80, true),
    entrySize: dv.getUint32(84, true),
    entriesCrc: dv.getUint32(88, true),
  };
  if (h.entryCount > MAX_ENTRIES) fail(80, "GPT entry count is absurd", String(h.entryCount));
  if (h.entrySize < ENTRY_SIZE || h.entrySize > 4096 || h.entrySize % 8 !== 0) fail(84, "GPT entry size is out of range", String(h.entrySize));
  if (h.firstUsable > h.lastUsable) fail(40, "GPT first usable LBA is after the last");
  return h;
}

/** The used entries of an entry array, its CRC checked against the header. */
export function parseGptEntries(bytes: Uint8Array, h: GptHeader, where: { file: string; offset: number }): GptEntry[] {
  const length = h.entryCount * h.entrySize;
  if (bytes.length < length) throw new ImageError(where, "GPT entry array is cut short", `${bytes.length} of ${length} bytes`);
  const array = bytes.subarray(0, length);
  if ((Bun.hash.crc32(array) >>> 0) !== h.entriesCrc) throw new ImageError(where, "GPT entry array CRC32 does not match");
  const out: GptEntry[] = [];
  const dv = new DataView(array.buffer, array.byteOffset, array.byteLength);
  for (let i = 0; i < h.entryCount; i++) {
    const at = i * h.entrySize;
    if (array.subarray(at, at + 16).every((b) => b === 0)) continue;
    const start = Number(dv.getBigUint64(at + 32, true));
    const end = Number(dv.getBigUint64(at + 40, true));
    if (start < h.firstUsable || end > h.lastUsable || end < start) {
      throw new ImageError({ file: where.file, offset: where.offset + at + 32 }, `GPT partition ${i + 1} lies outside the usable sectors`, `${start}..${end} not in ${h.firstUsable}..${h.lastUsable}`);
    }
    let name = "";
    for (let c = 0; c < NAME_CHARS; c++) {
      const code = dv.getUint16(at + 56 + c * 2, true);
      if (code === 0) break;
      name += String.fromCharCode(code);
    }
    out.push({ number: i + 1, type: readGuid(array, at), uuid: readGuid(array, at + 16), start, end, attrs: dv.getBigUint64(at + 48, true), name });
  }
  return out;
}

/** Mixed-endian GUID: the first three fields little-endian. */
export function readGuid(b: Uint8Array, at: number): string {
  const h = (i: number) => b[at + i]!.toString(16).padStart(2, "0");
  const part = (idx: number[]) => idx.map(h).join("");
  return `${part([3, 2, 1, 0])}-${part([5, 4])}-${part([7, 6])}-${part([8, 9])}-${part([10, 11, 12, 13, 14, 15])}`.toUpperCase();
}

export function writeGuid(b: Uint8Array, at: number, guid: string): void {
  const hex = guid.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a GUID: ${guid}`);
  const bytes = Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16));
  const order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
  for (let i = 0; i < 16; i++) b[at + i] = bytes[order[i]!]!;
}

/**
 * The backup table at the end of the disk from Clonezilla's sdX-gpt-2nd (the disk's last 32
 * sectors: the backup entries but their first sector, then the backup header) and the primary's
 * first entries sector, which the backup array repeats.
 */
export function completeBackup(second: Uint8Array, primaryFirstEntries: Uint8Array, sectorSize: number): Uint8Array {
  const out = new Uint8Array(second.length + sectorSize);
  out.set(primaryFirstEntries.subarray(0, sectorSize), 0);
  out.set(second, sectorSize);
  return out;
}

const ATTR_BITS: Record<string, number> = { RequiredPartition: 0, NoBlockIOProtocol: 1, LegacyBIOSBootable: 2 };

function parseAttrs(text: string | undefined): bigint {
  let v = 0n;
  for (const word of (text ?? "").split(/[\s,]+/).filter(Boolean)) {
    const m = /^GUID:(\d+)$/.exec(word);
    const bit = m ? Number(m[1]) : ATTR_BITS[word];
    if (bit === undefined || bit > 63) throw new Error(`unknown GPT attribute ${JSON.stringify(word)}`);
    v |= 1n << BigInt(bit);
  }
  return v;
}

/**
 * The primary (sectors 0 .. 1+entries) and backup (entries, header at the last sector) tables
 * sfdisk writes for a dump: protective MBR with one 0xEE slot, 128 entries.
 */
export function buildGpt(dump: SfdiskDump, diskSectors: number): { primary: Uint8Array; backup: Uint8Array; backupLba: number } {
  const ss = dump.sectorSize;
  const count = Math.max(128, dump.tableLength ?? 0);
  const entrySectors = Math.ceil((count * ENTRY_SIZE) / ss);
  const last = diskSectors - 1;
  const entries = new Uint8Array(entrySectors * ss);
  const dv = new DataView(entries.buffer);
  for (const p of dump.partitions) {
    const n = partitionNumber(p.device);
    if (n < 1 || n > count) throw new Error(`${p.device}: partition number out of the table`);
    const at = (n - 1) * ENTRY_SIZE;
    writeGuid(entries, at, p.type);
    writeGuid(entries, at + 16, p.uuid ?? "00000000-0000-0000-0000-000000000000");
    dv.setBigUint64(at + 32, BigInt(p.start), true);
    dv.setBigUint64(at + 40, BigInt(p.start + p.size - 1), true);
    dv.setBigUint64(at + 48, parseAttrs(p.attrs), true);
    const name = p.name ?? "";
    for (let c = 0; c < Math.min(NAME_CHARS, name.length); c++) dv.setUint16(at + 56 + c * 2, name.charCodeAt(c), true);
  }
  const entriesCrc = Bun.hash.crc32(entries.subarray(0, count * ENTRY_SIZE)) >>> 0;
  const header = (myLba: number, altLba: number, entriesLba: number): Uint8Array => {
    const s = new Uint8Array(ss);
    const h = new DataView(s.buffer);
    s.set(Array.from(SIGNATURE, (c) => c.charCodeAt(0)), 0);
    h.setUint32(8, REVISION, true);
    h.setUint32(12, HEADER_SIZE, true);
    h.setBigUint64(24, BigInt(myLba), true);
    h.setBigUint64(32, BigInt(altLba), true);
    h.setBigUint64(40, BigInt(dump.firstLba ?? 2 + entrySectors), true);
    h.setBigUint64(48, BigInt(dump.lastLba ?? last - 1 - entrySectors), true);
    writeGuid(s, 56, dump.labelId ?? "00000000-0000-0000-0000-000000000000");
    h.setBigUint64(72, BigInt(entriesLba), true);
    h.setUint32(80, count, true);
    h.setUint32(84, ENTRY_SIZE, true);
    h.setUint32(88, entriesCrc, true);
    h.setUint32(16, Bun.hash.crc32(s.subarray(0, HEADER_SIZE)) >>> 0, true);
    return s;
  };
  const pmbr = new Uint8Array(ss);
  const pm = new DataView(pmbr.buffer);
  pmbr.set([0x00, 0x00, 0x02, 0x00, 0xee, 0xff, 0xff, 0xff], 446);
  pm.setUint32(446 + 8, 1, true);
  pm.setUint32(446 + 12, Math.min(diskSectors - 1, 0xffffffff), true);
  pmbr[510] = 0x55;
  pmbr[511] = 0xaa;
  const primary = new Uint8Array((2 + entrySectors) * ss);
  primary.set(pmbr, 0);
  primary.set(header(1, last, 2), ss);
  primary.set(entries, 2 * ss);
  const backupLba = last - entrySectors;
  const backup = new Uint8Array((entrySectors + 1) * ss);
  backup.set(entries, 0);
  backup.set(header(last, 1, backupLba), entrySectors * ss);
  return { primary, backup, backupLba };
}

/** "/dev/sda2" → 2, "/dev/nvme0n1p3" → 3, "/dev/mmcblk0p1" → 1 */
export function partitionNumber(device: string): number {
  const m = /(\d+)$/.exec(device);
  return m ? Number(m[1]) : 0;
}

/**
 * The primary and backup tables of a disk of `diskSectors` whose partitions moved: the saved
 * primary (protective MBR and its boot code, disk GUID, every entry's type, GUID, name and
 * attributes kept) with new start/end sectors per entry number, the header's backup LBA and last
 * usable sector for the new end, and both CRCs recomputed.
 */
export function relocateGpt(primary: Uint8Array, sectorSize: number, moved: Map<number, { start: number; end: number }>, diskSectors: number, savedDiskSectors: number, where: { file: string; offset: number }): { primary: Uint8Array; backup: Uint8Array; backupLba: number } {
  const ss = sectorSize;
  const h = parseGptHeader(primary.subarray(ss, 2 * ss), where, savedDiskSectors);
  const entryBytes = h.entryCount * h.entrySize;
  const entrySectors = Math.ceil(entryBytes / ss);
  if (primary.length < (h.entriesLba + entrySectors) * ss) throw new ImageError(where, "GPT entry array is cut short");
  const out = primary.slice(0, (h.entriesLba + entrySectors) * ss);
  const entries = out.subarray(h.entriesLba * ss, h.entriesLba * ss + entrySectors * ss);
  const dv = new DataView(entries.buffer, entries.byteOffset, entries.byteLength);
  for (const [n, r] of moved) {
    if (n < 1 || n > h.entryCount) throw new Error(`GPT partition ${n} is not in the table`);
    dv.setBigUint64((n - 1) * h.entrySize + 32, BigInt(r.start), true);
    dv.setBigUint64((n - 1) * h.entrySize + 40, BigInt(r.end), true);
  }
  const entriesCrc = Bun.hash.crc32(entries.subarray(0, entryBytes)) >>> 0;
  const last = diskSectors - 1;
  const backupLba = last - entrySectors;
  const header = (sector: Uint8Array, myLba: number, altLba: number, entriesLba: number) => {
    const s = sector.slice();
    const v = new DataView(s.buffer);
    v.setBigUint64(24, BigInt(myLba), true);
    v.setBigUint64(32, BigInt(altLba), true);
    v.setBigUint64(48, BigInt(backupLba - 1), true);
    v.setBigUint64(72, BigInt(entriesLba), true);
    v.setUint32(88, entriesCrc, true);
    const size = v.getUint32(12, true);
    v.setUint32(16, 0, true);
    v.setUint32(16, Bun.hash.crc32(s.subarray(0, size)) >>> 0, true);
    return s;
  };
  const primaryHeader = header(out.subarray(ss, 2 * ss), 1, last, h.entriesLba);
  out.set(primaryHeader, ss);
  // the protective MBR's 0xEE slot covers the disk (or 2^32-1 sectors)
  const pm = new DataView(out.buffer, out.byteOffset, ss);
  for (let slot = 0; slot < 4; slot++) if (out[446 + slot * 16 + 4] === 0xee) pm.setUint32(446 + slot * 16 + 12, Math.min(diskSectors - 1, 0xffffffff), true);
  const backup = new Uint8Array((entrySectors + 1) * ss);
  backup.set(entries, 0);
  backup.set(header(out.subarray(ss, 2 * ss), last, 1, backupLba), entrySectors * ss);
  return { primary: out, backup, backupLba };
}
