// Makes the broken partclone images in test/failure/partclone/ from a good fixture; each file is
// named by the error it must produce. Run: bun test/failure/make-partclone.ts
import fs from "node:fs";
import { partcloneCrc32, PARTCLONE_CRC_SEED } from "../../src/checksum/crc32.ts";

const good = new Uint8Array(fs.readFileSync("fixtures/ext4.ext4-ptcl-img"));
const dir = "test/failure/partclone";
const HEADER = 110;
const bitmapBytes = Math.ceil(new DataView(good.buffer).getUint32(60, true) / 8);
const dataStart = HEADER + bitmapBytes + 4;

function write(name: string, bytes: Uint8Array) {
  fs.writeFileSync(`${dir}/${name}`, bytes);
}
function patched(len: number, edit: (b: Uint8Array, dv: DataView) => void, fixCrc = false): Uint8Array {
  const b = good.slice(0, len);
  const dv = new DataView(b.buffer);
  edit(b, dv);
  if (fixCrc) dv.setUint32(106, partcloneCrc32(PARTCLONE_CRC_SEED, b.subarray(0, 106)), true);
  return b;
}

write("not-a-partclone,-partimage-or-ntfsclone-image.txt", new TextEncoder().encode("hello, I am a text file\n".repeat(4)));
write("truncated-partclone-header.ext4-ptcl-img", good.slice(0, 50));
write("header-crc-mismatch.ext4-ptcl-img", patched(HEADER, (b) => (b[40] ^= 1)));
write("unsupported-partclone-image-version.ext4-ptcl-img", patched(HEADER, (b) => (b[33] = 0x33)));
write("invalid-block-size.ext4-ptcl-img", patched(HEADER, (_, dv) => dv.setUint32(84, 0, true), true));
write("used-blocks-exceed-total-blocks.ext4-ptcl-img", patched(HEADER, (_, dv) => dv.setBigUint64(76, 1n << 40n, true), true));
write("unknown-checksum-mode.ext4-ptcl-img", patched(HEADER, (_, dv) => dv.setUint16(96, 0x77, true), true));
write("truncated-bitmap.ext4-ptcl-img", good.slice(0, HEADER + 20));
write("bitmap-crc-mismatch.ext4-ptcl-img", patched(dataStart, (b) => (b[HEADER + 3] ^= 0x10)));
write("truncated-image.ext4-ptcl-img", good.slice(0, dataStart + 4096 * 3 + 100));
write("CRC32-checksum-mismatch.ext4-ptcl-img", patched(good.length, (b) => (b[dataStart + 4096 * 30 + 7] ^= 0x01)));

// format 0001 (made by partclone 0.2.89) and XXH128 (made by partclone 0.3.47)
const v1 = new Uint8Array(fs.readFileSync("fixtures/ext4-v1.ext4-ptcl-img"));
const v1Total = Number(new DataView(v1.buffer).getBigUint64(48, true));
const v1Data = 4160 + v1Total + 8;
const v1Broken = (edit: (b: Uint8Array) => void) => {
  const b = v1.slice();
  edit(b);
  return b;
};
write("bitmap-magic-BiTmAgIc-missing.ext4-ptcl-img", v1Broken((b) => (b[4160 + v1Total] = 0x62)));
// the 0001 CRC sees only the first byte of each block: flip one
write("CRC32_0001-checksum-mismatch.ext4-ptcl-img", v1Broken((b) => (b[v1Data + 5 * (4096 + 4)] ^= 0x80)));
const xxh = new Uint8Array(fs.readFileSync("fixtures/ext4-xxh128-k7.ext4-ptcl-img"));
const xxhData = HEADER + Math.ceil(new DataView(xxh.buffer).getUint32(60, true) / 8) + 4;
xxh[xxhData + 4096 * 9 + 100] ^= 0x04;
write("XXH128-checksum-mismatch.ext4-ptcl-img", xxh);
