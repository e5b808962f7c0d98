import type { Image } from "../formats/image.ts";
import { Progress } from "../output/progress.ts";
import { openOutput, type OutputOptions } from "../output/target.ts";
import { mergeOverlay, type OverlayVolume } from "../volume/overlay.ts";

export interface RestoreOptions extends Partial<OutputOptions> {
  /** check checksums on the way (default true) */
  verify?: boolean;
  /** show a progress bar (default: when stderr is a terminal) */
  progress?: boolean;
  /** lay this overlay's changes (serve/mount --overlay) over the image's data */
  overlay?: OverlayVolume;
}

export interface RestoreResult {
  /** bytes of used data written */
  dataBytes: number;
  volumeSize: number;
  output: string;
}

/**
 * Write the raw volume of `image` to `out` (a path, or "-" for stdout). A regular file is
 * written as OUT.partial and renamed only once complete and fsynced; on any error the
 * partial file is removed.
 */
export function restoreImage(image: Image, out: string, opts: RestoreOptions = {}): RestoreResult {
  const target = openOutput(out, { sparse: opts.sparse ?? false, force: opts.force ?? false, outputOffset: opts.outputOffset ?? 0 });
  const { info } = image;
  const progress = new Progress(info.usedBlocks * info.blockSize, "restore", opts.progress);
  let dataBytes = 0;
  try {
    const batches = image.dataBatches({ verify: opts.verify !== false });
    for (const batch of opts.overlay ? mergeOverlay(batches, opts.overlay) : batches) {
      target.writer.writeBatch(batch);
      for (const run of batch) dataBytes += run.data.length;
      progress.update(dataBytes);
    }
    target.commit(info.deviceSize);
  } catch (e) {
    target.abort();
    throw e;
  }
  progress.finish(dataBytes);
  return { dataBytes, volumeSize: info.deviceSize, output: target.name };
}
