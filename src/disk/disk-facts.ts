import path from "node:path";
import { ImageError } from "../errors.ts";
import { describeContent } from "../formats/detect.ts";
import { fileSystemName, HEAD_BYTES } from "../fs/open.ts";
import { foundLvmFacts, savedLvmFacts, type VgFacts } from "../lvm/facts.ts";
import type { ClonezillaFolder } from "./clonezilla.ts";
import { rawDiskVolumeGroups } from "./raw-disk.ts";
import type { DiskLayout, DiskPartition } from "./disk-volume.ts";

/** What `info` shows of one partition of a disk. */
export interface PartitionFacts {
  name: string;
  number: number;
  startSector: number;
  sizeSectors: number;
  start: number;
  size: number;
  type: string;
  content: string;
  fs?: string;
  files?: string[];
  compression?: string[];
  usedBytes?: number;
  imageVolumeSize?: number;
  swapUuid?: string;
  swapLabel?: string;
  problem?: string;
}

export interface LayoutFacts {
  name: string;
  size: number;
  sectorSize: number;
  label: "gpt" | "dos";
  tables: { what: string; offset: number; length: number }[];
  partitions: PartitionFacts[];
  notes: string[];
}

/** What `info` shows of a disk input: a Clonezilla folder (every disk in it) or a raw disk image. */
export type DiskFacts =
  | {
      kind: "clonezilla";
      dir: string;
      disks: LayoutFacts[];
      parts: string[];
      checksums: { file: string; algorithm: string; files: number }[];
      otherFiles: string[];
      problems: string[];
      /** the volume groups the folder saved (lvm_*.list, lvm_VG.conf) */
      lvm: VgFacts[];
      /** the partition the input names, when it names one */
      partition?: string;
    }
  | { kind: "raw-disk"; file: string; disk: LayoutFacts; lvm: VgFacts[]; partition?: string };

/** A partition's facts; opening its image to read the header (damage is a `problem`, not thrown). */
export function partitionFacts(layout: DiskLayout, p: DiskPartition): PartitionFacts {
  const ss = layout.sectorSize;
  const f: PartitionFacts = { name: p.name, number: p.number, startSector: p.start / ss, sizeSectors: p.size / ss, start: p.start, size: p.size, type: p.type, content: p.content.kind };
  const c = p.content;
  try {
    if (c.kind === "image") {
      f.files = c.pieces.map((x) => path.basename(x));
      const image = c.open();
      try {
        f.content = c.tool;
        f.fs = image.info.fsType;
        f.compression = image.info.compression;
        f.usedBytes = image.info.usedBlocks * image.info.blockSize;
        f.imageVolumeSize = image.info.deviceSize;
        if (image.info.deviceSize > p.size) f.problem = `the image's volume (${image.info.deviceSize} bytes) is larger than the partition`;
      } finally {
        image.close();
      }
    } else if (c.kind === "dd") {
      f.files = c.pieces.map((x) => path.basename(x));
      f.fs = "dd";
      const s = c.open();
      f.compression = s.compression;
      s.close();
    } else if (c.kind === "swap") {
      f.fs = "swap";
      f.swapUuid = c.uuid;
      f.swapLabel = c.label;
    } else if (c.kind === "volume") {
      const head = c.volume.read(0, Math.min(HEAD_BYTES, c.volume.size));
      f.fs = fileSystemName(head) ?? describeContent(head.subarray(0, 2048)).replace(/^looks like (an? )?/, "");
    } else if (c.kind === "absent") {
      f.problem = c.reason;
    }
  } catch (e) {
    if (!(e instanceof ImageError)) throw e;
    f.problem = e.message;
  }
  return f;
}

export function layoutFacts(layout: DiskLayout, notes: string[] = [], only?: (p: DiskPartition) => boolean): LayoutFacts {
  return {
    name: layout.name,
    size: layout.size,
    sectorSize: layout.sectorSize,
    label: layout.label,
    tables: layout.tables.map((t) => ({ what: t.what, offset: t.offset, length: t.bytes.length })),
    partitions: layout.partitions.filter((p) => !only || only(p)).map((p) => partitionFacts(layout, p)),
    notes,
  };
}

/** The folder's facts; with `partition`, only the disks and partitions it names. */
export function folderFacts(folder: ClonezillaFolder, partition?: string): DiskFacts {
  const named = (p: DiskPartition) => partition === undefined || p.name === partition || String(p.number) === partition;
  const disks = folder.disks
    .map((disk) => layoutFacts(disk.layout, disk.notes.map((n) => n.replace(/^!/, "")), named))
    .filter((d) => partition === undefined || d.partitions.length > 0);
  const problems = [...folder.problems, ...disks.flatMap((x) => x.partitions.filter((p) => p.problem).map((p) => `${p.name}: ${p.problem}`))];
  return {
    kind: "clonezilla",
    dir: folder.dir,
    disks,
    parts: folder.parts,
    checksums: folder.checksums.map((c) => ({ file: path.basename(c.file), algorithm: c.algorithm, files: c.entries.length })),
    otherFiles: folder.otherFiles,
    problems: [...new Set(problems)],
    lvm: folder.savedLvm ? savedLvmFacts(folder.savedLvm, folder.lvContent, (content, size) => partitionFacts({ name: "", size, sectorSize: 512, label: "dos", tables: [], partitions: [] }, { name: "", number: 0, start: 0, size, type: "lvm", content })) : [],
    partition,
  };
}

/** A raw disk's facts: its table and partitions, and the volume groups its PV labels describe. */
export function rawDiskFacts(file: string, layout: DiskLayout, only?: (p: DiskPartition) => boolean, partition?: string): DiskFacts {
  return { kind: "raw-disk", file, disk: layoutFacts(layout, [], only), lvm: foundLvmFacts(rawDiskVolumeGroups([layout])), partition };
}
