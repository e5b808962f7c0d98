/**
 * MB/s of each FFI decoder next to the system tool decompressing the same file to /dev/null,
 * plus crc32c and xxhash throughput and this process's peak RSS.
 *   node_modules/.bin/bun bench/decoders.ts [size in MiB, default 256]
 * Compression uses fast levels so that the whole run stays under two minutes.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openStream } from "../src/source/open.ts";
import { crc32c, crc32cImplementations } from "../native/crc32c.ts";
import { Xxh128State, Xxh64State } from "../native/xxhash.ts";

const MiB = 1 << 20;
const sizeMiB = Number(process.argv[2] ?? 256);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "imgtool-bench-"));
const plain = path.join(dir, "data");

/** Half xorshift noise, half repetitive text, in 1 MiB pieces: neither trivial nor incompressible. */
function generate(): void {
  const fd = fs.openSync(plain, "w");
  const buf = new Uint8Array(MiB);
  const text = new TextEncoder().encode("block device image backup: partclone ntfsclone partimage btrfs send stream 0123456789\n");
  let x = 2463534242;
  for (let m = 0; m < sizeMiB; m++) {
    for (let i = 0; i < MiB / 2; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      buf[i] = x & 0xff;
    }
    for (let i = MiB / 2; i < MiB; i++) buf[i] = text[(i + m) % text.length]!;
    fs.writeSync(fd, buf);
  }
  fs.closeSync(fd);
}

function seconds(f: () => void): number {
  const t = performance.now();
  f();
  return (performance.now() - t) / 1000;
}

function sh(cmd: string): void {
  const r = Bun.spawnSync(["sh", "-c", cmd], { stdout: "ignore", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd}: ${r.stderr.toString()}`);
}

function drain(p: string): number {
  const s = openStream(p);
  let n = 0;
  for (;;) {
    const c = s.reader.chunk(4 * MiB);
    if (c.length === 0) break;
    n += c.length;
  }
  s.reader.source.close();
  return n;
}

const peakRssMiB = () => (process.resourceUsage().maxRSS / 1024).toFixed(0);
const rate = (s: number) => `${(sizeMiB / s).toFixed(0).padStart(5)} MB/s`;

const CODECS: { ext: string; compress: string; tools: string[] }[] = [
  { ext: "zst", compress: "zstd -q -3 -T0 -c", tools: ["zstd -dc"] },
  { ext: "gz", compress: "pigz -6 -c", tools: ["pigz -dc", "gzip -dc"] },
  { ext: "lz4", compress: "lz4 -q -1 -c", tools: ["lz4 -dc"] },
  { ext: "xz", compress: "xz -0 -T0 -c", tools: ["xz -dc"] },
  { ext: "bz2", compress: "pbzip2 -1 -c", tools: ["bzip2 -dc"] },
];

try {
  const total = performance.now();
  console.log(`${sizeMiB} MiB of half noise, half text; MB/s are MiB of decompressed data per second`);
  generate();
  console.log(`peak RSS after generating: ${peakRssMiB()} MiB`);
  for (const c of CODECS) {
    const tool = c.compress.split(" ")[0]!;
    const fallback = tool === "pbzip2" && !Bun.which("pbzip2") ? "bzip2 -1 -c" : c.compress;
    if (!Bun.which(fallback.split(" ")[0]!)) {
      console.log(`${c.ext}: skipped, ${tool} is not installed`);
      continue;
    }
    const packed = path.join(dir, `data.${c.ext}`);
    sh(`${fallback} ${plain} > ${packed}`);
    const ratio = ((fs.statSync(packed).size / (sizeMiB * MiB)) * 100).toFixed(0);
    let n = 0;
    const mine = seconds(() => (n = drain(packed)));
    if (n !== sizeMiB * MiB) throw new Error(`${c.ext}: decoded ${n} bytes`);
    const theirs = c.tools.filter((t) => Bun.which(t.split(" ")[0]!)).map((t) => `${t}: ${rate(seconds(() => sh(`${t} ${packed} > /dev/null`)))}`);
    console.log(`${c.ext.padEnd(4)} (${ratio.padStart(2)}% of size)  imgtool: ${rate(mine)}   ${theirs.join("   ")}   peak RSS ${peakRssMiB()} MiB`);
    fs.rmSync(packed);
  }

  const buf = new Uint8Array(64 * MiB);
  fs.readSync(fs.openSync(plain, "r"), buf, 0, buf.length, 0);
  const mb = (s: number, rounds: number) => `${((64 * rounds) / s).toFixed(0)} MB/s`;
  for (const { name, fn } of crc32cImplementations()) console.log(`crc32c ${name}: ${mb(seconds(() => fn(buf)), 1)} (64 MiB buffer)`);
  const cmd = buf.subarray(0, 200);
  const calls = 500_000;
  console.log(`crc32c() on 200-byte commands: ${((200 * calls) / MiB / seconds(() => { for (let i = 0; i < calls; i++) crc32c(cmd); })).toFixed(0)} MB/s`);
  for (const [name, s] of [
    ["XXH64", new Xxh64State()],
    ["XXH128", new Xxh128State()],
  ] as const) {
    const out = new Uint8Array(16);
    // partclone hashes 1 MiB strips (256 blocks of 4 KiB), block by block
    const t = seconds(() => {
      for (let at = 0; at < buf.length; at += MiB) {
        s.reset();
        for (let b = at; b < at + MiB; b += 4096) s.update(buf.subarray(b, b + 4096));
        s.digestInto(out);
      }
    });
    console.log(`${name}: ${mb(t, 1)} (4 KiB updates, digest per MiB)`);
  }
  console.log(`peak RSS ${peakRssMiB()} MiB; total ${((performance.now() - total) / 1000).toFixed(0)} s`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
