/** Thousands separators, as partclone.info prints counts: 1,048,576. */
export function withCommas(n: number | bigint): string {
  return n.toLocaleString("en-US");
}

/**
 * Bad input: names the file, the absolute byte offset and the field.
 * The CLI prints `imgtool: <message>` on one line and exits with EXIT.BAD_INPUT.
 */
export class ImageError extends Error {
  constructor(
    readonly where: Location,
    readonly field: string,
    readonly detail?: string,
  ) {
    super(`${describeLocation(where)}: ${field}${detail ? ` (${detail})` : ""}`);
    this.name = "ImageError";
  }
}

/**
 * Where a byte is: a file and an offset in it, or, behind a decompressor, an offset in the
 * decompressed stream of that file (`decoded` names the compression).
 */
export interface Location {
  file: string;
  offset?: number;
  decoded?: string;
}

export function describeLocation(l: Location): string {
  if (l.offset === undefined) return l.file;
  return `${l.file}: ${l.decoded ? `${l.decoded}-decompressed offset` : "offset"} ${withCommas(l.offset)}`;
}

/** A checksum that does not hold; a distinct class so `verify` can report it as such. */
export class ChecksumError extends ImageError {
  override name = "ChecksumError";
}

/** The user asked for something that cannot be done (existing output, bad option). */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * A signal (SIGINT, SIGTERM, SIGHUP) ended a step that blocks the event loop (a FUSE loop); what
 * the step had made is undone. The process ends with 128 + the signal's number, as the signal would.
 */
export class StoppedBySignal extends Error {
  override name = "StoppedBySignal";
  constructor(readonly signal: number) {
    // node:os only here: errors.ts is loaded by every thread, and this is made at most once a run
    const { signals } = (require("node:os") as typeof import("node:os")).constants;
    const name = Object.entries(signals).find(([, n]) => n === signal)?.[0] ?? `signal ${signal}`;
    super(`stopped by ${name}`);
  }
}

/** Exit codes, documented in README.md. */
export const EXIT = {
  OK: 0,
  /** the command failed for another reason (I/O error on the output, ...) */
  FAILURE: 1,
  /** bad command line or refused action (output exists without --force) */
  USAGE: 2,
  /** the input is not a readable image/stream, or is damaged */
  BAD_INPUT: 3,
  /** a checksum did not match */
  CHECKSUM: 4,
  /** partial: the command finished, but some entries or metadata could not be written (each named on stderr) */
  PARTIAL: 5,
} as const;

/** Bytes for a message: printable ASCII as is, backslash doubled, the rest as \xNN (as lstree.py). */
export function printable(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b === 0x5c ? "\\\\" : b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
  return out;
}
