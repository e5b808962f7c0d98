// libfuse3's high-level API through bun:ffi: a read-only file system whose callbacks are JS
// functions. The loop is single-threaded and runs inside one blocking FFI call, so every callback
// comes on the JS thread, synchronously, while that call is under way.
import { CFunction, FFIType, JSCallback, type Pointer, ptr, toArrayBuffer } from "bun:ffi";
import os from "node:os";
import { type CType, LazyLibrary, type StructLayout, cstr, readCString, structLayout } from "./ffi.ts";
import { defaultSignalActions } from "./libc-thread.ts";

const fuse3 = new LazyLibrary("libfuse3.so.3", "libfuse3-3", {
  // the default version of the symbol is fuse_new_31: (args, op, op_size, private_data)
  fuse_new: { args: [FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.ptr], returns: FFIType.ptr },
  fuse_mount: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  fuse_loop: { args: [FFIType.ptr], returns: FFIType.i32 },
  fuse_unmount: { args: [FFIType.ptr], returns: FFIType.void },
  fuse_destroy: { args: [FFIType.ptr], returns: FFIType.void },
  fuse_get_session: { args: [FFIType.ptr], returns: FFIType.ptr },
  fuse_set_signal_handlers: { args: [FFIType.ptr], returns: FFIType.i32 },
  fuse_remove_signal_handlers: { args: [FFIType.ptr], returns: FFIType.void },
  fuse_opt_free_args: { args: [FFIType.ptr], returns: FFIType.void },
});

// struct fuse_operations of fuse3/fuse.h (libfuse 3.14): 42 function pointers in this order, 336 bytes
const OPERATIONS = structLayout(
  Object.fromEntries(
    [
      "getattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "chmod", "chown",
      "truncate", "open", "read", "write", "statfs", "flush", "release", "fsync", "setxattr", "getxattr",
      "listxattr", "removexattr", "opendir", "readdir", "releasedir", "fsyncdir", "init", "destroy", "access",
      "create", "lock", "utimens", "bmap", "ioctl", "poll", "write_buf", "read_buf", "flock", "fallocate",
      "copy_file_range", "lseek",
    ].map((name) => [name, "ptr" as const]),
  ),
);

// struct fuse_args of fuse3/fuse_opt.h
const ARGS = structLayout({ argc: "int", argv: "ptr", allocated: "int" });

// struct stat of glibc on x86_64 (bits/struct_stat.h)
const STAT_FIELDS = {
  st_dev: "u64", st_ino: "u64", st_nlink: "u64", st_mode: "u32", st_uid: "u32", st_gid: "u32", pad0: "u32",
  st_rdev: "u64", st_size: "u64", st_blksize: "u64", st_blocks: "u64",
  st_atime: "u64", st_atime_nsec: "u64", st_mtime: "u64", st_mtime_nsec: "u64", st_ctime: "u64", st_ctime_nsec: "u64",
  reserved: ["u64", 3],
} as const;
const STAT = structLayout(STAT_FIELDS);

// struct statvfs of glibc on x86_64 (bits/statvfs.h)
const STATVFS_FIELDS = {
  f_bsize: "ulong", f_frsize: "ulong", f_blocks: "u64", f_bfree: "u64", f_bavail: "u64", f_files: "u64",
  f_ffree: "u64", f_favail: "u64", f_fsid: "ulong", f_flag: "ulong", f_namemax: "ulong", spare: ["int", 6],
} as const;
const STATVFS = structLayout(STATVFS_FIELDS);
const ST_RDONLY = 1;

// struct fuse_file_info of fuse3/fuse_common.h: `int flags` comes first
const FILE_INFO_FLAGS_OFFSET = 0;
const O_ACCMODE = 3;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const { EIO, EROFS } = os.constants.errno;

/** What getattr reports; the binding fills struct stat from it. */
export interface FuseAttributes {
  kind: "directory" | "file";
  /** permission bits, e.g. 0o444 */
  permissions: number;
  size: number;
  /** preferred I/O size */
  blockSize: number;
  uid: number;
  gid: number;
  mtimeMs: number;
}

export interface FuseStatfs {
  blockSize: number;
  blocks: number;
  files: number;
  nameMax: number;
  readOnly: boolean;
}

/**
 * A read-only file system in JS terms. Paths are absolute within the mount ("/", "/name"); a
 * negative number is an errno to return (-ENOENT).
 */
export interface FuseFileSystem {
  getattr(path: string): FuseAttributes | number;
  /** the names in a directory, "." and ".." included */
  readdir(path: string): string[] | number;
  /** `accessMode` is O_RDONLY, O_WRONLY or O_RDWR; 0 to allow */
  open(path: string, accessMode: number): number;
  /** up to `length` bytes at `offset`, fewer (or none) at the end of the file */
  read(path: string, offset: number, length: number): Uint8Array | number;
  statfs(): FuseStatfs;
  /** bytes written (all of `data`), or -errno; absent: EROFS */
  write?(path: string, offset: number, data: Uint8Array): number;
  /** a change of size: 0 or -errno; absent: EROFS */
  truncate?(path: string, size: number): number;
  /** make what was written durable: 0 or -errno */
  fsync?(path: string): number;
  /** SEEK_DATA / SEEK_HOLE: the offset found, or -errno (-ENXIO past the last data) */
  seek?(path: string, offset: number, whence: number): number;
}

export interface FuseMountOptions {
  /** `-o` options for fuse_new: mount options ("ro", "fsname=...") and libfuse's own ("kernel_cache") */
  options: string[];
  /** called once the kernel has the mount, before the first request is served */
  onMounted(): void;
  /** an exception thrown by a callback, which answers EIO */
  onCallbackError(error: unknown): void;
}

/** How the loop ended. */
export type FuseEnd = { by: "unmount" } | { by: "signal"; signal: number };

/** A comma or backslash inside a `-o` value is taken literally only when escaped. */
export function escapeFuseOption(value: string): string {
  return value.replace(/[\\,]/g, (c) => `\\${c}`);
}

/** What to install for FUSE when libfuse3 is missing; undefined when it is there. */
export function fuseMissing(): string | undefined {
  return fuse3.tryLoad() ? undefined : `FUSE needs ${fuse3.soname}, which is not installed (apt-get install ${fuse3.aptPackage} fuse3)`;
}

/**
 * Mount `fs` at `mountpoint` and serve it until it is unmounted (fusermount3 -u) or SIGINT,
 * SIGTERM or SIGHUP arrives (libfuse's handlers, installed before mounting, end the loop), then
 * unmount. Blocks the JS thread throughout.
 */
export function runFuse(mountpoint: string, fs: FuseFileSystem, opts: FuseMountOptions): FuseEnd {
  const lib = fuse3.tryLoad();
  if (!lib) throw new Error(fuseMissing());
  const callbacks = operationCallbacks(fs, opts.onCallbackError);
  const operations = new BigUint64Array(OPERATIONS.size / 8);
  for (const [name, callback] of Object.entries(callbacks)) operations[OPERATIONS.offset[name]! / 8] = BigInt(callback.ptr!);

  // fuse_new parses argv (argv[0] is the program name) into copies of its own, then
  // fuse_opt_free_args frees those
  const argvStrings = ["imgtool", ...opts.options.flatMap((o) => ["-o", o])].map(cstr);
  const argv = new BigUint64Array(argvStrings.map((s) => BigInt(ptr(s))));
  const args = new BigUint64Array(ARGS.size / 8);
  const argsView = new DataView(args.buffer);
  argsView.setInt32(ARGS.offset.argc, argvStrings.length, true);
  argsView.setBigUint64(ARGS.offset.argv, BigInt(ptr(argv)), true);

  try {
    const fuse = lib.fuse_new(args, operations, OPERATIONS.size, null);
    lib.fuse_opt_free_args(args);
    if (!fuse) throw new Error("libfuse refused the options (its message is above)");
    const session = lib.fuse_get_session(fuse);
    // libfuse installs its handlers only where the action is the default; on a terminal Bun has
    // its own for SIGINT, which would kill the process and leave a dead mount behind
    const { SIGINT, SIGTERM, SIGHUP } = os.constants.signals;
    const restoreSignals = defaultSignalActions([SIGINT, SIGTERM, SIGHUP]);
    try {
      if (lib.fuse_set_signal_handlers(session) !== 0) throw new Error("libfuse could not install its signal handlers");
      try {
        if (lib.fuse_mount(fuse, cstr(mountpoint)) !== 0) throw new Error(`could not mount on ${mountpoint} (libfuse's message is above)`);
        try {
          opts.onMounted();
          const rc = lib.fuse_loop(fuse);
          if (rc < 0) throw new Error(`the FUSE loop failed: ${errnoName(-rc)}`);
          return rc > 0 ? { by: "signal", signal: rc } : { by: "unmount" };
        } finally {
          lib.fuse_unmount(fuse);
        }
      } finally {
        lib.fuse_remove_signal_handlers(session);
      }
    } finally {
      restoreSignals();
      lib.fuse_destroy(fuse);
    }
  } finally {
    for (const callback of Object.values(callbacks)) callback.close();
  }
}

function errnoName(errno: number): string {
  return Object.entries(os.constants.errno).find(([, n]) => n === errno)?.[0] ?? `errno ${errno}`;
}

/** Wraps an operation so that what it throws goes to onError and the kernel gets EIO. */
function guardedBy(onError: (error: unknown) => void) {
  return <A extends unknown[]>(body: (...a: A) => number) =>
    (...a: A): number => {
      try {
        return body(...a);
      } catch (e) {
        onError(e);
        return -EIO;
      }
    };
}

/** The JSCallbacks of the operations implemented; the others stay NULL (ENOSYS). */
function operationCallbacks(fs: FuseFileSystem, onError: (error: unknown) => void): Record<string, JSCallback> {
  const callbacks = readCallbacks(fs, onError);
  const guarded = guardedBy(onError);
  callbacks.write = new JSCallback(
    guarded((path: Pointer, from: Pointer, size: number | bigint, offset: number | bigint) => {
      if (!fs.write) return -EROFS;
      const n = Number(size);
      return fs.write(readCString(path), Number(offset), n > 0 ? new Uint8Array(toArrayBuffer(from, 0, n)) : new Uint8Array(0));
    }),
    { args: [FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.i64, FFIType.ptr], returns: FFIType.i32 },
  );
  callbacks.truncate = new JSCallback(
    guarded((path: Pointer, size: number | bigint) => (fs.truncate ? fs.truncate(readCString(path), Number(size)) : -EROFS)),
    { args: [FFIType.ptr, FFIType.i64, FFIType.ptr], returns: FFIType.i32 },
  );
  callbacks.fsync = new JSCallback(
    guarded((path: Pointer) => (fs.fsync ? fs.fsync(readCString(path)) : 0)),
    { args: [FFIType.ptr, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  );
  if (fs.seek) {
    const seek = fs.seek.bind(fs);
    callbacks.lseek = new JSCallback(
      guarded((path: Pointer, offset: number | bigint, whence: number) => seek(readCString(path), Number(offset), whence)),
      { args: [FFIType.ptr, FFIType.i64, FFIType.i32, FFIType.ptr], returns: FFIType.i64 },
    );
  }
  return callbacks;
}

function readCallbacks(fs: FuseFileSystem, onError: (error: unknown) => void): Record<string, JSCallback> {
  const guarded = guardedBy(onError);
  const fillers = new Map<number, ReturnType<typeof CFunction>>();
  const filler = (address: number) => {
    let f = fillers.get(address);
    if (!f) {
      // fuse_fill_dir_t: (void *buf, const char *name, const struct stat *st, off_t off, enum fuse_fill_dir_flags)
      f = CFunction({ ptr: address as Pointer, args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i64, FFIType.u32], returns: FFIType.i32 });
      fillers.set(address, f);
    }
    return f;
  };
  return {
    getattr: new JSCallback(
      guarded((path: Pointer, stat: Pointer) => {
        const attributes = fs.getattr(readCString(path));
        if (typeof attributes === "number") return attributes;
        writeStat(stat, attributes);
        return 0;
      }),
      { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    ),
    readdir: new JSCallback(
      guarded((path: Pointer, buf: Pointer, fill: Pointer) => {
        const names = fs.readdir(readCString(path));
        if (typeof names === "number") return names;
        const call = filler(fill);
        // a full buffer (filler returns 1) cannot happen with a handful of names and offset 0
        for (const name of names) if (call(buf, cstr(name), null, 0, 0) !== 0) return -EIO;
        return 0;
      }),
      { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i64, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    ),
    open: new JSCallback(
      guarded((path: Pointer, fileInfo: Pointer) => {
        const flags = new DataView(toArrayBuffer(fileInfo, FILE_INFO_FLAGS_OFFSET, 4)).getInt32(0, true);
        return fs.open(readCString(path), flags & O_ACCMODE);
      }),
      { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    ),
    read: new JSCallback(
      guarded((path: Pointer, into: Pointer, size: number | bigint, offset: number | bigint) => {
        const data = fs.read(readCString(path), Number(offset), Number(size));
        if (typeof data === "number") return data;
        if (data.length > 0) new Uint8Array(toArrayBuffer(into, 0, data.length)).set(data);
        return data.length;
      }),
      { args: [FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.i64, FFIType.ptr], returns: FFIType.i32 },
    ),
    statfs: new JSCallback(
      guarded((_path: Pointer, statvfs: Pointer) => {
        const s = fs.statfs();
        writeStruct(statvfs, STATVFS_FIELDS, STATVFS, {
          f_bsize: s.blockSize,
          f_frsize: s.blockSize,
          f_blocks: s.blocks,
          f_files: s.files,
          f_flag: s.readOnly ? ST_RDONLY : 0,
          f_namemax: s.nameMax,
        });
        return 0;
      }),
      { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    ),
  };
}

function writeStat(stat: Pointer, a: FuseAttributes): void {
  const seconds = Math.floor(a.mtimeMs / 1000);
  const nanoseconds = Math.round((a.mtimeMs - seconds * 1000) * 1e6);
  const time = { sec: seconds, nsec: nanoseconds };
  writeStruct(stat, STAT_FIELDS, STAT, {
    st_mode: (a.kind === "directory" ? S_IFDIR : S_IFREG) | a.permissions,
    st_nlink: a.kind === "directory" ? 2 : 1,
    st_uid: a.uid,
    st_gid: a.gid,
    st_size: a.size,
    st_blksize: a.blockSize,
    st_blocks: Math.ceil(a.size / 512),
    st_atime: time.sec,
    st_atime_nsec: time.nsec,
    st_mtime: time.sec,
    st_mtime_nsec: time.nsec,
    st_ctime: time.sec,
    st_ctime_nsec: time.nsec,
  });
}

const FOUR_BYTE_TYPES = new Set<CType>(["u32", "i32", "uint", "int"]);

/** Zero a struct at a native address and set the given scalar fields (non-negative, below 2^53). */
function writeStruct<F extends string>(
  address: Pointer,
  fields: Record<F, CType | readonly [CType, number]>,
  layout: StructLayout<F>,
  values: Partial<Record<F, number>>,
): void {
  const bytes = new Uint8Array(toArrayBuffer(address, 0, layout.size));
  bytes.fill(0);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  for (const [field, value] of Object.entries(values) as [F, number][]) {
    const o = layout.offset[field];
    view.setUint32(o, value >>> 0, true);
    if (!FOUR_BYTE_TYPES.has(fields[field] as CType)) view.setUint32(o + 4, Math.floor(value / 2 ** 32), true);
  }
}
