import fs from "node:fs";
import type { Image } from "../formats/image.ts";
import { Progress } from "../output/progress.ts";
import { openOutput, type OutputOptions, type OutputTarget } from "../output/target.ts";
import { mergeOverlay, type OverlayVolume } from "../volume/overlay.ts";

export interface RestoreOptions extends Partial<Omit<OutputOptions, "volumeSize" | "inputs">> {
  /** check checksums on the way (default true) */
  verify?: boolean;
  /** show a progress bar (default: when stderr is a terminal) */
  progress?: boolean;
  /** how the image was named on the command line ("-" for stdin): the output must not be it */
  input?: string;
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
 * Write the raw volume of `image` to `out` (a path, or "-" for stdin). A new file is written
 * unnamed (or as OUT.partial where the file system cannot) and named OUT only once complete and
 * fsynced; on any error nothing is left.
 */
export function restoreImage(image: Image, out: string, opts: RestoreOptions = {}): RestoreResult {
  const steps = restoreSteps(image, out, opts, () => {});
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

/** How often a restore that must clean up after a signal lets the signal handlers run. */
const SIGNAL_CHECK_MS = 50;
const SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;

/**
 * restoreImage for the command line: a visible OUT.partial is removed on SIGINT, SIGTERM and
 * SIGHUP, then the process exits with 128 + the signal's number. (An unnamed file needs no
 * handler: the kernel frees it when the process dies, so the signals keep their default action.)
 */
export async function restoreImageInterruptibly(image: Image, out: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  let uninstall = () => {};
  const steps = restoreSteps(image, out, opts, (target) => {
    if (target.partialPath !== undefined) uninstall = removeOnSignal(target);
  });
  try {
    let paused = performance.now();
    for (;;) {
      const step = steps.next();
      if (step.done) return step.value;
      const now = performance.now();
      if (now - paused >= SIGNAL_CHECK_MS) {
        // signal handlers run only when the event loop turns
        await new Promise((resolve) => setImmediate(resolve));
        paused = performance.now();
      }
    }
  } finally {
    uninstall();
  }
}

function removeOnSignal(target: OutputTarget): () => void {
  const handlers = Object.entries(SIGNALS).map(([name, number]) => {
    const handler = () => {
      target.abort();
      process.stderr.write(`${process.stderr.isTTY ? "\n" : ""}imgtool: stopped by ${name}; ${target.partialPath} removed\n`);
      process.exit(128 + number);
    };
    process.on(name, handler);
    return [name, handler] as const;
  });
  return () => {
    for (const [name, handler] of handlers) process.off(name, handler);
  };
}

/**
 * One restore as a generator that yields after each batch written. Everything that can fail on
 * the header (and, for ntfsclone, the scan that sizes the volume) runs before the output exists;
 * from the moment it exists, every way out goes through the `finally` that removes it.
 */
function* restoreSteps(image: Image, out: string, opts: RestoreOptions, opened: (target: OutputTarget) => void): Generator<void, RestoreResult> {
  const { info } = image;
  const volumeSize = info.deviceSize;
  const usedBytes = info.usedBlocks * info.blockSize;
  const target = openOutput(out, {
    sparse: opts.sparse ?? false,
    force: opts.force ?? false,
    outputOffset: opts.outputOffset ?? 0,
    unnamed: opts.unnamed,
    volumeSize,
    inputs: inputsOf(image, opts.input),
  });
  let committed = false;
  try {
    opened(target);
    const progress = new Progress(usedBytes, "restore", opts.progress);
    let dataBytes = 0;
    const batches = image.dataBatches({ verify: opts.verify !== false });
    for (const batch of opts.overlay ? mergeOverlay(batches, opts.overlay) : batches) {
      target.writer.writeBatch(batch);
      for (const run of batch) dataBytes += run.data.length;
      progress.update(dataBytes);
      yield;
    }
    target.commit(info.deviceSize);
    committed = true;
    progress.finish(dataBytes);
    return { dataBytes, volumeSize: info.deviceSize, output: target.name };
  } finally {
    if (!committed) target.abort();
  }
}

/** Every file the image is read from: the pieces of a split set, the volumes of a partimage set, stdin. */
function inputsOf(image: Image, input: string | undefined): string[] {
  if (input === "-") return ["-"];
  const files = [...image.info.pieces];
  if (input !== undefined) files.push(input);
  // partimage finds NAME.001, NAME.002 ... by name while it reads
  for (const piece of image.info.pieces) {
    const m = /^(.*)\.(\d{3,})$/.exec(piece);
    if (!m) continue;
    for (let n = 0; n < 1000; n++) {
      const sibling = `${m[1]}.${String(n).padStart(m[2]!.length, "0")}`;
      if (!fs.existsSync(sibling)) break;
      files.push(sibling);
    }
  }
  return files;
}
