// The README's library examples, run as they stand: each ```ts block of its "## Library" section, with
// "imgtool" resolved to src/index.ts, must exit 0 and print the lines its `// →` comments give.
import { expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { tempDir } from "./helpers.ts";

const ROOT = path.join(import.meta.dir, "..");
const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
const section = readme.slice(readme.indexOf("\n## Library\n"), readme.indexOf("\n## ", readme.indexOf("\n## Library\n") + 5));
const blocks = [...section.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);

test("the README's library section has its examples", () => {
  expect(blocks.length).toBeGreaterThanOrEqual(5);
});

blocks.forEach((code, n) => {
  const first = code.split("\n").find((l) => l.startsWith("const ") || l.startsWith("let ")) ?? `block ${n + 1}`;
  test(`README library example ${n + 1}: ${first}`, () => {
    const file = path.join(tempDir(), `example-${n + 1}.ts`);
    fs.writeFileSync(file, code.replaceAll(`from "imgtool"`, `from ${JSON.stringify(path.join(ROOT, "src", "index.ts"))}`));
    const r = Bun.spawnSync([process.execPath, file], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    expect(r.stderr.toString()).toBe("");
    expect(r.exitCode).toBe(0);
    const want = code.split("\n").filter((l) => l.startsWith("// → ")).map((l) => l.slice("// → ".length));
    expect(want.length).toBeGreaterThan(0);
    expect(r.stdout.toString().trimEnd().split("\n")).toEqual(want);
  }, 60_000);
});
