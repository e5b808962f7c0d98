import fs from "node:fs";
import path from "node:path";
import { fuseMissing } from "../../native/fuse.ts";
import { O_TMPFILE } from "../../native/libc.ts";
import { diskDataBatches, diskSpan } from "../disk/disk-data.ts";
import { type DiskLayout, type DiskPartition, bytesVolume, composeVolume, partitionVolume } from "../disk/disk-volume.ts";
import type { DataRun } from "../formats/image.ts";
import { buildMbr, DEFAULT_GEOMETRY } from "../disk/mbr.ts";
import { StoppedBySignal, withCommas } from "../errors.ts";
import { OutputError } from "../output/writer.ts";
import { mountVolume } from "../serve/fuse.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { checkRange, type Volume, type WritableVolume } from "../volume/volume.ts";
import { FLAG_COUNT, RESULT_OFFSET, type ToolCommand, ToolFlag, type ToolThreadJob, type ToolThreadReport } from "./tool-job.ts";
import { workerEntry } from "../worker-entry.ts";

/** Where a FAT volume sits in its view: behind a one-partition MBR, 1 MiB aligned (fatresize works on a partition of a disk). */
export const FAT_OFFSET = 1 << 20;
const SS = 512;
/** what zero() writes from, a piece at a time (a range may be the whole volume) */
const ZEROS = new Uint8Array(1 << 20);

/** The one-partition disk head a FAT view starts with: MBR and zeros up to FAT_OFFSET. */
function fatDiskHead(volumeBytes: number): Uint8Array {
  const head = new Uint8Array(FAT_OFFSET);
  head.set(buildMbr([{ number: 1, bootable: false, type: 0x0c, start: FAT_OFFSET / SS, size: volumeBytes / SS }], 0, DEFAULT_GEOMETRY));
  return head;
}

/**
 * The file a resize tool works on: a partition's volume, behind a disk head for FAT (`offset`
 * bytes; `partition` is the number fatresize is told), read and written in place through `volume`
 * when the tool is not running.
 */
export interface ToolView {
  volume: Volume | WritableVolume;
  offset: number;
  partition: number;
  /** the volume's size in bytes (without the head) */
  size: number;
}

/**
 * A partition as its image holds it, read-only, for the tools that measure (resize2fs -P,
 * ntfsresize --info, fatresize -i): nothing restored; what they read is decoded in order from
 * the image's start (they read their metadata near it), at random through the seek index past that.
 */
export function imageView(layout: DiskLayout, p: DiskPartition, fat: boolean, seekIndex: SeekIndexOptions | undefined): ToolView {
  const inner = new InOrderVolume(layout, p, () => partitionVolume(layout, p, seekIndex));
  if (!fat) return { volume: inner, offset: 0, partition: 1, size: p.size };
  const head = bytesVolume(`${p.name} disk head`, fatDiskHead(p.size), SS);
  const volume = composeVolume(`${layout.name} ${p.name}`, FAT_OFFSET + p.size, SS, [{ offset: 0, volume: head }, { offset: FAT_OFFSET, volume: inner }]);
  return { volume, offset: FAT_OFFSET, partition: 1, size: p.size };
}

/** decoded data an InOrderVolume keeps before it turns to random access */
const IN_ORDER_BYTES = 64 << 20;

/**
 * A partition read from its image in order, as far as reads reach: the data decoded so far is
 * kept (at most `keepBytes` of it), so reads near the start cost a few MiB of decoding instead
 * of a seek index (a decoding pass over the whole image). A read past what may be kept goes to
 * `random` (the partition read at random), opened then.
 */
export class InOrderVolume implements Volume {
  readonly size: number;
  readonly name: string;
  readonly blockSize: number;
  private readonly runs: DataRun[] = [];
  /** the volume is decoded up to here */
  private frontier = 0;
  private kept = 0;
  private readonly batches: Iterator<DataRun[]>;
  private randomAccess: Volume | undefined;

  constructor(
    layout: DiskLayout,
    p: DiskPartition,
    private readonly random: () => Volume,
    private readonly keepBytes = IN_ORDER_BYTES,
  ) {
    this.size = p.size;
    this.name = `${layout.name} ${p.name}`;
    this.blockSize = layout.sectorSize;
    this.batches = diskDataBatches(diskSpan(layout, p), false)[Symbol.iterator]();
  }

  read(offset: number, length: number): Uint8Array {
    checkRange(this, offset, length);
    const end = offset + length;
    while (this.frontier < end && this.kept < this.keepBytes) this.decodeMore();
    if (this.frontier < end) {
      this.randomAccess ??= this.random();
      return this.randomAccess.read(offset, length);
    }
    const out = new Uint8Array(length);
    // the first run that ends past offset
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const r = this.runs[mid]!;
      if (r.offset + r.data.length <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.runs.length && this.runs[i]!.offset < end; i++) {
      const r = this.runs[i]!;
      const a = Math.max(offset, r.offset);
      const b = Math.min(end, r.offset + r.data.length);
      out.set(r.data.subarray(a - r.offset, b - r.offset), a - offset);
    }
    return out;
  }

  *extents(offset: number, length: number) {
    checkRange(this, offset, length);
    if (length > 0) yield { offset, length, data: true };
  }

  close(): void {
    this.batches.return?.();
    this.randomAccess?.close();
  }

  private decodeMore(): void {
    const next = this.batches.next();
    if (next.done) {
      this.frontier = this.size;
      return;
    }
    for (const r of next.value) {
      // the image's reader may reuse its buffers for the next batch
      this.runs.push({ offset: r.offset, data: r.data.slice() });
      this.kept += r.data.length;
      this.frontier = Math.max(this.frontier, r.offset + r.data.length);
    }
  }
}

/**
 * A partition being resized in place: a `bytes`-byte volume (behind a disk head for FAT) whose
 * first `kept` bytes are the target's (`at` bytes into the open descriptor `fd`, once placed) and
 * whose rest lives in a sparse unnamed file in `tmpDir` (only the blocks written there take room).
 * Shrinking, `kept` is the new size: the tool moves what lies beyond it into the kept part;
 * growing, all of it is kept.
 */
export class SplitView implements WritableVolume {
  readonly blockSize = SS;
  readonly size: number;
  readonly name: string;
  private readonly head: Uint8Array;
  private readonly overlay: number | undefined;
  private fd = -1;
  private at = 0;

  constructor(
    name: string,
    private readonly bytes: number,
    private readonly kept: number,
    fat: boolean,
    tmpDir: string,
  ) {
    this.name = name;
    this.head = fat ? fatDiskHead(bytes) : new Uint8Array(0);
    this.size = this.head.length + bytes;
    this.overlay = kept < bytes ? unnamedFile(tmpDir) : undefined;
  }

  /** Where the kept part is: `at` bytes into `fd`. */
  place(fd: number, at: number): void {
    this.fd = fd;
    this.at = at;
  }

  get view(): ToolView & { volume: WritableVolume } {
    return { volume: this, offset: this.head.length, partition: 1, size: this.bytes };
  }

  /** Data of the volume at `offset`, at or past `kept`: into the overlay. */
  writeBeyond(offset: number, data: Uint8Array): void {
    if (this.overlay === undefined || offset < this.kept) throw new Error(`${this.name}: ${offset} is not beyond the kept ${this.kept} bytes`);
    this.io("write", "the overlay in --tmp-dir", offset, () => writeFull(this.overlay!, data, offset - this.kept));
  }

  /** A read or write of the target or the overlay, whose failure names the view and the offset (the call names neither). */
  private io(what: "read" | "write", of: string, offset: number, body: () => void): void {
    try {
      body();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      throw new OutputError(`${this.name}: cannot ${what} ${of} at volume offset ${withCommas(offset)}: ${code}`);
    }
  }

  private whereName(where: number): string {
    return where === this.overlay ? "the overlay in --tmp-dir" : "the target";
  }

  read(offset: number, length: number): Uint8Array {
    checkRange(this, offset, length);
    const out = new Uint8Array(length);
    this.each(offset, length, (where, pos, from, n) => {
      if (where === "head") out.set(this.head.subarray(pos, pos + n), from);
      else this.io("read", this.whereName(where), offset + from, () => readFull(where, out.subarray(from, from + n), pos));
    });
    return out;
  }

  write(offset: number, data: Uint8Array): void {
    checkRange(this, offset, data.length);
    this.each(offset, data.length, (where, pos, from, n) => {
      if (where === "head") this.head.set(data.subarray(from, from + n), pos);
      else this.io("write", this.whereName(where), offset + from, () => writeFull(where, data.subarray(from, from + n), pos));
    });
  }

  zero(offset: number, length: number): void {
    checkRange(this, offset, length);
    for (let at = offset; at < offset + length; at += ZEROS.length) this.write(at, ZEROS.subarray(0, Math.min(ZEROS.length, offset + length - at)));
  }

  *extents(offset: number, length: number) {
    checkRange(this, offset, length);
    if (length > 0) yield { offset, length, data: true };
  }

  // the target is made durable when the restore commits; the overlay is dropped
  flush(): void {}

  close(): void {
    if (this.overlay !== undefined) fs.closeSync(this.overlay);
  }

  /** Split [offset, offset + length) of the view into the head, the target's part and the overlay's. */
  private each(offset: number, length: number, part: (where: "head" | number, pos: number, from: number, n: number) => void): void {
    const h = this.head.length;
    if (this.fd < 0) throw new Error(`${this.name}: read before it was placed`);
    const bounds: [number, number, "head" | number, number][] = [
      [0, h, "head", 0],
      [h, h + this.kept, this.fd, this.at - h],
      [h + this.kept, h + this.bytes, this.overlay ?? -1, -(h + this.kept)],
    ];
    for (const [start, end, where, shift] of bounds) {
      const a = Math.max(offset, start);
      const b = Math.min(offset + length, end);
      if (a < b) part(where, a + shift, a - offset, b - a);
    }
  }
}

function unnamedFile(dir: string): number {
  try {
    return fs.openSync(dir, O_TMPFILE | fs.constants.O_RDWR, 0o600);
  } catch {
    // no O_TMPFILE on this file system: a named file, unlinked at once
    const file = path.join(fs.mkdtempSync(path.join(dir, "imgtool-fit-")), "overlay");
    const fd = fs.openSync(file, "w+", 0o600);
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
    return fd;
  }
}

function readFull(fd: number, into: Uint8Array, position: number): void {
  let got = 0;
  while (got < into.length) {
    const n = fs.readSync(fd, into, got, into.length - got, position + got);
    // past the end of the sparse overlay: zeros, as the fresh array holds
    if (n === 0) break;
    got += n;
  }
}

function writeFull(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, position + done);
}

/** Why a view cannot be mounted here, naming what to install; undefined when it can. */
export function viewUnavailable(searchPath: string): string | undefined {
  const missing = fuseMissing();
  if (missing) return missing;
  if (!Bun.which("fusermount3", { PATH: searchPath })) return "FUSE needs fusermount3, which is not installed (apt-get install fuse3)";
  if (!fs.existsSync("/dev/fuse")) return "FUSE needs /dev/fuse, which this system does not have (modprobe fuse)";
  return undefined;
}

const RESULT_BYTES = 4 << 20;
const THREAD_START_MS = 30_000;
const THREAD_END_MS = 60_000;

/**
 * Mount `view` as the file `name` in a fresh directory of `tmpDir`, run `commands` (each given the
 * file's path where its argv says FILE) on a thread of their own while this one serves the file,
 * then unmount and remove the directory. Returns each command's result (stopped at the first that
 * failed). A signal ends the mount: StoppedBySignal.
 */
export function runOnView(view: ToolView, name: string, tmpDir: string, searchPath: string, commands: ToolCommand[]): ToolThreadReport {
  const dir = fs.mkdtempSync(path.join(tmpDir, "imgtool-fit-"));
  const file = path.join(dir, name);
  const shared = new SharedArrayBuffer(RESULT_OFFSET + RESULT_BYTES);
  const flags = new Int32Array(shared, 0, FLAG_COUNT);
  const worker = new Worker(workerEntry("fit/tool-thread.ts"), { smol: true });
  // its end is awaited through the shared flags, never through the event loop
  worker.unref();
  try {
    const fusermount = Bun.which("fusermount3", { PATH: searchPath }) ?? "fusermount3";
    const job: ToolThreadJob = { commands: commands.map((c) => ({ ...c, argv: c.argv.map((a) => (a === FILE ? file : a)) })), unmount: [fusermount, "-u", dir], shared };
    worker.postMessage(job);
    if (Atomics.wait(flags, ToolFlag.started, 0, THREAD_START_MS) === "timed-out") throw new Error("the thread that runs the resize tools did not start");
    const writable = "write" in view.volume ? (view.volume as WritableVolume) : undefined;
    let callbackError: unknown;
    let end;
    try {
      end = mountVolume(view.volume, dir, {
        name,
        source: view.volume.name,
        mtimeMs: Date.now(),
        writable,
        allowOther: false,
        onMounted: () => {
          Atomics.store(flags, ToolFlag.mounted, 1);
          Atomics.notify(flags, ToolFlag.mounted);
        },
        onReadError: (e) => {
          callbackError ??= e;
        },
      });
    } finally {
      if (Atomics.load(flags, ToolFlag.mounted) === 0) {
        Atomics.store(flags, ToolFlag.mounted, -1);
        Atomics.notify(flags, ToolFlag.mounted);
      }
    }
    // the view is gone: a tool still running is ended rather than left to fail on it
    const endTool = () => {
      const child = Atomics.load(flags, ToolFlag.child);
      if (child > 0) process.kill(child, "SIGTERM");
    };
    if (end.by === "signal") {
      endTool();
      throw new StoppedBySignal(end.signal);
    }
    if (Atomics.wait(flags, ToolFlag.done, 0, THREAD_END_MS) === "timed-out") {
      endTool();
      throw new Error(`${name}: the resize tool did not end after its view was unmounted`);
    }
    const bytes = new Uint8Array(shared, RESULT_OFFSET, Atomics.load(flags, ToolFlag.resultBytes)).slice();
    const report = JSON.parse(new TextDecoder().decode(bytes)) as ToolThreadReport;
    // the image or the target failed under the tool (which then saw EIO): that is the error to report
    if (callbackError !== undefined) throw callbackError;
    return report;
  } finally {
    worker.terminate();
    // never recursive: were the view still mounted, this fails instead of reaching into it
    fs.rmdirSync(dir);
  }
}

/** Stands for the view's path in a command's argv. */
export const FILE = "\0view";
