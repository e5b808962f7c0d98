/**
 * Writes the hostile send streams of this folder, each named by the error `imgtool btrfs-receive`
 * must give (the part of the message after "offset N: ", up to the path, which a file name cannot
 * hold). Symlinks point at `../../canary`: from DIR/sv/, the directory next to DIR, where the test
 * keeps a canary tree that must stay untouched.
 * Run: bun test/failure/btrfs-receive/make.ts  (from the repository root)
 */
import fs from "node:fs";
import path from "node:path";
import { deflateSync } from "node:zlib";
import { Attr, Cmd, EncodedCompression } from "../../../src/btrfs/protocol.ts";
import { type Attribute, SendStreamWriter, bytesOf, timespec, u32, u64 } from "../../send-stream-writer.ts";

const here = path.dirname(new URL(import.meta.url).pathname);
const OUTSIDE = "../../canary";
const p = (v: string): Attribute => [Attr.PATH, bytesOf(v)];
const ino = (n: number): Attribute => [Attr.INO, u64(n)];
const data = (v: string): Attribute => [Attr.DATA, bytesOf(v)];
const at0: Attribute = [Attr.FILE_OFFSET, u64(0)];

const subvol = (version = 1) =>
  new SendStreamWriter(version).command(Cmd.SUBVOL, [p("sv"), [Attr.UUID, new Uint8Array(16).fill(0xcd)], [Attr.CTRANSID, u64(9)]]);

/** #2 mkdir d; #3 mkfile ./d/f; #4 mkfile g; #5 write g; #6 rename d e; #7 symlink d -> outside; then #8 */
const swapped = (version = 1) =>
  subvol(version)
    .command(Cmd.MKDIR, [p("d"), ino(257)])
    .command(Cmd.MKFILE, [p("./d/f"), ino(258)])
    .command(Cmd.MKFILE, [p("g"), ino(259)])
    .command(Cmd.WRITE, [p("g"), at0, data("inside\n")])
    .command(Cmd.RENAME, [p("d"), [Attr.PATH_TO, bytesOf("e")]])
    .command(Cmd.SYMLINK, [p("d"), ino(260), [Attr.PATH_LINK, bytesOf(OUTSIDE)]]);

const cloneAttrs = (dst: string, src: string): Attribute[] => [
  p(dst),
  at0,
  [Attr.CLONE_LEN, u64(0)],
  [Attr.CLONE_UUID, new Uint8Array(16).fill(0xcd)],
  [Attr.CLONE_CTRANSID, u64(9)],
  [Attr.CLONE_PATH, bytesOf(src)],
  [Attr.CLONE_OFFSET, u64(0)],
];

const cases: Record<string, SendStreamWriter> = {
  "command #8 (write): path goes through the symlink 'd'": swapped().command(Cmd.WRITE, [p("./d/file"), at0, data("evil")]),
  "command #8 (chmod): path goes through the symlink 'd'": swapped().command(Cmd.CHMOD, [p("./d/suid"), [Attr.MODE, u64(0o6777)]]),
  "command #8 (link): path goes through the symlink 'd'": swapped()
    .command(Cmd.LINK, [p("stolen"), [Attr.PATH_LINK, bytesOf("d/suid")]])
    .command(Cmd.WRITE, [p("stolen"), at0, data("evil")]),
  "command #8 (clone): clone source: path goes through the symlink 'd'": swapped().command(Cmd.CLONE, cloneAttrs("g", "./d/file")),
  "command #8 (rmdir): path goes through the symlink 'd'": swapped().command(Cmd.RMDIR, [p("d/sub")]),
  "command #3 (rmdir): the subvolume root cannot be removed": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.RMDIR, [p("")])
    .command(Cmd.SYMLINK, [p(""), ino(258), [Attr.PATH_LINK, bytesOf(OUTSIDE)]])
    .command(Cmd.MKFILE, [p("x"), ino(259)]),
  "command #3 (rename): the subvolume root cannot be renamed": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.RENAME, [p("/"), [Attr.PATH_TO, bytesOf("moved")]]),
  "command #3 (symlink): the subvolume root cannot be replaced": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.SYMLINK, [p(""), ino(258), [Attr.PATH_LINK, bytesOf(OUTSIDE)]]),
  "command #3 (write): '..' in path": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.WRITE, [p("../../canary/file"), at0, data("evil")]),
  "command #3 (clone): clone source: '..' in path": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.CLONE, cloneAttrs("g", "../../canary/file")),
  "command #4 (write): not a regular file (a symlink)": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.SYMLINK, [p("s"), ino(258), [Attr.PATH_LINK, bytesOf(`${OUTSIDE}/file`)]])
    .command(Cmd.WRITE, [p("s"), at0, data("evil")]),
  "command #4 (truncate): not a regular file (a fifo)": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.MKFIFO, [p("fifo"), ino(258)])
    .command(Cmd.TRUNCATE, [p("fifo"), [Attr.SIZE, u64(0)]]),
  "command #3 (encoded_write): unencoded_len 1073741824 exceeds 131072": subvol(2)
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.ENCODED_WRITE, [
      p("g"),
      at0,
      [Attr.UNENCODED_FILE_LEN, u64(1 << 30)],
      [Attr.UNENCODED_LEN, u64(1 << 30)],
      [Attr.UNENCODED_OFFSET, u64(0)],
      [Attr.COMPRESSION, u32(EncodedCompression.ZLIB)],
      [Attr.DATA, deflateSync(new Uint8Array(32 << 20))],
    ]),
  "command #3 (chown): uid 4294967296 is out of range (0 to 4294967294)": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.CHOWN, [p("g"), [Attr.UID, u64(1n << 32n)], [Attr.GID, u64(0)]]),
  // what the stream asks and no destination can do: exit 3, as for any damaged input
  "command #3 (mkfile): ENAMETOOLONG": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.MKFILE, [p("x".repeat(256)), ino(258)]),
  "command #3 (rename): ENOENT": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.RENAME, [p("never-made"), [Attr.PATH_TO, bytesOf("x")]]),
  "command #3 (unlink): ENOENT": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.UNLINK, [p("never-made")]),
  "command #3 (write): ENOENT": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.WRITE, [p("never-made"), at0, data("x")]),
  "command #3 (mkfile): ENOTDIR": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.MKFILE, [p("g/x"), ino(258)]),
  "command #4 (mkdir): EEXIST": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.MKDIR, [p("d"), ino(258)])
    .command(Cmd.MKDIR, [p("d"), ino(259)]),
  "command #4 (rmdir): ENOTEMPTY": subvol()
    .command(Cmd.MKDIR, [p("d"), ino(257)])
    .command(Cmd.MKFILE, [p("d/f"), ino(258)])
    .command(Cmd.RMDIR, [p("d")]),
  "command #3 (utimes): EINVAL": subvol()
    .command(Cmd.MKFILE, [p("g"), ino(257)])
    .command(Cmd.UTIMES, [p("g"), [Attr.ATIME, timespec(1, 2_000_000_000)], [Attr.MTIME, timespec(1)], [Attr.CTIME, timespec(1)]]),
};

for (const [name, w] of Object.entries(cases)) {
  fs.writeFileSync(path.join(here, `${name}.btrfs-send`), w.command(Cmd.END, []).bytes());
}
