import os from "node:os";
import { defineCommand } from "citty";
import { growPipe, makeBlocking } from "../../native/libc.ts";
import { catRange } from "../commands/cat.ts";
import { restoreImageInterruptibly } from "../commands/restore.ts";
import { verifyImage } from "../commands/verify.ts";
import { missingTreeBlocksOf } from "../fs/btrfs/btrfs.ts";
import { openInputVolume } from "./input-volume.ts";
import { EXIT, UsageError, withCommas } from "../errors.ts";
import { openImage } from "../formats/detect.ts";
import type { Image, ImageInfo } from "../formats/image.ts";
import { humanSize } from "../formats/units.ts";
import { Progress } from "../output/progress.ts";
import { writeFully } from "../output/writer.ts";
import { diskArg, diskCat, diskInfo, diskInputOf, diskRestore, diskVerify, partitionArg } from "./disk-input.ts";
import { BUILD_SEEK_INDEX, guard, parseBytes } from "./run.ts";
import { identityVolume, openOverlay, type OverlayVolume } from "../volume/overlay.ts";
import { imageIdentity } from "../volume/volume.ts";

const threadsArg = {
  type: "string",
  description: "decode on this many cores where a seek index of the compressed image exists (default: all)",
} as const;

/** --threads N: 1 to 256; unset, the machine's cores. */
function parseThreads(value: string | undefined): number {
  if (value === undefined) return os.availableParallelism();
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 256) throw new UsageError(`--threads takes a whole number from 1 to 256, not '${value}'`);
  return n;
}

const imageArg = { type: "positional", description: "image file, any piece of a split set, - for stdin, a Clonezilla image folder or a raw disk image (DISK@N: one partition)", required: true } as const;

export const infoCommand = defineCommand({
  meta: { name: "info", description: "Print the image header (like partclone.info)" },
  args: {
    image: imageArg,
    json: { type: "boolean", description: "print one JSON object" },
    partition: partitionArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      const disk = diskInputOf(args.image, args.partition);
      if (disk) return diskInfo(disk, args.json === true);
      const image = openImage(args.image, { confirmWholeSet: true });
      try {
        process.stdout.write(args.json ? `${JSON.stringify(infoJson(image.info), null, 2)}\n` : infoText(image.info));
      } finally {
        image.close();
      }
    }),
});

const TITLES: Record<ImageInfo["format"], string> = {
  partclone: "Partclone Header",
  partimage: "Partimage Header",
  ntfsclone: "Ntfsclone Header",
};

export function infoText(info: ImageInfo): string {
  const title = TITLES[info.format];
  const lines = [title, "=".repeat(title.length)];
  for (const f of info.fields) lines.push(`${f.label.padEnd(17)} ${f.note ? `${f.text.padEnd(21)} ${f.note}` : f.text}`.trimEnd());
  lines.push(`${"compression".padEnd(17)} ${info.compression.length ? info.compression.join(" inside ") : "none"}`);
  lines.push(`${(info.pieces.length > 1 ? "pieces" : "file").padEnd(17)} ${info.pieces.join(" ")}`);
  return `${lines.join("\n")}\n`;
}

export function infoJson(info: ImageInfo): Record<string, unknown> {
  const header: Record<string, unknown> = {};
  for (const f of info.fields) header[f.key] = f.value;
  const { fields: _fields, ...facts } = info;
  return { ...facts, header };
}

export const restoreCommand = defineCommand({
  meta: { name: "restore", description: "Write the raw volume to a file, a block device or stdout" },
  args: {
    image: imageArg,
    output: { type: "string", alias: "o", description: "output file, block device, or - for stdout", required: true },
    sparse: { type: "boolean", description: "unused blocks become holes (a file) or are left untouched (a device)" },
    force: { type: "boolean", description: "overwrite an existing output" },
    verify: { type: "boolean", default: true, description: "check checksums on the way", negativeDescription: "do not check checksums" },
    "output-offset": { type: "string", description: "write the volume at this byte offset of the output (e.g. 1M)" },
    overlay: { type: "string", description: "merge the changes kept in this overlay file (serve/mount --overlay)" },
    threads: threadsArg,
    quiet: { type: "boolean", alias: "q", description: "no progress bar or summary" },
    partition: partitionArg,
    disk: diskArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(async () => {
      const disk = diskInputOf(args.image, args.partition);
      if (disk) return diskRestore(disk, args);
      const outputOffset = parseBytes(args["output-offset"], "--output-offset");
      const image = openImage(args.image, { decodeThreads: parseThreads(args.threads) });
      let overlay: OverlayVolume | undefined;
      try {
        if (args.overlay !== undefined) overlay = openRestoreOverlay(args.overlay, image);
        const started = performance.now();
        const r = await restoreImageInterruptibly(image, args.output, {
          input: args.image,
          // for a file system whose O_TMPFILE misbehaves: write a visible OUT.partial instead
          unnamed: process.env.IMGTOOL_TMPFILE === "0" ? false : undefined,
          overlay,
          sparse: args.sparse,
          force: args.force,
          verify: args.verify,
          outputOffset,
          progress: args.quiet ? false : undefined,
        });
        const seconds = (performance.now() - started) / 1000;
        if (!args.quiet && args.output !== "-" && process.stderr.isTTY) {
          process.stderr.write(
            `restored ${humanSize(r.volumeSize)} volume (${humanSize(r.dataBytes)} used) to ${r.output} in ${seconds.toFixed(1)} s\n`,
          );
        }
      } finally {
        overlay?.close();
        image.close();
      }
    }),
});

/** The overlay restore merges: it must exist and must have been made for this image. */
function openRestoreOverlay(file: string, image: Image): OverlayVolume {
  const { deviceSize, blockSize, pieces } = image.info;
  const identity = identityVolume(pieces[0] ?? file, deviceSize, blockSize, imageIdentity(image));
  return openOverlay(file, identity, { inputs: pieces, mustExist: true });
}

export const verifyCommand = defineCommand({
  meta: { name: "verify", description: "Check every checksum and count in the image (like partclone.chkimg)" },
  args: {
    image: imageArg,
    threads: threadsArg,
    quiet: { type: "boolean", alias: "q", description: "print nothing on success" },
    partition: partitionArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      const disk = diskInputOf(args.image, args.partition);
      if (disk) return diskVerify(disk, args.quiet === true);
      const image = openImage(args.image, { decodeThreads: parseThreads(args.threads) });
      try {
        const r = verifyImage(image, { progress: args.quiet ? false : undefined });
        if (!r.ok) {
          for (const p of r.problems) process.stderr.write(`imgtool: ${p}\n`);
          return EXIT.CHECKSUM;
        }
        const missing = missingTreeBlocksOf(image, () => openInputVolume(args.image, "verify").volume);
        for (const m of missing) process.stderr.write(`imgtool: ${m}\n`);
        if (missing.length > 0) return EXIT.BAD_INPUT;
        if (!args.quiet) {
          const { info } = image;
          process.stdout.write(
            `${args.image}: OK (${info.format}, ${info.checksum === "NONE" ? "no data checksums" : `${info.checksum} checksums`}, ${withCommas(info.usedBlocks)} used blocks, ${humanSize(r.dataBytes)} of data)\n`,
          );
        }
      } finally {
        image.close();
      }
    }),
});

export const catCommand = defineCommand({
  meta: { name: "cat", description: "Write a byte range of the volume to stdout (unused blocks read as zeros)" },
  args: {
    image: imageArg,
    offset: { type: "string", description: "first byte (K/M/G suffixes)", default: "0" },
    length: { type: "string", description: "number of bytes (default: to the end of the volume)" },
    partition: partitionArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      const disk = diskInputOf(args.image, args.partition);
      if (disk) return diskCat(disk, args);
      if (process.stdout.isTTY) throw new UsageError("refusing to write volume bytes to a terminal; redirect stdout");
      makeBlocking(1);
      growPipe(1, 1 << 20);
      const offset = parseBytes(args.offset, "--offset");
      const image = openImage(args.image, args.image === "-" ? {} : BUILD_SEEK_INDEX);
      try {
        const length = args.length === undefined ? image.info.deviceSize - offset : parseBytes(args.length, "--length");
        const progress = new Progress(Math.max(0, Math.min(length, image.info.deviceSize - offset)), "cat");
        let written = 0;
        catRange(image, offset, length, (bytes) => {
          writeFully(1, bytes);
          written += bytes.length;
          progress.update(written);
        });
        progress.finish(written);
      } finally {
        image.close();
      }
    }),
});
