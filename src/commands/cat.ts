import type { Image } from "../formats/image.ts";

/**
 * Bytes [offset, offset+length) of the volume, unused blocks as zeros, handed to `sink` in order.
 * Uses the image's block index where it has one; otherwise reads the image front to back.
 */
export function catRange(image: Image, offset: number, length: number, sink: (bytes: Uint8Array) => void): void {
  const end = Math.min(image.info.deviceSize, offset + length);
  if (offset >= end) return;
  const step = 8 << 20;
  if (image.read) {
    for (let at = offset; at < end; at += step) sink(image.read(at, Math.min(step, end - at)));
    return;
  }
  const zeros = new Uint8Array(1 << 20);
  let cursor = offset;
  const fillTo = (to: number) => {
    while (cursor < to) {
      const n = Math.min(zeros.length, to - cursor);
      sink(zeros.subarray(0, n));
      cursor += n;
    }
  };
  for (const run of image.dataRuns({ verify: true })) {
    const runEnd = run.offset + run.data.length;
    if (runEnd <= cursor) continue;
    if (run.offset >= end) break;
    fillTo(Math.min(run.offset, end));
    const from = Math.max(cursor, run.offset);
    const to = Math.min(runEnd, end);
    sink(run.data.subarray(from - run.offset, to - run.offset));
    cursor = to;
    if (cursor >= end) break;
  }
  fillTo(end);
}
