/**
 * Consecutive writes to one file at contiguous offsets go out as one pwritev: the bytes must be
 * those of the commands applied one by one (btrfs receive's, where it can run), an overlapping
 * write or another file's write in between ends a run, a command whose crc fails writes nothing,
 * and a run that fails part-way names the command whose bytes could not be written.
 */
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { Attr, Cmd } from "../src/btrfs/protocol.ts";
import { EXIT, withCommas } from "../src/errors.ts";
import { loopBtrfs, runCli, tempDir, which } from "./helpers.ts";
import { type Attribute, SendStreamWriter, bytesOf, u64 } from "./send-stream-writer.ts";

const BTRFS = which("btrfs");
const MKFS = which("mkfs.btrfs");
const ROOT = process.getuid?.() === 0;
const p = (v: string): Attribute => [Attr.PATH, bytesOf(v)];

/** Pseudo-random bytes (xorshift), so that a misplaced block is seen. */
function noise(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

interface Write {
  file: string;
  offset: number;
  data: Uint8Array;
  /** a wrong crc32c for this command */
  badCrc?: boolean;
}

/** #1 subvol, one mkfile per file, then the writes in order, then end; with the index and offset of each write. */
function stream(files: string[], writes: Write[]) {
  const w = new SendStreamWriter(1).command(Cmd.SUBVOL, [p("sv"), [Attr.UUID, new Uint8Array(16).fill(9)], [Attr.CTRANSID, u64(1)]]);
  files.forEach((f, i) => w.command(Cmd.MKFILE, [p(f), [Attr.INO, u64(257 + i)]]));
  const at: { index: number; offset: number }[] = [];
  writes.forEach((write, i) => {
    at.push({ index: 2 + files.length + i, offset: w.bytes().length });
    w.command(Cmd.WRITE, [p(write.file), [Attr.FILE_OFFSET, u64(write.offset)], [Attr.DATA, write.data]], write.badCrc ? 0x12345678 : undefined);
  });
  const file = path.join(tempDir(), "writes.btrfs-send");
  fs.writeFileSync(file, w.command(Cmd.END, []).bytes());
  return { file, at };
}

/** The files as the writes make them, one after the other, up to (not including) write `until`. */
function applied(files: string[], writes: Write[], until = writes.length): Map<string, Buffer> {
  const out = new Map(files.map((f) => [f, Buffer.alloc(0)]));
  for (const w of writes.slice(0, until)) {
    let b = out.get(w.file)!;
    if (b.length < w.offset + w.data.length) b = Buffer.concat([b, Buffer.alloc(w.offset + w.data.length - b.length)]);
    b.set(w.data, w.offset);
    out.set(w.file, b);
  }
  return out;
}

const KIB48 = 48 << 10;
/**
 * runs of contiguous writes across several 1 MiB parser windows and past the reader's 4 MiB buffer,
 * broken by an overlap, by two files taking turns, and by another file's write at the offset that
 * would continue the run
 */
function mixed(): { files: string[]; writes: Write[] } {
  const writes: Write[] = [];
  let seed = 1;
  for (let i = 0; i < 100; i++) writes.push({ file: "a", offset: i * KIB48, data: noise(KIB48, seed++) });
  // back over bytes the run just wrote, then on from there
  writes.push({ file: "a", offset: 40_000, data: noise(10_000, seed++) });
  writes.push({ file: "a", offset: 50_000, data: noise(KIB48, seed++) });
  writes.push({ file: "a", offset: 50_000 + KIB48, data: noise(7, seed++) });
  // two files taking turns, each contiguous with its own last write
  for (let i = 0; i < 12; i++) {
    writes.push({ file: "b", offset: i * 5000, data: noise(5000, seed++) });
    writes.push({ file: "a", offset: 100 * KIB48 + i * 3000, data: noise(3000, seed++) });
  }
  writes.push({ file: "c", offset: 0, data: noise(4000, seed++) });
  writes.push({ file: "b", offset: 4000, data: noise(4000, seed++) });
  writes.push({ file: "c", offset: 4000, data: noise(4000, seed++) });
  // an empty write inside a run, and a run that leaves a hole before it
  writes.push({ file: "b", offset: 60_000, data: new Uint8Array(0) });
  writes.push({ file: "b", offset: 60_000, data: noise(100, seed++) });
  writes.push({ file: "b", offset: 200_000, data: noise(4096, seed++) });
  writes.push({ file: "b", offset: 204_096, data: noise(4096, seed++) });
  return { files: ["a", "b", "c"], writes };
}

function receive(file: string, dir: string) {
  fs.mkdirSync(dir, { recursive: true });
  return runCli(["btrfs-receive", "-q", file, dir]);
}

function expectFiles(dir: string, want: Map<string, Buffer>): void {
  for (const [name, bytes] of want) {
    const got = fs.readFileSync(path.join(dir, name));
    expect(got.length).toBe(bytes.length);
    expect(got.equals(bytes)).toBe(true);
  }
}

describe("btrfs-receive: runs of writes", () => {
  test("contiguous, overlapping, interleaved and empty writes give the bytes of the writes applied one by one", () => {
    const { files, writes } = mixed();
    const s = stream(files, writes);
    const dir = tempDir();
    const run = receive(s.file, dir);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(EXIT.OK);
    expectFiles(path.join(dir, "sv"), applied(files, writes));
  });

  test("a rename between two writes at contiguous offsets ends the run: each write lands in the file its path names then", () => {
    const [first, second, third] = [noise(KIB48, 301), noise(KIB48, 302), noise(KIB48, 303)];
    const bytes = new SendStreamWriter(1)
      .command(Cmd.SUBVOL, [p("sv"), [Attr.UUID, new Uint8Array(16).fill(9)], [Attr.CTRANSID, u64(1)]])
      .command(Cmd.MKFILE, [p("f"), [Attr.INO, u64(257)]])
      .command(Cmd.WRITE, [p("f"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, first]])
      .command(Cmd.RENAME, [p("f"), [Attr.PATH_TO, bytesOf("g")]])
      .command(Cmd.MKFILE, [p("f"), [Attr.INO, u64(258)]])
      // the offset that would continue the run, under the same path, now another file
      .command(Cmd.WRITE, [p("f"), [Attr.FILE_OFFSET, u64(KIB48)], [Attr.DATA, second]])
      .command(Cmd.WRITE, [p("g"), [Attr.FILE_OFFSET, u64(KIB48)], [Attr.DATA, third]])
      .command(Cmd.END, [])
      .bytes();
    const file = path.join(tempDir(), "rename.btrfs-send");
    fs.writeFileSync(file, bytes);
    const dir = tempDir();
    const run = receive(file, dir);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(EXIT.OK);
    expectFiles(path.join(dir, "sv"), new Map([
      ["g", Buffer.concat([first, third])],
      ["f", Buffer.concat([Buffer.alloc(KIB48), second])],
    ]));
  });

  test("a bad crc in the middle of a run: the writes before it are written, nothing of it, exit 4", () => {
    const writes: Write[] = [0, 1, 2, 3].map((i) => ({ file: "a", offset: i * KIB48, data: noise(KIB48, 100 + i) }));
    writes[2]!.badCrc = true;
    const s = stream(["a"], writes);
    const dir = tempDir();
    const run = receive(s.file, dir);
    expect(run.code).toBe(EXIT.CHECKSUM);
    const bad = s.at[2]!;
    expect(run.stderr).toMatch(
      new RegExp(`^imgtool: ${s.file}: offset ${withCommas(bad.offset)}: command #${bad.index} \\(write\\): crc32c mismatch .*; sv is incomplete after ${bad.index - 2} commands \\(${bad.index - 1} commands read\\)\\n$`),
    );
    expectFiles(path.join(dir, "sv"), applied(["a"], writes, 2));
  });
});

describe.skipIf(!ROOT)("btrfs-receive: a run of writes that fills the destination", () => {
  if (!ROOT) console.log("skipped: a run of writes into a full tmpfs: mounting a small tmpfs needs root");
  const at = path.join(tempDir(), "small");
  let mounted = false;
  afterAll(() => {
    if (mounted) Bun.spawnSync(["umount", at]);
  });

  test("the command whose bytes did not fit is named, and the bytes before it are written", () => {
    fs.mkdirSync(at);
    expect(Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", at]).exitCode).toBe(0);
    mounted = true;
    const writes: Write[] = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => ({ file: "a", offset: i * 3000, data: noise(3000, 200 + i) }));
    const s = stream(["a"], writes);
    const dir = path.join(at, "dir");
    const run = receive(s.file, dir);
    expect(run.code).toBe(EXIT.FAILURE);
    const landed = fs.statSync(path.join(dir, "sv", "a")).size;
    expect(landed).toBeLessThan(8 * 3000);
    const failed = s.at[Math.floor(landed / 3000)]!;
    expect(run.stderr.trimEnd().split("\n").at(-1)).toMatch(
      new RegExp(
        `^imgtool: ${s.file}: offset ${withCommas(failed.offset)}: command #${failed.index} \\(write\\): ENOSPC.*; sv is incomplete after ${failed.index - 1} commands \\(${failed.index} commands read\\)$`,
      ),
    );
    expect(fs.readFileSync(path.join(dir, "sv", "a")).equals(applied(["a"], writes).get("a")!.subarray(0, landed))).toBe(true);
  });
});

describe.skipIf(!BTRFS || !MKFS || !ROOT)("differential: runs of writes, btrfs receive into a loop-mounted btrfs against imgtool btrfs-receive", () => {
  if (!BTRFS || !MKFS || !ROOT) console.log("skipped: runs of writes against btrfs receive: needs root, btrfs and mkfs.btrfs");
  const { mountPoint, setup } = loopBtrfs(MKFS!);

  const both = (files: string[], writes: Write[]) => {
    setup();
    const s = stream(files, writes);
    const onBtrfs = fs.mkdtempSync(path.join(mountPoint, "r"));
    const real = Bun.spawnSync([BTRFS!, "receive", "-f", s.file, onBtrfs], { stderr: "pipe" });
    const here = tempDir();
    const ours = receive(s.file, here);
    for (const f of files) {
      const theirs = fs.readFileSync(path.join(onBtrfs, "sv", f));
      const mine = fs.readFileSync(path.join(here, "sv", f));
      expect(mine.length).toBe(theirs.length);
      expect(mine.equals(theirs)).toBe(true);
    }
    return { real, ours };
  };

  test("contiguous, overlapping, interleaved and empty writes", () => {
    const { files, writes } = mixed();
    const { real, ours } = both(files, writes);
    expect(real.exitCode).toBe(0);
    expect(ours.code).toBe(EXIT.OK);
  }, 60_000);

  test("a bad crc in the middle of a run: both stop there with the same bytes written", () => {
    const writes: Write[] = [0, 1, 2, 3].map((i) => ({ file: "a", offset: i * KIB48, data: noise(KIB48, 300 + i) }));
    writes[2]!.badCrc = true;
    const { real, ours } = both(["a"], writes);
    expect(real.exitCode).not.toBe(0);
    expect(real.stderr.toString()).toContain("crc");
    expect(ours.code).toBe(EXIT.CHECKSUM);
  }, 60_000);
});
