import fs from "node:fs";
import { ImageError, type Location } from "../errors.ts";
import type { ChunkSource } from "./chunk-source.ts";
import { FileSource } from "./pieces.ts";

/** A pipe, FIFO, socket or terminal: read in order, size unknown. */
export class StreamSource implements ChunkSource {
  readonly size = undefined;
  constructor(
    readonly name: string,
    private descriptor: number,
    private ownsFd: boolean,
  ) {}

  read(into: Uint8Array): number {
    for (;;) {
      try {
        return fs.readSync(this.descriptor, into, 0, into.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "EAGAIN" && this.reopenBlocking()) continue;
        if (code === "EAGAIN") {
          Bun.sleepSync(1);
          continue;
        }
        if (code === "EINTR") continue;
        throw new ImageError({ file: this.name }, "read error", String((e as Error).message));
      }
    }
  }

  /** A non-blocking inherited fd (a parent set O_NONBLOCK): open the same pipe anew, blocking. */
  private reopenBlocking(): boolean {
    if (this.ownsFd) return false;
    try {
      this.descriptor = fs.openSync(`/proc/self/fd/${this.descriptor}`, "r");
      this.ownsFd = true;
      return true;
    } catch {
      return false;
    }
  }

  get fd(): number {
    return this.descriptor;
  }

  locate(offset: number): Location {
    return { file: this.name, offset };
  }

  close(): void {
    if (this.ownsFd) fs.closeSync(this.descriptor);
  }
}

/** Open a path (or "-" for stdin) as the right kind of source. */
export function openFileSource(path: string): FileSource | StreamSource {
  if (path === "-") return new StreamSource("stdin", 0, false);
  let fd: number;
  try {
    fd = fs.openSync(path, "r");
  } catch (e) {
    throw new ImageError({ file: path }, "cannot open", (e as NodeJS.ErrnoException).code ?? String(e));
  }
  const st = fs.fstatSync(fd);
  if (st.isDirectory()) {
    fs.closeSync(fd);
    throw new ImageError({ file: path }, "is a directory, not an image");
  }
  if (st.isFile()) return new FileSource(path, fd, st.size);
  if (st.isBlockDevice()) return new FileSource(path, fd, blockDeviceSize(fd, path));
  return new StreamSource(path, fd, true);
}

function blockDeviceSize(fd: number, path: string): number {
  // lseek(SEEK_END) is not exposed by node:fs; a block device's size is in sysfs.
  const st = fs.fstatSync(fd);
  const major = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
  const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
  try {
    const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, "utf8").trim());
    return sectors * 512;
  } catch {
    throw new ImageError({ file: path }, "cannot find the size of this block device");
  }
}
