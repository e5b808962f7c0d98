// The README's whole-disk story: a Clonezilla folder of a disk that boots is booted by qemu straight
// from the folder, through `imgtool serve DIR --socket S` and through `imgtool mount DIR MNT`. The
// folder is made here by fixtures/clonezilla/make-boot.sh (too large to ship, see its MAKE.md).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { CLI, FIXTURES, firstLine, tempDir, which } from "./helpers.ts";

const MAKER = path.join(FIXTURES, "clonezilla", "make-boot.sh");
const QEMU = ["qemu-system-x86_64", "-m", "384", "-nographic", "-no-reboot"];
const BOOT_SECONDS = 300;

function makerMissing(): string | undefined {
  if (process.getuid?.() !== 0) return "making the disk needs root (loop devices, mounts)";
  if (!which("qemu-system-x86_64")) return "qemu-system-x86_64 is not installed (apt: qemu-system-x86)";
  const tools: [string, string][] = [
    ["ocs-sr", "clonezilla"],
    ["parted", "parted"],
    ["grub-install", "grub2-common"],
    ["cpio", "cpio"],
    ["busybox", "busybox-static"],
    ["zstdmt", "zstd"],
    ["sfdisk", "fdisk"],
    ["partx", "util-linux"],
    ["losetup", "mount"],
    ["mkfs.ext4", "e2fsprogs"],
  ];
  for (const [tool, apt] of tools) if (!which(tool)) return `${tool} is not installed (apt: ${apt})`;
  if (!fs.existsSync("/usr/lib/grub/i386-pc")) return "GRUB's PC modules are not installed (apt: grub-pc-bin)";
  if (!fs.existsSync("/boot") || !fs.readdirSync("/boot").some((f) => f.startsWith("vmlinuz-"))) return "no kernel in /boot (apt: linux-image-amd64)";
  if (!fs.existsSync("/lib/modules") || fs.readdirSync("/lib/modules").length === 0) return "no kernel modules in /lib/modules (apt: linux-image-amd64)";
  return undefined;
}

const skipReason = makerMissing();
if (skipReason) console.log(`test/boot.test.ts: booting a Clonezilla folder skipped: ${skipReason}`);

/** The smallest disk `info --minimum` says the folder fits. */
function minimumOf(folder: string): number {
  const r = spawnSync(process.execPath, [CLI, "info", folder, "--minimum", "--json"], { encoding: "utf8" });
  return Number(JSON.parse(r.stdout).minimum.minimum);
}

/** qemu's serial console (stdout) for a disk, until the guest powers off or BOOT_SECONDS pass. */
async function boot(drive: string): Promise<string> {
  const qemu = Bun.spawn([...QEMU, "-drive", drive], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => qemu.kill("SIGKILL"), BOOT_SECONDS * 1000);
  const [console_, errors] = await Promise.all([new Response(qemu.stdout).text(), new Response(qemu.stderr).text(), qemu.exited]);
  clearTimeout(timer);
  return `${console_}${errors}`;
}

describe.skipIf(skipReason !== undefined)("a Clonezilla folder of a disk that boots, booted by qemu from the folder", () => {
  const name = `imgtool-boot-${process.pid}`;
  const work = tempDir();
  const folder = path.join(work, name);
  let marker = "";

  beforeAll(() => {
    fs.copyFileSync(MAKER, path.join(work, "make-boot.sh"));
    // the maker boots its own disk before saving it; on a machine busy with other loop devices that
    // check has failed once (GRUB: unknown filesystem), so it gets a second try before the test fails
    for (let attempt = 1; ; attempt++) {
      const made = spawnSync("bash", [path.join(work, "make-boot.sh"), name, "-z9p", "0"], { cwd: work, encoding: "utf8", timeout: 900_000 });
      if (made.status === 0) break;
      // the maker has no trap of its own: let go of what it held when it stopped half-way
      const scratch = `/tmp/czmake/${name}`;
      spawnSync("umount", [`${scratch}/m`]);
      const loops = spawnSync("losetup", ["-j", `${scratch}/disk.img`], { encoding: "utf8" }).stdout;
      for (const line of loops.split("\n")) if (line.includes(":")) spawnSync("losetup", ["-d", line.split(":")[0]!]);
      fs.rmSync(scratch, { recursive: true, force: true });
      fs.rmSync(`/home/partimag/${name}`, { recursive: true, force: true });
      const why = `make-boot.sh failed (${made.status ?? made.signal}): ${made.stdout.slice(-2000)}${made.stderr.slice(-2000)}`;
      if (attempt === 2 || !made.stdout.includes("the original disk did not boot")) throw new Error(why);
      console.log(`test/boot.test.ts: the maker's own disk did not boot; making it again`);
    }
    marker = fs.readFileSync(path.join(work, `${name}.marker.sha256`), "utf8").trim();
    // the GRUB core image in the gap after the MBR is part of what boots
    expect(fs.readdirSync(folder).some((f) => f.endsWith("-hidden-data-after-mbr"))).toBe(true);
  }, 900_000);

  afterAll(() => {
    fs.rmSync(`/home/partimag/${name}`, { recursive: true, force: true });
    fs.rmSync(`/tmp/czmake/${name}`, { recursive: true, force: true });
  });

  test(
    "imgtool serve DIR --socket S; qemu -drive file=nbd:unix:S,format=raw,snapshot=on prints IMGTOOL-BOOT-OK and the marker's sha256",
    async () => {
      const socket = path.join(tempDir(), "boot.sock");
      const server = Bun.spawn([process.execPath, CLI, "serve", folder, "--socket", socket], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
      try {
        expect(await firstLine(server.stdout)).toStartWith(`serving "${name}" (200.0 MB, read-only) on nbd+unix:///?socket=${socket}`);
        const serial = await boot(`file=nbd:unix:${socket},format=raw,snapshot=on`);
        expect(serial).toContain(`IMGTOOL-BOOT-OK ${marker}`);
      } finally {
        server.kill("SIGTERM");
        await server.exited;
      }
      expect(fs.existsSync(socket)).toBe(false);
    },
    (BOOT_SECONDS + 60) * 1000,
  );

  const fuseMissing = !fs.existsSync("/dev/fuse") ? "/dev/fuse is missing" : !which("fusermount3") ? "fusermount3 is not installed (apt: fuse3)" : undefined;
  if (fuseMissing && !skipReason) console.log(`test/boot.test.ts: booting through imgtool mount skipped: ${fuseMissing}`);
  test.skipIf(fuseMissing !== undefined)(
    "imgtool mount DIR MNT; qemu -drive file=MNT/DIR.raw,format=raw,snapshot=on prints IMGTOOL-BOOT-OK and the marker's sha256",
    async () => {
      const mountpoint = tempDir();
      const mounter = Bun.spawn([process.execPath, CLI, "mount", folder, mountpoint], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
      const file = path.join(mountpoint, `${name}.raw`);
      try {
        expect(await firstLine(mounter.stdout)).toStartWith(`mounted ${file} (200.0 MB, read-only)`);
        const serial = await boot(`file=${file},format=raw,snapshot=on`);
        expect(serial).toContain(`IMGTOOL-BOOT-OK ${marker}`);
      } finally {
        spawnSync("fusermount3", ["-u", mountpoint]);
        const ended = await Promise.race([mounter.exited, Bun.sleep(10_000).then(() => undefined)]);
        if (ended === undefined) {
          spawnSync("fusermount3", ["-uz", mountpoint]);
          mounter.kill("SIGKILL");
        }
      }
      expect(await mounter.exited).toBe(0);
    },
    (BOOT_SECONDS + 60) * 1000,
  );
  const fitMissing = ["resize2fs", "e2fsck"].find((t) => !which(t)) ?? (fuseMissing ? "fuse" : undefined);
  if (fitMissing && !skipReason) console.log(`test/boot.test.ts: booting a disk restored with --fit skipped: ${fitMissing} is missing`);
  test.skipIf(fitMissing !== undefined)(
    "restore DIR --fit onto 75% of the disk and onto its minimum: each boots and prints the same marker (GRUB in the MBR gap still finds /boot)",
    async () => {
      const dir = tempDir();
      for (const target of [Math.floor((200e6 * 0.75) / (1 << 20)) * (1 << 20), minimumOf(folder)]) {
        const disk = path.join(dir, `fit-${target}.img`);
        const r = spawnSync(process.execPath, [CLI, "restore", folder, "-o", disk, "--fit", "--size", String(target), "-q", "--tmp-dir", dir], { encoding: "utf8" });
        expect({ target, code: r.status, stderr: r.stderr }).toEqual({ target, code: 0, stderr: "" });
        expect({ target, size: fs.statSync(disk).size }).toEqual({ target, size: target });
        const serial = await boot(`file=${disk},format=raw,snapshot=on`);
        expect({ target, booted: serial.includes(`IMGTOOL-BOOT-OK ${marker}`) }).toEqual({ target, booted: true });
        fs.rmSync(disk);
      }
    },
    2 * (BOOT_SECONDS + 60) * 1000,
  );
});
