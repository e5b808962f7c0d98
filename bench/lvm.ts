// bun bench/lvm.ts (part of npm run bench): `imgtool restore DIR` of a Clonezilla folder with LVM (the PV written as
// vgcfgrestore leaves it, every LV image laid at its extents) against the sum of restoring its images one by one
// (imgtool, partclone.restore) and the floor (decompressing every image to /dev/null). Target: restore DIR within
// 1.5x of the sum of imgtool's own per-image restores. Folders: the fixtures (tiny) and, in BENCH_LVM_FOLDERS
// (comma-separated paths), larger ones such as ../shared/fixtures/clonezilla/make-lvm.sh makes (900 MiB disk).
import fs from "node:fs";
import path from "node:path";
import { CLI, ROOT, WORK as BENCH_WORK, need, sh, wall } from "./common.ts";
import { readClonezillaFolder } from "../src/disk/clonezilla.ts";

const WORK = path.join(BENCH_WORK, "lvm");
const TARGET = 1.5;

function folders(): string[] {
  const out: string[] = [];
  for (const name of ["lvm-small", "lvm-multi", "lvm-ntfsclone"]) {
    sh(`mkdir -p ${WORK}/fixtures && rm -rf ${WORK}/fixtures/${name} && tar xzf ${ROOT}/fixtures/clonezilla-lvm/${name}.tar.gz -C ${WORK}/fixtures`);
    out.push(path.join(WORK, "fixtures", name));
  }
  for (const dir of (process.env.BENCH_LVM_FOLDERS ?? "").split(",").filter(Boolean)) {
    // a copy: the seek indexes restore builds are written beside the images
    const copy = path.join(WORK, "extra", path.basename(dir));
    sh(`mkdir -p ${WORK}/extra && rm -rf ${copy} && cp -r ${dir} ${copy}`);
    out.push(copy);
  }
  return out;
}

function main() {
  fs.mkdirSync(WORK, { recursive: true });
  const bun = process.execPath;
  const rows: { folder: string; run: string; seconds: number; note: string }[] = [];
  for (const dir of folders()) {
    const name = path.basename(dir);
    const folder = readClonezillaFolder(dir);
    const disks = folder.disks.map((d) => d.layout.name);
    const images = folder.images;
    const out = path.join(WORK, "disk.raw");
    const add = (run: string, cmd: string, note = "") => {
      sh(`rm -f ${WORK}/part-* ${out}* && sync`);
      const seconds = wall(cmd);
      rows.push({ folder: name, run, seconds, note });
      console.error(`bench: ${name}: ${run}: ${seconds.toFixed(2)} s`);
    };
    sh(`cat ${dir}/* > /dev/null`);
    const decompressor = (f: string) => (f.includes(".zst") ? "zstd -dc" : f.includes(".gz") ? "pigz -dc" : "cat");
    add("floor: decompress every image > /dev/null", images.map((i) => `cat ${i.pieces.join(" ")} | ${decompressor(i.pieces[0]!)} > /dev/null`).join(" && "));
    const restoreAll = disks.map((d) => `${bun} ${CLI} restore ${dir} ${disks.length > 1 ? `--disk ${d}` : ""} -o ${out}.${d} --sparse -q`).join(" && ");
    add("imgtool restore DIR --sparse (first run)", restoreAll, `${disks.length} disk(s), PVs composed, LVs at their extents; seek indexes built for ntfsclone/dd LV images`);
    add("imgtool restore DIR --sparse (second run)", restoreAll, "the same, any seek index reused");
    // a partclone.dd image without a partclone header is the raw bytes: decompressed, as restore of the folder does
    const one = (i: (typeof images)[number]) => (i.fs === "dd" ? `cat ${i.pieces.join(" ")} | ${decompressor(i.pieces[0]!)} > ${WORK}/part-${i.partition}` : `${bun} ${CLI} restore ${i.pieces[0]} -o ${WORK}/part-${i.partition} --sparse -q`);
    add("sum: imgtool restore of each image", images.map(one).join(" && "), `${images.length} processes, no table, no PV`);
    const ptcl = images.filter((i) => i.tool === "partclone" && i.fs !== "dd");
    if (need("partclone.restore") && ptcl.length) {
      add(`sum: partclone.restore of each partclone image (${ptcl.length})`, ptcl.map((i) => `cat ${i.pieces.join(" ")} | ${decompressor(i.pieces[0]!)} | partclone.restore -q -s - -O ${WORK}/part-${i.partition} -W 2>/dev/null`).join(" && "), "peer, one pipeline per image");
    }
    sh(`rm -f ${WORK}/part-* ${out}*`);
  }
  console.log(`\nlvm: restore DIR of LVM folders; seconds of wall time on this machine (2 cores shared); target: restore DIR (second run) <= ${TARGET}x the sum of imgtool's per-image restores\n`);
  console.log(`| ${"folder".padEnd(12)} | ${"run".padEnd(56)} | seconds | note |`);
  console.log(`|${"-".repeat(14)}|${"-".repeat(58)}|---------|------|`);
  for (const r of rows) console.log(`| ${r.folder.padEnd(12)} | ${r.run.padEnd(56)} | ${r.seconds.toFixed(2).padStart(7)} | ${r.note} |`);
  for (const name of new Set(rows.map((r) => r.folder))) {
    const warm = rows.find((r) => r.folder === name && r.run.includes("second run"))!.seconds;
    const sum = rows.find((r) => r.folder === name && r.run.startsWith("sum: imgtool"))!.seconds;
    console.log(`${name}: restore DIR / sum of image restores = ${(warm / sum).toFixed(2)} (target <= ${TARGET}) ${warm / sum <= TARGET ? "met" : "NOT met"}`);
  }
}

main();
