/** Stream compressions recognised by their magic bytes (never by the file name). */
export type Compression = "gzip" | "bzip2" | "zstd" | "lz4" | "xz" | "lzma";

export function sniffCompression(b: Uint8Array): Compression | undefined {
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return "gzip";
  if (b.length >= 4 && b[0] === 0x42 && b[1] === 0x5a && b[2] === 0x68 && b[3]! >= 0x31 && b[3]! <= 0x39) return "bzip2";
  if (b.length >= 4 && b[0] === 0x28 && b[1] === 0xb5 && b[2] === 0x2f && b[3] === 0xfd) return "zstd";
  // a zstd stream may open with a skippable frame (magic 0x184D2A50..5F, little-endian)
  if (b.length >= 4 && (b[0]! & 0xf0) === 0x50 && b[1] === 0x2a && b[2] === 0x4d && b[3] === 0x18) return "zstd";
  if (b.length >= 4 && b[0] === 0x04 && b[1] === 0x22 && b[2] === 0x4d && b[3] === 0x18) return "lz4";
  if (b.length >= 6 && b[0] === 0xfd && b[1] === 0x37 && b[2] === 0x7a && b[3] === 0x58 && b[4] === 0x5a && b[5] === 0x00) return "xz";
  if (looksLikeLzmaAlone(b)) return "lzma";
  return undefined;
}

/**
 * The .lzma ("alone") header has no magic: properties byte (lc/lp/pb, < 225), a little-endian
 * dictionary size, and an uncompressed size that is -1 (unknown) or plausible. xz-utils' own
 * detection accepts exactly these; the common dictionary sizes are 2^n or 2^n + 2^(n-1).
 */
function looksLikeLzmaAlone(b: Uint8Array): boolean {
  if (b.length < 13 || b[0]! >= 225) return false;
  const dict = (b[1]! | (b[2]! << 8) | (b[3]! << 16) | (b[4]! << 24)) >>> 0;
  const isPow = (x: number) => x > 0 && (x & (x - 1)) === 0;
  if (!(dict === 0xffffffff || isPow(dict) || (dict % 3 === 0 && isPow(dict / 3)))) return false;
  let unknown = true;
  for (let i = 5; i < 13; i++) if (b[i] !== 0xff) unknown = false;
  if (unknown) return true;
  const hi = b[9]! | (b[10]! << 8) | (b[11]! << 16) | (b[12]! << 24);
  return hi >>> 0 < 0x100; // < 1 TiB
}
