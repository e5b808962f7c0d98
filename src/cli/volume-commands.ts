import os from "node:os";
import { defineCommand } from "citty";
import { growPipe, makeBlocking } from "../../native/libc-file.ts";
import { restoreInterruptibly } from "../commands/restore.ts";
import { catRange } from "../commands/cat.ts";
import { EXIT, UsageError } from "../errors.ts";
import { humanSize } from "../formats/units.ts";
import type { Input } from "../input/input.ts";
import { type InputOptions, openInput } from "../input/open-input.ts";
import { writeFully } from "../output/writer.ts";
import { silentProgress } from "../progress.ts";
import { identityVolume, openOverlay, type OverlayVolume } from "../volume/overlay.ts";
import { fitArgs, minimumFacts, minimumText, prepareFit } from "./fit-args.ts";
import { diskArg, infoJson, infoText, partitionArg } from "./info-text.ts";
import { progressBars } from "./progress-bar.ts";
import { BUILD_SEEK_INDEX, guard, parseBytes } from "./run.ts";

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

const maxBitmapArg = { type: "string", description: "read a bitmap (one bit per block) up to this size (default 1G: 32 TiB of 4 KiB blocks)" } as const;

/** The options of the commands that read all the data (restore, verify): which part, how to decode. */
const readAllArgs = {
  threads: threadsArg,
  "max-bitmap": maxBitmapArg,
  partition: partitionArg,
  disk: diskArg,
  debug: { type: "boolean", description: "show stack traces of errors" },
} as const;

function readAllOptions(args: { partition?: string; disk?: string; threads?: string; "max-bitmap"?: string }, command: string): InputOptions {
  const maxBitmap = parseBytes(args["max-bitmap"], "--max-bitmap") || undefined;
  return { partition: args.partition, disk: args.disk, decodeThreads: parseThreads(args.threads), maxBitmap, command };
}

export const imageArg = {
  type: "positional",
  description: "image file, any piece of a split set, - for stdin, a file that is a volume (dd), a Clonezilla image folder or a raw disk image (DISK@N: one partition)",
  required: true,
} as const;

/** Open, run, close: every command below reads its input through this. */
async function withInput<T>(spec: string, options: InputOptions, body: (input: Input) => T | Promise<T>): Promise<T> {
  const input = openInput(spec, options);
  try {
    return await body(input);
  } finally {
    input.close();
  }
}

export const infoCommand = defineCommand({
  meta: { name: "info", description: "Print the image header (like partclone.info), or a disk's tables and partitions" },
  args: {
    image: imageArg,
    json: { type: "boolean", description: "print one JSON object" },
    "max-bitmap": maxBitmapArg,
    minimum: { type: "boolean", description: "of a disk: the smallest size each partition and the disk can be restored into (asks each file system's resize tool, which reads it from the image through a read-only FUSE view)" },
    partition: partitionArg,
    disk: diskArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() =>
      withInput(args.image, { partition: args.partition, disk: args.disk, confirmWholeSet: true, maxBitmap: parseBytes(args["max-bitmap"], "--max-bitmap") || undefined, command: "info" }, (input) => {
        const facts = input.describe();
        const minimum = args.minimum ? minimumFacts(input, undefined) : undefined;
        process.stdout.write(args.json ? `${JSON.stringify(minimum ? { ...infoJson(facts), minimum } : infoJson(facts), null, 2)}\n` : infoText(facts) + (minimum ? minimumText(minimum) : ""));
      }),
    ),
});

export const restoreCommand = defineCommand({
  meta: { name: "restore", description: "Write the raw volume (or disk) to a file, a block device or stdout" },
  args: {
    image: imageArg,
    output: { type: "string", alias: "o", description: "output file, block device, or - for stdout", required: true },
    sparse: { type: "boolean", description: "unused blocks become holes (a file) or are left untouched (a device)" },
    force: { type: "boolean", description: "overwrite an existing output" },
    verify: { type: "boolean", default: true, description: "check checksums on the way", negativeDescription: "do not check checksums" },
    "output-offset": { type: "string", description: "write the volume at this byte offset of the output (e.g. 1M)" },
    overlay: { type: "string", description: "merge the changes kept in this overlay file (serve/mount --overlay)" },
    quiet: { type: "boolean", alias: "q", description: "no progress bar or summary" },
    ...fitArgs,
    ...readAllArgs,
  },
  run: ({ args }) =>
    guard(() => {
      const outputOffset = parseBytes(args["output-offset"], "--output-offset");
      return withInput(args.image, readAllOptions(args, "restore"), async (input) => {
        for (const w of input.warnings) process.stderr.write(`imgtool: warning: ${w}\n`);
        let overlay: OverlayVolume | undefined;
        const fitted = prepareFit(args, input, progressBars(args.quiet === true));
        if (fitted && !fitted.input) return;
        try {
          if (args.overlay !== undefined) overlay = openRestoreOverlay(args.overlay, input);
          const started = performance.now();
          const r = await restoreInterruptibly(fitted?.input ?? input, args.output, {
            // for a file system whose O_TMPFILE misbehaves: write a visible OUT.partial instead
            unnamed: process.env.IMGTOOL_TMPFILE === "0" ? false : undefined,
            overlay,
            sparse: args.sparse,
            force: args.force,
            verify: args.verify,
            outputOffset,
            progress: progressBars(args.quiet === true),
            onSignal: (name, removed) => process.stderr.write(`${process.stderr.isTTY ? "\n" : ""}imgtool: stopped by ${name}; ${removed} removed\n`),
          });
          const seconds = (performance.now() - started) / 1000;
          if (!args.quiet && args.output !== "-" && process.stderr.isTTY) {
            process.stderr.write(`restored ${humanSize(r.volumeSize)} ${input.kind} (${humanSize(r.dataBytes)} written) to ${r.output} in ${seconds.toFixed(1)} s\n`);
          }
        } finally {
          overlay?.close();
          fitted?.input?.close();
        }
      });
    }),
});

/** The overlay restore merges: it must exist and must have been made for this input. */
function openRestoreOverlay(file: string, input: Input): OverlayVolume {
  const id = input.identity();
  return openOverlay(file, identityVolume(id.name, id.size, id.blockSize, id.identity ?? ""), { inputs: [...input.files], mustExist: true });
}

export const verifyCommand = defineCommand({
  meta: { name: "verify", description: "Check every checksum and count (like partclone.chkimg); of a folder, its checksum files too" },
  args: {
    image: imageArg,
    quiet: { type: "boolean", alias: "q", description: "print nothing on success" },
    ...readAllArgs,
  },
  run: ({ args }) =>
    guard(() =>
      withInput(args.image, readAllOptions(args, "verify"), (input) => {
        const r = input.verify(progressBars(args.quiet === true));
        const lines = input.kind === "disk" || input.kind === "partition" ? r.checked : [];
        if (!args.quiet) for (const line of lines) process.stdout.write(`${line}\n`);
        for (const p of r.checksumProblems) process.stderr.write(`imgtool: ${p}\n`);
        for (const p of r.otherProblems) process.stderr.write(`imgtool: ${p}\n`);
        if (r.checksumProblems.length) return EXIT.CHECKSUM;
        if (r.otherProblems.length) return EXIT.BAD_INPUT;
        if (!args.quiet) process.stdout.write(lines.length || r.checked.length === 0 ? `${args.image}: OK\n` : `${args.image}: OK (${r.checked.join("; ")})\n`);
        return EXIT.OK;
      }),
    ),
});

export const catCommand = defineCommand({
  meta: { name: "cat", description: "Write a byte range of the volume to stdout (unused blocks read as zeros)" },
  args: {
    image: imageArg,
    offset: { type: "string", description: "first byte (K/M/G suffixes)", default: "0" },
    length: { type: "string", description: "number of bytes (default: to the end of the volume)" },
    partition: partitionArg,
    disk: diskArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      if (process.stdout.isTTY) throw new UsageError("refusing to write volume bytes to a terminal; redirect stdout");
      const offset = parseBytes(args.offset, "--offset");
      return withInput(args.image, { partition: args.partition, disk: args.disk, command: "cat", seekIndex: BUILD_SEEK_INDEX }, (input) => {
        makeBlocking(1);
        growPipe(1, 1 << 20);
        let written = 0;
        const size = input.size;
        const length = args.length === undefined ? (size ?? Number.MAX_SAFE_INTEGER) - offset : parseBytes(args.length, "--length");
        if (size !== undefined && (offset > size || (args.length !== undefined && input.kind !== "image" && offset + length > size))) {
          throw new UsageError(`--offset/--length reach past the end of the ${size}-byte volume`);
        }
        const progress = (progressBars() ?? silentProgress)(size === undefined ? undefined : Math.max(0, Math.min(length, size - offset)), "cat");
        catRange(input, offset, length, (bytes) => {
          writeFully(1, bytes);
          written += bytes.length;
          progress.update(written);
        });
        progress.finish(written);
      });
    }),
});
