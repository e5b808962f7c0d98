import fs from "node:fs";
import path from "node:path";
import { O_TMPFILE } from "../../native/libc.ts";
import { linkUnnamed, renameNoReplace } from "../../native/libc-at.ts";
import { blockDeviceSize, growPipe, makeBlocking, restoreFlags } from "../../native/libc-file.ts";
import { UsageError, withCommas } from "../errors.ts";
import { type GapPolicy, OutputError, VolumeWriter } from "./writer.ts";

export interface OutputOptions {
  /** unused blocks become holes (files) or are left alone (devices) instead of zeros */
  sparse: boolean;
  force: boolean;
  /** where the volume starts in the output (a partition inside a whole-disk image) */
  outputOffset: number;
  /** bytes of the volume, checked against a device or an existing file before a byte is written */
  volumeSize?: number;
  /** the files being read (every piece of a split set, "-" for stdin): the output must be none of them */
  inputs?: readonly string[];
  /** a new file is first an unnamed O_TMPFILE (default) or always a visible OUT.partial */
  unnamed?: boolean;
}

/** Where a restore goes: a new regular file, an existing file or block device, or a stream. */
export interface OutputTarget {
  readonly writer: VolumeWriter;
  readonly name: string;
  /** a visible OUT.partial that a signal must remove (the unnamed file needs nothing) */
  readonly partialPath: string | undefined;
  /** complete the volume to `size` bytes, make it durable, and give it its name */
  commit(size: number): void;
  /** undo what can be undone after a failure: close, remove a partial file; safe to call twice */
  abort(): void;
}

const PIPE_BYTES = 1 << 20;

export function openOutput(out: string, opts: OutputOptions): OutputTarget {
  if (out === "") throw new UsageError(`-o "": an empty output name; give a file, a block device, or - for stdout`);
  if (out === "-") return streamTarget(opts);
  const link = lstatOrMissing(out);
  if (!link) {
    requireDirectory(out);
    return newFileTarget(out, opts);
  }
  const st = link.isSymbolicLink() ? statOrMissing(out) : link;
  if (st) refuseInput(out, st, opts.inputs ?? []);
  if (st?.isDirectory()) throw new UsageError(`${out} is a directory`);
  if (!st) {
    if (!opts.force) throw new UsageError(`${out} is a symbolic link to a missing file; add --force to replace the link`);
    return newFileTarget(out, opts);
  }
  // a FIFO or a character device such as /dev/null holds nothing to lose
  if ((st.isFile() || st.isBlockDevice()) && !opts.force) {
    throw new UsageError(`${out} exists; add --force to overwrite it${st.isBlockDevice() || opts.outputOffset ? " (or write into it)" : ""}`);
  }
  if (st.isBlockDevice()) return deviceTarget(out, opts);
  if (st.isFile() && opts.outputOffset > 0) return inPlaceTarget(out, st, opts);
  if (st.isFile()) return newFileTarget(out, opts);
  return streamTargetAt(out, opts);
}

function lstatOrMissing(p: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    if (code === "ENOTDIR") throw new UsageError(`${p}: a component of the path is not a directory`);
    throw new UsageError(`${p}: cannot look at the output: ${code ?? (e as Error).message}`);
  }
}

function statOrMissing(p: string): fs.Stats | undefined {
  try {
    return fs.statSync(p);
  } catch {
    return undefined;
  }
}

function requireDirectory(out: string): void {
  const dir = path.dirname(out);
  const st = statOrMissing(dir);
  if (!st) throw new UsageError(`${out}: the directory ${dir} does not exist`);
  if (!st.isDirectory()) throw new UsageError(`${out}: ${dir} is not a directory`);
}

/** The same file by device and inode (a hard link, a symlink, another spelling), or the same block device. */
function sameFile(a: fs.Stats, b: fs.Stats): boolean {
  if (a.dev === b.dev && a.ino === b.ino) return true;
  return a.isBlockDevice() && b.isBlockDevice() && a.rdev === b.rdev;
}

function refuseInput(out: string, st: fs.Stats, inputs: readonly string[]): void {
  for (const input of inputs) {
    let s: fs.Stats;
    try {
      s = input === "-" ? fs.fstatSync(0) : fs.statSync(input);
    } catch {
      continue;
    }
    if (sameFile(st, s)) {
      const named = input === "-" ? "standard input" : input;
      throw new UsageError(`${out}: the output is the input ${named}${input === out ? "" : " under another name"}; refusing to write over it, even with --force`);
    }
  }
}

/**
 * A new file: written unnamed (O_TMPFILE) and linked as OUT once complete, so no partial file is
 * ever visible and a kill leaves nothing. Where the file system has no O_TMPFILE, OUT.partial,
 * created only if nothing by that name exists (never followed, never reused).
 */
function newFileTarget(out: string, opts: OutputOptions): OutputTarget {
  const dir = path.dirname(out);
  let fd: number | undefined;
  if (opts.unnamed !== false) {
    try {
      fd = fs.openSync(dir, O_TMPFILE | fs.constants.O_RDWR, 0o644);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // EOPNOTSUPP/EISDIR/EINVAL: no O_TMPFILE on this file system or kernel
      if (code === "EACCES" || code === "EROFS" || code === "ENOSPC") throw new OutputError(`${out}: cannot create a file in ${dir}: ${code}`);
    }
  }
  if (fd !== undefined) return unnamedFileTarget(out, fd, opts);
  return partialFileTarget(out, opts);
}

function unnamedFileTarget(out: string, fd: number, opts: OutputOptions): OutputTarget {
  const writer = new VolumeWriter(out, fd, opts.sparse ? "skip" : "allocate", opts.outputOffset);
  let open = true;
  return {
    writer,
    name: out,
    partialPath: undefined,
    commit(size) {
      writer.finish(size);
      fs.ftruncateSync(fd, opts.outputOffset + size);
      fs.fsyncSync(fd);
      if (opts.force) replaceWithUnnamed(fd, out);
      else {
        try {
          linkUnnamed(fd, out);
        } catch (e) {
          throw appearedWhileRestoring(e, out);
        }
      }
      fs.closeSync(fd);
      open = false;
      syncDirectory(out);
    },
    abort() {
      if (open) fs.closeSync(fd);
      open = false;
    },
  };
}

/** Link the unnamed file under a fresh name beside OUT, then rename that over OUT (which may be a symlink: it is replaced, not followed). */
function replaceWithUnnamed(fd: number, out: string): void {
  for (let attempt = 0; ; attempt++) {
    const temp = path.join(path.dirname(out), `.${path.basename(out)}.imgtool-${process.pid}-${attempt}`);
    try {
      linkUnnamed(fd, temp);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST" && attempt < 100) continue;
      throw e;
    }
    try {
      fs.renameSync(temp, out);
    } catch (e) {
      fs.rmSync(temp, { force: true });
      throw e;
    }
    return;
  }
}

function partialFileTarget(out: string, opts: OutputOptions): OutputTarget {
  const partial = `${out}.partial`;
  const { O_CREAT, O_EXCL, O_NOFOLLOW, O_RDWR } = fs.constants;
  let fd: number;
  try {
    fd = fs.openSync(partial, O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR, 0o644);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") throw new UsageError(`${partial} exists (left by an earlier run?); remove it first: imgtool never reuses a partial file`);
    throw new OutputError(`${partial}: cannot create it: ${code ?? (e as Error).message}`);
  }
  const mine = fs.fstatSync(fd);
  const writer = new VolumeWriter(out, fd, opts.sparse ? "skip" : "allocate", opts.outputOffset);
  let open = true;
  let named = false;
  return {
    writer,
    name: out,
    partialPath: partial,
    commit(size) {
      writer.finish(size);
      fs.ftruncateSync(fd, opts.outputOffset + size);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      open = false;
      if (opts.force) fs.renameSync(partial, out);
      else renameWithoutReplacing(partial, out);
      named = true;
      syncDirectory(out);
    },
    abort() {
      if (open) fs.closeSync(fd);
      open = false;
      if (named) return;
      // remove the partial only while it is still the file this run created
      const now = lstatOrMissingQuiet(partial);
      if (now && now.dev === mine.dev && now.ino === mine.ino) fs.rmSync(partial, { force: true });
    },
  };
}

function lstatOrMissingQuiet(p: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(p);
  } catch {
    return undefined;
  }
}

function renameWithoutReplacing(from: string, to: string): void {
  try {
    if (renameNoReplace(from, to)) return;
    // no RENAME_NOREPLACE here: link(2) also refuses an existing name
    fs.linkSync(from, to);
    fs.unlinkSync(from);
  } catch (e) {
    throw appearedWhileRestoring(e, to);
  }
}

/** What to throw for `e` from naming the output `out`: an EEXIST means someone else made it meanwhile. */
function appearedWhileRestoring(e: unknown, out: string): unknown {
  if ((e as NodeJS.ErrnoException).code === "EEXIST") return new UsageError(`${out} appeared while restoring; not overwriting it without --force`);
  return e;
}

/** Into an existing file at --output-offset: nothing to rename; unused blocks must not keep old bytes. */
function inPlaceTarget(out: string, st: fs.Stats, opts: OutputOptions): OutputTarget {
  const end = opts.outputOffset + (opts.volumeSize ?? 0);
  if (end > st.size) {
    throw new UsageError(
      `${out}: the volume would end at byte ${withCommas(end)}, past the end of the file (${withCommas(st.size)} bytes); extend it first if that is meant (truncate -s ${end} ${out})`,
    );
  }
  const fd = fs.openSync(out, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  return fdTarget(out, fd, new VolumeWriter(out, fd, opts.sparse ? "punch" : "zeros", opts.outputOffset), { fsync: true });
}

function deviceTarget(out: string, opts: OutputOptions): OutputTarget {
  let fd: number;
  try {
    // O_EXCL on a block device: refused while it is mounted or held by another program
    fd = fs.openSync(out, fs.constants.O_RDWR | fs.constants.O_EXCL);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EBUSY") throw new UsageError(`${out}: the device is in use (mounted, or held by another program)`);
    throw new OutputError(`${out}: cannot open the device: ${code ?? (e as Error).message}`);
  }
  try {
    const capacity = blockDeviceSize(fd, out);
    const end = opts.outputOffset + (opts.volumeSize ?? 0);
    if (end > capacity) {
      throw new UsageError(
        `${out}: the device holds ${withCommas(capacity)} bytes; the volume needs ${withCommas(opts.volumeSize ?? 0)}${opts.outputOffset ? ` from byte ${withCommas(opts.outputOffset)}` : ""}`,
      );
    }
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  const gaps: GapPolicy = opts.sparse ? "skip" : "zeros";
  return fdTarget(out, fd, new VolumeWriter(out, fd, gaps, opts.outputOffset), { fsync: true });
}

function streamTarget(opts: OutputOptions): OutputTarget {
  if (process.stdout.isTTY) throw new UsageError("refusing to write a volume to a terminal; redirect stdout or use -o FILE");
  if (opts.outputOffset) throw new UsageError("--output-offset needs a file or device, not stdout");
  const st = fs.fstatSync(1);
  if (st.isFile()) refuseInput("stdout", st, opts.inputs ?? []);
  // a pipe that another process made non-blocking would otherwise answer EAGAIN to every full buffer
  const flags = makeBlocking(1);
  growPipe(1, PIPE_BYTES);
  const writer = new VolumeWriter("stdout", 1, "zeros", null);
  return {
    writer,
    name: "stdout",
    partialPath: undefined,
    commit(size) {
      writer.finish(size);
      restoreFlags(1, flags);
    },
    abort() {
      restoreFlags(1, flags);
    },
  };
}

/** A FIFO or character device named on the command line. */
function streamTargetAt(out: string, opts: OutputOptions): OutputTarget {
  if (opts.outputOffset) throw new UsageError(`--output-offset needs a file or block device; ${out} is neither`);
  const fd = fs.openSync(out, "w");
  makeBlocking(fd);
  growPipe(fd, PIPE_BYTES);
  return fdTarget(out, fd, new VolumeWriter(out, fd, "zeros", null), { fsync: false });
}

/** A file or device written where it is: commit finishes (and with fsync, syncs) and closes; abort closes. */
function fdTarget(out: string, fd: number, writer: VolumeWriter, o: { fsync: boolean }): OutputTarget {
  let open = true;
  return {
    writer,
    name: out,
    partialPath: undefined,
    commit(size) {
      writer.finish(size);
      if (o.fsync) fs.fsyncSync(fd);
      fs.closeSync(fd);
      open = false;
    },
    abort() {
      if (open) fs.closeSync(fd);
      open = false;
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
