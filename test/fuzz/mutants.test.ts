// The fuzz suite: seeded mutants of every fixture kind through info, verify, restore and
// btrfs-dump (see mutants.ts for what is mutated and what each run must do). The default count
// runs in about three minutes on two cores; IMGTOOL_FUZZ_COUNT=3000 (and IMGTOOL_FUZZ_SEED) for more.
import { expect, test } from "bun:test";
import { compressorsAvailable, LIMITS, measuresMemory, runAll, summary } from "./mutants.ts";
import { tempDir } from "../helpers.ts";

const COUNT = Number(process.env.IMGTOOL_FUZZ_COUNT ?? 120);
const SEED = Number(process.env.IMGTOOL_FUZZ_SEED ?? 1);
const ready = compressorsAvailable();
if (!ready) console.log("fuzz: skipped: gzip, zstd, xz, bzip2 and lz4 are needed to make the mutants (apt-get install zstd xz-utils bzip2 lz4)");
if (!measuresMemory) console.log("fuzz: /usr/bin/time is missing (apt-get install time): peak memory is not measured");

test.skipIf(!ready)(
  `${COUNT} mutants: exit 0 with the exact bytes, or one line and exit 3/4; nothing left behind; within ${LIMITS.seconds} s and ${LIMITS.rssMiB} MiB`,
  async () => {
    const t = await runAll(COUNT, SEED, tempDir());
    console.log(summary(t));
    for (const f of t.failures) console.log(`${f.what}\n  ${f.problems.join("\n  ")}\n  ${f.stderr.join("\n  ")}`);
    expect(t.failures.map((f) => `${f.what}: ${f.problems.join("; ")}`)).toEqual([]);
    expect(t.mutants).toBe(COUNT);
  },
  60 * 60 * 1000,
);
