// LVM2 physical volume label, PV header and metadata area header (lvm2 lib/label/label.h, lib/format_text/layout.h, format-text.c).
import { ChecksumError, ImageError, type Location } from "../errors.ts";
import { partcloneCrc32 } from "../checksum/crc32.ts";

export const SECTOR = 512;
/** the label is looked for in the first four sectors (LABEL_SCAN_SECTORS) */
export const LABEL_SCAN_SECTORS = 4;
export const MDA_HEADER_SIZE = 512;
/** label.h LABEL_ID, layout.h LVM2_LABEL, FMTT_MAGIC, FMTT_VERSION, ID_LEN */
const [LABEL_ID, LABEL_TYPE, MDA_MAGIC, MDA_VERSION, ID_LEN] = ["LABELONE", "LVM2 001", " LVM2 x[5A%r0N*>", 1, 32] as const;
/** pv_header_extension: version 2 carries bootloader areas; PV_EXT_USED marks a PV that belongs to a VG; RAW_LOCN_IGNORED: a copy kept but not read */
const [PV_HEADER_EXTENSION_VERSION, PV_EXT_USED, RAW_LOCN_IGNORED] = [2, 1, 1] as const;
/** lvm2 lib/misc/crc.h INITIAL_CRC; the register is the IEEE one without the final inversion */
const INITIAL_CRC = 0xf597a6cf;

export function lvmCrc(data: Uint8Array): number {
  return partcloneCrc32(INITIAL_CRC, data);
}

export interface DiskArea {
  /** in bytes from the PV's start */
  offset: number;
  /** in bytes; 0 = to the end of the device (a data area) */
  size: number;
}

export interface PvLabel {
  /** the sector (0..3) the label is in */
  sector: number;
  /** "UB774N-TEcl-uivX-q871-RdrE-yL8t-QpY2kN" */
  uuid: string;
  deviceSize: number;
  dataAreas: DiskArea[];
  metadataAreas: DiskArea[];
  /** from the header extension (0 without one) */
  extensionVersion: number;
  inVg: boolean;
}

export interface RawLocation {
  /** from the metadata area's start */
  offset: number;
  size: number;
  checksum: number;
  ignored: boolean;
}

export interface MdaHeader {
  start: number;
  size: number;
  /** [0] the committed metadata, [1] a precommitted one when present */
  locations: RawLocation[];
}

/** "UB774NTEcl..." (32 characters) → "UB774N-TEcl-uivX-q871-RdrE-yL8t-QpY2kN" */
export function formatUuid(raw: string): string {
  return [raw.slice(0, 6), raw.slice(6, 10), raw.slice(10, 14), raw.slice(14, 18), raw.slice(18, 22), raw.slice(22, 26), raw.slice(26)].join("-");
}

export function isUuid(text: string): boolean {
  return /^[A-Za-z0-9!#]{6}-[A-Za-z0-9!#]{4}-[A-Za-z0-9!#]{4}-[A-Za-z0-9!#]{4}-[A-Za-z0-9!#]{4}-[A-Za-z0-9!#]{4}-[A-Za-z0-9!#]{6}$/.test(text);
}

const ascii = (b: Uint8Array) => String.fromCharCode(...b);

/** Whether one of the first four sectors of `head` starts with LABELONE (no checks beyond that). */
export function hasLvmLabel(head: Uint8Array): boolean {
  for (let s = 0; s < LABEL_SCAN_SECTORS && (s + 1) * SECTOR <= head.length; s++) if (ascii(head.subarray(s * SECTOR, s * SECTOR + 8)) === LABEL_ID) return true;
  return false;
}

/** The label and PV header in the first four sectors of a PV; undefined when there is no LABELONE sector. */
export function parsePvLabel(head: Uint8Array, where: Location): PvLabel | undefined {
  const base = where.offset ?? 0;
  for (let s = 0; s < LABEL_SCAN_SECTORS && (s + 1) * SECTOR <= head.length; s++) {
    const sec = head.subarray(s * SECTOR, (s + 1) * SECTOR);
    if (ascii(sec.subarray(0, 8)) !== LABEL_ID) continue;
    const at = (o: number): Location => ({ file: where.file, offset: base + s * SECTOR + o });
    const dv = new DataView(sec.buffer, sec.byteOffset, SECTOR);
    const sectorXl = Number(dv.getBigUint64(8, true));
    if (sectorXl !== s) throw new ImageError(at(8), `LVM label says it is in sector ${sectorXl}, it is in sector ${s}`);
    const stored = dv.getUint32(16, true);
    const computed = lvmCrc(sec.subarray(20));
    if (stored !== computed) throw new ChecksumError(at(16), "LVM label crc mismatch", `stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)}`);
    const contentAt = dv.getUint32(20, true);
    if (contentAt !== 32) throw new ImageError(at(20), "LVM label content offset is not 32", String(contentAt));
    if (ascii(sec.subarray(24, 32)) !== LABEL_TYPE) throw new ImageError(at(24), "LVM label type is not LVM2 001", JSON.stringify(ascii(sec.subarray(24, 32))));
    const rawUuid = ascii(sec.subarray(32, 32 + ID_LEN));
    const uuid = formatUuid(rawUuid);
    if (!isUuid(uuid)) throw new ImageError(at(32), "PV UUID is not 32 LVM id characters", JSON.stringify(rawUuid));
    const deviceSize = Number(dv.getBigUint64(64, true));
    let pos = 72;
    const list = (what: string): DiskArea[] => {
      const out: DiskArea[] = [];
      for (;;) {
        if (pos + 16 > SECTOR) throw new ImageError(at(pos), `PV header ${what} list runs past the label sector`);
        const offset = Number(dv.getBigUint64(pos, true));
        const size = Number(dv.getBigUint64(pos + 8, true));
        pos += 16;
        if (offset === 0) return out;
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size)) throw new ImageError(at(pos - 16), `PV header ${what} is absurd`);
        out.push({ offset, size });
      }
    };
    const dataAreas = list("data area");
    const metadataAreas = list("metadata area");
    let extensionVersion = 0;
    let inVg = false;
    if (pos + 8 <= SECTOR) {
      extensionVersion = dv.getUint32(pos, true);
      inVg = (dv.getUint32(pos + 4, true) & PV_EXT_USED) !== 0;
    }
    if (!Number.isSafeInteger(deviceSize)) throw new ImageError(at(64), "PV device size is absurd");
    return { sector: s, uuid, deviceSize, dataAreas, metadataAreas, extensionVersion, inVg };
  }
  return undefined;
}

/** The label sector as pvcreate writes it (sector 1, header extension version 2). */
export function buildPvLabel(label: Omit<PvLabel, "sector" | "extensionVersion">, sector = 1): Uint8Array {
  const sec = new Uint8Array(SECTOR);
  const dv = new DataView(sec.buffer);
  const enc = (s: string, at: number) => sec.set(Array.from(s, (c) => c.charCodeAt(0)), at);
  enc(LABEL_ID, 0);
  dv.setBigUint64(8, BigInt(sector), true);
  dv.setUint32(20, 32, true);
  enc(LABEL_TYPE, 24);
  enc(label.uuid.replace(/-/g, ""), 32);
  dv.setBigUint64(64, BigInt(label.deviceSize), true);
  let pos = 72;
  for (const list of [label.dataAreas, label.metadataAreas]) {
    for (const a of list) {
      dv.setBigUint64(pos, BigInt(a.offset), true);
      dv.setBigUint64(pos + 8, BigInt(a.size), true);
      pos += 16;
    }
    pos += 16;
  }
  dv.setUint32(pos, PV_HEADER_EXTENSION_VERSION, true);
  dv.setUint32(pos + 4, label.inVg ? PV_EXT_USED : 0, true);
  dv.setUint32(16, lvmCrc(sec.subarray(20)), true);
  return sec;
}

/** The metadata area header at the area's start; `area` is what the PV header says. */
export function parseMdaHeader(bytes: Uint8Array, area: DiskArea, where: Location): MdaHeader {
  const base = where.offset ?? 0;
  const at = (o: number): Location => ({ file: where.file, offset: base + o });
  if (bytes.length < MDA_HEADER_SIZE) throw new ImageError(at(0), "metadata area header is cut short");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, MDA_HEADER_SIZE);
  if (ascii(bytes.subarray(4, 20)) !== MDA_MAGIC) throw new ImageError(at(4), "not an LVM metadata area header (magic)");
  const stored = dv.getUint32(0, true);
  const computed = lvmCrc(bytes.subarray(4, MDA_HEADER_SIZE));
  if (stored !== computed) throw new ChecksumError(at(0), "LVM metadata area header crc mismatch", `stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)}`);
  const version = dv.getUint32(20, true);
  if (version !== MDA_VERSION) throw new ImageError(at(20), "LVM metadata area header version is not 1", String(version));
  const start = Number(dv.getBigUint64(24, true));
  const size = Number(dv.getBigUint64(32, true));
  if (start !== area.offset || size !== area.size) throw new ImageError(at(24), `metadata area header says start ${start} size ${size}, the PV header ${area.offset} and ${area.size}`);
  const locations: RawLocation[] = [];
  for (let pos = 40; pos + 24 <= MDA_HEADER_SIZE; pos += 24) {
    const offset = Number(dv.getBigUint64(pos, true));
    if (offset === 0) break;
    const len = Number(dv.getBigUint64(pos + 8, true));
    if (offset < MDA_HEADER_SIZE || offset >= size || len > size - MDA_HEADER_SIZE || !Number.isSafeInteger(len)) {
      throw new ImageError(at(pos), `metadata location ${offset}+${len} lies outside the ${size}-byte metadata area`);
    }
    locations.push({ offset, size: len, checksum: dv.getUint32(pos + 16, true), ignored: (dv.getUint32(pos + 20, true) & RAW_LOCN_IGNORED) !== 0 });
  }
  return { start, size, locations };
}

export function buildMdaHeader(area: DiskArea, text?: { offset: number; size: number; checksum: number }): Uint8Array {
  const sec = new Uint8Array(MDA_HEADER_SIZE);
  const dv = new DataView(sec.buffer);
  sec.set(Array.from(MDA_MAGIC, (c) => c.charCodeAt(0)), 4);
  dv.setUint32(20, MDA_VERSION, true);
  dv.setBigUint64(24, BigInt(area.offset), true);
  dv.setBigUint64(32, BigInt(area.size), true);
  if (text) {
    dv.setBigUint64(40, BigInt(text.offset), true);
    dv.setBigUint64(48, BigInt(text.size), true);
    dv.setUint32(56, text.checksum, true);
  }
  dv.setUint32(0, lvmCrc(sec.subarray(4)), true);
  return sec;
}

/**
 * The pieces of a metadata text inside its circular area: from `offset` to the area's end, then
 * on from just after the header (format-text.c _vg_read_raw_area wraps there).
 */
export function textPieces(area: DiskArea, loc: RawLocation): { offset: number; length: number }[] {
  const first = Math.min(loc.size, area.size - loc.offset);
  const pieces = [{ offset: area.offset + loc.offset, length: first }];
  if (first < loc.size) pieces.push({ offset: area.offset + MDA_HEADER_SIZE, length: loc.size - first });
  return pieces;
}
