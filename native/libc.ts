import { dlopen, FFIType } from "bun:ffi";

// linux/falloc.h, linux/fs.h (sync_file_range), linux/fcntl.h (F_SETPIPE_SZ)
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const SYNC_FILE_RANGE_WAIT_BEFORE = 1;
const SYNC_FILE_RANGE_WRITE = 2;
const F_SETPIPE_SZ = 1031;

let libc: ReturnType<typeof load> | undefined;
function load() {
  return dlopen("libc.so.6", {
    fallocate: { args: [FFIType.i32, FFIType.i32, FFIType.i64, FFIType.i64], returns: FFIType.i32 },
    sync_file_range: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.u32], returns: FFIType.i32 },
    fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  });
}

/** Deallocate [offset, offset+length) of a regular file, keeping its size; false where the file system cannot. */
export function punchHole(fd: number, offset: number, length: number): boolean {
  libc ??= load();
  return libc.symbols.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0;
}

/**
 * Start writeback of [offset, offset+length) now, after waiting for any writeback already running
 * there: the final fsync then has little left to do, and dirty pages stay bounded.
 */
export function startWriteback(fd: number, offset: number, length: number): void {
  libc ??= load();
  libc.symbols.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE);
}

/** Ask for a larger pipe buffer (fewer, larger reads); harmless where fd is not a pipe. */
export function growPipe(fd: number, bytes: number): void {
  libc ??= load();
  libc.symbols.fcntl(fd, F_SETPIPE_SZ, bytes);
}
