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
    openat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.u32], returns: FFIType.i32 },
    mkdirat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    symlinkat: { args: [FFIType.ptr, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    linkat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    mknodat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.u64], returns: FFIType.i32 },
    fchownat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.u32, FFIType.i32], returns: FFIType.i32 },
    fchmodat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.i32], returns: FFIType.i32 },
    futimens: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    unlinkat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
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

/** Ask for a larger pipe buffer (fewer, larger reads); harmless where fd is not a pipe. */
export function growPipe(fd: number, bytes: number): void {
  libc().fcntl(fd, F_SETPIPE_SZ, bytes);
}

// ---- *at(2) calls on held directory fds: extraction never resolves a path through a symlink ----

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOFOLLOW = 0o400000;
export const O_DIRECTORY = 0o200000;
export const O_CLOEXEC = 0o2000000;
const AT_REMOVEDIR = 0x200;

/** openat(2); throws an errno Error naming `name`. */
export function openat(dirFd: number, name: Uint8Array, flags: number, mode = 0): number {
  const fd = libc().openat(dirFd, cPath(name), flags, mode);
  if (fd < 0) throw libcError("openat", name);
  return fd;
}

export function mkdirat(dirFd: number, name: Uint8Array, mode: number): void {
  if (libc().mkdirat(dirFd, cPath(name), mode) !== 0) throw libcError("mkdirat", name);
}

export function symlinkat(target: Uint8Array, dirFd: number, name: Uint8Array): void {
  if (libc().symlinkat(cPath(target), dirFd, cPath(name)) !== 0) throw libcError("symlinkat", name);
}

/** A hard link; never follows a symlink at `oldName` (flags 0). */
export function linkat(oldDirFd: number, oldName: Uint8Array, newDirFd: number, newName: Uint8Array): void {
  if (libc().linkat(oldDirFd, cPath(oldName), newDirFd, cPath(newName), 0) !== 0) throw libcError("linkat", newName);
}

export function mknodat(dirFd: number, name: Uint8Array, mode: number, rdev: number): void {
  if (libc().mknodat(dirFd, cPath(name), mode, rdev) !== 0) throw libcError("mknodat", name);
}

/** Owner of `name` (not following a symlink), or of `dirFd` itself when name is empty. */
export function fchownat(dirFd: number, name: Uint8Array, uid: number, gid: number): void {
  const AT_EMPTY_PATH = 0x1000;
  const flags = name.length === 0 ? AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW : AT_SYMLINK_NOFOLLOW;
  if (libc().fchownat(dirFd, cPath(name), uid, gid, flags) !== 0) throw libcError("fchownat", name);
}

/** chmod of an fd with the set-id and sticky bits. */
export function fchmod(fd: number, mode: number): void {
  if (libc().fchmod(fd, mode) !== 0) throw libcError("fchmod", new Uint8Array(0));
}

/** chmod of a name in dirFd; `name` must not be a symlink (the caller knows: it just made it). */
export function fchmodat(dirFd: number, name: Uint8Array, mode: number): void {
  if (libc().fchmodat(dirFd, cPath(name), mode, 0) !== 0) throw libcError("fchmodat", name);
}

/** atime and mtime to the nanosecond of `name` in dirFd (not following a symlink), or of dirFd itself when name is empty. */
export function utimensat(dirFd: number, name: Uint8Array, atime: { sec: number; nsec: number }, mtime: { sec: number; nsec: number }): void {
  const times = new BigInt64Array([BigInt(atime.sec), BigInt(atime.nsec), BigInt(mtime.sec), BigInt(mtime.nsec)]);
  // glibc's utimensat refuses a NULL path: futimens for the fd itself
  const ok = name.length === 0 ? libc().futimens(dirFd, times) : libc().utimensat(dirFd, cPath(name), times, AT_SYMLINK_NOFOLLOW);
  if (ok !== 0) throw libcError("utimensat", name);
}

export function unlinkat(dirFd: number, name: Uint8Array, directory = false): void {
  if (libc().unlinkat(dirFd, cPath(name), directory ? AT_REMOVEDIR : 0) !== 0) throw libcError("unlinkat", name);
}
