import { defineCommand } from "citty";
import { receiveSendStream } from "../btrfs/receive.ts";
import { openSendStream } from "../btrfs/stream.ts";
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
      try {
        receiveSendStream(parser, args.dir, {
          onSubvolume: (kind, name) => {
            if (!args.quiet) process.stderr.write(`At ${kind} ${name}\n`);
          },
          warn: (line) => process.stderr.write(`imgtool: warning: ${line}\n`),
        });
      } finally {
        parser.reader.close();
      }
    }),
});
