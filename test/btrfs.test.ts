import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { type DumpFormat, dumpSendStream } from "../src/btrfs/dump.ts";
import { memorySource } from "./helpers.ts";
import { SendStreamWriter, bytesOf, timespec, u32, u64 } from "./send-stream-writer.ts";
import { commandJson } from "../src/btrfs/json.ts";
import { OutputBuffer } from "../src/btrfs/output-buffer.ts";
import { Attr, Cmd } from "../src/btrfs/protocol.ts";
import { MAX_BUFFERED_COMMAND, type SendCommand, SendStreamParser, openSendStream } from "../src/btrfs/stream.ts";
import { ChecksumError, ImageError } from "../src/errors.ts";
import { ByteReader } from "../src/source/byte-reader.ts";

// the references were made in UTC and times print in local time, as btrfs-progs prints them
process.env.TZ = "UTC";

const ROOT = path.join(import.meta.dir, "..");
const FIXTURES = path.join(ROOT, "fixtures");
const FAILURES = path.join(ROOT, "test/failure/btrfs");
const BUN = path.join(ROOT, "node_modules/.bin/bun");
const MAIN = path.join(ROOT, "src/cli/main.ts");
const BTRFS = Bun.which("btrfs");

const streams = fs
  .readdirSync(FIXTURES)
  .filter((f) => f.endsWith(".btrfs-send"))
  .sort();


function parserOf(bytes: Uint8Array, opts: { step?: number; allStreams?: boolean } = {}): SendStreamParser {
  return new SendStreamParser(new ByteReader(memorySource(bytes, opts.step), 64 << 10), { allStreams: opts.allStreams });
}

/** The dump text of a parser, and the error it stopped with. */
function dumpOf(parser: SendStreamParser, format: DumpFormat = "6.2"): { text: Buffer; error?: Error } {
  const chunks: Buffer[] = [];
  const out = new OutputBuffer((b) => chunks.push(Buffer.from(b)));
  try {
    dumpSendStream(parser, out, format);
    return { text: Buffer.concat(chunks) };
  } catch (e) {
    return { text: Buffer.concat(chunks), error: e as Error };
  }
}

/** The CLI on a file, or on `-` with `pipeFrom` fed through a real pipe (cat | imgtool). */
function runCli(args: string[], pipeFrom?: string) {
  const argv = pipeFrom
    ? ["bash", "-c", 'cat "$0" | "$@"', pipeFrom, BUN, MAIN, "btrfs-dump", ...args]
    : [BUN, MAIN, "btrfs-dump", ...args];
  const run = Bun.spawnSync(argv, { env: { ...process.env, TZ: "UTC" }, stdin: "ignore" });
  return { code: run.exitCode, stdout: run.stdout, stderr: run.stderr.toString() };
}

function btrfsDump(file: string) {
  const run = Bun.spawnSync([BTRFS!, "receive", "--dump", "-f", file], { env: { ...process.env, TZ: "UTC" } });
  return { code: run.exitCode, stdout: run.stdout };
}

const subvol = (w: SendStreamWriter, name = "sv") =>
  w.command(Cmd.SUBVOL, [
    [Attr.PATH, bytesOf(name)],
    [Attr.UUID, Uint8Array.from({ length: 16 }, (_, i) => i * 17)],
    [Attr.CTRANSID, u64(42)],
  ]);

/** Streams built here, for what the kernel does not send: every command, odd values, unknown commands. */
function madeStreams(): Record<string, Uint8Array> {
  const p = (s: string | Uint8Array) => [Attr.PATH, bytesOf(s)] as const;
  const every = (version: number) => {
    const w = subvol(new SendStreamWriter(version), "all cmds");
    w.command(Cmd.MKDIR, [p("d"), [Attr.INO, u64(256)]])
      .command(Cmd.MKNOD, [p("d/chr"), [Attr.INO, u64(257)], [Attr.MODE, u64(0o20644)], [Attr.RDEV, u64(0x10305)]])
      .command(Cmd.MKFIFO, [p("d/fifo"), [Attr.INO, u64(258)]])
      .command(Cmd.MKSOCK, [p("d/sock"), [Attr.INO, u64(259)]])
      .command(Cmd.SYMLINK, [p("d/ln"), [Attr.INO, u64(260)], [Attr.PATH_LINK, bytesOf("/abs\\ target\x7f")]])
      .command(Cmd.MKFILE, [p("f"), [Attr.INO, u64(261)]])
      .command(Cmd.SET_XATTR, [p("f"), [Attr.XATTR_NAME, bytesOf("user.a")], [Attr.XATTR_DATA, bytesOf("x\0y")]])
      .command(Cmd.TRUNCATE, [p("f"), [Attr.SIZE, u64(2n ** 64n - 1n)]])
      .command(Cmd.CHOWN, [p("f"), [Attr.UID, u64(4294967295)], [Attr.GID, u64(2n ** 53n + 1n)]])
      .command(Cmd.UTIMES, [p("f"), [Attr.ATIME, timespec(-1)], [Attr.MTIME, timespec(-62135596800)], [Attr.CTIME, timespec(253402300800, 5)]])
      .command(Cmd.UTIMES, [p("f"), [Attr.ATIME, timespec(-62167219200 - 86400)], [Attr.MTIME, timespec(1e11)], [Attr.CTIME, timespec(2n ** 40n)]])
      .command(Cmd.CLONE, [
        p("f"),
        [Attr.FILE_OFFSET, u64(4096)],
        [Attr.CLONE_LEN, u64(2n ** 31n + 4096n)],
        [Attr.CLONE_UUID, new Uint8Array(16)],
        [Attr.CLONE_CTRANSID, u64(1)],
        [Attr.CLONE_PATH, bytesOf("src/")],
        [Attr.CLONE_OFFSET, u64(0)],
      ])
      .command(Cmd.UPDATE_EXTENT, [p("f"), [Attr.FILE_OFFSET, u64(0)], [Attr.SIZE, u64(8192)]])
      .command(99, [p("ignored")])
      .command(Cmd.FALLOCATE, [p("f"), [Attr.FALLOCATE_MODE, u32(0xffffffff)], [Attr.FILE_OFFSET, u64(0)], [Attr.SIZE, u64(1)]])
      .command(Cmd.FILEATTR, [p("f"), [Attr.FILEATTR, u64(0x20)]])
      .command(Cmd.ENCODED_WRITE, [
        p("f"),
        [Attr.FILE_OFFSET, u64(0)],
        [Attr.UNENCODED_FILE_LEN, u64(5)],
        [Attr.UNENCODED_LEN, u64(4096)],
        [Attr.UNENCODED_OFFSET, u64(0)],
        [Attr.DATA, bytesOf("hello")],
      ])
      .command(Cmd.WRITE, [p("f"), [Attr.FILE_OFFSET, u64(7)], [Attr.DATA, new Uint8Array(300).fill(0x61)]])
      .command(Cmd.REMOVE_XATTR, [p("f"), [Attr.XATTR_NAME, bytesOf("user.a")]])
      .command(Cmd.RENAME, [p("f"), [Attr.PATH_TO, bytesOf("d/")]])
      .command(Cmd.LINK, [p("d/g"), [Attr.PATH_LINK, bytesOf("d")]])
      .command(Cmd.UNLINK, [p("d/g")])
      .command(Cmd.RMDIR, [p("d/")])
      .command(Cmd.CHMOD, [p(""), [Attr.MODE, u64(0o7777)]])
      .command(Cmd.END, [])
      .raw(bytesOf("trailing bytes after the end are never read"));
    return w.bytes();
  };
  const snapshot = new SendStreamWriter(1)
    .command(Cmd.SNAPSHOT, [
      [Attr.PATH, bytesOf("snap/")],
      [Attr.UUID, new Uint8Array(16).fill(0xfe)],
      [Attr.CTRANSID, u64(9)],
      [Attr.CLONE_UUID, new Uint8Array(16).fill(0x01)],
      [Attr.CLONE_CTRANSID, u64(8)],
    ])
    .command(Cmd.MKFILE, [[Attr.PATH, bytesOf("x".repeat(40))], [Attr.INO, u64(300)]])
    .command(Cmd.END, [])
    .bytes();
  return { "every-command-v1": every(1), "every-command-v2": every(2), "snapshot-v1": snapshot };
}

describe("btrfs send fixtures", () => {
  for (const name of streams) {
    const file = path.join(FIXTURES, name);
    const expected = fs.readFileSync(`${file}.dump.txt`);
    test(`${name}: the dump equals btrfs receive --dump`, () => {
      const parser = openSendStream(file);
      const { text, error } = dumpOf(parser);
      parser.reader.close();
      expect(error).toBeUndefined();
      expect(text.equals(expected)).toBe(true);
    });
    test(`${name}: the same when read 7 bytes at a time`, () => {
      const { text } = dumpOf(parserOf(new Uint8Array(fs.readFileSync(file)), { step: 7 }));
      expect(text.equals(expected)).toBe(true);
    });
    test(`${name}: the same from a pipe through the CLI`, () => {
      const run = runCli(["-"], file);
      expect(run.stderr).toBe("");
      expect(run.code).toBe(0);
      expect(run.stdout.equals(expected)).toBe(true);
    });
  }

  test("a zstd-compressed stream dumps the same (decoded by the byte source)", () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "btrfs-zst-"));
    const zst = path.join(tmp, "full.btrfs-send.zst");
    fs.writeFileSync(zst, Bun.zstdCompressSync(fs.readFileSync(path.join(FIXTURES, "full-v1.btrfs-send"))));
    const run = runCli([zst]);
    fs.rmSync(tmp, { recursive: true });
    expect(run.code).toBe(0);
    expect(run.stdout.equals(fs.readFileSync(path.join(FIXTURES, "full-v1.btrfs-send.dump.txt")))).toBe(true);
  });

  test("two concatenated streams: the dump stops at the first end; --all-streams prints both", () => {
    const file = path.join(FIXTURES, "multi-v1.btrfs-send");
    const first = fs.readFileSync(path.join(FIXTURES, "names-v1.btrfs-send.dump.txt"));
    expect(runCli([file]).stdout.equals(first)).toBe(true);
    const all = runCli(["--all-streams", file]);
    expect(all.code).toBe(0);
    expect(all.stdout.subarray(0, first.length).equals(first)).toBe(true);
    const rest = all.stdout.subarray(first.length).toString();
    expect(rest.startsWith("subvol          ./second.s1 ")).toBe(true);
    const parser = openSendStream(file, { allStreams: true });
    const commands = [...parser].map((c) => ({ type: c.type, stream: c.stream }));
    expect(commands.filter((c) => c.type === "end").map((c) => c.stream)).toEqual([0, 1]);
  });

  test("--json: one object per command, typed, data as length and offset only", () => {
    const file = path.join(FIXTURES, "v2-zstd.btrfs-send");
    const run = runCli(["--json", file]);
    expect(run.code).toBe(0);
    const lines = run.stdout.toString().trimEnd().split("\n").map((l) => JSON.parse(l));
    const bytes = fs.readFileSync(file);
    const parsed = [...openSendStream(file)];
    expect(lines.length).toBe(parsed.length);
    const ew = lines.find((l) => l.command === "encoded_write");
    expect(typeof ew.fileOffset).toBe("number");
    expect(ew.data).toBeUndefined();
    expect(ew.dataLength).toBeGreaterThan(0);
    // the offset names where the data is in the input
    const view = parsed.find((c) => c.type === "encoded_write")!;
    expect(view.type === "encoded_write" && Buffer.from(view.data).equals(bytes.subarray(ew.dataOffset, ew.dataOffset + ew.dataLength))).toBe(true);
    expect(lines[0]).toMatchObject({ command: "subvol", path: "zstd.s1", uuid: "5b864e95-6da8-d042-bd34-2f316e42a694", ctransid: 13 });
  });

  test("--json: non-UTF-8 names as base64, u64 beyond 2^53 exact", () => {
    const w = subvol(new SendStreamWriter(1)).command(Cmd.TRUNCATE, [[Attr.PATH, Uint8Array.of(0x66, 0xff)], [Attr.SIZE, u64(2n ** 64n - 1n)]]);
    const commands = [...parserOf(w.command(Cmd.END, []).bytes())].map(commandJson);
    expect(commands[1]).toBe('{"index":2,"offset":65,"stream":0,"command":"truncate","path":{"base64":"Zv8="},"size":18446744073709551615}');
  });

  test("an unknown command is skipped by the dump (as btrfs-progs skips it) and kept in the JSON with its number", () => {
    const bytes = subvol(new SendStreamWriter(1)).command(99, [[Attr.PATH, bytesOf("x")]]).command(Cmd.END, []).bytes();
    expect([...parserOf(bytes)].map(commandJson)[1]).toBe('{"index":2,"offset":65,"stream":0,"command":"unknown","number":99}');
    expect(dumpOf(parserOf(bytes)).text.toString().split("\n").length).toBe(2);
  });
});

describe("btrfs send parser", () => {
  test("write data is a view into the reader's buffer, not a copy", () => {
    const parser = openSendStream(path.join(FIXTURES, "full-v1.btrfs-send"));
    const buffers = new Set<ArrayBufferLike>();
    let writes = 0;
    for (const c of parser) {
      if (c.type !== "write") continue;
      writes++;
      buffers.add(c.data.buffer);
      expect(c.data.buffer.byteLength).toBeLessThan(16 << 20);
    }
    expect(writes).toBeGreaterThan(10);
    expect(buffers.size).toBe(1);
  });

  test("the async iterator gives the same commands", async () => {
    const file = path.join(FIXTURES, "incr-v1.btrfs-send");
    const types: string[] = [];
    for await (const c of openSendStream(file)) types.push(c.type);
    expect(types).toEqual([...openSendStream(file)].map((c) => c.type));
  });

  test("protocol 3: enable_verity with its salt and signature", () => {
    const w = subvol(new SendStreamWriter(3)).command(Cmd.ENABLE_VERITY, [
      [Attr.PATH, bytesOf("v")],
      [Attr.VERITY_ALGORITHM, Uint8Array.of(1)],
      [Attr.VERITY_BLOCK_SIZE, u32(4096)],
      [Attr.VERITY_SALT_DATA, new Uint8Array(8)],
      [Attr.VERITY_SIG_DATA, new Uint8Array(0)],
    ]);
    const commands = [...parserOf(w.command(Cmd.END, []).bytes())];
    const verity = commands[1] as Extract<SendCommand, { type: "enable_verity" }>;
    expect([verity.algorithm, verity.blockSize, verity.salt.length, verity.signature.length]).toEqual([1, 4096, 8, 0]);
    const { text } = dumpOf(parserOf(w.bytes()));
    expect(text.toString().split("\n")[1]).toBe(`enable_verity   ./sv/v${" ".repeat(26)}algorithm=1 block_size=4096 salt_len=8 sig_len=0`);
  });

  test("v2: the DATA attribute has no length and runs to the end of the command", () => {
    const w = subvol(new SendStreamWriter(2)).command(Cmd.WRITE, [[Attr.PATH, bytesOf("f")], [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, new Uint8Array(70000)]]);
    const c = [...parserOf(w.command(Cmd.END, []).bytes())][1]!;
    expect(c.type === "write" && c.data.length).toBe(70000);
  });

  test("a command too long to hold is checked by streaming, then refused", () => {
    const big = new Uint8Array(MAX_BUFFERED_COMMAND + 10);
    const w = subvol(new SendStreamWriter(2)).command(Cmd.WRITE, [[Attr.PATH, bytesOf("f")], [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, big]]);
    const ok = w.bytes();
    expect(() => [...parserOf(ok)]).toThrow(/command #2 \(write\): length \d+ is too large to decode/);
    ok[ok.length - 1] = 1;
    expect(() => [...parserOf(ok)]).toThrow(ChecksumError);
  });

  test("the 6.9.1 form escapes clone from=, xattr names and values, and drops encoded_write's commas", () => {
    const w = subvol(new SendStreamWriter(2))
      .command(Cmd.SET_XATTR, [[Attr.PATH, bytesOf("f")], [Attr.XATTR_NAME, bytesOf("user.a b")], [Attr.XATTR_DATA, bytesOf("v\0\n")]])
      .command(Cmd.REMOVE_XATTR, [[Attr.PATH, bytesOf("f")], [Attr.XATTR_NAME, bytesOf("user.a\\b")]])
      .command(Cmd.CLONE, [
        [Attr.PATH, bytesOf("f")],
        [Attr.FILE_OFFSET, u64(0)],
        [Attr.CLONE_LEN, u64(4096)],
        [Attr.CLONE_UUID, new Uint8Array(16)],
        [Attr.CLONE_CTRANSID, u64(1)],
        [Attr.CLONE_PATH, bytesOf("s p")],
        [Attr.CLONE_OFFSET, u64(0)],
      ])
      .command(Cmd.ENCODED_WRITE, [
        [Attr.PATH, bytesOf("f")],
        [Attr.FILE_OFFSET, u64(0)],
        [Attr.UNENCODED_FILE_LEN, u64(1)],
        [Attr.UNENCODED_LEN, u64(2)],
        [Attr.UNENCODED_OFFSET, u64(3)],
        [Attr.COMPRESSION, u32(1)],
        [Attr.DATA, bytesOf("z")],
      ])
      .command(Cmd.END, []);
    const pad = " ".repeat(26);
    const lines = (format: DumpFormat) => dumpOf(parserOf(w.bytes()), format).text.toString("latin1").split("\n").slice(1, -1);
    expect(lines("6.9.1")).toEqual([
      `set_xattr       ./sv/f${pad}name=user.a\\ b v\\000\\n len=3`,
      `remove_xattr    ./sv/f${pad}name=user.a\\\\b`,
      `clone           ./sv/f${pad}offset=0 len=4096 from=./sv/s\\ p clone_offset=0`,
      `encoded_write   ./sv/f${pad}offset=0 len=1 unencoded_file_len=1 unencoded_len=2 unencoded_offset=3 compression=1 encryption=0`,
    ]);
    expect(lines("6.2")).toEqual([
      `set_xattr       ./sv/f${pad}name=user.a b data=v len=3`,
      `remove_xattr    ./sv/f${pad}name=user.a\\b`,
      `clone           ./sv/f${pad}offset=0 len=4096 from=./sv/s p clone_offset=0`,
      `encoded_write   ./sv/f${pad}offset=0 len=1, unencoded_file_len=1, unencoded_len=2, unencoded_offset=3, compression=1, encryption=0`,
    ]);
  });
});

describe("broken btrfs send streams (test/failure/btrfs)", () => {
  const files = fs.readdirSync(FAILURES).filter((f) => f.endsWith(".btrfs-send"));
  test("there are broken streams to try", () => expect(files.length).toBeGreaterThan(10));
  for (const name of files) {
    const file = path.join(FAILURES, name);
    const expectedError = name.slice(0, -".btrfs-send".length);
    test(name, () => {
      const run = runCli([file]);
      expect(run.code === 3 || run.code === 4).toBe(true);
      const lines = run.stderr.trimEnd().split("\n");
      expect(lines.length).toBe(1);
      expect(lines[0]!.startsWith(`imgtool: ${file}: offset `)).toBe(true);
      expect(lines[0]!.includes(`: ${expectedError}`)).toBe(true);
      // the commands before the damage are printed, as btrfs receive --dump prints them
      expect(run.stdout.equals(fs.readFileSync(`${file}.dump.txt`))).toBe(true);
    });
  }
  test("errors are ImageErrors naming the command, found in btrfs-progs' order (crc before attributes)", () => {
    const w = subvol(new SendStreamWriter(1)).command(Cmd.CHMOD, [[99, new Uint8Array(1)]], 0x1234);
    try {
      [...parserOf(w.bytes())];
      throw new Error("no error");
    } catch (e) {
      expect(e).toBeInstanceOf(ImageError);
      expect((e as Error).message).toBe("mem: offset 65: command #2 (chmod): crc32c mismatch (stored 0x00001234, computed 0x4b4da69d)");
    }
  });
});

describe.skipIf(!BTRFS)("differential: btrfs receive --dump (btrfs-progs) against imgtool btrfs-dump", () => {
  if (!BTRFS) console.log("skipping the differential tests: no btrfs command (btrfs-progs) installed");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "btrfs-diff-"));
  const cases: [string, string][] = [
    ...streams.map((s) => [s, path.join(FIXTURES, s)] as [string, string]),
    ...fs
      .readdirSync(FAILURES)
      .filter((f) => f.endsWith(".btrfs-send"))
      .map((f) => [`failure/${f}`, path.join(FAILURES, f)] as [string, string]),
    ...Object.entries(madeStreams()).map(([name, bytes]) => {
      const file = path.join(tmp, `${name}.btrfs-send`);
      fs.writeFileSync(file, bytes);
      return [`made/${name}`, file] as [string, string];
    }),
  ];
  for (const [name, file] of cases) {
    test(name, () => {
      const theirs = btrfsDump(file);
      const ours = runCli([file]);
      expect(ours.stdout.toString("latin1")).toBe(theirs.stdout.toString("latin1"));
      expect(ours.code === 0).toBe(theirs.code === 0);
    });
  }
  test("the made streams print something for every command", () => {
    const theirs = btrfsDump(path.join(tmp, "every-command-v2.btrfs-send")).stdout.toString("latin1");
    for (const title of ["mknod", "mkfifo", "mksock", "symlink", "clone", "fallocate", "fileattr", "encoded_write", "update_extent", "rmdir"]) {
      expect(theirs).toContain(`\n${title.padEnd(16)}`);
    }
  });
});
