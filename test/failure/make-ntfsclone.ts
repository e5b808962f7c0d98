// Makes the broken ntfsclone images in test/failure/ntfsclone/ from the good fixture; each is named
// by the error it must produce (the text before the first dot, dashes for spaces, "--" for a dash). Those that need
// most of the 2.4 MB image are gzipped. Run: bun test/failure/make-ntfsclone.ts
import fs from "node:fs";

const good = new Uint8Array(fs.readFileSync("fixtures/ntfs.ntfsclone-img"));
const dir = "test/failure/ntfsclone";
/** the first command byte (offset_to_image_data of the 10.1 fixture), and one cluster record */
const FIRST = 56;
const RECORD = 1 + 4096;

fs.rmSync(dir, { recursive: true, force: true });
fs.mkdirSync(dir, { recursive: true });
function write(name: string, bytes: Uint8Array) {
  fs.writeFileSync(`${dir}/${name}`, name.endsWith(".gz") ? Bun.gzipSync(new Uint8Array(bytes), { level: 9 }) : bytes);
}
function edited(length: number, edit: (b: Uint8Array, dv: DataView) => void): Uint8Array {
  const b = good.slice(0, length);
  edit(b, new DataView(b.buffer));
  return b;
}

// the backup boot sector's cluster (the last command) cut off: the short volume of issue 26
write("truncated-ntfsclone-image.backup-boot-sector-cluster-missing.ntfsclone-img.gz", good.slice(0, good.length - RECORD));
// the commands stop after three clusters, between two commands
write("truncated-ntfsclone-image.commands-end-at-cluster-3.ntfsclone-img", good.slice(0, FIRST + 3 * RECORD));
write("truncated-ntfsclone-cluster.ntfsclone-img", good.slice(0, FIRST + 2 * RECORD + 1000));
write("bad-ntfsclone-command-byte.ntfsclone-img", edited(FIRST + 2 * RECORD, (b) => (b[FIRST + RECORD] = 0x07)));
write("ntfsclone-gap-of-zero-clusters.ntfsclone-img", edited(FIRST + 2 * RECORD, (b) => b.fill(0, FIRST, FIRST + 9)));
write("ntfsclone-gap-runs-past-the-volume.ntfsclone-img", edited(FIRST + 2 * RECORD, (b, dv) => {
  b[FIRST] = 0x00;
  dv.setBigUint64(FIRST + 1, 1n << 32n, true);
}));
write("unsupported-ntfsclone-image-version.ntfsclone-img", edited(FIRST + RECORD, (b) => (b[16] = 11)));
write("ntfsclone-header-cluster_size-is-not-a-power-of-two.ntfsclone-img", edited(FIRST + RECORD, (_, dv) => dv.setUint32(18, 4097, true)));
write("ntfsclone-header-device_size-is-smaller-than-the-volume.ntfsclone-img", edited(FIRST + RECORD, (_, dv) => dv.setBigUint64(22, 4096n, true)));
write("ntfsclone-header-inuse-exceeds-the-cluster-count.ntfsclone-img", edited(FIRST + RECORD, (_, dv) => dv.setBigUint64(38, 5000n, true)));
write("ntfsclone-header-offset_to_image_data-is-absurd.ntfsclone-img", edited(FIRST + RECORD, (_, dv) => dv.setUint32(46, 0x7fffffff, true)));
