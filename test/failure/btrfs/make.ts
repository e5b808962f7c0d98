/**
 * Writes the broken send streams of this folder, each named by the error imgtool must give
 * (the part of the message after "offset N: "), and, where btrfs-progs is installed, what
 * `btrfs receive --dump` prints to stdout before it stops (`.dump.txt`, made with TZ=UTC).
 * Run: TZ=UTC bun test/failure/btrfs/make.ts  (from the repository root)
 */
import fs from "node:fs";
import path from "node:path";
import { crc32c } from "../../../native/crc32c.ts";
import { SendStreamWriter, bytesOf, timespec, u64 } from "../../send-stream-writer.ts";
import { Attr, Cmd } from "../../../src/btrfs/protocol.ts";

const here = path.dirname(new URL(import.meta.url).pathname);
const base = new Uint8Array(fs.readFileSync(path.join(here, "../../../fixtures/nodata-v1.btrfs-send")));
/** command offsets in nodata-v1: #5 rename at 168, #6 link at 203, #7 set_xattr at 247, #174 end at 8524 */
const RENAME = 168;
const LINK = 203;
const SET_XATTR = 247;
const END = 8524;

function patched(edit: (b: Uint8Array, v: DataView) => void, end = base.length): Uint8Array {
  const b = base.slice(0, end);
  edit(b, new DataView(b.buffer));
  return b;
}

/** Recompute the crc of the command at `at` after an edit, so only the edit is wrong. */
function recrc(b: Uint8Array, v: DataView, at: number): void {
  const len = v.getUint32(at, true);
  v.setUint32(at + 6, 0, true);
  v.setUint32(at + 6, crc32c(b.subarray(at, at + 10 + len)), true);
}

const subvol = (w: SendStreamWriter) =>
  w.command(Cmd.SUBVOL, [
    [Attr.PATH, bytesOf("sv")],
    [Attr.UUID, new Uint8Array(16).fill(0xab)],
    [Attr.CTRANSID, u64(7)],
  ]);

const cases: Record<string, Uint8Array> = {
  "stream header (the input is empty)": new Uint8Array(0),
  "truncated stream header": base.slice(0, 10),
  "stream header: bad magic": patched((b) => (b[0] = 0x42)),
  "stream header: protocol version 4 not supported": patched((_, v) => v.setUint32(13, 4, true)),
  "command #5 (rename): crc32c mismatch": patched((b) => (b[RENAME + 20] ^= 0x01)),
  "command #7 (set_xattr): truncated": base.slice(0, SET_XATTR + 25),
  "command #6: truncated": base.slice(0, LINK + 4),
  "command #174: truncated": base.slice(0, END),
  "command #6 (link): truncated": patched((_, v) => v.setUint32(LINK, 0xfffffff0, true)),
  "command #5 (rename): unknown attribute type 99": patched((b, v) => {
    v.setUint16(RENAME + 10, 99, true);
    recrc(b, v, RENAME);
  }),
  "command #5 (rename): truncated attribute": patched((b, v) => {
    v.setUint16(RENAME + 12, 0x7fff, true);
    recrc(b, v, RENAME);
  }),
  "command #2 (chmod): attribute 5 missing": subvol(new SendStreamWriter(1))
    .command(Cmd.CHMOD, [[Attr.PATH, bytesOf("f")]])
    .bytes(),
  "command #2 (chown): attribute 6 has 4 bytes": subvol(new SendStreamWriter(1))
    .command(Cmd.CHOWN, [
      [Attr.PATH, bytesOf("f")],
      [Attr.UID, new Uint8Array(4)],
      [Attr.GID, u64(0)],
    ])
    .bytes(),
  "command #3 (mkdir): path too long": subvol(new SendStreamWriter(1))
    .command(Cmd.MKFILE, [[Attr.PATH, bytesOf("ok")], [Attr.INO, u64(257)]])
    .command(Cmd.MKDIR, [[Attr.PATH, bytesOf("d/".repeat(2046))], [Attr.INO, u64(258)]])
    .bytes(),
  "command #2 (utimes): time out of range": subvol(new SendStreamWriter(1))
    .command(Cmd.UTIMES, [
      [Attr.PATH, bytesOf("f")],
      [Attr.ATIME, timespec(0)],
      [Attr.MTIME, timespec(1n << 62n)],
      [Attr.CTIME, timespec(0)],
    ])
    .bytes(),
};

const btrfs = Bun.which("btrfs");
for (const [name, bytes] of Object.entries(cases)) {
  const file = path.join(here, `${name}.btrfs-send`);
  fs.writeFileSync(file, bytes);
  if (!btrfs) continue;
  const run = Bun.spawnSync([btrfs, "receive", "--dump", "-f", file], { env: { ...process.env, TZ: "UTC" } });
  if (run.exitCode === 0) throw new Error(`btrfs receive --dump accepts ${name}`);
  fs.writeFileSync(`${file}.dump.txt`, run.stdout);
  console.log(`${name}: btrfs exit ${run.exitCode}: ${run.stderr.toString().trim().replaceAll("\n", " / ")}`);
}
