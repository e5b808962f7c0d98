// A mutation run by hand: bun test/fuzz/run.ts [COUNT] [SEED] [--keep DIR]
// prints each mutant that broke a rule, then the counts; --keep saves those mutants' files.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runAll, saveMutant, summary } from "./mutants.ts";

const args = process.argv.slice(2);
const keepAt = args.indexOf("--keep");
const keep = keepAt >= 0 ? args.splice(keepAt, 2)[1] : undefined;
const count = Number(args[0] ?? process.env.IMGTOOL_FUZZ_COUNT ?? 200);
const seed = Number(args[1] ?? 1);
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "imgtool-fuzz-"));
try {
  let done = 0;
  const soFar = { exact: 0, undetectable: 0, refused: 0, broke: 0 };
  const t = await runAll(count, seed, scratch, (m, v) => {
    done++;
    soFar[v.outcome]++;
    if (v.problems.length > 0) soFar.broke++;
    if (v.problems.length > 0) {
      console.log(`BROKE ${m.what}\n  ${v.problems.join("\n  ")}\n  ${v.runs.map((r) => `${r.argv[0]} → ${r.code} ${r.seconds.toFixed(1)}s ${r.rssMiB.toFixed(0)}MiB: ${r.stderr.trim().split("\n")[0]}`).join("\n  ")}`);
      if (keep) saveMutant(m, path.join(keep, `${done}`));
    }
    if (done % 50 === 0) console.error(`${done}/${count}: ${soFar.refused} clean refusals, ${soFar.exact} exact exit 0, ${soFar.undetectable} unchecked exit 0, ${soFar.broke} broke a rule`);
  });
  console.log(summary(t));
} finally {
  fs.rmSync(scratch, { recursive: true, force: true });
}
