import { ChecksumError } from "../errors.ts";
import type { ProgressFactory } from "../progress.ts";
import { silentProgress } from "../progress.ts";
import type { Image } from "./image.ts";

export interface ImageVerifyResult {
  ok: boolean;
  dataBytes: number;
  /** the first checksum that failed (one line, naming file, offset and field) */
  problems: string[];
}

/**
 * Read every block and check every checksum and count, as partclone.chkimg does. A checksum
 * that fails is the result (exit 4); with every checksum good, a header count that disagrees
 * with the bitmap is thrown as the ImageError naming its field (exit 3): one problem, one line.
 */
export function verifyImage(image: Image, progress: ProgressFactory | undefined = silentProgress): ImageVerifyResult {
  const { info } = image;
  const problems: string[] = [];
  const bar = (progress ?? silentProgress)(info.usedBlocks * info.blockSize, "verify");
  let dataBytes = 0;
  try {
    for (const batch of image.dataBatches({ verify: true })) {
      for (const run of batch) dataBytes += run.data.length;
      bar.update(dataBytes);
    }
  } catch (e) {
    if (!(e instanceof ChecksumError)) throw e;
    problems.push(e.message);
  }
  bar.finish(dataBytes);
  const inconsistent = problems.length === 0 ? image.consistencyProblems?.()[0] : undefined;
  if (inconsistent) throw inconsistent;
  return { ok: problems.length === 0, dataBytes, problems };
}
