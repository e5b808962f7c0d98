import { afterEach, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import type { Subprocess } from "bun";
import { openImage } from "../src/formats/detect.ts";
import { humanSize } from "../src/formats/units.ts";
import { libc } from "../native/libc.ts";
import { SEEK_DATA, SEEK_HOLE } from "../native/libc-file.ts";
import { CLI, fixture, manifest, peerTest, restoreToBuffer, runCli, sha256, sha256File, shellWord, tempDir, throughFifo, which } from "./helpers.ts";

/** The fixtures with random access, and the file name `mount` gives each by default. */
const MOUNTED = [
  ["ext4.ext4-ptcl-img", "ext4.ext4-ptcl-img.raw"],
  ["ntfs.ntfs-ptcl-img.aa", "ntfs.ntfs-ptcl-img.raw"],
  ["ntfs.ntfsclone-img", "ntfs.ntfsclone-img.raw"],
  ["ext2-z0.partimg.000", "ext2-z0.partimg.raw"],
] as const;
const MOUNT_WAIT_MS = 10_000;
const EXIT_WAIT_MS = 10_000;
const TEST_TIMEOUT_MS = 60_000;
const SIGINT_BIT = 1n << 1n;

function missingForFuse(): string | undefined {
  if (!fs.existsSync("/dev/fuse")) return "/dev/fuse is missing";
  if (!which("fusermount3")) return "fusermount3 is not installed (apt-get install fuse3)";
  if (process.getuid?.() !== 0) return "not root";
  return undefined;
}
const skipReason = missingForFuse();
if (skipReason) console.log(`test/mount.test.ts: FUSE mounts skipped: ${skipReason}`);

function restoredSha256(name: string): string {
  const row = manifest().find((r) => r.files[0] === name);
  if (!row) throw new Error(`${name} is not in fixtures/manifest.tsv`);
  return row.restoredSha256;
}

function restored(name: string): Uint8Array {
  const image = openImage(fixture(name));
  try {
    return restoreToBuffer(image);
  } finally {
    image.close();
  }
}

/** Ranges of the volume that cross block and FUSE request (128 KiB) boundaries, the same on every run. */
function sampleRanges(size: number): [number, number][] {
  const ranges: [number, number][] = [[0, 512], [size - 1, 1], [size - 4096, 4096], [4095, 2], [100_000, 300_000]];
  let state = 0x9e3779b9;
  const next = (below: number) => {
    // xorshift32
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % below;
  };
  while (ranges.length < 40) {
    const offset = next(size);
    ranges.push([offset, Math.min(size - offset, 1 + next(400_000))]);
  }
  return ranges;
}

/** The fields of the /proc/mounts line of `mountpoint`; the kernel writes a space, tab, newline or backslash in a path as \ and three octal digits. */
function mountLine(mountpoint: string): string[] | undefined {
  const unescape = (field: string) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
  return fs
    .readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .map((line) => line.split(" ").map(unescape))
    .find((fields) => fields[1] === mountpoint);
}

function inMounts(mountpoint: string): boolean {
  return mountLine(mountpoint) !== undefined;
}

function mountOptions(mountpoint: string): string[] {
  return mountLine(mountpoint)?.[3]?.split(",") ?? [];
}

interface Mounted {
  child: Subprocess<"ignore", "pipe", "pipe">;
  mountpoint: string;
  file: string;
}

/** Mounts made by the current test, unmounted by afterEach whatever happened. */
const live: Mounted[] = [];

async function exitCode(child: Subprocess, ms: number): Promise<number | "timeout"> {
  return Promise.race([child.exited, Bun.sleep(ms).then(() => "timeout" as const)]);
}

/** `imgtool mount` in a child process, once the file shows in the mount. */
async function mount(imageFile: string, fileName: string, extra: string[] = []): Promise<Mounted> {
  const mountpoint = tempDir();
  const child = Bun.spawn([process.execPath, CLI, "mount", imageFile, mountpoint, ...extra], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const mounted = { child, mountpoint, file: path.join(mountpoint, fileName) };
  live.push(mounted);
  const deadline = Date.now() + MOUNT_WAIT_MS;
  while (!fs.existsSync(mounted.file)) {
    if (child.exitCode !== null) throw new Error(`imgtool mount exited ${child.exitCode}: ${await new Response(child.stderr).text()}`);
    if (Date.now() > deadline) throw new Error(`${mounted.file} did not appear within ${MOUNT_WAIT_MS} ms`);
    await Bun.sleep(50);
  }
  return mounted;
}

/** fusermount3 -u, then the child must end by itself with exit code 0. */
async function unmount(m: Mounted): Promise<void> {
  const r = spawnSync("fusermount3", ["-u", m.mountpoint], { encoding: "utf8" });
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
  expect(await exitCode(m.child, EXIT_WAIT_MS)).toBe(0);
  expect(inMounts(m.mountpoint)).toBe(false);
}

afterEach(async () => {
  for (const m of live.splice(0)) {
    if (inMounts(m.mountpoint)) spawnSync("fusermount3", ["-uz", m.mountpoint]);
    if ((await exitCode(m.child, 2000)) === "timeout") m.child.kill("SIGKILL");
  }
});

function readRange(file: string, offset: number, length: number): Uint8Array {
  const fd = fs.openSync(file, "r");
  try {
    const out = new Uint8Array(length);
    let got = 0;
    for (let n; got < length && (n = fs.readSync(fd, out, got, length - got, offset + got)) > 0; ) got += n;
    return out.subarray(0, got);
  } finally {
    fs.closeSync(fd);
  }
}

describe.skipIf(skipReason !== undefined)("imgtool mount", () => {
  for (const [image, fileName] of MOUNTED) {
    test(
      `${image}: the volume as one read-only file`,
      async () => {
        const volume = restored(image);
        const m = await mount(fixture(image), fileName);
        expect(fs.readdirSync(m.mountpoint)).toEqual([fileName]);
        const ls = spawnSync("ls", ["-l", m.file], { encoding: "utf8" });
        expect(ls.stdout).toStartWith("-r--r--r-- ");
        expect(ls.stdout.split(/\s+/)[4]).toBe(String(volume.length));
        expect(fs.statSync(m.file).size).toBe(volume.length);

        // before the whole file is read, while the page cache has little of it
        for (const [offset, length] of sampleRanges(volume.length)) {
          expect(sha256(readRange(m.file, offset, length))).toBe(sha256(volume.subarray(offset, offset + length)));
        }
        expect(readRange(m.file, volume.length, 100).length).toBe(0);
        expect(readRange(m.file, volume.length + 12345, 100).length).toBe(0);
        expect(sha256File(m.file)).toBe(restoredSha256(image));

        expect(() => fs.openSync(m.file, "r+")).toThrow(expect.objectContaining({ code: "EROFS" }));
        expect(() => fs.writeFileSync(path.join(m.mountpoint, "new"), "x")).toThrow(expect.objectContaining({ code: "EROFS" }));

        await unmount(m);
        const stdout = await new Response(m.child.stdout).text();
        expect(stdout).toBe(`mounted ${m.file} (${humanSize(volume.length)}, read-only) until unmounted; unmount with: fusermount3 -u ${m.mountpoint} (or Ctrl-C here)\n`);
        expect(await new Response(m.child.stderr).text()).toBe("");
      },
      TEST_TIMEOUT_MS,
    );
  }

  test(
    "--name and --allow-other",
    async () => {
      const m = await mount(fixture("ext4.ext4-ptcl-img"), "disk.img", ["--name", "disk.img", "--allow-other"]);
      expect(fs.readdirSync(m.mountpoint)).toEqual(["disk.img"]);
      expect(mountOptions(m.mountpoint)).toContain("allow_other");
      expect(mountOptions(m.mountpoint)).toContain("ro");
      await unmount(m);
    },
    TEST_TIMEOUT_MS,
  );

  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    test(
      `${signal} unmounts and exits 0`,
      async () => {
        const m = await mount(fixture("ntfs.ntfsclone-img"), "ntfs.ntfsclone-img.raw");
        // an inherited "ignore SIGINT" would make libfuse leave SIGINT alone
        const ignored = BigInt(`0x${/SigIgn:\s*([0-9a-f]+)/.exec(fs.readFileSync(`/proc/${m.child.pid}/status`, "utf8"))![1]}`);
        expect(ignored & SIGINT_BIT).toBe(0n);
        m.child.kill(signal);
        expect(await exitCode(m.child, EXIT_WAIT_MS)).toBe(0);
        expect(inMounts(m.mountpoint)).toBe(false);
        expect(fs.readdirSync(m.mountpoint)).toEqual([]);
      },
      TEST_TIMEOUT_MS,
    );
  }

  test(
    "an image cut short under the mount: the reader gets EIO, the mount goes on",
    async () => {
      const copy = path.join(tempDir(), "cut.ext4-ptcl-img");
      fs.copyFileSync(fixture("ext4.ext4-ptcl-img"), copy);
      const m = await mount(copy, "cut.ext4-ptcl-img.raw");
      fs.truncateSync(copy, 64 << 10);
      expect(() => readRange(m.file, 0, fs.statSync(m.file).size)).toThrow(expect.objectContaining({ code: "EIO" }));
      expect(fs.readdirSync(m.mountpoint)).toEqual(["cut.ext4-ptcl-img.raw"]);
      await unmount(m);
      expect(await new Response(m.child.stderr).text()).toMatch(/^imgtool: cut\.ext4-ptcl-img\.raw: .*short read.* \(the caller got EIO\)\n/);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "the ext4 file mounts as a loop device from inside the FUSE mount",
    async () => {
      const m = await mount(fixture("ext4.ext4-ptcl-img"), "ext4.ext4-ptcl-img.raw");
      const inner = tempDir();
      const loop = spawnSync("mount", ["-o", "loop,ro", m.file, inner], { encoding: "utf8" });
      if (loop.status !== 0) {
        console.log(`loop mount over FUSE not allowed here, skipped: ${loop.stderr.trim()}`);
      } else {
        try {
          // the root directory of src1 in fixtures/MAKE.md
          expect(fs.readdirSync(inner).sort()).toEqual(["README.TXT", "bin", "deep", "docs", "empty.dat", "lost+found", "pattern.bin", "zeros.bin"]);
        } finally {
          spawnSync("umount", [inner]);
        }
      }
      await unmount(m);
    },
    TEST_TIMEOUT_MS,
  );
});

/** lseek(2) with SEEK_DATA/SEEK_HOLE: the offset, or the errno's negation */
function seek(fd: number, offset: number, whence: number): number {
  const r = Number(libc().lseek(fd, offset, whence));
  return r >= 0 ? r : -1;
}

describe.skipIf(skipReason !== undefined)("imgtool mount: holes and --overlay", () => {
  test(
    "SEEK_DATA and SEEK_HOLE follow the bitmap",
    async () => {
      const name = "ntfs.ntfs-ptcl-img.aa";
      const image = openImage(fixture(name));
      const m = await mount(fixture(name), "ntfs.ntfs-ptcl-img.raw");
      try {
        const { blockSize, totalBlocks, deviceSize } = image.info;
        const fd = fs.openSync(m.file, "r");
        try {
          // walk data and holes with lseek as cp --sparse=auto and tar do, and compare with the bitmap
          const found: [number, number][] = [];
          let at = 0;
          while (at < deviceSize) {
            const data = seek(fd, at, SEEK_DATA);
            if (data < 0) break;
            const hole = seek(fd, data, SEEK_HOLE);
            found.push([data, hole]);
            at = hole;
          }
          const expected: [number, number][] = [];
          for (let b = 0; b < totalBlocks; b++) {
            if (!image.isUsed(b)) continue;
            const last = expected[expected.length - 1];
            if (last && last[1] === b * blockSize) last[1] += blockSize;
            else expected.push([b * blockSize, (b + 1) * blockSize]);
          }
          expect(found).toEqual(expected);
          expect(found.length).toBeGreaterThan(1);
          expect(seek(fd, deviceSize, SEEK_DATA)).toBe(-1);
        } finally {
          fs.closeSync(fd);
        }
      } finally {
        image.close();
      }
      await unmount(m);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "--overlay: writes land in the overlay, survive a remount, truncate is refused, the image is untouched",
    async () => {
      const dir = tempDir();
      const imageFile = path.join(dir, "ext4.ext4-ptcl-img");
      fs.copyFileSync(fixture("ext4.ext4-ptcl-img"), imageFile);
      const imageSha = sha256File(imageFile);
      const overlay = path.join(dir, "changes.ovl");
      let m = await mount(imageFile, "ext4.ext4-ptcl-img.raw", ["--overlay", overlay]);
      expect(mountOptions(m.mountpoint)).not.toContain("ro");
      expect(spawnSync("ls", ["-l", m.file], { encoding: "utf8" }).stdout).toStartWith("-rw-r--r-- ");
      const pattern = new Uint8Array(300_000).map((_, i) => (i * 7) & 0xff);
      const fd = fs.openSync(m.file, "r+");
      fs.writeSync(fd, pattern, 0, pattern.length, 5_000_001);
      fs.fsyncSync(fd);
      expect(() => fs.ftruncateSync(fd, 4096)).toThrow(expect.objectContaining({ code: "EPERM" }));
      // a write past the end of the volume
      expect(() => fs.writeSync(fd, new Uint8Array(10), 0, 10, 8388608)).toThrow(expect.objectContaining({ code: "EFBIG" }));
      fs.closeSync(fd);
      const e2fsck = which("e2fsck");
      if (e2fsck) expect(spawnSync(e2fsck, ["-fn", m.file]).status).toBe(0);
      await unmount(m);
      expect(await new Response(m.child.stdout).text()).toContain(`writable, changes in ${overlay} (new)`);

      m = await mount(imageFile, "ext4.ext4-ptcl-img.raw", ["--overlay", overlay]);
      expect(sha256(readRange(m.file, 5_000_001, pattern.length))).toBe(sha256(pattern));
      const volume = restored("ext4.ext4-ptcl-img");
      volume.set(pattern, 5_000_001);
      expect(sha256File(m.file)).toBe(sha256(volume));
      await unmount(m);
      expect(sha256File(imageFile)).toBe(imageSha);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a mount point left dead by a killed server is named, with the command that clears it",
    async () => {
      const m = await mount(fixture("ext4.ext4-ptcl-img"), "ext4.ext4-ptcl-img.raw");
      m.child.kill("SIGKILL");
      await m.child.exited;
      try {
        const r = runCli(["mount", fixture("ext4.ext4-ptcl-img"), m.mountpoint]);
        expect(r.code).toBe(2);
        expect(r.stderr).toBe(`imgtool: ${m.mountpoint}: a dead FUSE mount is there (its server was killed); remove it with fusermount3 -u ${m.mountpoint}\n`);
      } finally {
        spawnSync("fusermount3", ["-uz", m.mountpoint]);
      }
    },
    TEST_TIMEOUT_MS,
  );

  for (const how of ["Ctrl-C", "SIGTERM"] as const) {
    peerTest(!which("script") && "script (util-linux) is not installed")(
      `on a terminal, ${how} unmounts cleanly and the next mount works`,
      async () => {
        const script = which("script")!;
        const mountpoint = tempDir();
        // exec: the shell script starts ($SHELL) must not stay in the terminal's foreground group,
        // where a ^C would end it (and script -e with it) whatever imgtool does
        const command = `exec ${[process.execPath, CLI, "mount", fixture("ext4.ext4-ptcl-img"), mountpoint].map(shellWord).join(" ")}`;
        // script gives the command a pseudo-terminal; what is written to its stdin is typed there
        const child = Bun.spawn([script, "-qfec", command, "/dev/null"], { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, SHELL: "/bin/sh" } });
        const file = path.join(mountpoint, "ext4.ext4-ptcl-img.raw");
        try {
          const deadline = Date.now() + MOUNT_WAIT_MS;
          while (!fs.existsSync(file)) {
            if (Date.now() > deadline) throw new Error("the mount did not appear");
            await Bun.sleep(50);
          }
          if (how === "Ctrl-C") {
            child.stdin.write("\x03");
            child.stdin.flush();
          } else {
            // the imgtool process under script's terminal: the one whose command line names this mount point
            const pid = fs
              .readdirSync("/proc")
              .filter((p) => /^\d+$/.test(p) && Number(p) !== child.pid)
              .find((p) => {
                try {
                  const argv = fs.readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0");
                  return argv.includes(mountpoint) && argv.includes(CLI);
                } catch {
                  return false;
                }
              });
            expect(pid).toBeDefined();
            process.kill(Number(pid), "SIGTERM");
          }
          const code = await exitCode(child, EXIT_WAIT_MS);
          if (code !== 0) child.kill("SIGKILL");
          // what the terminal showed, so that a failure says why
          const shown = code === 0 ? "" : await new Response(child.stdout).text();
          expect(`exit ${code}${shown && `; the terminal showed: ${shown}`}`).toBe("exit 0");
          expect(inMounts(mountpoint)).toBe(false);
          expect(fs.readdirSync(mountpoint)).toEqual([]);
        } finally {
          if (inMounts(mountpoint)) spawnSync("fusermount3", ["-uz", mountpoint]);
          child.kill("SIGKILL");
        }
        const again = await mount(fixture("ext4.ext4-ptcl-img"), "ext4.ext4-ptcl-img.raw");
        await unmount(again);
      },
      TEST_TIMEOUT_MS,
    );
  }
});

describe("imgtool mount refuses before mounting", () => {
  test("an image compressed twice over (the seek index covers one layer): decompress first or restore", () => {
    const mountpoint = tempDir();
    const twice = path.join(tempDir(), "ext4.zst.gz");
    fs.writeFileSync(twice, Bun.gzipSync(new Uint8Array(Bun.spawnSync(["zstd", "-q", "-c", fixture("ext4.ext4-ptcl-img")]).stdout)));
    const r = runCli(["mount", twice, mountpoint]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `imgtool: ${twice}: mount cannot read this gzip inside zstd image at any offset (it is compressed 2 times over); decompress it first (gzip -d) or use imgtool restore\n`,
    );
    expect(inMounts(mountpoint)).toBe(false);
  });

  test("an image through a pipe", () => {
    const fifo = throughFifo(fixture("ext4.ext4-ptcl-img"));
    const r = runCli(["mount", fifo, tempDir()]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`imgtool: ${fifo}: mount needs a regular file it can read at any offset, not a pipe; save the image to a file first or use imgtool restore\n`);
  });

  test("a mount point that is missing or not a directory", () => {
    const missing = path.join(tempDir(), "nope");
    const r = runCli(["mount", fixture("ext4.ext4-ptcl-img"), missing]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`imgtool: ${missing}: no such directory; create it first\n`);
    const r2 = runCli(["mount", fixture("ext4.ext4-ptcl-img"), fixture("ext4.ext4-ptcl-img")]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toBe(`imgtool: ${fixture("ext4.ext4-ptcl-img")}: not a directory\n`);
  });

  test("a --name that is not a file name", () => {
    const r = runCli(["mount", fixture("ext4.ext4-ptcl-img"), tempDir(), "--name", "a/b"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`imgtool: --name: not a file name: "a/b"\n`);
  });
});
