import fs from "node:fs";
import path from "node:path";
import { defineCommand } from "citty";
import { UsageError } from "../errors.ts";
import { openImage } from "../formats/detect.ts";
import type { Image } from "../formats/image.ts";
import { humanSize } from "../formats/units.ts";
import { mountVolume } from "../serve/fuse.ts";
import { diskInputOf, partitionArg, diskArg } from "./disk-input.ts";
import { mountDisk } from "./disk-serve.ts";
import { BUILD_SEEK_INDEX, guard, refuseWithoutRandomAccess } from "./run.ts";

export const mountCommand = defineCommand({
  meta: { name: "mount", description: "Show the restored volume as one read-only file in a FUSE mount, without restoring it" },
  args: {
    image: { type: "positional", description: "image file or any piece of a split set (a compressed one is indexed on first use)", required: true },
    mountpoint: { type: "positional", description: "an existing directory", required: true },
    name: { type: "string", description: "the file's name in the mount (default: the image's name plus .raw)" },
    "allow-other": { type: "boolean", description: "let other users read it too (root, or user_allow_other in /etc/fuse.conf)" },
    partition: partitionArg,
    disk: diskArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      if (args.name !== undefined) checkFileName(args.name);
      checkMountpoint(args.mountpoint);
      const disk = diskInputOf(args.image, args.partition);
      if (disk) return mountDisk(disk, args);
      const image = openImage(args.image, BUILD_SEEK_INDEX);
      try {
        refuseWithoutRandomAccess(image, args.image, "mount");
        // builds the block index now, so that a damaged image fails before anything is mounted
        image.read!(0, 0);
        const name = args.name ?? defaultFileName(image);
        const mountpoint = path.resolve(args.mountpoint);
        mountVolume(image, mountpoint, {
          name,
          allowOther: args["allow-other"] === true,
          // fs.writeSync: the event loop does not run again until the mount is gone
          onMounted: () => fs.writeSync(1, `${mountedLine(mountpoint, name, image.info.deviceSize)}\n`),
          onReadError: (e) => fs.writeSync(2, `imgtool: reading ${name}: ${(e as Error).message} (the reader got EIO)\n`),
        });
      } finally {
        image.close();
      }
    }),
});

function checkFileName(name: string): void {
  if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0") || Buffer.byteLength(name) > 255) {
    throw new UsageError(`--name: not a file name: ${JSON.stringify(name)}`);
  }
}

function checkMountpoint(mountpoint: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(mountpoint);
  } catch (e) {
    throw new UsageError(`${mountpoint}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such directory; create it first" : (e as Error).message}`);
  }
  if (!stat.isDirectory()) throw new UsageError(`${mountpoint}: not a directory`);
}

/** The image's file name plus .raw, without the suffix that numbers a piece (.aa of a split set, .000 of partimage). */
function defaultFileName(image: Image): string {
  const { format, pieces } = image.info;
  const first = path.basename(pieces[0]!);
  const pieceSuffix = format === "partimage" ? /\.\d{3}$/ : pieces.length > 1 ? /\.[a-z]+$/ : undefined;
  return `${pieceSuffix ? first.replace(pieceSuffix, "") : first}.raw`;
}

/**
 * Commands that read the volume at any offset (serve, mount) need an uncompressed regular file:
 * one clear line saying what to do instead.
 */

export function mountedLine(mountpoint: string, name: string, size: number): string {
  const file = path.join(mountpoint, name);
  return `mounted ${file} (${humanSize(size)}, read-only) until unmounted; unmount with: fusermount3 -u ${mountpoint} (or Ctrl-C here)`;
}
