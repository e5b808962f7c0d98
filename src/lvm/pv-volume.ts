/**
 * A physical volume as `pvcreate --uuid U --restorefile lvm_VG.conf` + `vgcfgrestore --force -f lvm_VG.conf VG`
 * (what Clonezilla's restore_logv runs) and then the writes of each LV's image leave it, as a Volume:
 * - sector 1: the label and PV header (the partition's size, one data area at pe_start, one metadata area
 *   from 4 KiB up to pe_start, header extension version 2 with the in-a-VG flag);
 * - at 4 KiB: the metadata area header (checksum, one location) and at 4 KiB + 512 the VG text as LVM writes
 *   it to a fresh area, NUL-terminated. Documented choices where vgcfgrestore would write its machine's facts:
 *   seqno is the backup's + 1 (vgcfgrestore commits once), creation_host and creation_time are the backup's
 *   (so that every restore of a folder is the same bytes), device hints stay as saved, and the description says
 *   what wrote it;
 * - every LV's bytes at pe_start + extent * extent_size, striped LVs chunk by chunk; unused extents are holes.
 */
import { bytesVolume, composeVolume, type Region } from "../disk/disk-volume.ts";
import { checkRange, type Volume } from "../volume/volume.ts";
import { buildMdaHeader, buildPvLabel, lvmCrc, MDA_HEADER_SIZE, SECTOR } from "./label.ts";
import { type PvArea, pvAreas, type VolumeGroup, withValue, writeMetadataText } from "./metadata.ts";

/** where pvcreate puts the first metadata area (after the label sectors, 4 KiB aligned) */
export const MDA_START = 4096;

export interface PvContent {
  vg: VolumeGroup;
  pvKey: string;
  uuid: string;
  /** the partition's size */
  size: number;
  name: string;
  /** the bytes of an LV (its size exactly), opened on first use; undefined: the LV reads as zeros (a hole) */
  lvVolume(lvName: string): Volume | undefined;
  /** the backup file's name, for the description */
  confName: string;
}

/** The VG text as written to a fresh metadata area: the VG section with seqno + 1, then the top-level facts. */
export function restoredMetadataText(vg: VolumeGroup, confName: string): string {
  const vgNode = vg.nodes.find((n) => n.children && n.key === vg.name)!;
  const [updated] = withValue([vgNode], [vg.name, "seqno"], vg.seqno + 1);
  const top = vg.nodes.filter((n) => !n.children);
  const keep = (key: string, fallback: string | number) => top.find((n) => n.key === key)?.value ?? fallback;
  const trailer = [
    { key: "contents", at: 0, value: "Text Format Volume Group" },
    { key: "version", at: 0, value: 1 },
    { key: "description", at: 0, value: `Write from vgcfgrestore --force -f ${confName} ${vg.name} (imgtool restore)` },
    { key: "creation_host", at: 0, value: keep("creation_host", "") },
    { key: "creation_time", at: 0, value: keep("creation_time", 0) },
  ];
  return writeMetadataText([updated!, ...trailer]);
}

export function physicalVolumeVolume(c: PvContent): Volume {
  const { vg, pvKey, size } = c;
  const pv = vg.pvs.find((p) => p.key === pvKey)!;
  if (pv.peStart < MDA_START + 2 * MDA_HEADER_SIZE) throw new Error(`${c.name}: pe_start ${pv.peStart} leaves no room for a metadata area`);
  if (pv.peStart + pv.peCount * vg.extentSize > size) throw new Error(`${c.name}: ${pv.peCount} extents from ${pv.peStart} do not fit the ${size}-byte partition`);
  const area = { offset: MDA_START, size: pv.peStart - MDA_START };
  const text = new TextEncoder().encode(`${restoredMetadataText(vg, c.confName)}\0`);
  if (text.length > area.size - MDA_HEADER_SIZE) throw new Error(`${c.name}: the VG metadata (${text.length} bytes) does not fit the ${area.size}-byte metadata area`);
  const label = buildPvLabel({ uuid: c.uuid, deviceSize: size, dataAreas: [{ offset: pv.peStart, size: 0 }], metadataAreas: [area], inVg: true });
  const mda = buildMdaHeader(area, { offset: MDA_HEADER_SIZE, size: text.length, checksum: lvmCrc(text) });
  const head: { offset: number; bytes: Uint8Array }[] = [
    { offset: SECTOR, bytes: label },
    { offset: MDA_START, bytes: mda },
    { offset: MDA_START + MDA_HEADER_SIZE, bytes: text },
  ];
  const opened = new Map<string, Volume | undefined>();
  const lvOf = (name: string) => {
    if (!opened.has(name)) opened.set(name, c.lvVolume(name));
    return opened.get(name);
  };
  const regions: Region[] = head.map((h) => ({ offset: h.offset, volume: bytesVolume(c.name, h.bytes) }));
  for (const a of pvAreas(vg, pvKey)) {
    const lv = a.lv;
    if (lv.layout !== "linear" && lv.layout !== "striped") continue;
    regions.push({ offset: pv.peStart + a.start * vg.extentSize, volume: areaVolume(vg, a, () => lvOf(lv.name), `${c.name} ${vg.name}/${lv.name}`) });
  }
  regions.sort((x, y) => x.offset - y.offset);
  return composeVolume(c.name, size, SECTOR, regions, () => {
    for (const v of opened.values()) v?.close();
    opened.clear();
  });
}

/** One stripe of a segment as it lies on its PV: LV bytes chunk by chunk (all of them for a linear one); zeros when the LV has no content. */
function areaVolume(vg: VolumeGroup, a: PvArea, lv: () => Volume | undefined, name: string): Volume {
  const seg = a.segment;
  const size = a.extents * vg.extentSize;
  const n = seg.stripes.length;
  const ss = n > 1 ? seg.stripeSize! : size;
  const segStart = seg.startExtent * vg.extentSize;
  /** pieces of [offset, end): the LV offset behind each */
  const pieces = function* (offset: number, end: number) {
    for (let pos = offset; pos < end; ) {
      const row = Math.floor(pos / ss);
      const within = pos - row * ss;
      const run = Math.min(end - pos, ss - within);
      yield { pos, run, lvOffset: segStart + (row * n + a.stripe) * ss + within };
      pos += run;
    }
  };
  return {
    size,
    name,
    blockSize: SECTOR,
    read(offset, length) {
      checkRange(this, offset, length);
      const out = new Uint8Array(length);
      const v = lv();
      if (v) for (const p of pieces(offset, offset + length)) out.set(v.read(p.lvOffset, p.run), p.pos - offset);
      return out;
    },
    *extents(offset, length) {
      checkRange(this, offset, length);
      const v = lv();
      if (!v) {
        if (length > 0) yield { offset, length, data: false };
        return;
      }
      for (const p of pieces(offset, offset + length)) for (const e of v.extents(p.lvOffset, p.run)) yield { offset: p.pos + (e.offset - p.lvOffset), length: e.length, data: e.data };
    },
    // the PV closes the LVs it opened
    close() {},
  };
}
