/** Above this resident size a full collection runs (the process target is 128 MiB in all). */
const COLLECT_ABOVE = 88 << 20;

/**
 * Decoders and readers leave MiB-sized buffers behind that a lazy collector lets pile up: collect
 * them when the process has grown, so its memory stays bounded whatever the image size.
 */
export function collectIfLarge(): void {
  if (process.memoryUsage.rss() > COLLECT_ABOVE) Bun.gc(true);
}
