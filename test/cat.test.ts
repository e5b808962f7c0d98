import { expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { catRange } from "../src/commands/cat.ts";
import { restoreImage } from "../src/commands/restore.ts";
import { openImage } from "../src/formats/detect.ts";
import { ImageInput } from "../src/input/image-input.ts";
import { fixture, runCli, tempDir } from "./helpers.ts";

const ranges = [[0, 512], [4095, 4098], [1 << 20, 300_000], [4194304 - 10, 100]] as const;

for (const name of ["ntfs.ntfs-ptcl-img.ab", "ntfs.ntfs-ptcl-img.zst", "ntfs.ntfsclone-img.gz", "ext2-z1.partimg.gz.000"]) {
  test(`cat ranges of ${name} equal the restored volume (${name.endsWith(".ab") ? "block index" : "streamed"})`, () => {
    const out = path.join(tempDir(), "vol.raw");
    restoreImage(openImage(fixture(name)), out, {});
    const vol = fs.readFileSync(out);
    for (const [offset, length] of ranges) {
      const image = openImage(fixture(name));
      const parts: Uint8Array[] = [];
      catRange(new ImageInput(name, image, undefined, "cat"), offset, length, (b) => parts.push(b.slice()), name.endsWith(".ab"));
      image.close();
      expect(Buffer.concat(parts).equals(vol.subarray(offset, offset + length))).toBe(true);
    }
  });
}

test("imgtool cat writes the range to stdout", () => {
  const r = runCli(["cat", fixture("ext4k.ext4-ptcl-img"), "--offset", "4K", "--length", "8192"]);
  expect(r.code).toBe(0);
  expect(r.stdout.length).toBe(8192);
});
