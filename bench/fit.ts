// bun bench/fit.ts (part of npm run bench): `imgtool restore DIR --fit` of a Clonezilla-style folder with 1.2 GiB
// used (GPT, two ext4) onto a file 70% of its disk, against the plain restore onto a full-size file (target: at most
// 2x) and the manual route (plain restore, cut each partition out, e2fsck + resize2fs, lay them into a new table). One run.
import fs from "node:fs";
import path from "node:path";
import { CLI, need, sh, WORK as BENCH_WORK, wall, withExt4Volume } from "./common.ts";

const WORK = path.join(BENCH_WORK, "fit");
const MIB = 1 << 20;
const SS = 512;
/** partitions of the made-up disk: size and MiB of random files */
const PARTS = [
  { size: 3072 * MIB, fill: 1100 },
  { size: 1024 * MIB, fill: 100 },
];

function makeFolder(dir: string): number {
  fs.mkdirSync(dir, { recursive: true });
  let start = 2048;
  const sf = ["label: gpt", "label-id: 5B0C3E1A-7D4E-4F1A-9B8C-2D3E4F5A6B7C", "device: /dev/loop0", "unit: sectors", "first-lba: 34", "sector-size: 512", ""];
  for (const [i, p] of PARTS.entries()) {
    const vol = path.join(WORK, `vol${i + 1}.img`);
    withExt4Volume(vol, String(p.size), path.join(WORK, "mnt"), (mnt) => sh(`dd if=/dev/urandom of=${mnt}/random.bin bs=4M count=${p.fill / 4} status=none`));
    sh(`partclone.ext4 -q -c -s ${vol} -o - 2>/dev/null | zstd -q -1 -T0 > ${dir}/loop0p${i + 1}.ext4-ptcl-img.zst`);
    fs.rmSync(vol);
    sf.push(`/dev/loop0p${i + 1} : start=${String(start).padStart(12)}, size=${String(p.size / SS).padStart(12)}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5B0C3E1A-7D4E-4F1A-9B8C-2D3E4F5A6B7${i}`);
    start += p.size / SS;
  }
  const sectors = start + 33;
  fs.writeFileSync(path.join(dir, "loop0-pt.sf"), `${sf.join("\n")}\n`);
  fs.writeFileSync(path.join(dir, "loop0-pt.parted"), `Model: Loopback device (loopback)\nDisk /dev/loop0: ${sectors}s\nSector size (logical/physical): 512B/512B\nPartition Table: gpt\n`);
  fs.writeFileSync(path.join(dir, "disk"), "loop0\n");
  fs.writeFileSync(path.join(dir, "parts"), PARTS.map((_, i) => `loop0p${i + 1}`).join(" "));
  return sectors * SS;
}

function main() {
  for (const tool of ["partclone.ext4", "zstd", "resize2fs", "e2fsck", "sfdisk", "mkfs.ext4"]) {
    if (!need(tool)) return void console.log(`bench: fit skipped: ${tool} is not installed`);
  }
  if (process.getuid?.() !== 0) return void console.log("bench: fit skipped: needs root (loop mounts to fill the volumes)");
  fs.rmSync(WORK, { recursive: true, force: true });
  fs.mkdirSync(WORK, { recursive: true });
  const dir = path.join(WORK, "folder");
  const diskSize = makeFolder(dir);
  const target = Math.floor((diskSize * 0.7) / MIB) * MIB;
  const bun = process.execPath;
  const full = path.join(WORK, "full.img");
  const fitted = path.join(WORK, "fitted.img");
  const tmp = path.join(WORK, "tmp");
  fs.mkdirSync(tmp);
  sh(`cat ${dir}/* > /dev/null`);
  const rows: { run: string; seconds: number; note: string }[] = [];

  sh("sync");
  const plain = wall(`${bun} ${CLI} restore ${dir} -o ${full} -q`);
  console.error(`bench: fit: plain restore ${plain.toFixed(2)} s`);
  rows.push({ run: "imgtool restore DIR (full-size file)", seconds: plain, note: `${(diskSize / MIB).toFixed(0)} MiB disk` });
  sh("sync");
  const fit = wall(`${bun} ${CLI} restore ${dir} -o ${fitted} --fit --size ${target} --tmp-dir ${tmp} -q`);
  console.error(`bench: fit: restore --fit ${fit.toFixed(2)} s`);
  rows.push({ run: "imgtool restore DIR --fit (70% file)", seconds: fit, note: `${(target / MIB).toFixed(0)} MiB; ${(fit / plain).toFixed(2)}x the plain restore (target <= 2x)` });

  // the manual route, to the same layout: cut each partition out of the full restore, shrink it, lay it into a new table
  const layout = sh(`sfdisk -d ${fitted}`);
  const parts = [...layout.matchAll(/(\d+) : start=\s*(\d+), size=\s*(\d+)/g)].map((m) => ({ n: Number(m[1]), start: Number(m[2]), size: Number(m[3]) }));
  const original = [...sh(`sfdisk -d ${full}`).matchAll(/(\d+) : start=\s*(\d+), size=\s*(\d+)/g)].map((m) => ({ n: Number(m[1]), start: Number(m[2]), size: Number(m[3]) }));
  const manualDisk = path.join(WORK, "manual.img");
  sh("sync");
  const restoreAgain = wall(`rm -f ${full} && ${bun} ${CLI} restore ${dir} -o ${full} -q`);
  const steps = [
    ...original.map((o) => {
      const p = parts.find((x) => x.n === o.n)!;
      const file = path.join(WORK, `manual-p${o.n}.img`);
      return `dd if=${full} of=${file} bs=4M iflag=skip_bytes,count_bytes skip=${o.start * SS} count=${o.size * SS} conv=sparse status=none && e2fsck -fy ${file} >/dev/null; resize2fs ${file} ${Math.floor((p.size * SS) / 4096)} >/dev/null 2>&1 && truncate -s ${p.size * SS} ${file}`;
    }),
    `rm -f ${manualDisk} && truncate -s ${target} ${manualDisk} && sfdisk -q ${manualDisk} < ${path.join(WORK, "layout.sf")}`,
    ...parts.map((p) => `dd if=${path.join(WORK, `manual-p${p.n}.img`)} of=${manualDisk} bs=4M oflag=seek_bytes seek=${p.start * SS} conv=notrunc status=none`),
  ];
  fs.writeFileSync(path.join(WORK, "layout.sf"), layout.replace(/^device:.*$/m, "").replace(/^last-lba:.*$/m, ""));
  sh("sync");
  const manual = restoreAgain + wall(steps.join(" && "));
  rows.push({ run: "manual: restore, dd out, e2fsck+resize2fs, sfdisk, dd in", seconds: manual, note: `${(fit / manual).toFixed(2)}x of it is --fit` });

  console.log(`\nfit: GPT disk of two ext4 (${PARTS.map((p) => `${p.fill} MiB used of ${p.size / MIB} MiB`).join(", ")}), zstd -1 partclone images; one run, seconds of wall time (2 cores shared)\n`);
  console.log(`| ${"run".padEnd(58)} | seconds | note |`);
  console.log(`|${"-".repeat(60)}|---------|------|`);
  for (const r of rows) console.log(`| ${r.run.padEnd(58)} | ${r.seconds.toFixed(2).padStart(7)} | ${r.note} |`);
  console.log(`\n| target (issue 24) | measured | limit | |\n|---|---|---|---|`);
  console.log(`| restore --fit ≤ 2x the plain restore | ${(fit / plain).toFixed(2)}x | 2x | ${fit / plain <= 2 ? "met" : "MISSED"} |`);
  if (process.env.BENCH_FIT_KEEP !== "1") fs.rmSync(WORK, { recursive: true, force: true });
}

main();
