#!/usr/bin/env bun
import pkg from "../../package.json" with { type: "json" };
import { useDecodeSettings } from "../../native/decode-settings.ts";
import { EXIT } from "../errors.ts";

const rawArgs = process.argv.slice(2);
const onlyArg = rawArgs.length === 1 ? rawArgs[0] : undefined;
// answered before anything else is loaded: every command pays only for the modules it uses
if (onlyArg === "--version" || onlyArg === "-v" || onlyArg === "-V") {
  // Bun.write, not process.stdout: the first touch of that loads node's stream modules (about 10 ms)
  await Bun.write(Bun.stdout, `${pkg.version}\n`);
  process.exit(EXIT.OK);
}

// citty colours its help even into a pipe or a file, deciding when it is loaded: keep escape codes
// for terminals by deciding first
const { isTerminal } = await import("../../native/libc-file.ts");
if (!isTerminal(1) && process.env.FORCE_COLOR === undefined) process.env.NO_COLOR ??= "1";
const { defineCommand, runCommand, runMain } = await import("citty");
const { commandLineProblem } = await import("./options.ts");
const decodeMemory = process.env.IMGTOOL_DECODE_MEMORY;
useDecodeSettings({ gzipWithZlib: process.env.IMGTOOL_GZIP === "zlib", windowMiB: decodeMemory ? Number(decodeMemory) : undefined });
if (process.env.IMGTOOL_THREADS === "0") (await import("../source/open.ts")).allowWorkerThreads(false);
const xdgCache = process.env.XDG_CACHE_HOME;
if (xdgCache?.startsWith("/")) (await import("../source/seek-index/index-file.ts")).useCacheDirectory(xdgCache);
const main = defineCommand({
  meta: {
    name: "imgtool",
    version: pkg.version,
    description: "Get data out of partclone, partimage and ntfsclone images and btrfs send streams",
  },
  subCommands: {
    info: () => import("./volume-commands.ts").then((m) => m.infoCommand),
    restore: () => import("./volume-commands.ts").then((m) => m.restoreCommand),
    verify: () => import("./volume-commands.ts").then((m) => m.verifyCommand),
    cat: () => import("./volume-commands.ts").then((m) => m.catCommand),
    "btrfs-dump": () => import("./btrfs-dump.ts").then((m) => m.btrfsDumpCommand),
    serve: () => import("./serve.ts").then((m) => m.serveCommand),
    mount: () => import("./mount.ts").then((m) => m.mountCommand),
    index: () => import("./index-command.ts").then((m) => m.indexCommand),
    "btrfs-receive": () => import("./btrfs-receive.ts").then((m) => m.btrfsReceiveCommand),
    ls: () => import("./fs-commands.ts").then((m) => m.lsCommand),
    get: () => import("./fs-commands.ts").then((m) => m.getCommand),
    extract: () => import("./fs-commands.ts").then((m) => m.extractCommand),
  },
});

if (rawArgs.length === 0) {
  process.stderr.write(`imgtool: no command given; one of ${Object.keys(main.subCommands as object).join(", ")} (see: imgtool --help)\n`);
  process.exit(EXIT.USAGE);
} else if (rawArgs.some((x) => x === "--help" || x === "-h")) {
  await runMain(main);
} else {
  const problem = await commandLineProblem(main, rawArgs);
  if (problem) {
    process.stderr.write(`imgtool: ${problem}\n`);
    process.exit(EXIT.USAGE);
  }
  try {
    await runCommand(main, { rawArgs });
  } catch (e) {
    // what reaches here is citty's: an unknown command or option value, a missing argument (the
    // commands report their own errors through guard())
    const command = rawArgs.find((x) => !x.startsWith("-"));
    if (command === undefined) {
      process.stderr.write(`imgtool: unknown option ${rawArgs[0]} and no command given (see: imgtool --help)\n`);
      process.exit(EXIT.USAGE);
    }
    const known = command !== undefined && command in (main.subCommands as object);
    process.stderr.write(`imgtool: ${(e as Error).message} (see: imgtool ${known ? `${command} ` : ""}--help)\n`);
    process.exit(EXIT.USAGE);
  }
}
