import fs from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.ts";
import { type GapPolicy, VolumeWriter } from "./writer.ts";

export interface OutputOptions {
  /** unused blocks become holes (files) or are left alone (devices) instead of zeros */
  sparse: boolean;
  force: boolean;
  /** where the volume starts in the output (a partition inside a whole-disk image) */
  outputOffset: number;
}

/** Where a restore goes: a regular file (via NAME.partial), a block device, or stdout. */
export interface OutputTarget {
  readonly writer: VolumeWriter;
  readonly name: string;
  /** complete the volume to `size` bytes, make it durable, and give it its name */
  commit(size: number): void;
  /** remove what a failed restore left, where that is possible */
  abort(): void;
}

export function openOutput(out: string, opts: OutputOptions): OutputTarget {
  if (out === "-") return streamTarget(opts);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(out);
  } catch {
    st = undefined;
  }
  if (st?.isDirectory()) throw new UsageError(`${out} is a directory`);
  // a FIFO or a character device such as /dev/null holds nothing to lose
  if (st && (st.isFile() || st.isBlockDevice()) && !opts.force) {
    throw new UsageError(`${out} exists; add --force to overwrite it${st.isBlockDevice() || opts.outputOffset ? " (or write into it)" : ""}`);
  }
  if (st?.isBlockDevice()) return deviceTarget(out, opts);
  if (st && opts.outputOffset > 0) return inPlaceTarget(out, opts);
  if (st && !st.isFile()) return streamTargetAt(out, opts);
  return newFileTarget(out, opts);
}

function newFileTarget(out: string, opts: OutputOptions): OutputTarget {
  const partial = `${out}.partial`;
  const fd = fs.openSync(partial, "w");
  const writer = new VolumeWriter(out, fd, opts.sparse ? "skip" : "zeros", opts.outputOffset);
  let open = true;
  return {
    writer,
    name: out,
    commit(size) {
      writer.finish(size);
      fs.ftruncateSync(fd, opts.outputOffset + size);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      open = false;
      fs.renameSync(partial, out);
      syncDirectory(out);
    },
    abort() {
      if (open) fs.closeSync(fd);
      open = false;
      fs.rmSync(partial, { force: true });
    },
  };
}

/** Into an existing file at --output-offset: nothing to rename; unused blocks must not keep old bytes. */
function inPlaceTarget(out: string, opts: OutputOptions): OutputTarget {
  const fd = fs.openSync(out, "r+");
  const writer = new VolumeWriter(out, fd, opts.sparse ? "punch" : "zeros", opts.outputOffset);
  return {
    writer,
    name: out,
    commit(size) {
      writer.finish(size);
      if (fs.fstatSync(fd).size < opts.outputOffset + size) fs.ftruncateSync(fd, opts.outputOffset + size);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    },
    abort() {
      fs.closeSync(fd);
    },
  };
}

function deviceTarget(out: string, opts: OutputOptions): OutputTarget {
  const fd = fs.openSync(out, "r+");
  const gaps: GapPolicy = opts.sparse ? "skip" : "zeros";
  const writer = new VolumeWriter(out, fd, gaps, opts.outputOffset);
  return {
    writer,
    name: out,
    commit(size) {
      writer.finish(size);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    },
    abort() {
      fs.closeSync(fd);
    },
  };
}

function streamTarget(opts: OutputOptions): OutputTarget {
  if (process.stdout.isTTY) throw new UsageError("refusing to write a volume to a terminal; redirect stdout or use -o FILE");
  if (opts.outputOffset) throw new UsageError("--output-offset needs a file or device, not stdout");
  const writer = new VolumeWriter("stdout", 1, "zeros", null);
  return { writer, name: "stdout", commit: (size) => writer.finish(size), abort() {} };
}

/** A FIFO or character device named on the command line. */
function streamTargetAt(out: string, opts: OutputOptions): OutputTarget {
  if (opts.outputOffset) throw new UsageError(`--output-offset needs a file or block device; ${out} is neither`);
  const fd = fs.openSync(out, "w");
  const writer = new VolumeWriter(out, fd, "zeros", null);
  return {
    writer,
    name: out,
    commit(size) {
      writer.finish(size);
      fs.closeSync(fd);
    },
    abort() {
      fs.closeSync(fd);
    },
  };
}

function syncDirectory(file: string): void {
  try {
    const dfd = fs.openSync(path.dirname(path.resolve(file)), "r");
    fs.fsyncSync(dfd);
    fs.closeSync(dfd);
  } catch {
    // not every file system lets a directory be opened for fsync
  }
}
