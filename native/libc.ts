// libc through bun:ffi: what node:fs lacks (xattrs, mknod, nanosecond lutimes, set-id chmod,
// fallocate, reflinks, holes, writeback control, pipe size).
import { FFIType, dlopen, read } from "bun:ffi";
import os from "node:os";
import { printable } from "../src/errors.ts";

// linux/fcntl.h, linux/fs.h, linux/falloc.h, unistd.h, sys/stat.h
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
export const FICLONE = 0x40049409;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
const SYNC_FILE_RANGE_WAIT_BEFORE = 1;
const SYNC_FILE_RANGE_WRITE = 2;
const F_SETPIPE_SZ = 1031;
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFIFO = 0o010000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;

let libcSymbols: ReturnType<typeof loadLibc>["symbols"] | undefined;
function loadLibc() {
  return dlopen("libc.so.6", {
    __errno_location: { args: [], returns: FFIType.ptr },
    lsetxattr: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
    lremovexattr: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    llistxattr: { args: [FFIType.ptr, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
    lgetxattr: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
    utimensat: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    mknod: { args: [FFIType.ptr, FFIType.u32, FFIType.u64], returns: FFIType.i32 },
    chmod: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    fchmod: { args: [FFIType.i32, FFIType.u32], returns: FFIType.i32 },
    fallocate: { args: [FFIType.i32, FFIType.i32, FFIType.i64, FFIType.i64], returns: FFIType.i32 },
    ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.u64], returns: FFIType.i32 },
    lseek: { args: [FFIType.i32, FFIType.i64, FFIType.i32], returns: FFIType.i64 },
    copy_file_range: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.u32], returns: FFIType.i64 },
    sync_file_range: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.u32], returns: FFIType.i32 },
    fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    sigaction: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  });
}
export function libc(): NonNullable<typeof libcSymbols> {
  libcSymbols ??= loadLibc().symbols;
  return libcSymbols;
}

const ERRNO_NAMES = new Map(Object.entries(os.constants.errno).map(([name, n]) => [n, name]));

/** An Error like node's for a failed libc call, with `code` = the errno's name. */
export function libcError(call: string, target: Uint8Array): NodeJS.ErrnoException {
  const errno = read.i32(libc().__errno_location()!, 0);
  const code = ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
  const err = new Error(`${code}: ${call} '${printable(target)}'`) as NodeJS.ErrnoException;
  err.code = code;
  err.errno = errno;
  return err;
}

/** A path as a NUL-terminated C string. */
function cPath(p: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(p.length + 1);
  out.set(p);
  out[p.length] = 0;
  return out;
}

export function lsetxattr(p: Buffer, name: Uint8Array, value: Uint8Array): void {
  if (libc().lsetxattr(cPath(p), cPath(name), value.length ? value : null, value.length, 0) !== 0) throw libcError("lsetxattr", p);
}

export function lremovexattr(p: Buffer, name: Uint8Array): void {
  if (libc().lremovexattr(cPath(p), cPath(name)) !== 0) throw libcError("lremovexattr", p);
}

/** Every xattr of p (not following a symlink): name and value. */
export function listXattrs(p: Buffer): [Buffer, Buffer][] {
  const cp = cPath(p);
  const size = Number(libc().llistxattr(cp, null, 0));
  if (size < 0) {
    const err = libcError("llistxattr", p);
    if (err.code === "ENOTSUP" || err.code === "EOPNOTSUPP") return [];
    throw err;
  }
  if (size === 0) return [];
  const names = Buffer.alloc(size);
  const got = Number(libc().llistxattr(cp, names, size));
  if (got < 0) throw libcError("llistxattr", p);
  const out: [Buffer, Buffer][] = [];
  for (let start = 0; start < got; ) {
    const end = names.indexOf(0, start);
    const name = names.subarray(start, end);
    const cname = cPath(name);
    const valueSize = Number(libc().lgetxattr(cp, cname, null, 0));
    if (valueSize < 0) throw libcError("lgetxattr", p);
    const value = Buffer.alloc(valueSize);
    if (valueSize > 0 && Number(libc().lgetxattr(cp, cname, value, valueSize)) < 0) throw libcError("lgetxattr", p);
    out.push([Buffer.from(name), value]);
    start = end + 1;
  }
  return out;
}

/** atime and mtime to the nanosecond, not following a symlink (ctime cannot be set). */
export function lutimesNs(p: Buffer, atime: { sec: number | bigint; nsec: number }, mtime: { sec: number | bigint; nsec: number }): void {
  const times = new BigInt64Array([BigInt(atime.sec), BigInt(atime.nsec), BigInt(mtime.sec), BigInt(mtime.nsec)]);
  if (libc().utimensat(AT_FDCWD, cPath(p), times, AT_SYMLINK_NOFOLLOW) !== 0) throw libcError("utimensat", p);
}

export function mknod(p: Buffer, mode: number, rdev: number | bigint): void {
  if (libc().mknod(cPath(p), mode, rdev) !== 0) throw libcError("mknod", p);
}

/** chmod(2) with the set-id and sticky bits, which node:fs under Bun drops. */
export function chmod(p: Buffer, mode: number): void {
  if (libc().chmod(cPath(p), mode) !== 0) throw libcError("chmod", p);
}

/** Deallocate [offset, offset+length) of a regular file, keeping its size; false where the file system cannot. */
export function punchHole(fd: number, offset: number, length: number): boolean {
  return libc().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0;
}

/**
 * Start writeback of [offset, offset+length) now, after waiting for any writeback already running
 * there: the final fsync then has little left to do, and dirty pages stay bounded.
 */
export function startWriteback(fd: number, offset: number, length: number): void {
  libc().sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE);
}

/** struct sigaction of glibc on x86_64: handler, 128-byte mask, flags, restorer */
const SIGACTION_SIZE = 152;

/**
 * Put the default action back for `signals` (a handler of the runtime's, such as the one Bun
 * installs for SIGINT on a terminal, is set aside); the function returned puts the old ones back.
 */
export function defaultSignalActions(signals: number[]): () => void {
  const saved = signals.map((signal) => {
    const old = new Uint8Array(SIGACTION_SIZE);
    // all zeros: SIG_DFL, empty mask, no flags
    libc().sigaction(signal, new Uint8Array(SIGACTION_SIZE), old);
    return { signal, old };
  });
  return () => {
    for (const { signal, old } of saved) libc().sigaction(signal, old, null);
  };
}

const LOCK_EX = 2;
const LOCK_NB = 4;

/** An exclusive flock(2) on an open file, not waiting: false when another holder has it. */
export function lockFile(fd: number): boolean {
  return libc().flock(fd, LOCK_EX | LOCK_NB) === 0;
}

/** Ask for a larger pipe buffer (fewer, larger reads); harmless where fd is not a pipe. */
export function growPipe(fd: number, bytes: number): void {
  libc().fcntl(fd, F_SETPIPE_SZ, bytes);
}
