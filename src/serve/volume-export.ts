import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { escapeFuseOption, type FuseEnd, type FuseFileSystem, runFuse } from "../../native/fuse.ts";
import { humanSize } from "../formats/units.ts";
import type { Volume } from "../volume/volume.ts";
import type { NbdExport } from "./nbd.ts";

const { ENOENT, ENOTDIR, EROFS } = os.constants.errno;
const O_RDONLY = 0;
const NAME_MAX = 255;

/** Any Volume (a whole disk, one partition) as a read-only NBD export. */
export function volumeExport(volume: Volume, name: string, description: string): NbdExport {
  const bs = volume.blockSize;
  const powerOfTwo = bs > 0 && (bs & (bs - 1)) === 0;
  return {
    name,
    description: `${description}, ${humanSize(volume.size)}, read-only`,
    size: volume.size,
    preferredBlockSize: powerOfTwo ? Math.min(64 << 10, Math.max(512, bs)) : 4096,
    read: (offset, length) => volume.read(offset, length),
  };
}

/** Any Volume as one read-only file `/name` in a directory of its own. */
export function volumeFuseFileSystem(volume: Volume, name: string, mtimeMs: number): FuseFileSystem {
  const filePath = `/${name}`;
  const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const { size, blockSize } = volume;
  return {
    getattr(p) {
      if (p === "/") return { kind: "directory", permissions: 0o555, size: 0, blockSize, mtimeMs, ...owner };
      if (p === filePath) return { kind: "file", permissions: 0o444, size, blockSize, mtimeMs, ...owner };
      return -ENOENT;
    },
    readdir(p) {
      if (p === "/") return [".", "..", name];
      return p === filePath ? -ENOTDIR : -ENOENT;
    },
    open(p, accessMode) {
      if (p !== filePath) return -ENOENT;
      return accessMode === O_RDONLY ? 0 : -EROFS;
    },
    read(p, offset, length) {
      if (p !== filePath) return -ENOENT;
      const end = Math.min(size, offset + length);
      return end > offset ? volume.read(offset, end - offset) : new Uint8Array(0);
    },
    statfs() {
      return { blockSize, blocks: Math.ceil(size / blockSize), files: 1, nameMax: NAME_MAX };
    },
  };
}

/** Mount the volume read-only as `mountpoint/name` until unmounted or signalled. */
export function mountVolumeFile(
  volume: Volume,
  source: string,
  mountpoint: string,
  opts: { name: string; allowOther: boolean; onMounted(): void; onReadError(e: unknown): void },
): FuseEnd {
  const options = ["ro", "default_permissions", "kernel_cache", `fsname=${escapeFuseOption(path.resolve(source))}`, "subtype=imgtool"];
  if (opts.allowOther) options.push("allow_other");
  return runFuse(mountpoint, volumeFuseFileSystem(volume, opts.name, fs.statSync(source).mtimeMs), {
    options,
    onMounted: opts.onMounted,
    onCallbackError: opts.onReadError,
  });
}
