// The file system tools that shrink and grow a volume seen as a file: resize2fs(8), ntfsresize(8), fatresize(8).
import fs from "node:fs";
import os from "node:os";
import { readSlots } from "../disk/mbr.ts";
import { UsageError } from "../errors.ts";
import { keepFatIdentity } from "../fs/fat.ts";
import type { WritableVolume } from "../volume/volume.ts";
import { FILE, runOnView, type ToolView, viewUnavailable } from "./view.ts";

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
 * user's PATH often lacks), and where the views they work on are mounted.
 */
export class ResizeTools {
  constructor(
    readonly searchPath: string,
    /** where each view's mount directory and overlay go */
    readonly tmpDir: string = os.tmpdir(),
  ) {}

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

  /** A refusal when a view cannot be mounted (no libfuse3, fusermount3 or /dev/fuse). */
  requireViews(why: string): void {
    const missing = viewUnavailable(this.searchPath) ?? this.tmpDirUnusable();
    if (missing) throw new UsageError(`${why}: ${missing}`);
  }

  /** Why --tmp-dir cannot hold the views' directories and overlays, or undefined. */
  private tmpDirUnusable(): string | undefined {
    try {
      if (!fs.statSync(this.tmpDir).isDirectory()) return `--tmp-dir ${this.tmpDir} is not a directory`;
      fs.accessSync(this.tmpDir, fs.constants.W_OK | fs.constants.X_OK);
      return undefined;
    } catch (e) {
      return `--tmp-dir ${this.tmpDir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
    }
  }

  /**
   * Run each tool in turn on the view (mounted for the time of the runs, named `name`; FILE in
   * args stands for it); their outputs. The first that fails: a ToolError with its output.
   */
  run(view: ToolView, name: string, runs: ToolRun[]): string[] {
    const commands = runs.map((r) => ({ argv: [this.require(r.tool, r.what), ...r.args], env: { PATH: this.searchPath, LC_ALL: "C" }, input: r.input, okCodes: r.okCodes ?? [0] }));
    this.requireViews(runs[0]!.what);
    const report = runOnView(view, name, this.tmpDir, this.searchPath, commands);
    for (const [i, result] of report.results.entries()) {
      const r = runs[i]!;
      if (!(r.okCodes ?? [0]).includes(result.code)) throw new ToolError(`${r.what}: ${r.tool} failed (exit ${result.code}); its output is above`, result.output);
    }
    if (report.results.length < runs.length) throw new ToolError(`${runs[report.results.length]!.what}: ${runs[report.results.length]!.tool} did not run`, "");
    // the system's failure, not the user's: exit 1
    if (report.unmountFailed) throw new Error(`${runs[0]!.what}: the view could not be unmounted: ${report.unmountFailed}`);
    return report.results.map((r) => r.output);
  }
}

/** One tool run on a view. */
export interface ToolRun {
  tool: string;
  args: string[];
  /** what it does, for messages: "sda1: resizing its ext file system" */
  what: string;
  okCodes?: number[];
  input?: string;
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

const EXT_SUPERBLOCK = 1024;

/** The block size of the ext superblock in the view (s_log_block_size, 1024 bytes into the volume). */
function extBlockSize(view: ToolView, name: string): number {
  const log = new DataView(view.volume.read(view.offset + EXT_SUPERBLOCK + 24, 4).buffer).getUint32(0, true);
  if (log > 6) throw new UsageError(`${name}: ext superblock block size is out of range`);
  return 1024 << log;
}

const viewName = (name: string, kind: ResizableFs) => `${name.replace(/[^\w.-]/g, "_")}.${kind}`;

/** The smallest size in bytes the tool can bring the volume to; undefined when it cannot shrink at all. */
export function minimumSize(tools: ResizeTools, kind: ResizableFs, view: ToolView, name: string): number | undefined {
  const file = viewName(name, kind);
  switch (kind) {
    case "ext": {
      const [out = ""] = tools.run(view, file, [{ tool: "resize2fs", args: ["-P", FILE], what: `${name}: sizing its ext file system` }]);
      const m = /minimum size of the filesystem:\s*(\d+)/i.exec(out);
      if (!m) throw new ToolError(`${name}: resize2fs -P printed no minimum`, out);
      return Number(m[1]) * extBlockSize(view, name);
    }
    case "ntfs": {
      const [out = ""] = tools.run(view, file, [{ tool: "ntfsresize", args: ["--info", "--force", "--no-progress-bar", FILE], what: `${name}: sizing its NTFS`, okCodes: [0, 1] }]);
      const m = /You might resize at (\d+) bytes/.exec(out);
      if (m) return Number(m[1]);
      if (/Nothing to do|can't be resized|cannot be resized/i.test(out)) return undefined;
      throw new ToolError(`${name}: ntfsresize --info printed no minimum`, out);
    }
    case "fat": {
      const [out = ""] = tools.run(view, file, [{ tool: "fatresize", args: ["-f", "-n", String(view.partition), "-i", FILE], what: `${name}: sizing its FAT` }]);
      const min = /Min size:\s*(\d+)/.exec(out);
      const max = /Max size:\s*(\d+)/.exec(out);
      if (!min || !max) throw new ToolError(`${name}: fatresize -i printed no minimum`, out);
      // libparted's minimum keeps the FAT type's cluster-count bounds; above the maximum it cannot shrink at all
      return Number(min[1]) > Number(max[1]) ? undefined : Number(min[1]) + FAT_SLACK;
    }
  }
}

/**
 * Resize the volume in the view to `bytes` (smaller or larger). Shrinking, the view is the volume
 * at its old size and the tool moves what lies past `bytes`; growing, it is already `bytes` long.
 */
export function resizeVolume(tools: ResizeTools, kind: ResizableFs, view: ToolView & { volume: WritableVolume }, bytes: number, name: string, startSector: number): void {
  const file = viewName(name, kind);
  switch (kind) {
    case "ext": {
      const blocks = Math.floor(bytes / extBlockSize(view, name));
      tools.run(view, file, [
        // resize2fs refuses a file system not checked since it was last mounted
        { tool: "e2fsck", args: ["-f", "-y", FILE], what: `${name}: checking its ext file system before resizing`, okCodes: [0, 1] },
        { tool: "resize2fs", args: [FILE, String(blocks)], what: `${name}: resizing its ext file system` },
      ]);
      break;
    }
    case "ntfs":
      tools.run(view, file, [{ tool: "ntfsresize", args: ["--force", "--no-progress-bar", "-s", String(bytes), FILE], what: `${name}: resizing its NTFS`, input: "y\n" }]);
      break;
    case "fat": {
      const saved = view.volume.read(view.offset, 512);
      // libparted lands within some sectors either side of the size asked: ask a little less
      tools.run(view, file, [{ tool: "fatresize", args: ["-f", "-n", String(view.partition), "-s", String(Math.max(0, bytes - FAT_SLACK)), FILE], what: `${name}: resizing its FAT` }]);
      const got = readSlots(view.volume.read(0, 512))[view.partition - 1]!.size * 512;
      if (got > bytes) throw new ToolError(`${name}: fatresize made the FAT ${got} bytes, more than its ${bytes}-byte partition`, "");
      const boot = view.volume.read(view.offset, 512);
      const backupAt = new DataView(boot.buffer).getUint16(0x32, true);
      keepFatIdentity(boot, saved, startSector);
      view.volume.write(view.offset, boot);
      if (new DataView(boot.buffer).getUint16(0x11, true) === 0 && backupAt > 0 && backupAt < 32) {
        const backup = view.volume.read(view.offset + backupAt * 512, 512);
        keepFatIdentity(backup, saved, startSector);
        view.volume.write(view.offset + backupAt * 512, backup);
      }
      break;
    }
  }
}

const FAT_SLACK = 256 * 1024;

/** The line that tells how to grow a file system that only grows mounted. */
export function growAfterBootHint(fsName: string | undefined, partition: string): string | undefined {
  const n = (fsName ?? "").toLowerCase();
  if (n === "xfs") return `${partition}: the partition grew; grow its XFS once mounted: xfs_growfs MOUNTPOINT`;
  if (n === "btrfs") return `${partition}: the partition grew; grow its btrfs once mounted: btrfs filesystem resize max MOUNTPOINT`;
  return undefined;
}
