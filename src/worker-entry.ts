/**
 * The script of a worker thread, by its path under src/: from source it sits there, next to this
 * file; in the standalone executable (`bun build --compile` with each worker as an entry point of
 * its own) it is addressed from the bundle's root, which is src/.
 */
export function workerEntry(pathUnderSrc: string): string {
  return import.meta.url.startsWith("file:///$bunfs/") ? `./${pathUnderSrc}` : new URL(`./${pathUnderSrc}`, import.meta.url).href;
}
