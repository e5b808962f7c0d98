import { defineCommand } from "citty";
import { UsageError } from "../errors.ts";
import { type DumpFormat, dumpSendStream } from "../btrfs/dump.ts";
import { jsonSendStream } from "../btrfs/json.ts";
import { openSendStream } from "../btrfs/stream.ts";
import { guard } from "./run.ts";

const FORMATS: DumpFormat[] = ["6.2", "6.9.1"];

export const btrfsDumpCommand = defineCommand({
  meta: { name: "btrfs-dump", description: "Print a btrfs send stream's commands as `btrfs receive --dump` does" },
  args: {
    stream: { type: "positional", description: "send stream file (plain, compressed or split), or - for stdin", required: true },
    json: { type: "boolean", description: "one JSON object per command (NDJSON) instead of the dump text" },
    "progs-format": {
      type: "string",
      default: "6.2",
      description: "the btrfs-progs text to match: 6.2 (default), or 6.9.1 (newer: also escapes clone from=, xattr names and values)",
    },
    "all-streams": {
      type: "boolean",
      description: "go on past the first end command through every concatenated stream (btrfs receive --dump stops there)",
    },
    "end-stop": {
      type: "boolean",
      alias: "e",
      description: "stop at the first end command: the default, accepted as btrfs receive's -e",
    },
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(() => {
      const format = args["progs-format"] as DumpFormat;
      if (!FORMATS.includes(format)) throw new UsageError(`--progs-format: one of ${FORMATS.join(", ")}, not ${JSON.stringify(format)}`);
      if (args["end-stop"] && args["all-streams"]) throw new UsageError("-e and --all-streams contradict each other");
      const parser = openSendStream(args.stream, { allStreams: args["all-streams"] });
      try {
        if (args.json) jsonSendStream(parser);
        else dumpSendStream(parser, undefined, format);
      } finally {
        parser.reader.close();
      }
    }),
});
