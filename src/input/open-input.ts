import fs from "node:fs";
import { ImageError, UsageError } from "../errors.ts";
import { openImage, type OpenImageOptions } from "../formats/detect.ts";
import { fileSystemName, HEAD_BYTES } from "../fs/open.ts";
import { looksLikeRawDisk } from "../disk/raw-disk.ts";
import { splitPartitionSuffix } from "../disk/open-disk.ts";
import { openStream } from "../source/open.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { DiskInput, folderFiles } from "./disk-input.ts";
import { LogicalVolumeInput, looksLikeLogicalVolume } from "./lv-input.ts";
import { ImageInput } from "./image-input.ts";
import type { Input } from "./input.ts";
import { VolumeInput } from "./volume-input.ts";

export interface InputOptions {
  /** one partition of a disk, by number or name (also DISK@N in the spec) */
  partition?: string;
  /** the disk of a Clonezilla folder that holds several */
  disk?: string;
  /** the command, for messages ("serve needs a regular file ...") */
  command?: string;
  /**
   * how a compressed image is read at random (openVolume): default, its seek index built on first
   * use; "use-if-present" for restore and verify, which read in order and use an index to decode in parallel
   */
  seekIndex?: SeekIndexOptions;
  /** decode on this many cores where a seek index exists (restore, verify) */
  decodeThreads?: number;
  /** decompress in a worker thread (default: yes) */
  threads?: boolean;
  /** the largest bitmap an image may have, in bytes (default: the formats' own limit) */
  maxBitmap?: number;
  /** info: make sure a compressed split set is whole before showing its header */
  confirmWholeSet?: boolean;
  /**
   * the command reads at random (serve, mount, ls): a compressed image is opened through its seek
   * index from the start, so that one that cannot have an index is refused before anything else
   */
  randomAccess?: boolean;
}

/**
 * What the user typed, as one Input: a path (an image, any piece of a split set, a raw volume, a raw
 * disk, a Clonezilla folder), `-` for stdin, `DISK@N` or options.partition for one partition.
 * Detection is by the bytes, never by the name.
 */
export function openInput(spec: string, options: InputOptions = {}): Input {
  const command = options.command ?? "this command";
  if (spec === "-") {
    if (options.partition !== undefined) throw new UsageError("--partition needs a disk (a Clonezilla folder or a raw disk image), not stdin");
    return new ImageInput("-", openImage("-", { ...imageOptions(options), seekIndex: undefined }), undefined, command);
  }
  const split = splitPartitionSuffix(spec);
  if (split.partition !== undefined && options.partition !== undefined && split.partition !== options.partition) {
    throw new UsageError(`${spec}: the partition is named twice (@${split.partition} and --partition ${options.partition})`);
  }
  const partition = options.partition ?? split.partition;
  const file = split.input;
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(file);
  } catch {
    st = undefined;
  }
  if (st?.isDirectory() || (st && (st.isFile() || st.isBlockDevice()) && isRawDisk(file))) {
    try {
      return new DiskInput(spec, file, { partition, disk: options.disk, seekIndex: options.seekIndex });
    } catch (e) {
      // not a partition of the disk's tables: a logical volume on it, when the name can be one
      if (!(e instanceof UsageError) || partition === undefined || !looksLikeLogicalVolume(partition)) throw e;
      return new LogicalVolumeInput(spec, file, partition, st.isDirectory() ? folderFiles(file) : [file], options.seekIndex);
    }
  }
  if (partition !== undefined) {
    throw new UsageError(`${file}: --partition needs a disk (a Clonezilla folder or a raw disk image with an MBR or GPT); this is ${st ? "not one" : "missing"}`);
  }
  if (options.disk !== undefined) throw new UsageError("--disk is for Clonezilla folders");
  let image;
  try {
    image = openImage(file, imageOptions(options));
  } catch (e) {
    const content = e instanceof ImageError && st ? volumeContent(file) : undefined;
    if (content === undefined) throw e;
    return new VolumeInput(file, content, options.seekIndex);
  }
  // a pipe is read once: only a file (or split set) can be opened again for random access
  const reopen = st === undefined || st.isFile() ? () => openImage(file, { seekIndex: options.seekIndex ?? { mode: "build" }, maxBitmap: options.maxBitmap }) : undefined;
  return new ImageInput(spec, image, reopen, command);
}

function imageOptions(o: InputOptions): OpenImageOptions {
  const seekIndex = o.randomAccess ? (o.seekIndex ?? { mode: "build" as const }) : o.seekIndex;
  return { seekIndex, decodeThreads: o.decodeThreads, threads: o.threads, confirmWholeSet: o.confirmWholeSet, maxBitmap: o.maxBitmap };
}

/** The file system a file's (decompressed) bytes start with, when they are a volume; undefined otherwise. */
function volumeContent(file: string): string | undefined {
  let stream;
  try {
    stream = openStream(file, { threads: false });
  } catch {
    return undefined;
  }
  try {
    return fileSystemName(stream.reader.peek(HEAD_BYTES));
  } catch {
    return undefined;
  } finally {
    stream.reader.close();
  }
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
