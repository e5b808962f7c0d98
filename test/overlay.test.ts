import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { UsageError } from "../src/errors.ts";
import { openImage } from "../src/formats/detect.ts";
import { openImageVolume } from "../src/serve/image-export.ts";
import { mergeOverlay, openOverlay } from "../src/volume/overlay.ts";
import type { Extent, Volume } from "../src/volume/volume.ts";
import { errorOf, fixture, restoredBytes, runCli, seededRandom, sha256, sha256File, tempDir } from "./helpers.ts";

const IMAGE = "ext4.ext4-ptcl-img";

function imageCopy(name = IMAGE): string {
  const copy = path.join(tempDir(), name);
  fs.copyFileSync(fixture(name), copy);
  return copy;
}

function baseVolume(file: string): Volume {
  const image = openImage(file);
  return openImageVolume(image, path.basename(file));
}

/** What extents say, as one flag per byte range, checked for order, coverage and merging. */
function checkExtents(extents: Iterable<Extent>, offset: number, length: number): Extent[] {
  const list = [...extents];
  let at = offset;
  for (const [i, e] of list.entries()) {
    expect(e.offset).toBe(at);
    expect(e.length).toBeGreaterThan(0);
    if (i > 0) expect(e.data).not.toBe(list[i - 1]!.data);
    at += e.length;
  }
  expect(at).toBe(offset + length);
  return list;
}

describe("overlay volume", () => {
  test("random writes, zeroes and trims read back as a model of them says, before and after reopening", () => {
    const file = imageCopy();
    const imageSha = sha256File(file);
    const model = restoredBytes(file);
    const overlayFile = path.join(tempDir(), "changes.ovl");
    const random = seededRandom(7);
    let overlay = openOverlay(overlayFile, baseVolume(file));
    expect(overlay.created).toBe(true);
    const size = overlay.size;
    for (let i = 0; i < 300; i++) {
      const offset = Math.floor(random() * size);
      const length = Math.min(size - offset, 1 + Math.floor(random() * (random() < 0.2 ? 300_000 : 9000)));
      const op = random();
      if (op < 0.7) {
        const data = new Uint8Array(length).map(() => Math.floor(random() * 256));
        overlay.write(offset, data);
        model.set(data, offset);
      } else {
        overlay.zero(offset, length, op < 0.85);
        model.fill(0, offset, offset + length);
      }
      if (i % 50 === 0) overlay.flush();
      if (i % 37 === 0) expect(sha256(overlay.read(0, size))).toBe(sha256(model));
    }
    expect(sha256(overlay.read(0, size))).toBe(sha256(model));
    // every stretch called a hole reads as zeros
    for (const e of checkExtents(overlay.extents(0, size), 0, size)) {
      if (!e.data) expect(model.subarray(e.offset, e.offset + e.length).every((b) => b === 0)).toBe(true);
    }
    checkExtents(overlay.extents(12_345, 3_000_000), 12_345, 3_000_000);
    overlay.close();

    overlay = openOverlay(overlayFile, baseVolume(file));
    expect(overlay.created).toBe(false);
    expect(sha256(overlay.read(0, size))).toBe(sha256(model));
    for (let i = 0; i < 40; i++) {
      const offset = Math.floor(random() * size);
      const length = Math.min(size - offset, 1 + Math.floor(random() * 200_000));
      expect(sha256(overlay.read(offset, length))).toBe(sha256(model.subarray(offset, offset + length)));
    }
    overlay.close();
    // the image is only ever read
    expect(sha256File(file)).toBe(imageSha);
  }, 60_000);

  test("the restore merge equals reading the overlay volume whole", () => {
    const file = imageCopy();
    const overlayFile = path.join(tempDir(), "changes.ovl");
    const overlay = openOverlay(overlayFile, baseVolume(file));
    const size = overlay.size;
    // inside used data, across its edge, far out in unused blocks, zeros over used data
    overlay.write(4096 + 100, new Uint8Array(5000).fill(0xab));
    overlay.write(372736 - 2048, new Uint8Array(8192).fill(0xcd));
    overlay.write(6_000_000, new Uint8Array(700_000).fill(0xef));
    overlay.zero(0, 1024, true);
    overlay.zero(200_000, 50_000, false);
    overlay.write(size - 10, new Uint8Array(10).fill(0x11));
    const image = openImage(file);
    const merged = new Uint8Array(size);
    let last = -1;
    for (const batch of mergeOverlay(image.dataBatches(), overlay)) {
      for (const run of batch) {
        expect(run.offset).toBeGreaterThan(last);
        last = run.offset;
        merged.set(run.data, run.offset);
      }
    }
    image.close();
    expect(sha256(merged)).toBe(sha256(overlay.read(0, size)));
    overlay.close();
  });

  test("imgtool restore --overlay writes the merged volume; without the overlay, the image's own", () => {
    const file = imageCopy();
    const overlayFile = path.join(tempDir(), "changes.ovl");
    const overlay = openOverlay(overlayFile, baseVolume(file));
    overlay.write(5_000_000, new Uint8Array(10_000).fill(0xab));
    overlay.zero(8192, 4096, true);
    const expected = sha256(overlay.read(0, overlay.size));
    overlay.close();
    const out = path.join(tempDir(), "merged.raw");
    const r = runCli(["restore", file, "--overlay", overlayFile, "-o", out]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(sha256File(out)).toBe(expected);
    const plain = path.join(tempDir(), "plain.raw");
    expect(runCli(["restore", file, "-o", plain]).code).toBe(0);
    expect(sha256File(plain)).toBe(sha256(restoredBytes(file)));
    // restore never makes an overlay
    const missing = runCli(["restore", file, "--overlay", path.join(tempDir(), "none.ovl"), "-o", path.join(tempDir(), "x.raw")]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^imgtool: .*none\.ovl: no such overlay file\n$/);
  });

  test("an overlay made for another image is refused, also after the image changed", () => {
    const file = imageCopy();
    const overlayFile = path.join(tempDir(), "changes.ovl");
    openOverlay(overlayFile, baseVolume(file)).close();
    const other = imageCopy("ext4-v1.ext4-ptcl-img");
    expect(() => openOverlay(overlayFile, baseVolume(other))).toThrow(UsageError);
    // the same bytes with another mtime: a copy, or an image rewritten in place
    fs.utimesSync(file, new Date(), new Date(Date.now() - 86_400_000));
    expect(() => openOverlay(overlayFile, baseVolume(file))).toThrow(/made for another image/);
    const outDir = tempDir();
    const r = runCli(["restore", other, "--overlay", overlayFile, "-o", path.join(outDir, "x.raw")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^imgtool: .*changes\.ovl: this overlay was made for another image .*\n$/);
    expect(fs.readdirSync(outDir)).toEqual([]);
  });

  test("damaged overlays: one error naming the file, offset and field", () => {
    const file = imageCopy();
    const good = path.join(tempDir(), "good.ovl");
    openOverlay(good, baseVolume(file)).close();
    const variant = (name: string, change: (bytes: Uint8Array) => Uint8Array) => {
      const p = path.join(tempDir(), name);
      fs.writeFileSync(p, change(new Uint8Array(fs.readFileSync(good))));
      return p;
    };
    const cases: [string, (b: Uint8Array) => Uint8Array, RegExp][] = [
      ["magic", (b) => ((b[0] = 0x41), b), /offset 0: not an imgtool overlay/],
      ["crc", (b) => ((b[70] = b[70]! ^ 1), b), /offset 60: overlay header checksum does not match/],
      ["map", (b) => ((b[4096 + 3] = 0xff), b), /offset 4,099: overlay map byte 0xff/],
      ["truncated", (b) => b.subarray(0, 1 << 20), /overlay file is 1,048,576 bytes, shorter than its .* layout \(truncated\)/],
      ["short", (b) => b.subarray(0, 100), /offset 0: not an imgtool overlay \(100 bytes/],
    ];
    for (const [name, change, message] of cases) {
      const p = variant(name, change);
      expect(errorOf(() => openOverlay(p, baseVolume(file))).message).toMatch(message);
      const r = runCli(["restore", file, "--overlay", p, "-o", path.join(tempDir(), "x.raw")]);
      expect(r.code).toBe(3);
      expect(r.stderr.split("\n").length).toBe(2);
      expect(r.stderr).toContain(p);
    }
  });

  test("never through a symlink, never the image itself, never two holders at once", () => {
    const file = imageCopy();
    const dir = tempDir();
    const victim = path.join(dir, "victim");
    fs.writeFileSync(victim, "keep me");
    fs.symlinkSync(victim, path.join(dir, "link.ovl"));
    expect(() => openOverlay(path.join(dir, "link.ovl"), baseVolume(file))).toThrow(/a symlink/);
    fs.symlinkSync(path.join(dir, "nothing"), path.join(dir, "dangling.ovl"));
    expect(() => openOverlay(path.join(dir, "dangling.ovl"), baseVolume(file))).toThrow(/a symlink to nothing/);
    expect(fs.existsSync(path.join(dir, "nothing"))).toBe(false);
    expect(fs.readFileSync(victim, "utf8")).toBe("keep me");
    expect(() => openOverlay(file, baseVolume(file))).toThrow();
    const overlayFile = path.join(dir, "one.ovl");
    const first = openOverlay(overlayFile, baseVolume(file));
    expect(() => openOverlay(overlayFile, baseVolume(file))).toThrow(/another imgtool has this overlay open/);
    first.close();
    openOverlay(overlayFile, baseVolume(file)).close();
  });

  test("kill -9 during writes: the overlay opens and holds every write flushed before the kill", async () => {
    const file = imageCopy();
    const overlayFile = path.join(tempDir(), "crash.ovl");
    // a writer that says which round it has flushed; each round writes a pattern seeded by its number
    const script = path.join(tempDir(), "writer.ts");
    fs.writeFileSync(
      script,
      `import { openImage } from ${JSON.stringify(path.resolve("src/formats/detect.ts"))};
import { openImageVolume } from ${JSON.stringify(path.resolve("src/serve/image-export.ts"))};
import { openOverlay } from ${JSON.stringify(path.resolve("src/volume/overlay.ts"))};
const overlay = openOverlay(process.argv[2], openImageVolume(openImage(process.argv[3]), "v"));
for (let round = 1; ; round++) {
  for (let i = 0; i < 16; i++) {
    const block = (round * 16 + i) % 2048;
    overlay.write(block * 4096, new Uint8Array(4096).fill(round & 0xff));
  }
  overlay.flush();
  process.stdout.write(round + "\\n");
}
`,
    );
    const child = Bun.spawn([process.execPath, script, overlayFile, file], { stdout: "pipe", stderr: "pipe" });
    const reader = child.stdout.getReader();
    let text = "";
    while ((text.match(/\n/g)?.length ?? 0) < 40) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    child.kill("SIGKILL");
    await child.exited;
    // what the writer reported before it died: each line came after its flush returned
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    const lines = text.split("\n").filter((l) => l !== "");
    const lastFlushed = Number(lines[lines.length - 1]);
    expect(lastFlushed).toBeGreaterThanOrEqual(40);
    const overlay = openOverlay(overlayFile, baseVolume(file));
    try {
      // round R's blocks are next written by round R + 128: rounds after L - 127 hold their own bytes
      for (let round = Math.max(1, lastFlushed - 126); round <= lastFlushed; round++) {
        for (let i = 0; i < 16; i++) {
          const block = (round * 16 + i) % 2048;
          const got = overlay.read(block * 4096, 4096);
          if (!got.every((b) => b === (round & 0xff))) throw new Error(`block ${block} of flushed round ${round} lost (last flushed ${lastFlushed})`);
        }
      }
    } finally {
      overlay.close();
    }
  }, 60_000);
});
