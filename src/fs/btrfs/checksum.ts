// btrfs checksums of tree blocks, superblocks and data sectors, per btrfs-progs kernel-shared/uapi/btrfs_tree.h (BTRFS_CSUM_TYPE_*) and kernel-shared/disk-io.c (btrfs_csum_data).
import { crc32c } from "../../../native/crc32c.ts";
import { Xxh64State } from "../../../native/xxhash.ts";

export const CSUM_CRC32C = 0;
export const CSUM_XXHASH64 = 1;
export const CSUM_SHA256 = 2;
export const CSUM_BLAKE2B = 3;

/** bytes of each checksum type's digest (the on-disk slot is 32 bytes) */
export const CSUM_SIZE: Record<number, number> = { [CSUM_CRC32C]: 4, [CSUM_XXHASH64]: 8, [CSUM_SHA256]: 32, [CSUM_BLAKE2B]: 32 };

export function csumName(type: number): string {
  return ["crc32c", "xxhash64", "sha256", "blake2b"][type] ?? `type ${type}`;
}

let xxh: Xxh64State | undefined;

/** The digest btrfs stores for `data`: crc32c inverted (seed ~0, little-endian), XXH64 little-endian, SHA-256, BLAKE2b-256. */
export function checksumOf(type: number, data: Uint8Array): Uint8Array {
  switch (type) {
    case CSUM_CRC32C: {
      const c = ~crc32c(data, 0xffffffff) >>> 0;
      return new Uint8Array([c & 0xff, (c >>> 8) & 0xff, (c >>> 16) & 0xff, c >>> 24]);
    }
    case CSUM_XXHASH64: {
      xxh ??= new Xxh64State();
      xxh.reset();
      xxh.update(data);
      const out = new Uint8Array(8);
      xxh.digestInto(out);
      return out;
    }
    case CSUM_SHA256:
      return new Bun.CryptoHasher("sha256").update(data).digest();
    case CSUM_BLAKE2B:
      return new Bun.CryptoHasher("blake2b256").update(data).digest();
    default:
      throw new RangeError(`checksum type ${type}`);
  }
}

/** Does `stored` (at least the digest's length) hold the digest of `data`? */
export function checksumMatches(type: number, data: Uint8Array, stored: Uint8Array): boolean {
  if (type === CSUM_CRC32C) return (~crc32c(data, 0xffffffff) >>> 0) === ((stored[0]! | (stored[1]! << 8) | (stored[2]! << 16) | (stored[3]! << 24)) >>> 0);
  const got = checksumOf(type, data);
  for (let i = 0; i < got.length; i++) if (got[i] !== stored[i]) return false;
  return true;
}
