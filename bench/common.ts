// What every bench script shares: where things live, running shell commands, timing them under
// /usr/bin/time, and making the loop-mounted ext4 volumes the images are taken from.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export const ROOT = path.join(import.meta.dir, "..");
export const WORK = path.join(ROOT, ".bench");
export const CLI = path.join(ROOT, "src", "cli", "main.ts");
/** mkfs.*, partclone.* and losetup live in sbin, which a non-login root shell may lack */
export const SBIN_PATH = `${process.env.PATH}:/usr/sbin:/sbin`;

/** Runs a bash command line; its stdout, or a throw with its stderr. */
export function sh(cmd: string): string {
  const r = Bun.spawnSync(["bash", "-c", cmd], { stdout: "pipe", stderr: "pipe", env: { ...process.env, PATH: SBIN_PATH } });
  if (r.exitCode !== 0) throw new Error(`bench: ${cmd}\n${r.stderr.toString()}`);
  return r.stdout.toString();
}

export function need(tool: string): boolean {
  return Bun.which(tool, { PATH: SBIN_PATH }) !== null;
}

/** wall seconds of `sh(cmd)` */
export function wall(cmd: string): number {
  const t = performance.now();
  sh(cmd);
  return (performance.now() - t) / 1000;
}

export interface Measured {
  seconds: number;
  /** user + system CPU seconds of every process of the command */
  cpu: number;
  rssMiB: number;
  stdout: string;
}

const timeFile = path.join(os.tmpdir(), `imgtool-bench-time-${process.pid}`);

/** One run of argv (a shell command line if a string) under /usr/bin/time: wall, CPU, peak RSS, and its stdout unless ignored. */
export function measure(command: string | string[], stdout: "pipe" | "ignore" = "pipe"): Measured {
  const argv = typeof command === "string" ? ["bash", "-c", command] : command;
  const r = Bun.spawnSync(["/usr/bin/time", "-o", timeFile, "-f", "%e %U %S %M", ...argv], { stdout, stderr: "pipe" });
  const line = fs.existsSync(timeFile) ? fs.readFileSync(timeFile, "utf8").trim().split("\n").at(-1)! : "";
  fs.rmSync(timeFile, { force: true });
  const [seconds, user, sys, kib] = line.split(/\s+/).map(Number);
  if (r.exitCode !== 0 || !Number.isFinite(seconds)) throw new Error(`bench: ${argv.join(" ")} failed:\n${r.stderr.toString()}`);
  return { seconds: seconds!, cpu: user! + sys!, rssMiB: kib! / 1024, stdout: r.stdout?.toString() ?? "" };
}

/**
 * The fastest of `runs` runs of a command (its wall and CPU seconds and output), with the highest
 * peak RSS of all: this VM's timings wander (zstd -dc alone from 1.3 s to 4.7 s), so the fastest
 * of each side is compared. `before` runs ahead of each (e.g. removing what the last one made).
 */
export function bestOf(command: string, runs: number, before = () => {}, stdout: "pipe" | "ignore" = "pipe"): Measured {
  let best: Measured | undefined;
  let rss = 0;
  for (let i = 0; i < runs; i++) {
    before();
    const t = measure(command, stdout);
    rss = Math.max(rss, t.rssMiB);
    if (!best || t.seconds < best.seconds) best = t;
  }
  return { ...best!, rssMiB: rss };
}

/**
 * The standalone executable as users run it (`npm run build`: dist/imgtool), for the rows whose
 * targets count the start-up; undefined, with the reason printed, when the build fails.
 */
export function buildBinary(): string | undefined {
  try {
    sh(`cd ${ROOT} && npm run build --silent`);
    return path.join(ROOT, "dist", "imgtool");
  } catch (e) {
    console.log(`bench: no standalone-binary rows: npm run build failed: ${(e as Error).message.split("\n")[1] ?? ""}`);
    return undefined;
  }
}

/** Makes `vol` an ext4 volume of `size` (truncate's syntax), mounts it on `mnt` for `fill`, and unmounts it. */
export function withExt4Volume(vol: string, size: string, mnt: string, fill: (mnt: string) => void): void {
  fs.mkdirSync(mnt, { recursive: true });
  sh(`rm -f ${vol} && truncate -s ${size} ${vol} && mkfs.ext4 -q -F -O ^has_journal ${vol} && mount -o loop ${vol} ${mnt}`);
  try {
    fill(mnt);
  } finally {
    sh(`umount ${mnt}`);
  }
}

/** `count` files of 64 MB from /dev/urandom in dir, named random1.bin... */
export function writeRandomFiles(dir: string, count: number): void {
  sh(`for i in $(seq 1 ${count}); do head -c 64M /dev/urandom > ${dir}/random$i.bin; done`);
}

/** `count` files of 64 MiB of text with some entropy (lines of 12 words out of 5000) in dir, named text0.txt... */
export function writeTextFiles(dir: string, count: number): void {
  sh(`python3 -c "
import random
r = random.Random(1)
words = [('w%d' % i).encode() for i in range(5000)]
line = lambda: b' '.join(r.choice(words) for _ in range(12)) + b'\\n'
block = b''.join(line() for _ in range(200000))
for i in range(${count}):
    with open('${dir}/text%d.txt' % i, 'wb') as f:
        n = 0
        while n < 64 << 20:
            f.write(block); n += len(block)
"`);
}

/** Rows of cells as columns padded to their widest cell, two spaces apart. */
export function printColumns(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd());
}
