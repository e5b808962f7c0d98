// bun bench/parallel.ts (part of npm run bench): restore and verify decoding in parallel from a seek index,
// per compression, against that compression's decoder alone (`X -dc > /dev/null`), into tmpfs and onto disk,
// with --threads 1 and all cores; one table. The one-frame zstd tmpfs restore and verify, whose
// targets count the start-up, also run in the standalone binary (built by npm run build first).
// Makes (once, cached in .bench/) a 1.5 GiB ext4 volume with 1 GiB of files, half random, half text, and
// its partclone image (1.12 GB) compressed with zstd, pzstd, pigz and lz4; xz and bzip2 (whose
// compressors take ~20 min for that image on 2 loaded cores) get a 384 MiB volume with 256 MB of files
// made the same way. Needs root (loop mount), partclone, zstd, pigz, xz, bzip2, lz4.
// BENCH_PAR_ONLY=zstd,gzip limits the compressions.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CLI, type Measured, WORK, bestOf, buildBinary, need, sh, withExt4Volume, writeRandomFiles, writeTextFiles } from "./common.ts";

const VOLUME_MIB = Number(process.env.BENCH_PAR_VOLUME_MIB ?? 1536);
const USED_MB = Number(process.env.BENCH_PAR_USED_MB ?? 1024);
const SLOW_VOLUME_MIB = Number(process.env.BENCH_PAR_SLOW_VOLUME_MIB ?? 384);
const SLOW_USED_MB = Number(process.env.BENCH_PAR_SLOW_USED_MB ?? 256);
const SHM = "/dev/shm";
const CORES = os.availableParallelism();
/** where the machine's parallel floor is at or past this fraction of one decoder, "≤ 0.8x zstd -dc" cannot apply (issue 26) */
const FLOOR_ROOM = 0.7;

/** Each compression as its tool makes it: the file's suffix, how it is made, and its decoder alone. */
export const COMPRESSIONS = [
  { name: "zstd one frame (zstd -T2 -3)", key: "zstd", suffix: "zst", make: "zstd -q -T2 -3 -c", decoder: "zstd -dc" },
  { name: "zstd multi-frame (pzstd -p2 -3)", key: "pzstd", suffix: "pzstd.zst", make: "pzstd -q -p 2 -3 -c", decoder: "zstd -dc" },
  { name: "gzip (pigz --fast -b 1024 --rsyncable)", key: "gzip", suffix: "gz", make: "pigz -q -p 2 --fast -b 1024 --rsyncable -c", decoder: "pigz -dc" },
  { name: "xz (xz -T2 -3, multi-block)", key: "xz", suffix: "xz", make: "xz -q -T2 -3 -c", decoder: "xz -dc" },
  { name: "bzip2 (bzip2 -9)", key: "bzip2", suffix: "bz2", make: "bzip2 -q -9 -c", decoder: "bzip2 -dc" },
  { name: "lz4 (lz4 -1)", key: "lz4", suffix: "lz4", make: "lz4 -q -1 -c", decoder: "lz4 -dc" },
] as const;
type CompressionSpec = (typeof COMPRESSIONS)[number];
const SLOW = new Set<string>(["xz", "bzip2"]);

/** The partclone image of a volume half random, half text (the approach of bench/restore.ts), and its compressed copies. */
export function makeImages(volumeMiB: number, usedMB: number, compressions: readonly CompressionSpec[]): string {
  fs.mkdirSync(WORK, { recursive: true });
  const vol = path.join(WORK, `par-ext4-${volumeMiB}m.vol`);
  const img = path.join(WORK, `par-ext4-${volumeMiB}m.ptcl-img`);
  if (fs.existsSync(`${img}.done`)) return img;
  console.error(`bench: making a ${volumeMiB} MiB ext4 volume with ~${usedMB} MB used, its partclone image and its compressed copies (once; cached in .bench/)`);
  if (!fs.existsSync(img)) {
    const files = Math.max(1, Math.floor(usedMB / 2 / 64));
    withExt4Volume(vol, `${volumeMiB}M`, path.join(WORK, "par-mnt"), (mnt) => {
      writeRandomFiles(mnt, files);
      writeTextFiles(mnt, files);
    });
    sh(`partclone.ext4 -q -c -s ${vol} -O ${img}.tmp 2>/dev/null && mv ${img}.tmp ${img}`);
    fs.rmSync(vol, { force: true });
  }
  // the compressors side by side: each uses at most 2 cores, and bzip2 one
  const made = compressions.filter((c) => !fs.existsSync(`${img}.${c.suffix}`));
  console.error(`bench: ${made.map((c) => c.make).join("; ")}`);
  if (made.length) sh(made.map((c) => `(${c.make} ${img} > ${img}.${c.suffix}.tmp && mv ${img}.${c.suffix}.tmp ${img}.${c.suffix}) &`).join(" ") + " wait; " + made.map((c) => `test -f ${img}.${c.suffix}`).join(" && "));
  fs.writeFileSync(`${img}.done`, "");
  return img;
}

type Timed = Omit<Measured, "stdout">;

/** Runs of each command (see bestOf). */
const RUNS = Number(process.env.BENCH_PAR_RUNS ?? 3);

function timed(cmd: string, before = () => {}): Timed {
  return bestOf(cmd, RUNS, before, "ignore");
}

function sha256(file: string): string {
  return sh(`sha256sum ${file}`).split(" ")[0]!;
}

interface Row {
  compression: string;
  run: string;
  t: Timed;
  floor?: number;
  same?: boolean;
}

function main() {
  for (const t of ["partclone.ext4", "zstd", "pzstd", "pigz", "xz", "bzip2", "lz4", "mkfs.ext4", "sha256sum"]) {
    if (!need(t)) {
      console.log(`bench: skipped: ${t} is not installed (apt-get install partclone zstd pigz xz-utils bzip2 lz4 e2fsprogs)`);
      return;
    }
  }
  if (process.getuid?.() !== 0) {
    console.log("bench: skipped: making the volume needs root (loop mount)");
    return;
  }
  if (!fs.existsSync(SHM)) {
    console.log(`bench: skipped: no tmpfs at ${SHM}`);
    return;
  }
  const only = process.env.BENCH_PAR_ONLY?.split(",");
  const wanted = COMPRESSIONS.filter((c) => !only || only.includes(c.key));
  const sets = [
    { volumeMiB: VOLUME_MIB, usedMB: USED_MB, compressions: wanted.filter((c) => !SLOW.has(c.key)) },
    { volumeMiB: SLOW_VOLUME_MIB, usedMB: SLOW_USED_MB, compressions: wanted.filter((c) => SLOW.has(c.key)) },
  ].filter((set, i) => i === 0 || set.compressions.length > 0);
  const images = sets.map((set) => makeImages(set.volumeMiB, set.usedMB, set.compressions));
  const bun = process.execPath;
  const imgtool = process.env.BENCH_IMGTOOL ?? `${bun} ${CLI}`;
  // the standalone executable too, for the targets that count its start-up: `--help` takes it 60-80 ms
  // against 150-170 ms for the sources run by bun (what npx imgtool runs); over a whole verify the two
  // were within this VM's spread (medians of 8 alternating runs: 1.145 s and 1.19 s)
  const binary = buildBinary();
  const shmOut = path.join(SHM, `imgtool-bench-par-${process.pid}.raw`);
  const diskOut = path.join(WORK, "par-out.raw");
  const rows: Row[] = [];
  const failures: string[] = [];
  const loadBefore = fs.readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  const began = performance.now();

  // the reference: the plain image's restore, whose output's sha256 every other restore of that image must give
  let reference = "";
  const restore = (compression: string, run: string, cmd: string, out: string, floor?: number) => {
    const t = timed(cmd, () => {
      fs.rmSync(out, { force: true });
      sh("sync");
    });
    const sum = sha256(out);
    if (!reference) reference = sum;
    const same = sum === reference;
    if (!same) console.error(`bench: ${compression}: ${run}: sha256 ${sum} differs from the plain restore's ${reference}`);
    fs.rmSync(out, { force: true });
    rows.push({ compression, run, t, floor, same });
    console.error(`bench: ${compression}: ${run}: ${t.seconds.toFixed(2)} s`);
  };
  const other = (compression: string, run: string, cmd: string, floor?: number) => {
    const t = timed(cmd);
    rows.push({ compression, run, t, floor });
    console.error(`bench: ${compression}: ${run}: ${t.seconds.toFixed(2)} s`);
  };

  for (const [i, set] of sets.entries()) {
    const img = images[i]!;
    const plain = `none (${set.volumeMiB} MiB volume, plain)`;
    reference = "";
    sh(`cat ${img}* > /dev/null`); // warm the page cache for every reader alike
    restore(plain, "restore → disk", `exec ${imgtool} restore ${img} -o ${diskOut} --sparse -q`, diskOut);
    restore(plain, "restore → tmpfs", `exec ${imgtool} restore ${img} -o ${shmOut} --sparse -q`, shmOut);
    other(plain, "floor: dd image → file, conv=fsync", `dd if=${img} of=${diskOut} bs=4M conv=fsync status=none; rm -f ${diskOut}`);

    for (const c of set.compressions) {
      try {
        const file = `${img}.${c.suffix}`;
        const index = `${file}.imgtool-index`;
        fs.rmSync(index, { force: true });
        const floor = timed(`${c.decoder} ${file} > /dev/null`);
        rows.push({ compression: c.name, run: `floor: ${c.decoder} > /dev/null`, t: floor, floor: floor.seconds });
        console.error(`bench: ${c.name}: floor ${floor.seconds.toFixed(2)} s`);
        const f = floor.seconds;
        if (c.key === "zstd") {
          // what the cores can do at best: as many decoders as cores, each decoding the whole file at
          // once; their time over the count is one file's worth on all cores (this VM's two vCPUs do
          // not decode two streams twice as fast as one)
          const shmCopies = Array.from({ length: CORES }, (_, i) => `${shmOut}.${i}`);
          const removeCopies = () => shmCopies.forEach((copy) => fs.rmSync(copy, { force: true }));
          for (const [run, sinks] of [
            [`floor: ${CORES} × ${c.decoder} at once > /dev/null, per file`, shmCopies.map(() => "/dev/null")],
            [`floor: ${CORES} × ${c.decoder} at once → tmpfs, per file`, shmCopies],
          ] as const) {
            const t = timed(`(${sinks.map((sink) => `${c.decoder} ${file} > ${sink} &`).join(" ")} wait)`, removeCopies);
            removeCopies();
            rows.push({ compression: c.name, run, t: { ...t, seconds: t.seconds / CORES, cpu: t.cpu / CORES }, floor: f });
            console.error(`bench: ${c.name}: ${run}: ${(t.seconds / CORES).toFixed(2)} s`);
          }
        }
        restore(c.name, "restore, no index → tmpfs", `exec ${imgtool} restore ${file} -o ${shmOut} --sparse -q`, shmOut, f);
        restore(c.name, "restore, no index → disk", `exec ${imgtool} restore ${file} -o ${diskOut} --sparse -q`, diskOut, f);
        other(c.name, "imgtool index", `exec ${imgtool} index ${file}`, f);
        if (!fs.existsSync(index)) throw new Error(`bench: imgtool index ${file} left no ${index}`);
        for (const threads of [1, CORES]) {
          restore(c.name, `restore --threads ${threads}, index → tmpfs`, `exec ${imgtool} restore ${file} -o ${shmOut} --sparse -q --threads ${threads}`, shmOut, f);
          restore(c.name, `restore --threads ${threads}, index → disk`, `exec ${imgtool} restore ${file} -o ${diskOut} --sparse -q --threads ${threads}`, diskOut, f);
        }
        for (const threads of [1, CORES]) other(c.name, `verify --threads ${threads}, index`, `exec ${imgtool} verify ${file} -q --threads ${threads}`, f);
        if (binary && c.key === "zstd") {
          restore(c.name, `restore --threads ${CORES}, index → tmpfs (binary)`, `exec ${binary} restore ${file} -o ${shmOut} --sparse -q --threads ${CORES}`, shmOut, f);
          other(c.name, `verify --threads ${CORES}, index (binary)`, `exec ${binary} verify ${file} -q --threads ${CORES}`, f);
        }
      } catch (e) {
        failures.push(`${c.name}: ${(e as Error).message}`);
        console.error((e as Error).message);
      }
    }
  }

  const loadAfter = fs.readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
  console.log(
    `\nimages: ${sets.map((set, i) => `${(fs.statSync(images[i]!).size / 1e6).toFixed(0)} MB partclone image of a ${set.volumeMiB} MiB ext4 volume (~${set.usedMB} MB of files, half random) for ${set.compressions.map((c) => c.key).join(", ") || "plain only"}`).join("; ")}; ` +
      `${CORES} cores ("--threads ${CORES}" = all); tmpfs = ${SHM}, disk = ${diskOut} (restore fsyncs); ` +
      `load average before ${loadBefore}, after ${loadAfter}; run took ${((performance.now() - began) / 1000).toFixed(0)} s\n`,
  );
  console.log("x floor = seconds / the decoder alone (`X -dc > /dev/null`) of the same file; same = output sha256 equals the plain restore's\n");
  const w = [40, 40];
  console.log(`| ${"compression".padEnd(w[0]!)} | ${"run".padEnd(w[1]!)} | seconds | x floor | CPU s | peak RSS MiB | same |`);
  console.log(`|${"-".repeat(w[0]! + 2)}|${"-".repeat(w[1]! + 2)}|---------|---------|-------|--------------|------|`);
  for (const r of rows) {
    const ratio = r.floor && !r.run.startsWith("floor") ? (r.t.seconds / r.floor).toFixed(2) : "";
    const same = r.same === undefined ? "" : r.same ? "yes" : "NO";
    console.log(
      `| ${r.compression.padEnd(w[0]!)} | ${r.run.padEnd(w[1]!)} | ${r.t.seconds.toFixed(2).padStart(7)} | ${ratio.padStart(7)} | ${r.t.cpu.toFixed(2).padStart(5)} | ${r.t.rssMiB.toFixed(1).padStart(12)} | ${same.padEnd(4)} |`,
    );
  }

  const get = (compression: string, run: string) => rows.find((r) => r.compression.startsWith(compression) && r.run === run)?.t.seconds;
  const plainDisk = get(`none (${VOLUME_MIB} MiB`, "restore → disk")!;
  /** name, measured ratio, limit, and why the limit cannot apply on this machine (when it cannot) */
  const checks: [string, number | undefined, number, string?][] = [];
  const zstd1 = COMPRESSIONS[0].name;
  const zstdFloor = get(zstd1, "floor: zstd -dc > /dev/null");
  const onAllCores = (sink: string) => get(zstd1, `floor: ${CORES} × zstd -dc at once ${sink}, per file`);
  if (zstdFloor) {
    // judged against what this machine's cores do at best (as many zstd -dc at once as cores, time
    // per file), and against one zstd -dc wherever that floor leaves room for it (below FLOOR_ROOM)
    const tmpfsFloor = onAllCores("→ tmpfs");
    const noRoom = (floor: number) => (floor / zstdFloor < FLOOR_ROOM ? undefined : `not on these cores: their floor is ${(floor / zstdFloor).toFixed(2)}x (the 0.8x applies below ${FLOOR_ROOM}x)`);
    const verifyFloor = onAllCores("> /dev/null");
    for (const [how, suffix] of [["bun src/cli/main.ts", ""], ["standalone binary", " (binary)"]]) {
      const tmpfs = get(zstd1, `restore --threads ${CORES}, index → tmpfs${suffix}`);
      const verify = get(zstd1, `verify --threads ${CORES}, index${suffix}`);
      if (tmpfs && tmpfsFloor) {
        checks.push([`tmpfs: one-frame zstd restore, index, --threads ${CORES} ≤ 1.1x the machine's floor (${how})`, tmpfs / tmpfsFloor, 1.1]);
        checks.push([`tmpfs: one-frame zstd restore, index, --threads ${CORES} ≤ 0.8x zstd -dc (${how}; floor ${(tmpfsFloor / zstdFloor).toFixed(2)}x)`, tmpfs / zstdFloor, 0.8, noRoom(tmpfsFloor)]);
      }
      if (verify && verifyFloor) {
        checks.push([`one-frame zstd verify, index, --threads ${CORES} ≤ 1.0x the machine's floor (${how})`, verify / verifyFloor, 1.0]);
        checks.push([`one-frame zstd verify, index, --threads ${CORES} ≤ 0.8x zstd -dc (${how}; floor ${(verifyFloor / zstdFloor).toFixed(2)}x)`, verify / zstdFloor, 0.8, noRoom(verifyFloor)]);
      }
    }
    // the compressed restore into tmpfs against the larger of its decoder and the plain image's restore
    const plainTmpfs = get(`none (${VOLUME_MIB} MiB`, "restore → tmpfs")!;
    const limit = Math.max(zstdFloor, plainTmpfs);
    for (const run of ["restore, no index → tmpfs", `restore --threads ${CORES}, index → tmpfs`]) {
      const t = get(zstd1, run);
      if (t) checks.push([`tmpfs: one-frame zstd ${run.replace(" → tmpfs", "")} ≤ 1.15x max(decoder ${zstdFloor.toFixed(2)} s, plain restore ${plainTmpfs.toFixed(2)} s)`, t / limit, 1.15]);
    }
    // "where the disk allows": not where restoring the plain image onto the same disk takes longer,
    // nor where this machine's cores cannot (as for tmpfs: the 0.8x applies where the floor is below 0.7x)
    const diskFloor = plainDisk / zstdFloor;
    const diskBound = diskFloor > 0.8 ? `disk-bound: the plain image's restore onto this disk takes ${diskFloor.toFixed(2)}x` : tmpfsFloor === undefined ? undefined : noRoom(tmpfsFloor);
    checks.push([`disk: one-frame zstd restore, index, --threads ${CORES} ≤ 0.8x zstd -dc (where the disk allows)`, get(zstd1, `restore --threads ${CORES}, index → disk`)! / zstdFloor, 0.8, diskBound]);
  }
  for (const [prefix, floorRun] of [
    ["zstd one frame", "floor: zstd -dc > /dev/null"],
    ["zstd multi-frame", "floor: zstd -dc > /dev/null"],
    ["gzip", "floor: pigz -dc > /dev/null"],
  ] as const) {
    const floor = get(prefix, floorRun);
    if (!floor) continue;
    const limit = Math.max(floor, plainDisk);
    checks.push([`disk: ${prefix} restore, no index ≤ 1.25x max(decoder ${floor.toFixed(2)} s, plain restore ${plainDisk.toFixed(2)} s)`, get(prefix, "restore, no index → disk")! / limit, 1.25]);
    checks.push([`disk: ${prefix} restore, index, --threads ${CORES} ≤ 1.25x max(decoder, plain restore)`, get(prefix, `restore --threads ${CORES}, index → disk`)! / limit, 1.25]);
  }
  const machineFloors = zstdFloor
    ? [
        [`verify: ${CORES} × zstd -dc at once > /dev/null, per file`, onAllCores("> /dev/null")],
        [`tmpfs restore: ${CORES} × zstd -dc at once → tmpfs, per file`, onAllCores("→ tmpfs")],
      ]
    : [];
  const peakRss = Math.max(...rows.filter((r) => !r.run.startsWith("floor")).map((r) => r.t.rssMiB));
  const allSame = rows.every((r) => r.same !== false);
  console.log("\n| target | measured | limit | |\n|---|---|---|---|");
  for (const [name, ratio, limit, cannotApply] of checks) {
    if (ratio === undefined || !Number.isFinite(ratio)) continue;
    console.log(`| ${name} | ${ratio.toFixed(2)}x | ${limit}x | ${ratio <= limit ? "met" : (cannotApply ?? "MISSED")} |`);
  }
  for (const [name, seconds] of machineFloors) {
    if (seconds !== undefined) console.log(`| this machine's floor for the ${name} | ${(Number(seconds) / zstdFloor!).toFixed(2)}x | | |`);
  }
  console.log(`| imgtool peak RSS ≤ 128 MiB (every imgtool run) | ${peakRss.toFixed(1)} MiB | 128 | ${peakRss <= 128 ? "met" : "MISSED"} |`);
  console.log(`| every restore's output = the plain restore's (sha256) | ${allSame ? "all equal" : "DIFFERENT"} | | ${allSame ? "met" : "MISSED"} |`);
  for (const f of failures) console.log(`FAILED: ${f.split("\n")[0]}`);
  if (failures.length) process.exit(1);
  if (!allSame) {
    console.error("bench: some restored output differs from the plain restore's (see the 'same' column)");
    process.exit(1);
  }
}

if (import.meta.main) main();
