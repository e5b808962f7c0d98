import fs from "node:fs";
import path from "node:path";
import { EXIT, ImageError, UsageError, withCommas } from "../errors.ts";
import { describeContent } from "../formats/detect.ts";
import { humanSize } from "../formats/units.ts";
import { Progress } from "../output/progress.ts";
import { writeFully } from "../output/writer.ts";
import { looksLikeClonezillaFolder, readClonezillaFolder, type ClonezillaFolder } from "../disk/clonezilla.ts";
import type { DiskLayout, DiskPartition } from "../disk/disk-volume.ts";
import { findPartition, openDisk, splitPartitionSuffix, type OpenedDisk } from "../disk/open-disk.ts";
import { looksLikeRawDisk, openRawDisk, rawDiskVolumeGroups } from "../disk/raw-disk.ts";
import { foundLvmFacts, savedLvmFacts, type VgFacts } from "../lvm/facts.ts";
import { restoreDisk } from "../disk/restore-disk.ts";
import { verifyFolder } from "../disk/verify-disk.ts";
import type { Volume } from "../volume/volume.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { parseBytes } from "./run.ts";

/** A command's input when it is a disk: a Clonezilla folder or a raw disk image, maybe one partition of it. */
export interface DiskInput {
  kind: "folder" | "raw";
  path: string;
  partition?: string;
}

export const partitionArg = { type: "string", description: "one partition of a disk (a Clonezilla folder or a raw disk image): its number or name (sda2); also DISK@N" } as const;
export const diskArg = { type: "string", description: "the disk of a Clonezilla folder with several (sda)" } as const;

/**
 * The input as a disk, or undefined when it is a partition image (partclone, ntfsclone,
 * partimage) for the commands' own handling. DISK@N and --partition pick a partition.
 */
export function diskInputOf(arg: string, partitionOption?: string): DiskInput | undefined {
  if (arg === "-") {
    if (partitionOption !== undefined) throw new UsageError("--partition needs a disk (a Clonezilla folder or a raw disk image), not stdin");
    return undefined;
  }
  const split = splitPartitionSuffix(arg);
  if (split.partition !== undefined && partitionOption !== undefined && split.partition !== partitionOption) {
    throw new UsageError(`${arg}: the partition is named twice (@${split.partition} and --partition ${partitionOption})`);
  }
  const partition = partitionOption ?? split.partition;
  const input = split.input;
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(input);
  } catch {
    st = undefined;
  }
  if (st?.isDirectory()) return { kind: "folder", path: input, partition };
  if (st && (st.isFile() || st.isBlockDevice()) && isRawDisk(input)) return { kind: "raw", path: input, partition };
  if (partition !== undefined) {
    throw new UsageError(`${input}: --partition needs a disk (a Clonezilla folder or a raw disk image with an MBR or GPT); this is ${st ? "not one" : "missing"}`);
  }
  return undefined;
}

function isRawDisk(file: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch {
    return false;
  }
  try {
    const head = new Uint8Array(1024);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    const st = fs.fstatSync(fd);
    const size = st.isBlockDevice() ? Number.MAX_SAFE_INTEGER : st.size;
    return looksLikeRawDisk(head.subarray(0, n), size);
  } finally {
    fs.closeSync(fd);
  }
}

// ---- info ----

interface PartitionFacts {
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

function partitionFacts(layout: DiskLayout, p: DiskPartition): PartitionFacts {
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
      const head = c.volume.read(0, Math.min(2048, c.volume.size));
      f.fs = describeContent(head).replace(/^looks like (an? )?/, "");
    } else if (c.kind === "absent") {
      f.problem = c.reason;
    }
  } catch (e) {
    if (!(e instanceof ImageError)) throw e;
    f.problem = e.message;
  }
  return f;
}

export function diskInfo(d: DiskInput, json: boolean): void {
  if (d.kind === "folder") {
    const folder = readClonezillaFolder(d.path);
    const disks = folder.disks.map((disk) => ({ ...layoutFacts(disk.layout), notes: disk.notes.map((n) => n.replace(/^!/, "")) }));
    let selected = disks;
    if (d.partition !== undefined) {
      selected = disks.map((x) => ({ ...x, partitions: x.partitions.filter((p) => p.name === d.partition || String(p.number) === d.partition) })).filter((x) => x.partitions.length > 0);
      if (selected.length === 0) throw new UsageError(`${d.path} has no partition ${d.partition}`);
    }
    const problems = [...folder.problems, ...selected.flatMap((x) => x.partitions.filter((p) => p.problem).map((p) => `${p.name}: ${p.problem}`))];
    const facts = {
      kind: "clonezilla",
      dir: d.path,
      disks: selected,
      parts: folder.parts,
      checksums: folder.checksums.map((c) => ({ file: path.basename(c.file), algorithm: c.algorithm, files: c.entries.length })),
      otherFiles: folder.otherFiles,
      problems: [...new Set(problems)],
      lvm: folder.savedLvm ? savedLvmFacts(folder.savedLvm, folder.lvContent, (content, size) => partitionFacts({ name: "", size, sectorSize: 512, label: "dos", tables: [], partitions: [] }, { name: "", number: 0, start: 0, size, type: "lvm", content })) : [],
    };
    if (json) {
      process.stdout.write(`${JSON.stringify(facts, null, 2)}\n`);
      return;
    }
    const lines = [`Clonezilla image folder ${d.path}`];
    for (const disk of selected) lines.push("", ...layoutText(disk), ...disk.notes.map((n) => `  note: ${n}`));
    if (!d.partition) lines.push(...lvmText(facts.lvm));
    if (!d.partition) {
      lines.push("", `saved partitions (parts): ${folder.parts.join(" ") || "none"}`);
      if (facts.checksums.length) lines.push(`checksum files: ${facts.checksums.map((c) => `${c.file} (${c.files} files)`).join(", ")}`);
      if (folder.otherFiles.length) lines.push(`other files: ${folder.otherFiles.join(" ")}`);
    }
    lines.push(facts.problems.length ? `problems:\n${facts.problems.map((p) => `  ${p}`).join("\n")}` : "problems: none");
    process.stdout.write(`${lines.join("\n")}\n`);
    return;
  }
  const raw = openRawDisk(d.path);
  try {
    const facts = layoutFacts(raw.layout);
    const lvm = foundLvmFacts(rawDiskVolumeGroups([raw.layout]));
    if (d.partition !== undefined) facts.partitions = facts.partitions.filter((p) => String(p.number) === d.partition || p.name === d.partition);
    if (d.partition !== undefined && facts.partitions.length === 0) throw new UsageError(`${d.path} has no partition ${d.partition}`);
    if (json) process.stdout.write(`${JSON.stringify({ kind: "raw-disk", file: d.path, ...facts, lvm }, null, 2)}\n`);
    else process.stdout.write(`${["Raw disk image", "", ...layoutText(facts), ...(d.partition ? [] : lvmText(lvm))].join("\n")}\n`);
  } finally {
    raw.volume.close();
  }
}

function layoutFacts(layout: DiskLayout) {
  return {
    name: layout.name,
    size: layout.size,
    sectorSize: layout.sectorSize,
    label: layout.label,
    tables: layout.tables.map((t) => ({ what: t.what, offset: t.offset, length: t.bytes.length })),
    partitions: layout.partitions.map((p) => partitionFacts(layout, p)),
  };
}

function layoutText(f: ReturnType<typeof layoutFacts>): string[] {
  const lines = [`disk ${f.name}: ${withCommas(f.size)} bytes (${humanSize(f.size)}), ${f.label === "dos" ? "MBR" : "GPT"}, ${f.sectorSize}-byte sectors`];
  for (const t of f.tables) lines.push(`  ${t.what}: ${withCommas(t.length)} bytes at ${withCommas(t.offset)}`);
  const rows = [["#", "name", "start", "sectors", "size", "type", "fs", "content", "compression", "used", "files"]];
  for (const p of f.partitions) {
    rows.push([
      String(p.number),
      p.name,
      String(p.startSector),
      String(p.sizeSectors),
      humanSize(p.size),
      p.type,
      p.fs ?? "-",
      p.content === "swap" ? `swap header${p.swapLabel ? ` LABEL=${p.swapLabel}` : ""}${p.swapUuid ? ` UUID=${p.swapUuid}` : ""}` : p.content,
      p.compression ? p.compression.join("+") || "none" : "-",
      p.usedBytes !== undefined ? humanSize(p.usedBytes) : "-",
      p.files ? (p.files.length > 1 ? `${p.files[0]} (+${p.files.length - 1})` : p.files[0]!) : p.problem ? `(${p.problem})` : "-",
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) lines.push(`  ${r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}`);
  return lines;
}

function lvmText(vgs: VgFacts[]): string[] {
  const lines: string[] = [];
  for (const vg of vgs) {
    lines.push("", `LVM volume group ${vg.name}: extent ${humanSize(vg.extentSize)}, seqno ${vg.seqno}, metadata from ${vg.metadata}`);
    for (const p of vg.pvs) lines.push(`  PV ${p.key} on ${p.partition ?? "(not found)"}: ${p.peCount} extents from ${withCommas(p.peStart)}, ${p.id}`);
    for (const l of vg.lvs) {
      const what = [l.layout, l.visible ? "" : "hidden", l.fs ?? "", l.compression ? l.compression.join("+") || "uncompressed" : "", l.usedBytes !== undefined ? `${humanSize(l.usedBytes)} used` : "", l.swapLabel ? `LABEL=${l.swapLabel}` : "", l.swapUuid ? `UUID=${l.swapUuid}` : ""];
      lines.push(`  LV ${vg.name}/${l.name}: ${humanSize(l.size)}, ${what.filter(Boolean).join(", ")}${l.files ? `, ${l.files[0]}${l.files.length > 1 ? ` (+${l.files.length - 1})` : ""}` : ""}${l.problem ? ` (${l.problem})` : ""}`);
      lines.push(`    segments: ${l.segments.join("; ")}`);
    }
    for (const p of vg.problems) lines.push(`  problem: ${p}`);
  }
  return lines;
}

// ---- restore ----

export function diskRestore(d: DiskInput, args: { output: string; sparse?: boolean; force?: boolean; verify?: boolean; quiet?: boolean; disk?: string; "output-offset"?: string }): void {
  if (parseBytes(args["output-offset"], "--output-offset") !== 0) throw new UsageError("--output-offset is for partition images; a disk is written from its first byte");
  const { layout } = chooseLayout(d, args.disk);
  const started = performance.now();
  const r = restoreDisk(layout, args.output, {
    sparse: args.sparse,
    force: args.force,
    verify: args.verify,
    partition: d.partition,
    progress: args.quiet ? false : undefined,
    onWarning: (m) => process.stderr.write(`imgtool: warning: ${m}\n`),
  });
  if (!args.quiet && args.output !== "-" && process.stderr.isTTY) {
    const what = d.partition ? `partition ${d.partition} of ${layout.name}` : `disk ${layout.name}`;
    process.stderr.write(`restored ${what} (${humanSize(r.size)}, ${humanSize(r.dataBytes)} written) to ${r.output} in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  }
}

function chooseLayout(d: DiskInput, diskName: string | undefined): { layout: DiskLayout; folder?: ClonezillaFolder } {
  if (d.kind === "raw") {
    if (diskName !== undefined) throw new UsageError("--disk is for Clonezilla folders; a raw disk image is one disk");
    // the volume stays open for the restore; the process ends after it
    return { layout: openRawDisk(d.path).layout };
  }
  const folder = readClonezillaFolder(d.path);
  let disks = folder.disks;
  if (diskName !== undefined) {
    disks = disks.filter((x) => x.layout.name === diskName);
    if (disks.length === 0) throw new UsageError(`${d.path} has no disk ${diskName} (it has ${folder.disks.map((x) => x.layout.name).join(", ") || "none"})`);
  }
  if (d.partition !== undefined) disks = disks.filter((x) => x.layout.partitions.some((p) => p.name === d.partition || String(p.number) === d.partition));
  if (disks.length === 0) throw new UsageError(`${d.path} has no partition ${d.partition} in its partition tables`);
  if (disks.length > 1) throw new UsageError(`${d.path} holds ${disks.length} disks (${disks.map((x) => x.layout.name).join(", ")}); choose one with --disk`);
  return { layout: disks[0]!.layout, folder };
}

// ---- verify ----

export function diskVerify(d: DiskInput, quiet: boolean): number {
  if (d.kind === "raw") {
    const opened = openDisk(d.path);
    try {
      const n = opened.partitions.length;
      if (!quiet) process.stdout.write(`${d.path}: OK (${opened.disks[0]!.layout.label === "dos" ? "MBR" : "GPT"} partition table, ${n} partitions; a raw disk has no data checksums)\n`);
    } finally {
      opened.close();
    }
    return EXIT.OK;
  }
  if (!looksLikeClonezillaFolder(d.path)) throw new ImageError({ file: d.path }, "not a Clonezilla image folder (no parts or disk file)");
  const folder = readClonezillaFolder(d.path);
  if (d.partition !== undefined) {
    for (const disk of folder.disks) disk.layout.partitions = disk.layout.partitions.filter((p) => p.name === d.partition || String(p.number) === d.partition);
    folder.checksums = [];
  }
  const r = verifyFolder(folder, { progress: quiet ? false : undefined });
  if (!quiet) for (const line of r.checked) process.stdout.write(`${line}\n`);
  for (const p of r.checksumProblems) process.stderr.write(`imgtool: ${p}\n`);
  for (const p of r.otherProblems) process.stderr.write(`imgtool: ${p}\n`);
  if (r.checksumProblems.length) return EXIT.CHECKSUM;
  if (r.otherProblems.length) return EXIT.BAD_INPUT;
  if (!quiet) process.stdout.write(`${d.path}: OK\n`);
  return EXIT.OK;
}

// ---- random access: cat, serve, mount ----

/** The disk (or the chosen partition) as a Volume; every partition it covers must have random access. */
export function openDiskVolume(d: DiskInput, diskName?: string, seekIndex?: SeekIndexOptions): { volume: Volume; opened: OpenedDisk; label: string } {
  const opened = openDisk(d.path, seekIndex);
  try {
    if (d.partition !== undefined) {
      const p = findPartition(opened, d.partition, diskName);
      // opens the image now, so that one without random access is refused before anything starts
      p.read(0, 0);
      return { volume: p, opened, label: `partition ${p.partition.name} of ${p.disk}` };
    }
    let disks = opened.disks;
    if (diskName !== undefined) disks = disks.filter((x) => x.layout.name === diskName);
    if (disks.length !== 1) {
      throw new UsageError(disks.length === 0 ? `${d.path} has no disk ${diskName}` : `${d.path} holds ${disks.length} disks (${disks.map((x) => x.layout.name).join(", ")}); choose one with --disk`);
    }
    for (const p of disks[0]!.partitions) if (p.partition.content.kind !== "absent") p.read(0, 0);
    return { volume: disks[0]!, opened, label: `disk ${disks[0]!.layout.name}` };
  } catch (e) {
    opened.close();
    throw e;
  }
}

export function diskCat(d: DiskInput, args: { offset?: string; length?: string }): void {
  if (process.stdout.isTTY) throw new UsageError("refusing to write volume bytes to a terminal; redirect stdout");
  const { volume, opened } = openDiskVolume(d);
  try {
    const offset = parseBytes(args.offset, "--offset");
    const length = args.length === undefined ? volume.size - offset : parseBytes(args.length, "--length");
    if (offset + length > volume.size) throw new UsageError(`--offset/--length reach past the end of the ${volume.size}-byte volume`);
    const progress = new Progress(length, "cat");
    const CHUNK = 4 << 20;
    for (let done = 0; done < length; ) {
      const n = Math.min(CHUNK, length - done);
      writeFully(1, volume.read(offset + done, n));
      done += n;
      progress.update(done);
    }
    progress.finish(length);
  } finally {
    opened.close();
  }
}
