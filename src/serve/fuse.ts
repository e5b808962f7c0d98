import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { type FuseEnd, type FuseFileSystem, escapeFuseOption, runFuse } from "../../native/fuse.ts";
import type { Image } from "../formats/image.ts";

const { ENOENT, ENOTDIR, EROFS } = os.constants.errno;
const O_RDONLY = 0;
/** NAME_MAX of Linux */
const NAME_MAX = 255;

export interface VolumeMountOptions {
  /** the file's name in the mount */
  name: string;
  /** let other users than the one mounting see it (root, or user_allow_other in /etc/fuse.conf) */
  allowOther: boolean;
  onMounted(): void;
  /** a read that failed: the reader gets EIO, the mount goes on */
  onReadError(error: unknown): void;
}

/**
 * The restored volume of an image with random access as one read-only file `/name` in a
 * directory of its own.
 */
export function volumeFileSystem(image: Image, name: string): FuseFileSystem {
  const read = image.read;
  if (!read) throw new Error("volumeFileSystem needs an image with random access");
  const { deviceSize, blockSize } = image.info;
  const filePath = `/${name}`;
  const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const mtimeMs = fs.statSync(image.info.pieces[0]!).mtimeMs;
  return {
    getattr(path) {
      if (path === "/") return { kind: "directory", permissions: 0o555, size: 0, blockSize, mtimeMs, ...owner };
      if (path === filePath) return { kind: "file", permissions: 0o444, size: deviceSize, blockSize, mtimeMs, ...owner };
      return -ENOENT;
    },
    readdir(path) {
      if (path === "/") return [".", "..", name];
      return path === filePath ? -ENOTDIR : -ENOENT;
    },
    open(path, accessMode) {
      if (path !== filePath) return -ENOENT;
      return accessMode === O_RDONLY ? 0 : -EROFS;
    },
    read(path, offset, length) {
      if (path !== filePath) return -ENOENT;
      const end = Math.min(deviceSize, offset + length);
      return end > offset ? read.call(image, offset, end - offset) : new Uint8Array(0);
    },
    statfs() {
      return { blockSize, blocks: Math.ceil(deviceSize / blockSize), files: 1, nameMax: NAME_MAX };
    },
  };
}

/** Mount the volume read-only at `mountpoint` and serve it until unmounted or signalled. */
export function mountVolume(image: Image, mountpoint: string, opts: VolumeMountOptions): FuseEnd {
  const options = [
    "ro",
    // the kernel checks the modes (0444 file, 0555 directory), which matters with allow_other
    "default_permissions",
    // the image does not change under the mount: the page cache may keep what it read
    "kernel_cache",
    `fsname=${escapeFuseOption(path.resolve(image.info.pieces[0]!))}`,
    "subtype=imgtool",
  ];
  if (opts.allowOther) options.push("allow_other");
  return runFuse(mountpoint, volumeFileSystem(image, opts.name), {
    options,
    onMounted: opts.onMounted,
    onCallbackError: opts.onReadError,
  });
}
