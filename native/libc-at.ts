// libc calls on directory entries by name: the *at calls relative to a directory fd (the name is one
// path component of that directory), their path forms (xattrs, nanosecond lutimes, mknod, set-id chmod),
// linking unnamed files and no-replace renames.
import { ptr } from "bun:ffi";
import { cPath, ENOENT, errnoName, lastErrno, libc, libcError, O_CLOEXEC, O_NOFOLLOW, O_PATH } from "./libc.ts";
import { closeFd } from "./libc-file.ts";

// linux/fcntl.h, linux/fs.h
const AT_FDCWD = -100, AT_SYMLINK_FOLLOW = 0x400, AT_EMPTY_PATH = 0x1000, RENAME_NOREPLACE = 1;
export const AT_SYMLINK_NOFOLLOW = 0x100, AT_REMOVEDIR = 0x200;
// linux/openat2.h
export const RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_NO_SYMLINKS = 0x04, RESOLVE_BENEATH = 0x08;
// x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) of calls glibc 2.36 does not wrap
const SYS_openat2 = 437, SYS_fchmodat2 = 452, SYS_setxattrat = 463, SYS_removexattrat = 466;

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

/**
 * A name NUL-terminated for the call being made, in one of two buffers reused from call to call
 * (a rename or link passes two names): the calls of a receive allocate nothing per name.
 */
const nameBuffers = [Buffer.alloc(256), Buffer.alloc(256)] as const;
function cName(name: Uint8Array, slot: 0 | 1 = 0): Buffer {
  if (name.length >= 256) return cPath(name);
  const b = nameBuffers[slot];
  b.set(name);
  b[name.length] = 0;
  return b;
}

/** struct timespec[2] of the utimensat being made */
const timesBuffer = new BigInt64Array(4);
function timespecs(atime: { sec: number | bigint; nsec: number }, mtime: { sec: number | bigint; nsec: number }): BigInt64Array {
  timesBuffer[0] = BigInt(atime.sec);
  timesBuffer[1] = BigInt(atime.nsec);
  timesBuffer[2] = BigInt(mtime.sec);
  timesBuffer[3] = BigInt(mtime.nsec);
  return timesBuffer;
}

export function openAt(dirfd: number, name: Uint8Array, flags: number, mode: number, display: Uint8Array): number {
  const fd = libc().openat(dirfd, cName(name), flags | O_CLOEXEC, mode);
  checked(fd, "openat", display);
  return fd;
}

export function mkdirAt(dirfd: number, name: Uint8Array, mode: number, display: Uint8Array): void {
  checked(libc().mkdirat(dirfd, cName(name), mode), "mkdirat", display);
}

export function mknodAt(dirfd: number, name: Uint8Array, mode: number, rdev: number | bigint, display: Uint8Array): void {
  checked(libc().mknodat(dirfd, cName(name), mode, rdev), "mknodat", display);
}

export function symlinkAt(target: Uint8Array, dirfd: number, name: Uint8Array, display: Uint8Array): void {
  checked(libc().symlinkat(cPath(target), dirfd, cName(name)), "symlinkat", display);
}

/** A hard link to the entry itself (a symlink is linked, not followed). */
export function linkAt(fromDir: number, fromName: Uint8Array, toDir: number, toName: Uint8Array, display: Uint8Array): void {
  checked(libc().linkat(fromDir, cName(fromName), toDir, cName(toName, 1), 0), "linkat", display);
}

export function renameAt(fromDir: number, fromName: Uint8Array, toDir: number, toName: Uint8Array, display: Uint8Array): void {
  checked(libc().renameat(fromDir, cName(fromName), toDir, cName(toName, 1)), "renameat", display);
}

export function unlinkAt(dirfd: number, name: Uint8Array, flags: number, display: Uint8Array): void {
  checked(libc().unlinkat(dirfd, cName(name), flags), flags & AT_REMOVEDIR ? "rmdir" : "unlinkat", display);
}

/** lchown of `name` in dirfd, or fchown of dirfd itself when `name` is null. */
export function chownAt(dirfd: number, name: Uint8Array | null, uid: number, gid: number, display: Uint8Array): void {
  if (name === null) checked(libc().fchown(dirfd, uid, gid), "fchown", display);
  else checked(libc().fchownat(dirfd, cName(name), uid, gid, AT_SYMLINK_NOFOLLOW), "fchownat", display);
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
  const times = timespecs(atime, mtime);
  const rc = name === null ? libc().futimens(dirfd, times) : libc().utimensat(dirfd, cName(name), times, AT_SYMLINK_NOFOLLOW);
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
const EMPTY_NAME = Buffer.from("\0");

/** The entry `name` of dirfd (or dirfd itself when null), or undefined when there is none (ENOENT). */
export function statAt(dirfd: number, name: Uint8Array | null, display: Uint8Array): EntryStat | undefined {
  const rc =
    name === null
      ? libc().statx(dirfd, EMPTY_NAME, AT_EMPTY_PATH, STATX_WANTED, statxBytes)
      : libc().statx(dirfd, cName(name), AT_SYMLINK_NOFOLLOW, STATX_WANTED, statxBytes);
  if (rc !== 0) {
    // no Error (and its stack) for the answer "nothing there", which callers ask for often, and no
    // table of errno names (node:os's constants, slow to build) to recognise it
    if (lastErrno() === ENOENT) return undefined;
    throw libcError("statx", display);
  }
  const b = statxView;
  return {
    mode: b.getUint16(28, true),
    ino: b.getBigUint64(32, true),
    dev: (BigInt(b.getUint32(136, true)) << 32n) | BigInt(b.getUint32(140, true)),
  };
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
