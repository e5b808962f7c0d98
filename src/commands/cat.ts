import type { Input } from "../input/input.ts";

const STEP = 8 << 20;

/**
 * Bytes [offset, offset+length) of the input's volume, clipped to its end, unused blocks as zeros,
 * handed to `sink` in order: read at random where the input can be (an index is built for a
 * compressed image), else (stdin) by reading the data front to back up to the range.
 */
export function catRange(input: Input, offset: number, length: number, sink: (bytes: Uint8Array) => void, atRandom = input.name !== "-"): void {
  if (atRandom) {
    const volume = input.openVolume();
    try {
      const end = Math.min(volume.size, offset + length);
      for (let at = offset; at < end; at += STEP) sink(volume.read(at, Math.min(STEP, end - at)));
    } finally {
      volume.close();
    }
    return;
  }
  const end = Math.min(input.size ?? Number.MAX_SAFE_INTEGER, offset + length);
  if (offset >= end) return;
  const zeros = new Uint8Array(1 << 20);
  let cursor = offset;
  const fillTo = (to: number) => {
    while (cursor < to) {
      const n = Math.min(zeros.length, to - cursor);
      sink(zeros.subarray(0, n));
      cursor += n;
    }
  };
  done: for (const batch of input.dataBatches({ verify: true })) {
    for (const run of batch) {
      const runEnd = run.offset + run.data.length;
      if (runEnd <= cursor) continue;
      if (run.offset >= end) break done;
      fillTo(Math.min(run.offset, end));
      const from = Math.max(cursor, run.offset);
      const to = Math.min(runEnd, end);
      sink(run.data.subarray(from - run.offset, to - run.offset));
      cursor = to;
      if (cursor >= end) break done;
    }
  }
  fillTo(end);
}
