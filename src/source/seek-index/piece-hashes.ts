// The decoded stream's piece hashes, as the build's single pass records them: the stream is cut at
// every multiple of PIECE_GRID and at every seek point, and each piece between two cuts gets the
// XXH3-64 of its bytes. A reader that decodes from a point checks each piece before it hands any of
// its bytes out, so a point that decodes differently is caught where it does, with no second decode
// at build time.
import { Xxh3State } from "../../../native/xxhash.ts";

/** Pieces never cross a multiple of this (the reader's cached spans are this size and aligned to it). */
export const PIECE_GRID = 1 << 20;

/** Each piece's end offset (ascending; the last is the decoded size) and its XXH3-64, 8 bytes each. */
export interface PieceHashes {
  ends: Float64Array;
  hashes: Uint8Array;
}

/** Cuts the decoded stream into pieces and hashes them as the pass hands its bytes over. */
export class PieceHasher {
  private readonly hash = new Xxh3State();
  private ends: number[] = [];
  private hashes = new Uint8Array(8 * 64);
  /** where the open piece starts */
  private start: number;

  /** From decoded offset `at` on (a piece starts there). */
  constructor(private at = 0) {
    this.start = at;
  }

  /** The next decoded bytes. */
  feed(bytes: Uint8Array): void {
    let from = 0;
    while (from < bytes.length) {
      const toGrid = PIECE_GRID - (this.at % PIECE_GRID);
      const n = Math.min(toGrid, bytes.length - from);
      this.hash.update(bytes.subarray(from, from + n));
      from += n;
      this.at += n;
      if (n === toGrid) this.cut();
    }
  }

  /** End the open piece here (a seek point starts at this offset). */
  cut(): void {
    if (this.at === this.start) return;
    const i = this.ends.length;
    if (this.hashes.length < 8 * (i + 1)) {
      const grown = new Uint8Array(this.hashes.length * 2);
      grown.set(this.hashes);
      this.hashes = grown;
    }
    this.hash.digestInto(this.hashes.subarray(8 * i, 8 * i + 8));
    this.ends.push(this.at);
    this.hash.reset();
    this.start = this.at;
  }

  /** The decoded offset reached. */
  get decoded(): number {
    return this.at;
  }

  /** The pieces closed so far (live: valid until the next call). */
  closed(): { ends: number[]; hashes: Uint8Array } {
    return { ends: this.ends, hashes: this.hashes };
  }

  finish(): PieceHashes {
    this.cut();
    return { ends: Float64Array.from(this.ends), hashes: this.hashes.slice(0, 8 * this.ends.length) };
  }
}

/** The index of the piece holding decoded offset `at` (the first whose end lies past it). */
export function pieceAt(pieces: PieceHashes, at: number): number {
  let lo = 0;
  let hi = pieces.ends.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (pieces.ends[mid]! > at) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Where piece `i` starts. */
export function pieceStart(pieces: PieceHashes, i: number): number {
  return i === 0 ? 0 : pieces.ends[i - 1]!;
}

/**
 * Checks decoded bytes piece by piece as they come, from a piece's start on: `update` them in
 * order, and `complete` says whether the piece ending at the bytes' end (if one does) matched.
 */
export class PieceChecker {
  private readonly hash = new Xxh3State();
  private readonly digest = new Uint8Array(8);
  /** the piece being hashed, and the decoded offset reached in it */
  private piece = 0;
  private at = 0;

  constructor(readonly pieces: PieceHashes) {}

  /** Start at decoded offset `at`, which must be a piece's start. */
  startAt(at: number): void {
    this.piece = pieceAt(this.pieces, at);
    if (pieceStart(this.pieces, this.piece) !== at) throw new Error(`seek index: ${at} is not the start of a hashed piece`);
    this.at = at;
    this.hash.reset();
  }

  /** Bytes to the end of the current piece. */
  get leftInPiece(): number {
    return this.pieces.ends[this.piece]! - this.at;
  }

  /** Where the current piece starts. */
  get pieceStart(): number {
    return pieceStart(this.pieces, this.piece);
  }

  /** Pass over the current piece unchecked (at its start: its bytes are known good). */
  skip(): void {
    this.at = this.pieces.ends[this.piece]!;
    this.piece++;
    this.hash.reset();
  }

  /** The piece's end, when the whole piece is known good: pass its bytes with pass() instead of update(). */
  get pieceEnd(): number {
    return this.pieces.ends[this.piece]!;
  }

  /** Like update, for bytes of a piece known good: not hashed; true at the piece's end. */
  pass(bytes: Uint8Array): true | undefined {
    if (bytes.length > this.leftInPiece) throw new Error("seek index: bytes past the end of a hashed piece");
    this.at += bytes.length;
    if (this.at < this.pieces.ends[this.piece]!) return undefined;
    this.piece++;
    return true;
  }

  /**
   * The next decoded bytes (at most to the current piece's end). Returns undefined while the piece
   * is open, else whether it matched (and moves on to the next piece).
   */
  update(bytes: Uint8Array): boolean | undefined {
    if (bytes.length > this.leftInPiece) throw new Error("seek index: bytes past the end of a hashed piece");
    this.hash.update(bytes);
    this.at += bytes.length;
    if (this.at < this.pieces.ends[this.piece]!) return undefined;
    this.hash.digestInto(this.digest);
    const expected = this.pieces.hashes.subarray(8 * this.piece, 8 * this.piece + 8);
    let same = true;
    for (let i = 0; i < 8; i++) if (this.digest[i] !== expected[i]) same = false;
    this.piece++;
    this.hash.reset();
    return same;
  }
}

/** An error decoding gives (damaged or differently decoded input), not one of reading it (EIO and the like). */
export function isDecodeError(e: unknown): boolean {
  const code = (e as { code?: unknown } | undefined)?.code;
  return !(typeof code === "string" && code.startsWith("E"));
}
