/**
 * An image read in ascending order from its decoded stream, at random only when a read goes back. A PV lays
 * its LVs' images out at their extents and `restore` reads the PV in one ascending pass, so each LV image is
 * decoded straight through (threaded, checksums verified) instead of through a seek index; serve and mount,
 * which may go back, open the image with its seek index on the first such read.
 */
import type { DataRun, Image } from "../formats/image.ts";

const HEAD = 64 << 10;

/** `stream`: the image opened for reading in order; `random`: the same opened for random access, on first need. */
export function ascendingImage(stream: Image, random: () => Image): Image {
  let batches: Generator<DataRun[], void, undefined> | undefined;
  /** runs not consumed yet (copies: a batch's buffers are reused once the generator moves on) */
  let pending: DataRun[] = [];
  let pos = 0;
  let done = false;
  let randomImage: Image | undefined;
  const size = stream.info.deviceSize;
  let streamClosed = false;
  /** past the last used block the stream has nothing more: closed there, its buffers released */
  let lastUsedEnd = 0;
  for (const r of stream.usedRuns()) lastUsedEnd = (r.firstBlock + r.blockCount) * stream.info.blockSize;
  const closeStream = () => {
    if (streamClosed) return;
    streamClosed = true;
    done = true;
    pending = [];
    batches?.return();
    stream.close();
  };

  const nextRuns = (): boolean => {
    if (done) return false;
    batches ??= stream.dataBatches({ verify: true });
    const r = batches.next();
    if (r.done) {
      done = true;
      return false;
    }
    pending = r.value.map((run) => ({ offset: run.offset, data: run.data }));
    return true;
  };

  /** the volume's first bytes, kept: its first sector is looked at (NTFS backup boot sector) before the pass starts */
  let head: Uint8Array | undefined;
  const read = (offset: number, length: number): Uint8Array => {
    if (!head && pos === 0 && offset < HEAD) head = streamed(0, Math.min(HEAD, size));
    if (head && offset < head.length) {
      const out = new Uint8Array(length);
      const n = Math.min(length, head.length - offset);
      out.set(head.subarray(offset, offset + n));
      if (n < length) out.set(read(offset + n, length - n), n);
      return out;
    }
    if (offset < pos) {
      randomImage ??= random();
      return randomImage.read!(offset, length);
    }
    return streamed(offset, length);
  };

  const streamed = (offset: number, length: number): Uint8Array => {
    const out = new Uint8Array(length);
    const end = offset + length;
    for (;;) {
      if (pending.length === 0 && !nextRuns()) break;
      let i = 0;
      for (; i < pending.length; i++) {
        const run = pending[i]!;
        const runEnd = run.offset + run.data.length;
        if (runEnd <= offset) continue;
        if (run.offset >= end) break;
        const from = Math.max(offset, run.offset);
        const to = Math.min(end, runEnd);
        out.set(run.data.subarray(from - run.offset, to - run.offset), from - offset);
        if (runEnd > end) {
          pending[i] = { offset: end, data: run.data.subarray(end - run.offset) };
          break;
        }
      }
      pending = pending.slice(i);
      if (pending.length) {
        // what is left of this batch outlives it
        pending = pending.map((run) => ({ offset: run.offset, data: run.data.slice() }));
        break;
      }
    }
    pos = Math.min(end, size);
    if (pos >= lastUsedEnd) closeStream();
    return out;
  };

  return new Proxy(stream, {
    get(target, prop, receiver) {
      if (prop === "read") return read;
      if (prop === "readInto") return undefined;
      if (prop === "close")
        return () => {
          randomImage?.close();
          closeStream();
        };
      const v = Reflect.get(target, prop, receiver);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}
