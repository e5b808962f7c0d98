import fs from "node:fs";
import path from "node:path";
import { ChecksumError, ImageError } from "../errors.ts";
import { verifyImage } from "../formats/verify.ts";
import type { ProgressFactory } from "../progress.ts";
import type { ClonezillaFolder } from "./clonezilla.ts";
import type { DiskPartition } from "./disk-volume.ts";

export interface DiskVerifyResult {
  /** checksums that did not hold (data checksums of images, MD5SUMS & co.) */
  checksumProblems: string[];
  /** missing or damaged pieces, disagreements between the folder's files */
  otherProblems: string[];
  /** one line per thing checked that held */
  checked: string[];
}

const HASH_CHUNK = 4 << 20;

/**
 * Every partition image read through with its checksums, every line of MD5SUMS/SHA1SUMS/
 * SHA256SUMS/SHA512SUMS/B2SUMS recomputed, and the folder's own consistency.
 */
export function verifyFolder(folder: ClonezillaFolder, progress?: ProgressFactory): DiskVerifyResult {
  const r: DiskVerifyResult = { checksumProblems: [], otherProblems: [...folder.problems], checked: [] };
  for (const disk of folder.disks) for (const p of disk.layout.partitions) verifyPart(p, r, progress);
  // the logical volumes, each from its own image (lvm_VG.conf, VG-LV.*-ptcl-img.*)
  for (const vg of folder.savedLvm?.vgs ?? []) {
    for (const l of vg.lvs) {
      const content = folder.lvContent(l.imageName, l.lv.size);
      verifyPart({ name: `${vg.vg.name}/${l.lv.name}`, number: 0, start: 0, size: l.lv.size, type: "lvm", content }, r, progress);
    }
  }
  for (const list of folder.checksums) {
    let good = 0;
    for (const entry of list.entries) {
      const file = path.join(folder.dir, entry.name);
      if (entry.name.includes("/") || entry.name === ".." || entry.name === ".") {
        r.otherProblems.push(`${list.file}: ${JSON.stringify(entry.name)} is not a file of the folder`);
        continue;
      }
      let st: fs.Stats;
      try {
        st = fs.lstatSync(file);
      } catch {
        r.otherProblems.push(`${list.file}: lists ${entry.name}, which is missing`);
        continue;
      }
      if (!st.isFile()) {
        r.otherProblems.push(`${list.file}: lists ${entry.name}, which is not a regular file (not followed)`);
        continue;
      }
      const digest = hashFile(file, list.algorithm);
      if (digest !== entry.digest) r.checksumProblems.push(`${entry.name}: ${list.algorithm} does not match ${path.basename(list.file)}`);
      else good++;
    }
    r.checked.push(`${path.basename(list.file)}: ${good} of ${list.entries.length} files match`);
  }
  return r;
}

export function hashFile(file: string, algorithm: string): string {
  const h = new Bun.CryptoHasher(algorithm as "sha256");
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const buf = new Uint8Array(HASH_CHUNK);
    for (let n; (n = fs.readSync(fd, buf)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex");
}

/** One partition's (or logical volume's) image read through with its checksums; what held or failed goes into `r`. */
function verifyPart(p: DiskPartition, r: DiskVerifyResult, progress: ProgressFactory | undefined): void {
  const c = p.content;
  try {
    if (c.kind === "image") {
      const image = c.open();
      try {
        if (image.info.deviceSize > p.size) r.otherProblems.push(`${p.name}: the image's volume (${image.info.deviceSize} bytes) is larger than the partition (${p.size} bytes)`);
        const v = verifyImage(image, progress);
        for (const line of v.problems) (line.includes("checksum") || line.includes("CRC") ? r.checksumProblems : r.otherProblems).push(`${p.name}: ${line}`);
        if (v.ok) r.checked.push(`${p.name}: ${path.basename(c.pieces[0]!)}${c.pieces.length > 1 ? ` (+${c.pieces.length - 1} pieces)` : ""} OK (${image.info.checksum === "NONE" ? "no data checksums" : `${image.info.checksum} checksums`})`);
      } finally {
        image.close();
      }
    } else if (c.kind === "dd") {
      const s = c.open();
      try {
        const buf = new Uint8Array(HASH_CHUNK);
        let n = 0;
        for (let got; (got = s.read(buf)) > 0; ) n += got;
        if (n !== p.size) r.otherProblems.push(`${p.name}: the dd image holds ${n} bytes, the partition ${p.size}`);
        else r.checked.push(`${p.name}: ${path.basename(c.pieces[0]!)} OK (dd, ${n} bytes)`);
      } finally {
        s.close();
      }
    } else if (c.kind === "absent" && c.reason.startsWith("in parts")) {
      r.otherProblems.push(`${p.name}: ${c.reason}`);
    }
  } catch (e) {
    if (e instanceof ChecksumError) r.checksumProblems.push(`${p.name}: ${e.message}`);
    else if (e instanceof ImageError) r.otherProblems.push(`${p.name}: ${e.message}`);
    else throw e;
  }
}
