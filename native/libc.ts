import { dlopen, FFIType } from "bun:ffi";

// linux/falloc.h
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;

let libc: ReturnType<typeof load> | undefined;
function load() {
  return dlopen("libc.so.6", {
    fallocate: { args: [FFIType.i32, FFIType.i32, FFIType.i64, FFIType.i64], returns: FFIType.i32 },
  });
}

/** Deallocate [offset, offset+length) of a regular file, keeping its size; false where the file system cannot. */
export function punchHole(fd: number, offset: number, length: number): boolean {
  libc ??= load();
  return libc.symbols.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0;
}
