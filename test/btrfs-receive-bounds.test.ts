/**
 * btrfs-receive on streams whose lengths ask for more than btrfs can hold: refused before any
 * allocation, in bounded memory (peak RSS of the CLI, measured); ids out of range; and xattrs the
 * destination file system refuses (a small ext4 loop mount), which must not stop the receive.
 */
import { afterAll, describe, expect, test as bunTest } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { deflateSync } from "node:zlib";
import { listXattrs } from "../native/libc-at.ts";
import { Attr, Cmd, EncodedCompression } from "../src/btrfs/protocol.ts";
import { EXIT } from "../src/errors.ts";
import { CLI, tempDir, which } from "./helpers.ts";
import { type Attribute, SendStreamWriter, bytesOf, u32, u64 } from "./send-stream-writer.ts";

// each test runs the CLI (a second or more on a loaded machine), some several times
const TIMEOUT = 60_000;
function test(name: string, body: () => void, timeout = TIMEOUT): void {
  bunTest(name, body, timeout);
}

const UUID = new Uint8Array(16).fill(0x5a);
const p = (v: string): Attribute => [Attr.PATH, bytesOf(v)];
/** Bun itself takes about 40-80 MiB; a decoded extent is at most 128 KiB */
const RSS_LIMIT_KB = 200 * 1024;

function stream(version: number, body: (w: SendStreamWriter) => SendStreamWriter): Uint8Array {
  const w = new SendStreamWriter(version)
    .command(Cmd.SUBVOL, [p("sv"), [Attr.UUID, UUID], [Attr.CTRANSID, u64(5)]])
    .command(Cmd.MKFILE, [p("f"), [Attr.INO, u64(257)]]);
  return body(w).command(Cmd.END, []).bytes();
}

function encodedWrite(fileOffset: number, unencodedLen: number | bigint, compression: number, data: Uint8Array, fileLen = unencodedLen): Attribute[] {
  return [
    p("f"),
    [Attr.FILE_OFFSET, u64(fileOffset)],
    [Attr.UNENCODED_FILE_LEN, u64(fileLen)],
    [Attr.UNENCODED_LEN, u64(unencodedLen)],
    [Attr.UNENCODED_OFFSET, u64(0)],
    [Attr.COMPRESSION, u32(compression)],
    [Attr.DATA, data],
  ];
}

/**
 * Runs the command given in PEAK_RSS_ARGV and prints its exit code, stderr and peak RSS (Bun 1.4 gives
 * the child's in bytes, where getrusage gives KiB): from a
 * fresh process, whose children's rusage holds this one child only (the test runner's holds every
 * child it ever ran).
 */
const PEAK_RSS = `const r = Bun.spawnSync(JSON.parse(process.env.PEAK_RSS_ARGV), { stdout: "ignore", stderr: "pipe" });
process.stdout.write(JSON.stringify({ code: r.exitCode, stderr: r.stderr.toString(), maxRssKb: Math.round(r.resourceUsage.maxRSS / 1024) }));`;

/** The CLI on a stream: exit code, stderr, peak RSS in KiB. */
function receive(bytes: Uint8Array, dir = tempDir()) {
  const file = path.join(tempDir(), "stream.btrfs-send");
  fs.writeFileSync(file, bytes);
  const argv = [process.execPath, CLI, "btrfs-receive", "-q", file, dir];
  const r = Bun.spawnSync([process.execPath, "-e", PEAK_RSS], { stdout: "pipe", stderr: "inherit", env: { ...process.env, PEAK_RSS_ARGV: JSON.stringify(argv) } });
  const { code, stderr, maxRssKb } = JSON.parse(r.stdout.toString()) as { code: number; stderr: string; maxRssKb: number };
  return { code, stderr, maxRssKb, dir, file };
}

describe("btrfs-receive: encoded_write is bounded as btrfs bounds an extent (BTRFS_MAX_UNCOMPRESSED, 128 KiB)", () => {
  test("unencoded_len 1 GiB in a 36 KB stream: refused before anything is decoded, in bounded memory", () => {
    const data = deflateSync(new Uint8Array(32 << 20));
    const r = receive(stream(2, (w) => w.command(Cmd.ENCODED_WRITE, encodedWrite(0, 1 << 30, EncodedCompression.ZLIB, data))));
    expect(r.code).toBe(EXIT.BAD_INPUT);
    expect(r.stderr).toMatch(/^imgtool: [^\n]*: offset [\d,]+: command #3 \(encoded_write\): unencoded_len 1073741824 exceeds 131072 \(BTRFS_MAX_UNCOMPRESSED\); sv is incomplete[^\n]*\n$/);
    expect(r.maxRssKb).toBeLessThan(RSS_LIMIT_KB);
    expect(fs.statSync(path.join(r.dir, "sv/f")).size).toBe(0);
  });

  test("unencoded_len 2^63: refused as too large, not a runtime error", () => {
    const r = receive(stream(2, (w) => w.command(Cmd.ENCODED_WRITE, encodedWrite(0, 1n << 63n, EncodedCompression.ZSTD, new Uint8Array(16), 1))));
    expect(r.code).toBe(EXIT.BAD_INPUT);
    expect(r.stderr).toContain("command #3 (encoded_write): unencoded_len 9223372036854775808 is too large");
  });

  test("more than 128 KiB of encoded data in one command is refused", () => {
    const r = receive(stream(2, (w) => w.command(Cmd.ENCODED_WRITE, encodedWrite(0, 4096, EncodedCompression.ZLIB, new Uint8Array(200_000)))));
    expect(r.code).toBe(EXIT.BAD_INPUT);
    expect(r.stderr).toContain("command #3 (encoded_write): 200000 bytes of encoded data exceed 131072 (BTRFS_MAX_COMPRESSED)");
  });

  test("zlib data that inflates past unencoded_len (a 100 KB bomb of 100 MiB) is refused, in bounded memory", () => {
    const bomb = deflateSync(new Uint8Array(100 << 20), { level: 9 });
    expect(bomb.length).toBeLessThan(128 << 10);
    const r = receive(stream(2, (w) => w.command(Cmd.ENCODED_WRITE, encodedWrite(0, 4096, EncodedCompression.ZLIB, bomb))));
    expect(r.code).toBe(EXIT.BAD_INPUT);
    expect(r.stderr).toContain("command #3 (encoded_write): cannot decompress");
    expect(r.stderr).toContain("zlib data inflates to more than the 4096 bytes of the extent");
    expect(r.maxRssKb).toBeLessThan(RSS_LIMIT_KB);
  });

  test("a zstd frame that decodes past unencoded_len is refused", () => {
    const frame = Bun.zstdCompressSync(new Uint8Array(65536).fill(7));
    const r = receive(stream(2, (w) => w.command(Cmd.ENCODED_WRITE, encodedWrite(0, 4096, EncodedCompression.ZSTD, frame))));
    expect(r.code).toBe(EXIT.BAD_INPUT);
    expect(r.stderr).toContain("command #3 (encoded_write): cannot decompress");
    expect(r.stderr).toMatch(/zstd: Destination buffer is too small/);
  });

  test("a 1 MiB stream of 128 KiB extents is applied exactly, and memory does not grow with it", () => {
    const extent = Uint8Array.from({ length: 128 << 10 }, (_, i) => (i * 7) & 0xff);
    const data = deflateSync(extent);
    const count = Math.ceil((1 << 20) / data.length);
    const r = receive(
      stream(2, (w) => {
        for (let i = 0; i < count; i++) w.command(Cmd.ENCODED_WRITE, encodedWrite(i * extent.length, extent.length, EncodedCompression.ZLIB, data));
        return w;
      }),
    );
    expect(r).toMatchObject({ code: EXIT.OK, stderr: "" });
    const out = fs.readFileSync(path.join(r.dir, "sv/f"));
    expect(out.length).toBe(count * extent.length);
    for (let i = 0; i < count; i++) expect(out.subarray(i * extent.length, (i + 1) * extent.length).equals(extent)).toBe(true);
    expect(r.maxRssKb).toBeLessThan(RSS_LIMIT_KB);
  });
});

describe("btrfs-receive: ids out of range are bad input, not a runtime's RangeError", () => {
  for (const [attr, value, shown] of [
    [Attr.UID, 1n << 32n, "uid 4294967296 is out of range (0 to 4294967294)"],
    [Attr.GID, 1n << 63n, "gid 9223372036854775808 is out of range (0 to 4294967294)"],
    [Attr.UID, 0xffffffffn, "uid 4294967295 is out of range (0 to 4294967294)"],
  ] as const) {
    test(shown, () => {
      const ids: Attribute[] = [
        [Attr.UID, u64(attr === Attr.UID ? value : 0)],
        [Attr.GID, u64(attr === Attr.GID ? value : 0)],
      ];
      const r = receive(stream(1, (w) => w.command(Cmd.CHOWN, [p("f"), ...ids])));
      expect(r.code).toBe(EXIT.BAD_INPUT);
      expect(r.stderr).toMatch(new RegExp(`^imgtool: [^\\n]*: offset [\\d,]+: command #3 \\(chown\\): ${shown.replace(/[()]/g, "\\$&")}; [^\\n]*\\n$`));
    });
  }
});

const ROOT = process.getuid?.() === 0;
const MKFS_EXT4 = which("mkfs.ext4");
const skipReason = !ROOT ? "not root (needs a loop mount)" : !MKFS_EXT4 ? "mkfs.ext4 not installed (apt-get install e2fsprogs)" : undefined;
if (skipReason) console.error(`skipping the ext4 xattr test: ${skipReason}`);

describe.skipIf(skipReason !== undefined)("btrfs-receive: xattrs the destination file system refuses (16 KB on ext4, which holds about 4 KB per inode)", () => {
  const work = tempDir();
  const mountPoint = path.join(work, "mnt");
  let mounted = false;
  // an umount waits for writeback: seconds on a loaded machine
  afterAll(() => {
    if (mounted) Bun.spawnSync(["umount", mountPoint]);
  }, { timeout: 60_000 });

  test("each file warned once, the rest of the stream applied, the count at the end, exit 5", () => {
    const image = path.join(work, "ext4.img");
    fs.writeFileSync(image, "");
    fs.truncateSync(image, 16 << 20);
    expect(Bun.spawnSync([MKFS_EXT4!, "-q", "-F", "-b", "4096", image]).exitCode).toBe(0);
    fs.mkdirSync(mountPoint);
    const mount = Bun.spawnSync(["mount", "-o", "loop", image, mountPoint], { stderr: "pipe" });
    if (mount.exitCode !== 0) throw new Error(`mount -o loop failed: ${mount.stderr}`);
    mounted = true;
    const big = new Uint8Array(16384).fill(0x78);
    const xattr = (file: string, name: string, value: Uint8Array) => [p(file), [Attr.XATTR_NAME, bytesOf(name)], [Attr.XATTR_DATA, value]] as Attribute[];
    const bytes = stream(1, (w) =>
      w
        .command(Cmd.SET_XATTR, xattr("f", "user.big", big))
        .command(Cmd.SET_XATTR, xattr("f", "user.big2", big))
        .command(Cmd.SET_XATTR, xattr("f", "user.ok", bytesOf("fine")))
        .command(Cmd.WRITE, [p("f"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("data of f")]])
        .command(Cmd.MKFILE, [p("g"), [Attr.INO, u64(258)]])
        .command(Cmd.SET_XATTR, xattr("g", "user.big", big))
        .command(Cmd.REMOVE_XATTR, [p("f"), [Attr.XATTR_NAME, bytesOf("user.big")]])
        .command(Cmd.WRITE, [p("g"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("data of g")]]),
    );
    const r = receive(bytes, mountPoint);
    expect(r.code).toBe(EXIT.PARTIAL);
    const lines = r.stderr.trimEnd().split("\n");
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^imgtool: warning: command #3 \(set_xattr\): 'f': the file system refused the xattr 'user\.big' \(16384 bytes, (ENOSPC|E2BIG)\); going on/);
    expect(lines[1]).toMatch(/^imgtool: warning: command #8 \(set_xattr\): 'g': the file system refused the xattr 'user\.big' \(16384 bytes, (ENOSPC|E2BIG)\); going on/);
    expect(lines[2]).toBe(`imgtool: warning: the file system of ${mountPoint} refused 3 xattrs of 2 files; everything else was received`);
    expect(fs.readFileSync(path.join(mountPoint, "sv/f"), "utf8")).toBe("data of f");
    expect(fs.readFileSync(path.join(mountPoint, "sv/g"), "utf8")).toBe("data of g");
    expect(listXattrs(Buffer.from(path.join(mountPoint, "sv/f"))).map(([n, v]) => `${n}=${v}`)).toEqual(["user.ok=fine"]);
    // recorded as received: the data is all there
    expect(fs.existsSync(path.join(mountPoint, ".imgtool-received.json"))).toBe(true);
  });
});
