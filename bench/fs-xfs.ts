// bun bench/fs-xfs.ts (part of npm run bench): files out of an XFS image without restoring it.
// Makes (once, cached in .bench/) a 2 GiB XFS v5 volume with ~1.1 GiB used (16 random files of 64 MiB,
// 3,000 small files in 30 directories), its partclone image and that image compressed with zstd.
// Rows: `get` of one small file from IMG.zst with its seek index present (target: ≤ 2 s and ≤ 1 % of
// the image read), and `extract /` against restore --sparse + loop mount + cp -a (target: no slower).
// Needs root (loop mounts), xfsprogs, partclone, zstd.
import fs from "node:fs";
import path from "node:path";
import { CLI, WORK, need, printColumns, sh, wall, writeRandomFiles } from "./common.ts";
import { resolveFollowing } from "../src/fs/extract.ts";
import { openFileSystem } from "../src/fs/open.ts";
import { openImage } from "../src/formats/detect.ts";
import { imageVolume } from "../src/volume/volume.ts";

const SMALL_FILE = "/small/d17/file-0042.txt";
const bun = process.execPath;

/** The partclone image of the bench volume and its .zst, made once. */
function benchImages(): { img: string; zst: string } {
  const img = path.join(WORK, "xfs-2g.xfs-ptcl-img");
  const zst = `${img}.zst`;
  if (fs.existsSync(`${zst}.done`)) return { img, zst };
  console.error("bench: making a 2 GiB XFS volume with ~1.1 GiB used, its partclone image and a zstd copy (once; cached in .bench/)");
  fs.mkdirSync(WORK, { recursive: true });
  const vol = path.join(WORK, "xfs-2g.vol");
  const mnt = path.join(WORK, "xfs-mnt");
  fs.mkdirSync(mnt, { recursive: true });
  sh(`rm -f ${vol} && truncate -s 2G ${vol} && mkfs.xfs -q -f ${vol} && mount -o loop ${vol} ${mnt}`);
  try {
    sh(`mkdir ${mnt}/big`);
    writeRandomFiles(`${mnt}/big`, 16);
    sh(`cd ${mnt} && for d in $(seq 0 29); do mkdir -p small/d$d; for f in $(seq -w 0 99); do printf 'file %s of dir %s\\n%.0s' $f $d $(seq 1 $((RANDOM % 200 + 1))) > small/d$d/file-00$f.txt; done; done`);
  } finally {
    sh(`umount ${mnt}`);
  }
  sh(`partclone.xfs -q -c -s ${vol} -O ${img} 2>/dev/null && rm -f ${vol}`);
  sh(`zstd -q -f -T2 -3 ${img} -o ${zst} && touch ${zst}.done`);
  return { img, zst };
}

/** Bytes read(2) has brought into this process so far (the kernel's count). */
const bytesRead = () => Number(/rchar: (\d+)/.exec(fs.readFileSync("/proc/self/io", "utf8"))![1]);
const commas = (n: number) => n.toLocaleString("en-US");

/** SMALL_FILE read in this process as `imgtool get` finds it: its bytes, the seconds, and the bytes read(2) brought in. */
function getInProcess(zst: string): { data: Uint8Array; seconds: number; read: number } {
  const [before, started] = [bytesRead(), performance.now()];
  const fsys = openFileSystem(imageVolume(openImage(zst, { seekIndex: { mode: "use-if-present" } })));
  try {
    const node = resolveFollowing(fsys, new TextEncoder().encode(SMALL_FILE))!;
    const data = new Uint8Array(node.size);
    fsys.readFile(node, 0, data);
    return { data, seconds: (performance.now() - started) / 1000, read: bytesRead() - before };
  } finally {
    fsys.close();
  }
}

function main() {
  if (process.getuid?.() !== 0) return console.log("bench/fs-xfs.ts: skipped (needs root for the loop mounts)");
  const missing = ["mkfs.xfs", "partclone.xfs", "zstd"].filter((t) => !need(t));
  if (missing.length) return console.log(`bench/fs-xfs.ts: skipped (missing: ${missing.join(", ")})`);
  const { img, zst } = benchImages();
  const zstBytes = fs.statSync(zst).size;
  const scratch = path.join(WORK, "xfs-run");
  sh(`rm -rf ${scratch} && mkdir -p ${scratch}/m`);
  const rows = [["what", "seconds", "read of the image", "target / note"]];

  // get: the first run builds the seek index beside the image, the next ones use it
  fs.rmSync(`${zst}.imgtool-index`, { force: true });
  const firstGet = wall(`${bun} ${CLI} get ${zst} ${SMALL_FILE} > ${scratch}/first`);
  rows.push(["imgtool get IMG.zst FILE, no index yet (builds it)", firstGet.toFixed(2), "", `zstd image ${commas(zstBytes)} B`]);
  // each read far from the last decodes from the index point before it (and its stored window):
  // measured with the index `get` built (16 MiB spacing) and with one of 1 MiB points
  for (const spacing of ["16M (default)", "1M"]) {
    if (spacing === "1M") sh(`${bun} ${CLI} index ${zst} --spacing 1M > /dev/null`);
    const { data, seconds, read } = getInProcess(zst);
    const share = (read / zstBytes) * 100;
    rows.push([`get ${SMALL_FILE} from IMG.zst, index spacing ${spacing} (in process)`, seconds.toFixed(2), `${commas(read)} B = ${share.toFixed(3)} %`, `≤ 2 s, ≤ 1 %: ${seconds <= 2 && share <= 1 ? "met" : "NOT met"}`]);
    rows.push([`imgtool get IMG.zst FILE, index spacing ${spacing} (CLI, with Bun's start)`, wall(`${bun} ${CLI} get ${zst} ${SMALL_FILE} > ${scratch}/again`).toFixed(2), "", ""]);
    if (!Buffer.from(data).equals(fs.readFileSync(`${scratch}/first`))) throw new Error("bench: get in process and through the CLI differ");
  }

  // the whole tree, from the uncompressed image
  const ours = wall(`${bun} ${CLI} extract ${img} -o ${scratch}/extract`);
  const restore = wall(`${bun} ${CLI} restore ${img} -o ${scratch}/all.raw --sparse`);
  const mountCp = wall(`mount -o ro,loop ${scratch}/all.raw ${scratch}/m && cp -a ${scratch}/m ${scratch}/cp; umount ${scratch}/m`);
  const theirs = restore + mountCp;
  rows.push(["imgtool extract IMG / -o DIR", ours.toFixed(2), "", `no slower than the row below: ${ours <= theirs ? "met" : "NOT met"}`]);
  rows.push(["restore --sparse + loop mount + cp -a", theirs.toFixed(2), "", `restore ${restore.toFixed(2)} s + mount, cp -a ${mountCp.toFixed(2)} s`]);
  const same = Bun.spawnSync(["diff", "-r", "--no-dereference", `${scratch}/extract`, `${scratch}/cp`], { stdout: "ignore" }).exitCode === 0;
  rows.push(["floor: cat IMG > /dev/null", wall(`cat ${img} > /dev/null`).toFixed(2), "", ""]);
  sh(`rm -rf ${scratch}`);

  console.log(`image: ${img} (${commas(fs.statSync(img).size)} B partclone; ${commas(zstBytes)} B as .zst; page cache warm)`);
  printColumns(rows);
  console.log(`extracted tree equals cp -a's: ${same}`);
}

main();
