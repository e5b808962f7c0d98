/** What `info` says about the LVM of a Clonezilla folder or a raw disk, as plain data (the CLI renders it). */
import path from "node:path";
import { describeContent } from "../formats/detect.ts";
import type { PartitionContent } from "../disk/disk-volume.ts";
import type { SavedLvm } from "./clonezilla-lvm.ts";
import { logicalVolumeVolume, unreadableReason, type FoundVg } from "./lv-volume.ts";
import type { LogicalVolume, VolumeGroup } from "./metadata.ts";

export interface LvFacts {
  name: string;
  size: number;
  /** "linear", "striped", "thin-pool", "raid1", ... */
  layout: string;
  visible: boolean;
  /** "0+10 striped pv0:80", one per segment */
  segments: string[];
  fs?: string;
  files?: string[];
  compression?: string[];
  usedBytes?: number;
  swapUuid?: string;
  swapLabel?: string;
  problem?: string;
}

export interface VgFacts {
  name: string;
  id: string;
  seqno: number;
  extentSize: number;
  /** where the metadata was read: the vgcfgbackup file, or a PV and offset */
  metadata: string;
  pvs: { key: string; id: string; partition?: string; peStart: number; peCount: number; devSize: number }[];
  lvs: LvFacts[];
  problems: string[];
}

function segmentText(vg: VolumeGroup, lv: LogicalVolume): string[] {
  return lv.segments.map((s) => {
    const where = s.stripes.map((a) => `${a.pv}:${a.start}-${a.start + s.extentCount / s.stripes.length - 1}`).join(" ");
    const kind = s.type === "striped" ? (s.stripes.length > 1 ? `striped x${s.stripes.length} ${s.stripeSize! / 1024} KiB` : "linear") : s.type;
    return `${s.startExtent}+${s.extentCount} ${kind}${where ? ` ${where}` : ""}`;
  });
}

function baseFacts(vg: VolumeGroup, metadata: string): VgFacts {
  return { name: vg.name, id: vg.id, seqno: vg.seqno, extentSize: vg.extentSize, metadata, pvs: vg.pvs.map((p) => ({ key: p.key, id: p.id, peStart: p.peStart, peCount: p.peCount, devSize: p.devSize })), lvs: [], problems: [] };
}

/** What is known of an LV's saved content (its image header, swap header, or why it is missing). */
export type ContentFacts = Pick<LvFacts, "fs" | "files" | "compression" | "usedBytes" | "swapUuid" | "swapLabel" | "problem">;

/**
 * The VGs a Clonezilla folder saved; `lvContent` is the folder's (image, swap header or absent), `describe` says
 * what a content holds as it does for a partition.
 */
export function savedLvmFacts(saved: SavedLvm, lvContent: (imageName: string, size: number) => PartitionContent, describe: (content: PartitionContent, size: number) => ContentFacts): VgFacts[] {
  return saved.vgs.map((v) => {
    const f = baseFacts(v.vg, path.basename(v.conf));
    for (const p of f.pvs) p.partition = v.pvs.find((x) => x.pv.key === p.key)?.partition;
    for (const l of v.lvs) {
      const lf: LvFacts = { name: l.lv.name, size: l.lv.size, layout: l.lv.layout, visible: l.lv.visible, segments: segmentText(v.vg, l.lv) };
      if (l.lv.layout === "linear" || l.lv.layout === "striped") {
        const c = describe(lvContent(l.imageName, l.lv.size), l.lv.size);
        Object.assign(lf, { fs: c.fs, files: c.files, compression: c.compression, usedBytes: c.usedBytes, swapUuid: c.swapUuid, swapLabel: c.swapLabel, problem: c.problem });
      } else lf.problem = `a ${l.lv.layout} LV: not plain extents, not restored`;
      if (!lf.fs && l.fileDescription) lf.fs = l.fileDescription.split(/[,(]/)[0]!.trim();
      f.lvs.push(lf);
    }
    return f;
  });
}

/** The VGs read from PV labels on a disk. */
export function foundLvmFacts(vgs: FoundVg[]): VgFacts[] {
  return vgs.map((found) => {
    const f = baseFacts(found.vg, found.source);
    f.problems = [...found.problems];
    for (const p of f.pvs) p.partition = found.pvs.get(p.key)?.name;
    for (const lv of found.vg.lvs) {
      const lf: LvFacts = { name: lv.name, size: lv.size, layout: lv.layout, visible: lv.visible, segments: segmentText(found.vg, lv) };
      const why = unreadableReason(found, lv);
      if (why) lf.problem = why;
      else {
        const v = logicalVolumeVolume(found, lv);
        lf.fs = describeContent(v.read(0, Math.min(2048, v.size))).replace(/^looks like (an? )?/, "");
        if (lf.fs.startsWith("starts with") && v.size >= 4096 && new TextDecoder().decode(v.read(4086, 10)) === "SWAPSPACE2") lf.fs = "swap";
      }
      f.lvs.push(lf);
    }
    return f;
  });
}
