// The .imgtool-index file, imgtool's own layout (documented in README.md, "Seek index"):
//   header (48 bytes): magic "IMGTOOL-SEEKIDX\n", u32 version (3), u32 table length, u64 table offset,
//                      u64 XXH64 of the table, u64 offset of the verdicts
//   verdicts:          24 bytes a point, rewritten in place by readers: u64 decoded offset + 1 from
//                      which decoding from the point went wrong (0: not seen to), u64 decoded offset
//                      up to which decoding from it was checked against the stretch hashes, u64 seal
//                      (XXH64 of those words, the point's offsets and the table's hash; another seal:
//                      no verdict)
//   windows:           the points' windows, each packed as stored-window.ts says, back to back
//   table:             JSON (what the index is of, the points, the stretch hashes), ending the file
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CorruptIndex, hex64, packWindow, readStoredWindow, unpackWindow } from "./stored-window.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import type { Compression } from "../sniff.ts";
import type { CodecIndex } from "./codec.ts";
import { STRETCH_GRID, type StretchHashes } from "./stretch-hashes.ts";

const MAGIC = "IMGTOOL-SEEKIDX\n";
export const INDEX_VERSION = 3;
/**
 * Indexes of these versions are built again: version 1 was verified by a second decode at build time
 * and carries no stretch hashes; version 2's stretch hashes are XXH3-64 of each whole stretch.
 */
const REBUILT_VERSIONS = [1, 2];
const HEADER_BYTES = 48;
const VERDICT_BYTES = 24;
/** the head and tail hashed into an index's key: a read at open costs this twice */
const KEY_HASH_BYTES = 64 << 10;
/** what indexes whose key does not say were hashed over */
const FIRST_KEY_HASH_BYTES = 1 << 20;
/** no window any codec keeps is larger (zstd frames past this are indexed at frame starts only) */
const MAX_WINDOW = 64 << 20;
export const INDEX_SUFFIX = ".imgtool-index";

/** What an index is of: the pieces as they were when it was built. */
export interface IndexKey {
  pieces: { name: string; size: number; mtimeMs: number }[];
  /** XXH64 of the first and of the last `hashed` bytes of the joined compressed stream */
  head: string;
  tail: string;
  /** absent in the first indexes: 1 MiB */
  hashed?: number;
}

/** A point as the file keeps it: its window is read (and checked) only when a read needs it. */
export interface StoredPoint {
  decoded: number;
  compressed: number;
  bits: number;
  windowOffset: number;
  windowStored: number;
  windowSize: number;
  windowHash: string;
  extra: Uint8Array;
  /** see SeekPoint.trusted */
  trusted: boolean;
  /** decoding from this point was seen to go wrong from here on (a verdict kept in the file) */
  wrongFrom: number | undefined;
  /** decoding from this point was checked against the stretch hashes up to here (its own offset: not at all) */
  checkedTo: number;
}

export interface LoadedIndex {
  path: string;
  compression: Compression;
  decodedSize: number;
  compressedSize: number;
  spacing: number;
  notResumable?: string;
  points: StoredPoint[];
  /** what decoded bytes are checked against; undefined when every point is trusted */
  stretches: StretchHashes | undefined;
  /** the index file's size in bytes */
  bytes: number;
  /** the index file's open descriptor (none for an index kept in memory) */
  descriptor?: number;
  /** the raw window of a point, checked against its hash and size; in `into` (a view of its start) when it fits */
  window(p: StoredPoint, into?: Uint8Array): Uint8Array;
  /** Decoding from `p` went wrong at `from`: remember it (in the file too, when it can be written). */
  markWrong(p: StoredPoint, from: number): void;
  /** Decoding from `p` matched the stretch hashes up to `to`: remember it likewise (no need to check that far again). */
  markChecked(p: StoredPoint, to: number): void;
  close(): void;
}

interface Verdict {
  wrongFrom: number | undefined;
  checkedTo: number;
}

/** A verdict record, sealed to its point and its index. */
function verdictRecord(v: Verdict, p: { decoded: number; compressed: number }, tableHash: Uint8Array): Uint8Array {
  const out = Buffer.alloc(VERDICT_BYTES);
  out.writeBigUInt64LE(BigInt(v.wrongFrom === undefined ? 0 : v.wrongFrom + 1), 0);
  out.writeBigUInt64LE(BigInt(v.checkedTo), 8);
  const sealed = Buffer.alloc(40);
  out.copy(sealed, 0, 0, 16);
  sealed.writeBigUInt64LE(BigInt(p.decoded), 16);
  sealed.writeBigUInt64LE(BigInt(p.compressed), 24);
  sealed.set(tableHash, 32);
  Buffer.from(hex64(sealed), "hex").copy(out, 16);
  return out;
}

/** The verdict a record holds for `p`; none (nothing known) when its seal or its offsets are not right. */
function readVerdict(record: Uint8Array, p: { decoded: number; compressed: number }, tableHash: Uint8Array, decodedSize: number): Verdict {
  const none = { wrongFrom: undefined, checkedTo: p.decoded };
  const words = Buffer.from(record.buffer, record.byteOffset, 16);
  const wrong = Number(words.readBigUInt64LE(0));
  const v = { wrongFrom: wrong === 0 ? undefined : wrong - 1, checkedTo: Number(words.readBigUInt64LE(8)) };
  if (Buffer.compare(verdictRecord(v, p, tableHash), record) !== 0) return none;
  if (v.wrongFrom !== undefined && (v.wrongFrom < p.decoded || v.wrongFrom > decodedSize)) return none;
  if (v.checkedTo < p.decoded || v.checkedTo > (v.wrongFrom ?? decodedSize)) return none;
  return v;
}

/** Stretch hashes as the table keeps them: base64 of (u64 end, 8 hash bytes) per stretch. */
function packStretches(stretches: StretchHashes): string {
  const out = Buffer.alloc(16 * stretches.ends.length);
  for (let i = 0; i < stretches.ends.length; i++) {
    out.writeBigUInt64LE(BigInt(stretches.ends[i]!), 16 * i);
    out.set(stretches.hashes.subarray(8 * i, 8 * i + 8), 16 * i + 8);
  }
  return out.toString("base64");
}

/** The stretch hashes of a table, checked to be ascending, on the grid, and ending at the decoded size; undefined when they are not. */
function unpackStretches(text: string, decodedSize: number): StretchHashes | undefined {
  const bytes = Buffer.from(text, "base64");
  if (bytes.length % 16 !== 0 || bytes.length === 0) return undefined;
  const n = bytes.length / 16;
  const ends = new Float64Array(n);
  const hashes = new Uint8Array(8 * n);
  let previous = 0;
  for (let i = 0; i < n; i++) {
    const end = Number(bytes.readBigUInt64LE(16 * i));
    if (end <= previous || end > decodedSize || Math.floor((end - 1) / STRETCH_GRID) !== Math.floor(previous / STRETCH_GRID)) return undefined;
    ends[i] = end;
    hashes.set(bytes.subarray(16 * i + 8, 16 * i + 16), 8 * i);
    previous = end;
  }
  return previous === decodedSize ? { ends, hashes } : undefined;
}

/** The key of the pieces as they are now. */
export function currentKey(raw: RandomAccessSource, pieces: string[]): IndexKey {
  const stats = pieces.map((name) => {
    const st = fs.statSync(name);
    return { name: path.basename(name), size: st.size, mtimeMs: st.mtimeMs };
  });
  return { pieces: stats, ...endHashes(raw, KEY_HASH_BYTES) };
}

/** The hashes of the first and last `hashed` bytes of `raw`. */
function endHashes(raw: RandomAccessSource, hashed: number): { head: string; tail: string; hashed: number } {
  const headBytes = new Uint8Array(Math.min(hashed, raw.size));
  raw.readAt(headBytes, 0);
  const tailBytes = new Uint8Array(Math.min(hashed, raw.size));
  raw.readAt(tailBytes, raw.size - tailBytes.length);
  return { head: hex64(headBytes), tail: hex64(tailBytes), hashed };
}

function sameKey(a: IndexKey, b: IndexKey): boolean {
  return (
    a.head === b.head &&
    a.tail === b.tail &&
    a.pieces.length === b.pieces.length &&
    a.pieces.every((p, i) => p.name === b.pieces[i]!.name && p.size === b.pieces[i]!.size && p.mtimeMs === b.pieces[i]!.mtimeMs)
  );
}

let cacheRoot: string | undefined;

/** The user's cache directory (the CLI passes $XDG_CACHE_HOME); default ~/.cache. */
export function useCacheDirectory(dir: string): void {
  cacheRoot = dir;
}

/** The cache directory set by useCacheDirectory (undefined: ~/.cache), to hand to a thread that looks for indexes. */
export function cacheDirectory(): string | undefined {
  return cacheRoot;
}

/**
 * Where the index of an image lives: next to its first piece when that directory is writable,
 * else in the user's cache directory under a hash of the piece's real path.
 */
export function indexPaths(firstPiece: string): { beside: string; cache: string; preferred: string } {
  const beside = `${firstPiece}${INDEX_SUFFIX}`;
  let real = path.resolve(firstPiece);
  try {
    real = fs.realpathSync(firstPiece);
  } catch {}
  const cache = path.join(cacheRoot ?? path.join(os.homedir(), ".cache"), "imgtool", `${hex64(Buffer.from(real))}-${path.basename(firstPiece)}${INDEX_SUFFIX}`);
  let writable = false;
  try {
    fs.accessSync(path.dirname(beside), fs.constants.W_OK);
    writable = true;
  } catch {}
  return { beside, cache, preferred: writable ? beside : cache };
}

/**
 * Write the index atomically: a new file next to the target (O_EXCL|O_NOFOLLOW: never through a
 * symlink or over someone else's file), renamed over it once complete. Returns its size.
 */
export function writeIndex(target: string, compression: Compression, index: CodecIndex, key: IndexKey, compressedSize: number, spacing: number): number {
  fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
  const tmp = `${target}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
  try {
    const verdictsAt = HEADER_BYTES;
    let at = verdictsAt + VERDICT_BYTES * index.points.length;
    const points: unknown[] = [];
    for (const p of index.points) {
      let stored: Uint8Array;
      let size: number;
      if (p.packedWindowSize !== undefined) {
        stored = p.window;
        size = p.packedWindowSize;
      } else {
        size = p.window.length;
        stored = packWindow(p.window);
      }
      if (stored.length) fs.writeSync(fd, stored, 0, stored.length, at);
      points.push([p.decoded, p.compressed, p.bits, at, stored.length, size, hex64(stored), Buffer.from(p.extra).toString("base64"), p.trusted ? 1 : 0]);
      at += stored.length;
    }
    const table = Buffer.from(
      JSON.stringify({
        compression,
        key,
        compressedSize,
        decodedSize: index.decodedSize,
        spacing,
        notResumable: index.notResumable ?? null,
        grid: STRETCH_GRID,
        stretches: index.stretches ? packStretches(index.stretches) : null,
        points,
      }),
    );
    fs.writeSync(fd, table, 0, table.length, at);
    const tableHash = Buffer.from(hex64(table), "hex");
    const verdicts = Buffer.alloc(VERDICT_BYTES * index.points.length);
    for (const [i, p] of index.points.entries()) verdicts.set(verdictRecord({ wrongFrom: undefined, checkedTo: p.decoded }, p, tableHash), VERDICT_BYTES * i);
    fs.writeSync(fd, verdicts, 0, verdicts.length, verdictsAt);
    const header = Buffer.alloc(HEADER_BYTES);
    header.write(MAGIC, 0, "latin1");
    header.writeUInt32LE(INDEX_VERSION, 16);
    header.writeUInt32LE(table.length, 20);
    header.writeBigUInt64LE(BigInt(at), 24);
    tableHash.copy(header, 32);
    header.writeBigUInt64LE(BigInt(verdictsAt), 40);
    fs.writeSync(fd, header, 0, HEADER_BYTES, 0);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, target);
    return at + table.length;
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {}
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Read an index file. undefined when it is of another image or of this one before it changed
 * (stale: the caller builds a new one); a CorruptIndex when it does not hold together.
 */
export function readIndex(file: string, raw: RandomAccessSource, key: IndexKey, compression: Compression): LoadedIndex | undefined {
  const { O_RDONLY, O_RDWR, O_NOFOLLOW } = fs.constants;
  let fd: number;
  // writable when it can be: readers keep their verdicts in it
  let writable = true;
  try {
    fd = fs.openSync(file, O_RDWR | O_NOFOLLOW);
  } catch {
    writable = false;
    try {
      fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW);
    } catch {
      return undefined;
    }
  }
  let ok = false;
  try {
    const st = fs.fstatSync(fd);
    const bad = (detail: string): never => {
      throw new CorruptIndex({ file }, "corrupt seek index", `${detail}; delete it, or run imgtool index to build it again`);
    };
    if (!st.isFile()) bad("not a regular file");
    const header = Buffer.alloc(HEADER_BYTES);
    if (fs.readSync(fd, header, 0, HEADER_BYTES, 0) < HEADER_BYTES) bad("shorter than its header");
    if (header.toString("latin1", 0, 16) !== MAGIC) bad("no imgtool index magic");
    const version = header.readUInt32LE(16);
    if (REBUILT_VERSIONS.includes(version)) return undefined;
    if (version !== INDEX_VERSION) bad(`version ${version}, this imgtool reads version ${INDEX_VERSION}`);
    const tableLength = header.readUInt32LE(20);
    const tableOffset = Number(header.readBigUInt64LE(24));
    if (tableOffset < HEADER_BYTES || tableOffset + tableLength !== st.size) bad(`its table (${tableLength} bytes at ${tableOffset}) does not end the file (${st.size} bytes)`);
    const tableBytes = Buffer.alloc(tableLength);
    if (fs.readSync(fd, tableBytes, 0, tableLength, tableOffset) < tableLength) bad("truncated table");
    if (hex64(tableBytes) !== header.toString("hex", 32, 40)) bad("its table's checksum does not match");
    const tableHash = header.subarray(32, 40);
    const verdictsAt = Number(header.readBigUInt64LE(40));
    let t: Record<string, unknown>;
    try {
      t = JSON.parse(tableBytes.toString("utf8")) as Record<string, unknown>;
    } catch {
      return bad("its table does not parse");
    }
    const isCount = (v: unknown, max: number): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0 && v <= max;
    const k = t.key as IndexKey | undefined;
    if (
      !k ||
      typeof k.head !== "string" ||
      typeof k.tail !== "string" ||
      !Array.isArray(k.pieces) ||
      !k.pieces.every((p) => p && typeof p.name === "string" && isCount(p.size, Number.MAX_SAFE_INTEGER) && typeof p.mtimeMs === "number")
    ) {
      bad("its table has no valid key");
    }
    const hashed = k!.hashed ?? FIRST_KEY_HASH_BYTES;
    if (!isCount(hashed, FIRST_KEY_HASH_BYTES) || hashed === 0) bad("its table has no valid key");
    // an index hashed over other lengths than this imgtool's is compared over its own
    const now = hashed === (key.hashed ?? FIRST_KEY_HASH_BYTES) ? key : { ...key, ...endHashes(raw, hashed) };
    if (!sameKey(k!, now) || t.compression !== compression) return undefined;
    const compressedSize = raw.size;
    if (t.compressedSize !== compressedSize) bad("its compressed size is not the image's");
    const MAX_DECODED = 2 ** 53 - 1;
    if (!isCount(t.decodedSize, MAX_DECODED)) bad("its decoded size is not a count");
    const decodedSize = t.decodedSize as number;
    if (!isCount(t.spacing, MAX_DECODED)) bad("its spacing is not a count");
    if (t.notResumable !== null && typeof t.notResumable !== "string") bad("a malformed note");
    if (!Array.isArray(t.points) || t.points.length === 0 || t.points.length > compressedSize + 1) bad("no valid list of points");
    const rows = t.points as unknown[];
    const verdictsEnd = verdictsAt + VERDICT_BYTES * rows.length;
    if (verdictsAt < HEADER_BYTES || verdictsEnd > tableOffset) bad("its verdicts lie outside the file");
    if (t.grid !== STRETCH_GRID) return undefined;
    let stretches: StretchHashes | undefined;
    if (t.stretches !== null) {
      if (typeof t.stretches !== "string") bad("malformed stretch hashes");
      stretches = unpackStretches(t.stretches as string, decodedSize);
      if (!stretches) bad("its stretch hashes do not cover the decoded stream in order");
    }
    const verdicts = Buffer.alloc(VERDICT_BYTES * rows.length);
    if (fs.readSync(fd, verdicts, 0, verdicts.length, verdictsAt) < verdicts.length) bad("truncated verdicts");
    const points: StoredPoint[] = [];
    for (const [i, row] of rows.entries()) {
      const r = row as unknown[];
      const where = `point ${i}`;
      if (!Array.isArray(r) || r.length !== 9) bad(`${where} is malformed`);
      const [decoded, compressed, bits, windowOffset, windowStored, windowSize, windowHash, extra, trusted] = r;
      if (!isCount(decoded, decodedSize) || !isCount(compressed, compressedSize) || !isCount(bits, 7)) bad(`${where}: an offset out of range`);
      if (!isCount(windowOffset, tableOffset) || !isCount(windowStored, tableOffset - HEADER_BYTES) || (windowOffset as number) + (windowStored as number) > tableOffset) {
        bad(`${where}: its window lies outside the file`);
      }
      if ((windowOffset as number) < verdictsEnd && (windowStored as number) > 0) bad(`${where}: its window overlaps the header or the verdicts`);
      if (!isCount(windowSize, MAX_WINDOW)) bad(`${where}: window size out of range`);
      if (typeof windowHash !== "string" || !/^[0-9a-f]{16}$/.test(windowHash)) bad(`${where}: malformed window checksum`);
      if (typeof extra !== "string" || extra.length > 65536) bad(`${where}: malformed state`);
      if (trusted !== 0 && trusted !== 1) bad(`${where}: malformed flag`);
      if (trusted === 0 && !stretches) bad(`${where}: a resumed point, and no stretch hashes to check it by`);
      if (i === 0 ? decoded !== 0 || trusted !== 1 : (decoded as number) < points[i - 1]!.decoded) bad(`${where}: points out of order`);
      const at = { decoded: decoded as number, compressed: compressed as number };
      points.push({
        decoded: decoded as number,
        compressed: compressed as number,
        bits: bits as number,
        windowOffset: windowOffset as number,
        windowStored: windowStored as number,
        windowSize: windowSize as number,
        windowHash: windowHash as string,
        extra: new Uint8Array(Buffer.from(extra as string, "base64")),
        trusted: trusted === 1,
        ...readVerdict(verdicts.subarray(VERDICT_BYTES * i, VERDICT_BYTES * (i + 1)), at, tableHash, decodedSize),
      });
    }
    ok = true;
    const keep = (p: StoredPoint) => {
      const i = points.indexOf(p);
      if (!writable || i < 0) return;
      try {
        fs.writeSync(fd, verdictRecord(p, p, tableHash), 0, VERDICT_BYTES, verdictsAt + VERDICT_BYTES * i);
      } catch {
        // kept in memory for this run only (a full or read-only file system)
      }
    };
    const loaded: LoadedIndex = {
      path: file,
      compression,
      decodedSize,
      compressedSize,
      spacing: t.spacing as number,
      notResumable: (t.notResumable as string | null) ?? undefined,
      points,
      stretches,
      bytes: st.size,
      descriptor: fd,
      window: (p: StoredPoint, into?: Uint8Array) => readStoredWindow(p, (buf, offset) => fs.readSync(fd, buf, 0, buf.length, offset), file, into),
      markWrong(p: StoredPoint, from: number): void {
        if (p.wrongFrom !== undefined && p.wrongFrom <= from) return;
        p.wrongFrom = from;
        p.checkedTo = Math.min(p.checkedTo, from);
        keep(p);
      },
      markChecked(p: StoredPoint, to: number): void {
        if (to <= p.checkedTo || to > (p.wrongFrom ?? decodedSize)) return;
        p.checkedTo = to;
        keep(p);
      },
      close(): void {
        fs.closeSync(fd);
      },
    };
    return loaded;
  } finally {
    if (!ok) fs.closeSync(fd);
  }
}

/**
 * An index kept in memory only, for a run that can write it nowhere (a read-only image directory and
 * no writable cache): the windows stay packed, so it takes about what the file would.
 */
export function memoryIndex(index: CodecIndex, compression: Compression, compressedSize: number, spacing: number): LoadedIndex {
  const windows: Uint8Array[] = [];
  const points: StoredPoint[] = index.points.map((p, i) => {
    const packed = p.packedWindowSize !== undefined;
    const stored = packed ? p.window : packWindow(p.window);
    windows.push(stored);
    return {
      decoded: p.decoded,
      compressed: p.compressed,
      bits: p.bits,
      windowOffset: i,
      windowStored: stored.length,
      windowSize: packed ? p.packedWindowSize! : p.window.length,
      windowHash: "",
      extra: p.extra,
      trusted: p.trusted === true,
      wrongFrom: undefined,
      checkedTo: p.decoded,
    };
  });
  return {
    path: "(memory)",
    compression,
    decodedSize: index.decodedSize,
    compressedSize,
    spacing,
    notResumable: index.notResumable,
    points,
    stretches: index.stretches,
    bytes: windows.reduce((n, w) => n + w.length, 0),
    window: (p, into) => unpackWindow(windows[p.windowOffset]!, p.windowSize, { file: "seek index in memory" }, into),
    markWrong(p, from) {
      if (p.wrongFrom === undefined || from < p.wrongFrom) p.wrongFrom = from;
      p.checkedTo = Math.min(p.checkedTo, from);
    },
    markChecked(p, to) {
      if (to > p.checkedTo && to <= (p.wrongFrom ?? index.decodedSize)) p.checkedTo = to;
    },
    close() {},
  };
}
