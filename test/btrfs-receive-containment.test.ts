/**
 * Path containment of btrfs-receive, from hostile send streams: every command kind through a
 * directory renamed and replaced by a symlink to a canary tree outside DIR (spelled `./d` after `d`
 * was used, and `d`), a final symlink or device node, the subvolume root ("" and "/"), `..`, a
 * hard link then a write, a clone from outside (this and another received subvolume). Each case
 * checks the canary tree (a file, a setuid world-writable victim, a directory) is unchanged:
 * bytes, mode, owner, times (ctime catches any change of its inode, atime a read), link counts,
 * xattrs, entries; and that the error is one line naming the command by index and the path.
 */
import { describe, expect, test as bunTest } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { deflateSync } from "node:zlib";
import { listXattrs, lsetxattr } from "../native/libc-at.ts";
import { Attr, Cmd, EncodedCompression } from "../src/btrfs/protocol.ts";
import { mayBeAtOrBelow, pathComponents } from "../src/btrfs/subvolume-dir.ts";
import { EXIT } from "../src/errors.ts";
import { runCli, sha256, tempDir } from "./helpers.ts";
import { type Attribute, SendStreamWriter, bytesOf, timespec, u32, u64 } from "./send-stream-writer.ts";

// each test runs the CLI (a second or more on a loaded machine), some several times
const TIMEOUT = 60_000;
function test(name: string, body: () => void, timeout = TIMEOUT): void {
  bunTest(name, body, timeout);
}

const ROOT = process.getuid?.() === 0;
const UUID_A = new Uint8Array(16).fill(0xa1);
const UUID_B = new Uint8Array(16).fill(0xb2);

const p = (v: string | Uint8Array): Attribute => [Attr.PATH, bytesOf(v)];
const ino = (n: number): Attribute => [Attr.INO, u64(n)];
/** a write command's number and attributes, to spread into SendStreamWriter.command */
const write = (at: string, offset: number, data: string) => [Cmd.WRITE, [p(at), [Attr.FILE_OFFSET, u64(offset)], [Attr.DATA, bytesOf(data)]]] as const;

/** A canary tree outside DIR: what a receive must never change, nor read. */
function makeCanary(at: string): string {
  fs.mkdirSync(at);
  fs.writeFileSync(path.join(at, "file"), "canary file\n");
  fs.writeFileSync(path.join(at, "suid"), "#!/bin/sh\necho victim\n");
  fs.chmodSync(path.join(at, "suid"), 0o4777);
  fs.mkdirSync(path.join(at, "sub"));
  fs.writeFileSync(path.join(at, "sub/inner"), "inner\n");
  try {
    lsetxattr(Buffer.from(path.join(at, "file")), bytesOf("user.canary"), bytesOf("1"));
  } catch {
    // a file system without user xattrs: the other checks stand
  }
  if (ROOT) fs.chownSync(path.join(at, "suid"), 1234, 5678);
  // atime == mtime, long ago: relatime updates atime on any read, so a read shows
  const old = new Date("2001-02-03T04:05:06Z");
  for (const name of ["file", "suid", "sub/inner", "sub", "."]) fs.utimesSync(path.join(at, name), old, old);
  return at;
}

/** Everything observable of a tree, without following symlinks. */
function snapshot(root: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const walk = (rel: string) => {
    const full = path.join(root, rel);
    const st = fs.lstatSync(full, { bigint: true });
    out[rel || "."] = {
      mode: st.mode.toString(8),
      uid: st.uid,
      gid: st.gid,
      size: st.size,
      nlink: st.nlink,
      ino: st.ino,
      // a directory's atime: changed by the listing of this very snapshot, so not compared
      atime: st.isDirectory() ? undefined : st.atimeNs,
      mtime: st.mtimeNs,
      ctime: st.ctimeNs,
      content: st.isFile() ? sha256(readWithoutAtime(full)) : st.isSymbolicLink() ? fs.readlinkSync(full) : undefined,
      xattrs: listXattrs(Buffer.from(full)).map(([n, v]) => `${n}=${v.toString("hex")}`),
    };
    if (st.isDirectory()) for (const name of fs.readdirSync(full).sort()) walk(path.join(rel, name));
  };
  walk("");
  return out;
}

/** The bytes of a file, read with O_NOATIME: the snapshot itself must not change what it checks. */
function readWithoutAtime(file: string): Buffer {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOATIME);
  try {
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

interface Setup {
  work: string;
  dir: string;
  canary: string;
  before: Record<string, unknown>;
}

function setup(): Setup {
  const work = tempDir();
  const dir = path.join(work, "dir");
  fs.mkdirSync(dir);
  const canary = makeCanary(path.join(work, "canary"));
  return { work, dir, canary, before: snapshot(canary) };
}

function receive(s: Setup, stream: Uint8Array, env: Record<string, string> = {}) {
  const file = path.join(s.work, `stream-${Math.random().toString(36).slice(2)}.btrfs-send`);
  fs.writeFileSync(file, stream);
  return runCli(["btrfs-receive", file, s.dir], { env });
}

function expectCanaryUntouched(s: Setup): void {
  expect(snapshot(s.canary)).toEqual(s.before);
  // nothing appeared next to DIR either
  expect(fs.readdirSync(s.work).filter((n) => !n.startsWith("stream-")).sort()).toEqual(["canary", "dir"]);
}

/** stderr is "At subvol sv" and one error line naming command #index, its kind and the text. */
function expectOneLineError(stderr: string, index: number, kind: string, text: RegExp): void {
  const lines = stderr.split("\n");
  expect(lines.at(-1)).toBe("");
  const error = lines.at(-2)!;
  expect(lines.slice(0, -2).every((l) => l.startsWith("At "))).toBe(true);
  expect(error).toMatch(new RegExp(`^imgtool: [^\\n]*: offset [\\d,]+: command #${index} \\(${kind}\\): `));
  expect(error).toMatch(text);
}

const subvol = (w: SendStreamWriter, name = "sv", uuid = UUID_A) =>
  w.command(Cmd.SUBVOL, [p(name), [Attr.UUID, uuid], [Attr.CTRANSID, u64(5)]]);

/** Every command kind, at `target` (a path that must not be followed); `other` is a regular file inside. */
function hostileCommands(target: string, other: string): [kind: string, add: (w: SendStreamWriter) => SendStreamWriter][] {
  const clone = (dst: string, src: string) =>
    [
      p(dst),
      [Attr.FILE_OFFSET, u64(0)],
      [Attr.CLONE_LEN, u64(0)],
      [Attr.CLONE_UUID, UUID_A],
      [Attr.CLONE_CTRANSID, u64(5)],
      [Attr.CLONE_PATH, bytesOf(src)],
      [Attr.CLONE_OFFSET, u64(0)],
    ] as Attribute[];
  return [
    ["mkfile", (w) => w.command(Cmd.MKFILE, [p(`${target}/new`), ino(300)])],
    ["mkdir", (w) => w.command(Cmd.MKDIR, [p(`${target}/new`), ino(300)])],
    ["mknod", (w) => w.command(Cmd.MKNOD, [p(`${target}/new`), ino(300), [Attr.MODE, u64(0o20644)], [Attr.RDEV, u64(0x103)]])],
    ["mkfifo", (w) => w.command(Cmd.MKFIFO, [p(`${target}/new`), ino(300)])],
    ["mksock", (w) => w.command(Cmd.MKSOCK, [p(`${target}/new`), ino(300)])],
    ["symlink", (w) => w.command(Cmd.SYMLINK, [p(`${target}/new`), ino(300), [Attr.PATH_LINK, bytesOf("x")]])],
    ["rename", (w) => w.command(Cmd.RENAME, [p(`${target}/file`), [Attr.PATH_TO, bytesOf("stolen")]])],
    ["rename", (w) => w.command(Cmd.RENAME, [p(other), [Attr.PATH_TO, bytesOf(`${target}/file`)]])],
    ["link", (w) => w.command(Cmd.LINK, [p(`${target}/new`), [Attr.PATH_LINK, bytesOf(other)]])],
    // link then write: a hard link inside DIR to the file outside
    ["link", (w) => w.command(Cmd.LINK, [p("stolen"), [Attr.PATH_LINK, bytesOf(`${target}/suid`)]]).command(Cmd.WRITE, [p("stolen"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("evil")]])],
    ["unlink", (w) => w.command(Cmd.UNLINK, [p(`${target}/file`)])],
    ["rmdir", (w) => w.command(Cmd.RMDIR, [p(`${target}/sub`)])],
    ["write", (w) => w.command(Cmd.WRITE, [p(`${target}/file`), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("evil")]])],
    ["clone", (w) => w.command(Cmd.CLONE, clone(`${target}/file`, other))],
    ["clone", (w) => w.command(Cmd.CLONE, clone(other, `${target}/file`))],
    ["truncate", (w) => w.command(Cmd.TRUNCATE, [p(`${target}/file`), [Attr.SIZE, u64(0)]])],
    ["chmod", (w) => w.command(Cmd.CHMOD, [p(`${target}/suid`), [Attr.MODE, u64(0o6777)]])],
    ["chown", (w) => w.command(Cmd.CHOWN, [p(`${target}/suid`), [Attr.UID, u64(0)], [Attr.GID, u64(0)]])],
    ["utimes", (w) => w.command(Cmd.UTIMES, [p(`${target}/file`), [Attr.ATIME, timespec(1)], [Attr.MTIME, timespec(2)], [Attr.CTIME, timespec(3)]])],
    ["set_xattr", (w) => w.command(Cmd.SET_XATTR, [p(`${target}/file`), [Attr.XATTR_NAME, bytesOf("user.evil")], [Attr.XATTR_DATA, bytesOf("1")]])],
    ["remove_xattr", (w) => w.command(Cmd.REMOVE_XATTR, [p(`${target}/file`), [Attr.XATTR_NAME, bytesOf("user.canary")]])],
    ["fallocate", (w) => w.command(Cmd.FALLOCATE, [p(`${target}/file`), [Attr.FALLOCATE_MODE, u32(3)], [Attr.FILE_OFFSET, u64(0)], [Attr.SIZE, u64(4096)]])],
    ["update_extent", (w) => w.command(Cmd.UPDATE_EXTENT, [p(`${target}/file`), [Attr.FILE_OFFSET, u64(0)], [Attr.SIZE, u64(4096)]])],
    ["fileattr", (w) => w.command(Cmd.FILEATTR, [p(`${target}/file`), [Attr.FILEATTR, u64(0x10)]])],
    [
      "encoded_write",
      (w) =>
        w.command(Cmd.ENCODED_WRITE, [
          p(`${target}/file`),
          [Attr.FILE_OFFSET, u64(0)],
          [Attr.UNENCODED_FILE_LEN, u64(4)],
          [Attr.UNENCODED_LEN, u64(4)],
          [Attr.UNENCODED_OFFSET, u64(0)],
          [Attr.COMPRESSION, u32(EncodedCompression.ZLIB)],
          [Attr.DATA, deflateSync(bytesOf("evil"))],
        ]),
    ],
    [
      "enable_verity",
      (w) =>
        w.command(Cmd.ENABLE_VERITY, [
          p(`${target}/file`),
          [Attr.VERITY_ALGORITHM, Uint8Array.of(1)],
          [Attr.VERITY_BLOCK_SIZE, u32(4096)],
          [Attr.VERITY_SALT_DATA, new Uint8Array(0)],
          [Attr.VERITY_SIG_DATA, new Uint8Array(0)],
        ]),
    ],
  ];
}

/**
 * #1 subvol; #2 mkdir d; #3 mkfile ./d/f (a resolver that remembers "./d" as checked would now
 * trust it); #4 mkfile g; #5 write g; #6 rename d e; #7 symlink d -> the canary; #8 the command.
 */
function swappedDirectory(canary: string, add: (w: SendStreamWriter) => SendStreamWriter): Uint8Array {
  const w = subvol(new SendStreamWriter(3))
    .command(Cmd.MKDIR, [p("d"), ino(257)])
    .command(Cmd.MKFILE, [p("./d/f"), ino(258)])
    .command(Cmd.MKFILE, [p("g"), ino(259)])
    .command(Cmd.WRITE, [p("g"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("inside\n")]])
    .command(Cmd.RENAME, [p("d"), [Attr.PATH_TO, bytesOf("e")]])
    .command(Cmd.SYMLINK, [p("d"), ino(260), [Attr.PATH_LINK, bytesOf(canary)]]);
  return add(w).command(Cmd.END, []).bytes();
}

for (const [resolver, env] of [
  ["openat2", {}],
  ["the O_NOFOLLOW walk (kernels without openat2)", { IMGTOOL_NO_OPENAT2: "1" }],
] as const) {
  describe(`btrfs-receive containment, ${resolver}: every command through a directory renamed and replaced by a symlink to outside DIR`, () => {
    for (const spelling of resolver === "openat2" ? ["./d", "d", "d/."] : ["./d"]) {
      for (const [kind, add] of hostileCommands(spelling, "g")) {
        test(`${kind} ${spelling}/…`, () => {
          const s = setup();
          const run = receive(s, swappedDirectory(s.canary, add), env);
          expect(run.code).toBe(EXIT.BAD_INPUT);
          expectOneLineError(run.stderr, 8, kind, /path goes through the symlink 'd': '[^']*' \(a received path must stay inside its subvolume\); sv is incomplete/);
          expectCanaryUntouched(s);
        });
      }
    }
  });
}

describe("btrfs-receive containment: a final component that is a symlink to outside, or a device node", () => {
  /** #1 subvol; #2 mkfile g; #3 symlink s -> canary/suid; #4.. the commands */
  const viaSymlink = (canary: string, add: (w: SendStreamWriter) => SendStreamWriter) =>
    add(subvol(new SendStreamWriter(3)).command(Cmd.MKFILE, [p("g"), ino(257)]).command(Cmd.SYMLINK, [p("s"), ino(258), [Attr.PATH_LINK, bytesOf(path.join(canary, "suid"))]]))
      .command(Cmd.END, [])
      .bytes();
  const refusedOnSymlink: [string, (w: SendStreamWriter) => SendStreamWriter][] = [
    ["write", (w) => w.command(Cmd.WRITE, [p("s"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("evil")]])],
    ["truncate", (w) => w.command(Cmd.TRUNCATE, [p("s"), [Attr.SIZE, u64(0)]])],
    ["fallocate", (w) => w.command(Cmd.FALLOCATE, [p("s"), [Attr.FALLOCATE_MODE, u32(0)], [Attr.FILE_OFFSET, u64(0)], [Attr.SIZE, u64(65536)]])],
    [
      "encoded_write",
      (w) =>
        w.command(Cmd.ENCODED_WRITE, [
          p("s"),
          [Attr.FILE_OFFSET, u64(0)],
          [Attr.UNENCODED_FILE_LEN, u64(4)],
          [Attr.UNENCODED_LEN, u64(4)],
          [Attr.UNENCODED_OFFSET, u64(0)],
          [Attr.COMPRESSION, u32(EncodedCompression.NONE)],
          [Attr.DATA, bytesOf("evil")],
        ]),
    ],
    [
      "clone",
      (w) =>
        w.command(Cmd.CLONE, [p("g"), [Attr.FILE_OFFSET, u64(0)], [Attr.CLONE_LEN, u64(0)], [Attr.CLONE_UUID, UUID_A], [Attr.CLONE_CTRANSID, u64(5)], [Attr.CLONE_PATH, bytesOf("s")], [Attr.CLONE_OFFSET, u64(0)]]),
    ],
    [
      "clone",
      (w) =>
        w.command(Cmd.CLONE, [p("s"), [Attr.FILE_OFFSET, u64(0)], [Attr.CLONE_LEN, u64(0)], [Attr.CLONE_UUID, UUID_A], [Attr.CLONE_CTRANSID, u64(5)], [Attr.CLONE_PATH, bytesOf("g")], [Attr.CLONE_OFFSET, u64(0)]]),
    ],
  ];
  for (const [kind, add] of refusedOnSymlink) {
    test(`${kind} of a symlink to a file outside is refused`, () => {
      const s = setup();
      const run = receive(s, viaSymlink(s.canary, add));
      expect(run.code).toBe(EXIT.BAD_INPUT);
      expectOneLineError(run.stderr, 4, kind, /not a regular file \(a symlink\): 's'/);
      expectCanaryUntouched(s);
    });
  }

  test("chmod, chown, utimes of a symlink change the link itself (lchown, utimensat NOFOLLOW; chmod skipped, as Linux cannot), not its target", () => {
    const s = setup();
    const run = receive(
      s,
      viaSymlink(s.canary, (w) =>
        w
          .command(Cmd.CHMOD, [p("s"), [Attr.MODE, u64(0o777)]])
          .command(Cmd.CHOWN, [p("s"), [Attr.UID, u64(process.getuid!())], [Attr.GID, u64(process.getgid!())]])
          .command(Cmd.UTIMES, [p("s"), [Attr.ATIME, timespec(7, 8)], [Attr.MTIME, timespec(9, 10)], [Attr.CTIME, timespec(0)]]),
      ),
    );
    expect(run).toMatchObject({ code: EXIT.OK, stderr: "At subvol sv\n" });
    const link = fs.lstatSync(path.join(s.dir, "sv/s"), { bigint: true });
    expect(link.mtimeNs).toBe(9_000_000_010n);
    expectCanaryUntouched(s);
  });

  test("set_xattr on a symlink acts on the link (where the file system allows it), never on its target", () => {
    const s = setup();
    const run = receive(s, viaSymlink(s.canary, (w) => w.command(Cmd.SET_XATTR, [p("s"), [Attr.XATTR_NAME, bytesOf("user.evil")], [Attr.XATTR_DATA, bytesOf("1")]])));
    // Linux refuses user.* xattrs on symlinks (EPERM): one line, naming the command
    expect(run.code).toBe(EXIT.FAILURE);
    expectOneLineError(run.stderr, 4, "set_xattr", /EPERM: setxattrat 's'|EPERM: setxattr 's'/);
    expectCanaryUntouched(s);
  });

  bunTest.skipIf(!ROOT)("a write to a device node the stream made is refused (it would write to the device)", () => {
    const s = setup();
    const run = receive(
      s,
      subvol(new SendStreamWriter(1))
        .command(Cmd.MKNOD, [p("null"), ino(257), [Attr.MODE, u64(0o20644)], [Attr.RDEV, u64(0x103)]])
        .command(Cmd.WRITE, [p("null"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("x")]])
        .command(Cmd.END, [])
        .bytes(),
    );
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 3, "write", /not a regular file \(a character device\): 'null'/);
  }, TIMEOUT);

  test("a write to a fifo the stream made is refused at once (its open would wait for a reader)", () => {
    const s = setup();
    const run = receive(
      s,
      subvol(new SendStreamWriter(1))
        .command(Cmd.MKFIFO, [p("fifo"), ino(257)])
        .command(Cmd.WRITE, [p("fifo"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("x")]])
        .command(Cmd.END, [])
        .bytes(),
    );
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 3, "write", /not a regular file \(a fifo\): 'fifo'/);
  });
});

describe("btrfs-receive containment: the subvolume root (the path \"\" or \"/\") is neither removed, renamed nor replaced", () => {
  const cases: [string, string, (w: SendStreamWriter) => SendStreamWriter, RegExp][] = [
    ["rmdir", "", (w) => w.command(Cmd.RMDIR, [p("")]), /the subvolume root cannot be removed: ''/],
    ["rmdir", "/", (w) => w.command(Cmd.RMDIR, [p("/")]), /the subvolume root cannot be removed: '\/'/],
    ["rmdir", ".", (w) => w.command(Cmd.RMDIR, [p(".")]), /the subvolume root cannot be removed: '\.'/],
    ["unlink", "", (w) => w.command(Cmd.UNLINK, [p("")]), /the subvolume root cannot be removed/],
    ["rename", "from", (w) => w.command(Cmd.RENAME, [p(""), [Attr.PATH_TO, bytesOf("x")]]), /the subvolume root cannot be renamed: ''/],
    ["rename", "to", (w) => w.command(Cmd.RENAME, [p("g"), [Attr.PATH_TO, bytesOf("/")]]), /the subvolume root cannot be replaced: '\/'/],
    ["symlink", "", (w) => w.command(Cmd.SYMLINK, [p(""), ino(300), [Attr.PATH_LINK, bytesOf("/")]]), /the subvolume root cannot be replaced: ''/],
    ["mkdir", "/", (w) => w.command(Cmd.MKDIR, [p("/"), ino(300)]), /the subvolume root cannot be replaced/],
    ["mkfile", "", (w) => w.command(Cmd.MKFILE, [p(""), ino(300)]), /the subvolume root cannot be replaced/],
    ["mknod", "", (w) => w.command(Cmd.MKNOD, [p(""), ino(300), [Attr.MODE, u64(0o10644)], [Attr.RDEV, u64(0)]]), /the subvolume root cannot be replaced/],
    ["link", "path", (w) => w.command(Cmd.LINK, [p(""), [Attr.PATH_LINK, bytesOf("g")]]), /the subvolume root cannot be replaced/],
    ["link", "target", (w) => w.command(Cmd.LINK, [p("h"), [Attr.PATH_LINK, bytesOf("")]]), /the subvolume root cannot be linked/],
    ["write", "", (w) => w.command(Cmd.WRITE, [p(""), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("x")]]), /the subvolume root is not a regular file: ''/],
  ];
  for (const [kind, which, add, message] of cases) {
    test(`${kind} (${which}), then symlink "" -> outside, then mkfile x`, () => {
      const s = setup();
      const stream = add(subvol(new SendStreamWriter(1)).command(Cmd.MKFILE, [p("g"), ino(257)]))
        .command(Cmd.SYMLINK, [p(""), ino(301), [Attr.PATH_LINK, bytesOf(s.canary)]])
        .command(Cmd.MKFILE, [p("x"), ino(302)])
        .command(Cmd.END, [])
        .bytes();
      const run = receive(s, stream);
      expect(run.code).toBe(EXIT.BAD_INPUT);
      expectOneLineError(run.stderr, 3, kind, message);
      expect(fs.lstatSync(path.join(s.dir, "sv")).isDirectory()).toBe(true);
      expectCanaryUntouched(s);
    });
  }

  test("chmod, chown, utimes, set_xattr of \"\" apply to the subvolume's directory, as btrfs send sends them", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.CHMOD, [p(""), [Attr.MODE, u64(0o750)]])
      .command(Cmd.CHOWN, [p("/"), [Attr.UID, u64(process.getuid!())], [Attr.GID, u64(process.getgid!())]])
      .command(Cmd.SET_XATTR, [p(""), [Attr.XATTR_NAME, bytesOf("user.root")], [Attr.XATTR_DATA, bytesOf("yes")]])
      .command(Cmd.UTIMES, [p(""), [Attr.ATIME, timespec(11, 12)], [Attr.MTIME, timespec(13, 14)], [Attr.CTIME, timespec(0)]])
      .command(Cmd.END, [])
      .bytes();
    const run = receive(s, stream);
    expect(run).toMatchObject({ code: EXIT.OK, stderr: "At subvol sv\n" });
    const st = fs.lstatSync(path.join(s.dir, "sv"), { bigint: true });
    expect(st.isDirectory()).toBe(true);
    expect(Number(st.mode) & 0o7777).toBe(0o750);
    expect(st.mtimeNs).toBe(13_000_000_014n);
    expect(listXattrs(Buffer.from(path.join(s.dir, "sv"))).map(([n, v]) => `${n}=${v}`)).toContain("user.root=yes");
    expectCanaryUntouched(s);
  });
});

describe("btrfs-receive containment: '..' is refused in every path, clone sources included", () => {
  const cases: [string, (w: SendStreamWriter) => SendStreamWriter, string][] = [
    ["write", (w) => w.command(Cmd.WRITE, [p("../../canary/file"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("evil")]]), "../../canary/file"],
    ["chmod", (w) => w.command(Cmd.CHMOD, [p("g/../../../canary/suid"), [Attr.MODE, u64(0)]]), "g/../../../canary/suid"],
    ["rmdir", (w) => w.command(Cmd.RMDIR, [p("./..")]), "./.."],
    ["rename", (w) => w.command(Cmd.RENAME, [p("g"), [Attr.PATH_TO, bytesOf("../escaped")]]), "../escaped"],
    ["link", (w) => w.command(Cmd.LINK, [p("h"), [Attr.PATH_LINK, bytesOf("../../canary/file")]]), "../../canary/file"],
    ["symlink", (w) => w.command(Cmd.SYMLINK, [p("../../canary/new"), ino(300), [Attr.PATH_LINK, bytesOf("x")]]), "../../canary/new"],
  ];
  for (const [kind, add, shown] of cases) {
    test(`${kind} '${shown}'`, () => {
      const s = setup();
      const run = receive(s, add(subvol(new SendStreamWriter(1)).command(Cmd.MKFILE, [p("g"), ino(257)])).command(Cmd.END, []).bytes());
      expect(run.code).toBe(EXIT.BAD_INPUT);
      expectOneLineError(run.stderr, 3, kind, new RegExp(`'\\.\\.' in path: '${shown.replaceAll(".", "\\.")}'`));
      expectCanaryUntouched(s);
    });
  }

  test("clone from '../../canary/file'", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.MKFILE, [p("g"), ino(257)])
      .command(Cmd.CLONE, [p("g"), [Attr.FILE_OFFSET, u64(0)], [Attr.CLONE_LEN, u64(0)], [Attr.CLONE_UUID, UUID_A], [Attr.CLONE_CTRANSID, u64(5)], [Attr.CLONE_PATH, bytesOf("../../canary/file")], [Attr.CLONE_OFFSET, u64(0)]])
      .command(Cmd.END, [])
      .bytes();
    const run = receive(s, stream);
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 3, "clone", /clone source: '\.\.' in path: '\.\.\/\.\.\/canary\/file'/);
    expectCanaryUntouched(s);
  });
});

describe("btrfs-receive containment: a clone source in another received subvolume resolves inside that subvolume", () => {
  const cloneFromA = (clonePath: string) =>
    subvol(new SendStreamWriter(1), "b", UUID_B)
      .command(Cmd.MKFILE, [p("f"), ino(257)])
      .command(Cmd.CLONE, [p("f"), [Attr.FILE_OFFSET, u64(0)], [Attr.CLONE_LEN, u64(0)], [Attr.CLONE_UUID, UUID_A], [Attr.CLONE_CTRANSID, u64(5)], [Attr.CLONE_PATH, bytesOf(clonePath)], [Attr.CLONE_OFFSET, u64(0)]])
      .command(Cmd.END, [])
      .bytes();
  const receiveA = (s: Setup) => {
    const a = subvol(new SendStreamWriter(1), "a", UUID_A)
      .command(Cmd.SYMLINK, [p("s"), ino(257), [Attr.PATH_LINK, bytesOf(s.canary)]])
      .command(Cmd.MKFILE, [p("ok"), ino(258)])
      .command(Cmd.WRITE, [p("ok"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("from a\n")]])
      .command(Cmd.END, [])
      .bytes();
    expect(receive(s, a).code).toBe(EXIT.OK);
  };

  test("a path through a symlink of the other subvolume is refused", () => {
    const s = setup();
    receiveA(s);
    const run = receive(s, cloneFromA("s/file"));
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 3, "clone", /clone source: path goes through the symlink 's': 's\/file'/);
    expectCanaryUntouched(s);
  });

  test("the symlink itself as the source is refused", () => {
    const s = setup();
    receiveA(s);
    const run = receive(s, cloneFromA("s"));
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 3, "clone", /clone source: not a regular file \(a symlink\): 's'/);
    expectCanaryUntouched(s);
  });

  test("a regular file of the other subvolume is cloned", () => {
    const s = setup();
    receiveA(s);
    const run = receive(s, cloneFromA("./ok"));
    expect(run).toMatchObject({ code: EXIT.OK, stderr: "At subvol b\n" });
    expect(fs.readFileSync(path.join(s.dir, "b/f"), "utf8")).toBe("from a\n");
    expectCanaryUntouched(s);
  });
});

describe("btrfs-receive: renames are followed as the directory is now", () => {
  test("a write after `rename d e` goes to e's file; `./d/x` then names the new d", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.MKDIR, [p("d"), ino(257)])
      .command(Cmd.MKFILE, [p("./d/x"), ino(258)])
      .command(Cmd.WRITE, [p("d/x"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("one")]])
      .command(Cmd.RENAME, [p("d"), [Attr.PATH_TO, bytesOf("e")]])
      .command(Cmd.WRITE, [p("e/x"), [Attr.FILE_OFFSET, u64(3)], [Attr.DATA, bytesOf("two")]])
      .command(Cmd.MKDIR, [p("d"), ino(259)])
      .command(Cmd.MKFILE, [p("./d/x"), ino(260)])
      .command(Cmd.WRITE, [p("./d/x"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("new")]])
      .command(Cmd.END, [])
      .bytes();
    const run = receive(s, stream);
    expect(run).toMatchObject({ code: EXIT.OK, stderr: "At subvol sv\n" });
    expect(fs.readFileSync(path.join(s.dir, "sv/e/x"), "utf8")).toBe("onetwo");
    expect(fs.readFileSync(path.join(s.dir, "sv/d/x"), "utf8")).toBe("new");
  });
});

describe("btrfs-receive: directories and the file held open between commands are dropped when a rename or removal may change what their path names", () => {
  test("a/b held for a/b/x; `rename a c`, then a new a/b: a/b/y goes to the new a/b, not to c/b", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.MKDIR, [p("a"), ino(257)])
      .command(Cmd.MKDIR, [p("a/b"), ino(258)])
      .command(Cmd.MKFILE, [p("a/b/x"), ino(259)])
      .command(...write("a/b/x", 0, "one"))
      .command(Cmd.RENAME, [p("a"), [Attr.PATH_TO, bytesOf("c")]])
      .command(Cmd.MKDIR, [p("a"), ino(260)])
      .command(Cmd.MKDIR, [p("a/b"), ino(261)])
      .command(Cmd.MKFILE, [p("a/b/y"), ino(262)])
      .command(...write("a/b/y", 0, "two"))
      .command(Cmd.END, [])
      .bytes();
    expect(receive(s, stream)).toMatchObject({ code: EXIT.OK, stderr: "At subvol sv\n" });
    expect(fs.readFileSync(path.join(s.dir, "sv/c/b/x"), "utf8")).toBe("one");
    expect(fs.readFileSync(path.join(s.dir, "sv/a/b/y"), "utf8")).toBe("two");
    expect(fs.readdirSync(path.join(s.dir, "sv/c/b"))).toEqual(["x"]);
  });

  test("the held file x, replaced by `rename z x`: the next write to x goes to z's file", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.MKFILE, [p("z"), ino(257)])
      .command(...write("z", 0, "zzz"))
      .command(Cmd.MKFILE, [p("x"), ino(258)])
      .command(...write("x", 0, "xx"))
      .command(Cmd.RENAME, [p("z"), [Attr.PATH_TO, bytesOf("x")]])
      .command(...write("x", 3, "!"))
      .command(Cmd.END, [])
      .bytes();
    expect(receive(s, stream)).toMatchObject({ code: EXIT.OK, stderr: "At subvol sv\n" });
    expect(fs.readdirSync(path.join(s.dir, "sv"))).toEqual(["x"]);
    expect(fs.readFileSync(path.join(s.dir, "sv/x"), "utf8")).toBe("zzz!");
  });

  test("the held file follows `rename o d/f`; after `rename d e` and a symlink d/f -> outside, a write to d/f is refused", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.MKDIR, [p("d"), ino(257)])
      .command(Cmd.MKFILE, [p("o258-5-0"), ino(258)])
      .command(Cmd.RENAME, [p("o258-5-0"), [Attr.PATH_TO, bytesOf("d/f")]])
      .command(...write("d/f", 0, "inside"))
      .command(Cmd.RENAME, [p("d"), [Attr.PATH_TO, bytesOf("e")]])
      .command(Cmd.MKDIR, [p("d"), ino(259)])
      .command(Cmd.SYMLINK, [p("d/f"), ino(260), [Attr.PATH_LINK, bytesOf(path.join(s.canary, "file"))]])
      .command(...write("d/f", 0, "evil"))
      .command(Cmd.END, [])
      .bytes();
    const run = receive(s, stream);
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 9, "write", /not a regular file \(a symlink\): 'd\/f'/);
    expect(fs.readFileSync(path.join(s.dir, "sv/e/f"), "utf8")).toBe("inside");
    expectCanaryUntouched(s);
  });

  test("the held file x, unlinked, then a symlink x -> outside: chmod, chown, utimes and a write to x never reach the outside file", () => {
    for (const [kind, command] of [
      ["write", write("x", 0, "evil")],
      ["chmod", [Cmd.CHMOD, [p("x"), [Attr.MODE, u64(0o6777)]]]],
      ["chown", [Cmd.CHOWN, [p("x"), [Attr.UID, u64(0)], [Attr.GID, u64(0)]]]],
      ["utimes", [Cmd.UTIMES, [p("x"), [Attr.ATIME, timespec(1)], [Attr.MTIME, timespec(2)], [Attr.CTIME, timespec(3)]]]],
    ] as const) {
      const s = setup();
      const stream = subvol(new SendStreamWriter(1))
        .command(Cmd.MKFILE, [p("x"), ino(257)])
        .command(...write("x", 0, "inside"))
        .command(Cmd.UNLINK, [p("x")])
        .command(Cmd.SYMLINK, [p("x"), ino(258), [Attr.PATH_LINK, bytesOf(path.join(s.canary, "suid"))]])
        .command(command[0], [...command[1]])
        .command(Cmd.END, [])
        .bytes();
      const run = receive(s, stream);
      // a write to a symlink is refused; chmod, chown, utimes act on the link itself
      expect(run.code).toBe(kind === "write" ? EXIT.BAD_INPUT : EXIT.OK);
      expect(fs.lstatSync(path.join(s.dir, "sv/x")).isSymbolicLink()).toBe(true);
      expectCanaryUntouched(s);
    }
  });
});

describe("btrfs-receive: a mkfile or mkdir followed by the rename of its name is made at the new name, as if made and renamed", () => {
  test("renamed onto an existing file or empty directory: the rename replaces it", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.MKFILE, [p("x"), ino(257)])
      .command(...write("x", 0, "old contents"))
      .command(Cmd.MKFILE, [p("o258-5-0"), ino(258)])
      .command(Cmd.RENAME, [p("o258-5-0"), [Attr.PATH_TO, bytesOf("x")]])
      .command(...write("x", 0, "new"))
      .command(Cmd.MKDIR, [p("e"), ino(259)])
      .command(Cmd.MKDIR, [p("o260-5-0"), ino(260)])
      .command(Cmd.RENAME, [p("o260-5-0"), [Attr.PATH_TO, bytesOf("e")]])
      .command(Cmd.MKFILE, [p("e/f"), ino(261)])
      .command(Cmd.MKFILE, [p("last"), ino(262)])
      .command(Cmd.END, [])
      .bytes();
    expect(receive(s, stream)).toMatchObject({ code: EXIT.OK, stderr: "At subvol sv\n" });
    expect(fs.readdirSync(path.join(s.dir, "sv")).sort()).toEqual(["e", "last", "x"]);
    expect(fs.readFileSync(path.join(s.dir, "sv/x"), "utf8")).toBe("new");
    expect(fs.readdirSync(path.join(s.dir, "sv/e"))).toEqual(["f"]);
    expect(fs.statSync(path.join(s.dir, "sv/last")).size).toBe(0);
  });

  test("a mkfile of a name that exists fails at the mkfile, though a rename of it follows", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.MKFILE, [p("g"), ino(257)])
      .command(Cmd.MKFILE, [p("g"), ino(258)])
      .command(Cmd.RENAME, [p("g"), [Attr.PATH_TO, bytesOf("h")]])
      .command(Cmd.END, [])
      .bytes();
    const run = receive(s, stream);
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 3, "mkfile", /EEXIST: openat 'g'/);
    expect(fs.readdirSync(path.join(s.dir, "sv"))).toEqual(["g"]);
  });

  test("renamed through a symlink to outside: the rename is refused, the file made at its first name, the canary untouched", () => {
    const s = setup();
    const stream = subvol(new SendStreamWriter(1))
      .command(Cmd.SYMLINK, [p("d"), ino(257), [Attr.PATH_LINK, bytesOf(s.canary)]])
      .command(Cmd.MKFILE, [p("o258-5-0"), ino(258)])
      .command(Cmd.RENAME, [p("o258-5-0"), [Attr.PATH_TO, bytesOf("d/new")]])
      .command(Cmd.END, [])
      .bytes();
    const run = receive(s, stream);
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 4, "rename", /path goes through the symlink 'd': 'd\/new'/);
    expect(fs.readdirSync(path.join(s.dir, "sv")).sort()).toEqual(["d", "o258-5-0"]);
    expectCanaryUntouched(s);
  });
});

test("paths that a case-insensitive directory could resolve to one entry are taken as one when names are forgotten", () => {
  const mayBeAtOrBelowPath = (a: Uint8Array, b: Uint8Array) => mayBeAtOrBelow(pathComponents(a), pathComponents(b));
  const b = (v: string) => bytesOf(v);
  expect(mayBeAtOrBelowPath(b("D/x"), b("d"))).toBe(true);
  expect(mayBeAtOrBelowPath(b("./d/x"), b("d/"))).toBe(true);
  expect(mayBeAtOrBelowPath(b("\u00e9/x"), b("a"))).toBe(true);
  expect(mayBeAtOrBelowPath(b("a/b"), b("ab"))).toBe(false);
  expect(mayBeAtOrBelowPath(b("ab/c"), b("a"))).toBe(false);
  expect(mayBeAtOrBelowPath(b("a"), b("a/b"))).toBe(false);
});

describe("hostile streams of test/failure/btrfs-receive: each refused with the error it is named by, the canary untouched", () => {
  const folder = path.join(import.meta.dir, "failure/btrfs-receive");
  const files = fs.readdirSync(folder).filter((f) => f.endsWith(".btrfs-send"));
  test("there are hostile streams to try", () => expect(files.length).toBeGreaterThan(10));
  for (const name of files) {
    test(name, () => {
      // symlinks in these streams point at ../../canary: from DIR/sv, the canary next to DIR
      const s = setup();
      const file = path.join(folder, name);
      const run = runCli(["btrfs-receive", file, s.dir]);
      expect(run.code).toBe(EXIT.BAD_INPUT);
      const lines = run.stderr.trimEnd().split("\n");
      expect(lines.slice(0, -1)).toEqual(["At subvol sv"]);
      expect(lines.at(-1)!.startsWith(`imgtool: ${file}: offset `)).toBe(true);
      expect(lines.at(-1)!).toContain(`: ${name.slice(0, -".btrfs-send".length)}`);
      expectCanaryUntouched(s);
    });
  }
});

describe("btrfs-receive: rename and link between two directories below the root", () => {
  test("a/b/x → c/d/y, then a hard link c/d/y → a/b/z, then chown, chmod, utimes of both", () => {
    const s = setup();
    const dirs = ["a", "a/b", "c", "c/d"].map((d, i) => [Cmd.MKDIR, [p(d), ino(257 + i)]] as const);
    let w = subvol(new SendStreamWriter(1));
    for (const [cmd, attrs] of dirs) w = w.command(cmd, [...attrs]);
    const stream = w
      .command(Cmd.MKFILE, [p("a/b/x"), ino(270)])
      .command(Cmd.WRITE, [p("a/b/x"), [Attr.FILE_OFFSET, u64(0)], [Attr.DATA, bytesOf("moved")]])
      .command(Cmd.RENAME, [p("a/b/x"), [Attr.PATH_TO, bytesOf("c/d/y")]])
      .command(Cmd.LINK, [p("./a/b/z"), [Attr.PATH_LINK, bytesOf("c/d/y")]])
      .command(Cmd.CHMOD, [p("a/b/z"), [Attr.MODE, u64(0o640)]])
      .command(Cmd.UTIMES, [p("c/d/y"), [Attr.ATIME, timespec(5)], [Attr.MTIME, timespec(6, 7)], [Attr.CTIME, timespec(0)]])
      .command(Cmd.RMDIR, [p("c/d")])
      .command(Cmd.END, [])
      .bytes();
    const run = receive(s, stream);
    // c/d is not empty: rmdir fails with ENOTEMPTY (the stream's doing), after everything before it was applied
    expect(run.code).toBe(EXIT.BAD_INPUT);
    expectOneLineError(run.stderr, 12, "rmdir", /ENOTEMPTY: rmdir 'c\/d'/);
    const y = fs.statSync(path.join(s.dir, "sv/c/d/y"), { bigint: true });
    const z = fs.statSync(path.join(s.dir, "sv/a/b/z"), { bigint: true });
    expect(fs.readFileSync(path.join(s.dir, "sv/c/d/y"), "utf8")).toBe("moved");
    expect(y.ino).toBe(z.ino);
    expect(y.nlink).toBe(2n);
    expect(Number(y.mode) & 0o7777).toBe(0o640);
    expect(y.mtimeNs).toBe(6_000_000_007n);
    expect(fs.existsSync(path.join(s.dir, "sv/a/b/x"))).toBe(false);
    expectCanaryUntouched(s);
  });
});
