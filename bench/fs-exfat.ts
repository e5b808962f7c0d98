// bun bench/fs-exfat.ts (part of npm run bench): extract / of an exFAT image without restoring it, against
// restore + loop device + exfat-fuse mount + cp -a (this kernel has no exfat module) in one run.
// Makes (once, cached in .bench/) a 512 MiB exFAT volume filled through exfat-fuse (~385 MiB of 32 KiB clusters used):
// 5 random 64 MiB files and 2,000 small files in 20 directories; its partclone image. Needs root, exfat-fuse,
// exfatprogs, partclone.
import fs from "node:fs";
import path from "node:path";
import { CLI, WORK, need, sh, wall, writeRandomFiles } from "./common.ts";

const IMAGE = path.join(WORK, "exfat-512m.exfat-ptcl-img");

/** The bench image, made on first use. */
function image(): string {
  if (fs.existsSync(`${IMAGE}.done`)) return IMAGE;
  console.error("bench: making a 512 MiB exFAT volume through exfat-fuse, and its partclone image (once; cached in .bench/)");
  const [vol, img, mnt] = [`${IMAGE}.vol`, IMAGE, path.join(WORK, "exfat-mnt")];
  fs.mkdirSync(mnt, { recursive: true });
  sh(`rm -f ${vol} && truncate -s 512M ${vol} && mkfs.exfat -L BENCH ${vol} >/dev/null`);
  const loop = sh(`losetup -f --show ${vol}`).trim();
  try {
    sh(`mount.exfat-fuse ${loop} ${mnt} >/dev/null 2>&1`);
    try {
      sh(`mkdir ${mnt}/big`);
      writeRandomFiles(`${mnt}/big`, 5);
      sh(`cd ${mnt} && mkdir small && for d in $(seq 0 19); do mkdir small/d$d; for f in $(seq -w 0 99); do printf 'file %s of dir %s\\n%.0s' $f $d $(seq 1 $((RANDOM % 200 + 1))) > small/d$d/file-00$f.txt; done; done`);
    } finally {
      sh(`umount ${mnt}`);
    }
  } finally {
    sh(`losetup -d ${loop}`);
  }
  sh(`partclone.exfat -q -c -s ${vol} -O ${img} 2>/dev/null`);
  fs.rmSync(vol);
  fs.writeFileSync(`${img}.done`, "");
  return img;
}

function main() {
  if (process.getuid?.() !== 0) {
    console.log("bench/fs-exfat.ts: skipped (needs root for the loop device and the FUSE mount)");
    return;
  }
  for (const tool of ["mount.exfat-fuse", "mkfs.exfat", "partclone.exfat"]) {
    if (!need(tool)) {
      console.log(`bench/fs-exfat.ts: skipped (${tool} is missing)`);
      return;
    }
  }
  const img = image();
  const imageBytes = fs.statSync(img).size;
  const dest = path.join(WORK, "exfat-extract");
  const ref = path.join(WORK, "exfat-cp");
  const raw = path.join(WORK, "exfat-all.raw");
  const mnt = path.join(WORK, "exfat-m2");
  sh(`rm -rf ${dest} ${ref}; mkdir -p ${mnt}`);
  const extract = wall(`${process.execPath} ${CLI} extract ${img} -o ${dest}`);
  const restore = wall(`${process.execPath} ${CLI} restore ${img} -o ${raw} --sparse --force`);
  const loop = sh(`losetup -f --show -r ${raw}`).trim();
  let mountCp: number;
  try {
    mountCp = wall(`mount.exfat-fuse -o ro ${loop} ${mnt} >/dev/null 2>&1 && cp -a ${mnt} ${ref}; umount ${mnt}`);
  } finally {
    sh(`losetup -d ${loop}`);
  }
  const floor = wall(`cat ${img} > /dev/null`);
  const same = Bun.spawnSync(["diff", "-r", "--no-dereference", dest, ref], { stdout: "ignore" }).exitCode === 0;
  sh(`rm -rf ${dest} ${ref} ${raw}`);

  console.log(`image: ${img} (${imageBytes.toLocaleString("en-US")} bytes, uncompressed partclone; page cache warm)`);
  console.log("| what | seconds | note |");
  console.log("| --- | --- | --- |");
  console.log(`| imgtool extract / -o DIR | ${extract.toFixed(2)} | target: no slower than the next row |`);
  console.log(`| restore --sparse + loop device + exfat-fuse + cp -a | ${(restore + mountCp).toFixed(2)} | restore ${restore.toFixed(2)} s + mount/cp -a ${mountCp.toFixed(2)} s |`);
  console.log(`| floor: cat IMG > /dev/null | ${floor.toFixed(2)} | |`);
  console.log(`extracted tree equals cp -a's (contents): ${same}`);
}

main();
