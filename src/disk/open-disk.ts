import fs from "node:fs";
import path from "node:path";
import { ImageError, UsageError } from "../errors.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import type { Volume } from "../volume/volume.ts";
import { type ClonezillaFolder, looksLikeClonezillaFolder, readClonezillaFolder } from "./clonezilla.ts";
import { bytesVolume, composeVolume, diskParts, type DiskLayout, type DiskPartition, partitionVolume, type Region, sliceVolume } from "./disk-volume.ts";
import { openRawDisk, rawDiskVolumeGroups, volumeGroupsOf } from "./raw-disk.ts";
import { logicalVolumeVolume, unreadableReason, type FoundVg } from "../lvm/lv-volume.ts";

export interface DiskPartitionVolume extends Volume {
  readonly partition: DiskPartition;
  /** the disk it belongs to */
  readonly disk: string;
}

export interface DiskVolume extends Volume {
  readonly layout: DiskLayout;
  readonly partitions: DiskPartitionVolume[];
}

export interface OpenedDisk {
  disks: DiskVolume[];
  /** the partitions of every disk, in order */
  partitions: DiskPartitionVolume[];
  /**
   * every logical volume with plain extents: partition.name "vg0/root", disk the VG's name. A folder without
   * LVM files has its partition images looked at for PV labels on first use (which opens every image).
   */
  readonly logicalVolumes: DiskPartitionVolume[];
  /** the VGs read from PV labels (raw disks; a folder's partition images; a folder's saved VGs are in folder.savedLvm) */
  readonly volumeGroups: FoundVg[];
  /** set when the input was a Clonezilla folder */
  folder?: ClonezillaFolder;
  /** open every partition now: throws (naming the partition) where one has no random access */
  openAll(): void;
  close(): void;
}

/**
 * A Clonezilla image folder or a raw whole-disk image as disks and partitions, each a random-
 * access Volume. A partition's image is opened on first use; one without random access (a
 * compressed image with no seek index) throws then, naming the partition.
 */
/** `seekIndex`: how compressed partition images are read at random (default: their index built on first use). */
export function openDisk(input: string, seekIndex?: SeekIndexOptions): OpenedDisk {
  if (looksLikeClonezillaFolder(input)) {
    const folder = readClonezillaFolder(input);
    if (folder.disks.length === 0) throw new ImageError({ file: input }, "the folder holds partitions but no disk (a saveparts image); pick one with --partition");
    return assemble(folder.disks.map((d) => d.layout), folder, () => {}, seekIndex, folder.savedLvm ? () => [] : undefined);
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(input);
  } catch (e) {
    throw new ImageError({ file: input }, (e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file or directory" : (e as Error).message);
  }
  if (st.isDirectory()) throw new ImageError({ file: input }, "not a Clonezilla image folder (no parts or disk file)");
  const raw = openRawDisk(input);
  try {
    // read when an LV is asked for: damaged LVM metadata leaves the disk and its partitions readable
    return assemble([raw.layout], undefined, () => raw.volume.close(), seekIndex, () => rawDiskVolumeGroups([raw.layout]));
  } catch (e) {
    raw.volume.close();
    throw e;
  }
}

/** `volumeGroups`: how to find the VGs on PV labels; undefined: look at the partitions' images for PV labels. */
function assemble(layouts: DiskLayout[], folder: ClonezillaFolder | undefined, onClose: () => void, seekIndex: SeekIndexOptions | undefined, volumeGroups: (() => FoundVg[]) | undefined): OpenedDisk {
  const lazies: LazyVolume[] = [];
  const disks: DiskVolume[] = layouts.map((layout) => {
    const regions: Region[] = [];
    const lazyOf = new Map<DiskPartition, LazyVolume>();
    for (const part of diskParts(layout)) {
      if (part.kind === "table") {
        regions.push({ offset: part.offset, volume: bytesVolume(part.table.what, part.table.bytes, layout.sectorSize) });
        continue;
      }
      const p = part.partition;
      const lazy = new LazyVolume(`${layout.name} ${p.name}`, p.size, layout.sectorSize, () => partitionVolume(layout, p, seekIndex));
      lazies.push(lazy);
      lazyOf.set(p, lazy);
      if (p.content.kind !== "absent") regions.push({ offset: part.offset, volume: lazy.asVolume() });
    }
    const volume = layout.backing ? sliceVolume(layout.backing, 0, layout.size, layout.name, layout.sectorSize) : composeVolume(layout.name, layout.size, layout.sectorSize, regions);
    // an extended partition reads as what the disk holds there: its EBRs and the logical partitions
    const parts: DiskPartitionVolume[] = layout.partitions
      .map((p) => Object.assign(lazyOf.get(p)?.asVolume() ?? sliceVolume(volume, p.start, p.size, `${layout.name} ${p.name}`), { partition: p, disk: layout.name }))
      .sort((a, b) => a.partition.number - b.partition.number);
    return Object.assign(volume, { layout, partitions: parts });
  });
  const lvPartition = (vg: string, lv: string, size: number, volume: Volume): DiskPartitionVolume =>
    Object.assign(volume, { partition: { name: `${vg}/${lv}`, number: 0, start: 0, size, type: "lvm", content: { kind: "volume" as const, volume } }, disk: vg });
  const savedLvs: DiskPartitionVolume[] = [];
  for (const v of folder?.savedLvm?.vgs ?? []) {
    const lvLayout: DiskLayout = { name: v.vg.name, size: 0, sectorSize: 512, label: "dos", tables: [], partitions: [] };
    for (const l of v.lvs) {
      if (l.lv.layout !== "linear" && l.lv.layout !== "striped") continue;
      const content = folder!.lvContent(l.imageName, l.lv.size);
      const p: DiskPartition = { name: `${v.vg.name}/${l.lv.name}`, number: 0, start: 0, size: l.lv.size, type: "lvm", content };
      const lazy = new LazyVolume(`${v.vg.name}/${l.lv.name}`, l.lv.size, 512, () => partitionVolume(lvLayout, p, seekIndex));
      lazies.push(lazy);
      savedLvs.push(Object.assign(lazy.asVolume(), { partition: p, disk: v.vg.name }));
    }
  }
  let found: FoundVg[] | undefined;
  const foundVgs = () =>
    (found ??= volumeGroups ? volumeGroups() : volumeGroupsOf(
      disks.flatMap((d) => d.partitions.filter((p) => p.partition.content.kind === "image" || p.partition.content.kind === "dd").map((p) => ({ name: p.partition.name, file: `${d.layout.name} ${p.partition.name}`, at: 0, volume: p as Volume }))),
    ));
  let lvs: DiskPartitionVolume[] | undefined;
  const logicalVolumes = () =>
    (lvs ??= [...savedLvs, ...foundVgs().flatMap((f) => f.vg.lvs.filter((lv) => !unreadableReason(f, lv)).map((lv) => lvPartition(f.vg.name, lv.name, lv.size, logicalVolumeVolume(f, lv))))]);
  return {
    disks,
    partitions: disks.flatMap((d) => d.partitions),
    get logicalVolumes() {
      return logicalVolumes();
    },
    get volumeGroups() {
      return foundVgs();
    },
    folder,
    openAll() {
      for (const l of lazies) l.open();
    },
    close() {
      for (const l of lazies) l.close();
      onClose();
    },
  };
}

class LazyVolume {
  private inner: Volume | undefined;
  constructor(
    readonly name: string,
    readonly size: number,
    readonly blockSize: number,
    private readonly opener: () => Volume,
  ) {}

  open(): Volume {
    this.inner ??= this.opener();
    return this.inner;
  }

  close(): void {
    this.inner?.close();
    this.inner = undefined;
  }

  asVolume(): Volume {
    const self = this;
    return {
      name: this.name,
      size: this.size,
      blockSize: this.blockSize,
      read: (offset, length) => self.open().read(offset, length),
      extents: (offset, length) => self.open().extents(offset, length),
      // the disk owns its partitions: OpenedDisk.close closes them once
      close() {},
    };
  }
}

/** "DISK@N" → DISK and N, when DISK exists and DISK@N does not; N is a partition ("2", "sda2") or a logical volume ("vg0/root", "vg0-root"). */
export function splitPartitionSuffix(input: string): { input: string; partition?: string } {
  const at = input.lastIndexOf("@");
  if (at <= 0 || fs.existsSync(input)) return { input };
  const base = input.slice(0, at);
  const partition = input.slice(at + 1);
  if (!/^[A-Za-z0-9._+:-]{1,64}(\/[A-Za-z0-9._+-]{1,128})?$/.test(partition) || !fs.existsSync(base)) return { input };
  return { input: base, partition };
}

/** One partition of an opened disk by number ("2") or name ("sda2"), or a logical volume by "VG/LV" or its image name "VG-LV". */
export function findPartition(opened: OpenedDisk, which: string, diskName?: string): DiskPartitionVolume {
  const candidates = opened.partitions.filter((p) => diskName === undefined || p.disk === diskName);
  const found = candidates.filter((p) => p.partition.name === which || String(p.partition.number) === which || p.partition.name === `${path.basename(p.disk)}@${which}`);
  if (found.length === 1) return found[0]!;
  const lvs = found.length === 0 && /^[^/]+[/-][^/]+$/.test(which) ? opened.logicalVolumes.filter((l) => l.partition.name === which || l.partition.name.replace("/", "-") === which) : [];
  if (lvs.length === 1) return lvs[0]!;
  const lvNames = /[/-]/.test(which) ? opened.logicalVolumes.map((l) => l.partition.name) : [];
  const list = [...candidates.map((p) => (opened.disks.length > 1 ? `${p.partition.name} (${p.disk})` : p.partition.name)), ...lvNames].join(", ");
  if (found.length > 1) throw new UsageError(`partition ${which} is ambiguous (several disks); name it: ${list}`);
  throw new UsageError(`no partition ${which}; the partitions are: ${list || "none"}`);
}
