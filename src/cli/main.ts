#!/usr/bin/env bun
import { defineCommand, runMain } from "citty";
import pkg from "../../package.json" with { type: "json" };
import { catCommand, infoCommand, restoreCommand, verifyCommand } from "./disk-commands.ts";

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
