import { ChecksumError } from "../errors.ts";
import type { Image } from "../formats/image.ts";
import { Progress } from "../output/progress.ts";

export interface VerifyResult {
  ok: boolean;
  dataBytes: number;
  /** the first checksum that failed, and header facts that disagree with the data */
  problems: string[];
}

/** Read every block and check every checksum and count, as partclone.chkimg does. */
export function verifyImage(image: Image, opts: { progress?: boolean } = {}): VerifyResult {
  const { info } = image;
  const problems = image.consistencyProblems?.() ?? [];
  const progress = new Progress(info.usedBlocks * info.blockSize, "verify", opts.progress);
  let dataBytes = 0;
  try {
    for (const batch of image.dataBatches({ verify: true })) {
      for (const run of batch) dataBytes += run.data.length;
      progress.update(dataBytes);
    }
  } catch (e) {
    if (!(e instanceof ChecksumError)) throw e;
    problems.push(e.message);
  }
  progress.finish(dataBytes);
  return { ok: problems.length === 0, dataBytes, problems };
}
