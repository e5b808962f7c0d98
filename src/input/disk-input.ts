import fs from "node:fs";
import path from "node:path";
import { ImageError, UsageError } from "../errors.ts";
import { type ClonezillaFolder, looksLikeClonezillaFolder, readClonezillaFolder } from "../disk/clonezilla.ts";
import { diskDataBatches, type DiskSpan, diskSpan, spanDataBytes, unsavedPartitions } from "../disk/disk-data.ts";
import { folderFacts, rawDiskFacts } from "../disk/disk-facts.ts";
import type { DiskLayout, DiskPartition } from "../disk/disk-volume.ts";
import { findPartition, openDisk, type OpenedDisk } from "../disk/open-disk.ts";
import { openRawDisk } from "../disk/raw-disk.ts";
import { verifyFolder } from "../disk/verify-disk.ts";
import type { ProgressFactory } from "../progress.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { closingWith, type Volume } from "../volume/volume.ts";
import type { Input, InputFacts, VerifyReport } from "./input.ts";

export interface DiskInputOptions {
  /** one partition: its number or name ("2", "sda2") */
  partition?: string;
  /** the disk of a folder that holds several ("sdb") */
  disk?: string;
  /** how compressed partition images are read at random (default: their index built on first use) */
  seekIndex?: SeekIndexOptions;
}

/**
 * A whole disk (a Clonezilla folder, a raw disk image) or one partition of it, as an Input. Its
 * layout (tables, hidden data, EBRs, swap headers, NTFS backup boot sectors) comes from the disk
 * modules; read in order it needs no seek index.
 */
export class DiskInput implements Input {
  readonly kind: "disk" | "partition";
  readonly files: readonly string[];
  private readonly layouts: DiskLayout[];
  private chosen: DiskSpan | undefined;
  private readonly folder: ClonezillaFolder | undefined;
  private readonly backing: Volume | undefined;
  private opened: OpenedDisk | undefined;

  constructor(
    readonly name: string,
    /** the folder or raw disk file */
    readonly path: string,
    private readonly options: DiskInputOptions,
  ) {
    let layouts: DiskLayout[];
    if (fs.statSync(path).isDirectory()) {
      if (!looksLikeClonezillaFolder(path)) throw new ImageError({ file: path }, "not a Clonezilla image folder (no parts or disk file)");
      this.folder = readClonezillaFolder(path);
      layouts = this.folder.disks.map((d) => d.layout);
      if (layouts.length === 0) throw new ImageError({ file: path }, "the folder holds partitions but no disk (a saveparts image); pick one with --partition");
      this.files = folderFiles(path);
    } else {
      if (options.disk !== undefined) throw new UsageError("--disk is for Clonezilla folders; a raw disk image is one disk");
      const raw = openRawDisk(path);
      this.backing = raw.volume;
      layouts = [raw.layout];
      this.files = [path];
    }
    this.layouts = layouts;
    this.kind = options.partition === undefined ? "disk" : "partition";
    if (options.partition !== undefined || options.disk !== undefined) {
      // a partition or disk the input does not have is refused now, before anything else is opened
      try {
        void this.span;
      } catch (e) {
        this.backing?.close();
        throw e;
      }
    }
  }

  /**
   * What restore writes and serve exports: the one disk (a folder of several needs --disk) or the
   * named partition. info and verify cover every disk of a folder without it.
   */
  get span(): DiskSpan {
    if (!this.chosen) {
      const { layout, partition } = choose(this.path, this.layouts, this.options.partition, this.options.disk);
      this.chosen = diskSpan(layout, partition);
    }
    return this.chosen;
  }

  /** partitions that were not saved (they read as zeros); one that `parts` lists but is missing throws */
  get warnings(): readonly string[] {
    return unsavedPartitions(this.span);
  }

  get size(): number {
    return this.span.size;
  }

  dataBytes(): number {
    return spanDataBytes(this.span);
  }

  dataBatches(opts: { verify: boolean }) {
    return diskDataBatches(this.span, opts.verify);
  }

  openVolume(): Volume {
    this.opened ??= openDisk(this.path, this.options.seekIndex);
    const opened = this.opened;
    const diskName = this.span.layout.name;
    if (this.options.partition !== undefined) {
      const p = findPartition(opened, this.options.partition, this.folder ? diskName : undefined);
      // opens the image now, so that one without random access is refused before anything starts
      p.read(0, 0);
      return closingWith(p, () => {});
    }
    const disk = opened.disks.find((d) => d.layout.name === diskName)!;
    for (const p of disk.partitions) if (p.partition.content.kind !== "absent") p.read(0, 0);
    return closingWith(disk, () => {});
  }

  identity() {
    const v = this.openVolume();
    return { name: v.name, size: v.size, blockSize: v.blockSize, identity: v.identity };
  }

  verify(progress?: ProgressFactory): VerifyReport {
    if (!this.folder) {
      const n = this.span.layout.partitions.length;
      const table = this.span.layout.label === "dos" ? "MBR" : "GPT";
      return { checksumProblems: [], otherProblems: [], checked: [`${table} partition table, ${n} partitions; a raw disk has no data checksums`], dataBytes: 0 };
    }
    const only = this.options.partition;
    if (only === undefined && this.options.disk !== undefined) void this.span;
    const folder: ClonezillaFolder = only === undefined ? this.folder : { ...this.folder, checksums: [], savedLvm: undefined, disks: this.folder.disks.map((d) => ({ ...d, layout: { ...d.layout, partitions: d.layout.partitions.filter((p) => p === this.chosenPartition()) } })) };
    const r = verifyFolder(folder, progress);
    return { checksumProblems: r.checksumProblems, otherProblems: r.otherProblems, checked: r.checked, dataBytes: 0 };
  }

  describe(): InputFacts {
    const partition = this.chosenPartition();
    if (this.folder) {
      const facts = folderFacts(this.folder, partition?.name);
      if (facts.kind === "clonezilla" && this.options.disk !== undefined) facts.disks = facts.disks.filter((d) => d.name === this.options.disk);
      return { kind: this.kind, disk: facts };
    }
    const only = partition ? (p: DiskPartition) => p === partition : undefined;
    return { kind: this.kind, disk: rawDiskFacts(this.path, this.span.layout, only, partition?.name) };
  }

  /** as the user named the partition ("2", "sda2"); undefined for a whole disk */
  get partitionName(): string | undefined {
    return this.options.partition;
  }

  private chosenPartition(): DiskPartition | undefined {
    if (this.kind !== "partition") return undefined;
    return this.span.parts.find((x) => x.kind === "partition")?.partition;
  }

  close(): void {
    this.opened?.close();
    this.backing?.close();
  }
}

/** Every regular file of the folder: an output may be none of them. */
export function folderFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .map((n) => path.join(dir, n))
    .filter((p) => {
      try {
        return fs.statSync(p).isFile();
      } catch {
        return false;
      }
    });
}

/** The disk and (when named) the partition a command reads, by name or number; ambiguity is a usage error. */
function choose(input: string, layouts: DiskLayout[], which: string | undefined, diskName: string | undefined): { layout: DiskLayout; partition?: DiskPartition } {
  let disks = layouts;
  if (diskName !== undefined) {
    disks = disks.filter((l) => l.name === diskName);
    if (disks.length === 0) throw new UsageError(`${input} has no disk ${diskName} (it has ${layouts.map((l) => l.name).join(", ") || "none"})`);
  }
  if (which === undefined) {
    if (disks.length > 1) throw new UsageError(`${input} holds ${disks.length} disks (${disks.map((l) => l.name).join(", ")}); choose one with --disk`);
    return { layout: disks[0]! };
  }
  const found = disks.flatMap((layout) =>
    layout.partitions.filter((p) => p.name === which || String(p.number) === which || p.name === `${path.basename(layout.name)}@${which}`).map((partition) => ({ layout, partition })),
  );
  if (found.length === 1) return found[0]!;
  const list = disks.flatMap((l) => l.partitions.map((p) => (disks.length > 1 ? `${p.name} (${l.name})` : p.name))).join(", ");
  if (found.length > 1) throw new UsageError(`partition ${which} is ambiguous (several disks); name it: ${list}`);
  throw new UsageError(`${input} has no partition ${which}; the partitions are: ${list || "none"}`);
}
