import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { defineCommand } from "citty";
import { UsageError } from "../errors.ts";
import { humanSize } from "../formats/units.ts";
import { diskArg, partitionArg } from "./info-text.ts";
import { openInputVolume } from "../input/input-volume.ts";
import { volumeExport } from "../serve/image-export.ts";
import { DEFAULT_MAX_CONNECTIONS, serveNbd, type NbdServer, type NbdThreads } from "../serve/nbd-server.ts";
import { startNbdThreads } from "../serve/nbd-threads.ts";
import { openOverlay, type OverlayVolume } from "../volume/overlay.ts";
import { BUILD_SEEK_INDEX, guard } from "./run.ts";

/** the IANA port of NBD */
const NBD_PORT = 10809;
const LOOPBACK = "127.0.0.1";
const MAX_THREADS = 64;

export const serveCommand = defineCommand({
  meta: { name: "serve", description: "Export the restored volume over NBD without restoring it: read-only, or writable through an overlay file" },
  args: {
    image: { type: "positional", description: "image file or any piece of a split set (a compressed one is indexed on first use)", required: true },
    port: { type: "string", description: `TCP port (default ${NBD_PORT}; 0 picks a free one)` },
    bind: { type: "string", description: `address to listen on (default ${LOOPBACK}: this machine only)` },
    socket: { type: "string", description: "listen on this Unix socket instead (and on TCP too if --port or --bind is given)" },
    "export-name": { type: "string", description: "the export's name (default: the image's file name; the empty name always works)" },
    partition: partitionArg,
    disk: diskArg,
    overlay: { type: "string", description: "make the export writable: writes go to this file (created if missing), never to the image" },
    "max-connections": { type: "string", description: `clients served at once; more are refused with a reason (default ${DEFAULT_MAX_CONNECTIONS})` },
    threads: { type: "string", description: "threads that each serve a client of a read-only export, beside the main one (default: one less than the cores; 0: none)" },
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(async () => {
      const port = parsePort(args.port);
      if (args.socket !== undefined && fs.existsSync(args.socket)) throw new UsageError(`--socket: ${args.socket} exists; remove it first`);
      const maxConnections = parseCount(args["max-connections"], "--max-connections", DEFAULT_MAX_CONNECTIONS);
      // each thread holds the export open on its own (tens of MiB): a few per core at the most. The main
      // thread serves the clients beyond them, so one less than the cores keeps every core busy
      // (nbdcopy's four connections) and a compressed export within 128 MiB
      const threadCount = parseCount(args.threads, "--threads", Math.max(0, os.availableParallelism() - 1), { min: 0, max: MAX_THREADS });
      // before listening, so that a signal right after the line below still stops it cleanly
      const signalled = untilSignal();
      let server: NbdServer | undefined;
      let overlay: OverlayVolume | undefined;
      let threads: NbdThreads | undefined;
      const input = openInputVolume(args.image, { command: "serve", partition: args.partition, disk: args.disk, seekIndex: BUILD_SEEK_INDEX });
      try {
        const name = args["export-name"] ?? path.basename(args.image);
        if (args.overlay !== undefined) overlay = openOverlay(args.overlay, input.volume, { inputs: [...input.inputs] });
        const exported = volumeExport(input.volume, name, input.description, overlay);
        const tcp = args.socket === undefined || args.port !== undefined || args.bind !== undefined;
        const onError = (message: string) => process.stderr.write(`imgtool: ${message}\n`);
        // a writable export stays on one thread: every write goes through the one overlay open here
        if (!overlay && threadCount > 0) {
          const started = await startNbdThreads(Math.min(threadCount, maxConnections), { image: args.image, partition: args.partition, disk: args.disk, exportName: name }, onError);
          if ("failed" in started) {
            onError(
              `serving every client on this one thread: the serving threads could not open the image themselves (${started.failed}); they need a compressed image's seek index on disk, beside the image or in the cache directory`,
            );
          }
          else threads = started;
        }
        server = serveNbd(exported, {
          tcp: tcp ? { hostname: args.bind ?? LOOPBACK, port } : undefined,
          unix: args.socket,
          maxConnections,
          onError,
          threads,
        });
        process.stdout.write(`${listeningLine(server, args.bind ?? LOOPBACK, name, input.volume.size, overlay)}\n`);
        await signalled.promise;
      } finally {
        signalled.forget();
        server?.stop();
        // an overlay flushes what it holds on close
        overlay?.close();
        input.close();
      }
    }),
});

function parseCount(text: string | undefined, option: string, fallback: number, range = { min: 1, max: 100_000 }): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < range.min || n > range.max) throw new UsageError(`${option}: not a count from ${range.min} to ${range.max}: ${JSON.stringify(text)}`);
  return n;
}

function parsePort(text: string | undefined): number {
  if (text === undefined) return NBD_PORT;
  const port = Number(text);
  if (!/^\d+$/.test(text) || port > 65535) throw new UsageError(`--port: not a port number: ${JSON.stringify(text)}`);
  return port;
}

/** Where the server listens and how a client connects, on one line. */
function listeningLine(server: NbdServer, bind: string, name: string, size: number, overlay: OverlayVolume | undefined): string {
  const uris: string[] = [];
  let examples = "";
  if (server.port !== undefined) {
    const host = bind.includes(":") ? `[${bind}]` : bind;
    const uri = `nbd://${host}:${server.port}`;
    uris.push(uri);
    examples = `nbdcopy ${uri} out.img | qemu-img convert -O raw ${uri} out.img | nbd-client ${bind} ${server.port} /dev/nbd0${overlay ? "" : " -readonly"}`;
  }
  if (server.unix !== undefined) {
    const uri = `nbd+unix:///?socket=${server.unix}`;
    uris.push(uri);
    examples ||= `nbdcopy '${uri}' out.img | qemu-img convert -O raw 'nbd+unix:///?socket=${server.unix}' out.img | nbd-client -unix ${server.unix} /dev/nbd0${overlay ? "" : " -readonly"}`;
  }
  const mode = overlay ? `writable, changes in ${overlay.file}${overlay.created ? " (new)" : ""}` : "read-only";
  return `serving ${JSON.stringify(name)} (${humanSize(size)}, ${mode}) on ${uris.join(" and ")} until Ctrl-C; connect with: ${examples}`;
}

/** Resolves on SIGINT or SIGTERM; `forget` puts the default handling back. */
export function untilSignal(): { promise: Promise<void>; forget(): void } {
  let stop = () => {};
  const promise = new Promise<void>((resolve) => {
    stop = () => resolve();
  });
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  return {
    promise,
    forget() {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
    },
  };
}
