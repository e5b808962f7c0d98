// Makes the broken partimage images in test/failure/partimage/ from the good one-volume fixture; each
// is named by the error it must produce (the text before the first dot, dashes for spaces, "--" for a dash). Names
// carry no volume number (.000), so none is taken for a volume of a set whose next one is missing.
// Those that need the image's data (438 KB) are gzipped. Run: bun test/failure/make-partimage.ts
import fs from "node:fs";

const good = new Uint8Array(fs.readFileSync("fixtures/ext2-z0.partimg.000"));
const dir = "test/failure/partimage";
/** where the structure after `magic` starts (ext2-z0 has one volume and no MBR) */
const after = (magic: string) => Buffer.from(good).indexOf(magic) + magic.length;
const MAIN = 512; // the volume header's size
const MBR = after("MAGIC-BEGIN-MBRBACKUP") - "MAGIC-BEGIN-MBRBACKUP".length;
const [LOCAL, BITMAP, INFO, DATA] = ["LOCALHEADER", "BITMAP", "INFO", "DATABLOCKS"].map((m) => after(`MAGIC-BEGIN-${m}`)) as [number, number, number, number];
/** the first check after 64 KiB of data, and the 16 KiB tail */
const CHECK = DATA + 65536;
const TAIL = good.length - 16384;

fs.rmSync(dir, { recursive: true, force: true });
fs.mkdirSync(dir, { recursive: true });
function write(name: string, bytes: Uint8Array) {
  fs.writeFileSync(`${dir}/${name}`, name.endsWith(".gz") ? Bun.gzipSync(new Uint8Array(bytes), { level: 9 }) : bytes);
}
function flipped(length: number, at: number, bit = 0x01): Uint8Array {
  const b = good.slice(0, length);
  b[at]! ^= bit;
  return b;
}
function signedByteSum(b: Uint8Array): number {
  let s = 0;
  for (const x of b) s += (x << 24) >> 24;
  return s >>> 0;
}

write("partimage-main-header-checksum-mismatch.partimg", flipped(LOCAL, MAIN + 9600));
write("missing-partimage-MAGIC--BEGIN--MBRBACKUP-magic.partimg", flipped(LOCAL, MBR));
write("partimage-local-header-checksum-mismatch.partimg", flipped(BITMAP, LOCAL + 40));
write("missing-partimage-MAGIC--BEGIN--BITMAP-magic.partimg", flipped(INFO, BITMAP - 1));
write("partimage-file-system-info-checksum-mismatch.partimg", flipped(DATA, INFO + 5));
write("truncated-partimage-bitmap.partimg", good.slice(0, BITMAP + 10));
write("partimage-CRC32-mismatch.partimg.gz", flipped(good.length, DATA + 5000));
write("missing-partimage-local-check.partimg.gz", flipped(good.length, CHECK));
write("partimage-local-check-in-the-wrong-place.partimg.gz", flipped(good.length, CHECK + 8));
write("missing-partimage-MAGIC--BEGIN--TAIL-magic.partimg.gz", flipped(good.length, TAIL - 3));
write("partimage-image-checksum-mismatch.partimg.gz", flipped(good.length, TAIL));
write("truncated-partimage-data.partimg.gz", good.slice(0, DATA + 100_000));
write("truncated-partimage-tail.partimg.gz", good.slice(0, good.length - 100));
// 2^40 blocks of 1 KiB: a 128 GiB bitmap, refused before it is read (the local header's sum made good)
const huge = good.slice(0, BITMAP);
const dv = new DataView(huge.buffer);
dv.setBigUint64(LOCAL + 16, 1n << 40n, true);
dv.setBigUint64(LOCAL + 24, 1n << 37n, true);
dv.setUint32(LOCAL + 16384, signedByteSum(huge.subarray(LOCAL, LOCAL + 16384)), true);
write("bitmap-larger-than-the-limit.2^40-blocks.partimg", huge);
