import path from "node:path";
import type { DataRun } from "../formats/image.ts";
import { fileSystemName, HEAD_BYTES } from "../fs/open.ts";
import { findPartition, openDisk, type DiskPartitionVolume, type OpenedDisk } from "../disk/open-disk.ts";
import { type ProgressFactory, silentProgress } from "../progress.ts";
import type { SeekIndexOptions } from "../source/seek-index/open-index.ts";
import { closingWith, type Volume } from "../volume/volume.ts";
import type { Input, InputFacts, VerifyReport } from "./input.ts";

const CHUNK = 4 << 20;

/**
 * One logical volume of a disk (`DIR@vg0/root`, `disk.raw@vg0-root`): its bytes read through its
 * segments (src/lvm/), in ascending order for restore and verify, so that each LV image is decoded in
 * order.
 */
export class LogicalVolumeInput implements Input {
  readonly kind = "logical-volume";
  readonly warnings: readonly string[] = [];
  private readonly opened: OpenedDisk;
  private readonly lv: DiskPartitionVolume;

  constructor(
    readonly name: string,
    readonly path: string,
    /** "vg0/root" or the image's own name "vg0-root" */
    readonly lvName: string,
    readonly files: readonly string[],
    seekIndex: SeekIndexOptions | undefined,
  ) {
    this.opened = openDisk(path, seekIndex);
    try {
      this.lv = findPartition(this.opened, lvName);
    } catch (e) {
      this.opened.close();
      throw e;
    }
  }

  get size(): number {
    return this.lv.size;
  }

  dataBytes(): number {
    let n = 0;
    for (const e of this.lv.extents(0, this.lv.size)) if (e.data) n += e.length;
    return n;
  }

  /** Its data in order, read into one reused buffer where the volume can (a batch is valid until the next). */
  *dataBatches(): Generator<DataRun[], void, undefined> {
    const lv = this.lv;
    const buffer = lv.readInto ? new Uint8Array(CHUNK) : undefined;
    for (const e of lv.extents(0, lv.size)) {
      if (!e.data) continue;
      for (let at = e.offset; at < e.offset + e.length; at += CHUNK) {
        const n = Math.min(CHUNK, e.offset + e.length - at);
        if (buffer) lv.readInto!(at, buffer.subarray(0, n));
        yield [{ offset: at, data: buffer ? buffer.subarray(0, n) : lv.read(at, n) }];
      }
    }
  }

  openVolume(): Volume {
    return closingWith(this.lv, () => {});
  }

  identity() {
    return { name: this.lv.name, size: this.lv.size, blockSize: this.lv.blockSize, identity: this.lv.identity };
  }

  /** An LV has no checksums of its own: reading it through checks its images' checksums. */
  verify(progress?: ProgressFactory): VerifyReport {
    const bar = (progress ?? silentProgress)(this.dataBytes(), "verify");
    let dataBytes = 0;
    for (const batch of this.dataBatches()) {
      for (const run of batch) dataBytes += run.data.length;
      bar.update(dataBytes);
    }
    bar.finish(dataBytes);
    return { checksumProblems: [], otherProblems: [], checked: [`logical volume ${this.lv.partition.name}, ${dataBytes.toLocaleString("en-US")} bytes of data read through its images' checksums`], dataBytes };
  }

  describe(): InputFacts {
    const head = this.lv.read(0, Math.min(HEAD_BYTES, this.lv.size));
    const c = this.lv.partition.content;
    const images = c.kind === "image" || c.kind === "dd" ? c.pieces : [];
    return { kind: "volume", file: `${path.basename(this.path)}@${this.lv.partition.name}`, size: this.lv.size, content: fileSystemName(head) ?? "no file system imgtool recognises", compression: [], pieces: images };
  }

  close(): void {
    this.opened.close();
  }
}

/** Whether a partition spec names a logical volume rather than a partition: "vg0/root" or "vg0-root". */
export function looksLikeLogicalVolume(spec: string): boolean {
  return /^[^/]+[/-][^/]+$/.test(spec);
}
