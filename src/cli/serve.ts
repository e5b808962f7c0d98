import fs from "node:fs";
import path from "node:path";
import { defineCommand } from "citty";
import { UsageError } from "../errors.ts";
import { openImage } from "../formats/detect.ts";
import { humanSize } from "../formats/units.ts";
import { imageExport } from "../serve/image-export.ts";
import { serveNbd, type NbdServer } from "../serve/nbd.ts";
import { diskInputOf, partitionArg, diskArg } from "./disk-input.ts";
import { serveDisk } from "./disk-serve.ts";
import { BUILD_SEEK_INDEX, guard, refuseWithoutRandomAccess } from "./run.ts";

/** the IANA port of NBD */
const NBD_PORT = 10809;
const LOOPBACK = "127.0.0.1";

export const serveCommand = defineCommand({
  meta: { name: "serve", description: "Export the restored volume read-only over NBD, without restoring it" },
  args: {
    image: { type: "positional", description: "image file or any piece of a split set (a compressed one is indexed on first use)", required: true },
    port: { type: "string", description: `TCP port (default ${NBD_PORT}; 0 picks a free one)` },
    bind: { type: "string", description: `address to listen on (default ${LOOPBACK}: this machine only)` },
    socket: { type: "string", description: "listen on this Unix socket instead (and on TCP too if --port or --bind is given)" },
    "export-name": { type: "string", description: "the export's name (default: the image's file name; the empty name always works)" },
    partition: partitionArg,
    disk: diskArg,
    debug: { type: "boolean", description: "show stack traces of errors" },
  },
  run: ({ args }) =>
    guard(async () => {
      const port = parsePort(args.port);
      if (args.socket !== undefined && fs.existsSync(args.socket)) throw new UsageError(`--socket: ${args.socket} exists; remove it first`);
      const disk = diskInputOf(args.image, args.partition);
      if (disk) return serveDisk(disk, args, port);
      const image = openImage(args.image, BUILD_SEEK_INDEX);
      let server: NbdServer | undefined;
      // before listening, so that a signal right after the line below still stops it cleanly
      const signalled = untilSignal();
      try {
        refuseWithoutRandomAccess(image, args.image, "serve");
        const name = args["export-name"] ?? path.basename(args.image);
        const exported = imageExport(image, name);
        const tcp = args.socket === undefined || args.port !== undefined || args.bind !== undefined;
        server = serveNbd(exported, {
          tcp: tcp ? { hostname: args.bind ?? LOOPBACK, port } : undefined,
          unix: args.socket,
          onError: (message) => process.stderr.write(`imgtool: ${message}\n`),
        });
        process.stdout.write(`${listeningLine(server, args.bind ?? LOOPBACK, name, exported.size)}\n`);
        await signalled.promise;
      } finally {
        signalled.forget();
        server?.stop();
        image.close();
      }
    }),
});

export function parsePort(text: string | undefined): number {
  if (text === undefined) return NBD_PORT;
  const port = Number(text);
  if (!/^\d+$/.test(text) || port > 65535) throw new UsageError(`--port: not a port number: ${JSON.stringify(text)}`);
  return port;
}

/** Serving needs reads at any offset: a compressed image or a pipe must be made a plain file first. */

/** Where the server listens and how a client connects, on one line. */
export function listeningLine(server: NbdServer, bind: string, name: string, size: number): string {
  const uris: string[] = [];
  let examples = "";
  if (server.port !== undefined) {
    const host = bind.includes(":") ? `[${bind}]` : bind;
    const uri = `nbd://${host}:${server.port}`;
    uris.push(uri);
    examples = `nbdcopy ${uri} out.img | qemu-img convert -O raw ${uri} out.img | nbd-client ${bind} ${server.port} /dev/nbd0 -readonly`;
  }
  if (server.unix !== undefined) {
    const uri = `nbd+unix:///?socket=${server.unix}`;
    uris.push(uri);
    examples ||= `nbdcopy '${uri}' out.img | qemu-img convert -O raw 'nbd+unix:///?socket=${server.unix}' out.img | nbd-client -unix ${server.unix} /dev/nbd0 -readonly`;
  }
  return `serving ${JSON.stringify(name)} (${humanSize(size)}, read-only) on ${uris.join(" and ")} until Ctrl-C; connect with: ${examples}`;
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
