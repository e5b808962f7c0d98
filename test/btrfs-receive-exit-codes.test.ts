/**
 * Whose fault a failed command is: what the stream asks and no destination can do (an offset no
 * file can have, and the errors of test/failure/btrfs-receive named by errno) exits 3 with one line
 * naming the stream and the command's offset; a destination that cannot do what can be done (full,
 * read-only) exits 1.
 */
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { Attr, Cmd } from "../src/btrfs/protocol.ts";
import { EXIT, withCommas } from "../src/errors.ts";
import { runCli, tempDir } from "./helpers.ts";
import { type Attribute, SendStreamWriter, bytesOf, u64 } from "./send-stream-writer.ts";

const ROOT = process.getuid?.() === 0;
const p = (v: string): Attribute => [Attr.PATH, bytesOf(v)];

/** #1 subvol sv, #2 mkfile f, then `last` as #3; with the offset of #3. */
function stream(last: (w: SendStreamWriter) => SendStreamWriter): { bytes: Uint8Array; offset: number } {
  const w = new SendStreamWriter(1)
    .command(Cmd.SUBVOL, [p("sv"), [Attr.UUID, new Uint8Array(16).fill(7)], [Attr.CTRANSID, u64(1)]])
    .command(Cmd.MKFILE, [p("f"), [Attr.INO, u64(257)]]);
  const offset = w.bytes().length;
  return { bytes: last(w).command(Cmd.END, []).bytes(), offset };
}

function receive(bytes: Uint8Array, dir: string) {
  const file = path.join(tempDir(), "stream.btrfs-send");
  fs.writeFileSync(file, bytes);
  fs.mkdirSync(dir, { recursive: true });
  return { file, ...runCli(["btrfs-receive", file, dir]) };
}

/** Whether the file system of `dir` refuses a write at `offset` with EFBIG (ext4 does past 16 TiB; btrfs, XFS and tmpfs take it). */
function refusesOffset(dir: string, offset: number): boolean {
  const probe = path.join(dir, "efbig-probe");
  const fd = fs.openSync(probe, "w");
  try {
    fs.writeSync(fd, "x", offset);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EFBIG";
  } finally {
    fs.closeSync(fd);
    fs.rmSync(probe);
  }
}

describe("btrfs-receive: an error of the stream's making exits 3, naming the stream and the command's offset", () => {
  const work = tempDir();
  const efbig = refusesOffset(work, 2 ** 50);
  if (!efbig) console.log(`skipped: the write at 2^50: the file system of ${work} takes it (ext4 refuses it with EFBIG)`);
  test.skipIf(!efbig)("a write at offset 2^50: EFBIG", () => {
    const s = stream((w) => w.command(Cmd.WRITE, [p("f"), [Attr.FILE_OFFSET, u64(2 ** 50)], [Attr.DATA, bytesOf("far")]]));
    const run = receive(s.bytes, path.join(work, "efbig"));
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expect(run.stderr).toStartWith("At subvol sv\n");
    const lines = run.stderr.trimEnd().split("\n");
    expect(lines).toHaveLength(2);
    expect(lines[1]).toStartWith(`imgtool: ${run.file}: offset ${withCommas(s.offset)}: command #3 (write): EFBIG`);
    // the write call names no file: the message does, and the offset in it
    expect(lines[1]).toContain(`pwritev 'f' at file offset ${withCommas(2 ** 50)}`);
  });

  test("a name of 256 bytes: ENAMETOOLONG, at the command's offset", () => {
    const s = stream((w) => w.command(Cmd.MKDIR, [p("n".repeat(256)), [Attr.INO, u64(258)]]));
    const run = receive(s.bytes, path.join(work, "long"));
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expect(run.stderr.trimEnd().split("\n").at(-1)).toStartWith(`imgtool: ${run.file}: offset ${withCommas(s.offset)}: command #3 (mkdir): ENAMETOOLONG`);
  });
});

describe.skipIf(!ROOT)("btrfs-receive: a destination that cannot do what can be done exits 1", () => {
  if (!ROOT) console.log("skipped: destination failures: mounting a small tmpfs needs root");
  const work = tempDir();
  const mounted: string[] = [];
  const mountTmpfs = (name: string, size: string) => {
    const at = path.join(work, name);
    fs.mkdirSync(at);
    expect(Bun.spawnSync(["mount", "-t", "tmpfs", "-o", `size=${size}`, "tmpfs", at]).exitCode).toBe(0);
    mounted.push(at);
    return at;
  };
  afterAll(() => {
    for (const at of mounted) Bun.spawnSync(["umount", at]);
  }, { timeout: 60_000 });

  test("out of space (60,000 bytes into a 16 KiB tmpfs): ENOSPC", () => {
    const at = mountTmpfs("small", "16k");
    const s = stream((w) => w.command(Cmd.WRITE, [p("f"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, new Uint8Array(60_000).fill(1)]]));
    const run = receive(s.bytes, path.join(at, "dir"));
    expect(run.code).toBe(EXIT.FAILURE);
    expect(run.stderr.trimEnd().split("\n").at(-1)).toMatch(new RegExp(`^imgtool: ${run.file}: offset ${withCommas(s.offset)}: command #3 \\(write\\): ENOSPC`));
  });

  test("a read-only destination: EROFS", () => {
    const at = mountTmpfs("ro", "1m");
    fs.mkdirSync(path.join(at, "dir"));
    expect(Bun.spawnSync(["mount", "-o", "remount,ro", at]).exitCode).toBe(0);
    const s = stream((w) => w.command(Cmd.CHMOD, [p("f"), [Attr.MODE, u64(0o644)]]));
    const file = path.join(tempDir(), "stream.btrfs-send");
    fs.writeFileSync(file, s.bytes);
    const run = runCli(["btrfs-receive", file, path.join(at, "dir")]);
    expect(run.code).toBe(EXIT.FAILURE);
    // the subvolume's directory is the first thing it cannot make
    expect(run.stderr.trimEnd().split("\n").at(-1)).toMatch(new RegExp(`^imgtool: ${file}: offset [\\d,]+: command #1 \\(subvol\\): EROFS`));
  });
});
