import fs from "node:fs";
import { ImageError } from "../errors.ts";
import { openFileSource } from "./file.ts";
import { FileSource, SplitSource } from "./pieces.ts";

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

/** Open the pieces of a split set, in order, as one stream. */
export function openSplitSet(names: string[]): SplitSource {
  const opened: FileSource[] = [];
  try {
    for (const n of names) {
      const s = openFileSource(n);
      if (!(s instanceof FileSource)) {
        s.close();
        throw new ImageError({ file: n }, "a piece of a split set must be a regular file");
      }
      opened.push(s);
    }
    return new SplitSource(opened, { nextPiece: pieceAfter(names) });
  } catch (e) {
    for (const s of opened) s.close();
    throw e;
  }
}

/** The set's name without the split suffix of its pieces (a lone file keeps its name). */
export function splitSetName(pieces: readonly string[]): string {
  const first = pieces[0] ?? "";
  return pieces.length > 1 ? first.replace(SUFFIX, "") : first;
}
