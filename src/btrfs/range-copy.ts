// Copying file data as btrfs does it by reference: a clone's range (BTRFS_IOC_CLONE_RANGE's effect),
// a whole file, a whole received subvolume for a snapshot's starting point. Reflinked where the file
// system can (FICLONE, copy_file_range), holes kept where it cannot.
import fs from "node:fs";
import { libc, S_IFDIR, S_IFLNK, S_IFMT } from "../../native/libc.ts";
import { chmod, listXattrs, lsetxattr, lutimesNs, mknod } from "../../native/libc-at.ts";
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FICLONE, SEEK_DATA, SEEK_HOLE } from "../../native/libc-file.ts";
import type { Timespec } from "./stream.ts";

const COPY_BUFFER = 1 << 20;
let copyBuffer: Buffer | undefined;

/** Next data offset at or after `from` (SEEK_DATA), or `end` when only a hole remains. */
function nextData(fd: number, from: number, end: number): number {
  const at = Number(libc().lseek(fd, from, SEEK_DATA));
  return at < 0 || at > end ? end : at;
}

function nextHole(fd: number, from: number, end: number): number {
  const at = Number(libc().lseek(fd, from, SEEK_HOLE));
  return at < 0 || at > end ? end : at;
}

/** Copy bytes with read and pwrite; backwards when the ranges overlap in one file and the target is after the source. */
function copyBytes(src: number, srcOffset: number, dst: number, dstOffset: number, length: number, backwards: boolean): void {
  copyBuffer ??= Buffer.allocUnsafe(COPY_BUFFER);
  const buf = copyBuffer;
  let done = 0;
  while (done < length) {
    const n = Math.min(COPY_BUFFER, length - done);
    const at = backwards ? length - done - n : done;
    const got = fs.readSync(src, buf, 0, n, srcOffset + at);
    if (got === 0) return;
    fs.writeSync(dst, buf, 0, got, dstOffset + at);
    done += got;
  }
}

const copyOffsets = new BigInt64Array(2);

/** copy_file_range (a reflink on btrfs and XFS), falling back to read and write where it cannot. */
function copyData(src: number, srcOffset: number, dst: number, dstOffset: number, length: number, sameFile: boolean): void {
  let done = 0;
  while (done < length) {
    copyOffsets[0] = BigInt(srcOffset + done);
    copyOffsets[1] = BigInt(dstOffset + done);
    const n = Number(libc().copy_file_range(src, copyOffsets, dst, copyOffsets.subarray(1), length - done, 0));
    if (n === 0) return;
    if (n < 0) {
      const overlapping = sameFile && dstOffset + done > srcOffset + done && dstOffset + done < srcOffset + length;
      copyBytes(src, srcOffset + done, dst, dstOffset + done, length - done, overlapping);
      return;
    }
    done += n;
  }
}

/**
 * What BTRFS_IOC_CLONE_RANGE does to the bytes: [dstOffset, dstOffset+length) of dst becomes
 * [srcOffset, ...) of src, holes included; the file grows to cover the range.
 */
export function cloneRange(src: number, srcOffset: number, dst: number, dstOffset: number, length: number, sameFile: boolean): void {
  const srcSize = fs.fstatSync(src).size;
  const end = Math.min(srcOffset + length, srcSize);
  let at = srcOffset;
  while (at < end) {
    const data = nextData(src, at, end);
    if (data > at) punchOrZero(dst, dstOffset + (at - srcOffset), data - at);
    if (data >= end) break;
    const hole = nextHole(src, data, end);
    copyData(src, data, dst, dstOffset + (data - srcOffset), hole - data, sameFile);
    at = hole;
  }
  const wanted = dstOffset + length;
  if (fs.fstatSync(dst).size < wanted) fs.ftruncateSync(dst, wanted);
}

/** Make a range read as zeros: a hole where the file system can punch one, written zeros where not. */
export function punchOrZero(fd: number, offset: number, length: number): void {
  if (libc().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0) return;
  const size = fs.fstatSync(fd).size;
  const end = Math.min(offset + length, size);
  const zeros = Buffer.alloc(Math.min(COPY_BUFFER, Math.max(end - offset, 0)));
  for (let at = offset; at < end; at += zeros.length) fs.writeSync(fd, zeros, 0, Math.min(zeros.length, end - at), at);
}

/** A whole regular file: one reflink where the file system can, else its data extents (holes stay holes). */
function copyFileContents(src: number, dst: number, size: number): void {
  if (libc().ioctl(dst, FICLONE, src) === 0) return;
  for (let at = 0; at < size; ) {
    const data = nextData(src, at, size);
    if (data >= size) break;
    const hole = nextHole(src, data, size);
    copyData(src, data, dst, data, hole - data, false);
    at = hole;
  }
  fs.ftruncateSync(dst, size);
}
// ---- a snapshot's starting point: a copy of its parent ----

/**
 * Copy a received subvolume to a new directory with everything `btrfs receive` can set: modes
 * (set-id, sticky), owners, xattrs, atime and mtime to the nanosecond, hard links, symlinks,
 * devices, fifos, sockets, holes; file data is reflinked where the file system can.
 */
export function copyTree(from: Buffer, to: Buffer): void {
  const linked = new Map<string, Buffer>();
  const directories: [source: Buffer, target: Buffer, fs.BigIntStats][] = [];
  const copyMetadata = (target: Buffer, st: fs.BigIntStats, source: Buffer) => {
    fs.lchownSync(target, Number(st.uid), Number(st.gid));
    const mode = Number(st.mode);
    if ((mode & S_IFMT) !== S_IFLNK) chmod(target, mode & 0o7777);
    for (const [name, value] of listXattrs(source)) lsetxattr(target, name, value);
  };
  const walk = (source: Buffer, target: Buffer) => {
    const st = fs.lstatSync(source, { bigint: true });
    directories.push([source, target, st]);
    for (const name of fs.readdirSync(source, { encoding: "buffer" }) as Uint8Array[]) {
      const s = Buffer.concat([source, SLASH, name]);
      const t = Buffer.concat([target, SLASH, name]);
      const est = fs.lstatSync(s, { bigint: true });
      const kind = Number(est.mode) & S_IFMT;
      if (kind === S_IFDIR) {
        fs.mkdirSync(t, 0o700);
        walk(s, t);
        continue;
      }
      const inode = `${est.dev}:${est.ino}`;
      const first = est.nlink > 1n ? linked.get(inode) : undefined;
      if (first) {
        fs.linkSync(first, t);
        continue;
      }
      if (est.nlink > 1n) linked.set(inode, t);
      if (est.isFile()) {
        const src = fs.openSync(s, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        try {
          const dst = fs.openSync(t, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
          try {
            copyFileContents(src, dst, Number(est.size));
          } finally {
            fs.closeSync(dst);
          }
        } finally {
          fs.closeSync(src);
        }
      } else if (est.isSymbolicLink()) {
        fs.symlinkSync(fs.readlinkSync(s, { encoding: "buffer" }), t);
      } else {
        mknod(t, kind, est.rdev);
      }
      copyMetadata(t, est, s);
      lutimesNs(t, timespecOf(est.atimeNs), timespecOf(est.mtimeNs));
    }
  };
  fs.mkdirSync(to, 0o700);
  walk(from, to);
  // a directory's times last: creating its entries changed them
  for (const [source, target, st] of directories) {
    copyMetadata(target, st, source);
    lutimesNs(target, timespecOf(st.atimeNs), timespecOf(st.mtimeNs));
  }
}

function timespecOf(ns: bigint): Timespec {
  const sec = ns / 1_000_000_000n;
  const nsec = ns - sec * 1_000_000_000n;
  return nsec < 0n ? { sec: sec - 1n, nsec: Number(nsec + 1_000_000_000n) } : { sec, nsec: Number(nsec) };
}

const SLASH = Buffer.from("/");
