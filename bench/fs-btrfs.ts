// bun bench/fs-btrfs.ts (part of npm run bench): files out of a btrfs image with zstd-compressed data,
// against restore + kernel loop mount + cp -a, in one run. Makes (once, cached in .bench/) a 2 GiB btrfs
// mounted compress-force=zstd holding ~1.3 GiB: 12 text files of ~69 MB (compressed extents), 8 random ones
// of 64 MiB and 3,000 small files in 30 directories; its partclone image and that image in one zstd frame.
// Needs root (loop mount), btrfs-progs, partclone.btrfs, zstd.
import fs from "node:fs";
import path from "node:path";
import { CLI, WORK, need, printColumns, sh, wall, writeRandomFiles, writeTextFiles } from "./common.ts";
import { openImage } from "../src/formats/detect.ts";
import { openFileSystem } from "../src/fs/open.ts";
import { resolveFollowing } from "../src/fs/extract.ts";
import { imageVolume } from "../src/volume/volume.ts";

const TARGET = "/small/d17/file-0042.txt";

/** The cached partclone image of the bench's btrfs, made on first use. */
function benchImage(): string {
  const img = path.join(WORK, "btrfs-2g.btrfs-ptcl-img");
  if (fs.existsSync(`${img}.done`)) return img;
  console.error("bench: making a 2 GiB btrfs (compress-force=zstd) with ~1.3 GiB of files and its partclone image (once; cached in .bench/)");
  const vol = path.join(WORK, "btrfs-2g.vol");
  const mnt = path.join(WORK, "btrfs-mnt");
  sh(`mkdir -p ${mnt} && rm -f ${vol} && truncate -s 2G ${vol} && mkfs.btrfs -q -f ${vol} && mount -o loop,compress-force=zstd ${vol} ${mnt} && mkdir ${mnt}/text ${mnt}/big`);
  try {
    writeTextFiles(`${mnt}/text`, 12);
    writeRandomFiles(`${mnt}/big`, 8);
    sh(`cd ${mnt} && mkdir small && for d in $(seq 0 29); do mkdir small/d$d; for f in $(seq -w 0 99); do printf 'file %s of dir %s\\n%.0s' $f $d $(seq 1 $((RANDOM % 200 + 1))) > small/d$d/file-00$f.txt; done; done`);
  } finally {
    sh(`umount ${mnt}`);
  }
  sh(`partclone.btrfs -q -c -s ${vol} -O ${img} 2>/dev/null && rm ${vol} && touch ${img}.done`);
  return img;
}

/** What this process has read so far (read(2) and friends), from /proc/self/io. */
const bytesRead = () => Number(/rchar: (\d+)/.exec(fs.readFileSync("/proc/self/io", "utf8"))![1]);
const seconds = (s: number) => s.toFixed(2);
const met = (ok: boolean) => (ok ? "met" : "MISSED");

/** TARGET out of the zstd image through its seek index, in this process: seconds, bytes read, the file. */
function getInProcess(zst: string): { getSeconds: number; getRead: number; bytes: Uint8Array } {
  const readBefore = bytesRead();
  const started = performance.now();
  const fsys = openFileSystem(imageVolume(openImage(zst, { seekIndex: { mode: "use-if-present" } })));
  try {
    const target = resolveFollowing(fsys, new TextEncoder().encode(TARGET))!;
    const bytes = new Uint8Array(target.size);
    fsys.readFile(target, 0, bytes);
    return { getSeconds: (performance.now() - started) / 1000, getRead: bytesRead() - readBefore, bytes };
  } finally {
    fsys.close();
  }
}

function main() {
  const why = process.getuid?.() !== 0 ? "needs root for the loop mounts" : !need("mkfs.btrfs") || !need("partclone.btrfs") || !need("zstd") ? "needs btrfs-progs, partclone.btrfs and zstd" : "";
  if (why) {
    console.log(`bench/fs-btrfs.ts: skipped (${why})`);
    return;
  }
  fs.mkdirSync(WORK, { recursive: true });
  const img = benchImage();
  const zst = `${img}.zst`;
  if (!fs.existsSync(`${zst}.done`)) sh(`zstd -q -f -T2 -3 ${img} -o ${zst} && touch ${zst}.done`);
  const zstBytes = fs.statSync(zst).size;
  const out = path.join(WORK, "btrfs-get.out");
  const table = [["what", "seconds", "read of the image", "target"]];

  fs.rmSync(`${zst}.imgtool-index`, { force: true });
  table.push(["imgtool get from IMG.zst, no index yet (builds it)", seconds(wall(`${process.execPath} ${CLI} get ${zst} ${TARGET} > ${out}`)), "", ""]);
  const { getSeconds, getRead, bytes } = getInProcess(zst);
  table.push([`get ${TARGET} from IMG.zst, index present (in process)`, seconds(getSeconds), `${getRead.toLocaleString("en-US")} B = ${((getRead / zstBytes) * 100).toFixed(3)}%`, `≤ 2 s, ≤ 1%: ${met(getSeconds <= 2 && getRead <= zstBytes / 100)}`]);
  table.push(["imgtool get from IMG.zst, index present (CLI, with Bun's start)", seconds(wall(`${process.execPath} ${CLI} get ${zst} ${TARGET} > ${out}`)), "", ""]);
  if (!fs.readFileSync(out).equals(bytes)) throw new Error("bench: imgtool get differs from the in-process read");
  // the same with an index of resume points every 4 MB instead of 16: a random read decodes less
  fs.rmSync(`${zst}.imgtool-index`, { force: true });
  sh(`${process.execPath} ${CLI} index --spacing 4M ${zst}`);
  const fine = getInProcess(zst);
  table.push([`the same, index built with --spacing 4M (${fs.statSync(`${zst}.imgtool-index`).size.toLocaleString("en-US")} B)`, seconds(fine.getSeconds), `${fine.getRead.toLocaleString("en-US")} B = ${((fine.getRead / zstBytes) * 100).toFixed(3)}%`, `≤ 2 s, ≤ 1%: ${met(fine.getSeconds <= 2 && fine.getRead <= zstBytes / 100)}`]);
  fs.rmSync(`${zst}.imgtool-index`, { force: true });

  const dest = path.join(WORK, "btrfs-extract");
  const copy = path.join(WORK, "btrfs-cp");
  const raw = path.join(WORK, "btrfs-all.raw");
  sh(`rm -rf ${dest} ${copy}`);
  const extract = wall(`${process.execPath} ${CLI} extract ${img} -o ${dest}`);
  const restore = wall(`${process.execPath} ${CLI} restore ${img} -o ${raw} --sparse --force`);
  const mountCopy = wall(`mkdir -p ${WORK}/btrfs-m && mount -o ro,loop ${raw} ${WORK}/btrfs-m && cp -a ${WORK}/btrfs-m ${copy}; umount ${WORK}/btrfs-m`);
  table.push(["imgtool extract / -o DIR", seconds(extract), "", `no slower than the next row: ${met(extract <= restore + mountCopy)}`]);
  table.push(["restore --sparse + loop mount + cp -a", seconds(restore + mountCopy), "", `restore ${seconds(restore)} s + mount/cp -a ${seconds(mountCopy)} s`]);
  table.push(["floor: cat IMG > /dev/null", seconds(wall(`cat ${img} > /dev/null`)), "", ""]);
  const same = Bun.spawnSync(["diff", "-r", "--no-dereference", dest, copy], { stdout: "ignore" }).exitCode === 0;
  sh(`rm -rf ${dest} ${copy} ${raw} ${out}`);
  console.log(`image: ${img} (${fs.statSync(img).size.toLocaleString("en-US")} bytes, uncompressed partclone); IMG.zst ${zstBytes.toLocaleString("en-US")} bytes (one zstd frame); page cache warm`);
  printColumns(table);
  console.log(`extracted tree equals cp -a's: ${same}`);
}

main();
