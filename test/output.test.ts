import { expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { fixture, peerTest, runCli, sha256File, tempDir } from "./helpers.ts";

test("--sparse leaves the unused blocks as holes; without it they are written", () => {
  const dir = tempDir();
  const sparse = path.join(dir, "sparse.raw");
  const full = path.join(dir, "full.raw");
  expect(runCli(["restore", fixture("ext4a0.ext4-ptcl-img"), "-o", sparse, "--sparse"]).code).toBe(0);
  expect(runCli(["restore", fixture("ext4a0.ext4-ptcl-img"), "-o", full]).code).toBe(0);
  expect(sha256File(sparse)).toBe(sha256File(full));
  const allocated = (f: string) => fs.statSync(f).blocks * 512;
  // 75 used blocks of 4 KiB in a 4 MiB volume
  expect(allocated(sparse)).toBeLessThan(1 << 20);
  expect(allocated(full)).toBeGreaterThanOrEqual(4 << 20);
});

/** Why a small tmpfs cannot be mounted here (tried once), or undefined. */
function tmpfsMissing(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root to mount a small tmpfs";
  const dir = tempDir();
  if (Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir]).exitCode !== 0) return "tmpfs could not be mounted here";
  Bun.spawnSync(["umount", dir]);
  return undefined;
}

peerTest(tmpfsMissing())("a full disk stops the restore naming the output, and leaves no partial file", () => {
  const dir = tempDir();
  const mount = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir], { stderr: "pipe" });
  if (mount.exitCode !== 0) throw new Error(`mount -t tmpfs failed: ${mount.stderr.toString().trim()}`);
  try {
    const out = path.join(dir, "vol.raw");
    const r = runCli(["restore", fixture("ext4.ext4-ptcl-img"), "-o", out]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^imgtool: ${out}: cannot write at volume offset [0-9,]+: ENOSPC\\n$`));
    expect(fs.readdirSync(dir)).toEqual([]);
  } finally {
    Bun.spawnSync(["umount", dir]);
  }
});

test("usage mistakes are one line with a --help hint and exit 2", () => {
  const missing = runCli(["restore", fixture("ext4.ext4-ptcl-img")]);
  expect(missing.code).toBe(2);
  expect(missing.stderr).toBe("imgtool: Missing required argument: --output (see: imgtool restore --help)\n");
  const unknown = runCli(["bogus"]);
  expect(unknown.code).toBe(2);
  expect(unknown.stderr).toBe("imgtool: Unknown command bogus (see: imgtool --help)\n");
  expect(runCli(["restore", fixture("ext4.ext4-ptcl-img"), "-o", tempDir()]).code).toBe(2);
});

test("-o /dev/null needs no --force (nothing there to lose)", () => {
  const r = runCli(["restore", fixture("ext4.ext4-ptcl-img"), "-o", "/dev/null"]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
});

test("help goes to a pipe without colour escapes", () => {
  const r = runCli(["--help"]);
  expect(r.code).toBe(0);
  expect(r.stdout.toString()).not.toContain("\x1b[");
  expect(r.stdout.toString()).toContain("restore");
});
