// libc through bun:ffi: the binding every native/libc-*.ts module calls through, the errors of a
// failed call, C strings, and the open flags and file types they share. The calls themselves live by
// family: libc-at.ts (entries by name: the *at calls relative to a directory fd, xattrs, links, renames),
// libc-file.ts (an open descriptor: reads, holes, fallocate, writeback, pipes, locks, devices),
// libc-thread.ts (sockets served on a thread, thread priority, signal actions).
import { FFIType, read } from "bun:ffi";
import { bindOnFirstUse } from "./ffi.ts";
import os from "node:os";
import { printable } from "../src/errors.ts";

// linux/fcntl.h, sys/stat.h
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
/** open(2) flag: an unnamed file in the given directory, freed when closed unless linked (linux/fcntl.h) */
export const O_TMPFILE = 0o20200000;
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFIFO = 0o010000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
// asm-generic/errno-base.h
export const ENOENT = 2;
export const EINTR = 4;

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
    isatty: { args: [FFIType.i32], returns: FFIType.i32 },
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

let errnoNames: Map<number, string> | undefined;
/** errno number -> name, built when a call first fails (os.constants costs a start-up a few ms) */
function errnoText(errno: number): string {
  errnoNames ??= new Map(Object.entries(os.constants.errno).map(([name, n]) => [n, name]));
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

/** An Error like node's for a failed libc call, with `code` = the errno's name. */
export function libcError(call: string, target: Uint8Array): NodeJS.ErrnoException {
  const errno = lastErrno();
  const code = errnoText(errno);
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

/** The errno the last failed call left. */
export function lastErrno(): number {
  return read.i32(libc().__errno_location()!, 0);
}

/** The name of the errno the last failed call left (e.g. "ENOSYS"). */
export function errnoName(): string {
  return errnoText(lastErrno());
}
