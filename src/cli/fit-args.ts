import fs from "node:fs";
import os from "node:os";
import { UsageError, withCommas } from "../errors.ts";
import { humanSize } from "../formats/units.ts";
import type { MinimumFacts } from "../fit/minimum.ts";
import type { FitResult } from "../fit/fit-input.ts";
import type { ResizeTools } from "../fit/fs-tools.ts";
import { DiskInput } from "../input/disk-input.ts";
import type { Input } from "../input/input.ts";
import { blockDeviceSize } from "../disk/disk-volume.ts";
import type { ProgressFactory } from "../progress.ts";
import { BUILD_SEEK_INDEX, parseBytes } from "./run.ts";

// the fit modules (and FUSE) are loaded only for --fit and --minimum
const fsTools = () => require("../fit/fs-tools.ts") as typeof import("../fit/fs-tools.ts");

/** The options `restore` takes for --fit. */
export const fitArgs = {
  fit: { type: "boolean", description: "lay the disk out anew for the target's size: file systems shrunk (or the last grown) by resize2fs, ntfsresize, fatresize" },
  size: { type: "string", description: "with --fit: the size of a file target (e.g. 20G)" },
  "size-of": { type: "string", description: "with --fit: sizes of partitions, N=SIZE[,N=SIZE...] (e.g. 2=10G,sda3=4G)" },
  grow: { type: "string", description: "with --fit onto a larger target: the partition that takes the extra room (default: the last)" },
  "dry-run": { type: "boolean", description: "with --fit: print the new layout and write nothing" },
  "tmp-dir": { type: "string", description: "with --fit: where the resize tools' views are mounted and what a shrinking partition holds past its new end is kept meanwhile (default: the system's temporary directory)" },
} as const;

interface FitArgs {
  fit?: boolean;
  size?: string;
  "size-of"?: string;
  grow?: string;
  "dry-run"?: boolean;
  "tmp-dir"?: string;
  output: string;
  overlay?: string;
  verify?: boolean;
  quiet?: boolean;
}

/** The size --fit lays the disk out for: a block device's, or --size for a file. */
function targetSize(args: FitArgs): number {
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(args.output);
  } catch {
    st = undefined;
  }
  if (st?.isBlockDevice()) {
    const size = blockDeviceSize(st);
    if (args.size !== undefined && parseBytes(args.size, "--size") !== size) throw new UsageError(`--size ${args.size} differs from ${args.output}'s ${size} bytes`);
    return size;
  }
  if (args.size === undefined) throw new UsageError("--fit onto a file needs --size N (the size of the disk to lay out)");
  const size = parseBytes(args.size, "--size");
  if (size % 512 !== 0) throw new UsageError(`--size ${args.size}: not a whole number of 512-byte sectors`);
  return size;
}

function sizeOf(text: string | undefined): Map<string, number> {
  const out = new Map<string, number>();
  for (const item of (text ?? "").split(",").filter(Boolean)) {
    const m = /^([^=]+)=(.+)$/.exec(item.trim());
    if (!m) throw new UsageError(`--size-of: not N=SIZE: ${JSON.stringify(item)}`);
    out.set(m[1]!, parseBytes(m[2], "--size-of"));
  }
  return out;
}

/**
 * --fit for restore: the plan printed (stdout for --dry-run, else stderr as a summary before writing),
 * the fitted input to write, or undefined when nothing is to be written. A tool that fails carries
 * its output (ToolError), which the command line prints before its one-line refusal.
 */
export function prepareFit(args: FitArgs, input: Input, progress: ProgressFactory | undefined): FitResult | undefined {
  const misplaced = (["size", "size-of", "grow", "dry-run", "tmp-dir"] as const).filter((k) => args[k] !== undefined && args[k] !== false);
  if (!args.fit) {
    if (misplaced.length) throw new UsageError(`--${misplaced[0]} is an option of --fit`);
    return undefined;
  }
  if (!(input instanceof DiskInput)) throw new UsageError("--fit restores a disk (a Clonezilla folder); this input is a single volume");
  if (args.output === "-") throw new UsageError("--fit needs a file or a block device, not stdout");
  if (args.overlay !== undefined) throw new UsageError("--overlay changes the backup's disk as it was; it does not go with --fit");
  const fitted = (require("../fit/fit-input.ts") as typeof import("../fit/fit-input.ts")).fitDisk(input, {
    target: targetSize(args),
    dryRun: args["dry-run"] === true,
    sizeOf: sizeOf(args["size-of"]),
    grow: args.grow,
    seekIndex: BUILD_SEEK_INDEX,
    progress,
    tools: toolsOnPath(args["tmp-dir"]),
  });
  const text = `${fitted.lines.join("\n")}\n`;
  if (args["dry-run"]) process.stdout.write(text);
  else if (!args.quiet) process.stderr.write(text);
  return fitted;
}

/** info --minimum: what the disk and each partition can be restored into. */
export function minimumFacts(input: Input, tmpDir: string | undefined): MinimumFacts {
  if (!(input instanceof DiskInput) || input.kind !== "disk") throw new UsageError("--minimum is for a disk (a Clonezilla folder)");
  return (require("../fit/minimum.ts") as typeof import("../fit/minimum.ts")).diskMinimums(input.span.layout, { tools: toolsOnPath(tmpDir), seekIndex: BUILD_SEEK_INDEX });
}

export function minimumText(m: MinimumFacts): string {
  const rows = [["#", "name", "fs", "size", "used", "minimum", "how"]];
  for (const p of m.partitions) rows.push([String(p.number), p.name, p.fs ?? "-", humanSize(p.size), p.used === null ? "-" : humanSize(p.used), humanSize(p.minimum), p.how]);
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = [`minimum sizes of disk ${m.disk}: the disk ${humanSize(m.minimum)} (${withCommas(m.minimum)} bytes) of ${humanSize(m.size)}`];
  for (const r of rows) lines.push(`  ${r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}`);
  return `${lines.join("\n")}\n`;
}

/** The resize tools on PATH, then in the sbin directories a user's PATH often lacks. */
export function toolsOnPath(tmpDir: string | undefined): ResizeTools {
  return new (fsTools().ResizeTools)([process.env.PATH ?? "", "/usr/local/sbin", "/usr/sbin", "/sbin"].filter(Boolean).join(":"), tmpDir ?? os.tmpdir());
}
