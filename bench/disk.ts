// bun bench/disk.ts (part of npm run bench): `imgtool restore DIR` of a whole Clonezilla disk against restoring its
// partitions one by one (imgtool, partclone.restore), Clonezilla's own `ocs-sr restoredisk` onto a loop device, and the
// floor (decompressing every image to /dev/null), in one run, one table. Uses fixtures/clonezilla (300 MiB disks).
import fs from "node:fs";
import path from "node:path";
import { CLI, ROOT, WORK as BENCH_WORK, need, sh, wall } from "./common.ts";
import { readClonezillaFolder } from "../src/disk/clonezilla.ts";

const WORK = path.join(BENCH_WORK, "disk");
const FOLDERS = (process.env.BENCH_DISK_FOLDERS ?? "clonezilla-gpt-gzip,clonezilla-mbr-zstd").split(",");

/** wall seconds of a shell command (all its processes) */
function timed(cmd: string): number {
  sh("sync");
  return wall(cmd);
}

function main() {
  fs.mkdirSync(WORK, { recursive: true });
  const bun = process.execPath;
  const rows: { folder: string; run: string; seconds: number; note: string }[] = [];
  for (const name of FOLDERS) {
    const dir = path.join(ROOT, "fixtures", "clonezilla", name);
    if (!fs.existsSync(dir)) {
      console.log(`bench: skipped ${name}: not in fixtures/clonezilla`);
      continue;
    }
    const folder = readClonezillaFolder(dir);
    const layout = folder.disks[0]!.layout;
    const images = layout.partitions.flatMap((p) => (p.content.kind === "image" ? [{ name: p.name, first: p.content.pieces[0]!, pieces: p.content.pieces, fs: p.content.fs }] : []));
    const out = path.join(WORK, "disk.raw");
    const add = (run: string, cmd: string, note = "") => {
      fs.rmSync(out, { force: true });
      sh(`rm -f ${WORK}/part-*`);
      const seconds = timed(cmd);
      rows.push({ folder: name, run, seconds, note });
      console.error(`bench: ${name}: ${run}: ${seconds.toFixed(2)} s`);
    };
    sh(`cat ${dir}/* > /dev/null`);
    const decompressor = (f: string) => (f.includes(".zst") ? "zstd -dc" : f.includes(".gz") ? "pigz -dc" : "cat");
    add("floor: decompress every image > /dev/null", images.map((i) => `cat ${i.pieces.join(" ")} | ${decompressor(i.first)} > /dev/null`).join(" && "));
    add("floor: dd the disk's size of zeros, fsync", `dd if=/dev/zero of=${out} bs=4M count=${Math.ceil(layout.size / (4 << 20))} conv=fsync status=none`, "what writing every byte costs here");
    add("imgtool restore DIR --sparse", `${bun} ${CLI} restore ${dir} -o ${out} --sparse -q`, "whole disk, holes for unused");
    add("imgtool restore DIR (zeros written)", `${bun} ${CLI} restore ${dir} -o ${out} -q`, "whole disk, every byte written");
    add("sum: imgtool restore of each partition image", images.map((i) => `${bun} ${CLI} restore ${i.first} -o ${WORK}/part-${i.name} --sparse -q`).join(" && "), `${images.length} processes, no table, no padding`);
    if (need("partclone.restore")) {
      add("sum: partclone.restore of each partition", images.map((i) => `cat ${i.pieces.join(" ")} | ${decompressor(i.first)} | partclone.restore -q -s - -O ${WORK}/part-${i.name} -W 2>/dev/null`).join(" && "), "peer, one pipeline per partition");
    }
    const ocs = clonezillaRestore(name, dir, layout.size);
    if (typeof ocs === "number") rows.push({ folder: name, run: "peer: ocs-sr restoredisk onto a loop device", seconds: ocs, note: "Clonezilla 5.3.17 batch mode, its checks included" });
    else console.log(`bench: ${name}: Clonezilla's own restore not timed: ${ocs}`);
    fs.rmSync(out, { force: true });
    sh(`rm -f ${WORK}/part-*`);
  }
  console.log("\ndisk: 300 MiB, the fixture folders; seconds of wall time on this machine (2 cores shared)\n");
  console.log(`| ${"folder".padEnd(20)} | ${"run".padEnd(46)} | seconds | note |`);
  console.log(`|${"-".repeat(22)}|${"-".repeat(48)}|---------|------|`);
  for (const r of rows) console.log(`| ${r.folder.padEnd(20)} | ${r.run.padEnd(46)} | ${r.seconds.toFixed(2).padStart(7)} | ${r.note} |`);
}

/** `ocs-sr restoredisk` onto a zeroed loop device of the disk's size: seconds, or why it cannot run. */
function clonezillaRestore(name: string, dir: string, size: number): number | string {
  if (process.getuid?.() !== 0) return "needs root (loop devices)";
  if (!need("ocs-sr")) return "ocs-sr is not installed (apt-get install clonezilla drbl partclone)";
  const img = path.join(WORK, "ocs-target.img");
  const imageName = `imgtool-bench-${name}`;
  sh(`mkdir -p /home/partimag && rm -rf /home/partimag/${imageName} && cp -r ${dir} /home/partimag/${imageName} && rm -f ${img} && truncate -s ${size} ${img}`);
  const loop = sh(`losetup -f --show -P ${img}`).trim();
  const dev = loop.replace("/dev/", "");
  // no udev: make the partition nodes the kernel announces while Clonezilla runs, as fixtures/clonezilla/make.sh does
  const nodes = `for s in /sys/block/${dev}/${dev}p*; do [ -e "$s/dev" ] || continue; n=$(basename "$s"); [ -e /dev/$n ] || { x=$(cat $s/dev); mknod /dev/$n b \${x%%:*} \${x##*:}; }; done`;
  const log = path.join(WORK, "ocs-restore.log");
  try {
    const t = performance.now();
    sh(`( ocs-sr -b -e1 auto -e2 -j2 -icds -scr -p true restoredisk ${imageName} ${dev} > ${log} 2>&1; echo rc=$? >> ${log} ) & for i in $(seq 1800); do partx -a ${loop} 2>/dev/null; ${nodes}; grep -aq '^rc=' ${log} && break; sleep 0.5; done`);
    const seconds = (performance.now() - t) / 1000;
    const rc = /^rc=(\d+)/m.exec(fs.readFileSync(log, "utf8"))?.[1];
    return rc === "0" ? seconds : `ocs-sr ended with rc=${rc} (see ${log})`;
  } finally {
    sh(`losetup -d ${loop}; rm -rf /home/partimag/${imageName} ${img}`);
  }
}

main();
