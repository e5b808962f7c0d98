import { ChecksumError, EXIT, ImageError, StoppedBySignal, UsageError } from "../errors.ts";
import { Progress } from "./progress-bar.ts";
import type { IndexProgress, SeekIndexOptions } from "../source/seek-index/open-index.ts";

/** A progress bar on stderr (when it is a terminal) for each seek index build it is told about. */
export function indexProgressBar(): IndexProgress {
  let bar: Progress | undefined;
  return (done, total, compression) => {
    bar ??= new Progress(total, `indexing ${compression}`);
    if (done < total) return bar.update(done);
    bar.finish(total);
    bar = undefined;
  };
}

/** serve, mount, cat and ls/get/extract: a compressed image is read through its seek index, built on first use. */
export const BUILD_SEEK_INDEX: SeekIndexOptions = { mode: "build", onProgress: indexProgressBar(), threads: process.env.IMGTOOL_THREADS !== "0" };

/**
 * Run a command body; turn every error into one line `imgtool: ...` and an exit code.
 * `--debug` (or IMGTOOL_DEBUG=1) prints the stack as well.
 */
export async function guard(body: () => void | number | Promise<void | number>): Promise<void> {
  let code: number = EXIT.OK;
  try {
    code = (await body()) ?? EXIT.OK;
  } catch (e) {
    const err = e as Error;
    if ((e as NodeJS.ErrnoException).code === "EPIPE") {
      // the reader of our stdout went away (| head): not an error of ours
      process.exit(EXIT.OK);
    }
    // an error of a program imgtool ran (a resize tool) carries what it printed: shown before the line
    const output = (e as { output?: unknown }).output;
    if (typeof output === "string" && output !== "") process.stderr.write(output.endsWith("\n") ? output : `${output}\n`);
    process.stderr.write(`imgtool: ${err.message?.split("\n")[0] ?? String(e)}\n`);
    if (process.argv.includes("--debug") || process.env.IMGTOOL_DEBUG === "1") process.stderr.write(`${err.stack}\n`);
    code =
      e instanceof StoppedBySignal ? 128 + e.signal
      : e instanceof ChecksumError ? EXIT.CHECKSUM
      : e instanceof ImageError ? EXIT.BAD_INPUT
      : e instanceof UsageError ? EXIT.USAGE
      : EXIT.FAILURE;
  }
  process.exitCode = code;
  if (code !== EXIT.OK) process.exit(code);
}

/** A non-negative byte count from the command line: 4096, 1M, 2G (binary multiples). */
export function parseBytes(text: string | undefined, option: string): number {
  if (text === undefined || text === "") return 0;
  const m = /^(\d+)([kmgt]i?b?)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${option}: not a byte count: ${JSON.stringify(text)}`);
  const unit = (m[2] ?? "").toLowerCase()[0];
  const scale = unit === "k" ? 1024 : unit === "m" ? 1024 ** 2 : unit === "g" ? 1024 ** 3 : unit === "t" ? 1024 ** 4 : 1;
  const v = Number(m[1]) * scale;
  if (!Number.isSafeInteger(v)) throw new UsageError(`${option}: too large: ${text}`);
  return v;
}
