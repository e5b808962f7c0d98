// bun bench/seek-codecs.ts (part of npm run bench): the seek-index build of each compression against
// its own decoder (pigz -dc, bzip2 -dc, xz -dc, lz4 -dc) on the partclone image bench/restore.ts makes,
// compressed as Clonezilla does; the index size (windows zstd-compressed) and cold resume+4 KiB reads.
// Needs root (restore.ts's loop mount), partclone, pigz, bzip2, xz, lz4, zstd.
import fs from "node:fs";
import path from "node:path";
import { measure, need, sh } from "./common.ts";
import { openFileSource } from "../src/source/file.ts";
import type { FileSource } from "../src/source/pieces.ts";
import { bzip2SeekCodec } from "../src/source/seek-index/bzip2.ts";
import type { SeekCodec } from "../src/source/seek-index/codec.ts";
import { gzipSeekCodec } from "../src/source/seek-index/gzip.ts";
import { lz4SeekCodec } from "../src/source/seek-index/lz4.ts";
import { xzSeekCodec } from "../src/source/seek-index/xz.ts";
import { makeFixtures } from "./restore.ts";

const SPACING = Number(process.env.BENCH_SPACING ?? 4 << 20);
/** bzip2 -9 and xz -3 compress at a few MB/s: BENCH_SLOW_MB=N benches them on the image's first N MB only */
const SLOW_MB = Number(process.env.BENCH_SLOW_MB ?? 0);
const COLD_READS = 40;
/** BENCH_ONLY=z1p.gz,lz4: just these rows */
const ONLY = process.env.BENCH_ONLY?.split(",");

interface Variant {
  ext: string;
  /** compressed slowly: the first SLOW_MB of the image when that is set */
  slow?: boolean;
  codec: SeekCodec;
  /** how Clonezilla (or the tool's default) makes it */
  make: string;
  decode: string;
}

const variants: Variant[] = [
  { ext: "z1p.gz", codec: gzipSeekCodec, make: "pigz --fast -b 1024 --rsyncable -c", decode: "pigz -dc" },
  { ext: "bz2", slow: true, codec: bzip2SeekCodec, make: "bzip2 -9 -c", decode: "bzip2 -dc" },
  { ext: "z5p.xz", slow: true, codec: xzSeekCodec, make: "xz -T0 -3 -c", decode: "xz -dc" },
  { ext: "lz4", codec: lz4SeekCodec, make: "lz4 -q -c", decode: "lz4 -dc" },
];

/** The child: build one index and time cold resumes; prints one JSON line. */
function child(codecName: string, file: string): void {
  const codec = variants.find((v) => v.codec.compression === codecName)!.codec;
  const raw = openFileSource(file) as FileSource;
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const index = codec.build(raw, { spacing: SPACING });
  const buildSeconds = (performance.now() - t0) / 1000;
  const c1 = process.cpuUsage(c0);
  const buildCpu = (c1.user + c1.system) / 1e6;
  let indexBytes = 0;
  for (const p of index.points) {
    // what the shared index stores per point: offsets, bits, lengths, extra, the window zstd-compressed
    indexBytes += 8 + 8 + 1 + 4 + 4 + p.extra.length + (p.window.length ? Bun.zstdCompressSync(p.window).length : 0);
  }
  const buf = new Uint8Array(4096);
  const skip = new Uint8Array(1 << 20);
  let seed = 20261124;
  const times: number[] = [];
  for (let k = 0; k < COLD_READS; k++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    const offset = Math.floor((seed / 2 ** 31) * (index.decodedSize - 4096));
    const t = performance.now();
    const p = index.points.findLast((q) => q.decoded <= offset)!;
    const s = codec.resume(raw, p);
    let left = offset - p.decoded;
    while (left > 0) {
      const n = s.read(skip.subarray(0, Math.min(left, skip.length)));
      if (n === 0) throw new Error("short resume");
      left -= n;
    }
    for (let got = 0; got < 4096; ) got += s.read(buf.subarray(got)) || 4096;
    s.close();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      buildSeconds,
      buildCpu,
      points: index.points.length,
      notResumable: index.notResumable ?? "",
      decodedSize: index.decodedSize,
      indexBytes,
      coldMeanMs: times.reduce((a, b) => a + b, 0) / times.length,
      coldP90Ms: times[Math.floor(times.length * 0.9)]!,
    }),
  );
}

function main(): void {
  for (const t of ["partclone.ext4", "pigz", "bzip2", "xz", "lz4", "zstd"]) {
    if (!need(t)) {
      console.log(`bench: skipped: ${t} is not installed (apt-get install partclone pigz bzip2 xz-utils lz4 zstd)`);
      return;
    }
  }
  if (process.getuid?.() !== 0) {
    console.log("bench: skipped: making the volume needs root (loop mount)");
    return;
  }
  const img = makeFixtures();
  const slice = `${img}.first${SLOW_MB}M`;
  if (SLOW_MB > 0 && !fs.existsSync(slice)) sh(`head -c ${SLOW_MB * 1_000_000} ${img} > ${slice}.tmp && mv ${slice}.tmp ${slice}`);
  const inputs = variants.map((v) => (v.slow && SLOW_MB > 0 ? slice : img));
  const files = variants.map((v, i) => `${inputs[i]}.${v.ext}`);
  const missing = variants.map((v, i) => ({ v, input: inputs[i]!, file: files[i]! })).filter((m) => !fs.existsSync(m.file) && (!ONLY || ONLY.includes(m.v.ext)));
  if (missing.length > 0) {
    console.error(`bench: compressing as ${missing.map((m) => m.v.ext).join(", ")} (once; cached in .bench/)`);
    sh(missing.map((m) => `(${m.v.make} ${m.input} > ${m.file}.tmp && mv ${m.file}.tmp ${m.file}) &`).join(" ") + " wait");
    for (const m of missing) if (!fs.existsSync(m.file)) throw new Error(`bench: ${m.v.make} failed`);
  }
  const rows: string[] = [];
  for (const [i, v] of variants.entries()) {
    const file = files[i]!;
    const size = fs.statSync(file).size;
    sh(`cat ${file} > /dev/null`);
    if (ONLY && !ONLY.includes(v.ext)) continue;
    const peer = measure(`${v.decode} ${file} > /dev/null`);
    const ours = measure(`${process.execPath} ${import.meta.path} --child ${v.codec.compression} ${file}`);
    const r = JSON.parse(ours.stdout.trim().split("\n").at(-1)!);
    console.error(`bench: ${v.ext}: ${v.decode} ${peer.seconds} s, build ${r.buildSeconds.toFixed(2)} s`);
    rows.push(
      `| ${v.ext.padEnd(7)} | ${(r.decodedSize / 1e6).toFixed(0).padStart(6)} | ${(size / 1e6).toFixed(0).padStart(6)} | ${`${v.decode}`.padEnd(9)} ${peer.seconds.toFixed(2).padStart(6)} s (cpu ${peer.cpu.toFixed(2)}) | ${r.buildSeconds.toFixed(2).padStart(6)} s (cpu ${r.buildCpu.toFixed(2)}) | ${(r.buildSeconds / peer.seconds).toFixed(2).padStart(5)} / ${(r.buildCpu / peer.cpu).toFixed(2)} | ${String(r.points).padStart(6)} | ${(r.indexBytes / 1e3).toFixed(0).padStart(7)} kB = ${((100 * r.indexBytes) / size).toFixed(3)}% | ${r.coldMeanMs.toFixed(1).padStart(6)} / ${r.coldP90Ms.toFixed(1).padStart(6)} | ${r.notResumable || "-"} |`,
    );
  }
  console.log(`\nimage: ${path.basename(img)}, ${(fs.statSync(img).size / 1e9).toFixed(2)} GB${SLOW_MB > 0 ? ` (bz2, xz: its first ${SLOW_MB} MB)` : ""}; spacing ${SPACING / 2 ** 20} MiB; the build includes verifying every point; decoder wall/cpu from /usr/bin/time (process start included), build wall/cpu measured in-process around build()`);
  console.log("\n| stream | decoded MB | compressed MB | decoder alone (wall, cpu) | index build (wall, cpu; in-process) | ratio wall / cpu | points | index size (% of compressed) | cold resume + 4 KiB, mean / p90 ms | not resumable |");
  console.log("|---|---|---|---|---|---|---|---|---|---|");
  for (const r of rows) console.log(r);
}

if (process.argv[2] === "--child") child(process.argv[3]!, process.argv[4]!);
else main();
