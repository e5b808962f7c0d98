// Makes the inputs in test/failure/bounds/ from good fixtures: headers whose counts and lengths
// are absurd, and compressed data that asks for too much memory. Each is named by the error it
// must produce (the text before the first dot, dashes for spaces) and must be refused within
// bounded time and memory, from a file and from a pipe. Run: bun test/failure/make-bounds.ts
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import { partcloneCrc32, PARTCLONE_CRC_SEED } from "../../src/checksum/crc32.ts";

const dir = "test/failure/bounds";
const ext4 = new Uint8Array(fs.readFileSync("fixtures/ext4.ext4-ptcl-img"));
const v1 = new Uint8Array(fs.readFileSync("fixtures/ext4-v1.ext4-ptcl-img"));
const ntfsclone = new Uint8Array(fs.readFileSync("fixtures/ntfs.ntfsclone-img"));

function write(name: string, bytes: Uint8Array) {
  fs.writeFileSync(`${dir}/${name}`, bytes);
}
function compress(argv: string[], input: Uint8Array): Uint8Array {
  const r = spawnSync(argv[0]!, argv.slice(1), { input });
  if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr}`);
  return new Uint8Array(r.stdout);
}
/** A partclone 0002 header (and what follows, up to `length`) with fields set and its crc made good. */
function v2(length: number, edit: (dv: DataView, b: Uint8Array) => void): Uint8Array {
  const b = ext4.slice(0, length);
  const dv = new DataView(b.buffer);
  edit(dv, b);
  dv.setUint32(106, partcloneCrc32(PARTCLONE_CRC_SEED, b.subarray(0, 106)), true);
  return b;
}

// the 110-byte header of the issue: 2^40 blocks, so a bitmap of 128 GiB, refused before it is read;
// 2^33 blocks, a bitmap of 1 GiB (at the limit), read as far as the input goes
for (const [name, blocks] of [["bitmap-larger-than-the-limit.2^40-blocks", 40n], ["truncated-bitmap.2^33-blocks", 33n]] as const) {
  const header = v2(110, (dv) => {
    dv.setBigUint64(52, 1n << (blocks + 12n), true);
    dv.setBigUint64(60, 1n << blocks, true);
  });
  write(`${name}.ext4-ptcl-img`, header);
  write(`${name}.ext4-ptcl-img.zst`, compress(["zstd", "-q", "-c"], header));
}
// bitmap mode NONE: every one of 2^43 blocks is used, and 16 KB follow
const noBitmap = v2(16384, (dv, b) => {
  dv.setBigUint64(52, 1n << 52n, true);
  dv.setBigUint64(60, 1n << 43n, true);
  dv.setBigUint64(68, 1n << 43n, true);
  dv.setBigUint64(76, 1n << 43n, true);
  dv.setUint32(84, 512, true);
  b[105] = 0;
});
write("truncated-image.bitmap-mode-NONE-2^43-blocks.ext4-ptcl-img", noBitmap);
write("truncated-image.bitmap-mode-NONE-2^43-blocks.ext4-ptcl-img.gz", compress(["gzip", "-c", "-n"], noBitmap));
// format 0001, byte bitmap: one byte per block of 2^40, refused; of 2^33, read as far as it goes
for (const [name, blocks] of [["bitmap-larger-than-the-limit.0001-2^40-blocks", 40n], ["truncated-bitmap.0001-2^33-blocks", 33n]] as const) {
  const v1Huge = v1.slice(0, 16384);
  new DataView(v1Huge.buffer).setBigUint64(40, 1n << (blocks + 12n), true);
  new DataView(v1Huge.buffer).setBigUint64(48, 1n << blocks, true);
  write(`${name}.ext4-ptcl-img`, v1Huge);
  write(`${name}.ext4-ptcl-img.xz`, compress(["xz", "-c", "-1"], v1Huge));
}
// ntfsclone: 2^40 clusters of 4 KiB and the first 64 KiB of the commands of a 4 MiB volume
const ntfsHuge = ntfsclone.slice(0, 65536);
new DataView(ntfsHuge.buffer).setBigInt64(22, 1n << 52n, true);
new DataView(ntfsHuge.buffer).setBigInt64(30, 1n << 40n, true);
write("truncated-ntfsclone-cluster.2^40-clusters.ntfsclone-img", ntfsHuge);
// compressed data whose header asks for a 1 GiB window / a 512 MiB dictionary
write("zstd-data-needs-too-much-memory-to-decode.1-GiB-window.ext4-ptcl-img.zst", compress(["zstd", "-q", "--long=30", "-c"], ext4));
write("xz-data-needs-too-much-memory-to-decode.512-MiB-dictionary.ext4-ptcl-img.xz", compress(["xz", "-c", "--lzma2=dict=512MiB"], ext4));
