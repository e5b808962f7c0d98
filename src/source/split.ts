import fs from "node:fs";
import path from "node:path";
import { ImageError, type Location } from "../errors.ts";
import { PositionedSource } from "./chunk-source.ts";
import { FileSource, openFileSource } from "./file.ts";

/**
 * `split -b` suffixes as coreutils makes them: aa..yz, then zaaa..yzzz, then zzaaaa..., so that
 * names sort in order. Returns the n-th (0-based) suffix.
 */
export function splitSuffix(n: number): string {
  let width = 2;
  let count = 26 ** width;
  let prefix = "";
  // each widening spends the last 26^(w-1) names of the old width on a "z" prefix
  while (n >= count - 26 ** (width - 1)) {
    n -= count - 26 ** (width - 1);
    prefix += "z";
    width += 1;
    count = 26 ** width;
  }
  let s = "";
  for (let i = 0; i < width; i++) {
    s = String.fromCharCode(97 + (n % 26)) + s;
    n = Math.floor(n / 26);
  }
  return prefix + s;
}

const SUFFIX = /\.(z*[a-y][a-z]|[a-z]{2})$/;

/**
 * The pieces of a split set named by any piece or by the name before the suffix, in order;
 * undefined when `p` is not part of one. A gap in the sequence is an error naming the missing piece.
 */
export function findSplitPieces(p: string): string[] | undefined {
  let base: string;
  if (fs.existsSync(`${p}.aa`) && !fs.existsSync(p)) base = p;
  else {
    const m = SUFFIX.exec(p);
    if (!m) return undefined;
    base = p.slice(0, m.index);
    if (!fs.existsSync(`${base}.aa`)) return undefined;
  }
  const pieces: string[] = [];
  for (let i = 0; ; i++) {
    const name = `${base}.${splitSuffix(i)}`;
    if (!fs.existsSync(name)) break;
    pieces.push(name);
  }
  // NAME.xz next to NAME.aa is a file of its own, not a piece
  if (p !== base && !pieces.includes(p)) return undefined;
  // a piece found just past the gap means the one in the gap is missing
  for (const ahead of [1, 2, 3]) {
    const later = `${base}.${splitSuffix(pieces.length - 1 + ahead + 1)}`;
    if (fs.existsSync(later)) {
      throw new ImageError({ file: `${base}.${splitSuffix(pieces.length)}` }, "missing piece of the split set", `${later} exists`);
    }
  }
  return pieces;
}

/**
 * The piece that would follow `pieces` when the set looks cut short, judged from its naming: a
 * last piece exactly as large as the first (`split -b` fills every piece but the last), or a lone
 * first piece (`split` names a single piece .aa only when the input was that small).
 */
export function pieceAfter(pieces: string[]): string | undefined {
  if (pieces.length === 0) return undefined;
  const last = pieces[pieces.length - 1]!;
  const m = SUFFIX.exec(last);
  if (!m) return undefined;
  const base = last.slice(0, m.index);
  if (pieces[0] !== `${base}.${splitSuffix(0)}`) return undefined;
  let first: number;
  let end: number;
  try {
    first = fs.statSync(pieces[0]!).size;
    end = fs.statSync(last).size;
  } catch {
    return undefined;
  }
  const full = pieces.length === 1 || end === first;
  return full ? `${base}.${splitSuffix(pieces.length)}` : undefined;
}

/** The error for a set that ends at `last` while more was expected: `next` is missing. */
export function missingPieceError(last: string, next: string, lastSize: number, lone: boolean): ImageError {
  return new ImageError(
    { file: last, offset: lastSize },
    `the split set ends at ${path.basename(last)}; ${path.basename(next)} is missing`,
    `the data goes on past the end of ${path.basename(last)}, ${lone ? "its first piece" : "which is as large as a full piece"}`,
  );
}

export interface SplitOptions {
  /** bytes at the start of every piece that are not part of the joined stream (a volume header) */
  pieceHeader?: number;
  /** every piece but the last has the first one's size, as `split -b` makes them (default true) */
  equalPieces?: boolean;
  /** the name of the piece after the last, when the set looks cut short (see pieceAfter) */
  nextPiece?: string;
}

/** Pieces read as one stream: positional reads across them. */
export class SplitSource extends PositionedSource {
  readonly name: string;
  readonly size: number;
  /** offset in the joined stream of each piece's first byte after its header */
  private readonly starts: number[] = [];
  private readonly header: number;
  private readonly nextPiece: string | undefined;

  constructor(
    private readonly pieces: FileSource[],
    options: SplitOptions = {},
  ) {
    super();
    this.header = options.pieceHeader ?? 0;
    this.nextPiece = options.nextPiece;
    this.name = pieces.length > 1 ? `${pieces[0]!.name} (+${pieces.length - 1} pieces)` : pieces[0]!.name;
    let total = 0;
    for (const [i, piece] of pieces.entries()) {
      if (options.equalPieces !== false && i < pieces.length - 1 && piece.size !== pieces[0]!.size) {
        throw new ImageError({ file: piece.name, offset: piece.size }, "short piece of the split set", `${piece.size} bytes, ${pieces[0]!.name} has ${pieces[0]!.size}`);
      }
      this.starts.push(total);
      total += piece.size - this.header;
    }
    this.size = total;
  }

  static open(names: string[]): SplitSource {
    const opened: FileSource[] = [];
    for (const n of names) {
      const s = openFileSource(n);
      if (!(s instanceof FileSource)) throw new ImageError({ file: n }, "a piece of a split set must be a regular file");
      opened.push(s);
    }
    return new SplitSource(opened, { nextPiece: pieceAfter(names) });
  }

  missingPiece(): ImageError | undefined {
    if (this.nextPiece === undefined) return undefined;
    const last = this.pieces[this.pieces.length - 1]!;
    return missingPieceError(last.name, this.nextPiece, last.size, this.pieces.length === 1);
  }

  get pieceNames(): string[] {
    return this.pieces.map((p) => p.name);
  }

  readAt(into: Uint8Array, offset: number): number {
    let done = 0;
    let i = this.pieceAt(offset);
    while (done < into.length && i < this.pieces.length) {
      const piece = this.pieces[i]!;
      const n = piece.readAt(into.subarray(done), offset + done - this.starts[i]! + this.header);
      done += n;
      if (offset + done >= this.starts[i]! + piece.size - this.header) i++;
      else if (n === 0) break;
    }
    return done;
  }

  private pieceAt(offset: number): number {
    let i = this.starts.length - 1;
    while (i > 0 && this.starts[i]! > offset) i--;
    return i;
  }

  locate(offset: number): Location {
    const i = this.pieceAt(offset);
    return { file: this.pieces[i]!.name, offset: offset - this.starts[i]! + this.header };
  }

  close(): void {
    for (const p of this.pieces) p.close();
  }
}
