// What restore does to the files around its output: partial files, symlinks, its own inputs,
// devices, signals, pipes, and every way a restore can fail.
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { restoreImage } from "../src/commands/restore.ts";
import { openImage } from "../src/formats/detect.ts";
import { progressLine } from "../src/cli/progress-bar.ts";
import { CLI, fixture, peerTest, restoredReference, runCli, sha256File, shellWord, tempDir, which } from "./helpers.ts";

const IMG = fixture("ext4.ext4-ptcl-img");
const REF = restoredReference("ext4.ext4-ptcl-img");
const PARTIAL_FILE = { IMGTOOL_TMPFILE: "0" };
const isRoot = process.getuid?.() === 0;

describe("a new output file", () => {
  test("is never visible before it is complete: the directory holds only OUT afterwards", () => {
    const dir = tempDir();
    const out = path.join(dir, "vol.raw");
    const r = runCli(["restore", IMG, "-o", out]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(["vol.raw"]);
    expect(sha256File(out)).toBe(REF.sha256);
  });

  for (const [mode, env] of [
    ["unnamed file", {}],
    ["OUT.partial", PARTIAL_FILE],
  ] as const) {
    test(`${mode}: an OUT.partial that is a symlink to a victim is neither followed nor replaced`, () => {
      const dir = tempDir();
      const victim = path.join(dir, "victim");
      fs.writeFileSync(victim, "precious\n");
      const out = path.join(dir, "vol.raw");
      fs.symlinkSync(victim, `${out}.partial`);
      const r = runCli(["restore", IMG, "-o", out], { env });
      if (mode === "OUT.partial") {
        expect(r.code).toBe(2);
        expect(r.stderr).toBe(`imgtool: ${out}.partial exists (left by an earlier run?); remove it first: imgtool never reuses a partial file\n`);
        expect(fs.existsSync(out)).toBe(false);
      } else {
        expect(r.code).toBe(0);
        expect(sha256File(out)).toBe(REF.sha256);
      }
      expect(fs.readFileSync(victim, "utf8")).toBe("precious\n");
      expect(fs.readlinkSync(`${out}.partial`)).toBe(victim);
    });

    test(`${mode}: a stale OUT.partial file is never reused or truncated`, () => {
      const dir = tempDir();
      const out = path.join(dir, "vol.raw");
      fs.writeFileSync(`${out}.partial`, "stale");
      const r = runCli(["restore", IMG, "-o", out, "--force"], { env });
      expect(r.code).toBe(mode === "OUT.partial" ? 2 : 0);
      expect(fs.readFileSync(`${out}.partial`, "utf8")).toBe("stale");
    });

    test(`${mode}: --force replaces a symlink at OUT itself, never the file it points to`, () => {
      const dir = tempDir();
      const victim = path.join(dir, "victim");
      fs.writeFileSync(victim, "precious\n");
      const out = path.join(dir, "vol.raw");
      fs.symlinkSync(victim, out);
      expect(runCli(["restore", IMG, "-o", out], { env }).code).toBe(2);
      const r = runCli(["restore", IMG, "-o", out, "--force"], { env });
      expect(r.code).toBe(0);
      expect(fs.lstatSync(out).isFile()).toBe(true);
      expect(sha256File(out)).toBe(REF.sha256);
      expect(fs.readFileSync(victim, "utf8")).toBe("precious\n");
      expect(fs.readdirSync(dir).sort()).toEqual(["victim", "vol.raw"]);
    });
  }

  test("restore X.partial -o X: the input is read, never written", () => {
    const dir = tempDir();
    const out = path.join(dir, "x");
    fs.copyFileSync(IMG, `${out}.partial`);
    const before = sha256File(`${out}.partial`);
    const unnamed = runCli(["restore", `${out}.partial`, "-o", out]);
    expect(unnamed.code).toBe(0);
    expect(sha256File(out)).toBe(REF.sha256);
    fs.rmSync(out);
    const partial = runCli(["restore", `${out}.partial`, "-o", out], { env: PARTIAL_FILE });
    expect(partial.code).toBe(2);
    expect(sha256File(`${out}.partial`)).toBe(before);
  });

  test("library: unnamed: false writes OUT.partial and renames it; an existing OUT is kept without force", () => {
    const dir = tempDir();
    const out = path.join(dir, "vol.raw");
    restoreImage(openImage(IMG), out, { unnamed: false });
    expect(sha256File(out)).toBe(REF.sha256);
    expect(fs.readdirSync(dir)).toEqual(["vol.raw"]);
    expect(() => restoreImage(openImage(IMG), out, { unnamed: false })).toThrow(`${out} exists; add --force to overwrite it`);
  });
});

describe("an output that is an input", () => {
  test("is refused even with --force: the same path, a hard link, a symlink, another spelling", () => {
    const dir = tempDir();
    const img = path.join(dir, "img");
    fs.copyFileSync(IMG, img);
    fs.linkSync(img, path.join(dir, "hard"));
    fs.symlinkSync("img", path.join(dir, "soft"));
    const before = sha256File(img);
    for (const [out, env] of [
      [img, {}],
      [path.join(dir, "hard"), {}],
      [path.join(dir, "soft"), PARTIAL_FILE],
      [`${dir}/./img`, PARTIAL_FILE],
    ] as const) {
      const r = runCli(["restore", img, "-o", out, "--force"], { env });
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`^imgtool: ${out.replaceAll(".", "\\.")}: the output is the input ${img}( under another name)?; refusing to write over it, even with --force\\n$`));
    }
    expect(sha256File(img)).toBe(before);
    expect(fs.readdirSync(dir).sort()).toEqual(["hard", "img", "soft"]);
  });

  test("is refused when it is another piece of the split set", () => {
    const dir = tempDir();
    for (const s of ["aa", "ab", "ac"]) fs.copyFileSync(fixture(`ntfs.ntfs-ptcl-img.${s}`), path.join(dir, `n.${s}`));
    const before = sha256File(path.join(dir, "n.ac"));
    const r = runCli(["restore", path.join(dir, "n.aa"), "-o", path.join(dir, "n.ac"), "--force"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("the output is the input");
    expect(sha256File(path.join(dir, "n.ac"))).toBe(before);
  });

  test("is refused when it is another volume of a partimage set", () => {
    const dir = tempDir();
    for (const s of ["000", "001"]) fs.copyFileSync(fixture(`ext2mv-z1-V1.partimg.gz.${s}`), path.join(dir, `p.partimg.gz.${s}`));
    const victim = path.join(dir, "p.partimg.gz.001");
    const before = sha256File(victim);
    const r = runCli(["restore", path.join(dir, "p.partimg.gz.000"), "-o", victim, "--force"]);
    expect(r.code).toBe(2);
    expect(sha256File(victim)).toBe(before);
  });

  test("is refused when the image comes on stdin from that file", () => {
    const dir = tempDir();
    const img = path.join(dir, "img");
    fs.copyFileSync(IMG, img);
    const r = runCli(["restore", "-", "-o", img, "--force"], { stdinFile: img });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`imgtool: ${img}: the output is the input standard input under another name; refusing to write over it, even with --force\n`);
    expect(sha256File(img)).toBe(sha256File(IMG));
  });
});

describe("--output-offset into an existing file", () => {
  test("refuses to grow the file, saying how far the volume would reach; writes when it fits", () => {
    const dir = tempDir();
    const disk = path.join(dir, "disk.img");
    fs.writeFileSync(disk, Buffer.alloc(REF.size, 0x55));
    const r = runCli(["restore", IMG, "-o", disk, "--force", "--output-offset", "1M"]);
    expect(r.code).toBe(2);
    const end = REF.size + (1 << 20);
    expect(r.stderr).toBe(
      `imgtool: ${disk}: the volume would end at byte ${end.toLocaleString("en-US")}, past the end of the file (${REF.size.toLocaleString("en-US")} bytes); extend it first if that is meant (truncate -s ${end} ${disk})\n`,
    );
    expect(fs.statSync(disk).size).toBe(REF.size);
    expect(fs.readFileSync(disk).every((b) => b === 0x55)).toBe(true);
    fs.truncateSync(disk, end + 4096);
    expect(runCli(["restore", IMG, "-o", disk, "--force", "--output-offset", "1M"]).code).toBe(0);
    expect(fs.statSync(disk).size).toBe(end + 4096);
    const vol = fs.readFileSync(disk).subarray(1 << 20, end);
    expect(new Bun.CryptoHasher("sha256").update(vol).digest("hex")).toBe(REF.sha256);
  });
});

describe("every failure leaves nothing", () => {
  /** seeded mutants: bit flips, byte runs, truncations past the first 128 bytes */
  function* mutants(bytes: Uint8Array, count: number, seed: number): Generator<[string, Uint8Array]> {
    let s = seed >>> 0;
    const next = () => {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      return s / 2 ** 32;
    };
    for (let i = 0; i < count; i++) {
      const at = 128 + Math.floor(next() * (bytes.length - 128));
      const kind = i % 3;
      if (kind === 0) {
        const m = bytes.slice();
        m[at]! ^= 1 << Math.floor(next() * 8);
        yield [`flip@${at}`, m];
      } else if (kind === 1) {
        const m = bytes.slice();
        m.fill(Math.floor(next() * 256), at, Math.min(bytes.length, at + 16));
        yield [`fill@${at}`, m];
      } else {
        yield [`cut@${at}`, bytes.slice(0, at)];
      }
    }
  }

  const MUTANTS = 24;
  for (const name of ["ntfs.ntfsclone-img", "ext4.ext4-ptcl-img", "ext2-z0.partimg.000", "ntfs.ntfs-ptcl-img.gz"]) {
    test(`${name}: ${MUTANTS} mutants restored as OUT.partial and unnamed: exact bytes or an error, and no file left on error`, () => {
      const good = new Uint8Array(fs.readFileSync(fixture(name)));
      const ref = restoredReference(name);
      const dir = tempDir();
      const input = path.join(tempDir(), name);
      let refused = 0;
      let exact = 0;
      let restored = 0;
      for (const [what, bytes] of mutants(good, MUTANTS, 7)) {
        fs.writeFileSync(input, bytes);
        for (const unnamed of [true, false]) {
          const out = path.join(dir, "out.raw");
          try {
            const image = openImage(input);
            try {
              restoreImage(image, out, { unnamed, sparse: true });
            } finally {
              image.close();
            }
            // a flip where the format has no checksum (ntfsclone data, unused bytes) may pass
            restored++;
            if (sha256File(out) === ref.sha256) exact++;
            fs.rmSync(out);
          } catch (e) {
            if ((e as Error).name !== "ImageError" && (e as Error).name !== "ChecksumError") throw new Error(`${what}: ${(e as Error).stack}`);
            refused++;
            if (fs.readdirSync(dir).length !== 0) throw new Error(`${what} (${unnamed ? "unnamed" : "OUT.partial"}): left ${fs.readdirSync(dir)}`);
          }
        }
      }
      expect(refused).toBeGreaterThan(0);
      console.log(`${name}: ${MUTANTS} mutants x 2 output kinds: ${refused} refused, ${restored} restored (${exact} exact)`);
      expect(refused + restored).toBe(2 * MUTANTS);
    }, 120_000);
  }

  test("the command line: a damaged ntfsclone image exits 3 with one line and leaves no file", () => {
    const dir = tempDir();
    const bad = path.join(tempDir(), "bad.ntfsclone-img");
    const good = new Uint8Array(fs.readFileSync(fixture("ntfs.ntfsclone-img")));
    fs.writeFileSync(bad, good.subarray(0, good.length - 1000));
    for (const env of [{}, PARTIAL_FILE]) {
      const r = runCli(["restore", bad, "-o", path.join(dir, "out.raw")], { env });
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/^imgtool: [^\n]*bad\.ntfsclone-img: [^\n]+\n$/);
      expect(fs.readdirSync(dir)).toEqual([]);
    }
  });
});

describe("signals", () => {
  /** The unnamed (O_TMPFILE) files a process holds open in `dir`: /proc shows them as "DIR/#INODE (deleted)". */
  function unnamedFilesOf(pid: number, dir: string): string[] {
    const fds = path.join("/proc", String(pid), "fd");
    const held: string[] = [];
    for (const fd of fs.readdirSync(fds)) {
      try {
        const target = fs.readlinkSync(path.join(fds, fd));
        if (target.startsWith(`${dir}/#`)) held.push(target);
      } catch {
        // closed meanwhile
      }
    }
    return held;
  }

  /**
   * Restore from a pipe fed 4 KiB every 20 ms; once the output is open (OUT.partial, or an unnamed
   * file seen in /proc) and a little more was fed, signal it; say what is left.
   */
  async function signalled(signal: "SIGINT" | "SIGTERM" | "SIGHUP", env: Record<string, string>) {
    const dir = tempDir();
    const out = path.join(dir, "vol.raw");
    const data = fs.readFileSync(IMG);
    const child = Bun.spawn([process.execPath, CLI, "restore", "-", "-o", out], { stdin: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
    let fed = 0;
    let feeding = true;
    const feeder = setInterval(() => {
      if (!feeding || fed >= data.length) return;
      try {
        child.stdin.write(data.subarray(fed, fed + 4096));
        child.stdin.flush();
      } catch {
        feeding = false;
      }
      fed += 4096;
    }, 20);
    const opened = () => fs.readdirSync(dir).length > 0 || unnamedFilesOf(child.pid, dir).length > 0;
    for (let waited = 0; !opened() && waited < 20_000; waited += 20) await Bun.sleep(20);
    await Bun.sleep(200);
    const during = { files: fs.readdirSync(dir), unnamed: unnamedFilesOf(child.pid, dir).length, fed };
    child.kill(signal);
    const code = await child.exited;
    feeding = false;
    clearInterval(feeder);
    return { during, code, signalCode: child.signalCode, left: fs.readdirSync(dir), stderr: await new Response(child.stderr).text(), total: data.length, out };
  }

  const number = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    test(`${signal} mid-restore removes OUT.partial and exits ${128 + number[signal]}`, async () => {
      const r = await signalled(signal, PARTIAL_FILE);
      expect(r.during.fed).toBeLessThan(r.total);
      expect(r.during.files).toEqual(["vol.raw.partial"]);
      expect(r.code).toBe(128 + number[signal]);
      expect(r.stderr).toBe(`imgtool: stopped by ${signal}; ${r.out}.partial removed\n`);
      expect(r.left).toEqual([]);
    }, 30_000);

    test(`${signal} mid-restore of an unnamed file leaves nothing (the default action: killed by the signal)`, async () => {
      const r = await signalled(signal, {});
      expect(r.during.fed).toBeLessThan(r.total);
      expect(r.during.files).toEqual([]);
      expect(r.during.unnamed).toBe(1);
      expect(r.signalCode).toBe(signal);
      expect(r.left).toEqual([]);
    }, 30_000);
  }
});

describe("block devices", () => {
  const losetup = which("losetup");
  const why = !isRoot ? "needs root" : !losetup ? "needs losetup (mount)" : spawnSync(losetup, ["--find"]).status !== 0 ? "no free loop device here (losetup --find)" : undefined;
  if (why) console.log(`skip: block device tests: ${why}`);

  /** a loop device over a file of `bytes` filled with 0x55; detached afterwards */
  function withLoop(bytes: number, body: (dev: string, file: string) => void): void {
    const file = path.join(tempDir(), "backing");
    fs.writeFileSync(file, Buffer.alloc(bytes, 0x55));
    const r = spawnSync(losetup!, ["--find", "--show", file], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`losetup failed: ${r.stderr.trim()}`);
    const dev = r.stdout.trim();
    try {
      body(dev, file);
    } finally {
      spawnSync(losetup!, ["-d", dev]);
    }
  }

  test.skipIf(why !== undefined)("a device smaller than the volume (plus --output-offset) is refused before a byte is written", () => {
    withLoop(REF.size - 4096, (dev, file) => {
      const r = runCli(["restore", IMG, "-o", dev, "--force"]);
      expect(r.code).toBe(2);
      expect(r.stderr).toBe(`imgtool: ${dev}: the device holds ${(REF.size - 4096).toLocaleString("en-US")} bytes; the volume needs ${REF.size.toLocaleString("en-US")}\n`);
      expect(fs.readFileSync(file).every((b) => b === 0x55)).toBe(true);
    });
    withLoop(REF.size, (dev, file) => {
      const r = runCli(["restore", IMG, "-o", dev, "--force", "--output-offset", "4K"]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain("from byte 4,096");
      expect(fs.readFileSync(file).every((b) => b === 0x55)).toBe(true);
      // exactly the volume's size: written
      const ok = runCli(["restore", IMG, "-o", dev, "--force"]);
      expect(ok.stderr).toBe("");
      expect(ok.code).toBe(0);
      expect(sha256File(file)).toBe(REF.sha256);
    });
  }, 60_000);

  peerTest(why ?? (!which("mkfs.ext4") && "needs mkfs.ext4 (e2fsprogs)"))("a mounted device is refused (opened exclusively)", () => {
    const mkfs = which("mkfs.ext4")!;
    withLoop(16 << 20, (dev, file) => {
      expect(spawnSync(mkfs, ["-q", "-F", dev]).status).toBe(0);
      const mnt = tempDir();
      if (spawnSync("mount", [dev, mnt]).status !== 0) {
        console.log("skip: mounted device test: cannot mount here");
        return;
      }
      try {
        const before = sha256File(file);
        const r = runCli(["restore", IMG, "-o", dev, "--force"]);
        expect([r.code, r.stderr]).toEqual([2, `imgtool: ${dev}: the device is in use (mounted, or held by another program)\n`]);
        expect(sha256File(file)).toBe(before);
      } finally {
        spawnSync("umount", [mnt]);
      }
    });
  }, 60_000);
});

describe("stdout", () => {
  peerTest(!which("python3") && "needs python3")("into a non-blocking pipe drained slowly: every byte arrives", () => {
    // python makes the pipe's write end O_NONBLOCK (as a parent may leave it) and reads it in small sips
    const py = which("python3")!;
    const script = `
import fcntl, hashlib, os, subprocess, sys, time
r, w = os.pipe()
fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
p = subprocess.Popen(sys.argv[1:], stdout=w)
os.close(w)
h = hashlib.sha256(); n = 0
while True:
    b = os.read(r, 65536)
    if not b: break
    h.update(b); n += len(b)
    if n < 1 << 20: time.sleep(0.002)
print(p.wait(), n, h.hexdigest())
`;
    const r = spawnSync(py, ["-c", script, process.execPath, CLI, "restore", IMG, "-o", "-"], { encoding: "utf8" });
    expect(r.stdout.trim()).toBe(`0 ${REF.size} ${REF.sha256}`);
  });
});

describe("usage errors are one line with exit 2", () => {
  test("a missing output directory, an empty -o, no command; -V prints the version", () => {
    const missing = runCli(["restore", IMG, "-o", "/nonexistent/dir/x"]);
    expect([missing.code, missing.stderr]).toEqual([2, "imgtool: /nonexistent/dir/x: the directory /nonexistent/dir does not exist\n"]);
    const empty = runCli(["restore", IMG, "-o", ""]);
    expect([empty.code, empty.stderr]).toEqual([2, `imgtool: -o "": an empty output name; give a file, a block device, or - for stdout\n`]);
    const file = path.join(tempDir(), "f");
    fs.writeFileSync(file, "");
    const notDir = runCli(["restore", IMG, "-o", `${file}/x`]);
    expect([notDir.code, notDir.stderr]).toEqual([2, `imgtool: ${file}/x: a component of the path is not a directory\n`]);
    const none = runCli([]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/^imgtool: no command given; one of info, restore, [^\n]+ \(see: imgtool --help\)\n$/);
    const version = runCli(["-V"]);
    expect(version.code).toBe(0);
    expect(version.stdout.toString()).toMatch(/^\d+\.\d+\.\d+\n$/);
    expect(version.stderr).toBe("");
  });
});

describe("the progress line", () => {
  const states = [
    { label: "restore", done: 0, total: 0, rate: 0 },
    { label: "restore", done: 1234567890, total: 4 * 1024 ** 4, rate: 123456789 },
    { label: "restore", done: 5 << 30, total: 5 << 30, rate: 2e9 },
    { label: "receive", done: 987654321, total: undefined, rate: 1e8 },
  ];
  for (const columns of [20, 30, 50, 80, 200]) {
    test(`fits ${columns} columns without wrapping and keeps the percentage`, () => {
      for (const s of states) {
        const line = progressLine(s, columns);
        expect(line.length).toBeLessThanOrEqual(columns - 1);
        expect(line).not.toContain("\n");
        if (s.total !== undefined) expect(line).toMatch(/\d+\.\d%/);
      }
    });
  }

  test("uses the room it has: the bar and every field at 80 columns, fewer at 50, the bar alone at 30", () => {
    const s = states[1]!;
    expect(progressLine(s, 80)).toMatch(/^restore \[#*-+\]\s+\d+\.\d% [\d.]+ GB \/ 4\.0 TB {2}[\d.]+ MB\/s {2}ETA \d+:\d\d:\d\d$/);
    expect(progressLine(s, 50)).toMatch(/^restore \[#*-+\]\s+\d+\.\d% ETA/);
    expect(progressLine(s, 30)).toMatch(/^restore \[#*-+\]\s+\d+\.\d%$/);
  });

  peerTest(!which("script") && "needs script (bsdutils)")("under a 50-column terminal the bar restore draws never reaches the last column", () => {
    const script = which("script")!;
    const out = path.join(tempDir(), "vol.raw");
    const r = spawnSync(script, ["-qec", `stty cols 50 rows 20; ${[process.execPath, CLI, "restore", IMG, "-o", out].map(shellWord).join(" ")}`, "/dev/null"], { encoding: "utf8" });
    expect(r.status).toBe(0);
    const drawn = r.stdout.split(/\r|\n/).map((l) => l.replace(/\x1b\[K/g, "")).filter((l) => l.startsWith("restore ["));
    expect(drawn.length).toBeGreaterThan(0);
    for (const l of drawn) expect(l.length).toBeLessThanOrEqual(49);
  });
});
