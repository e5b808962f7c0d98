// bun bench/btrfs.ts: imgtool btrfs-dump against btrfs receive --dump, in one run, one table.
// Makes (once, cached in .bench/) two send streams on a loop-mounted btrfs in a temp dir (removed
// after): 200k small files in nested directories (over a million commands) and ~1 GB of data.
// Needs root, btrfs-progs and /usr/bin/time.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CLI, type Measured, ROOT, WORK, measure, printColumns, sh } from "./common.ts";

const BUN = path.join(ROOT, "node_modules", ".bin", "bun");
const FILES = Number(process.env.BENCH_BTRFS_FILES ?? 200_000);
const DATA_MB = Number(process.env.BENCH_BTRFS_DATA_MB ?? 1024);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const TARGETS = { small: 0.7, data: 1.5, rssMiB: 96 };

/** Both streams, made once on a throw-away btrfs in a temp dir. */
function makeStreams(): { small: string; data: string } {
  fs.mkdirSync(WORK, { recursive: true });
  const small = path.join(WORK, `btrfs-small-${FILES}.btrfs-send`);
  const data = path.join(WORK, `btrfs-data-${DATA_MB}m.btrfs-send`);
  if (fs.existsSync(`${small}.done`) && fs.existsSync(`${data}.done`)) return { small, data };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "imgtool-btrfs-bench-"));
  const vol = path.join(tmp, "vol");
  const mnt = path.join(tmp, "mnt");
  fs.mkdirSync(mnt);
  console.error(`bench: making send streams of ${FILES} small files and ${DATA_MB} MB of data (once; cached in .bench/)`);
  sh(`truncate -s ${Math.ceil(DATA_MB / 1024) + 3}G ${vol} && mkfs.btrfs -q -f ${vol} && mount -o loop ${vol} ${mnt}`);
  try {
    sh(`btrfs -q subvolume create ${mnt}/small`);
    // 200k files of 20-200 bytes, 100 per directory, directories 2 deep
    sh(`python3 -c "
import os, random
r = random.Random(4)
root = '${mnt}/small'
for i in range(${FILES}):
    d = '%s/d%03d/e%03d' % (root, i // 10000, (i // 100) % 100)
    if i % 100 == 0: os.makedirs(d, exist_ok=True)
    with open('%s/file-%06d.txt' % (d, i), 'wb') as f: f.write(b'x' * r.randint(20, 200))
"`);
    sh(`btrfs -q subvolume snapshot -r ${mnt}/small ${mnt}/small.s && btrfs send -q -f ${small} ${mnt}/small.s`);
    fs.writeFileSync(`${small}.done`, "");
    sh(`btrfs -q subvolume create ${mnt}/data`);
    const files = Math.max(1, Math.round(DATA_MB / 128));
    sh(`for i in $(seq 1 ${files}); do head -c 128M /dev/urandom > ${mnt}/data/random$i.bin; done`);
    sh(`btrfs -q subvolume snapshot -r ${mnt}/data ${mnt}/data.s && btrfs send -q -f ${data} ${mnt}/data.s`);
    fs.writeFileSync(`${data}.done`, "");
  } finally {
    sh(`umount ${mnt}`);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { small, data };
}

/** Best wall time of RUNS, with the peak RSS of that run, stdout to /dev/null. */
function time(argv: string[]): Measured {
  let best: Measured | undefined;
  for (let i = 0; i < RUNS; i++) {
    const t = measure(argv, "ignore");
    if (!best || t.seconds < best.seconds) best = t;
  }
  return best!;
}

function countCommands(file: string): number {
  const out = sh(`${BUN} ${CLI} btrfs-dump --json ${file} | wc -l`);
  return Number(out.trim());
}

const { small, data } = makeStreams();
const rows: string[][] = [["stream", "tool", "seconds", "rate", "peak RSS MiB", "imgtool/btrfs", "target"]];
for (const [label, file, kind] of [
  ["small files", small, "small"],
  ["data", data, "data"],
] as const) {
  const commands = countCommands(file);
  const mb = fs.statSync(file).size / 1e6;
  const theirs = time(["btrfs", "receive", "--dump", "-f", file]);
  const ours = time([BUN, CLI, "btrfs-dump", file]);
  const rate = (t: Measured) => (kind === "small" ? `${Math.round(commands / t.seconds / 1000)}k cmd/s` : `${Math.round(mb / t.seconds)} MB/s`);
  const ratio = ours.seconds / theirs.seconds;
  const target = TARGETS[kind];
  const name = `${label} (${commands.toLocaleString("en-US")} cmds, ${Math.round(mb)} MB)`;
  rows.push([name, "btrfs receive --dump", theirs.seconds.toFixed(2), rate(theirs), theirs.rssMiB.toFixed(1), "", ""]);
  rows.push([
    name,
    "imgtool btrfs-dump",
    ours.seconds.toFixed(2),
    rate(ours),
    ours.rssMiB.toFixed(1),
    `${ratio.toFixed(2)}x`,
    `<= ${target}x ${ratio <= target ? "met" : "MISSED"}; RSS <= ${TARGETS.rssMiB} ${ours.rssMiB <= TARGETS.rssMiB ? "met" : "MISSED"}`,
  ]);
}
printColumns(rows);
