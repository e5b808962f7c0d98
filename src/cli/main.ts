#!/usr/bin/env bun
import pkg from "../../package.json" with { type: "json" };

// citty colours its help even into a pipe or a file, deciding when it is loaded: keep escape codes
// for terminals by deciding first
if (!process.stdout.isTTY && process.env.FORCE_COLOR === undefined) process.env.NO_COLOR ??= "1";
const { defineCommand, runMain } = await import("citty");
const { catCommand, infoCommand, restoreCommand, verifyCommand } = await import("./disk-commands.ts");

const main = defineCommand({
  meta: {
    name: "imgtool",
    version: pkg.version,
    description: "Get data out of partclone, partimage and ntfsclone images and btrfs send streams",
  },
  subCommands: {
    info: infoCommand,
    restore: restoreCommand,
    verify: verifyCommand,
    cat: catCommand,
    "btrfs-dump": () => import("./btrfs-dump.ts").then((m) => m.btrfsDumpCommand),
    serve: () => import("./serve.ts").then((m) => m.serveCommand),
    "btrfs-receive": () => import("./btrfs-receive.ts").then((m) => m.btrfsReceiveCommand),
  },
});

await runMain(main);
