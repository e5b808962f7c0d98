// libc calls on an open descriptor: reads, holes and fallocate, writeback control, pipe size and
// blocking mode, locks, block device sizes.
import { ptr } from "bun:ffi";
import { EINTR, lastErrno, libc, libcError, O_NONBLOCK } from "./libc.ts";

// linux/fs.h, linux/falloc.h, unistd.h, fcntl.h, poll.h
export const FICLONE = 0x40049409;
export const SEEK_DATA = 3, SEEK_HOLE = 4;
export const FALLOC_FL_KEEP_SIZE = 0x01, FALLOC_FL_PUNCH_HOLE = 0x02;
const SYNC_FILE_RANGE_WAIT_BEFORE = 1, SYNC_FILE_RANGE_WRITE = 2;
const F_GETFL = 3, F_SETFL = 4, F_SETPIPE_SZ = 1031;
/** _IOR(0x12, 114, size_t) */
const BLKGETSIZE64 = 0x80081272;
const POLLOUT = 4;

/** Close a descriptor opened through libc (openAt, openat2, dupFd). */
export function closeFd(fd: number): void {
  libc().close(fd);
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
const LOCK_EX = 2;
const LOCK_NB = 4;

/** An exclusive flock(2) on an open file, not waiting: false when another holder has it. */
export function lockFile(fd: number): boolean {
  return libc().flock(fd, LOCK_EX | LOCK_NB) === 0;
}

/**
 * Whether fd is a terminal. process.stdout.isTTY would answer too, but the first touch of
 * process.stdout or stderr loads node's stream modules (about 10 ms of every start-up).
 */
export function isTerminal(fd: number): boolean {
  return libc().isatty(fd) === 1;
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
    if (lastErrno() !== EINTR) throw libcError("pread", display);
  }
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
