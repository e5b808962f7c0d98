import fs from "node:fs";
import { allocateRange, punchHole, startWriteback, waitWritable } from "../../native/libc-file.ts";
import { withCommas } from "../errors.ts";
import type { DataRun } from "../formats/image.ts";

/** The output failed (full disk, I/O error): the input is not to blame. */
export class OutputError extends Error {
  override name = "OutputError";
}

/** What becomes of the unused blocks between runs. */
export type GapPolicy =
  /** leave them unwritten: holes in a new file, old contents on a device */
  | "skip"
  /** write zeros */
  | "zeros"
  /** deallocate them (fallocate PUNCH_HOLE), zeros where the file system cannot */
  | "punch"
  /**
   * a new file: reserve them as unwritten extents (fallocate), which read as zeros and take their
   * space as written zeros would, without the kernel copying and writing back zeros; zeros where
   * the file system cannot
   */
  | "allocate";

const ZEROS = new Uint8Array(1 << 20);
/** IOV_MAX: the most buffers one writev takes */
export const MAX_IOV = 1024;
/** gaps shorter than this are written as zeros even where they could be allocated */
const MIN_ALLOCATE = 256 << 10;
/** how much written data may wait before its writeback is started (positional outputs only) */
const WRITEBACK_STEP = 64 << 20;

/**
 * Writes a volume from batches of ascending runs: runs that touch are gathered into one writev,
 * gaps follow the GapPolicy. `position` null means a stream (pipe, stdout): gaps are zeros then.
 */
export class VolumeWriter {
  private cursor = 0;
  private iov: Uint8Array[] = [];
  private iovBytes = 0;
  private iovStart = 0;
  /** output offset up to which writeback has been started */
  private writebackFrom = 0;
  bytesWritten = 0;

  constructor(
    /** the output's name, for messages */
    private readonly name: string,
    private readonly fd: number,
    private readonly gaps: GapPolicy,
    /** byte offset of the volume in the output; null for a stream */
    private readonly base: number | null,
  ) {
    if (base === null && gaps !== "zeros") throw new Error("a stream can only fill gaps with zeros");
  }

  writeBatch(runs: DataRun[]): void {
    for (const run of runs) {
      if (run.offset < this.cursor) throw new Error(`runs out of order at volume offset ${run.offset}`);
      if (run.offset > this.cursor) this.gap(run.offset);
      this.push(run.data);
    }
    this.flush();
  }

  /**
   * Write everything up to volume offset `to` (the gap to it as the policy says); the bytes are
   * then at `base` + their offset in `fd`, to be read and rewritten in place below `to`.
   */
  settle(to: number): { fd: number; base: number } {
    if (this.base === null) throw new Error(`${this.name}: a stream cannot be rewritten in place`);
    this.finish(to);
    return { fd: this.fd, base: this.base };
  }

  /** Complete the volume to `size` bytes; the caller syncs and closes. */
  finish(size: number): void {
    if (size > this.cursor) this.gap(size);
    this.flush();
  }

  private gap(to: number): void {
    const length = to - this.cursor;
    // a short gap costs less as zeros inside the writev than as a flush and a syscall of its own
    if (this.gaps !== "zeros" && !(this.gaps === "allocate" && length < MIN_ALLOCATE)) {
      this.flush();
      const at = this.base! + this.cursor;
      if (this.gaps === "skip" || (this.gaps === "punch" ? punchHole(this.fd, at, length) : allocateRange(this.fd, at, length))) {
        this.cursor = to;
        this.iovStart = to;
        return;
      }
    }
    // zeros asked for, or a file system that cannot punch holes
    for (let left = length; left > 0; left -= ZEROS.length) this.push(ZEROS.subarray(0, Math.min(left, ZEROS.length)));
  }

  private push(data: Uint8Array): void {
    if (this.iov.length === 0) this.iovStart = this.cursor;
    this.iov.push(data);
    this.iovBytes += data.length;
    this.cursor += data.length;
    if (this.iov.length === MAX_IOV) this.flush();
  }

  private flush(): void {
    if (this.iov.length === 0) return;
    try {
      writeAll(this.fd, this.iov, this.iovBytes, this.base === null ? null : this.base + this.iovStart);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === "EPIPE") throw e;
      throw new OutputError(`${this.name}: cannot write at volume offset ${withCommas(this.iovStart)}: ${err.code ?? err.message}`);
    }
    this.bytesWritten += this.iovBytes;
    if (this.base !== null && this.base + this.cursor - this.writebackFrom >= WRITEBACK_STEP) {
      startWriteback(this.fd, this.writebackFrom, this.base + this.cursor - this.writebackFrom);
      this.writebackFrom = this.base + this.cursor;
    }
    this.iov = [];
    this.iovBytes = 0;
    this.iovStart = this.cursor;
  }
}

/** write until every byte is out, on a blocking or non-blocking fd */
export function writeFully(fd: number, bytes: Uint8Array): void {
  writeAll(fd, [bytes], bytes.length, null);
}

/**
 * writev until every byte is out (a pipe may take less; a non-blocking one may say EAGAIN: then wait
 * in poll). An error carries `written`: the bytes out before it.
 */
export function writeAll(fd: number, bufs: Uint8Array[], total: number, position: number | null): void {
  let done = 0;
  while (done < total) {
    let n: number;
    try {
      const pending = done === 0 ? bufs : remaining(bufs, done);
      n = position === null ? fs.writevSync(fd, pending) : fs.writevSync(fd, pending, position + done);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EAGAIN") {
        waitWritable(fd);
        continue;
      }
      throw Object.assign(e as Error, { written: done });
    }
    done += n;
  }
}

function remaining(bufs: Uint8Array[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}
