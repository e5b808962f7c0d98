// libc through bun:ffi: what node:fs lacks (xattrs, mknod, nanosecond lutimes, set-id chmod,
// fallocate, reflinks, holes, writeback control, pipe size, the *at calls relative to a directory fd,
// linking unnamed files, no-replace renames, device sizes, blocking pipes, blocking socket I/O on
// another thread).
import { FFIType, ptr, read } from "bun:ffi";
import { bindOnFirstUse } from "./ffi.ts";
import os from "node:os";
import { printable } from "../src/errors.ts";

// linux/fcntl.h, linux/fs.h, linux/falloc.h, unistd.h, sys/stat.h
const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_NONBLOCK = 0o4000;
export const O_DIRECTORY = 0o200000;
export const O_NOFOLLOW = 0o400000;
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;
// linux/openat2.h
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;
// x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) of calls glibc 2.36 does not wrap
const SYS_openat2 = 437;
const SYS_fchmodat2 = 452;
const SYS_setxattrat = 463;
const SYS_removexattrat = 466;
const SYS_gettid = 186;
const SYS_getpriority = 140;
const SYS_setpriority = 141;
const PRIO_PROCESS = 0;
export const FICLONE = 0x40049409;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
const EINTR = 4;
const SYNC_FILE_RANGE_WAIT_BEFORE = 1;
const SYNC_FILE_RANGE_WRITE = 2;
const F_SETPIPE_SZ = 1031;
const F_GETFL = 3;
const F_SETFL = 4;
const AT_SYMLINK_FOLLOW = 0x400;
const AT_EMPTY_PATH = 0x1000;
const RENAME_NOREPLACE = 1;
/** _IOR(0x12, 114, size_t) */
const BLKGETSIZE64 = 0x80081272;
const POLLOUT = 4;
/** open(2) flag: an unnamed file in the given directory, freed when closed unless linked (linux/fcntl.h) */
export const O_TMPFILE = 0o20200000;
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFIFO = 0o010000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;

let libcSymbols: ReturnType<typeof loadLibc> | undefined;
function loadLibc() {
  return bindOnFirstUse("libc.so.6", {
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
    // long syscall(long number, ...): every argument as a 64-bit integer (pointers by address)
    syscall: { args: [FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64, FFIType.i64], returns: FFIType.i64 },
    openat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.u32], returns: FFIType.i32 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
    pread: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i64], returns: FFIType.i64 },
    mkdirat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    mknodat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.u64], returns: FFIType.i32 },
    symlinkat: { args: [FFIType.ptr, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    linkat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    renameat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    unlinkat: { args: [FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    fchownat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.u32, FFIType.i32], returns: FFIType.i32 },
    futimens: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    fchown: { args: [FFIType.i32, FFIType.u32, FFIType.u32], returns: FFIType.i32 },
    fchmodat: { args: [FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.i32], returns: FFIType.i32 },
    statx: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.u32, FFIType.ptr], returns: FFIType.i32 },
    fsetxattr: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
    fremovexattr: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    setxattr: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
    removexattr: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    renameat2: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    poll: { args: [FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 },
    flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    sigaction: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    dup: { args: [FFIType.i32], returns: FFIType.i32 },
    recv: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i64 },
    sendmsg: { args: [FFIType.i32, FFIType.ptr, FFIType.i32], returns: FFIType.i64 },
    shutdown: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  });
}
export function libc(): NonNullable<typeof libcSymbols> {
  if (!libcSymbols) {
    libcSymbols = loadLibc();
    // bound now: binding it after a failed call (a dlopen) would overwrite the errno it is there to read
    void libcSymbols.__errno_location;
  }
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
export function cPath(p: Uint8Array): Buffer {
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

/** Reserve [offset, offset+length) of a regular file as unwritten extents (reads as zeros, writes nothing); false where the file system cannot. */
export function allocateRange(fd: number, offset: number, length: number): boolean {
  return libc().fallocate(fd, 0, offset, length) === 0;
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

/** pread(2) of up to `into.length` bytes at `offset`, again where a signal cut it short; bytes read, 0 at the end. */
export function preadFd(fd: number, into: Uint8Array, offset: number, display: Uint8Array): number {
  if (into.length === 0) return 0;
  for (;;) {
    const n = Number(libc().pread(fd, into, into.length, offset));
    if (n >= 0) return n;
    if (read.i32(libc().__errno_location()!, 0) !== EINTR) throw libcError("pread", display);
  }
}

// ---- calls relative to a directory fd: the name is one path component of that directory ----

/** Close an fd opened by the calls below. */
export function closeFd(fd: number): void {
  libc().close(fd);
}

function checked(rc: number | bigint, call: string, display: Uint8Array): void {
  if (Number(rc) < 0) throw libcError(call, display);
}

/**
 * openat2(2) (Linux 5.6): `p` resolved by the kernel under `dirfd` with `resolve` (RESOLVE_*
 * flags); undefined where the kernel has no openat2 (ENOSYS).
 */
export function openat2(dirfd: number, p: Uint8Array, flags: number, resolve: number, display: Uint8Array): number | undefined {
  // struct open_how { u64 flags; u64 mode; u64 resolve; }
  const how = new BigUint64Array([BigInt(flags), 0n, BigInt(resolve)]);
  const c = cPath(p);
  const fd = Number(libc().syscall(SYS_openat2, dirfd, ptr(c), ptr(how), how.byteLength, 0, 0));
  if (fd >= 0) return fd;
  const err = libcError("openat2", display);
  if (err.code === "ENOSYS") return undefined;
  throw err;
}

export function openAt(dirfd: number, name: Uint8Array, flags: number, mode: number, display: Uint8Array): number {
  const fd = libc().openat(dirfd, cPath(name), flags | O_CLOEXEC, mode);
  checked(fd, "openat", display);
  return fd;
}

export function mkdirAt(dirfd: number, name: Uint8Array, mode: number, display: Uint8Array): void {
  checked(libc().mkdirat(dirfd, cPath(name), mode), "mkdirat", display);
}

export function mknodAt(dirfd: number, name: Uint8Array, mode: number, rdev: number | bigint, display: Uint8Array): void {
  checked(libc().mknodat(dirfd, cPath(name), mode, rdev), "mknodat", display);
}

export function symlinkAt(target: Uint8Array, dirfd: number, name: Uint8Array, display: Uint8Array): void {
  checked(libc().symlinkat(cPath(target), dirfd, cPath(name)), "symlinkat", display);
}

/** A hard link to the entry itself (a symlink is linked, not followed). */
export function linkAt(fromDir: number, fromName: Uint8Array, toDir: number, toName: Uint8Array, display: Uint8Array): void {
  checked(libc().linkat(fromDir, cPath(fromName), toDir, cPath(toName), 0), "linkat", display);
}

export function renameAt(fromDir: number, fromName: Uint8Array, toDir: number, toName: Uint8Array, display: Uint8Array): void {
  checked(libc().renameat(fromDir, cPath(fromName), toDir, cPath(toName)), "renameat", display);
}

export function unlinkAt(dirfd: number, name: Uint8Array, flags: number, display: Uint8Array): void {
  checked(libc().unlinkat(dirfd, cPath(name), flags), flags & AT_REMOVEDIR ? "rmdir" : "unlinkat", display);
}

/** lchown of `name` in dirfd, or fchown of dirfd itself when `name` is null. */
export function chownAt(dirfd: number, name: Uint8Array | null, uid: number, gid: number, display: Uint8Array): void {
  if (name === null) checked(libc().fchown(dirfd, uid, gid), "fchown", display);
  else checked(libc().fchownat(dirfd, cPath(name), uid, gid, AT_SYMLINK_NOFOLLOW), "fchownat", display);
}

let noFchmodat2 = false;

/**
 * chmod of `name` in dirfd without following a symlink (fchmodat2, Linux 6.6; else glibc's
 * O_PATH fchmodat); false when `name` is a symlink, whose mode Linux cannot change.
 */
export function chmodAt(dirfd: number, name: Uint8Array | null, mode: number, display: Uint8Array): boolean {
  if (name === null) {
    checked(libc().fchmod(dirfd, mode), "fchmod", display);
    return true;
  }
  const c = cPath(name);
  let rc = -1;
  if (!noFchmodat2) {
    rc = Number(libc().syscall(SYS_fchmodat2, dirfd, ptr(c), mode, AT_SYMLINK_NOFOLLOW, 0, 0));
    if (rc < 0 && errnoName() === "ENOSYS") noFchmodat2 = true;
  }
  if (noFchmodat2) rc = libc().fchmodat(dirfd, c, mode, AT_SYMLINK_NOFOLLOW);
  if (rc === 0) return true;
  const err = libcError("fchmodat", display);
  if (err.code === "EOPNOTSUPP" || err.code === "ENOTSUP") return false;
  throw err;
}

/** atime and mtime to the nanosecond of `name` in dirfd (not following a symlink), or of dirfd itself. */
export function utimensAt(
  dirfd: number,
  name: Uint8Array | null,
  atime: { sec: number | bigint; nsec: number },
  mtime: { sec: number | bigint; nsec: number },
  display: Uint8Array,
): void {
  const times = new BigInt64Array([BigInt(atime.sec), BigInt(atime.nsec), BigInt(mtime.sec), BigInt(mtime.nsec)]);
  const rc = name === null ? libc().futimens(dirfd, times) : libc().utimensat(dirfd, cPath(name), times, AT_SYMLINK_NOFOLLOW);
  checked(rc, "utimensat", display);
}

let noXattrat = false;

/** Run `call` on /proc/self/fd/N of an O_PATH fd of `name`: the xattr calls of kernels before 6.13 that have no *xattrat. */
function throughOpathFd(dirfd: number, name: Uint8Array, display: Uint8Array, call: (procPath: Buffer) => number): number {
  const fd = openAt(dirfd, name, O_PATH | O_NOFOLLOW, 0, display);
  try {
    return call(Buffer.from(`/proc/self/fd/${fd}\0`));
  } finally {
    closeFd(fd);
  }
}

/** setxattr on `name` in dirfd without following a symlink (setxattrat, Linux 6.13), or on dirfd itself. */
export function setxattrAt(dirfd: number, name: Uint8Array | null, xattr: Uint8Array, value: Uint8Array, display: Uint8Array): void {
  const cx = cPath(xattr);
  const v = value.length ? value : null;
  if (name === null) return checked(libc().fsetxattr(dirfd, cx, v, value.length, 0), "fsetxattr", display);
  const c = cPath(name);
  if (!noXattrat) {
    // struct xattr_args { u64 value; u32 size; u32 flags; }
    const args = new BigUint64Array(2);
    args[0] = value.length ? BigInt(ptr(value)) : 0n;
    args[1] = BigInt(value.length);
    const rc = Number(libc().syscall(SYS_setxattrat, dirfd, ptr(c), AT_SYMLINK_NOFOLLOW, ptr(cx), ptr(args), args.byteLength));
    if (rc === 0) return;
    if (errnoName() !== "ENOSYS") throw libcError("setxattrat", display);
    noXattrat = true;
  }
  checked(throughOpathFd(dirfd, name, display, (p) => libc().setxattr(p, cx, v, value.length, 0)), "setxattr", display);
}

export function removexattrAt(dirfd: number, name: Uint8Array | null, xattr: Uint8Array, display: Uint8Array): void {
  const cx = cPath(xattr);
  if (name === null) return checked(libc().fremovexattr(dirfd, cx), "fremovexattr", display);
  const c = cPath(name);
  if (!noXattrat) {
    const rc = Number(libc().syscall(SYS_removexattrat, dirfd, ptr(c), AT_SYMLINK_NOFOLLOW, ptr(cx), 0, 0));
    if (rc === 0) return;
    if (errnoName() !== "ENOSYS") throw libcError("removexattrat", display);
    noXattrat = true;
  }
  checked(throughOpathFd(dirfd, name, display, (p) => libc().removexattr(p, cx)), "removexattr", display);
}

/** What statx says of an entry (not following a symlink). */
export interface EntryStat {
  /** S_IFMT bits and permissions */
  mode: number;
  ino: bigint;
  /** major << 32 | minor, as a key */
  dev: bigint;
}

// statx(2): STATX_TYPE | STATX_MODE | STATX_INO; struct statx from linux/stat.h
const STATX_WANTED = 0x1 | 0x2 | 0x100;
const statxBytes = new Uint8Array(256);
const statxView = new DataView(statxBytes.buffer);

/** The entry `name` of dirfd (or dirfd itself when null), or undefined when there is none (ENOENT). */
export function statAt(dirfd: number, name: Uint8Array | null, display: Uint8Array): EntryStat | undefined {
  const rc =
    name === null
      ? libc().statx(dirfd, Buffer.from("\0"), AT_EMPTY_PATH, STATX_WANTED, statxBytes)
      : libc().statx(dirfd, cPath(name), AT_SYMLINK_NOFOLLOW, STATX_WANTED, statxBytes);
  if (rc !== 0) {
    const err = libcError("statx", display);
    if (err.code === "ENOENT") return undefined;
    throw err;
  }
  const b = statxView;
  return {
    mode: b.getUint16(28, true),
    ino: b.getBigUint64(32, true),
    dev: (BigInt(b.getUint32(136, true)) << 32n) | BigInt(b.getUint32(140, true)),
  };
}

function errnoName(): string {
  const errno = read.i32(libc().__errno_location()!, 0);
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/**
 * Give the unnamed file open on `fd` (O_TMPFILE) the name `to`; fails with EEXIST rather than
 * replace anything. Through /proc/self/fd (no privilege needed), else AT_EMPTY_PATH (root).
 */
export function linkUnnamed(fd: number, to: string): void {
  const target = cPath(Buffer.from(to));
  if (libc().linkat(AT_FDCWD, cPath(Buffer.from(`/proc/self/fd/${fd}`)), AT_FDCWD, target, AT_SYMLINK_FOLLOW) === 0) return;
  const err = libcError("linkat", Buffer.from(to));
  if (err.code !== "ENOENT") throw err;
  // no /proc mounted
  if (libc().linkat(fd, cPath(new Uint8Array(0)), AT_FDCWD, target, AT_EMPTY_PATH) !== 0) throw libcError("linkat", Buffer.from(to));
}

/**
 * rename(2) that fails with EEXIST instead of replacing `to`; false where the file system cannot
 * promise that (EINVAL), so the caller can fall back.
 */
export function renameNoReplace(from: string, to: string): boolean {
  if (libc().renameat2(AT_FDCWD, cPath(Buffer.from(from)), AT_FDCWD, cPath(Buffer.from(to)), RENAME_NOREPLACE) === 0) return true;
  const err = libcError("renameat2", Buffer.from(to));
  if (err.code === "EINVAL" || err.code === "ENOSYS") return false;
  throw err;
}

/** The size in bytes of the block device open on fd. */
export function blockDeviceSize(fd: number, name: string): number {
  const size = new BigUint64Array(1);
  if (libc().ioctl(fd, BLKGETSIZE64, ptr(size)) !== 0) throw libcError("ioctl BLKGETSIZE64", Buffer.from(name));
  return Number(size[0]);
}

/** Make writes to fd block rather than fail with EAGAIN; returns the flags to put back with restoreFlags. */
export function makeBlocking(fd: number): number {
  const flags = libc().fcntl(fd, F_GETFL, 0);
  if (flags >= 0 && flags & O_NONBLOCK) libc().fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return flags;
}

export function restoreFlags(fd: number, flags: number): void {
  if (flags >= 0) libc().fcntl(fd, F_SETFL, flags);
}

const pollFd = new Int32Array(2);
/** Wait until fd can take a write (after EAGAIN on a non-blocking pipe). */
export function waitWritable(fd: number): void {
  pollFd[0] = fd;
  pollFd[1] = POLLOUT;
  libc().poll(ptr(pollFd), 1, -1);
}

// ---- a connected socket served with blocking calls on a thread of its own ----

const MSG_NOSIGNAL = 0x4000;
const SHUT_RDWR = 2;
/** struct msghdr (sys/socket.h, x86_64): name, namelen, iov, iovlen, control, controllen, flags */
const MSGHDR_SIZE = 56;
const MAX_IOV = 64;

/** A second descriptor of an open socket (the connection lives while either is open). */
export function dupFd(fd: number): number {
  const copy = libc().dup(fd);
  if (copy < 0) throw libcError("dup", Buffer.from(String(fd)));
  return copy;
}

/** Blocking reads into `into`: bytes read, 0 at the peer's end, -errno on failure. */
export function recvInto(fd: number, into: Uint8Array): number {
  for (;;) {
    const n = Number(libc().recv(fd, ptr(into), into.length, 0));
    if (n >= 0) return n;
    const errno = read.i32(libc().__errno_location()!, 0);
    if (errno !== EINTR) return -errno;
  }
}

/**
 * Sends all of `parts` in order with as few system calls as the kernel allows (one sendmsg for
 * all of them when it takes them), never raising SIGPIPE; false when the peer is gone.
 */
export class SocketSender {
  private readonly header = new Uint8Array(MSGHDR_SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly iov = new BigUint64Array(2 * MAX_IOV);

  constructor(private readonly fd: number) {
    this.headerView.setBigUint64(16, BigInt(ptr(this.iov)), true);
  }

  send(parts: Uint8Array[]): boolean {
    let first = 0;
    let skip = 0;
    while (first < parts.length) {
      let count = 0;
      for (let i = first; i < parts.length && count < MAX_IOV; i++) {
        const part = i === first ? parts[i]!.subarray(skip) : parts[i]!;
        if (part.length === 0) continue;
        this.iov[2 * count] = BigInt(ptr(part));
        this.iov[2 * count + 1] = BigInt(part.length);
        count++;
      }
      if (count === 0) return true;
      this.headerView.setBigUint64(24, BigInt(count), true);
      let n = Number(libc().sendmsg(this.fd, ptr(this.header), MSG_NOSIGNAL));
      if (n < 0) {
        if (read.i32(libc().__errno_location()!, 0) === EINTR) continue;
        return false;
      }
      // step past what was taken
      while (first < parts.length && n >= parts[first]!.length - skip) {
        n -= parts[first]!.length - skip;
        first++;
        skip = 0;
      }
      skip += n;
    }
    return true;
  }
}

/**
 * Lower the calling thread's scheduling priority by `steps` nice levels from where it is (Linux
 * keeps a nice value per thread), to 19 at most: a process the user started niced stays below it.
 * Best effort: where the kernel refuses, the thread keeps its priority.
 */
export function lowerThreadPriority(steps: number): void {
  const tid = Number(libc().syscall(SYS_gettid, 0, 0, 0, 0, 0, 0));
  // the system call returns 20 - nice (1 to 40), so that no priority reads as an error
  const got = Number(libc().syscall(SYS_getpriority, PRIO_PROCESS, tid, 0, 0, 0, 0));
  if (got < 1) return;
  libc().syscall(SYS_setpriority, PRIO_PROCESS, tid, Math.min(19, 20 - got + steps), 0, 0, 0);
}

/** End both directions of a connection: a thread blocked reading it wakes up with its end. */
export function shutdownSocket(fd: number): void {
  libc().shutdown(fd, SHUT_RDWR);
}
