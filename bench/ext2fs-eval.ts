// bun bench/ext2fs-eval.ts IMG: the measurement behind choosing ext4.ts over libext2fs (issue 11).
// Reads every file of the ext2/3/4 file system inside IMG twice, in this process, through the same
// Volume: with libext2fs (libext2fs.so.2 over bun:ffi, an io_manager whose read_blk64 is a
// JSCallback reading the Volume; layout of struct_io_manager/struct_io_channel from e2fsprogs'
// lib/ext2fs/ext2_io.h) and with src/fs/ext4.ts. Prints time, volume bytes read, and whether every
// file's sha256 agrees.
import { FFIType, JSCallback, type Pointer, dlopen, ptr, toArrayBuffer } from "bun:ffi";
import { openImage } from "../src/formats/detect.ts";
import type { FileSystem, FsNode } from "../src/fs/filesystem.ts";
import { openFileSystem } from "../src/fs/open.ts";
import { type Volume, imageVolume } from "../src/volume/volume.ts";

const EXT2_ET_MAGIC_IO_CHANNEL = 2133571333;
const EXT2_ET_MAGIC_IO_MANAGER = 2133571335;

const lib = dlopen("libext2fs.so.2", {
  ext2fs_open2: { args: [FFIType.cstring, FFIType.ptr, FFIType.i32, FFIType.i32, FFIType.u32, FFIType.ptr, FFIType.ptr], returns: FFIType.i64 },
  ext2fs_close2: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i64 },
  ext2fs_dir_iterate2: { args: [FFIType.ptr, FFIType.u32, FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i64 },
  ext2fs_read_inode: { args: [FFIType.ptr, FFIType.u32, FFIType.ptr], returns: FFIType.i64 },
  ext2fs_file_open: { args: [FFIType.ptr, FFIType.u32, FFIType.i32, FFIType.ptr], returns: FFIType.i64 },
  ext2fs_file_read: { args: [FFIType.ptr, FFIType.ptr, FFIType.u32, FFIType.ptr], returns: FFIType.i64 },
  ext2fs_file_close: { args: [FFIType.ptr], returns: FFIType.i64 },
  ext2fs_file_get_lsize: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i64 },
}).symbols;

function words(n: number): { bytes: Uint8Array; view: DataView; address: Pointer } {
  const bytes = new Uint8Array(new Float64Array(n).buffer);
  return { bytes, view: new DataView(bytes.buffer), address: ptr(bytes) };
}

/** libext2fs over a Volume: an io_manager of JSCallbacks. */
function libext2fsTree(volume: Volume): { files: Map<string, string>; seconds: number; volumeBytes: number } {
  let volumeBytes = 0;
  let blockSize = 1024;
  const channel = words(32); // struct_io_channel: 0 magic, 8 manager, 16 name, 24 block_size, 32/40 error hooks, 48 refcount, 52 flags, 56 reserved[14], 168 private, 176 app, 184 align
  const manager = words(32); // struct_io_manager: magic, name, then 14 function pointers, reserved[14]
  const name = Buffer.from("imgtool-volume\0");
  const callbacks: JSCallback[] = [];
  const fn = (slot: number, cb: JSCallback) => {
    callbacks.push(cb);
    manager.view.setBigUint64(slot * 8, BigInt(cb.ptr!), true);
  };
  const ok = () => 0;
  const readBlocks = (_chan: Pointer, block: number, count: number, data: Pointer) => {
    const bytes = count < 0 ? -count : count * blockSize;
    const src = volume.read(block * blockSize, Math.min(bytes, Math.max(0, volume.size - block * blockSize)));
    const dst = new Uint8Array(toArrayBuffer(data, 0, bytes));
    dst.set(src);
    if (src.length < bytes) dst.fill(0, src.length);
    volumeBytes += src.length;
    return 0;
  };
  manager.view.setBigInt64(0, BigInt(EXT2_ET_MAGIC_IO_MANAGER), true);
  manager.view.setBigUint64(8, BigInt(ptr(name)), true);
  fn(2, new JSCallback((_n: Pointer, _flags: number, out: Pointer) => {
    new DataView(toArrayBuffer(out, 0, 8)).setBigUint64(0, BigInt(channel.address), true);
    return 0;
  }, { args: [FFIType.ptr, FFIType.i32, FFIType.ptr], returns: FFIType.i64 }));
  fn(3, new JSCallback(ok, { args: [FFIType.ptr], returns: FFIType.i64 })); // close
  fn(4, new JSCallback((_c: Pointer, size: number) => {
    blockSize = size;
    channel.view.setInt32(24, size, true);
    return 0;
  }, { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i64 }));
  fn(5, new JSCallback((c: Pointer, b: number, n: number, d: Pointer) => readBlocks(c, Number(b), n, d), { args: [FFIType.ptr, FFIType.u64_fast, FFIType.i32, FFIType.ptr], returns: FFIType.i64 }));
  fn(7, new JSCallback(ok, { args: [FFIType.ptr], returns: FFIType.i64 })); // flush
  fn(11, new JSCallback((c: Pointer, b: number, n: number, d: Pointer) => readBlocks(c, Number(b), n, d), { args: [FFIType.ptr, FFIType.u64_fast, FFIType.i32, FFIType.ptr], returns: FFIType.i64 }));
  channel.view.setBigInt64(0, BigInt(EXT2_ET_MAGIC_IO_CHANNEL), true);
  channel.view.setBigUint64(8, BigInt(manager.address), true);
  channel.view.setBigUint64(16, BigInt(ptr(name)), true);
  channel.view.setInt32(24, 1024, true);
  channel.view.setInt32(48, 1, true);

  const t = performance.now();
  const fsOut = words(1);
  const rc = lib.ext2fs_open2(name, null, 0, 0, 0, manager.address, fsOut.address);
  if (Number(rc) !== 0) throw new Error(`ext2fs_open2: ${rc}`);
  const fsPtr = Number(fsOut.view.getBigUint64(0, true)) as Pointer;
  const files = new Map<string, string>();
  const inode = words(16);
  const fileOut = words(1);
  const got = words(1);
  const buf = new Uint8Array(1 << 20);
  const dirs: [number, string][] = [[2, ""]];
  const decoder = new TextDecoder("latin1" as "utf-8");
  let pending: [number, string][] = [];
  const visit = new JSCallback((_dir: number, _entry: number, dirent: Pointer) => {
    const head = new DataView(toArrayBuffer(dirent, 0, 8));
    const ino = head.getUint32(0, true);
    const nameLen = head.getUint16(6, true) & 0xff;
    const n = decoder.decode(new Uint8Array(toArrayBuffer(dirent, 8, nameLen)));
    if (n !== "." && n !== "..") pending.push([ino, n]);
    return 0;
  }, { args: [FFIType.u32, FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 });
  while (dirs.length) {
    const [dir, path] = dirs.pop()!;
    pending = [];
    lib.ext2fs_dir_iterate2(fsPtr, dir, 0, null, visit.ptr!, null);
    for (const [ino, n] of pending) {
      lib.ext2fs_read_inode(fsPtr, ino, inode.address);
      const mode = inode.view.getUint16(0, true) & 0o170000;
      const p = `${path}/${n}`;
      if (mode === 0o040000) dirs.push([ino, p]);
      if (mode !== 0o100000) continue;
      if (Number(lib.ext2fs_file_open(fsPtr, ino, 0, fileOut.address)) !== 0) throw new Error(`ext2fs_file_open ${p}`);
      const file = Number(fileOut.view.getBigUint64(0, true)) as Pointer;
      const h = new Bun.CryptoHasher("sha256");
      for (;;) {
        lib.ext2fs_file_read(file, buf, buf.length, got.address);
        const n2 = got.view.getUint32(0, true);
        if (n2 === 0) break;
        h.update(buf.subarray(0, n2));
      }
      lib.ext2fs_file_close(file);
      files.set(p, h.digest("hex"));
    }
  }
  lib.ext2fs_close2(fsPtr, 0);
  const seconds = (performance.now() - t) / 1000;
  visit.close();
  for (const c of callbacks) c.close();
  return { files, seconds, volumeBytes };
}

function ownTree(volume: Volume): { files: Map<string, string>; seconds: number; volumeBytes: number } {
  let volumeBytes = 0;
  const counting: Volume = { ...volume, read: (o, l) => ((volumeBytes += l), volume.read(o, l)), close: () => {} };
  const t = performance.now();
  const fsys: FileSystem = openFileSystem(counting);
  const files = new Map<string, string>();
  const buf = new Uint8Array(1 << 20);
  const decoder = new TextDecoder("latin1" as "utf-8");
  const walk = (dir: FsNode, path: string) => {
    for (const e of fsys.list(dir)) {
      const p = `${path}/${decoder.decode(e.name)}`;
      if (e.node.kind === "directory") walk(e.node, p);
      if (e.node.kind !== "file") continue;
      const h = new Bun.CryptoHasher("sha256");
      for (let pos = 0; pos < e.node.size; ) {
        const n = fsys.readFile(e.node, pos, buf);
        h.update(buf.subarray(0, n));
        pos += n;
      }
      files.set(p, h.digest("hex"));
    }
  };
  walk(fsys.root(), "");
  return { files, seconds: (performance.now() - t) / 1000, volumeBytes };
}

const image = openImage(process.argv[2]!);
const volume = imageVolume(image);
const own = ownTree(volume);
const ext2fs = libext2fsTree(volume);
const differ = [...own.files].filter(([p, h]) => ext2fs.files.get(p) !== h).map(([p]) => p);
const missing = [...ext2fs.files.keys()].filter((p) => !own.files.has(p));
console.log("| reader | files | seconds | volume bytes read |");
console.log("| --- | --- | --- | --- |");
console.log(`| src/fs/ext4.ts | ${own.files.size} | ${own.seconds.toFixed(2)} | ${own.volumeBytes.toLocaleString("en-US")} |`);
console.log(`| libext2fs ${"(io_manager of JSCallbacks)"} | ${ext2fs.files.size} | ${ext2fs.seconds.toFixed(2)} | ${ext2fs.volumeBytes.toLocaleString("en-US")} |`);
console.log(`files whose content differs: ${differ.length}${differ.length ? ` (${differ.slice(0, 5).join(", ")}${differ.length > 5 ? ", ..." : ""})` : ""}; only libext2fs lists: ${missing.length}`);
image.close();
