// bun bench/fs.ts (part of npm run bench): files out of an image without restoring it, against
// restore + kernel loop mount + cp -a (and debugfs rdump, libext2fs's own extraction) in one run.
// Makes (once, cached in .bench/) a 2 GiB ext4 volume with ~1.1 GiB used: 16 random 64 MiB files
// and 3,000 small files in 30 directories; its partclone image. Needs root (loop mount), partclone.
import fs from "node:fs";
import path from "node:path";
import { CLI, WORK, need, sh, wall, withExt4Volume, writeRandomFiles } from "./common.ts";
import { openImage } from "../src/formats/detect.ts";
import { openFileSystem } from "../src/fs/open.ts";
import { resolveFollowing } from "../src/fs/extract.ts";
import { imageVolume } from "../src/volume/volume.ts";

const TARGET = "/small/d17/file-0042.txt";

function makeImage(): string {
  fs.mkdirSync(WORK, { recursive: true });
  const vol = path.join(WORK, "fs-2g.vol");
  const img = path.join(WORK, "fs-2g.ext4-ptcl-img");
  if (fs.existsSync(`${img}.done`)) return img;
  console.error("bench: making a 2 GiB ext4 volume with ~1.1 GiB used and its partclone image (once; cached in .bench/)");
  withExt4Volume(vol, "2G", path.join(WORK, "fs-mnt"), (mnt) => {
    sh(`mkdir ${mnt}/big`);
    writeRandomFiles(`${mnt}/big`, 16);
    sh(`cd ${mnt} && mkdir small && for d in $(seq 0 29); do mkdir small/d$d; for f in $(seq -w 0 99); do printf 'file %s of dir %s\\n%.0s' $f $d $(seq 1 $((RANDOM % 200 + 1))) > small/d$d/file-00$f.txt; done; done`);
  });
  sh(`partclone.ext4 -q -c -s ${vol} -O ${img} 2>/dev/null`);
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
  if (process.getuid?.() !== 0) {
    console.log("bench/fs.ts: skipped (needs root for the loop mounts)");
    return;
  }
  const img = makeImage();
  const imageBytes = fs.statSync(img).size;
  const rows: Row[] = [];

  // one small file, in this process: open, find, read; bytes read from the image counted by the kernel
  const before = rchar();
  const t0 = performance.now();
  const image = openImage(img);
  const fsys = openFileSystem(imageVolume(image));
  const node = resolveFollowing(fsys, new TextEncoder().encode(TARGET))!;
  const data = new Uint8Array(node.size);
  fsys.readFile(node, 0, data);
  fsys.close();
  const seconds = (performance.now() - t0) / 1000;
  const read = rchar() - before;
  rows.push({ what: `get ${TARGET} (in process)`, seconds, read: `${read.toLocaleString("en-US")} B = ${((read / imageBytes) * 100).toFixed(3)}%`, note: `${node.size} bytes` });
  const out = path.join(WORK, "fs-get.out");
  rows.push({ what: "imgtool get (CLI, with Bun's start)", seconds: wall(`${process.execPath} ${CLI} get ${img} ${TARGET} > ${out}`), read: "", note: "" });
  const restoreOne = wall(`${process.execPath} ${CLI} restore ${img} -o ${WORK}/fs-one.raw --sparse --force && mkdir -p ${WORK}/fs-m1 && mount -o ro,loop ${WORK}/fs-one.raw ${WORK}/fs-m1 && cp ${WORK}/fs-m1${TARGET} ${out}.ref && umount ${WORK}/fs-m1`);
  rows.push({ what: "restore --sparse + loop mount + cp (one file)", seconds: restoreOne, read: `${imageBytes.toLocaleString("en-US")} B = 100%`, note: "" });
  if (!fs.readFileSync(out).equals(fs.readFileSync(`${out}.ref`))) throw new Error("bench: imgtool get differs from the kernel's copy");

  // the same file out of the image compressed as Clonezilla does (one zstd frame): first with no index
  // (get builds it), then with it; bytes read from the compressed image counted the same way
  if (need("zstd")) {
    const zst = `${img}.zst`;
    if (!fs.existsSync(`${zst}.done`)) sh(`zstd -q -f -T2 -3 ${img} -o ${zst} && touch ${zst}.done`);
    const zstBytes = fs.statSync(zst).size;
    fs.rmSync(`${zst}.imgtool-index`, { force: true });
    rows.push({ what: "imgtool get from IMG.zst, no index yet (builds it)", seconds: wall(`${process.execPath} ${CLI} get ${zst} ${TARGET} > ${out}.z`), read: "", note: `zstd image ${zstBytes.toLocaleString("en-US")} B` });
    if (!fs.readFileSync(`${out}.z`).equals(fs.readFileSync(out))) throw new Error("bench: imgtool get from the .zst differs");
    const zBefore = rchar();
    const z0 = performance.now();
    const zfs = openFileSystem(imageVolume(openImage(zst, { seekIndex: { mode: "use-if-present" } })));
    const zNode = resolveFollowing(zfs, new TextEncoder().encode(TARGET))!;
    zfs.readFile(zNode, 0, new Uint8Array(zNode.size));
    zfs.close();
    const zRead = rchar() - zBefore;
    rows.push({ what: `get ${TARGET} from IMG.zst, index present (in process)`, seconds: (performance.now() - z0) / 1000, read: `${zRead.toLocaleString("en-US")} B = ${((zRead / zstBytes) * 100).toFixed(3)}%`, note: "target ≤ 2 s, ≤ 1%" });
    rows.push({ what: "imgtool get from IMG.zst, index present (CLI, with Bun's start)", seconds: wall(`${process.execPath} ${CLI} get ${zst} ${TARGET} > ${out}.z`), read: "", note: "" });
    rows.push({ what: "floor: zstd -dc IMG.zst > /dev/null", seconds: wall(`zstd -dc ${zst} > /dev/null`), read: "", note: "" });
    fs.rmSync(`${out}.z`, { force: true });
  }

  // the whole file system
  const dest = path.join(WORK, "fs-extract");
  const ref = path.join(WORK, "fs-cp");
  const rd = path.join(WORK, "fs-rdump");
  sh(`rm -rf ${dest} ${ref} ${rd}; mkdir -p ${rd}`);
  rows.push({ what: "imgtool extract / -o DIR", seconds: wall(`${process.execPath} ${CLI} extract ${img} -o ${dest}`), read: "", note: "" });
  const restore = wall(`${process.execPath} ${CLI} restore ${img} -o ${WORK}/fs-all.raw --sparse --force`);
  const mountCp = wall(`mkdir -p ${WORK}/fs-m2 && mount -o ro,loop ${WORK}/fs-all.raw ${WORK}/fs-m2 && cp -a ${WORK}/fs-m2 ${ref} && umount ${WORK}/fs-m2`);
  rows.push({ what: "restore --sparse + loop mount + cp -a", seconds: restore + mountCp, read: "", note: `restore ${restore.toFixed(2)} s + mount/cp -a ${mountCp.toFixed(2)} s` });
  const rdump = wall(`debugfs -R 'rdump / ${rd}' ${WORK}/fs-all.raw`);
  rows.push({ what: "restore --sparse + debugfs rdump (libext2fs)", seconds: restore + rdump, read: "", note: `rdump ${rdump.toFixed(2)} s` });
  const floor = wall(`cat ${img} > /dev/null`);
  rows.push({ what: "floor: cat IMG > /dev/null", seconds: floor, read: "", note: "" });
  const same = Bun.spawnSync(["diff", "-r", "--no-dereference", dest, ref], { stdout: "ignore" }).exitCode === 0;
  sh(`rm -rf ${dest} ${ref} ${rd} ${WORK}/fs-all.raw ${WORK}/fs-one.raw ${out} ${out}.ref`);

  console.log(`image: ${img} (${imageBytes.toLocaleString("en-US")} bytes, uncompressed partclone; page cache warm)`);
  console.log("| what | seconds | bytes read of the image | note |");
  console.log("| --- | --- | --- | --- |");
  for (const r of rows) console.log(`| ${r.what} | ${r.seconds.toFixed(2)} | ${r.read} | ${r.note} |`);
  console.log(`extracted tree equals cp -a's: ${same}`);
}

main();
