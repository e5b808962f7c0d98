// libntfs-3g (ntfs-3g's own library, Debian libntfs-3g89) through bun:ffi, read-only, over a device
// whose reads are JS callbacks. Struct layouts from ntfs-3g 2022.10's include/ntfs-3g/{device,inode,
// attrib,runlist}.h; on-disk records (MFT record, attribute record) from layout.h.
import { FFIType, JSCallback, type Pointer, read, toArrayBuffer } from "bun:ffi";
import { LazyLibrary, cstr, readCString } from "./ffi.ts";
import { lastErrno as errno, libc } from "./libc.ts";

const ntfs3g = new LazyLibrary("libntfs-3g.so.89", "libntfs-3g89", {
  ntfs_device_alloc: { args: [FFIType.ptr, FFIType.i64, FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
  ntfs_device_free: { args: [FFIType.ptr], returns: FFIType.i32 },
  ntfs_device_mount: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.ptr },
  ntfs_umount: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  ntfs_inode_open: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.ptr },
  ntfs_inode_close: { args: [FFIType.ptr], returns: FFIType.i32 },
  ntfs_readdir: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  ntfs_attr_open: { args: [FFIType.ptr, FFIType.u32, FFIType.ptr, FFIType.u32], returns: FFIType.ptr },
  ntfs_attr_close: { args: [FFIType.ptr], returns: FFIType.void },
  ntfs_attr_pread: { args: [FFIType.ptr, FFIType.i64, FFIType.i64, FFIType.ptr], returns: FFIType.i64 },
  ntfs_attr_map_whole_runlist: { args: [FFIType.ptr], returns: FFIType.i32 },
  ntfs_attr_get_search_ctx: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
  ntfs_attr_put_search_ctx: { args: [FFIType.ptr], returns: FFIType.void },
  ntfs_attr_lookup: {
    args: [FFIType.u32, FFIType.ptr, FFIType.u32, FFIType.u32, FFIType.i64, FFIType.ptr, FFIType.u32, FFIType.ptr],
    returns: FFIType.i32,
  },
  ntfs_make_symlink: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.ptr },
  ntfs_log_set_handler: { args: [FFIType.ptr], returns: FFIType.void },
  // libc's, found through the library's own dependencies: what ntfs_make_symlink returns is malloc'd
  free: { args: [FFIType.ptr], returns: FFIType.void },
});

const NTFS_MNT_RDONLY = 0x1;
const NTFS_MNT_FORENSIC = 0x04000000;
const NTFS_MNT_IGNORE_HIBERFILE = 0x20000000;

export const AT_STANDARD_INFORMATION = 0x10;
export const AT_DATA = 0x80;
export const AT_REPARSE_POINT = 0xc0;
export const FILE_ROOT = 5;
/** MFT records below this are the file system's own ($MFT, $LogFile, ..., $Extend) */
export const FILE_FIRST_USER = 16;

// struct _ntfs_inode (inode.h): u64 mft_no; MFT_RECORD *mrec; ...; FILE_ATTR_FLAGS flags at 32;
// s64 data_size at 64; ntfs_time creation, data change, mft change, access at 80..104
const INODE_MREC = 8;
const INODE_FLAGS = 32;
const INODE_TIMES = 80;
// struct _ntfs_attr (attrib.h): runlist_element *rl at 0; ATTR_FLAGS data_flags (u16) at 20;
// s64 allocated_size, data_size, initialized_size, compressed_size at 48..72
const ATTR_RL = 0;
const ATTR_DATA_FLAGS = 20;
const ATTR_DATA_SIZE = 56;
const ATTR_INITIALIZED_SIZE = 64;
// ntfs_attr_search_ctx (attrib.h): MFT_RECORD *mrec; ATTR_RECORD *attr; ...
const SEARCH_CTX_ATTR = 8;
// MFT_RECORD (layout.h): le16 link_count at 0x12, le16 flags at 0x16
const MFT_RECORD_LINK_COUNT = 0x12;
const MFT_RECORD_FLAGS = 0x16;
export const MFT_RECORD_IS_DIRECTORY = 0x2;

/** What ntfs_inode_open gives, read out of its struct and MFT record. */
export interface NtfsInodeFacts {
  mftNo: number;
  /** FILE_ATTR_* of $STANDARD_INFORMATION */
  fileAttributes: number;
  /** MFT_RECORD_* flags */
  recordFlags: number;
  linkCount: number;
  /** 100 ns units since 1601, as bigint: creation, data change, MFT change, access */
  times: [bigint, bigint, bigint, bigint];
}

export interface NtfsAttrFacts {
  dataSize: number;
  initializedSize: number;
  /** ATTR_IS_COMPRESSED 0x1 / ATTR_IS_ENCRYPTED 0x4000 / ATTR_IS_SPARSE 0x8000 */
  dataFlags: number;
  /** [vcn, lcn, clusters] of a non-resident attribute; lcn < 0 is a hole; undefined when resident */
  runs?: [number, number, number][];
}

export interface NtfsDirEntry {
  /** UTF-16LE as stored */
  name: Uint8Array;
  /** FILE_NAME_POSIX 0, WIN32 1, DOS 2, WIN32_AND_DOS 3 */
  nameType: number;
  mftNo: number;
}

/** Reads of the device: fill `into` with the bytes at `offset`; throw on failure. */
export type DeviceRead = (into: Uint8Array, offset: number) => void;

const EIO = 5;
const EROFS = 30;

function setErrno(code: number): void {
  new Int32Array(toArrayBuffer(libc().__errno_location()!, 0, 4))[0] = code;
}

/**
 * One mounted NTFS volume. Every call is synchronous; libntfs-3g calls back into `deviceRead` from
 * inside them, on this thread.
 */
export class NtfsMount {
  private readonly lib: NonNullable<ReturnType<typeof ntfs3g.tryLoad>>;
  private readonly callbacks: JSCallback[] = [];
  private readonly opsBuffer: BigUint64Array;
  private device: Pointer | null = null;
  private vol: Pointer | null = null;
  /** the first failure of a device read, so a NULL from the library can be told apart from damage */
  lastReadError: unknown;
  private readonly unnamed = new Uint16Array(1);

  constructor(
    name: string,
    private readonly deviceRead: DeviceRead,
  ) {
    this.lib = ntfs3g.load({ file: name }, "an NTFS file system");
    this.lib.ntfs_log_set_handler(null);
    const cb = (fn: (...a: any[]) => number | bigint, args: FFIType[], returns: FFIType) => {
      const c = new JSCallback(fn, { args, returns });
      this.callbacks.push(c);
      return BigInt(c.ptr!);
    };
    const { ptr: P, i32, i64, u64 } = FFIType;
    const pread = (buf: Pointer, count: number | bigint, offset: number | bigint): number => {
      const n = Number(count);
      const at = Number(offset);
      try {
        if (n > 0) this.deviceRead(new Uint8Array(toArrayBuffer(buf, 0, n)), at);
        return n;
      } catch (e) {
        this.lastReadError ??= e;
        setErrno(EIO);
        return -1;
      }
    };
    let position = 0;
    // struct ntfs_device_operations (device.h): open, close, seek, read, write, pread, pwrite, sync, stat, ioctl
    this.opsBuffer = new BigUint64Array([
      cb(() => 0, [P, i32], i32),
      cb(() => 0, [P], i32),
      cb((_d: Pointer, offset: number | bigint, whence: number) => {
        if (whence !== 0) {
          setErrno(22);
          return -1;
        }
        position = Number(offset);
        return position;
      }, [P, i64, i32], i64),
      cb((_d: Pointer, buf: Pointer, count: number | bigint) => {
        const n = pread(buf, count, position);
        if (n > 0) position += n;
        return n;
      }, [P, P, i64], i64),
      cb(() => (setErrno(EROFS), -1), [P, P, i64], i64),
      cb((_d: Pointer, buf: Pointer, count: number | bigint, offset: number | bigint) => pread(buf, count, offset), [P, P, i64, i64], i64),
      cb(() => (setErrno(EROFS), -1), [P, P, i64, i64], i64),
      cb(() => 0, [P], i32),
      cb(() => (setErrno(95), -1), [P, P], i32),
      cb(() => (setErrno(25), -1), [P, u64, P], i32),
    ]);
    this.device = this.lib.ntfs_device_alloc(cstr(name), 0, this.opsBuffer, null);
    if (!this.device) throw new Error("ntfs_device_alloc failed");
    this.vol = this.lib.ntfs_device_mount(this.device, NTFS_MNT_RDONLY | NTFS_MNT_FORENSIC | NTFS_MNT_IGNORE_HIBERFILE);
    if (!this.vol) {
      const code = errno();
      this.release();
      throw new NtfsCallError("ntfs_device_mount", code);
    }
  }

  /** What an open inode's struct and MFT record say of it. */
  inodeFacts(ni: Pointer, mftNo: number): NtfsInodeFacts {
    const mrec = read.ptr(ni, INODE_MREC) as Pointer;
    const t = (i: number) => read.i64(ni, INODE_TIMES + 8 * i) as bigint;
    return {
      mftNo,
      fileAttributes: read.u32(ni, INODE_FLAGS),
      recordFlags: read.u16(mrec, MFT_RECORD_FLAGS),
      linkCount: read.u16(mrec, MFT_RECORD_LINK_COUNT),
      times: [BigInt(t(0)), BigInt(t(1)), BigInt(t(2)), BigInt(t(3))],
    };
  }

  withInode<T>(mftNo: number, fn: (ni: Pointer) => T): T {
    const ni = this.lib.ntfs_inode_open(this.vol, BigInt(mftNo));
    if (!ni) throw new NtfsCallError(`ntfs_inode_open(${mftNo})`, errno(), this.lastReadError);
    try {
      return fn(ni);
    } finally {
      this.lib.ntfs_inode_close(ni);
    }
  }

  /** Every name of a directory's index, in index order (DOS names included; the caller filters). */
  readdir(mftNo: number): NtfsDirEntry[] {
    return this.withInode(mftNo, (ni) => {
      const out: NtfsDirEntry[] = [];
      const fill = new JSCallback(
        (_dirent: Pointer, name: Pointer, nameLen: number, nameType: number, _pos: bigint, mref: bigint | number) => {
          out.push({
            name: new Uint8Array(toArrayBuffer(name, 0, nameLen * 2)).slice(),
            nameType,
            mftNo: Number(BigInt(mref) & 0xffffffffffffn),
          });
          return 0;
        },
        { args: [FFIType.ptr, FFIType.ptr, FFIType.i32, FFIType.i32, FFIType.i64, FFIType.u64, FFIType.u32], returns: FFIType.i32 },
      );
      try {
        const pos = new BigInt64Array(1);
        if (this.lib.ntfs_readdir(ni, pos, null, fill.ptr) !== 0) throw new NtfsCallError(`ntfs_readdir(${mftNo})`, errno(), this.lastReadError);
      } finally {
        fill.close();
      }
      return out;
    });
  }

  /** Open an attribute (unnamed when `name` is empty), run fn, close it; undefined when absent. */
  withAttr<T>(ni: Pointer, type: number, name: Uint16Array, fn: (na: Pointer) => T): T | undefined {
    const n = name.length ? name : this.unnamed;
    const na = this.lib.ntfs_attr_open(ni, type, n, name.length);
    if (!na) {
      const code = errno();
      if (code === 2) return undefined;
      throw new NtfsCallError(`ntfs_attr_open(0x${type.toString(16)})`, code, this.lastReadError);
    }
    try {
      return fn(na);
    } finally {
      this.lib.ntfs_attr_close(na);
    }
  }

  attrFacts(na: Pointer, withRuns: boolean): NtfsAttrFacts {
    const facts: NtfsAttrFacts = {
      dataSize: Number(read.i64(na, ATTR_DATA_SIZE)),
      initializedSize: Number(read.i64(na, ATTR_INITIALIZED_SIZE)),
      dataFlags: read.u16(na, ATTR_DATA_FLAGS),
    };
    if (withRuns && this.lib.ntfs_attr_map_whole_runlist(na) === 0) {
      const rl = read.ptr(na, ATTR_RL) as Pointer;
      if (rl) {
        facts.runs = [];
        for (let at = 0; ; at += 24) {
          const length = Number(read.i64(rl, at + 16));
          if (length === 0) break;
          facts.runs.push([Number(read.i64(rl, at)), Number(read.i64(rl, at + 8)), length]);
        }
      }
    }
    return facts;
  }

  /** Bytes of an open attribute at `pos` into `into`; returns how many. */
  pread(na: Pointer, pos: number, into: Uint8Array): number {
    const n = Number(this.lib.ntfs_attr_pread(na, pos, into.length, into));
    if (n < 0) throw new NtfsCallError("ntfs_attr_pread", errno(), this.lastReadError);
    return n;
  }

  /** The names and sizes of an inode's named $DATA attributes (alternate data streams). */
  namedStreams(ni: Pointer): { name: Uint8Array; size: number }[] {
    const ctx = this.lib.ntfs_attr_get_search_ctx(ni, null);
    if (!ctx) throw new NtfsCallError("ntfs_attr_get_search_ctx", errno());
    const out: { name: Uint8Array; size: number }[] = [];
    try {
      while (this.lib.ntfs_attr_lookup(AT_DATA, null, 0, 0, 0, null, 0, ctx) === 0) {
        const a = read.ptr(ctx, SEARCH_CTX_ATTR) as Pointer;
        // ATTR_RECORD (layout.h): u8 non_resident 0x08, u8 name_length 0x09, le16 name_offset 0x0a;
        // resident: le32 value_length 0x10; non-resident: sle64 lowest_vcn 0x10, sle64 data_size 0x30
        const nameLength = read.u8(a, 0x09);
        if (nameLength === 0) continue;
        const nonResident = read.u8(a, 0x08) !== 0;
        if (nonResident && Number(read.i64(a, 0x10)) !== 0) continue;
        const size = nonResident ? Number(read.i64(a, 0x30)) : read.u32(a, 0x10);
        out.push({ name: new Uint8Array(toArrayBuffer(a, read.u16(a, 0x0a), nameLength * 2)).slice(), size });
      }
    } finally {
      this.lib.ntfs_attr_put_search_ctx(ctx);
    }
    return out;
  }

  /** A reparse point's target as ntfs-3g shows it (symlinks and junctions); undefined for other tags. */
  reparseTarget(ni: Pointer, mountPoint: string): string | undefined {
    const p = this.lib.ntfs_make_symlink(ni, cstr(mountPoint));
    if (!p) return undefined;
    try {
      return readCString(p);
    } finally {
      this.lib.free(p);
    }
  }

  close(): void {
    if (this.vol) this.lib.ntfs_umount(this.vol, 1);
    else if (this.device) this.lib.ntfs_device_free(this.device);
    this.vol = null;
    this.device = null;
    this.release();
  }

  private release(): void {
    if (this.vol === null && this.device) this.lib.ntfs_device_free(this.device);
    this.device = null;
    for (const c of this.callbacks) c.close();
    this.callbacks.length = 0;
  }
}

export class NtfsCallError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
    readonly readError?: unknown,
  ) {
    super(readError instanceof Error ? readError.message : `${call} failed (errno ${errno})`);
  }
}
