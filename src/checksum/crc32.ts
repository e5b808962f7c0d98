/**
 * partclone's CRC32: the IEEE polynomial with the register seeded 0xFFFFFFFF and no final
 * inversion (partclone src/checksum.c). zlib's crc32 inverts on the way in and out, so the raw
 * register update is ~crc32(data, ~register); Bun's native crc32 does the work.
 */
export function partcloneCrc32(register: number, data: Uint8Array): number {
  return ~Bun.hash.crc32(data, ~register >>> 0) >>> 0;
}

export const PARTCLONE_CRC_SEED = 0xffffffff;

const TABLE = Uint32Array.from({ length: 256 }, (_, i) => {
  let c = i;
  for (let j = 0; j < 8; j++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  return c >>> 0;
});

/**
 * The CRC of image format 0001: partclone < 0.3 fed the first byte of the block `count` times
 * (a missing "++"; partclone src/checksum.c crc32_0001). Kept bit-exact to verify those images.
 */
export function partcloneCrc32Repeated(register: number, byte: number, count: number): number {
  let crc = register >>> 0;
  for (let i = 0; i < count; i++) crc = (crc >>> 8) ^ TABLE[(crc ^ byte) & 0xff]!;
  return crc >>> 0;
}
