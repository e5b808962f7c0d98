// One input, one path: a file that is a volume itself (plain, compressed) is an input like an image,
// and a disk's restore has the image restore's output guard and signal handling.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { CLI, fixture, runCli, sha256, sha256File, tempDir, which } from "./helpers.ts";

const CZ = fixture("clonezilla");
const EXT4 = fixture("ext4-features.ext4-ptcl-img");

/** The restored volume of EXT4, as a dd copy of the partition would be. */
function rawVolume(dir: string): string {
  const vol = path.join(dir, "part.img");
  const r = runCli(["restore", EXT4, "-o", vol]);
  expect(r.code).toBe(0);
  return vol;
}

describe("a file that is a volume is an input like an image", () => {
  test("info, ls, get, cat, verify and restore of a plain volume (a dd copy)", () => {
    const dir = tempDir();
    const vol = rawVolume(dir);
    const info = runCli(["info", vol, "--json"]);
    expect(info.code).toBe(0);
    const facts = JSON.parse(info.stdout.toString());
    expect(facts).toMatchObject({ kind: "volume", content: "ext2/3/4", size: fs.statSync(vol).size, compression: [] });
    const text = runCli(["info", vol]).stdout.toString();
    expect(text).toMatch(/^Volume\n=+\ncontent +ext2\/3\/4\n/);

    const fromImage = runCli(["ls", EXT4, "/", "-R"]);
    const fromVolume = runCli(["ls", vol, "/", "-R"]);
    expect(fromVolume.code).toBe(0);
    expect(fromVolume.stdout.toString()).toBe(fromImage.stdout.toString());

    const cat = runCli(["cat", vol, "--offset", "1M", "--length", "64K"]);
    expect(sha256(cat.stdout)).toBe(sha256(fs.readFileSync(vol).subarray(1 << 20, (1 << 20) + (64 << 10))));

    const verify = runCli(["verify", vol]);
    expect(verify.code).toBe(0);
    expect(verify.stdout.toString()).toMatch(/: OK \(a volume of ext2\/3\/4, [\d,]+ bytes; a volume has no data checksums\)\n$/);

    const again = path.join(dir, "again.img");
    expect(runCli(["restore", vol, "-o", again]).code).toBe(0);
    expect(sha256File(again)).toBe(sha256File(vol));
  });

  const zstd = which("zstd");
  if (!zstd) console.log("skip: compressed volume test: needs zstd");
  test.skipIf(!zstd)("a zstd-compressed volume: ls and get through its seek index, restore in order", () => {
    const dir = tempDir();
    const vol = rawVolume(dir);
    const packed = `${vol}.zst`;
    expect(Bun.spawnSync([zstd!, "-q", "-T2", vol, "-o", packed]).exitCode).toBe(0);
    expect(runCli(["ls", packed, "/", "-R"]).stdout.toString()).toBe(runCli(["ls", vol, "/", "-R"]).stdout.toString());
    const out = path.join(dir, "out.img");
    expect(runCli(["restore", packed, "-o", out]).code).toBe(0);
    expect(sha256File(out)).toBe(sha256File(vol));
    // from a pipe: the size is only known at the end, trailing zeros included
    const piped = path.join(dir, "piped.img");
    const r = runCli(["restore", "-", "-o", piped], { stdinFile: packed });
    // stdin is read as an image: a volume on stdin is not detected
    expect(r.code).toBe(3);
    const facts = JSON.parse(runCli(["info", packed, "--json"]).stdout.toString());
    expect(facts).toMatchObject({ kind: "volume", content: "ext2/3/4", compression: ["zstd"] });
  });

  test("a file that is neither an image nor a volume still says what it looks like", () => {
    const dir = tempDir();
    const junk = path.join(dir, "junk");
    fs.writeFileSync(junk, "hello, this is text and not a volume\n".repeat(100));
    const r = runCli(["ls", junk, "/"]);
    expect(r.code).toBe(3);
    expect(r.stderr.toString()).toMatch(/^imgtool: [^\n]*junk: offset 0: not a partclone, partimage or ntfsclone image \(looks like text\)\n$/);
  });
});

describe("a disk restore has the image restore's guard and signal handling", () => {
  /** a writable copy of a shipped Clonezilla folder */
  function folderCopy(name: string): string {
    const dir = path.join(tempDir(), name);
    fs.cpSync(path.join(CZ, name), dir, { recursive: true });
    for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
    return dir;
  }

  test("restore DIR onto one of its own pieces is refused even with --force, and the piece is untouched", () => {
    const dir = folderCopy("clonezilla-mbr-zstd");
    const piece = fs.readdirSync(dir).find((f) => f.includes("-ptcl-img."))!;
    const before = sha256File(path.join(dir, piece));
    for (const target of [path.join(dir, piece), path.join(dir, "parts")]) {
      const r = runCli(["restore", dir, "-o", target, "--force"]);
      expect(r.code).toBe(2);
      expect(r.stderr.toString()).toMatch(/is one of the inputs|is the input/);
    }
    // through a symlink elsewhere too
    const link = path.join(tempDir(), "disk.img");
    fs.symlinkSync(path.join(dir, piece), link);
    expect(runCli(["restore", dir, "-o", link, "--force"]).code).toBe(2);
    expect(sha256File(path.join(dir, piece))).toBe(before);
  });

  test("restore DIR@N onto its own image piece is refused too", () => {
    const dir = folderCopy("clonezilla-mbr-zstd");
    const piece = fs.readdirSync(dir).find((f) => f.startsWith("loop0p1.") && f.includes("-ptcl-img."))!;
    const r = runCli(["restore", `${dir}@1`, "-o", path.join(dir, piece), "--force"]);
    expect(r.code).toBe(2);
  });

  /** The unnamed (O_TMPFILE) files a process holds open in `dir`. */
  function unnamedFilesOf(pid: number, dir: string): number {
    let n = 0;
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(`${dir}/#`)) n++;
      } catch {
        // closed meanwhile
      }
    }
    return n;
  }

  for (const mode of ["OUT.partial", "unnamed"] as const) {
    test(`SIGTERM mid-disk-restore leaves nothing (${mode})`, async () => {
      const out = path.join(tempDir(), "disk.raw");
      const dir = path.dirname(out);
      const env = mode === "OUT.partial" ? { IMGTOOL_TMPFILE: "0" } : {};
      const child = Bun.spawn([process.execPath, CLI, "restore", path.join(CZ, "clonezilla-gpt-gzip"), "-o", out], { stderr: "pipe", env: { ...process.env, ...env } });
      const opened = () => fs.readdirSync(dir).length > 0 || unnamedFilesOf(child.pid, dir) > 0;
      for (let waited = 0; !opened() && waited < 20_000; waited += 2) await Bun.sleep(2);
      // stopped while the output is open, then told to end: it acts on SIGTERM between batches
      child.kill("SIGSTOP");
      const during = { files: fs.readdirSync(dir), unnamed: unnamedFilesOf(child.pid, dir) };
      child.kill("SIGTERM");
      child.kill("SIGCONT");
      const code = await child.exited;
      const stderr = await new Response(child.stderr).text();
      if (mode === "OUT.partial") {
        expect(during.files).toEqual(["disk.raw.partial"]);
        expect(code).toBe(143);
        expect(stderr).toBe(`imgtool: stopped by SIGTERM; ${out}.partial removed\n`);
      } else {
        expect(during.unnamed).toBe(1);
        expect(child.signalCode).toBe("SIGTERM");
      }
      expect(fs.readdirSync(dir)).toEqual([]);
    }, 30_000);
  }

  test("--output-offset applies to a disk input like any other (into an existing larger file)", () => {
    const folder = path.join(CZ, "clonezilla-mbr-zstd");
    const plain = path.join(tempDir(), "plain.raw");
    expect(runCli(["restore", folder, "-o", plain]).code).toBe(0);
    const size = fs.statSync(plain).size;
    const big = path.join(tempDir(), "big.raw");
    fs.writeFileSync(big, "");
    fs.truncateSync(big, size + (1 << 20));
    const r = runCli(["restore", folder, "-o", big, "--force", "--output-offset", "1M"]);
    expect(r.code).toBe(0);
    const bytes = fs.readFileSync(big);
    expect(sha256(bytes.subarray(1 << 20))).toBe(sha256File(plain));
  });
});

describe("the whole-disk experience", () => {
  test("ls DIR lists the partitions and how to name each; ls DIR@N lists the file system", () => {
    const dir = path.join(CZ, "clonezilla-mbr-zstd");
    const r = runCli(["ls", dir]);
    expect(r.code).toBe(0);
    const lines = r.stdout.toString().trimEnd().split("\n");
    expect(lines[0]).toMatch(/^#\s+name\s+fs\s+size\s+content\s+address$/);
    expect(lines.slice(1).map((l) => l.split(/\s+/)[1])).toEqual(["loop0p1", "loop0p2", "loop0p3", "loop0p5", "loop0p6"]);
    expect(lines[1]).toEndWith(`${dir}@1`);
    const json = JSON.parse(runCli(["ls", dir, "--json"]).stdout.toString());
    expect(json[3]).toMatchObject({ number: 5, name: "loop0p5", fs: "FAT16", address: `${dir}@5` });
    const inside = runCli(["ls", `${dir}@1`, "/"]);
    expect(inside.code).toBe(0);
    expect(inside.stdout.toString().length).toBeGreaterThan(0);
  });

  test("get and ls errors name the image as well as the path", () => {
    const dir = path.join(CZ, "clonezilla-mbr-zstd");
    const r = runCli(["get", `${dir}@1`, "/no/such/file"]);
    expect(r.code).toBe(2);
    expect(r.stderr.toString()).toBe(`imgtool: ${dir}@1: /no/such/file: no such file in the file system\n`);
    const l = runCli(["ls", `${dir}@1`, "/nope"]);
    expect(l.stderr.toString()).toBe(`imgtool: ${dir}@1: /nope: no such file or directory in the file system\n`);
    const whole = runCli(["get", dir, "/x"]);
    expect(whole.code).toBe(2);
    expect(whole.stderr.toString()).toMatch(/is a whole disk; name one of its partitions/);
  });

  test("info DIR@N ends with a newline", () => {
    const out = runCli(["info", `${path.join(CZ, "clonezilla-mbr-zstd")}@2`]).stdout.toString();
    expect(out).toEndWith("problems: none\n");
  });
});
