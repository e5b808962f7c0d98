/**
 * Logical volumes read through their physical volumes: the PV labels of a disk's partitions (or of any
 * volumes), the newest metadata copy (highest seqno over every PV's metadata areas), and each LV whose
 * segments are plain extents as a Volume mapping its bytes onto the PVs.
 */
import { ChecksumError, ImageError } from "../errors.ts";
import { checkRange, type Extent, type Volume } from "../volume/volume.ts";
import { hasLvmLabel, LABEL_SCAN_SECTORS, lvmCrc, MDA_HEADER_SIZE, parseMdaHeader, parsePvLabel, SECTOR, textPieces, type PvLabel } from "./label.ts";
import { MAX_METADATA_TEXT, placeLvOffset, readVolumeGroup, type LogicalVolume, type VolumeGroup } from "./metadata.ts";

export interface FoundPv {
  /** what the volume is called ("disk.raw@2", "sda2") */
  name: string;
  /** for messages: the file the PV lies in and the PV's first byte in it */
  file: string;
  at: number;
  volume: Volume;
  label: PvLabel;
}

export interface FoundVg {
  vg: VolumeGroup;
  /** the PV volumes of the VG by their key in the metadata ("pv0"); absent PVs are missing */
  pvs: Map<string, FoundPv>;
  /** where the metadata used was read */
  source: string;
  /** PVs the metadata names that were not found, one line each */
  problems: string[];
}

/** A PV's label when the volume holds one; errors in a label that is there are thrown (naming `file` and offsets from `at`). */
export function readPvLabel(volume: Volume, file: string, at: number): PvLabel | undefined {
  if (volume.size < LABEL_SCAN_SECTORS * SECTOR) return undefined;
  const head = volume.read(0, LABEL_SCAN_SECTORS * SECTOR);
  if (!hasLvmLabel(head)) return undefined;
  return parsePvLabel(head, { file, offset: at });
}

/** The VG metadata of each PV (newest copy over its areas), grouped by VG id, newest seqno wins. */
export function findVolumeGroups(pvs: FoundPv[]): FoundVg[] {
  const texts: { vg: VolumeGroup; pv: FoundPv; where: string }[] = [];
  for (const pv of pvs) {
    for (const area of pv.label.metadataAreas) {
      if (area.offset + area.size > pv.volume.size || area.size < 2 * MDA_HEADER_SIZE) {
        throw new ImageError({ file: pv.file, offset: pv.at + SECTOR * pv.label.sector + 72 }, `metadata area ${area.offset}+${area.size} lies outside the ${pv.volume.size}-byte PV`);
      }
      const header = parseMdaHeader(pv.volume.read(area.offset, MDA_HEADER_SIZE), area, { file: pv.file, offset: pv.at + area.offset });
      const loc = header.locations[0];
      if (!loc || loc.ignored || loc.size === 0) continue;
      if (loc.size > MAX_METADATA_TEXT) throw new ImageError({ file: pv.file, offset: pv.at + area.offset + 48 }, "LVM metadata text is too long", `${loc.size} bytes`);
      const bytes = new Uint8Array(loc.size);
      let at = 0;
      for (const piece of textPieces(area, loc)) {
        bytes.set(pv.volume.read(piece.offset, piece.length), at);
        at += piece.length;
      }
      const computed = lvmCrc(bytes);
      const textAt = pv.at + area.offset + loc.offset;
      if (computed !== loc.checksum) throw new ChecksumError({ file: pv.file, offset: textAt }, "LVM metadata text crc mismatch", `stored 0x${loc.checksum.toString(16)}, computed 0x${computed.toString(16)}`);
      const end = bytes.indexOf(0);
      const text = new TextDecoder().decode(end >= 0 ? bytes.subarray(0, end) : bytes);
      // a text that wraps around the area's end gets offsets of the unwrapped text
      texts.push({ vg: readVolumeGroup(text, { file: pv.file, offset: textAt }), pv, where: `${pv.name} (${pv.file} at ${textAt})` });
    }
  }
  const byId = new Map<string, (typeof texts)[number]>();
  for (const t of texts) {
    const have = byId.get(t.vg.id);
    if (!have || t.vg.seqno > have.vg.seqno) byId.set(t.vg.id, t);
  }
  const out: FoundVg[] = [];
  for (const t of byId.values()) {
    const map = new Map<string, FoundPv>();
    const problems: string[] = [];
    for (const p of t.vg.pvs) {
      const found = pvs.find((x) => x.label.uuid === p.id);
      if (!found) {
        problems.push(`${t.vg.name}: PV ${p.key} (${p.id}) was not found; LVs on it cannot be read`);
        continue;
      }
      if (p.peStart + p.peCount * t.vg.extentSize > found.volume.size) {
        throw new ImageError({ file: found.file, offset: found.at }, `${t.vg.name} ${p.key}: ${p.peCount} extents from ${p.peStart} reach past the ${found.volume.size}-byte PV`);
      }
      map.set(p.key, found);
    }
    out.push({ vg: t.vg, pvs: map, source: t.where, problems });
  }
  return out.sort((a, b) => a.vg.name.localeCompare(b.vg.name));
}

/** Why an LV cannot be read as plain bytes, or undefined when it can. */
export function unreadableReason(found: FoundVg, lv: LogicalVolume): string | undefined {
  if (lv.layout !== "linear" && lv.layout !== "striped") return `a ${lv.layout} LV (its data is not laid out as plain extents)`;
  const missing = [...new Set(lv.segments.flatMap((s) => s.stripes.map((a) => a.pv)))].filter((k) => !found.pvs.has(k));
  if (missing.length) return `on missing PV ${missing.join(", ")}`;
  return undefined;
}

/** An LV's bytes through its PVs' volumes. */
export function logicalVolumeVolume(found: FoundVg, lv: LogicalVolume, name = `${found.vg.name}/${lv.name}`): Volume {
  const why = unreadableReason(found, lv);
  if (why) throw new ImageError({ file: found.source }, `${found.vg.name}/${lv.name} cannot be read: ${why}`);
  const vg = found.vg;
  const pieces = function* (offset: number, length: number) {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const p = placeLvOffset(vg, lv, pos, end - pos);
      yield { pos, pv: found.pvs.get(p.pv)!.volume, pvOffset: p.pvOffset, run: p.run };
      pos += p.run;
    }
  };
  return {
    size: lv.size,
    name,
    blockSize: SECTOR,
    read(offset, length) {
      checkRange(this, offset, length);
      const out = new Uint8Array(length);
      for (const p of pieces(offset, length)) out.set(p.pv.read(p.pvOffset, p.run), p.pos - offset);
      return out;
    },
    *extents(offset, length) {
      checkRange(this, offset, length);
      let pending: Extent | undefined;
      for (const p of pieces(offset, length)) {
        for (const e of p.pv.extents(p.pvOffset, p.run)) {
          const at = p.pos + (e.offset - p.pvOffset);
          if (pending && pending.data === e.data && pending.offset + pending.length === at) pending.length += e.length;
          else {
            if (pending) yield pending;
            pending = { offset: at, length: e.length, data: e.data };
          }
        }
      }
      if (pending) yield pending;
    },
    // the PVs belong to the disk
    close() {},
  };
}
