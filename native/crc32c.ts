import { ptr } from "bun:ffi";
import { LazyLibrary } from "./ffi.ts";

/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) as btrfs-progs' crc32c_le (crypto/crc32c.c):
 * the register starts at `seed` and is returned as is, with no inversion on either side. Send
 * stream commands use crc32c(0, header-with-crc-zeroed + attributes) (common/send-stream.c).
 * libisal's crc32_iscsi and e2fsprogs' ext2fs_crc32c_le have exactly these semantics.
 */

const isal = new LazyLibrary("libisal.so.2", "libisal2", {
  crc32_iscsi: { args: ["ptr", "i32", "u32"], returns: "u32" },
});
const ext2fs = new LazyLibrary("libext2fs.so.2", "libext2fs2", {
  ext2fs_crc32c_le: { args: ["u32", "ptr", "u64"], returns: "u32" },
});

const TABLES = makeTables();

function makeTables(): Uint32Array {
  const t = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) for (let k = 1; k < 8; k++) t[k * 256 + n] = (t[(k - 1) * 256 + n]! >>> 8) ^ t[t[(k - 1) * 256 + n]! & 0xff]!;
  return t;
}

/** Slicing-by-8 in JavaScript: the fallback, and faster than an FFI call for short buffers. */
export function crc32cJs(data: Uint8Array, seed = 0): number {
  const t = TABLES;
  let c = seed >>> 0;
  let i = 0;
  const n = data.length;
  for (; i + 8 <= n; i += 8) {
    const a = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c =
      t[1792 + (a & 0xff)]! ^
      t[1536 + ((a >>> 8) & 0xff)]! ^
      t[1280 + ((a >>> 16) & 0xff)]! ^
      t[1024 + (a >>> 24)]! ^
      t[768 + data[i + 4]!]! ^
      t[512 + data[i + 5]!]! ^
      t[256 + data[i + 6]!]! ^
      t[data[i + 7]!]!;
  }
  for (; i < n; i++) c = t[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** crc32_iscsi takes an int length */
const ISAL_MAX = 1 << 30;

function crc32cIsal(data: Uint8Array, seed = 0): number {
  const f = isal.tryLoad()!.crc32_iscsi;
  let c = seed >>> 0;
  for (let at = 0; at < data.length; at += ISAL_MAX) {
    const piece = data.subarray(at, at + ISAL_MAX);
    c = f(ptr(piece), piece.length, c);
  }
  return c;
}

function crc32cExt2fs(data: Uint8Array, seed = 0): number {
  if (data.length === 0) return seed >>> 0;
  return ext2fs.tryLoad()!.ext2fs_crc32c_le(seed >>> 0, ptr(data), data.length);
}

interface Crc32cImplementation {
  name: string;
  fn: (data: Uint8Array, seed?: number) => number;
  /** shorter buffers go to the JS loop, which beats an FFI call there (bench/decoders.ts measures it) */
  nativeFrom: number;
}

const ISAL: Crc32cImplementation = { name: "libisal crc32_iscsi", fn: crc32cIsal, nativeFrom: 256 };
const EXT2FS: Crc32cImplementation = { name: "libext2fs ext2fs_crc32c_le", fn: crc32cExt2fs, nativeFrom: 4096 };
const JS: Crc32cImplementation = { name: "JavaScript slicing-by-8", fn: crc32cJs, nativeFrom: Infinity };

/** The implementations available here, best first (every one, for tests and the bench); libraries load on the first call. */
export function crc32cImplementations(): Crc32cImplementation[] {
  return [...(isal.tryLoad() ? [ISAL] : []), ...(ext2fs.tryLoad() ? [EXT2FS] : []), JS];
}

let best: Crc32cImplementation | undefined;

/** The best one, loading no library past the first that loads. */
function bestImplementation(): Crc32cImplementation {
  if (isal.tryLoad()) return ISAL;
  return ext2fs.tryLoad() ? EXT2FS : JS;
}

/** CRC-32C of `data` continuing from `seed` (0 for a send stream command), no inversion. */
export function crc32c(data: Uint8Array, seed = 0): number {
  best ??= bestImplementation();
  return data.length < best.nativeFrom ? crc32cJs(data, seed) : best.fn(data, seed);
}
