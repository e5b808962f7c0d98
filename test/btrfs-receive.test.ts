import { describe, expect, test } from "bun:test";
import { deflateSync } from "node:zlib";
import fs from "node:fs";
import path from "node:path";
import { Attr, Cmd, EncodedCompression } from "../src/btrfs/protocol.ts";
import { RECEIVED_INDEX } from "../src/btrfs/received-index.ts";
import { EXIT } from "../src/errors.ts";
import { FIXTURES, fixture, loopBtrfs, runCli, tempDir, which } from "./helpers.ts";
import { type Attribute, SendStreamWriter, bytesOf, timespec, u32, u64 } from "./send-stream-writer.ts";

/** lstree.py exactly as fixtures/MAKE.md gives it: the script that made the .tree.txt references. */
const LSTREE = /## lstree\.py\n\n```bash\n([\s\S]*?)```/.exec(fs.readFileSync(path.join(FIXTURES, "MAKE.md"), "utf8"))![1]!;

function lstree(dir: string): string {
  const run = Bun.spawnSync(["python3", "-c", LSTREE, dir], { stdout: "pipe", stderr: "pipe" });
  expect(run.stderr.toString()).toBe("");
  return run.stdout.toString();
}

/**
 * The one field a plain directory cannot reproduce: a directory's link count (btrfs always
 * says 1; ext4, XFS and tmpfs count the subdirectories' `..`).
 */
function withoutDirectoryLinkCounts(listing: string): string {
  return listing
    .split("\n")
    .map((line) => {
      const fields = line.split("\t");
      if (fields[1] === "d") fields[6] = "*";
      return fields.join("\t");
    })
    .join("\n");
}

function receive(stream: string, dir: string, ...options: string[]) {
  return runCli(["btrfs-receive", ...options, stream, dir]);
}

function writeStream(bytes: Uint8Array): string {
  const file = path.join(tempDir(), "stream.btrfs-send");
  fs.writeFileSync(file, bytes);
  return file;
}

const SUBVOL_UUID = Uint8Array.from({ length: 16 }, (_, i) => i * 17);

function subvol(w: SendStreamWriter, name = "sv"): SendStreamWriter {
  return w.command(Cmd.SUBVOL, [
    [Attr.PATH, bytesOf(name)],
    [Attr.UUID, SUBVOL_UUID],
    [Attr.CTRANSID, u64(5)],
  ]);
}

const p = (v: string | Uint8Array): Attribute => [Attr.PATH, bytesOf(v)];

describe("btrfs-receive: the received trees equal btrfs receive's (lstree.py listings of fixtures/*.tree.txt)", () => {
  const dir = tempDir();
  // incr-v1 is a snapshot of full-v1's subvolume: received into the same directory, after it
  const cases = [
    ["full-v1", "data.s1"],
    ["incr-v1", "data.s2"],
    ["v2-zstd", "zstd.s1"],
    ["v2-zlib-lzo", "zliblzo.s1"],
  ] as const;
  for (const [name, subvolume] of cases) {
    test(`${name} → ${subvolume}`, () => {
      const run = receive(fixture(`${name}.btrfs-send`), dir);
      expect(run.stderr).toBe(`At ${name.startsWith("incr") ? "snapshot" : "subvol"} ${subvolume}\n`);
      expect(run.code).toBe(EXIT.OK);
      const expected = fs.readFileSync(fixture(`${name}.btrfs-send.tree.txt`), "utf8");
      expect(withoutDirectoryLinkCounts(lstree(path.join(dir, subvolume)))).toBe(withoutDirectoryLinkCounts(expected));
    });
  }

  test("the snapshot's copy of its parent keeps holes: data.s2/sparse.bin (3 MiB, 8 KiB of data) stays sparse", () => {
    const st = fs.statSync(path.join(dir, "data.s2/sparse.bin"));
    expect(st.size).toBe(3145728);
    expect(st.blocks * 512).toBeLessThan(256 * 1024);
  });

  test("the parent is untouched by the snapshot", () => {
    const expected = fs.readFileSync(fixture("full-v1.btrfs-send.tree.txt"), "utf8");
    expect(withoutDirectoryLinkCounts(lstree(path.join(dir, "data.s1")))).toBe(withoutDirectoryLinkCounts(expected));
  });

  test(`${RECEIVED_INDEX} maps each received uuid and ctransid to its directory`, () => {
    const index = JSON.parse(fs.readFileSync(path.join(dir, RECEIVED_INDEX), "utf8"));
    expect(index).toEqual({
      format: "imgtool-received/1",
      subvolumes: [
        { name: "data.s1", receivedUuid: "b85991ef-dd9f-134f-8e8a-c575472aef23", ctransid: "8" },
        { name: "data.s2", receivedUuid: "81f34029-f793-b041-a0ea-9d7db6171e9f", ctransid: "10", parentUuid: "b85991ef-dd9f-134f-8e8a-c575472aef23" },
        { name: "zstd.s1", receivedUuid: "5b864e95-6da8-d042-bd34-2f316e42a694", ctransid: "13" },
        { name: "zliblzo.s1", receivedUuid: "3603f1bc-b00c-c24d-af59-3265aa9f1bf0", ctransid: "17" },
      ],
    });
  });

  test("a subvolume that exists already is refused, as btrfs receive refuses it", () => {
    const run = receive(fixture("v2-zstd.btrfs-send"), dir);
    expect(run.code).toBe(EXIT.USAGE);
    expect(run.stderr).toContain(`${dir}/zstd.s1 already exists`);
  });
});

describe("btrfs-receive: subvolumes and streams", () => {
  test("an incremental stream without its parent in DIR is refused, naming the parent's uuid", () => {
    const dir = tempDir();
    const run = receive(fixture("incr-v1.btrfs-send"), dir);
    expect(run.code).toBe(EXIT.USAGE);
    expect(run.stderr).toContain("cannot find the parent subvolume of snapshot 'data.s2' (uuid b85991ef-dd9f-134f-8e8a-c575472aef23, ctransid 8)");
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  test("concatenated streams: all of them by default, the first only with -e (as btrfs receive -e)", () => {
    const all = tempDir();
    expect(receive(fixture("multi-v1.btrfs-send"), all).code).toBe(EXIT.OK);
    expect(fs.readdirSync(all).sort()).toEqual([RECEIVED_INDEX, "names.s1", "second.s1"]);
    expect(fs.readlinkSync(path.join(all, "second.s1/d/up"))).toBe("../file");
    const first = tempDir();
    expect(receive(fixture("multi-v1.btrfs-send"), first, "-e").code).toBe(EXIT.OK);
    expect(fs.readdirSync(first).sort()).toEqual([RECEIVED_INDEX, "names.s1"]);
  });

  test("the stream from stdin (-); DIR must be an existing directory", () => {
    const dir = tempDir();
    const run = runCli(["btrfs-receive", "-q", "-", dir], { stdinFile: fixture("v2-zstd.btrfs-send") });
    expect(run).toMatchObject({ code: EXIT.OK, stderr: "" });
    expect(withoutDirectoryLinkCounts(lstree(path.join(dir, "zstd.s1")))).toBe(withoutDirectoryLinkCounts(fs.readFileSync(fixture("v2-zstd.btrfs-send.tree.txt"), "utf8")));
    const missing = receive(fixture("v2-zstd.btrfs-send"), path.join(dir, "missing"));
    expect(missing.code).toBe(EXIT.USAGE);
    expect(missing.stderr).toBe(`imgtool: ${path.join(dir, "missing")}: no such directory\n`);
  });

  test("names are bytes: a newline, a 255-byte name, Latin-1 bytes survive a full and an incremental receive", () => {
    const dir = tempDir();
    expect(receive(fixture("names-v1.btrfs-send"), dir).code).toBe(EXIT.OK);
    expect(receive(fixture("names-incr-v1.btrfs-send"), dir).code).toBe(EXIT.OK);
    const names = (fs.readdirSync(Buffer.from(path.join(dir, "names.s2")), { encoding: "buffer" }) as Uint8Array[]).map((n) => Buffer.from(n).toString("latin1"));
    expect(names).toContain("renamed\nwith space");
    expect(names).not.toContain("with space");
    expect(names.some((n) => n.length === 255)).toBe(true);
    expect(names.some((n) => /[\x80-\xff]/.test(n))).toBe(true);
  });

  test("a damaged stream: the parser's error, how far the receive got, the exit code of a checksum error", () => {
    const bytes = fs.readFileSync(fixture("full-v1.btrfs-send"));
    bytes[2000] = bytes[2000]! ^ 0xff;
    const dir = tempDir();
    const run = receive(writeStream(bytes), dir);
    expect(run.code).toBe(EXIT.CHECKSUM);
    expect(run.stderr).toMatch(/^At subvol data\.s1\nimgtool: .*: command #\d+ \(\w+\): crc32c mismatch .*; data\.s1 is incomplete after \d+ commands \(\d+ commands read\)\n$/);
    // not recorded as received: an incremental stream cannot build on it
    expect(fs.existsSync(path.join(dir, RECEIVED_INDEX))).toBe(false);
  });

  test("a truncated stream is bad input (exit 3) and the subvolumes completed before it are recorded", () => {
    const whole = Buffer.concat([fs.readFileSync(fixture("v2-zstd.btrfs-send")), fs.readFileSync(fixture("full-v1.btrfs-send")).subarray(0, 5000)]);
    const dir = tempDir();
    const run = receive(writeStream(whole), dir);
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expect(run.stderr).toMatch(/: command #42 \(write\): truncated \(the stream ends 4327 bytes into its 49182 bytes of attributes\); received zstd\.s1; data\.s1 is incomplete after 14 commands \(41 commands read\)\n$/);
    expect(JSON.parse(fs.readFileSync(path.join(dir, RECEIVED_INDEX), "utf8")).subvolumes.map((s: { name: string }) => s.name)).toEqual(["zstd.s1"]);
  });
});

describe("btrfs-receive: nothing is written outside DIR", () => {
  /** Receive a stream of one subvolume "sv" built by `build`; expect it refused at command #`command`. */
  const refused = (build: (w: SendStreamWriter) => SendStreamWriter, message: string, command: number) => {
    const dir = tempDir();
    const stream = build(subvol(new SendStreamWriter(1))).command(Cmd.END, []).bytes();
    const run = receive(writeStream(stream), dir);
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expect(run.stderr).toMatch(new RegExp(`: offset [\\d,]+: command #${command} \\(\\w+\\): ${message}`));
    return dir;
  };

  test("'..' in a path", () => {
    const dir = refused((w) => w.command(Cmd.MKFILE, [p("../../evil"), [Attr.INO, u64(257)]]), "'\\.\\.' in path: '\\.\\./\\.\\./evil'", 2);
    expect(fs.existsSync(path.join(dir, "../evil"))).toBe(false);
  });

  test("an absolute path", () => {
    const target = path.join(tempDir(), "evil");
    refused((w) => w.command(Cmd.MKDIR, [p(target), [Attr.INO, u64(257)]]), `absolute path: '${target}'`, 2);
    expect(fs.existsSync(target)).toBe(false);
  });

  test("a path through a symlink the stream made, to a directory outside", () => {
    const target = path.join(tempDir(), "elsewhere");
    fs.mkdirSync(target);
    refused(
      (w) => w.command(Cmd.SYMLINK, [p("ln"), [Attr.INO, u64(257)], [Attr.PATH_LINK, bytesOf(target)]]).command(Cmd.MKFILE, [p("ln/evil"), [Attr.INO, u64(258)]]),
      "path goes through the symlink 'ln'",
      3,
    );
    expect(fs.readdirSync(target)).toEqual([]);
  });

  test("chmod of a symlink is skipped (Linux cannot change a symlink's mode; chmod(2) would change its target)", () => {
    const victim = path.join(tempDir(), "victim");
    fs.writeFileSync(victim, "");
    fs.chmodSync(victim, 0o600);
    const run = receive(
      writeStream(
        subvol(new SendStreamWriter(1))
          .command(Cmd.SYMLINK, [p("ln"), [Attr.INO, u64(257)], [Attr.PATH_LINK, bytesOf(victim)]])
          .command(Cmd.CHMOD, [p("ln"), [Attr.MODE, u64(0o777)]])
          .command(Cmd.END, [])
          .bytes(),
      ),
      tempDir(),
    );
    expect(run).toMatchObject({ code: EXIT.OK, stderr: "At subvol sv\n" });
    expect(fs.statSync(victim).mode & 0o777).toBe(0o600);
  });

  test("a write through a symlink", () => {
    const victim = path.join(tempDir(), "victim");
    fs.writeFileSync(victim, "safe");
    const run = receive(
      writeStream(
        subvol(new SendStreamWriter(1))
          .command(Cmd.SYMLINK, [p("ln"), [Attr.INO, u64(257)], [Attr.PATH_LINK, bytesOf(victim)]])
          .command(Cmd.WRITE, [p("ln"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("evil")]])
          .command(Cmd.END, [])
          .bytes(),
      ),
      tempDir(),
    );
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expect(run.stderr).toContain("command #3 (write): not a regular file (a symlink): 'ln'");
    expect(fs.readFileSync(victim, "utf8")).toBe("safe");
  });

  test("a clone source outside the subvolume", () => {
    refused(
      (w) =>
        w.command(Cmd.MKFILE, [p("f"), [Attr.INO, u64(257)]]).command(Cmd.CLONE, [
          p("f"),
          [Attr.FILE_OFFSET, u64(0)],
          [Attr.CLONE_LEN, u64(4096)],
          [Attr.CLONE_UUID, SUBVOL_UUID],
          [Attr.CLONE_CTRANSID, u64(5)],
          [Attr.CLONE_PATH, bytesOf("../../../etc/passwd")],
          [Attr.CLONE_OFFSET, u64(0)],
        ]),
      "clone source: '\\.\\.' in path",
      3,
    );
  });

  test("a subvolume name that is not one path component", () => {
    const dir = tempDir();
    const run = receive(writeStream(subvol(new SendStreamWriter(1), "../escaped").command(Cmd.END, []).bytes()), dir);
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expect(run.stderr).toContain("command #1 (subvol): subvolume name '../escaped' is not a single path component");
    expect(fs.existsSync(path.join(dir, "../escaped"))).toBe(false);
  });
});

describe("btrfs-receive: commands of protocol 2 and 3", () => {
  const v2 = () => subvol(new SendStreamWriter(2)).command(Cmd.MKFILE, [p("f"), [Attr.INO, u64(257)]]);
  const run = (w: SendStreamWriter) => {
    const dir = tempDir();
    return { ...receive(writeStream(w.command(Cmd.END, []).bytes()), dir), file: path.join(dir, "sv/f") };
  };

  test("fallocate: mode 0 extends the file, punch hole zeroes a range and keeps the size", () => {
    const r = run(
      v2()
        .command(Cmd.WRITE, [p("f"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, new Uint8Array(8192).fill(0x41)]])
        .command(Cmd.FALLOCATE, [p("f"), [Attr.FALLOCATE_MODE, u32(0)], [Attr.FILE_OFFSET, u64(8192)], [Attr.SIZE, u64(8192)]])
        .command(Cmd.FALLOCATE, [p("f"), [Attr.FALLOCATE_MODE, u32(3)], [Attr.FILE_OFFSET, u64(0)], [Attr.SIZE, u64(4096)]]),
    );
    expect(r.code).toBe(EXIT.OK);
    const data = fs.readFileSync(r.file);
    expect(data.length).toBe(16384);
    expect(data.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(data.subarray(4096, 8192).every((b) => b === 0x41)).toBe(true);
    expect(data.subarray(8192).every((b) => b === 0)).toBe(true);
  });

  test("encoded_write: the extent's slice [unencoded_offset, +unencoded_file_len) lands at the offset", () => {
    const text = Buffer.from("0123456789".repeat(1000));
    const r = run(
      v2().command(Cmd.ENCODED_WRITE, [
        p("f"),
        [Attr.FILE_OFFSET, u64(100)],
        [Attr.UNENCODED_FILE_LEN, u64(50)],
        [Attr.UNENCODED_LEN, u64(text.length)],
        [Attr.UNENCODED_OFFSET, u64(3)],
        [Attr.COMPRESSION, u32(EncodedCompression.ZLIB)],
        [Attr.DATA, Buffer.concat([deflateSync(text), new Uint8Array(300)])],
      ]),
    );
    expect(r.code).toBe(EXIT.OK);
    const data = fs.readFileSync(r.file);
    expect(data.length).toBe(150);
    expect(data.subarray(100).toString()).toBe(text.subarray(3, 53).toString());
  });

  test("encoded_write: an extent that decompresses short of what it must cover is bad input", () => {
    const r = run(
      v2().command(Cmd.ENCODED_WRITE, [
        p("f"),
        [Attr.FILE_OFFSET, u64(0)],
        [Attr.UNENCODED_FILE_LEN, u64(4096)],
        [Attr.UNENCODED_LEN, u64(4096)],
        [Attr.UNENCODED_OFFSET, u64(0)],
        [Attr.COMPRESSION, u32(EncodedCompression.ZLIB)],
        [Attr.DATA, deflateSync(new Uint8Array(1000))],
      ]),
    );
    expect(r.code).toBe(EXIT.BAD_INPUT);
    expect(r.stderr).toContain("command #3 (encoded_write): extent decompresses to 1000 bytes (unencoded_offset 0 + unencoded_file_len 4096 need 4096)");
  });

  test("encoded_write: encrypted data is refused, as btrfs receive refuses it", () => {
    const r = run(
      v2().command(Cmd.ENCODED_WRITE, [
        p("f"),
        [Attr.FILE_OFFSET, u64(0)],
        [Attr.UNENCODED_FILE_LEN, u64(1)],
        [Attr.UNENCODED_LEN, u64(1)],
        [Attr.UNENCODED_OFFSET, u64(0)],
        [Attr.ENCRYPTION, u32(1)],
        [Attr.DATA, new Uint8Array(1)],
      ]),
    );
    expect(r.code).toBe(EXIT.BAD_INPUT);
    expect(r.stderr).toContain("command #3 (encoded_write): encryption 1 is not supported");
  });

  test("clone within one file, overlapping ranges, and past its end", () => {
    const bytes = Uint8Array.from({ length: 10000 }, (_, i) => i % 251);
    const r = run(
      v2()
        .command(Cmd.WRITE, [p("f"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytes]])
        .command(Cmd.CLONE, [
          p("f"),
          [Attr.FILE_OFFSET, u64(4096)],
          [Attr.CLONE_LEN, u64(8192)],
          [Attr.CLONE_UUID, SUBVOL_UUID],
          [Attr.CLONE_CTRANSID, u64(5)],
          [Attr.CLONE_PATH, bytesOf("f")],
          [Attr.CLONE_OFFSET, u64(0)],
        ]),
    );
    expect(r.code).toBe(EXIT.OK);
    const expected = new Uint8Array(12288);
    expected.set(bytes);
    expected.set(bytes.subarray(0, 8192), 4096);
    expect(new Uint8Array(fs.readFileSync(r.file))).toEqual(expected);
  });

  test("fileattr is ignored (as btrfs receive 6.2 ignores it); enable_verity warns on one line and the receive goes on", () => {
    const r = run(
      new SendStreamWriter(3)
        .command(Cmd.SUBVOL, [p("sv"), [Attr.UUID, SUBVOL_UUID], [Attr.CTRANSID, u64(5)]])
        .command(Cmd.MKFILE, [p("f"), [Attr.INO, u64(257)]])
        .command(Cmd.FILEATTR, [p("f"), [Attr.FILEATTR, u64(0x20)]])
        .command(Cmd.ENABLE_VERITY, [
          p("f"),
          [Attr.VERITY_ALGORITHM, Uint8Array.of(1)],
          [Attr.VERITY_BLOCK_SIZE, u32(4096)],
          [Attr.VERITY_SALT_DATA, new Uint8Array(0)],
          [Attr.VERITY_SIG_DATA, new Uint8Array(0)],
        ])
        .command(Cmd.UTIMES, [p("f"), [Attr.ATIME, timespec(1, 2)], [Attr.MTIME, timespec(3, 4)], [Attr.CTIME, timespec(5, 6)]]),
    );
    expect(r.code).toBe(EXIT.OK);
    expect(r.stderr).toBe("At subvol sv\nimgtool: warning: command #4 (enable_verity): fs-verity not enabled on 'f' (a plain directory cannot hold it); going on\n");
    const st = fs.statSync(r.file, { bigint: true });
    expect(st.mtimeNs).toBe(3_000_000_004n);
    expect(st.atimeNs).toBe(1_000_000_002n);
  });
});

const BTRFS = which("btrfs");
const MKFS = which("mkfs.btrfs");
const ROOT = process.getuid?.() === 0;

describe.skipIf(!BTRFS || !MKFS || !ROOT)("differential: btrfs receive into a loop-mounted btrfs against imgtool btrfs-receive", () => {
  const { mountPoint, setup } = loopBtrfs(MKFS!);

  // streams received in order into one directory each, on btrfs and here
  const groups = [["full-v1", "incr-v1"], ["names-v1", "names-incr-v1"], ["multi-v1"], ["sparse-v2"], ["v2-zstd"], ["v2-zlib-lzo"], ["nodata-v1"]];
  for (const group of groups) {
    // a real btrfs receive and ours, several streams each: seconds on a loaded machine
    test(group.join(" then "), () => {
      setup();
      const onBtrfs = path.join(mountPoint, group[0]!);
      const here = tempDir();
      fs.mkdirSync(onBtrfs);
      for (const name of group) {
        const real = Bun.spawnSync([BTRFS!, "receive", "-f", fixture(`${name}.btrfs-send`), onBtrfs], { stderr: "pipe" });
        expect(real.exitCode).toBe(0);
        expect(receive(fixture(`${name}.btrfs-send`), here).code).toBe(EXIT.OK);
      }
      const subvolumes = fs.readdirSync(onBtrfs).sort();
      expect(fs.readdirSync(here).filter((n) => n !== RECEIVED_INDEX).sort()).toEqual(subvolumes);
      for (const subvolume of subvolumes) {
        expect(withoutDirectoryLinkCounts(lstree(path.join(here, subvolume)))).toBe(withoutDirectoryLinkCounts(lstree(path.join(onBtrfs, subvolume))));
      }
    }, 60_000);
  }
});
