import { defineCommand } from "citty";
import { UsageError, withCommas } from "../errors.ts";
import { humanSize } from "../formats/units.ts";
import { isRandomAccess } from "../source/chunk-source.ts";
import { openRaw } from "../source/open.ts";
import { buildSeekIndex, DEFAULT_SPACING } from "../source/seek-index/open-index.ts";
import { SEEKABLE_COMPRESSIONS, seekCodecOf } from "../source/seek-index/codecs.ts";
import { sniffCompression } from "../source/sniff.ts";
import { DiskInput } from "../input/disk-input.ts";
import { ImageInput } from "../input/image-input.ts";
import { openInput } from "../input/open-input.ts";
import { guard, indexProgressBar, parseBytes } from "./run.ts";

export const indexCommand = defineCommand({
  meta: { name: "index", description: "Build the seek index of a compressed image, so serve, mount and cat read it at any offset" },
  args: {
    image: { type: "positional", description: "compressed image file or any piece of a split set; or a Clonezilla folder (DIR@N: one partition)", required: true },
    spacing: { type: "string", description: `decoded bytes between resume points (default ${humanSize(DEFAULT_SPACING)}; smaller: faster cold reads, bigger index)` },
    json: { type: "boolean", description: "print one JSON object: path, bytes, checkpoints, seconds, ..." },
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      const spacing = args.spacing === undefined ? DEFAULT_SPACING : parseBytes(args.spacing, "--spacing");
      if (spacing < 1 << 20) throw new UsageError(`--spacing: at least 1M (got ${args.spacing})`);
      if (args.image === "-") throw new UsageError("index needs a file (or split set) it can read again, not stdin");
      const input = openInput(args.image, { command: "index", threads: false });
      try {
        if (!(input instanceof DiskInput)) {
          const first = input instanceof ImageInput ? (input.image.info.pieces[0] ?? args.image) : input.files[0]!;
          if (!indexImage(first, spacing, args.json === true)) {
            throw new UsageError(`${args.image}: not compressed; serve, mount and cat read it at any offset without an index`);
          }
          return;
        }
        const files = input.span.parts.flatMap((x) => (x.kind === "partition" && (x.partition.content.kind === "image" || x.partition.content.kind === "dd") ? [x.partition.content.pieces[0]!] : []));
        if (files.length === 0 && input.span.layout.backing) throw new UsageError(`${args.image}: a raw disk image is read at any offset without an index`);
        // a Clonezilla folder: every compressed partition image, one after the other
        let indexed = 0;
        for (const file of files) if (indexImage(file, spacing, args.json === true)) indexed++;
        if (indexed === 0 && !args.json) process.stdout.write(`${args.image}: no compressed partition image to index\n`);
      } finally {
        input.close();
      }
    }),
});

/** Build the index of one image; false when it is not compressed. */
function indexImage(image: string, spacing: number, json: boolean): boolean {
  const { raw, pieces } = openRaw(image);
  try {
    if (!isRandomAccess(raw)) throw new UsageError(`${image}: index needs a regular file or split set, not a pipe`);
    const head = new Uint8Array(64);
    const kind = sniffCompression(head.subarray(0, raw.readAt(head, 0)));
    if (!kind) return false;
    const codec = seekCodecOf(kind);
    if (!codec) {
      throw new UsageError(`${image}: imgtool has no seek index for ${kind} data (it has for: ${SEEKABLE_COMPRESSIONS.join(", ")}); decompress it first or use imgtool restore`);
    }
    const built = buildSeekIndex(raw, pieces, codec, { spacing, onProgress: indexProgressBar(), threads: process.env.IMGTOOL_THREADS !== "0" });
    if (json) {
      process.stdout.write(`${JSON.stringify({ ...built, compression: kind, spacing, notResumable: built.notResumable ?? null })}\n`);
      return true;
    }
    const share = built.compressedSize > 0 ? ((100 * built.bytes) / built.compressedSize).toFixed(2) : "0";
    process.stdout.write(
      `${built.path}: ${withCommas(built.checkpoints)} points over ${humanSize(built.decodedSize)} decoded${built.fromSeekTable ? " (from the file's seek table)" : ""}; ${humanSize(built.bytes)} (${share}% of ${humanSize(built.compressedSize)} ${kind}) in ${built.seconds.toFixed(1)} s\n`,
    );
    if (built.notResumable) process.stderr.write(`imgtool: ${image}: ${built.notResumable}\n`);
    return true;
  } finally {
    raw.close();
  }
}
