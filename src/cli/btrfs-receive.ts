import { defineCommand } from "citty";
import { receiveSendStream } from "../btrfs/receive.ts";
import { openSendStream } from "../btrfs/stream.ts";
import { EXIT } from "../errors.ts";
import { Progress } from "./progress-bar.ts";
import { guard } from "./run.ts";

export const btrfsReceiveCommand = defineCommand({
  meta: {
    name: "btrfs-receive",
    description: "Apply a btrfs send stream to an ordinary directory, as `btrfs receive -f STREAM DIR` does on btrfs",
  },
  args: {
    stream: { type: "positional", description: "send stream file (plain, compressed or split), or - for stdin", required: true },
    dir: { type: "positional", description: "existing directory to receive into: each subvolume becomes DIR/<name>", required: true },
    e: {
      type: "boolean",
      description: "stop at the first end command (btrfs receive -e); by default every concatenated stream is applied",
    },
    quiet: { type: "boolean", alias: "q", description: "do not print 'At subvol NAME' for each subvolume" },
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      const parser = openSendStream(args.stream, { allStreams: !args.e });
      const progress = new Progress(parser.reader.source.size, "receive", args.quiet ? false : undefined);
      try {
        const result = receiveSendStream(parser, args.dir, {
          onProgress: (bytes) => progress.update(bytes),
          onSubvolume: (kind, name) => {
            if (!args.quiet) process.stderr.write(`${process.stderr.isTTY ? "\r\x1b[K" : ""}At ${kind} ${name}\n`);
          },
          warn: (line) => process.stderr.write(`imgtool: warning: ${line}\n`),
          walkWithoutOpenat2: process.env.IMGTOOL_NO_OPENAT2 === "1",
        });
        progress.finish(parser.reader.position);
        const refused = result.refusedXattrs;
        if (refused.count === 0) return EXIT.OK;
        process.stderr.write(
          `imgtool: warning: the file system of ${args.dir} refused ${refused.count} xattr${refused.count === 1 ? "" : "s"} of ${refused.files} file${refused.files === 1 ? "" : "s"}; everything else was received\n`,
        );
        return EXIT.PARTIAL;
      } finally {
        parser.reader.close();
      }
    }),
});
