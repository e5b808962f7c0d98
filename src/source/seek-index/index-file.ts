// The .imgtool-index file, imgtool's own layout (documented in README.md, "Seek index"):
//   header (48 bytes): magic "IMGTOOL-SEEKIDX\n", u32 version, u32 table length, u64 table offset,
//                      u64 XXH64 of the table, u64 zero
//   windows:           the points' windows, each packed as stored-window.ts says, back to back
//   table:             JSON (what the index is of, and the points), ending the file
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CorruptIndex, hex64, packWindow, readStoredWindow, unpackWindow } from "./stored-window.ts";
import type { RandomAccessSource } from "../chunk-source.ts";
import type { Compression } from "../sniff.ts";
import type { CodecIndex } from "./codec.ts";

const MAGIC = "IMGTOOL-SEEKIDX\n";
export const INDEX_VERSION = 1;
const HEADER_BYTES = 48;
const KEY_HASH_BYTES = 1 << 20;
/** no window any codec keeps is larger (zstd frames past this are indexed at frame starts only) */
const MAX_WINDOW = 64 << 20;
export const INDEX_SUFFIX = ".imgtool-index";

/** What an index is of: the pieces as they were when it was built. */
export interface IndexKey {
  pieces: { name: string; size: number; mtimeMs: number }[];
  /** XXH64 of the first and of the last MiB of the joined compressed stream */
  head: string;
  tail: string;
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
  verifiedEnd: number | undefined;
}

export interface LoadedIndex {
  path: string;
  compression: Compression;
  decodedSize: number;
  compressedSize: number;
  spacing: number;
  notResumable?: string;
  points: StoredPoint[];
  /** the index file's size in bytes */
  bytes: number;
  /** the index file's open descriptor (none for an index kept in memory) */
  descriptor?: number;
  /** the raw window of a point, checked against its hash and size; in `into` (a view of its start) when it fits */
  window(p: StoredPoint, into?: Uint8Array): Uint8Array;
  close(): void;
}

/** The key of the pieces as they are now. */
export function currentKey(raw: RandomAccessSource, pieces: string[]): IndexKey {
  const stats = pieces.map((name) => {
    const st = fs.statSync(name);
    return { name: path.basename(name), size: st.size, mtimeMs: st.mtimeMs };
  });
  const headBytes = new Uint8Array(Math.min(KEY_HASH_BYTES, raw.size));
  raw.readAt(headBytes, 0);
  const tailBytes = new Uint8Array(Math.min(KEY_HASH_BYTES, raw.size));
  raw.readAt(tailBytes, raw.size - tailBytes.length);
  return { pieces: stats, head: hex64(headBytes), tail: hex64(tailBytes) };
}

function sameKey(a: IndexKey, b: IndexKey): boolean {
  return (
    a.head === b.head &&
    a.tail === b.tail &&
    a.pieces.length === b.pieces.length &&
    a.pieces.every((p, i) => p.name === b.pieces[i]!.name && p.size === b.pieces[i]!.size && p.mtimeMs === b.pieces[i]!.mtimeMs)
  );
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
  const cacheRoot = process.env.XDG_CACHE_HOME && path.isAbsolute(process.env.XDG_CACHE_HOME) ? process.env.XDG_CACHE_HOME : path.join(os.homedir(), ".cache");
  const cache = path.join(cacheRoot, "imgtool", `${hex64(Buffer.from(real))}-${path.basename(firstPiece)}${INDEX_SUFFIX}`);
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
    let at = HEADER_BYTES;
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
      points.push([p.decoded, p.compressed, p.bits, at, stored.length, size, hex64(stored), Buffer.from(p.extra).toString("base64"), p.verifiedEnd ?? null]);
      at += stored.length;
    }
    const table = Buffer.from(
      JSON.stringify({ compression, key, compressedSize, decodedSize: index.decodedSize, spacing, notResumable: index.notResumable ?? null, points }),
    );
    fs.writeSync(fd, table, 0, table.length, at);
    const header = Buffer.alloc(HEADER_BYTES);
    header.write(MAGIC, 0, "latin1");
    header.writeUInt32LE(INDEX_VERSION, 16);
    header.writeUInt32LE(table.length, 20);
    header.writeBigUInt64LE(BigInt(at), 24);
    Buffer.from(hex64(table), "hex").copy(header, 32);
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
  const { O_RDONLY, O_NOFOLLOW } = fs.constants;
  let fd: number;
  try {
    fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW);
  } catch {
    return undefined;
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
    if (version !== INDEX_VERSION) bad(`version ${version}, this imgtool reads version ${INDEX_VERSION}`);
    const tableLength = header.readUInt32LE(20);
    const tableOffset = Number(header.readBigUInt64LE(24));
    if (tableOffset < HEADER_BYTES || tableOffset + tableLength !== st.size) bad(`its table (${tableLength} bytes at ${tableOffset}) does not end the file (${st.size} bytes)`);
    const tableBytes = Buffer.alloc(tableLength);
    if (fs.readSync(fd, tableBytes, 0, tableLength, tableOffset) < tableLength) bad("truncated table");
    if (hex64(tableBytes) !== header.toString("hex", 32, 40)) bad("its table's checksum does not match");
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
    if (!sameKey(k!, key) || t.compression !== compression) return undefined;
    const compressedSize = raw.size;
    if (t.compressedSize !== compressedSize) bad("its compressed size is not the image's");
    const MAX_DECODED = 2 ** 53 - 1;
    if (!isCount(t.decodedSize, MAX_DECODED)) bad("its decoded size is not a count");
    const decodedSize = t.decodedSize as number;
    if (!isCount(t.spacing, MAX_DECODED)) bad("its spacing is not a count");
    if (t.notResumable !== null && typeof t.notResumable !== "string") bad("a malformed note");
    if (!Array.isArray(t.points) || t.points.length === 0 || t.points.length > compressedSize + 1) bad("no valid list of points");
    const points: StoredPoint[] = [];
    for (const [i, row] of (t.points as unknown[]).entries()) {
      const r = row as unknown[];
      const where = `point ${i}`;
      if (!Array.isArray(r) || r.length !== 9) bad(`${where} is malformed`);
      const [decoded, compressed, bits, windowOffset, windowStored, windowSize, windowHash, extra, verifiedEnd] = r;
      if (!isCount(decoded, decodedSize) || !isCount(compressed, compressedSize) || !isCount(bits, 7)) bad(`${where}: an offset out of range`);
      if (!isCount(windowOffset, tableOffset) || !isCount(windowStored, tableOffset - HEADER_BYTES) || (windowOffset as number) + (windowStored as number) > tableOffset) {
        bad(`${where}: its window lies outside the file`);
      }
      if ((windowOffset as number) < HEADER_BYTES && (windowStored as number) > 0) bad(`${where}: its window overlaps the header`);
      if (!isCount(windowSize, MAX_WINDOW)) bad(`${where}: window size out of range`);
      if (typeof windowHash !== "string" || !/^[0-9a-f]{16}$/.test(windowHash)) bad(`${where}: malformed window checksum`);
      if (typeof extra !== "string" || extra.length > 65536) bad(`${where}: malformed state`);
      if (verifiedEnd !== null && (!isCount(verifiedEnd, decodedSize) || (verifiedEnd as number) < (decoded as number))) bad(`${where}: verified range out of range`);
      if (i === 0 ? decoded !== 0 : (decoded as number) < points[i - 1]!.decoded) bad(`${where}: points out of order`);
      points.push({
        decoded: decoded as number,
        compressed: compressed as number,
        bits: bits as number,
        windowOffset: windowOffset as number,
        windowStored: windowStored as number,
        windowSize: windowSize as number,
        windowHash: windowHash as string,
        extra: new Uint8Array(Buffer.from(extra as string, "base64")),
        verifiedEnd: verifiedEnd === null ? undefined : (verifiedEnd as number),
      });
    }
    ok = true;
    const loaded: LoadedIndex = {
      path: file,
      compression,
      decodedSize,
      compressedSize,
      spacing: t.spacing as number,
      notResumable: (t.notResumable as string | null) ?? undefined,
      points,
      bytes: st.size,
      descriptor: fd,
      window: (p: StoredPoint, into?: Uint8Array) => readStoredWindow(p, (buf, offset) => fs.readSync(fd, buf, 0, buf.length, offset), file, into),
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
      verifiedEnd: p.verifiedEnd,
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
    bytes: windows.reduce((n, w) => n + w.length, 0),
    window: (p, into) => unpackWindow(windows[p.windowOffset]!, p.windowSize, { file: "seek index in memory" }, into),
    close() {},
  };
}
