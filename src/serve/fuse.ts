import os from "node:os";
import { type FuseEnd, type FuseFileSystem, escapeFuseOption, runFuse } from "../../native/fuse.ts";
import { SEEK_DATA, SEEK_HOLE } from "../../native/libc-file.ts";
import type { Volume, WritableVolume } from "../volume/volume.ts";

const { ENOENT, ENOTDIR, EROFS, EPERM, ENXIO, EINVAL, EFBIG } = os.constants.errno;
const O_RDONLY = 0;
/** NAME_MAX of Linux */
const NAME_MAX = 255;

export interface VolumeMountOptions {
  /** the file's name in the mount */
  name: string;
  /** what the mount is named in /proc/mounts (the image's path) */
  source: string;
  /** the file's modification time */
  mtimeMs: number;
  /** the same volume taking writes (an overlay); absent: read-only */
  writable?: WritableVolume;
  /** let other users than the one mounting see it (root, or user_allow_other in /etc/fuse.conf) */
  allowOther: boolean;
  onMounted(): void;
  /** a read or write that failed: the caller gets EIO, the mount goes on */
  onReadError(error: unknown): void;
}

/** A volume as one file `/name` in a directory of its own, read-only unless `writable` is given. */
export function volumeFileSystem(volume: Volume, name: string, mtimeMs: number, writable?: WritableVolume): FuseFileSystem {
  const { size, blockSize } = volume;
  const source = writable ?? volume;
  const filePath = `/${name}`;
  const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const filePermissions = writable ? 0o644 : 0o444;
  return {
    getattr(path) {
      if (path === "/") return { kind: "directory", permissions: 0o555, size: 0, blockSize, mtimeMs, ...owner };
      if (path === filePath) return { kind: "file", permissions: filePermissions, size, blockSize, mtimeMs, ...owner };
      return -ENOENT;
    },
    readdir(path) {
      if (path === "/") return [".", "..", name];
      return path === filePath ? -ENOTDIR : -ENOENT;
    },
    open(path, accessMode) {
      if (path !== filePath) return -ENOENT;
      return accessMode === O_RDONLY || writable ? 0 : -EROFS;
    },
    read(path, offset, length) {
      if (path !== filePath) return -ENOENT;
      const end = Math.min(size, offset + length);
      return end > offset ? source.read(offset, end - offset) : new Uint8Array(0);
    },
    write(path, offset, data) {
      if (path !== filePath) return -ENOENT;
      if (!writable) return -EROFS;
      // the volume has a fixed size: a write past its end is refused as on a block device
      if (offset + data.length > size) return offset >= size ? -EFBIG : writeAll(writable, offset, data.subarray(0, size - offset));
      return writeAll(writable, offset, data);
    },
    truncate(path, newSize) {
      if (path !== filePath) return -ENOENT;
      if (!writable) return -EROFS;
      return newSize === size ? 0 : -EPERM;
    },
    fsync(path) {
      if (path !== filePath) return -ENOENT;
      writable?.flush();
      return 0;
    },
    seek(path, offset, whence) {
      if (path !== filePath) return -ENOENT;
      if (whence !== SEEK_DATA && whence !== SEEK_HOLE) return -EINVAL;
      if (offset < 0 || offset >= size) return -ENXIO;
      for (const extent of source.extents(offset, size - offset)) {
        if (extent.data === (whence === SEEK_DATA)) return Math.max(offset, extent.offset);
      }
      // the end of the file is a hole; past the last data there is none
      return whence === SEEK_HOLE ? size : -ENXIO;
    },
    statfs() {
      return { blockSize, blocks: Math.ceil(size / blockSize), files: 1, nameMax: NAME_MAX, readOnly: !writable };
    },
  };
}

function writeAll(writable: WritableVolume, offset: number, data: Uint8Array): number {
  writable.write(offset, data);
  return data.length;
}

/** Mount the volume at `mountpoint` and serve it until unmounted or signalled. */
export function mountVolume(volume: Volume, mountpoint: string, opts: VolumeMountOptions): FuseEnd {
  const options = [
    // the kernel checks the modes (0444 or 0644 file, 0555 directory), which matters with allow_other
    "default_permissions",
    // nothing but this process changes the volume: the page cache may keep what it read
    "kernel_cache",
    `fsname=${escapeFuseOption(opts.source)}`,
    "subtype=imgtool",
  ];
  if (!opts.writable) options.unshift("ro");
  if (opts.allowOther) options.push("allow_other");
  return runFuse(mountpoint, volumeFileSystem(volume, opts.name, opts.mtimeMs, opts.writable), {
    options,
    onMounted: opts.onMounted,
    onCallbackError: opts.onReadError,
  });
}
