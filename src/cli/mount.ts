import fs from "node:fs";
import path from "node:path";
import { defineCommand } from "citty";
import { UsageError } from "../errors.ts";
import { humanSize } from "../formats/units.ts";
import { mountVolume } from "../serve/fuse.ts";
import { openOverlay, type OverlayVolume } from "../volume/overlay.ts";
import { diskArg, partitionArg } from "./info-text.ts";
import { openInputVolume } from "../input/input-volume.ts";
import { BUILD_SEEK_INDEX, guard } from "./run.ts";

export const mountCommand = defineCommand({
  meta: { name: "mount", description: "Show the restored volume as one file in a FUSE mount without restoring it: read-only, or writable through an overlay file" },
  args: {
    image: { type: "positional", description: "image file or any piece of a split set (a compressed one is indexed on first use)", required: true },
    mountpoint: { type: "positional", description: "an existing directory", required: true },
    name: { type: "string", description: "the file's name in the mount (default: the image's name plus .raw)" },
    overlay: { type: "string", description: "make the file writable: writes go to this file (created if missing), never to the image" },
    "allow-other": { type: "boolean", description: "let other users read it too (root, or user_allow_other in /etc/fuse.conf)" },
    partition: partitionArg,
    disk: diskArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      if (args.name !== undefined) checkFileName(args.name);
      checkMountpoint(args.mountpoint);
      const input = openInputVolume(args.image, { command: "mount", partition: args.partition, disk: args.disk, seekIndex: BUILD_SEEK_INDEX });
      let overlay: OverlayVolume | undefined;
      try {
        const name = args.name ?? `${input.baseName}.raw`;
        const mountpoint = path.resolve(args.mountpoint);
        if (args.overlay !== undefined) overlay = openOverlay(args.overlay, input.volume, { inputs: [...input.inputs] });
        mountVolume(input.volume, mountpoint, {
          name,
          source: input.source,
          mtimeMs: input.mtimeMs,
          writable: overlay,
          allowOther: args["allow-other"] === true,
          // fs.writeSync: the event loop does not run again until the mount is gone
          onMounted: () => fs.writeSync(1, `${mountedLine(mountpoint, name, input.volume.size, overlay)}\n`),
          onReadError: (e) => fs.writeSync(2, `imgtool: ${name}: ${(e as Error).message} (the caller got EIO)\n`),
        });
      } finally {
        // an overlay flushes what it holds on close
        overlay?.close();
        input.close();
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
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOTCONN") throw new UsageError(`${mountpoint}: a dead FUSE mount is there (its server was killed); remove it with fusermount3 -u ${mountpoint}`);
    throw new UsageError(`${mountpoint}: ${code === "ENOENT" ? "no such directory; create it first" : (e as Error).message}`);
  }
  if (!stat.isDirectory()) throw new UsageError(`${mountpoint}: not a directory`);
}

function mountedLine(mountpoint: string, name: string, size: number, overlay: OverlayVolume | undefined): string {
  const file = path.join(mountpoint, name);
  const mode = overlay ? `writable, changes in ${overlay.file}${overlay.created ? " (new)" : ""}` : "read-only";
  return `mounted ${file} (${humanSize(size)}, ${mode}) until unmounted; unmount with: fusermount3 -u ${mountpoint} (or Ctrl-C here)`;
}
