import type { Image } from "../formats/image.ts";
import { ImageInput } from "../input/image-input.ts";
import type { Input } from "../input/input.ts";
import { openOutput, type OutputOptions, type OutputTarget } from "../output/target.ts";
import { type ProgressFactory, silentProgress } from "../progress.ts";
import { mergeOverlay, type OverlayVolume } from "../volume/overlay.ts";

export interface RestoreOptions extends Partial<Omit<OutputOptions, "volumeSize" | "inputs">> {
  /** check checksums on the way (default true) */
  verify?: boolean;
  /** told of the bytes written (default: nobody) */
  progress?: ProgressFactory;
  /** lay this overlay's changes (serve/mount --overlay) over the input's data */
  overlay?: OverlayVolume;
  /** what a signal says it removed (default: nothing is said) */
  onSignal?: (signal: string, removed: string) => void;
}

export interface RestoreResult {
  /** bytes of used data written */
  dataBytes: number;
  volumeSize: number;
  output: string;
}

/**
 * Write the raw volume of `image` to `out` (a path, or "-" for stdout): restoreInput for an Image
 * opened by the caller (who still closes it).
 */
export function restoreImage(image: Image, out: string, opts: RestoreOptions = {}): RestoreResult {
  return restoreInput(new ImageInput(image.info.pieces[0] ?? "-", image, undefined, "restore"), out, opts);
}

/**
 * Write the input (an image's volume, a disk, a partition) to `out` (a path, or "-" for stdout). A
 * new file is written unnamed (or as OUT.partial where the file system cannot) and named OUT only
 * once complete and fsynced; on any error nothing is left.
 */
export function restoreInput(input: Input, out: string, opts: RestoreOptions = {}): RestoreResult {
  const steps = restoreSteps(input, out, opts, () => {});
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

/** How often a restore that must clean up after a signal lets the signal handlers run. */
const SIGNAL_CHECK_MS = 50;
const SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;

/**
 * restoreInput for the command line: a visible OUT.partial is removed on SIGINT, SIGTERM and
 * SIGHUP, then the process exits with 128 + the signal's number. (An unnamed file needs no
 * handler: the kernel frees it when the process dies, so the signals keep their default action.)
 */
export async function restoreInterruptibly(input: Input, out: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  let target: OutputTarget | undefined;
  // asked for OUT.partial: the handlers are there before it is created, so no signal finds it unguarded
  let uninstall = opts.unnamed === false ? removeOnSignal(() => target, opts.onSignal) : () => {};
  const steps = restoreSteps(input, out, opts, (opened) => {
    target = opened;
    if (opened.partialPath !== undefined && opts.unnamed !== false) uninstall = removeOnSignal(() => target, opts.onSignal);
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

function removeOnSignal(target: () => OutputTarget | undefined, onSignal: RestoreOptions["onSignal"]): () => void {
  const handlers = Object.entries(SIGNALS).map(([name, number]) => {
    const handler = () => {
      const t = target();
      if (t?.partialPath !== undefined) {
        t.abort();
        onSignal?.(name, t.partialPath);
      }
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
 * opening (headers, tables, the scan that sizes an ntfsclone volume) ran before the output exists;
 * from the moment it exists, every way out goes through the `finally` that removes it.
 */
function* restoreSteps(input: Input, out: string, opts: RestoreOptions, opened: (target: OutputTarget) => void): Generator<void, RestoreResult> {
  const target = openOutput(out, {
    sparse: opts.sparse ?? false,
    force: opts.force ?? false,
    outputOffset: opts.outputOffset ?? 0,
    unnamed: opts.unnamed,
    volumeSize: input.size,
    inputs: input.files,
  });
  let committed = false;
  try {
    opened(target);
    const progress = opts.progress ? opts.progress(input.dataBytes(), "restore") : silentProgress(undefined, "restore");
    let dataBytes = 0;
    let end = 0;
    const batches = input.dataBatches({ verify: opts.verify !== false, written: { settle: (to) => target.writer.settle(to) } });
    for (const batch of opts.overlay ? mergeOverlay(batches, opts.overlay) : batches) {
      target.writer.writeBatch(batch);
      for (const run of batch) {
        dataBytes += run.data.length;
        end = Math.max(end, run.offset + run.data.length);
      }
      progress.update(dataBytes);
      yield;
    }
    // a raw volume from a compressed pipe is as long as its bytes were
    const size = input.size ?? end;
    target.commit(size);
    committed = true;
    progress.finish(dataBytes);
    return { dataBytes, volumeSize: size, output: target.name };
  } finally {
    if (!committed) target.abort();
  }
}
