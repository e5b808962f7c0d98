import type { Pointer } from "bun:ffi";
import { LazyLibrary } from "../../native/ffi.ts";
import { EncodedCompression } from "./protocol.ts";

const zstd = new LazyLibrary("libzstd.so.1", "libzstd1", {
  ZSTD_findFrameCompressedSize: { args: ["ptr", "u64"], returns: "u64" },
  ZSTD_createDCtx: { args: [], returns: "ptr" },
  ZSTD_decompressDCtx: { args: ["ptr", "ptr", "u64", "ptr", "u64"], returns: "u64" },
  ZSTD_isError: { args: ["u64"], returns: "u32" },
  ZSTD_getErrorName: { args: ["u64"], returns: "cstring" },
});

const lzo = new LazyLibrary("liblzo2.so.2", "liblzo2-2", {
  // int lzo1x_decompress_safe(const lzo_bytep src, lzo_uint src_len, lzo_bytep dst, lzo_uintp dst_len, lzo_voidp wrkmem)
  lzo1x_decompress_safe: { args: ["ptr", "u64", "ptr", "ptr", "ptr"], returns: "i32" },
});

/** Why an extent could not be decompressed; the caller adds the command's place. */
export class DecompressError extends Error {
  override name = "DecompressError";
}

/** BTRFS_MAX_UNCOMPRESSED (kernel fs/btrfs/compression.h): the most one compressed extent holds, decoded. */
export const MAX_UNCOMPRESSED = 128 << 10;
/** BTRFS_MAX_COMPRESSED: the most encoded bytes of one extent. */
export const MAX_COMPRESSED = 128 << 10;

/**
 * Decode one btrfs compressed extent, as sent by encoded_write, into `out` (its unencoded_len
 * bytes, at most MAX_UNCOMPRESSED; the caller checks the lengths before): zeros past what the
 * decompressor produced. Data that decodes to more than `out` holds is refused, not grown into.
 * Returns how many bytes the decompressor produced.
 */
export function decompressExtent(compression: number, data: Uint8Array, out: Uint8Array): number {
  out.fill(0);
  switch (compression) {
    case EncodedCompression.ZLIB:
      return inflateExtent(data, out);
    case EncodedCompression.ZSTD:
      return zstdExtent(data, out);
    case EncodedCompression.LZO_4K:
    case EncodedCompression.LZO_8K:
    case EncodedCompression.LZO_16K:
    case EncodedCompression.LZO_32K:
    case EncodedCompression.LZO_64K:
      return lzoExtent(data, out, 1 << (compression - EncodedCompression.LZO_4K + 12));
    default:
      throw new DecompressError(`unknown compression ${compression}`);
  }
}

/** One zlib stream, followed by the zero padding of the last sector. */
function inflateExtent(data: Uint8Array, out: Uint8Array): number {
  // node:zlib costs about 10 ms to load: only streams with zlib extents pay it
  const { constants: zlibConstants, inflateSync } = require("node:zlib") as typeof import("node:zlib");
  let inflated: Buffer;
  try {
    inflated = inflateSync(data, { maxOutputLength: Math.max(out.length, 1), finishFlush: zlibConstants.Z_SYNC_FLUSH });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ERR_BUFFER_TOO_LARGE") throw new DecompressError(`zlib data inflates to more than the ${out.length} bytes of the extent`);
    throw new DecompressError(`zlib: ${err.message}`);
  }
  if (inflated.length > out.length) throw new DecompressError(`zlib data inflates to more than the ${out.length} bytes of the extent`);
  out.set(inflated);
  return inflated.length;
}

let zstdContext: Pointer | null | undefined;

/** One zstd frame, followed by the zero padding of the last sector. */
function zstdExtent(data: Uint8Array, out: Uint8Array): number {
  const lib = zstd.tryLoad();
  if (!lib) throw new DecompressError(`zstd data, but ${zstd.soname} is not installed (apt-get install ${zstd.aptPackage})`);
  const frameLength = lib.ZSTD_findFrameCompressedSize(data, data.length);
  if (lib.ZSTD_isError(frameLength)) throw new DecompressError(`zstd: ${lib.ZSTD_getErrorName(frameLength)}`);
  // one context for the process: ZSTD_decompress would allocate and free one per extent
  zstdContext ??= lib.ZSTD_createDCtx();
  if (!zstdContext) throw new DecompressError("zstd: ZSTD_createDCtx failed (out of memory)");
  const produced = lib.ZSTD_decompressDCtx(zstdContext, out, out.length, data, frameLength);
  if (lib.ZSTD_isError(produced)) throw new DecompressError(`zstd: ${lib.ZSTD_getErrorName(produced)}`);
  return Number(produced);
}

function le32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

/**
 * btrfs' LZO framing (kernel fs/btrfs/lzo.c): a le32 total length, then segments of a le32
 * length and lzo1x data for one sector each; a segment header never straddles a sector, the
 * bytes left in a sector too short for one are padding.
 */
function lzoExtent(data: Uint8Array, out: Uint8Array, sectorSize: number): number {
  const unencodedLen = out.length;
  const lib = lzo.tryLoad();
  if (!lib) throw new DecompressError(`lzo data, but ${lzo.soname} is not installed (apt-get install ${lzo.aptPackage})`);
  if (data.length < 4) throw new DecompressError(`lzo header truncated: ${data.length} bytes`);
  const totalLength = le32(data, 0);
  if (totalLength > data.length) throw new DecompressError(`lzo total length ${totalLength} exceeds the ${data.length} bytes sent`);
  const segmentOut = new BigUint64Array(1);
  let inPos = 4;
  let outPos = 0;
  while (inPos < totalLength && outPos < unencodedLen) {
    const leftInSector = (sectorSize - (inPos % sectorSize)) % sectorSize;
    if (leftInSector < 4) {
      if (totalLength - inPos <= leftInSector) break;
      inPos += leftInSector;
    }
    if (totalLength - inPos < 4) throw new DecompressError(`lzo segment header truncated at byte ${inPos}`);
    const segmentLength = le32(data, inPos);
    inPos += 4;
    if (segmentLength > totalLength - inPos) throw new DecompressError(`lzo segment at byte ${inPos - 4} claims ${segmentLength} bytes, ${totalLength - inPos} remain`);
    const room = Math.min(sectorSize, unencodedLen - outPos);
    segmentOut[0] = BigInt(room);
    const rc = lib.lzo1x_decompress_safe(data.subarray(inPos, inPos + segmentLength), segmentLength, out.subarray(outPos), segmentOut, null);
    if (rc !== 0) throw new DecompressError(`lzo1x_decompress_safe failed (${rc}) on the segment at byte ${inPos - 4}`);
    inPos += segmentLength;
    outPos += Number(segmentOut[0]);
  }
  return outPos;
}
