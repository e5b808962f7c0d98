// bun bench/fs-btrfs.ts (part of npm run bench): files out of a btrfs image with zstd-compressed data,
// against restore + kernel loop mount + cp -a, in one run. Makes (once, cached in .bench/) a 2 GiB btrfs
// mounted compress-force=zstd holding ~1.1 GiB: 12 text files of 64 MiB (compressed extents), 4 random ones
// of 64 MiB and 3,000 small files in 30 directories; its partclone image and that image in one zstd frame.
// Needs root (loop mount), btrfs-progs, partclone.btrfs, zstd.
import fs from "node:fs";
import path from "node:path";
import { CLI, WORK, need, sh, wall, writeRandomFiles, writeTextFiles } from "./common.ts";
import { openImage } from "../src/formats/detect.ts";
import { openFileSystem } from "../src/fs/open.ts";
import { resolveFollowing } from "../src/fs/extract.ts";
import { imageVolume } from "../src/volume/volume.ts";

const TARGET = "/small/d17/file-0042.txt";

function makeImage(): string {
  fs.mkdirSync(WORK, { recursive: true });
  const vol = path.join(WORK, "btrfs-2g.vol");
  const img = path.join(WORK, "btrfs-2g.btrfs-ptcl-img");
  if (fs.existsSync(`${img}.done`)) return img;
  console.error("bench: making a 2 GiB btrfs (compress-force=zstd) with ~1.1 GiB of files and its partclone image (once; cached in .bench/)");
  const mnt = path.join(WORK, "btrfs-mnt");
  fs.mkdirSync(mnt, { recursive: true });
  sh(`rm -f ${vol} && truncate -s 2G ${vol} && mkfs.btrfs -q -f ${vol} && mount -o loop,compress-force=zstd ${vol} ${mnt}`);
  try {
    sh(`mkdir ${mnt}/text ${mnt}/big`);
    writeTextFiles(`${mnt}/text`, 12);
    writeRandomFiles(`${mnt}/big`, 4);
    sh(`cd ${mnt} && mkdir small && for d in $(seq 0 29); do mkdir small/d$d; for f in $(seq -w 0 99); do printf 'file %s of dir %s\\n%.0s' $f $d $(seq 1 $((RANDOM % 200 + 1))) > small/d$d/file-00$f.txt; done; done`);
  } finally {
    sh(`umount ${mnt}`);
  }
  sh(`partclone.btrfs -q -c -s ${vol} -O ${img} 2>/dev/null`);
  fs.rmSync(vol);
  fs.writeFileSync(`${img}.done`, "");
  return img;
}

/** Bytes this process has read through read(2)-family calls so far. */
function rchar(): number {
  return Number(/rchar: (\d+)/.exec(fs.readFileSync("/proc/self/io", "utf8"))![1]);
}

interface Row {
  what: string;
  seconds: number;
  read: string;
  note: string;
}

function main() {
  const why = process.getuid?.() !== 0 ? "needs root for the loop mounts" : !need("mkfs.btrfs") || !need("partclone.btrfs") || !need("zstd") ? "needs btrfs-progs, partclone.btrfs and zstd" : "";
  if (why) {
    console.log(`bench/fs-btrfs.ts: skipped (${why})`);
    return;
  }
  const img = makeImage();
  const imageBytes = fs.statSync(img).size;
  const zst = `${img}.zst`;
  if (!fs.existsSync(`${zst}.done`)) sh(`zstd -q -f -T2 -3 ${img} -o ${zst} && touch ${zst}.done`);
  const zstBytes = fs.statSync(zst).size;
  const rows: Row[] = [];
  const out = path.join(WORK, "btrfs-get.out");

  // one small file out of the zstd image, its seek index present (built by the first get)
  fs.rmSync(`${zst}.imgtool-index`, { force: true });
  rows.push({ what: "imgtool get from IMG.zst, no index yet (builds it)", seconds: wall(`${process.execPath} ${CLI} get ${zst} ${TARGET} > ${out}`), read: "", note: `zstd image ${zstBytes.toLocaleString("en-US")} B` });
  const before = rchar();
  const t0 = performance.now();
  const fsys = openFileSystem(imageVolume(openImage(zst, { seekIndex: { mode: "use-if-present" } })));
  const node = resolveFollowing(fsys, new TextEncoder().encode(TARGET))!;
  const data = new Uint8Array(node.size);
  fsys.readFile(node, 0, data);
  fsys.close();
  const seconds = (performance.now() - t0) / 1000;
  const read = rchar() - before;
  rows.push({ what: `get ${TARGET} from IMG.zst, index present (in process)`, seconds, read: `${read.toLocaleString("en-US")} B = ${((read / zstBytes) * 100).toFixed(3)}%`, note: `target ≤ 2 s, ≤ 1%: ${seconds <= 2 && read <= zstBytes / 100 ? "met" : "MISSED"}` });
  rows.push({ what: "imgtool get from IMG.zst, index present (CLI, with Bun's start)", seconds: wall(`${process.execPath} ${CLI} get ${zst} ${TARGET} > ${out}`), read: "", note: "" });
  if (!fs.readFileSync(out).equals(data)) throw new Error("bench: imgtool get differs from the in-process read");

  // the whole file system out of the (uncompressed) partclone image
  const dest = path.join(WORK, "btrfs-extract");
  const ref = path.join(WORK, "btrfs-cp");
  sh(`rm -rf ${dest} ${ref}`);
  const extract = wall(`${process.execPath} ${CLI} extract ${img} -o ${dest}`);
  rows.push({ what: "imgtool extract / -o DIR", seconds: extract, read: "", note: "" });
  const restore = wall(`${process.execPath} ${CLI} restore ${img} -o ${WORK}/btrfs-all.raw --sparse --force`);
  const mountCp = wall(`mkdir -p ${WORK}/btrfs-m && mount -o ro,loop ${WORK}/btrfs-all.raw ${WORK}/btrfs-m && cp -a ${WORK}/btrfs-m ${ref}; umount ${WORK}/btrfs-m`);
  const peer = restore + mountCp;
  rows.push({ what: "restore --sparse + loop mount + cp -a", seconds: peer, read: "", note: `restore ${restore.toFixed(2)} s + mount/cp -a ${mountCp.toFixed(2)} s; extract target no slower: ${extract <= peer ? "met" : "MISSED"}` });
  rows.push({ what: "floor: cat IMG > /dev/null", seconds: wall(`cat ${img} > /dev/null`), read: "", note: "" });
  const same = Bun.spawnSync(["diff", "-r", "--no-dereference", dest, ref], { stdout: "ignore" }).exitCode === 0;
  sh(`rm -rf ${dest} ${ref} ${WORK}/btrfs-all.raw ${out}`);

  console.log(`image: ${img} (${imageBytes.toLocaleString("en-US")} bytes, uncompressed partclone; ${zst}: ${zstBytes.toLocaleString("en-US")} bytes; page cache warm)`);
  console.log("| what | seconds | bytes read of the image | note |");
  console.log("| --- | --- | --- | --- |");
  for (const r of rows) console.log(`| ${r.what} | ${r.seconds.toFixed(2)} | ${r.read} | ${r.note} |`);
  console.log(`extracted tree equals cp -a's: ${same}`);
}

main();
