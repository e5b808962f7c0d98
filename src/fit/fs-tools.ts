// The file system tools that shrink and grow a volume held in a file: resize2fs(8), ntfsresize(8), fatresize(8).
import fs from "node:fs";
import { readSlots } from "../disk/mbr.ts";
import { UsageError } from "../errors.ts";
import { keepFatIdentity } from "../fs/fat.ts";

/** A tool failed: its output goes to the user as it printed it. */
export class ToolError extends Error {
  override name = "ToolError";
  constructor(
    message: string,
    readonly output: string,
  ) {
    super(message);
  }
}

/** The Debian package that ships each tool, for the refusal that names it. */
export const TOOL_PACKAGES: Record<string, string> = {
  resize2fs: "e2fsprogs",
  e2fsck: "e2fsprogs",
  ntfsresize: "ntfs-3g",
  fatresize: "fatresize",
};

/**
 * The resize tools as found on one search path (the CLI passes PATH and the sbin directories a
 * user's PATH often lacks).
 */
export class ResizeTools {
  constructor(readonly searchPath: string) {}

  /** The tool's path; undefined when absent. */
  find(tool: string): string | undefined {
    return Bun.which(tool, { PATH: this.searchPath }) ?? undefined;
  }

  /** The tool's path, or a refusal naming the package to install. */
  require(tool: string, why: string): string {
    const p = this.find(tool);
    const pkg = TOOL_PACKAGES[tool] ?? tool;
    if (!p) throw new UsageError(`${why} needs ${tool}, which is not installed (Debian package ${pkg}: apt-get install ${pkg})`);
    return p;
  }

  run(tool: string, args: string[], what: string, okCodes = [0], input?: string): string {
    const r = Bun.spawnSync([this.require(tool, what), ...args], { stdin: input === undefined ? "ignore" : new TextEncoder().encode(input), stdout: "pipe", stderr: "pipe", env: { PATH: this.searchPath, LC_ALL: "C" } });
    const output = `${r.stdout.toString()}${r.stderr.toString()}`;
    const code = r.exitCode ?? 1;
    if (!okCodes.includes(code)) throw new ToolError(`${what}: ${tool} failed (exit ${code}); its output is above`, output);
    return output;
  }
}

export type ResizableFs = "ext" | "ntfs" | "fat";

/** Which tool family handles a file system name as partclone and blkid spell it; undefined: none shrinks it. */
export function resizableFs(fsName: string | undefined): ResizableFs | undefined {
  const n = (fsName ?? "").toLowerCase();
  if (/^ext[234]$/.test(n) || n === "extfs") return "ext";
  if (n === "ntfs") return "ntfs";
  if (/^(v?fat(12|16|32)?|msdos)$/.test(n)) return "fat";
  return undefined;
}

export const RESIZE_TOOL: Record<ResizableFs, string> = { ext: "resize2fs", ntfs: "ntfsresize", fat: "fatresize" };

/**
 * A volume in a file, and where it starts there: FAT sits behind a one-partition MBR at
 * `offset` because fatresize works on partitions of a disk, not on bare volumes.
 */
export interface ScratchFile {
  path: string;
  offset: number;
  /** bytes of the volume */
  size: number;
  /** the partition number fatresize is told */
  partition: number;
}

const EXT_SUPERBLOCK = 1024;

/** The block size of the ext superblock in the scratch file (s_log_block_size, 1024 bytes into the volume). */
function extBlockSize(file: ScratchFile): number {
  const log = new DataView(readAt(file, EXT_SUPERBLOCK + 24, 4).buffer).getUint32(0, true);
  if (log > 6) throw new UsageError(`${file.path}: ext superblock block size is out of range`);
  return 1024 << log;
}

/** The smallest size in bytes the tool can bring the volume to; undefined when it cannot shrink at all. */
export function minimumSize(tools: ResizeTools, kind: ResizableFs, file: ScratchFile, name: string): number | undefined {
  switch (kind) {
    case "ext": {
      const out = tools.run("resize2fs", ["-P", file.path], `${name}: sizing its ext file system`);
      const m = /minimum size of the filesystem:\s*(\d+)/i.exec(out);
      if (!m) throw new ToolError(`${name}: resize2fs -P printed no minimum`, out);
      return Number(m[1]) * extBlockSize(file);
    }
    case "ntfs": {
      const out = tools.run("ntfsresize", ["--info", "--force", "--no-progress-bar", file.path], `${name}: sizing its NTFS`, [0, 1]);
      const m = /You might resize at (\d+) bytes/.exec(out);
      if (m) return Number(m[1]);
      if (/Nothing to do|can't be resized|cannot be resized/i.test(out)) return undefined;
      throw new ToolError(`${name}: ntfsresize --info printed no minimum`, out);
    }
    case "fat": {
      const out = tools.run("fatresize", ["-f", "-n", String(file.partition), "-i", file.path], `${name}: sizing its FAT`);
      const min = /Min size:\s*(\d+)/.exec(out);
      const max = /Max size:\s*(\d+)/.exec(out);
      if (!min || !max) throw new ToolError(`${name}: fatresize -i printed no minimum`, out);
      // libparted's minimum keeps the FAT type's cluster-count bounds; above the maximum it cannot shrink at all
      return Number(min[1]) > Number(max[1]) ? undefined : Number(min[1]) + FAT_SLACK;
    }
  }
}

/** Resize the volume in the file to `bytes` (smaller or larger); the file is truncated or extended to match. */
export function resizeVolume(tools: ResizeTools, kind: ResizableFs, file: ScratchFile, bytes: number, name: string, startSector: number): void {
  const grow = bytes > file.size;
  if (grow) fs.truncateSync(file.path, file.offset + bytes);
  switch (kind) {
    case "ext": {
      // resize2fs refuses a file system not checked since it was last mounted; this is our scratch copy
      tools.run("e2fsck", ["-f", "-y", file.path], `${name}: checking its ext file system before resizing`, [0, 1]);
      const blocks = Math.floor(bytes / extBlockSize(file));
      tools.run("resize2fs", [file.path, String(blocks)], `${name}: resizing its ext file system`);
      break;
    }
    case "ntfs":
      tools.run("ntfsresize", ["--force", "--no-progress-bar", "-s", String(bytes), file.path], `${name}: resizing its NTFS`, [0], "y\n");
      break;
    case "fat": {
      if (grow) throw new UsageError(`${name}: fatresize grows FAT only inside a partition table; kept at its size`);
      const saved = readAt(file, 0, 512);
      // libparted lands within some sectors either side of the size asked: ask a little less
      tools.run("fatresize", ["-f", "-n", String(file.partition), "-s", String(Math.max(0, bytes - FAT_SLACK)), file.path], `${name}: resizing its FAT`);
      const got = scratchPartitionBytes(file);
      if (got > bytes) throw new ToolError(`${name}: fatresize made the FAT ${got} bytes, more than its ${bytes}-byte partition`, "");
      const boot = readAt(file, 0, 512);
      const backupAt = new DataView(boot.buffer).getUint16(0x32, true);
      keepFatIdentity(boot, saved, startSector);
      writeAt(file, 0, boot);
      if (new DataView(boot.buffer).getUint16(0x11, true) === 0 && backupAt > 0 && backupAt < 32) {
        const backup = readAt(file, backupAt * 512, 512);
        keepFatIdentity(backup, saved, startSector);
        writeAt(file, backupAt * 512, backup);
      }
      break;
    }
  }
  if (!grow) fs.truncateSync(file.path, file.offset + bytes);
  file.size = bytes;
}

const FAT_SLACK = 256 * 1024;

function readAt(file: ScratchFile, at: number, length: number): Uint8Array {
  const fd = fs.openSync(file.path, "r");
  try {
    const b = new Uint8Array(length);
    fs.readSync(fd, b, 0, length, file.offset + at);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

function writeAt(file: ScratchFile, at: number, bytes: Uint8Array): void {
  const fd = fs.openSync(file.path, "r+");
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, file.offset + at);
  } finally {
    fs.closeSync(fd);
  }
}

/** The size fatresize gave the scratch file's one partition (and its FAT). */
function scratchPartitionBytes(file: ScratchFile): number {
  return readSlots(readAt(file, -file.offset, 512))[file.partition - 1]!.size * 512;
}

/** The line that tells how to grow a file system that only grows mounted. */
export function growAfterBootHint(fsName: string | undefined, partition: string): string | undefined {
  const n = (fsName ?? "").toLowerCase();
  if (n === "xfs") return `${partition}: the partition grew; grow its XFS once mounted: xfs_growfs MOUNTPOINT`;
  if (n === "btrfs") return `${partition}: the partition grew; grow its btrfs once mounted: btrfs filesystem resize max MOUNTPOINT`;
  return undefined;
}
