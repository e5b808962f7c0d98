import fs from "node:fs";
import path from "node:path";
import { serveNbd, type NbdServer } from "../serve/nbd.ts";
import { mountVolumeFile, volumeExport } from "../serve/volume-export.ts";
import { type DiskInput, openDiskVolume } from "./disk-input.ts";
import { mountedLine } from "./mount.ts";
import { listeningLine, untilSignal } from "./serve.ts";

const LOOPBACK = "127.0.0.1";

/** `serve DIR` / `serve DISK@N`: the whole disk (or one partition) as one NBD export. */
export async function serveDisk(d: DiskInput, args: { port?: string; bind?: string; socket?: string; "export-name"?: string; disk?: string }, port: number): Promise<void> {
  const signalled = untilSignal();
  let server: NbdServer | undefined;
  const { volume, opened, label } = openDiskVolume(d, args.disk);
  try {
    const name = args["export-name"] ?? (d.partition ? `${path.basename(d.path)}@${d.partition}` : path.basename(d.path));
    const exported = volumeExport(volume, name, label);
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
    opened.close();
  }
}

/** `mount DIR MNT`: the whole disk (or one partition) as one read-only file. */
export function mountDisk(d: DiskInput, args: { mountpoint: string; name?: string; "allow-other"?: boolean; disk?: string }): void {
  const { volume, opened } = openDiskVolume(d, args.disk);
  try {
    const name = args.name ?? `${path.basename(d.path)}${d.partition ? `@${d.partition}` : ""}.raw`;
    const mountpoint = path.resolve(args.mountpoint);
    mountVolumeFile(volume, d.path, mountpoint, {
      name,
      allowOther: args["allow-other"] === true,
      onMounted: () => fs.writeSync(1, `${mountedLine(mountpoint, name, volume.size)}\n`),
      onReadError: (e) => fs.writeSync(2, `imgtool: reading ${name}: ${(e as Error).message} (the reader got EIO)\n`),
    });
  } finally {
    opened.close();
  }
}
