import { defineCommand } from "citty";
import { writeFully } from "../output/writer.ts";
import { EXIT, UsageError, printable, withCommas } from "../errors.ts";
import { extractTree, joinPath, resolveFollowing } from "../fs/extract.ts";
import type { DirEntry, FileSystem, FsNode } from "../fs/filesystem.ts";
import { escapeName, jsonEntry, longLine } from "../fs/listing.ts";
import { type OpenFsOptions, openFileSystem } from "../fs/open.ts";
import { splitPath } from "../fs/path.ts";
import { subvolumeTable } from "../fs/btrfs/btrfs.ts";
import { diskArg, partitionArg } from "./info-text.ts";
import { humanSize } from "../formats/units.ts";
import type { Input } from "../input/input.ts";
import { inputVolume } from "../input/input-volume.ts";
import { openInput } from "../input/open-input.ts";
import { progressBars } from "./progress-bar.ts";
import { BUILD_SEEK_INDEX, guard } from "./run.ts";
import { concatBytes } from "../bytes.ts";

const imageArg = { type: "positional", description: "image (any piece of a split set; compressed ones are indexed on first use), or a disk (Clonezilla folder, raw disk) with --partition or DISK@N", required: true } as const;
const fsArgs = {
  partition: partitionArg,
  disk: diskArg,
  codepage: { type: "string", description: "FAT: code page of 8.3 names (default cp437; cp850, or a label like ibm866)" },
  subvol: { type: "string", description: "btrfs: show this subvolume (its id, or its path from the top level) instead of the top level (id 5)" },
  verify: { type: "boolean", default: true, description: "check file data against the file system's checksums (btrfs)", negativeDescription: "do not check file data checksums" },
  debug: { type: "boolean", description: "show stack traces of errors" },
} as const;

/** The file system inside IMG (an image, a volume, a disk's partition with --partition or DISK@N), read at random. */
function openImageFileSystem(input: string, command: string, args: { partition?: string; disk?: string; codepage?: string; subvol?: string; verify?: boolean }): FileSystem {
  return fileSystemOf(openInput(input, { command, partition: args.partition, disk: args.disk, randomAccess: true, seekIndex: BUILD_SEEK_INDEX }), input, args);
}

function fileSystemOf(opened: Input, input: string, args: { codepage?: string; subvol?: string; verify?: boolean }): FileSystem {
  if (opened.kind === "disk") {
    opened.close();
    throw new UsageError(`${input} is a whole disk; name one of its partitions (imgtool ls ${input} lists them)`);
  }
  const { volume } = inputVolume(opened, input);
  try {
    const fsys = openFileSystem(volume, fsOptions(args));
    for (const w of fsys.warnings ?? []) process.stderr.write(`imgtool: ${input}: warning: ${w}\n`);
    return fsys;
  } catch (e) {
    volume.close();
    throw e;
  }
}

function fsOptions(args: { codepage?: string; subvol?: string; verify?: boolean }): OpenFsOptions {
  const btrfs = { subvol: args.subvol, verifyData: args.verify !== false };
  if (args.codepage === undefined) return { btrfs };
  try {
    new TextDecoder(args.codepage as "utf-8");
  } catch {
    if (!["cp437", "cp850"].includes(args.codepage.toLowerCase())) throw new UsageError(`--codepage: unknown code page ${JSON.stringify(args.codepage)} (cp437, cp850 or a WHATWG encoding label)`);
  }
  return { fat: { codepage: args.codepage }, btrfs };
}

const encoder = new TextEncoder();
const pathBytes = (p: string) => encoder.encode(p);

/** stdout may be a non-blocking pipe (EAGAIN): writeFully waits for it */
function writeOut(data: Uint8Array | string): void {
  writeFully(1, typeof data === "string" ? encoder.encode(data) : data);
}

export const lsCommand = defineCommand({
  meta: { name: "ls", description: "List a directory of the file system inside an image, without restoring it" },
  args: {
    image: imageArg,
    path: { type: "positional", description: "directory or file inside the image (default /)", required: false },
    long: { type: "boolean", alias: "l", description: "mode, links, owner, group, size, mtime, symlink target (names escaped as ls -b)" },
    recursive: { type: "boolean", alias: "R", description: "everything below PATH, one path per line" },
    json: { type: "boolean", description: "one JSON array of entries (names that are not UTF-8 as name_base64)" },
    subvolumes: { type: "boolean", description: "btrfs: list the subvolumes (id, parent, generation, ro/rw, uuid, path)" },
    ...fsArgs,
  },
  run: ({ args }) =>
    guard(() => {
      const input = openInput(args.image, { command: "ls", partition: args.partition, disk: args.disk, randomAccess: true, seekIndex: BUILD_SEEK_INDEX });
      if (input.kind === "disk") {
        try {
          listPartitions(input, args.image, args.json === true);
        } finally {
          input.close();
        }
        return EXIT.OK;
      }
      const fsys = fileSystemOf(input, args.image, args);
      try {
        if (args.subvolumes) return void writeOut(subvolumeTable(fsys, escapeName));
        const path = pathBytes(args.path ?? "/");
        const node = fsys.lookup(path);
        if (!node) throw new UsageError(`${args.image}: ${args.path}: no such file or directory in the file system`);
        const problems = listing(fsys, path, node, { long: args.long === true, recursive: args.recursive === true, json: args.json === true });
        return problems > 0 ? EXIT.PARTIAL : EXIT.OK;
      } finally {
        fsys.close();
      }
    }),
});

/** `ls DISK`: its partitions, each with how to name it to ls/get/extract. */
function listPartitions(input: Input, spec: string, json: boolean): void {
  const facts = input.describe();
  if (facts.kind !== "disk" && facts.kind !== "partition") return;
  const d = facts.disk;
  const disks = d.kind === "clonezilla" ? d.disks : [d.disk];
  const base = spec.replace(/\/+$/, "");
  const rows = disks.flatMap((disk) =>
    disk.partitions.map((p) => ({
      number: p.number,
      name: p.name,
      disk: disk.name,
      fs: p.fs ?? null,
      size: p.size,
      content: p.content,
      address: `${base}@${disks.length > 1 ? p.name : p.number}`,
      ...(p.problem ? { problem: p.problem } : {}),
    })),
  );
  // the logical volumes of its volume groups, named VG/LV
  for (const vg of d.lvm) {
    for (const lv of vg.lvs) rows.push({ number: 0, name: `${vg.name}/${lv.name}`, disk: vg.name, fs: lv.fs ?? null, size: lv.size, content: `LV (${lv.layout})`, address: `${base}@${vg.name}/${lv.name}`, ...(lv.problem ? { problem: lv.problem } : {}) });
  }
  if (json) {
    writeOut(`${JSON.stringify(rows, null, 1)}\n`);
    return;
  }
  const table = [["#", "name", "fs", "size", "content", "address"], ...rows.map((r) => [r.number ? String(r.number) : "-", r.name, r.fs ?? "-", humanSize(r.size), r.problem ? `${r.content} (${r.problem})` : r.content, r.address])];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  for (const r of table) writeOut(`${r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}\n`);
}

function listing(fsys: FileSystem, path: Uint8Array, node: FsNode, o: { long: boolean; recursive: boolean; json: boolean }): number {
  let problems = 0;
  const json: Record<string, unknown>[] = [];
  const report = (p: Uint8Array, message: string, offset?: number) => {
    problems++;
    process.stderr.write(`${problemLine(fsys, p, message, offset)}\n`);
  };
  const show = (dirPath: Uint8Array, e: DirEntry, relative: Uint8Array) => {
    const full = joinPath([dirPath, e.name]);
    if (e.damage) report(full, e.damage.problem, e.damage.volumeOffset);
    if (o.json) json.push(jsonEntry(fsys, full, e));
    else if (o.long) writeOut(`${longLine(fsys, e, escapeName(relative))}\n`);
    else writeOut(concatBytes(relative, NEWLINE));
  };
  const root = splitPath(path);
  if (node.kind !== "directory") {
    const name = root[root.length - 1] ?? new Uint8Array(0);
    show(joinPath(root.slice(0, -1)), { name, node }, name);
  } else {
    const active = new Set<number>();
    const walk = (dir: FsNode, dirPath: Uint8Array, prefix: Uint8Array | undefined) => {
      active.add(dir.id);
      try {
        for (const e of fsys.list(dir, (err) => report(dirPath, err.problem, err.volumeOffset))) {
          const relative = prefix ? concatBytes(prefix, SLASH, e.name) : e.name;
          show(dirPath, e, relative);
          if (o.recursive && e.node.kind === "directory" && !e.damage) {
            const childPath = joinPath([dirPath, e.name]);
            if (active.has(e.node.id)) report(childPath, `directory (inode ${e.node.id}) contains itself: a loop in the directory entries; not followed`);
            else walk(e.node, childPath, relative);
          }
        }
      } finally {
        active.delete(dir.id);
      }
    };
    walk(node, joinPath(root), undefined);
  }
  if (o.json) writeOut(`${JSON.stringify(json, null, 1)}\n`);
  return problems;
}

/** `imgtool: IMG: offset N: /path: problem`, the offset where the damage is when known. */
function problemLine(fsys: FileSystem, path: Uint8Array, message: string, offset: number | undefined): string {
  const where = offset === undefined ? "" : `offset ${withCommas(offset)}: `;
  return `imgtool: ${fsys.volume.name}: ${where}${printable(path)}: ${message}`;
}

const NEWLINE = new Uint8Array([0x0a]);
const SLASH = new Uint8Array([0x2f]);

export const getCommand = defineCommand({
  meta: { name: "get", description: "Write one file of the file system inside an image to stdout (symlinks followed inside the image)" },
  args: {
    image: imageArg,
    path: { type: "positional", description: "file inside the image", required: true },
    ...fsArgs,
  },
  run: ({ args }) =>
    guard(() => {
      const fsys = openImageFileSystem(args.image, "get", args);
      try {
        const node = resolveFollowing(fsys, pathBytes(args.path));
        if (!node) throw new UsageError(`${args.image}: ${args.path}: no such file in the file system`);
        if (node.kind === "directory") throw new UsageError(`${args.image}: ${args.path}: is a directory; use imgtool extract IMG ${args.path} -o DEST`);
        if (node.kind !== "file") throw new UsageError(`${args.image}: ${args.path}: is a ${node.kind}, not a regular file`);
        const buffer = new Uint8Array(1 << 20);
        for (let pos = 0; pos < node.size; ) {
          const n = fsys.readFile(node, pos, buffer);
          if (n === 0) break;
          writeOut(buffer.subarray(0, n));
          pos += n;
        }
      } finally {
        fsys.close();
      }
    }),
});

export const extractCommand = defineCommand({
  meta: { name: "extract", description: "Extract files and trees of the file system inside an image into a directory, without restoring it" },
  args: {
    image: imageArg,
    paths: { type: "positional", description: "paths inside the image (default /: everything)", required: false },
    output: { type: "string", alias: "o", description: "destination directory (created, or empty; see --force)", required: true },
    force: { type: "boolean", description: "extract into a directory that already holds files (never overwrites any)" },
    ...fsArgs,
  },
  run: ({ args }) =>
    guard(() => {
      const paths = (args._ as string[]).slice(1);
      const sources = (paths.length > 0 ? paths : ["/"]).map(pathBytes);
      const fsys = openImageFileSystem(args.image, "extract", args);
      try {
        const summary = extractTree(fsys, sources, args.output, {
          force: args.force === true,
          progress: progressBars(),
          onProblem: (p) => process.stderr.write(`${problemLine(fsys, p.path, p.message, p.volumeOffset)}\n`),
        });
        const links = summary.hardLinks ? `, ${summary.hardLinks} hard links` : "";
        const special = summary.special ? `, ${summary.special} devices/fifos/sockets` : "";
        const problems = summary.problems ? `; ${summary.problems} entries could not be extracted (see above)` : "";
        process.stderr.write(
          `extracted ${summary.files} files (${summary.bytes} bytes), ${summary.directories} directories, ${summary.symlinks} symlinks${links}${special} into ${args.output}${problems}\n`,
        );
        return summary.problems > 0 ? EXIT.PARTIAL : EXIT.OK;
      } finally {
        fsys.close();
      }
    }),
});
