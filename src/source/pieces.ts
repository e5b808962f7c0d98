// Files already open, read by position: one (FileSource) or several joined end to end (SplitSource).
// Nothing here opens a path or loads node:fs (15–20 ms in a new thread): a decode worker reads the
// descriptors the main thread opened and checked, through these same classes.
import { ImageError, type Location } from "../errors.ts";
import { closeFd, preadFd } from "../../native/libc-file.ts";
import { type ChunkSource, PositionedSource } from "./chunk-source.ts";

/** A piece as another thread can be told of it: the descriptor stays the opener's. */
export interface PieceDescriptor {
  name: string;
  fd: number;
  size: number;
}

/** A regular file or block device: positional reads, so it also serves random access. */
export class FileSource extends PositionedSource {
  private readonly display: Uint8Array;

  constructor(
    readonly name: string,
    private readonly fd: number,
    readonly size: number,
    /** false: the descriptor is borrowed, and close leaves it open */
    private readonly owned = true,
  ) {
    super();
    this.display = Buffer.from(name);
  }

  readAt(into: Uint8Array, offset: number): number {
    let done = 0;
    while (done < into.length && offset + done < this.size) {
      let n: number;
      try {
        n = preadFd(this.fd, into.subarray(done), offset + done, this.display);
      } catch (e) {
        throw new ImageError(this.locate(offset + done), "read error", (e as NodeJS.ErrnoException).code);
      }
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  locate(offset: number): Location {
    return { file: this.name, offset };
  }

  get descriptor(): PieceDescriptor {
    return { name: this.name, fd: this.fd, size: this.size };
  }

  close(): void {
    if (this.owned) closeFd(this.fd);
  }
}

/** The error for a set that ends at `last` while more was expected: `next` is missing. */
function missingPieceError(last: string, next: string, lastSize: number, lone: boolean): ImageError {
  return new ImageError(
    { file: last, offset: lastSize },
    `the split set ends at ${baseName(last)}; ${baseName(next)} is missing`,
    `the data goes on past the end of ${baseName(last)}, ${lone ? "its first piece" : "which is as large as a full piece"}`,
  );
}

function baseName(p: string): string {
  return p.slice(p.lastIndexOf("/") + 1);
}

export interface SplitOptions {
  /** bytes at the start of every piece that are not part of the joined stream (a volume header) */
  pieceHeader?: number;
  /** every piece but the last has the first one's size, as `split -b` makes them (default true) */
  equalPieces?: boolean;
  /** the name of the piece after the last, when the set looks cut short (see pieceAfter in split.ts) */
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

  missingPiece(): ImageError | undefined {
    if (this.nextPiece === undefined) return undefined;
    const last = this.pieces[this.pieces.length - 1]!;
    return missingPieceError(last.name, this.nextPiece, last.size, this.pieces.length === 1);
  }

  /** The pieces' descriptors, for a reader on another thread; undefined for pieces with headers of their own. */
  get descriptors(): PieceDescriptor[] | undefined {
    return this.header === 0 ? this.pieces.map((p) => p.descriptor) : undefined;
  }

  readAt(into: Uint8Array, offset: number): number {
    let done = 0;
    let i = this.stretchAt(offset);
    while (done < into.length && i < this.pieces.length) {
      const piece = this.pieces[i]!;
      const n = piece.readAt(into.subarray(done), offset + done - this.starts[i]! + this.header);
      done += n;
      if (offset + done >= this.starts[i]! + piece.size - this.header) i++;
      else if (n === 0) break;
    }
    return done;
  }

  private stretchAt(offset: number): number {
    let i = this.starts.length - 1;
    while (i > 0 && this.starts[i]! > offset) i--;
    return i;
  }

  locate(offset: number): Location {
    const i = this.stretchAt(offset);
    return { file: this.pieces[i]!.name, offset: offset - this.starts[i]! + this.header };
  }

  close(): void {
    for (const p of this.pieces) p.close();
  }
}

/** The descriptors of a file or split set another thread reads while this one keeps them open. */
export function pieceDescriptors(raw: ChunkSource): PieceDescriptor[] | undefined {
  if (raw instanceof FileSource) return [raw.descriptor];
  if (raw instanceof SplitSource) return raw.descriptors;
  return undefined;
}

/** A reader of descriptors another thread opened (and will close). */
export function borrowPieces(pieces: PieceDescriptor[]): FileSource | SplitSource {
  const files = pieces.map((p) => new FileSource(p.name, p.fd, p.size, false));
  return files.length === 1 ? files[0]! : new SplitSource(files);
}
