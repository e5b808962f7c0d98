/** Above this resident size a full collection may run (the process target is 128 MiB in all). */
const COLLECT_ABOVE = 88 << 20;
/** ...once the process has grown this much since the last one left it. */
const COLLECT_AFTER_GROWTH = 6 << 20;

/** the resident size the last collection left (per thread: each has its own heap to collect) */
let afterLast = 0;

/**
 * Decoders and readers leave MiB-sized buffers behind that a lazy collector lets pile up: collect
 * them when the process has grown, so its memory stays bounded whatever the image size. A process
 * that stays at its size (a sequential copy reusing its buffers) gets only a quick collection of
 * its young objects: a full one of a serving thread's heap takes milliseconds, and left it as large.
 */
export function collectIfLarge(): void {
  const rss = process.memoryUsage.rss();
  if (rss <= COLLECT_ABOVE) return;
  if (rss < afterLast + COLLECT_AFTER_GROWTH) {
    Bun.gc(false);
    return;
  }
  Bun.gc(true);
  afterLast = process.memoryUsage.rss();
}
