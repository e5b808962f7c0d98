// partimage restores only onto a block device: these differential tests need root and loop devices.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { restoreImage } from "../src/commands/restore.ts";
import { openImage } from "../src/formats/detect.ts";
import { fixture, sha256File, tempDir, which } from "./helpers.ts";

const partimage = which("partimage");
const losetup = which("losetup");
const isRoot = process.getuid?.() === 0;
const why =
  !partimage ? "partimage is not installed (apt-get install partimage)"
  : !losetup ? "losetup is missing"
  : !isRoot ? "needs root for loop devices"
  : Bun.spawnSync([losetup, "--find"]).exitCode !== 0 ? "no free loop device here (losetup --find)"
  : "";
if (why) console.log(`skip: partimage differential tests: ${why}`);

function attachLoop(file: string): string {
  const r = Bun.spawnSync([losetup!, "--find", "--show", file], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`losetup failed: ${r.stderr.toString().trim()}`);
  return r.stdout.toString().trim();
}

describe.skipIf(why !== "")("differential: the same bytes as partimage restore onto a zero-filled loop device", () => {
  for (const name of ["ext2-z0.partimg.000", "ext2-z1.partimg.gz.000", "ext2mv-z1-V1.partimg.gz.000"]) {
    test(name, () => {
      const dir = tempDir();
      const image = openImage(fixture(name));
      const size = image.info.deviceSize;
      const ours = path.join(dir, "ours.raw");
      restoreImage(image, ours, {});
      image.close();

      // partimage finds the other volumes next to the first one, and writes where it runs
      for (const f of fs.readdirSync(path.dirname(fixture(name))).filter((f) => f.startsWith(name.replace(/\.000$/, ".")))) {
        fs.copyFileSync(fixture(f), path.join(dir, f));
      }
      const theirs = path.join(dir, "theirs.raw");
      fs.writeFileSync(theirs, "");
      fs.truncateSync(theirs, size);
      const loop = attachLoop(theirs);
      try {
        // partimage (newt) wants a terminal type that can clear the screen, even in batch mode
        const r = Bun.spawnSync([partimage!, "-b", "-f3", "restore", loop, path.join(dir, name)], { cwd: dir, stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, TERM: process.env.TERM || "xterm" } });
        expect(r.exitCode).toBe(0);
      } finally {
        Bun.spawnSync([losetup!, "-d", loop]);
      }
      expect(sha256File(ours)).toBe(sha256File(theirs));
    });
  }
});
