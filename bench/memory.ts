// bun bench/memory.ts (part of npm run bench): peak RSS of imgtool on images whose bitmaps are large,
// against targets from the bitmap's own size. Makes (once, cached in .bench/) two partclone images
// without a file system behind them, since only the bitmap and a little data matter here:
// - the 17 KB zstd file of a partclone header and a 512 MiB bitmap of zeros (a 16 TiB volume);
// - a mostly empty 2 TiB volume (4 KiB blocks: a 64 MiB bitmap) with 48 MiB of data in a few runs,
//   CRC32 checksums every 256 blocks as partclone writes them, plain and zstd-compressed.
// Restores go with --sparse into tmpfs (/dev/shm, where a 16 TiB sparse file fits) and are removed.
import fs from "node:fs";
import path from "node:path";
import { PARTCLONE_CRC_SEED, partcloneCrc32 } from "../src/checksum/crc32.ts";
import { CLI, measure, need, printColumns, ROOT, sh, WORK } from "./common.ts";

const OUT_DIR = fs.existsSync("/dev/shm") ? "/dev/shm" : WORK;
const BLOCK = 4096;
const STRIP = 256;

/** A partclone 0002 header (BIT bitmap, CRC32 every 256 blocks, reseeded) for `totalBlocks` with `used` of them used. */
function header(totalBlocks: number, used: number): Uint8Array {
  const b = new Uint8Array(fs.readFileSync(path.join(ROOT, "fixtures", "ext4.ext4-ptcl-img")).subarray(0, 110));
  const dv = new DataView(b.buffer);
  dv.setBigUint64(52, BigInt(totalBlocks) * BigInt(BLOCK), true);
  dv.setBigUint64(60, BigInt(totalBlocks), true);
  dv.setBigUint64(68, BigInt(used), true);
  dv.setBigUint64(76, BigInt(used), true);
  dv.setUint32(84, BLOCK, true);
  dv.setUint16(96, 0x20, true);
  dv.setUint16(98, 4, true);
  dv.setUint32(100, STRIP, true);
  b[104] = 1;
  b[105] = 1;
  dv.setUint32(106, partcloneCrc32(PARTCLONE_CRC_SEED, b.subarray(0, 106)), true);
  return b;
}

function le32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

/** Writes header, bitmap (a page of it at a time), its crc, and the used blocks in strips with their CRC32s. */
function writeImage(file: string, totalBlocks: number, runs: [number, number][]): void {
  const used = runs.reduce((n, [, count]) => n + count, 0);
  const fd = fs.openSync(`${file}.tmp`, "w");
  fs.writeSync(fd, header(totalBlocks, used));
  const bitmapBytes = Math.ceil(totalBlocks / 8);
  const page = new Uint8Array(1 << 20);
  let crc = PARTCLONE_CRC_SEED;
  for (let at = 0; at < bitmapBytes; at += page.length) {
    page.fill(0);
    const n = Math.min(page.length, bitmapBytes - at);
    for (const [first, count] of runs) {
      for (let b = Math.max(first, at * 8); b < Math.min(first + count, (at + n) * 8); b++) page[(b >> 3) - at]! |= 1 << (b & 7);
    }
    crc = partcloneCrc32(crc, page.subarray(0, n));
    fs.writeSync(fd, page, 0, n);
  }
  fs.writeSync(fd, le32(crc));
  // the blocks: text that compresses somewhat, each block telling its number
  const block = new Uint8Array(BLOCK);
  let strip = PARTCLONE_CRC_SEED;
  let inStrip = 0;
  const out: Uint8Array[] = [];
  let outBytes = 0;
  const flush = () => {
    fs.writeSync(fd, Buffer.concat(out));
    out.length = 0;
    outBytes = 0;
  };
  for (const [first, count] of runs) {
    for (let b = first; b < first + count; b++) {
      block.set(new TextEncoder().encode(`block ${b} `.repeat(BLOCK / 8)).subarray(0, BLOCK));
      out.push(block.slice());
      outBytes += BLOCK;
      strip = partcloneCrc32(strip, block);
      if (++inStrip === STRIP) {
        out.push(le32(strip));
        strip = PARTCLONE_CRC_SEED;
        inStrip = 0;
      }
      if (outBytes >= 8 << 20) flush();
    }
  }
  if (inStrip > 0) out.push(le32(strip));
  flush();
  fs.closeSync(fd);
  fs.renameSync(`${file}.tmp`, file);
}

function makeImages(): { zeros16T: string; empty2T: string; empty2Tzst: string } {
  fs.mkdirSync(WORK, { recursive: true });
  const zeros16T = path.join(WORK, "mem-16TiB-no-used-block.ptcl-img.zst");
  const empty2T = path.join(WORK, "mem-2TiB-mostly-empty.ptcl-img");
  const empty2Tzst = `${empty2T}.zst`;
  if (!fs.existsSync(zeros16T)) {
    const plain = path.join(WORK, "mem-16TiB-no-used-block.ptcl-img");
    writeImage(plain, 2 ** 32, []);
    sh(`zstd -q -19 --rm -f ${plain} -o ${zeros16T}`);
  }
  if (!fs.existsSync(empty2Tzst)) {
    // 2^29 blocks; 32 MiB at the start, then 1 MiB every 128 GiB (the rest of the file system's metadata, say)
    const runs: [number, number][] = [[0, 8192]];
    for (let b = 2 ** 25; b < 2 ** 29; b += 2 ** 25) runs.push([b, 256]);
    writeImage(empty2T, 2 ** 29, runs);
    sh(`zstd -q -T2 -3 -f ${empty2T} -o ${empty2Tzst}`);
  }
  return { zeros16T, empty2T, empty2Tzst };
}

if (!need("zstd") || !need("/usr/bin/time")) {
  console.log("skipped: bench/memory.ts needs zstd and /usr/bin/time");
  process.exit(0);
}
const { zeros16T, empty2T, empty2Tzst } = makeImages();
const out = path.join(OUT_DIR, `imgtool-bench-memory-${process.pid}.raw`);

/** Peak RSS of one imgtool command (exit code kept: a refusal is an answer too). */
function peak(args: string[]): { rssMiB: number; seconds: number; code: string } {
  fs.rmSync(out, { force: true });
  try {
    const m = measure(`${process.execPath} ${CLI} ${args.join(" ")} 2>${out}.err; echo " exit $?" >> ${out}.err; true`, "ignore");
    const err = fs.readFileSync(`${out}.err`, "utf8").trim().split("\n");
    return { rssMiB: m.rssMiB, seconds: m.seconds, code: err.at(-1)!.trim() + (err.length > 1 ? `: ${err[0]!.slice(0, 60)}` : "") };
  } finally {
    fs.rmSync(out, { force: true });
    fs.rmSync(`${out}.err`, { force: true });
  }
}

const rows = [["case", "bitmap", "peak RSS", "target", "verdict", "seconds", "outcome"]];
const row = (name: string, bitmapMiB: number, targetMiB: number, args: string[]) => {
  const m = peak(args);
  rows.push([name, `${bitmapMiB} MiB`, `${m.rssMiB.toFixed(0)} MiB`, `<= ${targetMiB} MiB`, m.rssMiB <= targetMiB ? "ok" : "MISSED", m.seconds.toFixed(2), m.code]);
};
row("16 TiB, no used block (17 KB zstd): restore --sparse", 512, 600, ["restore", zeros16T, "-o", out, "--sparse", "-q"]);
row("16 TiB, no used block (17 KB zstd): verify", 512, 600, ["verify", zeros16T, "-q"]);
row("2 TiB mostly empty, plain: restore --sparse", 64, 200, ["restore", empty2T, "-o", out, "--sparse", "-q"]);
row("2 TiB mostly empty, zstd: restore --sparse", 64, 200, ["restore", empty2Tzst, "-o", out, "--sparse", "-q"]);
row("2 TiB mostly empty, plain: verify", 64, 200, ["verify", empty2T, "-q"]);
printColumns(rows);
